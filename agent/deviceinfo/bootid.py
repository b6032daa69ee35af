"""This boot: its id (`/proc/sys/kernel/random/boot_id`) and when it began.

Boot time comes from CLOCK_BOOTTIME (the kernel's uptime, suspend included),
not from a file: nothing here can fail on a device's odd /proc.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["BOOT_ID_PATH", "boot_time", "read_boot_id"]

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    """The kernel's id of this boot, or "" when it cannot be read."""
    try:
        return path.read_bytes().decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def boot_time() -> datetime:
    """When this boot began, to the second (as /proc/stat's `btime` says it)."""
    since = time.clock_gettime(time.CLOCK_BOOTTIME)
    return datetime.fromtimestamp(round(time.time() - since), UTC)
