"""Workdirs, stores, inputs and weights on gs://, against the GCS emulator of tests/conftest.py
(`gcs_bucket`): the workdir lock, atomic writes, videos, frames and weights read from the bucket, a
sweep's report and manifest, and the one-sentence refusal of other URLs. Training and editing on
gs:// are tested beside their local runs, in tests/test_train.py and tests/test_dreamix.py, where
they reuse those runs' compiled programs.
"""

import json
import os
import socket
import subprocess
import time

import numpy as np
import pytest
from conftest import gcs_names
from etils import epath

from configs import dreamix as dreamix_configs
from configs.sweeps import shapes_edit
from dreamix_jax import cli, edit, pretrained, sweep, workdir
from dreamix_jax.data import synthetic, video_io


# ---- the lock ----------------------------------------------------------------------------------------


def test_a_gcs_lock_refuses_a_second_run_and_is_deleted_at_the_end(gcs_bucket):
    run = f"{gcs_bucket}/locked"
    with workdir.lock(run, "train") as held:
        assert held.previous is None and held.path == epath.Path(run, ".lock")
        record = json.loads(held.path.read_text())
        assert record["pid"] == os.getpid() and record["purpose"] == "train"
        with pytest.raises(workdir.WorkdirBusy, match=rf"^The workdir {run} is in use by pid {os.getpid()} .*\(train,"):
            with workdir.lock(run, "sweep"):
                pass
    assert not held.path.exists()
    with workdir.lock(run, "edit") as again:
        assert again.previous is None
    with pytest.raises(FileNotFoundError, match=r"^The bucket of gs://no-such-bucket/run does not exist; create it"):
        with workdir.lock("gs://no-such-bucket/run", "edit"):
            pass
    assert "no-such-bucket" not in [b.name for b in workdir._blob(held.path).client.list_buckets()]


def _planted(path: epath.Path, **fields) -> None:
    """A lock object written by some other run."""
    holder = dict(pid=1, host="other-host", purpose="train", command="x", started="then") | fields
    path.write_text(json.dumps(holder))


def test_a_gcs_lock_of_a_dead_run_is_taken_over_and_a_live_one_kept(gcs_bucket, monkeypatch):
    run = f"{gcs_bucket}/stale"
    lock_object = epath.Path(run, ".lock")
    _planted(lock_object)  # just written by another host: alive
    with pytest.raises(workdir.WorkdirBusy, match="in use by pid 1 on host other-host"):
        with workdir.lock(run, "edit"):
            pass
    monkeypatch.setattr(workdir, "LEASE_SECONDS", 0.0)  # that host stopped renewing it
    with workdir.lock(run, "edit") as held:
        assert held.previous.host == "other-host" and held.note.startswith("took over a lock left by pid 1 ")
        assert json.loads(lock_object.read_text())["pid"] == os.getpid()
    monkeypatch.undo()

    child = subprocess.Popen(["true"])
    child.wait()  # a process of this host that no longer exists
    _planted(lock_object, pid=child.pid, host=socket.gethostname())
    with workdir.lock(run, "edit") as held:
        assert held.previous.pid == child.pid


def test_a_gcs_lock_another_run_took_over_first_is_read_again(gcs_bucket, monkeypatch):
    run = f"{gcs_bucket}/race"
    lock_object = epath.Path(run, ".lock")
    _planted(lock_object, pid=1)
    monkeypatch.setattr(workdir, "LEASE_SECONDS", 0.0)  # dead
    parse, raced = workdir.Holder.parse, []

    def parse_while_another_run_takes_over(raw: bytes) -> workdir.Holder | None:
        if not raced:  # between this run's read of the dead lock and its conditional overwrite
            raced.append(_planted(lock_object, pid=2))
        return parse(raw)

    monkeypatch.setattr(workdir.Holder, "parse", staticmethod(parse_while_another_run_takes_over))
    with workdir.lock(run, "edit") as held:
        assert raced and held.previous.pid == 2  # the overwrite failed, and the new record was read


def test_a_held_gcs_lock_is_renewed(gcs_bucket, monkeypatch):
    monkeypatch.setattr(workdir, "RENEW_SECONDS", 0.05)
    run = f"{gcs_bucket}/renewed"

    def generation(path: epath.Path) -> int:
        blob = workdir._blob(path)
        blob.reload()
        return blob.generation

    with workdir.lock(run, "train") as held:
        first = generation(held.path)
        time.sleep(0.5)
        assert generation(held.path) != first  # rewritten: other runs see the lease kept
        assert json.loads(held.path.read_text())["pid"] == os.getpid()
    assert not held.path.exists()


# ---- stores, inputs and weights ----------------------------------------------------------------------


