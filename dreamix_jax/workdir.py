"""Workdirs on a local disk or in a GCS bucket: one run at a time, and files that are either old or
new, never torn.

Every path this package reads or writes goes through `as_path`: a local path (made absolute) or a
`gs://` URL, as an `etils.epath.Path` (gcsfs behind gs://), so one code path serves both stores.
Any other URL scheme is refused in one sentence.

Guarantees:

* `lock(workdir, purpose)` holds `<workdir>/.lock` for the life of a run. A second `train`, `edit`
  or `sweep` on the same workdir refuses at once with `WorkdirBusy` naming the holder (pid, host,
  purpose, start time). A lock left by a run that died is taken over, and the new run is told whose
  it was.
  - Local folder: an exclusive `fcntl.flock` on the file. The operating system drops it when its
    holder dies, even on `kill -9`. The file itself stays in place; the flock, not the file's
    existence, is the truth.
  - gs://: an object created only if absent (`if_generation_match=0`), so of two runs racing for
    it exactly one wins, on any number of hosts. Its holder rewrites it every `RENEW_SECONDS`
    (conditional on the generation it wrote last) and deletes it when the run ends. A lock not
    renewed for `LEASE_SECONDS`, or one naming a process of this host that no longer exists,
    belongs to a dead run: it is taken over by a conditional overwrite, so only one taker wins.
* `atomic_path`, `write_bytes_atomic`, `write_text_atomic` and `write_json_atomic` replace a file
  in one step: a reader, or the next run after a crash, sees the whole old file or the whole new
  one. Locally: a temp file in the same folder, fsync, `os.replace`, fsync of the folder, and no
  temp file is left behind when the write fails. On gs://: the new content is written to a local
  temp file, then uploaded as one object; GCS shows an object only once its upload is complete,
  and a failed upload leaves the old object.
* `read_json_or_none` reads a store entry and answers None, with a warning, for an entry that a
  crash (or anything else) left missing, empty or unparsable, so the caller rebuilds it.

Limitation: flock is only as good as the filesystem's support for it. On local disks it is exact;
on network filesystems (NFS, SMB/CIFS, Lustre, FUSE mounts of object stores such as gcsfuse) it
may be emulated, confined to one client machine, or silently a no-op, so two hosts sharing a
workdir over such a mount may both get the lock. Give such workdirs as gs:// URLs instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import functools
import json
import logging
import os
import pathlib
import re
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from etils import epath

if TYPE_CHECKING:  # gcsfs and google-cloud-storage are imported where gs:// needs them
    import fsspec
    from google.cloud import storage

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# A gs:// lock is renewed this often, and one not renewed for LEASE_SECONDS is a dead run's. The
# lease is long against a renewal that is late (a busy host, a slow request) and short against a
# preempted run's rerun waiting for it.
RENEW_SECONDS = 30.0
LEASE_SECONDS = 120.0

# Files written atomically get the permissions a plain `open(path, "w")` would give them
# (mkstemp makes them 0600). The umask can only be read by setting it, which is not thread-safe,
# so it is read once, at import, before any worker threads exist.
_UMASK = os.umask(0)
os.umask(_UMASK)

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


# ------------------------------------------------------------------------------------------------
# Paths: local or gs://.
# ------------------------------------------------------------------------------------------------


def as_path(location: str | os.PathLike[str]) -> epath.Path:
    """A local path (made absolute) or a `gs://` URL as an `epath.Path`; other URLs are refused."""
    text = os.fspath(location)
    url = _URL.match(text)
    if url is None:
        return epath.Path(os.path.abspath(text))
    if url.group(1) != "gs":
        raise ValueError(f"{text} is a {url.group(1)}:// URL; give a local path or a gs:// URL.")
    return epath.Path(text)


def is_gcs(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a `gs://` URL."""
    return os.fspath(path).startswith("gs://")


def _gcsfs(path: epath.Path) -> fsspec.AbstractFileSystem:
    """The gcsfs file system epath reads `path` with: sharing it keeps its listing cache true."""
    from etils.epath import backend

    return backend.fsspec_backend.fs(path)


def _make_folder(path: epath.Path) -> None:
    """Create a local folder and its parents; nothing on GCS, which has no folders (and where gcsfs
    would create a missing bucket)."""
    if not is_gcs(path):
        path.mkdir(parents=True, exist_ok=True)


