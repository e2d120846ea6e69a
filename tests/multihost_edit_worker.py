"""One process of the multi-host edit test: command lines of this package (`python -m dreamix_jax.edit`,
then `python -m dreamix_jax.sweep`) run one after another in one CPU process, with every file it
writes recorded.

  python tests/multihost_edit_worker.py WRITES DEVICES_PER_PROCESS MODULE FLAGS... [-- MODULE FLAGS...]

Each file the process publishes (`dreamix_jax.workdir`'s atomic writes, which every output goes
through) is appended to WRITES, one path a line. Each program is compiled by process 0 alone
(`emulated_cpu.compile_once_per_host`).
"""

import itertools
import runpy
import sys

import emulated_cpu

writes, devices, *programs = sys.argv[1:]
emulated_cpu.use_cpu_devices(int(devices))
emulated_cpu.compile_once_per_host()

import jax  # noqa: E402
from absl import flags  # noqa: E402

from dreamix_jax import workdir  # noqa: E402

publish = workdir._publish


def recorded(tmp, path):
    publish(tmp, path)
    with open(writes, "a") as log:
        log.write(f"{path}\n")


workdir._publish = recorded
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
