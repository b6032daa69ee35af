"""The local health file, written atomically by the daemon.

Read by `status` and by the upgrade watcher.

It says "acknowledged" only for a heartbeat that JetStream really acknowledged.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from pydantic import ValidationError

from harmony_core.contracts import Health, dump_json

__all__ = ["atomic_write", "read_health", "write_health"]


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Temp file in the same directory, fsync, rename, fsync of the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_health(path: Path, health: Health) -> None:
    # /run is tmpfs: no fsync needed, the rename alone makes it atomic for readers.
    atomic_write(path, dump_json(health), 0o644, durable=False)


def read_health(path: Path) -> Health | None:
    """The health file's contents, or None when absent or unreadable."""
    try:
        return Health.model_validate_json(path.read_bytes())
    except (OSError, ValidationError, ValueError):
        return None
