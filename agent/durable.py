"""Files that must survive a crash, and files read from places we do not fully trust.

`atomic_write` is the one way the agent and the root-side switch replace a file:
temp file in the same directory, fsync, `os.replace`, fsync of the directory, so
a crash leaves the old file or the new one, never a torn one.

`read_bounded` is the one way they read a small file another party could have
planted (the agent's health file read by root, the staged envelope, records in
the agent's state dir): never through a symlink, never a FIFO or a device (the
open does not block, the type is checked on the open file), never more than
`limit` + 1 bytes.

Root reaching into a directory the agent owns walks it with `open_dir` (one
component at a time, never through a symlink) and writes there with
`atomic_write_at`, relative to the directory fd it opened: a path the agent
swaps for a link between a check and a use is never followed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import tempfile
from pathlib import Path

__all__ = [
    "UnsafeFileError",
    "atomic_write",
    "atomic_write_at",
    "fsync_dir",
    "open_dir",
    "open_regular",
    "read_bounded",
]

_CHUNK = 64 * 1024


class UnsafeFileError(OSError):
    """A file `read_bounded` refuses: a symlink, not a regular file, or larger than its limit."""


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in directory `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, fsync: bool = True) -> None:
    """Replace `path` with `data` (file mode `mode`): the old content or the new, never torn.

    `fsync=False` skips both fsyncs where durability does not matter (tmpfs);
    the rename alone still makes the replacement atomic for readers.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(path.parent)


def open_dir(path: Path | str, *, dir_fd: int | None = None) -> int:
    """Open directory `path` (relative to `dir_fd` if given) without following a symlink.

    Raises UnsafeFileError when it is a symlink or not a directory,
    FileNotFoundError when it is missing.
    """
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeFileError(e.errno, "is a symlink or not a directory", str(path)) from e
        raise


def atomic_write_at(dir_fd: int, name: str, data: bytes, mode: int = 0o600) -> None:
    """`atomic_write` of `name` inside the directory open as `dir_fd`, always fsync'd.

    The temp file is created O_EXCL|O_NOFOLLOW and renamed relative to `dir_fd`,
    so nothing is written through a link someone else put in that directory;
    a link already at `name` is replaced, not followed.
    """
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"{name!r} is not a file name")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = f".{name}.{secrets.token_hex(6)}"
        try:
            fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError(errno.EEXIST, "no free temporary name", name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


def open_regular(path: Path | str, *, dir_fd: int | None = None) -> tuple[int, os.stat_result]:
    """Open `path` for reading if it is a regular file; its fd and its stat.

    O_NOFOLLOW refuses a symlink in the last component; O_NONBLOCK keeps a FIFO
    from blocking the open; the type is checked with fstat on what was opened,
    so a swap after a check cannot fool it. Raises UnsafeFileError (an OSError).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeFileError(errno.ELOOP, "is a symlink; not followed", str(path)) from e
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(errno.EINVAL, "is not a regular file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_bounded(path: Path | str, limit: int, *, dir_fd: int | None = None) -> bytes:
    """The bytes of regular file `path`; UnsafeFileError past `limit` bytes or if not regular.

    Reads at most `limit` + 1 bytes whatever the file claims (files in /proc say 0).
    """
    fd, st = open_regular(path, dir_fd=dir_fd)
    chunks: list[bytes] = []
    got = 0
    try:
        if st.st_size <= limit:
            while got <= limit and (chunk := os.read(fd, min(_CHUNK, limit + 1 - got))):
                chunks.append(chunk)
                got += len(chunk)
    finally:
        os.close(fd)
    if st.st_size > limit or got > limit:
        raise UnsafeFileError(errno.EFBIG, f"is larger than {limit} bytes", str(path))
    return b"".join(chunks)
