"""The hand-over between the agent (writes staging) and the root switch (reads it, untrusted).

The agent writes the envelope and the artifact, then `ready` last; the path
unit fires on `ready`. The root side opens every component with O_NOFOLLOW
relative to a directory fd, refuses anything but regular files, bounds every
size by the *signed* request and copies the artifact into its own directory
while hashing it, so what it checks is what it installs. It consumes the
trigger first, whatever it is: a `ready` that is a directory or a link, or a
staging directory that is a link, is removed and refused, never left to fire
the path unit again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import stat
from pathlib import Path

from agent.durable import (
    UnsafeFileError,
    atomic_write,
    atomic_write_at,
    open_dir,
    open_regular,
    read_bounded,
)
from agent.upgrade.layout import Staging
from harmony_core.envelope import MAX_ENVELOPE_BYTES
from harmony_core.errors import UpgradeRejectedError

__all__ = [
    "clear_staged",
    "open_staging",
    "read_staged_envelope",
    "stage",
    "take_staged_artifact",
    "write_rolled_back",
]

log = logging.getLogger("agent.upgrade.handover")

_CHUNK = 1024 * 1024


def clear_staged(staging: Staging) -> None:
    """Remove whatever an earlier hand-over left (agent side)."""
    for name in (Staging.READY, Staging.ENVELOPE, Staging.ARTIFACT):
        with contextlib.suppress(FileNotFoundError):
            (staging.staged / name).unlink()


def stage(staging: Staging, envelope: bytes, artifact: Path) -> None:
    """Move the verified download into staging and write `ready` last (agent side)."""
    staging.staged.mkdir(parents=True, exist_ok=True)
    clear_staged(staging)
    atomic_write(staging.staged / Staging.ENVELOPE, envelope, mode=0o644)
    os.replace(artifact, staging.staged / Staging.ARTIFACT)
    os.chmod(staging.staged / Staging.ARTIFACT, 0o644)
    atomic_write(staging.staged / Staging.READY, b"1\n", mode=0o644)


def open_staging(staging: Staging, *parts: str) -> int:
    """A directory fd of `state_dir/<parts...>`, each part opened without following a link.

    `state_dir` comes from root's own config (its parent is root's); everything
    below it is the agent's. UnsafeFileError names the part that is a symlink
    or not a directory; FileNotFoundError when a part is missing.
    """
    fd = os.open(staging.state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            nfd = open_dir(part, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except OSError:
        os.close(fd)
        raise
    return fd


def _open_dir(staging: Staging) -> int:
    return open_staging(staging, "upgrade", "staged")


def _quarantine(name: str, dfd: int) -> None:
    """Get `name` out of the way whatever it is: rename it aside, then remove it.

    The rename takes it off the watched path even when it cannot be removed
    (a directory the agent keeps filling); the removal never follows a link
    (shutil.rmtree works on directory fds here).
    """
    aside = f".{name}.refused-{secrets.token_hex(4)}"
    os.rename(name, aside, src_dir_fd=dfd, dst_dir_fd=dfd)
    try:
        st = os.stat(aside, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(aside, dir_fd=dfd)
        else:
            os.unlink(aside, dir_fd=dfd)
    except OSError as e:
        log.warning("cannot remove the refused %s (renamed to %s): %s", name, aside, e)


def _unsafe_dir(staging: Staging, e: UnsafeFileError) -> UpgradeRejectedError:
    """Remove the staging path component that is a link or a file; the refusal to report."""
    part = os.path.basename(e.filename or "")
    parent = ("upgrade",) if part == "staged" else ()
    where = staging.base / "staged" if part == "staged" else staging.base
    try:
        pfd = open_staging(staging, *parent)
        try:
            _quarantine(part, pfd)
        finally:
            os.close(pfd)
    except OSError as err:
        log.error("cannot remove %s: %s", where, err)
    return UpgradeRejectedError(
        f"the staging directory {where} is a symlink or not a directory (the agent never "
        "makes one); removed it, nothing was installed"
    )


def _take_trigger(staging: Staging, dfd: int) -> bool:
    """Consume `ready`: True if it was there as a regular file, False if absent.

    Anything else there (a directory, a link, a FIFO) is quarantined and refused,
    so the path unit, which fires while `ready` exists, never fires again for it.
    """
    try:
        st = os.stat(Staging.READY, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISREG(st.st_mode):
        try:
            os.unlink(Staging.READY, dir_fd=dfd)
            return True
        except FileNotFoundError:
            return False
        except OSError:
            pass  # swapped for a directory since the stat: quarantined below
    _quarantine(Staging.READY, dfd)
    raise UpgradeRejectedError(
        f"the staged trigger {staging.staged / Staging.READY} is not a regular file "
        "(the agent writes a file); removed it, nothing was installed"
    )


def read_staged_envelope(staging: Staging) -> bytes | None:
    """Consume the trigger and return the staged envelope, None when nothing is staged.

    Raises UpgradeRejectedError for unsafe staging, after the trigger (or the
    staging directory that was a link) is gone: a refusal never fires twice.
    """
    try:
        dfd = _open_dir(staging)
    except UnsafeFileError as e:
        raise _unsafe_dir(staging, e) from e
    except OSError:
        return None
    try:
        if not _take_trigger(staging, dfd):
            return None
        try:
            return read_bounded(Staging.ENVELOPE, MAX_ENVELOPE_BYTES, dir_fd=dfd)
        except UnsafeFileError as e:
            raise UpgradeRejectedError(f"the staged envelope {e.strerror}") from e
        except OSError as e:
            raise UpgradeRejectedError(f"the staged envelope cannot be read: {e}") from e
    finally:
        os.close(dfd)


def write_rolled_back(staging: Staging, data: bytes) -> None:
    """Root's copy of the rolled-back digests for the agent's own checks (`ROLLED_BACK`).

    Written relative to the fd of `upgrade/`, opened without following a link,
    so the agent cannot steer where root writes. A missing `upgrade/` is left
    missing (root must not create directories the agent then cannot write).
    """
    dfd = open_staging(staging, "upgrade")
    try:
        atomic_write_at(dfd, Staging.ROLLED_BACK, data, mode=0o644)
    finally:
        os.close(dfd)


def take_staged_artifact(staging: Staging, size: int, sha256: str, into: Path) -> None:
    """Copy the staged artifact to `into` (root-owned) if it is exactly the signed one."""
    try:
        dfd = _open_dir(staging)
        try:
            fd, st = open_regular(Staging.ARTIFACT, dir_fd=dfd)
        finally:
            os.close(dfd)
    except UnsafeFileError as e:
        raise UpgradeRejectedError(f"the staged artifact {e.strerror}") from e
    except OSError as e:
        raise UpgradeRejectedError(f"the staged artifact cannot be read: {e}") from e
    if st.st_size != size:
        os.close(fd)
        raise UpgradeRejectedError(
            f"the staged artifact has {st.st_size} bytes, the signed request says {size}"
        )
    h = hashlib.sha256()
    into.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        into.unlink()
    out_fd = os.open(into, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "rb") as src, os.fdopen(out_fd, "wb") as out:
        copied = 0
        while chunk := src.read(min(_CHUNK, size + 1 - copied)):
            copied += len(chunk)
            if copied > size:
                break
            h.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if copied != size or h.hexdigest() != sha256:
        into.unlink()
        raise UpgradeRejectedError(
            "the staged artifact does not match the signed sha256 (changed after download?)"
        )