def copy_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy one file, each side local or gs://; `dst` is replaced in one step (`atomic_path`)."""
    with as_path(src).open("rb") as reader, atomic_path(dst) as tmp, open(tmp, "wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 22)


@contextlib.contextmanager
def local_copy(path: str | os.PathLike[str]) -> Iterator[pathlib.Path]:
    """`path` as a local file, for readers that need a file name (ffmpeg): itself, or a
    temporary download of a gs:// object, removed after the block."""
    path = as_path(path)
    if not is_gcs(path):
        yield pathlib.Path(path)
        return
    with tempfile.TemporaryDirectory() as folder:
        local = pathlib.Path(folder, path.name)
        copy_file(path, local)
        yield local


def download_folder(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy the files directly in folder `src` (local or gs://) to a new local folder `dst`, which
    appears whole or not at all."""
    dst = pathlib.Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}."))
    try:
        for item in as_path(src).iterdir():
            copy_file(item, staging / item.name)
        staging.rename(dst)
    except OSError:
        if not dst.is_dir():  # else another process put the same folder there first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# The lock.
# ------------------------------------------------------------------------------------------------


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

    def record(self) -> bytes:
        """The lock file's content: one JSON line."""
        return (json.dumps(dataclasses.asdict(self)) + "\n").encode()

    def is_dead_here(self) -> bool:
        """Whether this names a process of this host that no longer exists."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, and another user's
            return False
        return False


@dataclasses.dataclass(frozen=True)
class WorkdirLock:
    """A held workdir lock: what `lock` yields."""

    workdir: epath.Path
    path: epath.Path
    holder: Holder
    previous: Holder | None  # the record of a run that ended without releasing the lock, if any

    @property
    def note(self) -> str | None:
        """A line for the log when a lock left by a dead run was taken over, else None."""
        if self.previous is None:
            return None
        p = self.previous
        note = f"took over a lock left by {p.describe()}, which ended without releasing it"
        if p.host != self.holder.host and not is_gcs(self.path):
            # The flock succeeded, so the other host's run is dead, or this filesystem does not
            # carry flocks across machines (see the module docstring): worth saying which to check.
            note += ("; if that run is still going, this filesystem does not share locks between "
                     "hosts, so stop one of the two")
        return note


def _check_workdir(workdir: epath.Path) -> None:
    """Refuses a workdir that is a regular file, in one sentence."""
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"The workdir {workdir} is a file; give a folder.")


def _busy(workdir: epath.Path, held: Holder | None) -> WorkdirBusy:
    # No record: the holder is between taking the lock and writing its line.
    who = held.describe() if held else "another process (not yet recorded)"
    return WorkdirBusy(f"The workdir {workdir} is in use by {who}; wait for it to finish or give another --workdir.")


@contextlib.contextmanager
def lock(workdir: str | os.PathLike[str], purpose: str) -> Iterator[WorkdirLock]:
    """Holds `<workdir>/.lock` exclusively for the `with` block; `WorkdirBusy` if another run holds it.

    Locally the lock belongs to the open file, so a second `lock` on the same workdir fails even
    within one process, and children forked without exec (which inherit the descriptor) keep it
    held until they exit too. flock may be unreliable on network filesystems (see the module
    docstring). On gs:// the lock is an object renewed while held (see the module docstring), and a
    second `lock` fails within one process too.
    """
    if not purpose:
        raise ValueError("Give the lock a purpose, such as 'train'.")
    workdir = as_path(workdir)
    _check_workdir(workdir)
    _make_folder(workdir)
    path, me = workdir / LOCK_NAME, Holder.current(purpose)
    hold = _hold_gcs if is_gcs(path) else _hold_flock
    with hold(workdir, path, me) as previous:
        yield WorkdirLock(workdir=workdir, path=path, holder=me, previous=previous)


@contextlib.contextmanager
def _hold_flock(workdir: epath.Path, path: epath.Path, me: Holder) -> Iterator[Holder | None]:
    """The local lock: flock on the file; yields the record of a dead holder it took over."""
    # O_RDWR | O_CREAT, never O_TRUNC: opening must not wipe the record of a live holder.
    # Python descriptors are close-on-exec, so programs this run launches do not inherit the lock.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise _busy(workdir, Holder.parse(os.pread(fd, 1 << 16, 0))) from None
        # A clean release empties the file, so any record still here is from a run that died
        # holding the lock (the OS released the flock for it).
        previous = Holder.parse(os.pread(fd, 1 << 16, 0))
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.record(), 0)
        try:
            yield previous
        finally:
            # Empty the record while still holding the flock, then unlock; the file stays, so a
            # run opening it meanwhile never locks a file that is about to be unlinked.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@functools.cache
def _storage() -> storage.Client:
    """A google-cloud-storage client: it has the generation preconditions gcsfs lacks."""
    from google.cloud import storage

    return storage.Client(project=None)  # object requests need no project


def _blob(path: epath.Path) -> storage.Blob:
    """A new handle on a gs:// object."""
    bucket, _, name = os.fspath(path)[len("gs://"):].partition("/")
    return _storage().bucket(bucket).blob(name)


@contextlib.contextmanager
def _hold_gcs(workdir: epath.Path, path: epath.Path, me: Holder) -> Iterator[Holder | None]:
    """The gs:// lock: an object only one run can create, renewed while held, deleted at the end;
    yields the record of a dead holder it took over."""
    blob, previous = _take_gcs(workdir, path, me.record())
    stop = threading.Event()
    renewer = threading.Thread(target=_renew_gcs, args=(blob, me.record(), stop), name="workdir-lock", daemon=True)
    renewer.start()
    try:
        yield previous
    finally:
        stop.set()
        renewer.join()
        _release_gcs(blob)


def _take_gcs(workdir: epath.Path, path: epath.Path, record: bytes) -> tuple[storage.Blob, Holder | None]:
    """The lock object, created or taken over from a dead run, and that run's record; `WorkdirBusy`
    if a live run holds it."""
    from google.api_core import exceptions

    while True:
        blob = _blob(path)  # a new handle each time: one that read a generation asks for that one
        try:
            blob.upload_from_string(record, if_generation_match=0)
            return blob, None
        except exceptions.NotFound:
            raise FileNotFoundError(f"The bucket of {workdir} does not exist; create it or give another "
                                    "--workdir.") from None
        except exceptions.PreconditionFailed:
            pass  # it exists: read whose it is
        try:
            blob.reload()
            held = Holder.parse(blob.download_as_bytes(if_generation_match=blob.generation))
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            continue  # released or replaced while we looked: try again
        renewed = time.time() - blob.updated.timestamp()
        if renewed < LEASE_SECONDS and not (held is not None and held.is_dead_here()):
            raise _busy(workdir, held)
        try:  # only one of several runs taking over the same dead run's lock wins
            blob.upload_from_string(record, if_generation_match=blob.generation)
        except exceptions.PreconditionFailed:
            continue
        return blob, held


def _renew_gcs(blob: storage.Blob, record: bytes, stop: threading.Event) -> None:
    """Rewrite the lock object every RENEW_SECONDS until `stop`, so other runs see its holder alive."""
    from google.api_core import exceptions

    while not stop.wait(RENEW_SECONDS):
        try:
            blob.upload_from_string(record, if_generation_match=blob.generation)
        except (exceptions.PreconditionFailed, exceptions.NotFound):
            log.error("Lost the lock %s to another run (this run did not renew it for %g s); stop one of the two.",
                      f"gs://{blob.bucket.name}/{blob.name}", LEASE_SECONDS)
            return
        except Exception as error:  # a network failure, of whichever library's type: the next renewal retries
            log.warning("Could not renew the lock gs://%s/%s (%s).", blob.bucket.name, blob.name, error)


def _release_gcs(blob: storage.Blob) -> None:
    """Delete the lock object if it is still the one this run wrote."""
    from google.api_core import exceptions

    with contextlib.suppress(exceptions.NotFound, exceptions.PreconditionFailed):
        blob.delete(if_generation_match=blob.generation)


# ------------------------------------------------------------------------------------------------
# Atomic writes and tolerant reads.
# ------------------------------------------------------------------------------------------------


def _fsync_dir(folder: epath.Path) -> None:
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


def _publish(tmp: pathlib.Path, path: epath.Path) -> None:
    """Put a finished local temp file in `path`'s place, whole."""
    if is_gcs(path):
        # One upload (with a content type from the suffix): GCS shows the object once it is complete.
        _gcsfs(path).put_file(os.fspath(tmp), os.fspath(path))
        return
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())  # the data must be on disk before the rename makes it visible
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[pathlib.Path]:
    """A local temporary path to write `path`'s new content to (by any writer: numpy, imageio); when
    the block ends without error it replaces `path` (local or gs://) in one step, otherwise it is removed."""
    path = as_path(path)
    _make_folder(path.parent)
    # A local target's temp file lives in its folder: os.replace is atomic only within one
    # filesystem. Its leading dot keeps it out of globs of the store's entries; it keeps the suffix
    # writers choose their format by. A gs:// target's is staged in the system's temp folder.
    fd, tmp = tempfile.mkstemp(dir=None if is_gcs(path) else path.parent, prefix=f".{path.stem}.",
                               suffix=path.suffix)
    os.close(fd)
    tmp = pathlib.Path(tmp)
    try:
        yield tmp
        _publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    path = as_path(path)
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
