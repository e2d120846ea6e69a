"""Multi-host correctness: two CPU processes on localhost train like one process on the same global batch."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
from conftest import CACHE_DIR, _free_port

from dreamix_jax import pretrained
from dreamix_jax.data import shapes_video

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
ROOT = WORKER.parents[1]


def _start(data_dir, workdir, process_id, num_processes, port, devices):
    env = dict(os.environ, PYTHONPATH=str(ROOT), DREAMIX_COMPILATION_CACHE=CACHE_DIR)
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen([sys.executable, str(WORKER), data_dir, str(workdir), str(process_id),
                             str(num_processes), str(port), str(devices)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process) -> str:
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out[-3000:]
    return out


def _weights(workdir):
    step, params = pretrained.latest_weights(workdir)  # restored on one device: the pod's layout is not needed
    assert step == 3
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(params)}


def test_two_processes_train_like_one(tmp_path):
    data_dir = str(tmp_path / "tfds")
    shapes_video.build(data_dir, "smoke")
    port = _free_port()
    pair = [_start(data_dir, tmp_path / "two", i, 2, port, 1) for i in range(2)]
    one = _start(data_dir, tmp_path / "one", 0, 1, 0, 2)  # one process, two devices, the same global batch
    for process in pair + [one]:
        _finish(process)

    two, single = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    assert two.keys() == single.keys() and len(two) > 10
    for name, value in single.items():
        np.testing.assert_array_equal(two[name], value, err_msg=name)  # bit for bit
    # Only process 0 logs: three steps, three lines (not six), with the single process's losses.
    logs_two = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    logs_one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logs_two] == [m["step"] for m in logs_one] == [1, 2, 3]
    assert [m["loss"] for m in logs_two] == [m["loss"] for m in logs_one]
