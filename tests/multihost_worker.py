"""One process of the multi-host test: a few training steps of the tiny base stage on CPU.

  python tests/multihost_worker.py DATA_DIR WORKDIR PROCESS_ID NUM_PROCESSES PORT DEVICES_PER_PROCESS

With NUM_PROCESSES 1 it is the single-process reference (no distributed runtime).
"""

import sys

import emulated_cpu

data_dir, workdir, process_id, num_processes, port, devices = sys.argv[1:7]
emulated_cpu.use_cpu_devices(int(devices))
emulated_cpu.compile_once_per_host()

from configs import pretrain_shapes  # noqa: E402
from dreamix_jax import train  # noqa: E402

config = pretrain_shapes.get_config("base,smoke")
config.data.data_dir = data_dir
config.total_steps, config.checkpoint_every, config.lr_schedule = 3, 100, "constant"
config.mesh.shape = (-1, 1, 1)  # the global batch of 4 split over every device of every process
if int(num_processes) > 1:
    config.distributed = True
    config.coordinator_address = f"localhost:{port}"
    config.num_processes = int(num_processes)
    config.process_id = int(process_id)
train.train(config, workdir)
