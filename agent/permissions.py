"""Who else could change (or read) a file we trust: ssh's StrictModes rule. Pure.

A trusted key, a credential, or a directory holding them counts only if it is
owned by root or by the user this process runs as, and no one else (group or
others) may write it; a secret must not be readable by every user either. A
directory *above* such a file may be world-writable if it is sticky (like
/tmp): there no one may rename or remove what they do not own.

Each function takes a path and its stat result and returns what is wrong,
with the command that fixes it, or None.
"""

from __future__ import annotations

import os
import stat

__all__ = ["unsafe_ancestor", "unsafe_file"]


def _owner(path: str, st: os.stat_result) -> str | None:
    me = os.geteuid()
    if st.st_uid in (0, me):
        return None
    return (
        f"{path} is owned by uid {st.st_uid}, neither root nor this user (uid {me}): "
        f"chown root {path}"
    )


def _writable(path: str, st: os.stat_result) -> str | None:
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(st.st_mode)
        return f"{path} is writable by group or others (mode {mode:04o}): chmod go-w {path}"
    return None


def unsafe_file(path: str, st: os.stat_result, *, secret: bool = False) -> str | None:
    """What makes a file (or the directory holding trusted files) unsafe to trust, or None.

    `secret`: it must not be readable by every user either (a key, a password).
    """
    if problem := _owner(path, st) or _writable(path, st):
        return problem
    if secret and st.st_mode & stat.S_IROTH:
        mode = stat.S_IMODE(st.st_mode)
        return (
            f"{path} is readable by every user (mode {mode:04o}): chmod 0640 {path} "
            "(owned by root, group harmony-agent) or 0600"
        )
    return None


def unsafe_ancestor(path: str, st: os.stat_result) -> str | None:
    """What makes a directory above a trusted one unsafe, or None (a sticky one may be open)."""
    if problem := _owner(path, st):
        return problem
    if st.st_mode & stat.S_ISVTX:
        return None
    return _writable(path, st)