def test_atomic_writes_and_tolerant_reads_on_gcs(gcs_bucket, caplog):
    entry = f"{gcs_bucket}/store/entry.json"
    workdir.write_json_atomic(entry, {"v": "old"})
    with pytest.raises(RuntimeError, match="writer failed"):
        with workdir.atomic_path(entry) as tmp:
            tmp.write_text('{"v": "ne')
            raise RuntimeError("writer failed")
    assert workdir.read_json_or_none(entry) == {"v": "old"} and gcs_names(f"{gcs_bucket}/store") == ["entry.json"]
    epath.Path(gcs_bucket, "store/empty.json").write_text("")
    with caplog.at_level("WARNING"):
        assert workdir.read_json_or_none(f"{gcs_bucket}/store/empty.json") is None
        assert workdir.read_json_or_none(f"{gcs_bucket}/store/absent.json") is None
    assert f"Ignoring unreadable {gcs_bucket}/store/empty.json (empty)" in caplog.text and "absent" not in caplog.text


def test_videos_frames_and_weights_are_read_from_gcs(gcs_bucket, tmp_path):
    clip = synthetic.render(synthetic.sample_attributes(3), 4, 16, 16)
    written = video_io.write_video(f"{gcs_bucket}/inputs/clip.mp4", clip, fps=8.0)
    local = video_io.write_video(tmp_path / "clip.mp4", clip, fps=8.0)
    (from_gcs, fps), (from_disk, _) = video_io.read_frames(str(written)), video_io.read_frames(local)
    assert fps == 8.0 and from_gcs.shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(from_gcs, from_disk)
    for i in range(3):
        for folder in (f"{gcs_bucket}/inputs/frames", tmp_path / "frames"):
            workdir.write_bytes_atomic(f"{folder}/{i:02d}.png", _png(clip[i]))
    frames, _ = video_io.read_frames(f"{gcs_bucket}/inputs/frames")
    assert frames.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(frames, video_io.read_frames(tmp_path / "frames")[0])
    with pytest.raises(video_io.InputError, match=f"Input {gcs_bucket}/inputs/none.mp4 does not exist"):
        video_io.read_frames(f"{gcs_bucket}/inputs/none.mp4")

    weights = f"{gcs_bucket}/weights/tiny_cascade.npz"
    workdir.copy_file(pretrained.SHIPPED, weights)
    assert pretrained.read_stages(weights) == pretrained.read_stages(pretrained.SHIPPED)
    (arrays, meta), (expected, expected_meta) = pretrained.read_file(weights), pretrained.read_file(pretrained.SHIPPED)
    assert meta == expected_meta and arrays.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(arrays[name], value, err_msg=name)
    with pytest.raises(FileNotFoundError, match=f"Cascade weights {gcs_bucket}/weights/none.npz not found"):
        pretrained.read_stages(f"{gcs_bucket}/weights/none.npz")


def _png(frame: np.ndarray) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(video_io.to_uint8(frame)).save(out, format="png")
    return out.getvalue()


# ---- sweeps -------------------------------------------------------------------------------------------


def test_a_sweep_report_and_manifest_on_gcs(gcs_bucket):
    """What a sweep writes besides its edits (whose store is an edit's: tests/test_dreamix.py)."""
    run = f"{gcs_bucket}/sweep"
    config = shapes_edit.get_config("smoke")
    trials = sweep.trials_of(config, pretrained.read_stages(pretrained.SHIPPED))
    scores = [dict(alignment=0.5, fidelity=i / len(trials), ssim=0.9, consistency=0.8) for i in range(len(trials))]
    results = {t.id: dict(scores=s, video=f"trials/{t.id}/video.mp4", thumb=f"trials/{t.id}/thumb.gif")
               for t, s in zip(trials, scores, strict=True)}
    workdir.write_json_atomic(f"{run}/manifest.json", dict(trials=results))
    summary = dict(trials=len(trials), ran=len(trials), batch_size=2, finetunes_per_batch=1, batches=2, compiles=0,
                   seconds=1.0, input="clip")
    report = sweep.write_report(workdir.as_path(run), config, trials, results, summary)
    assert str(report) == f"{run}/report.html"
    assert gcs_names(run) == ["fidelity_alignment.png", "manifest.json", "report.html"]
    page = report.read_text()
    assert len(trials) == 4 and all(t.id in page and results[t.id]["thumb"] in page for t in trials)
    assert epath.Path(run, "fidelity_alignment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sweep.read_manifest(run) == results


# ---- URLs ------------------------------------------------------------------------------------------------


def test_gcs_workdirs_are_taken_and_other_urls_refused_in_one_sentence(gcs_bucket, monkeypatch):
    monkeypatch.setattr(cli, "setup_logging", lambda: None)  # the program's logging would outlive this test
    locked = []
    assert cli.run(lambda config, wd: locked.append(epath.Path(wd, ".lock").exists()) or "done", None,
                   f"{gcs_bucket}/cli", purpose="demo") == "done"
    assert locked == [True] and not epath.Path(gcs_bucket, "cli/.lock").exists()
    with pytest.raises(SystemExit) as stop:
        cli.run(edit.run, dreamix_configs.get_config("video"), "s3://bucket/edit", purpose="edit")
    assert stop.value.code == "error: s3://bucket/edit is a s3:// URL; give a local path or a gs:// URL."
    with pytest.raises(ValueError, match=r"^https://h/clip.mp4 is a https:// URL; give a local path or a gs:// URL\.$"):
        video_io.read_frames("https://h/clip.mp4")
