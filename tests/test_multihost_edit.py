"""Multi-host editing and sweeps: `python -m dreamix_jax.edit`, then `python -m dreamix_jax.sweep`, in two
CPU processes (one device each, a localhost coordinator) edit and sweep like one process with two
devices, only process 0 writes, and a rerun of the pair reuses the finetune and the trials it stored.

The cascade is a small base stage alone (`conftest.small_cascade_file`), finetuned for 2 steps on the
frames path and sampled in 2 DDIM steps. The edit's mesh (fsdp 2) splits the weights and the batch of 2 edits over
the devices of both processes; the sweep stacks its 2 finetunes (α 0.5 and 1) on a trial axis of 2,
one finetune on each process's device, then samples one edit of each.
"""

import collections
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import CACHE_DIR, _free_port, small_cascade_file

from dreamix_jax.data import synthetic, video_io

WORKER = pathlib.Path(__file__).with_name("multihost_edit_worker.py")
ROOT = WORKER.parents[1]


def _start(writes: pathlib.Path, devices: int, edit_flags: list[str], sweep_flags: list[str]) -> subprocess.Popen:
    """A worker that edits, then sweeps."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), DREAMIX_COMPILATION_CACHE=CACHE_DIR)
    env.pop("XLA_FLAGS", None)
    programs = ["dreamix_jax.edit", *edit_flags, "--", "dreamix_jax.sweep", *sweep_flags]
    return subprocess.Popen([sys.executable, str(WORKER), str(writes), str(devices), *programs], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> str:
    out, _ = process.communicate(timeout=900)
    assert process.returncode == 0, out[-3000:]
    return out


def _sweep_dir(workdir: pathlib.Path) -> pathlib.Path:
    return workdir.with_name(f"{workdir.name}-sweep")


def _writes(workdir: pathlib.Path, run: str, process: int) -> pathlib.Path:
    """Where a worker records the files it writes."""
    return workdir.with_name(f"{workdir.name}.{run}{process}")


def _single(workdir: pathlib.Path, edit_flags: list[str], sweep_flags: list[str]) -> subprocess.Popen:
    """One process with two devices."""
    return _start(_writes(workdir, "first", 0), 2, [*edit_flags, f"--workdir={workdir}"],
                  [*sweep_flags, f"--workdir={_sweep_dir(workdir)}"])


def _pair(workdir: pathlib.Path, edit_flags: list[str], sweep_flags: list[str], run: str) -> list[subprocess.Popen]:
    """Two processes with one device each."""
    port = _free_port()
    runtime = lambda i: ["distributed=True", f"coordinator_address=localhost:{port}", "num_processes=2",  # noqa: E731
                         f"process_id={i}"]
    return [_start(_writes(workdir, run, i), 1,
                   [*edit_flags, f"--workdir={workdir}", *(f"--config.{f}" for f in runtime(i))],
                   [*sweep_flags, f"--workdir={_sweep_dir(workdir)}", *(f"--config.edit.{f}" for f in runtime(i))])
            for i in range(2)]


def _outputs(workdir: pathlib.Path, folders=("edits", "finetunes")) -> list[str]:
    """The files of these folders (default: the edits and the finetune store), relative to the workdir."""
    return sorted(str(p.relative_to(workdir)) for folder in folders for p in (workdir / folder).rglob("*")
                  if p.is_file())


def _written(writes: pathlib.Path, workdir: pathlib.Path) -> list[str]:
    """What a process wrote in a workdir (its files, as often as written), but the prompt cache, which
    every process writes alike (`dreamix_jax.text`)."""
    paths = map(pathlib.Path, writes.read_text().splitlines() if writes.exists() else [])
    return [str(p.relative_to(workdir)) for p in paths if p.is_relative_to(workdir) and "prompt_cache" not in p.parts]


def _assert_same_files(got: pathlib.Path, want: pathlib.Path, names: list[str]) -> None:
    """Videos with the same frames and weights files with the same arrays, bit for bit."""
    for name in names:
        if name.endswith(".mp4"):
            np.testing.assert_array_equal(video_io.read_frames(got / name)[0], video_io.read_frames(want / name)[0],
                                          err_msg=name)
        elif name.endswith(".npz"):  # finetuned weights, gathered from both processes
            with np.load(got / name) as a, np.load(want / name) as b:
                assert a.files == b.files
                for key in b.files:
                    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _results(workdir: pathlib.Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (workdir / "edits").glob("*/result.json")}


def _losses(result: dict) -> dict[str, float]:
    """An edit's finetuning losses (its seconds aside)."""
    return {k: v for k, v in result["finetune"]["stages"]["base"].items() if k != "seconds"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The pair and the single process, each editing then sweeping; then the pair again on its workdirs.
    Returns the pair's edit workdir, the single process's, what each process of the pair printed and
    the pair's edit results before the rerun."""
    tmp = tmp_path_factory.mktemp("multihost")
    clip = synthetic.render(synthetic.Attributes("green", "square", "left", "black", "large", (0.6, 0.5),
                                                 (1.0, 2.0, 0.3)), 8, 32, 32)
    weights = str(small_cascade_file(tmp / "base.npz", stages=("base",)))
    clip_path = video_io.write_video(tmp / "input.mp4", clip, fps=8.0)
    prompt = "a red square moving right on a black background"
    edit_flags = ["--config", "configs/dreamix.py:video", f"--config.weights={weights}", f"--config.input={clip_path}",
                  f"--config.prompt={prompt}", "--config.num_seeds=2", "--config.sampling_steps=2",
                  "--config.finetune.steps=2", "--config.finetune.w_video=0", "--config.mesh.shape=1,2,1"]
    # Two finetunes that differ in α (one program), one sampling setting; the mesh's trial axis takes both devices.
    sweep_flags = ["--config", "configs/sweeps/shapes_edit.py", f"--config.edit.weights={weights}",
                   f"--config.edit.input={clip_path}", "--config.edit.sampling_steps=2",
                   "--config.edit.finetune.w_video=0", "--config.finetune.alpha=(0.5, 1.0)",
                   "--config.finetune.steps=(2,)", "--config.sample.s=(0.7,)", "--config.sample.seed=(0,)",
                   f"--config.sample.prompt=({prompt!r},)", "--config.trials_per_program=2",
                   "--config.edit.mesh.shape=-1,1,1"]
    two, one = tmp / "two", tmp / "one"
    pair = _pair(two, edit_flags, sweep_flags, "first")
    single = _single(one, edit_flags, sweep_flags)
    printed = [_finish(p) for p in pair]
    _finish(single)
    first_results = _results(two)  # the rerun writes the edits again
    for process in _pair(two, edit_flags, sweep_flags, "rerun"):
        _finish(process)
    return dict(two=two, one=one, printed=printed, first_results=first_results)


def test_two_processes_edit_like_one_and_only_the_first_writes(runs):
    two, one = runs["two"], runs["one"]
    outputs = _outputs(two)
    assert outputs == _outputs(one) and len(outputs) == 2 * 3 + 2  # two edits, one finetune of the base stage
    _assert_same_files(two, one, outputs)
    results = runs["first_results"]
    assert {n: _losses(r) for n, r in results.items()} == {n: _losses(r) for n, r in _results(one).items()}
    assert not any(r["finetune"]["reused"] for r in results.values())
    # Process 0 wrote each output once, the other process none; only process 0 prints the paths.
    assert sorted(_written(_writes(two, "first", 0), two)) == outputs
    assert _written(_writes(two, "first", 1), two) == []
    lead_out, other_out = runs["printed"]
    assert "comparison.mp4" in lead_out and "comparison.mp4" not in other_out

    # The rerun reuses the stored finetune: process 0 writes the edits once more, nothing else.
    assert all(r["finetune"]["reused"] for r in _results(two).values())
    written = collections.Counter(_written(_writes(two, "rerun", 0), two))
    assert sorted(written) == [n for n in outputs if n.startswith("edits/")] and set(written.values()) == {1}
    assert _written(_writes(two, "rerun", 1), two) == []


def test_two_processes_sweep_like_one_and_a_rerun_skips_finished_trials(runs):
    two, one = _sweep_dir(runs["two"]), _sweep_dir(runs["one"])
    outputs = _outputs(two, ("trials", "finetunes"))
    assert outputs == _outputs(one, ("trials", "finetunes"))
    assert len(outputs) == 2 * 2 + 2 * 2  # two trials (video, thumb), two finetunes of the base stage
    _assert_same_files(two, one, outputs)
    manifest, want = (json.loads((d / "manifest.json").read_text())["trials"] for d in (two, one))
    assert {k: (v["scores"], v["finetune_key"]) for k, v in manifest.items()} == {
        k: (v["scores"], v["finetune_key"]) for k, v in want.items()}
    for key in {v["finetune_key"] for v in manifest.values()}:  # both finetunes trained in one program
        assert json.loads((two / "finetunes" / key / "finetune.json").read_text())["trials_in_program"] == 2
    # Process 0 wrote every trial and finetune once and the manifest once, after the one batch that
    # sampled both finetunes' edits stacked; the other process wrote nothing.
    written = collections.Counter(_written(_writes(runs["two"], "first", 0), two))
    assert {n: written[n] for n in outputs} == dict.fromkeys(outputs, 1) and written["manifest.json"] == 1
    assert _written(_writes(runs["two"], "first", 1), two) == []
    lead_out, other_out = runs["printed"]
    assert "report.html" in lead_out and "report.html" not in other_out

    # The rerun finds every trial finished: it only writes the report again.
    assert json.loads((two / "summary.json").read_text())["ran"] == 0
    assert sorted(_written(_writes(runs["two"], "rerun", 0), two)) == [
        "fidelity_alignment.png", "input.gif", "report.html", "summary.json"]
    assert _written(_writes(runs["two"], "rerun", 1), two) == []
