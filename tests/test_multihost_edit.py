"""Multi-host editing: `python -m dreamix_jax.edit` in two CPU processes (one device each, a localhost
coordinator) edits like one process with two devices, only process 0 writes, and a rerun reuses the
finetune the pair stored.

The cascade is the shipped one cut to its base stage, finetuned for 2 steps on the frames path and
sampled in 2 DDIM steps; the mesh (fsdp 2) splits the weights and the batch of 2 edits over the
devices of both processes.
"""

import collections
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from conftest import CACHE_DIR, _free_port

from dreamix_jax import pretrained
from dreamix_jax.data import synthetic, video_io

WORKER = pathlib.Path(__file__).with_name("multihost_edit_worker.py")
ROOT = WORKER.parents[1]


def _base_only(path: pathlib.Path) -> str:
    """The shipped cascade as a weights file of its base stage alone."""
    _, meta = pretrained.read_file(pretrained.SHIPPED)
    config = dict(meta["config"], stage_order=["base"], stages={"base": meta["config"]["stages"]["base"]})
    return str(pretrained.export(config, {"base": str(pretrained.SHIPPED)}, path))


def _start(writes: pathlib.Path, devices: int, flags: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), DREAMIX_COMPILATION_CACHE=CACHE_DIR)
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen([sys.executable, str(WORKER), str(writes), str(devices), *flags], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> str:
    out, _ = process.communicate(timeout=900)
    assert process.returncode == 0, out[-3000:]
    return out


def _pair(workdir: pathlib.Path, flags: list[str]) -> list[subprocess.Popen]:
    port = _free_port()
    return [_start(workdir.with_suffix(f".writes{i}"), 1, [*flags, f"--workdir={workdir}", "--config.distributed=True",
                                                        f"--config.coordinator_address=localhost:{port}",
                                                        "--config.num_processes=2", f"--config.process_id={i}"])
            for i in range(2)]


def _outputs(workdir: pathlib.Path) -> list[str]:
    """The edits' and the finetune store's files, relative to the workdir."""
    return sorted(str(p.relative_to(workdir)) for folder in ("edits", "finetunes")
                  for p in (workdir / folder).rglob("*") if p.is_file())


def _written(writes: pathlib.Path, workdir: pathlib.Path) -> list[str]:
    """What a process wrote (files of the workdir, as often as written), but the prompt cache, which
    every process writes alike (`dreamix_jax.text`)."""
    paths = writes.read_text().splitlines() if writes.exists() else []
    return [str(pathlib.Path(p).relative_to(workdir)) for p in paths if "/prompt_cache/" not in p]


def _results(workdir: pathlib.Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (workdir / "edits").glob("*/result.json")}


def _losses(result: dict) -> dict[str, float]:
    """An edit's finetuning losses (its seconds aside)."""
    return {k: v for k, v in result["finetune"]["stages"]["base"].items() if k != "seconds"}


def test_two_processes_edit_like_one_and_only_the_first_writes(tmp_path):
    clip = synthetic.render(synthetic.Attributes("green", "square", "left", "black", "large", (0.6, 0.5),
                                                 (1.0, 2.0, 0.3)), 8, 32, 32)
    flags = ["--config", "configs/dreamix.py:video", f"--config.weights={_base_only(tmp_path / 'base.npz')}",
             f"--config.input={video_io.write_video(tmp_path / 'input.mp4', clip, fps=8.0)}",
             "--config.prompt=a red square moving right on a black background", "--config.num_seeds=2",
             "--config.sampling_steps=2", "--config.finetune.steps=2", "--config.finetune.w_video=0",
             "--config.mesh.shape=1,2,1"]
    two, one = tmp_path / "two", tmp_path / "one"
    pair = _pair(two, flags)
    single = _start(one.with_suffix(".writes0"), 2, [*flags, f"--workdir={one}"])
    lead_out, other_out = (_finish(p) for p in pair)
    _finish(single)

    outputs = _outputs(two)
    assert outputs == _outputs(one) and len(outputs) == 2 * 3 + 2  # two edits, one finetune of the base stage
    for name in outputs:
        if name.endswith(".mp4"):
            np.testing.assert_array_equal(video_io.read_frames(two / name)[0], video_io.read_frames(one / name)[0],
                                          err_msg=name)
        elif name.endswith(".npz"):  # the finetuned weights, gathered from both processes
            with np.load(two / name) as got, np.load(one / name) as want:
                assert got.files == want.files
                for key in want.files:
                    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    results = _results(two)
    assert {n: _losses(r) for n, r in results.items()} == {n: _losses(r) for n, r in _results(one).items()}
    assert not any(r["finetune"]["reused"] for r in results.values())
    # Process 0 wrote each output once, the other process none; only process 0 prints the paths.
    assert sorted(_written(two.with_suffix(".writes0"), two)) == outputs
    assert _written(two.with_suffix(".writes1"), two) == []
    assert "comparison.mp4" in lead_out and "comparison.mp4" not in other_out

    for writes in two.parent.glob("two.writes*"):
        writes.unlink()
    for process in _pair(two, flags):
        _finish(process)
    assert all(r["finetune"]["reused"] for r in _results(two).values())
    written = collections.Counter(_written(two.with_suffix(".writes0"), two))
    assert sorted(written) == [n for n in outputs if n.startswith("edits/")] and set(written.values()) == {1}
    assert _written(two.with_suffix(".writes1"), two) == []
