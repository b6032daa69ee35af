"""The root side's upgrade journal and history, fsync'd before every side effect."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.durable import UnsafeFileError, atomic_write, read_bounded
from harmony_core.contracts import Timestamp, utcnow

__all__ = ["History", "JournalRecord", "ensure_root_dir", "load_history", "load_journal",
           "save_history", "save_journal"]

# Far above a journal (an envelope of at most 64 KiB, 20 log lines) or a history (2 x 1000 ids).
_MAX_RECORD_BYTES = 4 * 1024 * 1024


class JournalRecord(BaseModel):
    """One upgrade as the switch knows it. `state` is a stored kebab-case name (states.State)."""

    model_config = ConfigDict(extra="ignore")
    schema_version: Literal[1] = 1
    state: str
    device_id: str
    request_id: str | None = None
    envelope: str | None = None  # the signed request as received, to re-verify on resume
    sha256: str | None = None
    from_version: str | None = None
    to_version: str | None = None
    confirm_window_s: float | None = None
    reason: str | None = None
    log_tail: list[str] | None = None
    restarted_at: Timestamp | None = None
    started_at: Timestamp = Field(default_factory=utcnow)
    updated_at: Timestamp = Field(default_factory=utcnow)
    resumes: int = 0
    store_count: int = 0
    published: bool = False


class History(BaseModel):
    """What the root side has handled: request ids (no replay) and digests that rolled back."""

    model_config = ConfigDict(extra="ignore")
    schema_version: Literal[1] = 1
    handled: list[str] = Field(default_factory=list)
    rolled_back: list[str] = Field(default_factory=list)


def ensure_root_dir(path: Path, mode: int) -> None:
    """A directory of root's (the journal dir 0711, its work dir 0700), never a symlink.

    0711 lets the agent reach the status file it relays (0644) without listing
    the directory; the journal and the history stay 0600.
    """
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    if path.is_symlink():
        raise OSError(f"{path} is a symlink; refusing to keep the upgrade journal there")
    os.chmod(path, mode)


def load_journal(path: Path) -> JournalRecord | None:
    """The journal, None when absent. A corrupt journal reads as an unknown state (roll back)."""
    try:
        data = read_bounded(path, _MAX_RECORD_BYTES)
    except FileNotFoundError:
        return None
    except UnsafeFileError:
        data = b""  # oversized or not a regular file: not a journal the switch wrote
    try:
        return JournalRecord.model_validate_json(data)
    except (ValidationError, ValueError):
        return JournalRecord(
            state="corrupt", device_id="", reason="the upgrade journal was corrupt"
        )


def save_journal(path: Path, rec: JournalRecord, now: datetime | None = None) -> JournalRecord:
    rec = rec.model_copy(update={"updated_at": now or utcnow(), "store_count": rec.store_count + 1})
    atomic_write(path, rec.model_dump_json().encode(), mode=0o600)
    return rec


def load_history(path: Path) -> History:
    try:
        return History.model_validate_json(read_bounded(path, _MAX_RECORD_BYTES))
    except (OSError, ValidationError, ValueError):
        return History()


def save_history(path: Path, h: History) -> None:
    h.handled = h.handled[-1000:]
    h.rolled_back = h.rolled_back[-1000:]
    atomic_write(path, h.model_dump_json().encode(), mode=0o600)
