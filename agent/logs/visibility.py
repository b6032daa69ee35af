"""Can this process see the whole journal? libsystemd alone never says it cannot.

A reader that lacks permission, or a machine without journal files or without a
running journald, gets an empty journal and no error. `blind_reason()` looks
for each of those causes and returns what to do about it, or None when the
journal is in sight. It reads only file metadata and one socket connect.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = ["JournalPaths", "blind_reason", "journald_running"]


@dataclass(frozen=True)
class JournalPaths:
    """Where journald lives; tests point these elsewhere."""

    dirs: tuple[Path, ...] = (Path("/run/log/journal"), Path("/var/log/journal"))
    socket: Path = Path("/run/systemd/journal/socket")


def _journal_files(dirs: tuple[Path, ...]) -> list[Path]:
    out: list[Path] = []
    for d in dirs:
        try:
            for machine in d.iterdir():
                if machine.is_dir():
                    try:
                        out.extend(p for p in machine.iterdir() if p.name.endswith(".journal"))
                    except PermissionError:
                        out.append(machine / "system.journal")  # there, but unreadable
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
    return out


def journald_running(path: Path = JournalPaths.socket) -> bool:
    """Whether a journald listens on its native socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _in_journal_group() -> bool:
    try:
        gid = grp.getgrnam("systemd-journal").gr_gid
    except KeyError:
        return False
    return gid in os.getgroups() or os.getegid() == gid


def blind_reason(paths: JournalPaths | None = None) -> str | None:
    """Why the journal would read as empty, with what to do; None when it is visible."""
    p = paths or JournalPaths()
    if not journald_running(p.socket):
        return (
            f"systemd-journald is not running (no listener on {p.socket}); start systemd-journald"
        )
    files = _journal_files(p.dirs)
    if not files:
        return (
            f"no journal files under {' or '.join(map(str, p.dirs))}; "
            "check systemd-journald's Storage= setting"
        )
    system = [f for f in files if f.name.startswith("system")]
    readable = [f for f in (system or files) if os.access(f, os.R_OK)]
    if not readable:
        group = "" if _in_journal_group() else " and is not in group systemd-journal"
        return (
            f"user {_user()} cannot read the system journal ({(system or files)[0]}){group}; "
            f"add it: usermod -aG systemd-journal {_user()}, then restart the agent"
        )
    return None
