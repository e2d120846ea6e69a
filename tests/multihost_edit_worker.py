"""One process of the multi-host edit test: command lines of this package (`python -m dreamix_jax.edit`,
then `python -m dreamix_jax.sweep`) run one after another in one CPU process, with every file it
writes recorded.

  python tests/multihost_edit_worker.py WRITES DEVICES_PER_PROCESS MODULE FLAGS... [-- MODULE FLAGS...]

Each file the process publishes (`dreamix_jax.workdir`'s atomic writes, which every output goes
through) is appended to WRITES, one path a line. Every process, not only process 0, keeps the
programs it compiles in the persistent compilation cache.
"""

import itertools
import os
import runpy
import sys

writes, devices, *programs = sys.argv[1:]
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0 "
                           "--xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false "
                           "--xla_cpu_parallel_codegen_split_count=1")

import jax  # noqa: E402
from absl import flags  # noqa: E402
from jax._src import compiler, distributed  # noqa: E402

from dreamix_jax import workdir  # noqa: E402

publish = workdir._publish
cache_write = compiler._cache_write


def cache_write_as_process_0(*args, **kwargs):
    """JAX writes its persistent compilation cache from process 0 alone, and another process's programs
    have cache keys of their own: without this, process 1 would compile every program on every run."""
    process_id, distributed.global_state.process_id = distributed.global_state.process_id, 0
    try:
        cache_write(*args, **kwargs)
    finally:
        distributed.global_state.process_id = process_id


def recorded(tmp, path):
    publish(tmp, path)
    with open(writes, "a") as log:
        log.write(f"{path}\n")


workdir._publish = recorded
compiler._cache_write = cache_write_as_process_0
for is_marker, (module, *args) in itertools.groupby(programs, lambda arg: arg == "--"):
    if is_marker:
        continue
    # Every program defines its own --workdir and --config (with a flag per config field).
    for name in [n for n in flags.FLAGS if n == "workdir" or n.split(".")[0] == "config"]:
        delattr(flags.FLAGS, name)
    if jax.distributed.is_initialized():  # JAX starts its multi-host runtime once a process: the first program did
        jax.distributed.initialize = lambda **kwargs: None
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as end:  # absl ends every program with sys.exit
        if end.code not in (None, 0):
            raise
