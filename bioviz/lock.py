"""One writer per artifact: an exclusive lock held from the moment a writer opens an
artifact (a store, an SAE folder, a FeatureTable) until it has finished writing it.

The lock is a file — ``.bioviz.lock`` inside an artifact folder, ``.NAME.bioviz.lock`` beside
an artifact file — locked with ``fcntl.flock`` and holding its holder as JSON (pid, host,
start time, command). The kernel releases a flock when its process dies, so a lock left by
a killed process is free: the next writer takes it over (and logs whose it was). A second
writer while the first is alive is refused with :class:`LockedError`, naming the holder.

Where ``flock`` is not available (no ``fcntl``, or a file system that refuses it) the lock
falls back to the holder record alone: it is stale when its holder's pid is not alive on
this host. The file is removed when the lock is released, so a finished artifact holds no
trace of it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from .errors import BiovizError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

log = logging.getLogger(__name__)

LOCK_NAME = ".bioviz.lock"


class LockedError(BiovizError):
    """The artifact is being written by another process (or another writer in this one)."""


def lock_path(artifact, *, folder: bool = True) -> Path:
    """Where the lock of ``artifact`` lives: inside it for a folder, beside it for a file."""
    artifact = Path(artifact)
    return artifact / LOCK_NAME if folder else artifact.with_name(f".{artifact.name}{LOCK_NAME}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    cmd = f": {holder['command']}" if holder.get("command") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {when}{cmd}"


class ArtifactLock:
    """An exclusive writer's lock on one artifact.

    Parameters
    ----------
    artifact
        The artifact's path: a folder (the lock file goes inside it, the folder must exist)
        or a file (the lock file goes beside it).
    what
        What the artifact is, for messages ("activation store", "SAE folder", ...).
    folder
        Whether ``artifact`` is a folder.

    Examples
    --------
    >>> import tempfile
    >>> from bioviz.lock import ArtifactLock, LockedError
    >>> folder = tempfile.mkdtemp()
    >>> with ArtifactLock(folder, "demo folder"):
    ...     try:
    ...         ArtifactLock(folder, "demo folder").acquire()
    ...     except LockedError as e:
    ...         print("refused")
    refused
    """

    def __init__(self, artifact, what: str = "artifact", *, folder: bool = True):
        self.artifact = Path(artifact)
        self.what = what
        self.file = lock_path(self.artifact, folder=folder)
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> dict:
        """The holder record in the lock file ({} when there is none or it is unreadable)."""
        try:
            return json.loads(self.file.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> ArtifactLock:
        """Take the lock, or raise :class:`LockedError` naming its holder."""
        if self._fd is not None:
            return self
        for _ in range(100):  # retried only while another writer removes the file under us
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not self._lock(fd):
                    raise LockedError(
                        f"{self.artifact} is being written by another process ({_describe(_read(fd))}); "
                        f"a second writer of this {self.what} is refused. Wait for it to finish, or "
                        "stop it and rerun (a lock left by a stopped process is taken over)"
                    )
                st = os.fstat(fd)
                ino = (st.st_dev, st.st_ino)
                # the previous holder may have released (and removed) the file meanwhile
                current = _identity(self.file) == ino
                if current:
                    previous = _read(fd)
                    if previous:
                        ours = previous.get("pid") == os.getpid() and previous.get("host") == socket.gethostname()
                        log.warning("%s: taking over the lock left by %s", self.artifact,
                                    "an earlier writer in this process that did not release it" if ours
                                    else f"{_describe(previous)}, which is no longer running")
                    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                            "command": " ".join(sys.argv)[:500], "what": self.what}
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, json.dumps(mine).encode(), 0)
                    os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            if current:
                self._fd, self._ino = fd, ino
                return self
            os.close(fd)  # and retry on the file now at the path
        raise LockedError(f"{self.file}: could not take the lock (it kept changing)")

    def _lock(self, fd: int) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS):
                    raise
        # no flock on this file system: the holder record decides
        holder = _read(fd)
        if not holder:
            return True
        if holder.get("host") != socket.gethostname():
            return False  # a process on another host: cannot tell whether it is alive
        return not _alive(int(holder.get("pid", -1)))

    def release(self) -> None:
        """Remove the lock file and release the lock (nothing happens when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _identity(self.file) == self._ino:
                self.file.unlink(missing_ok=True)
        finally:
            os.close(fd)  # releases the flock

    def __enter__(self) -> ArtifactLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def _read(fd: int) -> dict:
    try:
        size = os.fstat(fd).st_size
        return json.loads(os.pread(fd, size, 0) or b"{}") if size else {}
    except (OSError, ValueError):
        return {}


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def publish(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` (file or folder) to ``final``: whole or not at all. A previous
    ``final`` is moved aside first and removed only once the new one is in place."""
    import shutil

    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        os.replace(tmp, final)
