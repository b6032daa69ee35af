"""Small JSON records that must survive a crash: temp file, fsync, rename, fsync of the dir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.durable import atomic_write, read_bounded

__all__ = ["SCHEMA_VERSION", "ReplayStore", "load_json", "save_json"]

SCHEMA_VERSION = 1
# Far above any record of ours (1000 ids of at most ~300 bytes each).
_MAX_RECORD_BYTES = 4 * 1024 * 1024
# Bounded memory of request ids: the oldest are forgotten first. A request
# older than this many others has long expired, so expiry still refuses it.
_MAX_SEEN = 1000


def load_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at `path`, or None when absent.

    Corrupt, oversized, symlinked or non-regular files count as absent.
    """
    try:
        data = json.loads(read_bounded(path, _MAX_RECORD_BYTES))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save_json(path: Path, data: dict[str, Any], mode: int = 0o600) -> None:
    """Write `data` as the JSON record at `path`, atomically and durably."""
    atomic_write(path, json.dumps(data, sort_keys=True).encode(), mode=mode)


class ReplayStore:
    """Request ids this device has acted on, and artifact digests that rolled back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        raw = load_json(path) or {}
        seen = raw.get("seen", {})
        self.seen: dict[str, dict[str, Any]] = seen if isinstance(seen, dict) else {}
        bad = raw.get("rolled_back", [])
        self.rolled_back: list[str] = [d for d in bad if isinstance(d, str)]
        rev = raw.get("last_revision")
        # The KV revision last acted on: seen again at start, it is not a new request.
        self.last_revision: int | None = rev if isinstance(rev, int) else None
        cur = raw.get("in_progress")
        # A request whose download or staging was under way when the agent stopped.
        self.in_progress: str | None = cur if isinstance(cur, str) else None

    def remember(self, request_id: str, revision: int, sha256: str, target: str) -> None:
        self.last_revision = revision
        self.seen[request_id] = {"revision": revision, "sha256": sha256, "target": target}
        while len(self.seen) > _MAX_SEEN:
            del self.seen[next(iter(self.seen))]
        self.save()

    def mark_revision(self, revision: int) -> None:
        self.last_revision = revision
        self.save()

    def start(self, request_id: str) -> None:
        self.in_progress = request_id
        self.save()

    def finish(self) -> None:
        if self.in_progress is not None:
            self.in_progress = None
            self.save()

    def mark_rolled_back(self, sha256: str) -> None:
        if sha256 not in self.rolled_back:
            self.rolled_back.append(sha256)
            self.rolled_back = self.rolled_back[-_MAX_SEEN:]
            self.save()

    def save(self) -> None:
        save_json(
            self.path,
            {
                "schema_version": SCHEMA_VERSION,
                "seen": self.seen,
                "rolled_back": self.rolled_back,
                "last_revision": self.last_revision,
                "in_progress": self.in_progress,
            },
        )
