"""The local health file, written atomically by the daemon.

Read by `status` and by the upgrade watcher (root), which trusts nothing the
agent wrote: the read never follows a symlink, never blocks on a FIFO and is
bounded.

It says "acknowledged" only for a heartbeat that JetStream really acknowledged.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from agent.durable import atomic_write, read_bounded
from harmony_core.contracts import Health, dump_json

__all__ = ["read_health", "write_health"]

# A health file is a few KiB; anything this large is not one.
_MAX_HEALTH_BYTES = 1024 * 1024


def write_health(path: Path, health: Health) -> None:
    # /run is tmpfs: no fsync needed, the rename alone makes it atomic for readers.
    atomic_write(path, dump_json(health), mode=0o644, fsync=False)


def read_health(path: Path) -> Health | None:
    """The health file's contents, or None when absent, unreadable or not a safe regular file."""
    try:
        return Health.model_validate_json(read_bounded(path, _MAX_HEALTH_BYTES))
    except (OSError, ValidationError, ValueError):
        return None
