"""Safe sharing of a workdir: one run at a time, and files that are either old or new, never torn.

Guarantees:

* `lock(workdir, purpose)` holds an exclusive `fcntl.flock` on `<workdir>/.lock` for the life of a
  run. A second `train`, `edit` or `sweep` on the same workdir, from this or another process on
  this host, refuses at once with `WorkdirBusy` naming the holder (pid, host, purpose, start time).
  The operating system drops the lock when its holder dies, even on `kill -9`, so a lock left by
  a killed run never needs cleaning up by hand: the next run takes it over and is told whose it
  was. The lock file itself stays in place; the flock, not the file's existence, is the truth.
* `write_bytes_atomic`, `write_text_atomic` and `write_json_atomic` replace a file in one step
  (temp file in the same folder, fsync, `os.replace`, fsync of the folder): a reader, or the next
  run after a crash or power loss, sees the whole old file or the whole new one, and no temp file
  is left behind when the write fails.
* `read_json_or_none` reads a store entry and answers None, with a warning, for an entry that a
  crash (or anything else) left missing, empty or unparsable, so the caller rebuilds it.

Limitation: flock is only as good as the filesystem's support for it. On local disks it is exact;
on network filesystems (NFS, SMB/CIFS, Lustre, FUSE mounts of object stores such as gcsfuse) it
may be emulated, confined to one client machine, or silently a no-op, so two hosts sharing a
workdir over such a mount may both get the lock. Keep workdirs that several machines write to
under one coordinating process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import logging
import os
import pathlib
import shlex
import socket
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"

# Files written atomically get the permissions a plain `open(path, "w")` would give them
# (mkstemp makes them 0600). The umask can only be read by setting it, which is not thread-safe,
# so it is read once, at import, before any worker threads exist.
_UMASK = os.umask(0)
os.umask(_UMASK)


class WorkdirBusy(RuntimeError):
    """Another live process holds the workdir's lock."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds (or held) a workdir lock, as recorded in its lock file."""

    pid: int
    host: str
    purpose: str
    command: str
    started: str

    @classmethod
    def current(cls, purpose: str) -> Holder:
        """The record for this process."""
        return cls(pid=os.getpid(), host=socket.gethostname(), purpose=purpose,
                   command=shlex.join(sys.argv),
                   started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))

    @classmethod
    def parse(cls, raw: bytes) -> Holder | None:
        """The record in a lock file's bytes; None when there is none or it is unreadable."""
        try:
            d = json.loads(raw)
            return cls(pid=int(d["pid"]), host=str(d["host"]), purpose=str(d["purpose"]),
                       command=str(d.get("command", "")), started=str(d.get("started", "?")))
        except (ValueError, TypeError, KeyError, RecursionError):
            return None

    def describe(self) -> str:
        """'pid N on host H (purpose, started T)'."""
        return f"pid {self.pid} on host {self.host} ({self.purpose}, started {self.started})"


@dataclasses.dataclass(frozen=True)
class WorkdirLock:
    """A held workdir lock: what `lock` yields."""

    workdir: pathlib.Path
    path: pathlib.Path
    holder: Holder
    previous: Holder | None  # the record of a run that ended without releasing the lock, if any

    @property
    def note(self) -> str | None:
        """A line for the log when a lock left by a dead run was taken over, else None."""
        if self.previous is None:
            return None
        p = self.previous
        note = f"took over a lock left by {p.describe()}, which ended without releasing it"
        if p.host != self.holder.host:
            # The flock succeeded, so the other host's run is dead, or this filesystem does not
            # carry flocks across machines (see the module docstring): worth saying which to check.
            note += ("; if that run is still going, this filesystem does not share locks between "
                     "hosts, so stop one of the two")
        return note


def _check_workdir(workdir: pathlib.Path) -> None:
    """Refuses a workdir that is a regular file, in one sentence."""
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"The workdir {workdir} is a file; give a folder.")


@contextlib.contextmanager
def lock(workdir: str | os.PathLike[str], purpose: str) -> Iterator[WorkdirLock]:
    """Holds `<workdir>/.lock` exclusively for the `with` block; `WorkdirBusy` if another run holds it.

    The lock belongs to the open file, so a second `lock` on the same workdir fails even within
    one process, and children forked without exec (which inherit the descriptor) keep it held
    until they exit too. flock may be unreliable on network filesystems (see the module docstring).
    """
    if not purpose:
        raise ValueError("Give the lock a purpose, such as 'train'.")
    workdir = pathlib.Path(workdir)
    _check_workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_NAME
    # O_RDWR | O_CREAT, never O_TRUNC: opening must not wipe the record of a live holder.
    # Python descriptors are close-on-exec, so programs this run launches do not inherit the lock.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            held = Holder.parse(os.pread(fd, 1 << 16, 0))
            # No record yet: the holder is between taking the flock and writing its line.
            who = held.describe() if held else "another process (not yet recorded)"
            raise WorkdirBusy(f"The workdir {workdir} is in use by {who}; wait for it to finish "
                              "or give another --workdir.") from None
        # A clean release empties the file, so any record still here is from a run that died
        # holding the lock (the OS released the flock for it).
        previous = Holder.parse(os.pread(fd, 1 << 16, 0))
        me = Holder.current(purpose)
        line = (json.dumps(dataclasses.asdict(me)) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, line, 0)
        try:
            yield WorkdirLock(workdir=workdir, path=path, holder=me, previous=previous)
        finally:
            # Empty the record while still holding the flock, then unlock; the file stays, so a
            # run opening it meanwhile never locks a file that is about to be unlinked.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _fsync_dir(folder: pathlib.Path) -> None:
    """Makes a rename in `folder` durable; skipped where the platform cannot open folders."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders; the rename itself is still atomic
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[pathlib.Path]:
    """A temporary path to write `path`'s new content to (by any writer: numpy, imageio); when the
    block ends without error it replaces `path` in one step, otherwise it is removed."""
    path = pathlib.Path(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    # The temp file lives in the target's folder: os.replace is atomic only within one filesystem.
    # Its leading dot keeps it out of globs of the store's entries; it keeps the suffix writers
    # choose their format by.
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield pathlib.Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the data must be on disk before the rename makes it visible
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(parent)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replaces `path` with `data` in one step: readers see the old file or the new, never a part."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """`write_bytes_atomic` of `text` encoded as `encoding`."""
    write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """`write_text_atomic` of `obj` as JSON (indent 2, keys in their order, trailing newline)."""
    # Serialise first, so an unserialisable object fails before any file is touched.
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json_or_none(path: str | os.PathLike[str]) -> dict | list | None:
    """The JSON object or array in `path`; None, with a warning, if it is absent or unusable."""
    path = pathlib.Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None  # an entry not built yet: normal, so no warning
    except OSError as e:
        reason = e.strerror or type(e).__name__
    else:
        if not raw.strip():
            reason = "empty"
        else:
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError
                reason = f"not valid JSON: {e}"
            else:
                if isinstance(value, (dict, list)):
                    return value
                reason = f"a JSON {type(value).__name__}, not an object or array"
    log.warning("Ignoring unreadable %s (%s); it will be rebuilt.", path, reason)
    return None
