"""The workdir lock, atomic writes and tolerant JSON reads (pure Python, no JAX)."""

import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from dreamix_jax import workdir

ROOT = pathlib.Path(__file__).parents[1]

# A child that takes the lock as a 'train' run, says so through a file, and sleeps until killed.
_HOLDER = """
import pathlib, sys, time
from dreamix_jax import workdir
with workdir.lock(sys.argv[1], "train"):
    pathlib.Path(sys.argv[2]).write_text("locked")
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """A child process holding the lock on `tmp_path / 'wd'`; yields (workdir, child)."""
    wd, ready = tmp_path / "wd", tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(wd), str(ready)], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert child.poll() is None, "the lock-holding child exited early"
            assert time.monotonic() < deadline, "the child never took the lock"
            time.sleep(0.02)
        yield wd, child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()


def test_second_lock_from_another_process_is_refused_naming_holder(holder):
    wd, child = holder
    with pytest.raises(workdir.WorkdirBusy) as e:
        with workdir.lock(wd, "edit"):
            pass
    msg = str(e.value)
    assert f"pid {child.pid}" in msg and "(train, started " in msg
    assert msg.startswith(f"The workdir {wd} is in use by ")
    assert msg.endswith("; wait for it to finish or give another --workdir.")


def test_lock_of_killed_process_is_taken_over_and_reported(holder):
    wd, child = holder
    child.send_signal(signal.SIGKILL)
    child.wait()
    with workdir.lock(wd, "edit") as held:
        assert held.previous is not None
        assert held.previous.pid == child.pid and held.previous.purpose == "train"
        assert held.note.startswith(f"took over a lock left by pid {child.pid} ")
        assert held.holder.pid == os.getpid() and held.holder.purpose == "edit"
        record = json.loads((wd / ".lock").read_text())
        assert record["pid"] == os.getpid() and record["purpose"] == "edit"
        assert set(record) == {"pid", "host", "purpose", "command", "started"}


def test_lock_is_released_after_the_with_block(tmp_path):
    wd = tmp_path / "a" / "b"  # created on demand
    with workdir.lock(wd, "train") as held:
        assert held.previous is None and held.note is None
        # flock belongs to the open file, so even this process cannot take it twice.
        with pytest.raises(workdir.WorkdirBusy, match=f"pid {os.getpid()} .*\\(train, started "):
            with workdir.lock(wd, "sweep"):
                pass
    with workdir.lock(wd, "sweep") as again:
        assert again.previous is None  # a clean release leaves no record to take over
    assert (wd / ".lock").exists()  # the file stays; the flock is the truth


def test_lock_is_released_after_an_exception(tmp_path):
    with pytest.raises(KeyError):
        with workdir.lock(tmp_path, "train"):
            raise KeyError("boom")
    with workdir.lock(tmp_path, "train") as held:
        assert held.previous is None


def test_workdir_that_is_a_file_is_refused_in_one_sentence(tmp_path):
    f = tmp_path / "wd"
    f.write_text("not a folder")
    with pytest.raises(ValueError) as e:
        with workdir.lock(f, "train"):
            pass
    assert str(e.value) == f"The workdir {f} is a file; give a folder."
    assert f.read_text() == "not a folder"


def test_atomic_writes_leave_only_the_target(tmp_path):
    target = tmp_path / "store" / "entry.json"  # parent created on demand
    workdir.write_json_atomic(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == '{\n  "b": 1,\n  "a": [\n    1,\n    2\n  ]\n}\n'
    workdir.write_text_atomic(target, "second")
    workdir.write_bytes_atomic(target, b"third")
    assert target.read_bytes() == b"third"
    assert os.listdir(target.parent) == ["entry.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize("fail", ["replace", "fsync"])
def test_failed_atomic_write_keeps_old_content_and_no_temp_file(tmp_path, monkeypatch, fail):
    target = tmp_path / "entry.json"
    workdir.write_json_atomic(target, {"v": "old"})
    old = target.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(workdir.os, fail, boom)
    with pytest.raises(OSError, match="disk on fire"):
        workdir.write_json_atomic(target, {"v": "new"})
    monkeypatch.undo()
    assert target.read_bytes() == old
    assert os.listdir(tmp_path) == ["entry.json"]


def test_unserialisable_json_touches_nothing(tmp_path):
    with pytest.raises(TypeError):
        workdir.write_json_atomic(tmp_path / "entry.json", {"x": object()})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind", ["empty", "blank", "truncated", "not_utf8", "scalar", "directory"])
def test_read_json_or_none_rejects_bad_entries_with_a_warning(tmp_path, caplog, kind):
    path = tmp_path / "entry.json"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_bytes({"empty": b"", "blank": b" \n", "truncated": b'{"a": [1, 2',
                          "not_utf8": b'{"a": "\xff\xfe\xfd"}', "scalar": b"3\n"}[kind])
    with caplog.at_level(logging.WARNING, logger=workdir.__name__):
        assert workdir.read_json_or_none(path) is None
    [record] = caplog.records
    assert record.getMessage().startswith(f"Ignoring unreadable {path} (")
    assert record.getMessage().endswith("); it will be rebuilt.")


def test_read_json_or_none_missing_is_silent(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=workdir.__name__):
        assert workdir.read_json_or_none(tmp_path / "absent.json") is None
    assert not caplog.records


def test_read_json_or_none_returns_good_entries(tmp_path):
    workdir.write_json_atomic(tmp_path / "d.json", {"k": [1, 2.5, None, "s"]})
    workdir.write_json_atomic(tmp_path / "l.json", [{"a": 1}])
    assert workdir.read_json_or_none(tmp_path / "d.json") == {"k": [1, 2.5, None, "s"]}
    assert workdir.read_json_or_none(tmp_path / "l.json") == [{"a": 1}]
