"""The saved journal cursor: `<state_dir>/logs/cursor`, written atomically.

The file only ever holds a cursor whose line, and every wanted line before it,
JetStream acknowledged (or a journal position past lines the filters do not
want). It is a small JSON record with `schema_version`, replaced with temp
file + fsync + rename + directory fsync, so a crash leaves the old one or the
new one, never a torn one. Writes are coalesced: while one is on disk, and for
`MIN_INTERVAL_S` after it, newer cursors replace each other and only the newest
is written next. Each write costs two fsyncs (~1 ms of CPU here); while
catching up, acks come every few milliseconds, and writing each one spent a
sixth of the shipper's CPU. The price: after a crash, the lines acknowledged in
the last `MIN_INTERVAL_S` are sent again (the stream's duplicate window drops
those whose batch comes out the same).

Reading trusts nothing: a file that is too big, not JSON, of another shape or
version, or whose cursor is not a plausible one is logged and treated as
absent (start by `start_at`). A plausible cursor libsystemd still refuses is
the pump's to handle (a gap record, then `start_at`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from agent.durable import atomic_write, read_bounded
from harmony_core.contracts import format_ts, utcnow

__all__ = ["MIN_INTERVAL_S", "CursorStore", "SavedCursor"]

log = logging.getLogger("agent.logs")

# A cursor file is ~250 bytes; a journal cursor ~150 characters of printable ASCII.
_MAX_FILE = 4096
_MAX_CURSOR = 1024
# At most one cursor write per this many seconds (the last one is never held back
# at shutdown).
MIN_INTERVAL_S = 0.1


def _parse(data: bytes) -> tuple[str, int | None]:
    """(cursor, realtime µs) of a v1 cursor record; ValueError saying what is wrong."""
    try:
        raw = json.loads(data)
    except RecursionError as e:
        raise ValueError("nested too deeply") from e
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    version, cur, rt = raw.get("schema_version"), raw.get("cursor"), raw.get("realtime_us")
    if type(version) is not int or version != 1:
        raise ValueError(f"schema_version {version!r:.20}, not 1")
    if not isinstance(cur, str) or not cur:
        raise ValueError("no cursor string")
    if len(cur) > _MAX_CURSOR or not (cur.isascii() and cur.isprintable()) or " " in cur:
        raise ValueError("the cursor is not a journal cursor (too long, or odd characters)")
    # bool is an int too; a negative or float time is no journal time either.
    return cur, rt if type(rt) is int and rt >= 0 else None


@dataclass(frozen=True)
class SavedCursor:
    cursor: str
    realtime_us: int | None


class CursorStore:
    """Load the saved cursor; save newer ones in the background, in order, coalesced."""

    def __init__(self, path: Path, min_interval: float = MIN_INTERVAL_S) -> None:
        self.path = path
        self.min_interval = min_interval
        self._pending: SavedCursor | None = None
        self._written: SavedCursor | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def load(self) -> SavedCursor | None:
        """The saved cursor, or None (absent or unreadable: logged, then treated as absent)."""
        try:
            cur, rt = _parse(read_bounded(self.path, _MAX_FILE))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning(
                "ignoring unreadable cursor file %s (%s); starting by [logs] start_at",
                self.path,
                e,
                extra={"event": "logs-cursor-unreadable"},
            )
            return None
        saved = SavedCursor(cur, rt)
        self._written = saved
        return saved

    def write_now(self, saved: SavedCursor) -> None:
        """Write synchronously (blocking I/O)."""
        data = json.dumps(
            {
                "schema_version": 1,
                "cursor": saved.cursor,
                "realtime_us": saved.realtime_us,
                "saved_at": format_ts(utcnow()),
            }
        ).encode()
        atomic_write(self.path, data, 0o640)
        self._written = saved

    def save(self, saved: SavedCursor) -> None:
        """Queue `saved` for writing (the newest queued one wins)."""
        self._pending = saved
        self._idle.clear()
        self._wake.set()

    @property
    def written(self) -> SavedCursor | None:
        return self._written

    async def run(self) -> None:
        """Write queued cursors until cancelled; on cancel, write the last one synchronously."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                saved, self._pending = self._pending, None
                if saved is not None and saved != self._written:
                    began = loop.time()
                    await asyncio.to_thread(self.write_now, saved)
                    # Newer cursors meanwhile replace each other in `_pending`.
                    await asyncio.sleep(self.min_interval - (loop.time() - began))
                if self._pending is None:
                    self._idle.set()
        finally:
            self.flush()

    def flush(self) -> None:
        """Write what is queued now (used at shutdown; blocking but short)."""
        saved, self._pending = self._pending, None
        if saved is not None and saved != self._written:
            with contextlib.suppress(OSError):
                self.write_now(saved)
        self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()
