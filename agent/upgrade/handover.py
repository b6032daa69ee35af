"""The hand-over between the agent (writes staging) and the root switch (reads it, untrusted).

The agent writes the envelope and the artifact, then `ready` last; the path
unit fires on `ready`. The root side opens every component with O_NOFOLLOW
relative to a directory fd, refuses anything but regular files, bounds every
size by the *signed* request and copies the artifact into its own directory
while hashing it, so what it checks is what it installs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

from agent.health import atomic_write
from agent.upgrade.layout import Staging
from harmony_core.errors import UpgradeRejectedError

__all__ = ["clear_staged", "read_staged_envelope", "stage", "take_staged_artifact"]

_MAX_ENVELOPE = 64 * 1024
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
    atomic_write(staging.staged / Staging.ENVELOPE, envelope, 0o644)
    os.replace(artifact, staging.staged / Staging.ARTIFACT)
    os.chmod(staging.staged / Staging.ARTIFACT, 0o644)
    atomic_write(staging.staged / Staging.READY, b"1\n", 0o644)


def _open_dir(staging: Staging) -> int:
    # state_dir comes from root's own config; below it everything is the agent's.
    fd = os.open(staging.state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in ("upgrade", "staged"):
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except OSError:
        os.close(fd)
        raise
    return fd


def _open_file(dfd: int, name: str) -> tuple[int, os.stat_result]:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UpgradeRejectedError(f"staged {name} is not a regular file")
    return fd, st


def read_staged_envelope(staging: Staging) -> bytes | None:
    """Consume the trigger and return the staged envelope, None when nothing is staged."""
    try:
        dfd = _open_dir(staging)
    except OSError:
        return None
    try:
        try:
            os.unlink(Staging.READY, dir_fd=dfd)
        except FileNotFoundError:
            return None
        try:
            fd, st = _open_file(dfd, Staging.ENVELOPE)
        except OSError as e:
            raise UpgradeRejectedError(f"the staged envelope cannot be read: {e}") from e
        with os.fdopen(fd, "rb") as f:
            if st.st_size > _MAX_ENVELOPE:
                raise UpgradeRejectedError("the staged envelope is too large")
            return f.read(_MAX_ENVELOPE + 1)[:_MAX_ENVELOPE]
    finally:
        os.close(dfd)


def take_staged_artifact(staging: Staging, size: int, sha256: str, into: Path) -> None:
    """Copy the staged artifact to `into` (root-owned) if it is exactly the signed one."""
    try:
        dfd = _open_dir(staging)
        try:
            fd, st = _open_file(dfd, Staging.ARTIFACT)
        finally:
            os.close(dfd)
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
