"""One process of the multi-host edit test: `python -m dreamix_jax.edit` on CPU, with every file it
writes recorded.

  python tests/multihost_edit_worker.py WRITES DEVICES_PER_PROCESS EDIT_FLAGS...

Each file the process publishes (`dreamix_jax.workdir`'s atomic writes, which every output goes
through) is appended to WRITES, one path a line.
"""

import os
import runpy
import sys

writes, devices, *flags = sys.argv[1:]
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0 "
                           "--xla_llvm_disable_expensive_passes=true")

from dreamix_jax import workdir  # noqa: E402

publish = workdir._publish


def recorded(tmp, path):
    publish(tmp, path)
    with open(writes, "a") as log:
        log.write(f"{path}\n")


workdir._publish = recorded
sys.argv = ["dreamix_jax.edit", *flags]
runpy.run_module("dreamix_jax.edit", run_name="__main__", alter_sys=True)
