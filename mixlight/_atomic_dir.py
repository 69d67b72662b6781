"""Replace files in a directory so that a crash, a kill or a second writer never leaves a
mixture: the commit protocol behind :func:`mixlight.extend.write_adapter`.

Invariants this module keeps (POSIX file systems; see ``docs/reliability.md``):

* A file is replaced by ``os.replace`` of a complete, fsynced staging file in the same
  directory, so a reader that opens it sees all of the old or all of the new bytes.
* Writers to one directory are serialised by an exclusive ``flock`` on the directory itself,
  released by the kernel when the holder dies, so a killed writer never blocks the next one.
* Staging files are named ``.mixlight-staging-*``; a writer holding the lock removes every
  such entry it finds (they belong to writers that died) and its own on failure.
* After the renames the directory is fsynced, so a power loss after a successful save keeps
  the new names; a directory this call created is made durable in its parent too.
* Files are created with mode ``0o666`` minus the process umask, like any file the user writes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:  # POSIX; elsewhere writers are not serialised (documented limitation)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

STAGING_PREFIX = ".mixlight-staging-"
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def as_directory(directory: Any, caller: str) -> Path:
    """``directory`` as a Path, refusing values that would silently mean something else."""
    if not isinstance(directory, (str, os.PathLike)) or isinstance(directory, bytes):
        raise TypeError(
            f"{caller}: the directory must be a str or os.PathLike such as 'out/adapter', "
            f"got {type(directory).__name__} {directory!r}"
        )
    if os.fspath(directory) == "":
        raise ValueError(
            f"{caller}: the directory is an empty string; pass a path such as 'out/adapter' "
            "(use '.' to mean the current directory)"
        )
    return Path(directory)


class DirectoryWriter:
    """Stages files in an open, locked directory and commits them one rename at a time."""

    def __init__(self, root: Path, fd: int | None) -> None:
        self.root = root
        self._fd = fd
        self._staged: dict[str, Path] = {}
        self.committed: list[str] = []

    def stage(self, name: str, data: bytes) -> None:
        """Write ``data`` to a fresh staging file (fsynced) that will become ``name``."""
        path = self.root / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{name}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._staged[name] = path
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def commit(self, name: str) -> None:
        """Atomically replace ``name`` by its staged file."""
        os.replace(self._staged.pop(name), self.root / name)
        self.committed.append(name)

    def discard(self) -> None:
        for path in self._staged.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._staged.clear()

    def sync(self) -> None:
        if self._fd is not None:
            _fsync_fd(self._fd)


@contextlib.contextmanager
def locked_writer(root: Path) -> Iterator[DirectoryWriter]:
    """Create ``root`` if needed, take its writer lock, clear dead writers' staging files,
    yield a :class:`DirectoryWriter`, then fsync the directory (or discard what was staged
    when the block raised) and release the lock."""
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR,
            f"{root} exists and is not a directory; an adapter is saved as a directory, so "
            "choose another path or remove that file",
        )
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    if created:
        _fsync_dir(root.resolve().parent)
    fd = os.open(root, os.O_RDONLY) if fcntl is not None else None  # (Windows: no dir fds)
    writer = DirectoryWriter(root, fd)
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        _clear_staging(root)
        try:
            yield writer
        except BaseException:
            writer.discard()
            raise
        writer.sync()
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _clear_staging(root: Path) -> None:
    """Remove the staging files dead writers left (a directory of that name is not ours)."""
    for entry in root.iterdir():
        if entry.name.startswith(STAGING_PREFIX) and (entry.is_symlink() or not entry.is_dir()):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def _fsync_dir(path: Path) -> None:
    if fcntl is None:  # pragma: no cover - Windows cannot open directories
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        _fsync_fd(fd)
    finally:
        os.close(fd)


def _fsync_fd(fd: int) -> None:
    """fsync a directory; file systems that cannot (EINVAL, ENOTSUP) are left as they are."""
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, getattr(errno, "ENOTSUP", errno.EINVAL)):
            raise


def explain_os_error(err: OSError, root: Path, committed: bool = False) -> OSError:
    """The same OSError class and errno, with a message that says what happened to the
    previous contents (unchanged, or already replaced when the commit had happened) and what
    to do."""
    if err.errno in _NO_SPACE:
        what = "no space left on the device (or quota exceeded)"
        fix = "free some space and save again"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = f"permission denied ({err.strerror})"
        fix = "save to a directory you can write to"
    else:
        what = f"{err.strerror or err}"
        fix = "fix the cause and save again"
    state = (
        "the new adapter is saved, but the save could not finish"
        if committed
        else "the adapter already there (if any) is unchanged"
    )
    return type(err)(err.errno, f"could not save the adapter to {root}: {what}; {state}; {fix}")


class NotARegularFileError(OSError):
    """A path that names a FIFO, a device, a socket or a directory where a file should be."""


def file_kind(mode: int) -> str:
    """``"a regular file"``, ``"a directory"``, ``"a FIFO"``, ... for an ``st_mode``."""
    kinds = [
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_once(path: Path) -> bytes:
    """All bytes of ``path`` through one open file: one version of a file that is replaced
    by rename, never a mixture. Only a regular file is read: a FIFO or a device (which could
    block or never end) raises :class:`NotARegularFileError` without waiting."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFileError(
                errno.EINVAL, f"{path} is {file_kind(mode)}, not a regular file"
            )
        return f.read()
