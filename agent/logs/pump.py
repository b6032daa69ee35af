"""The pump: a worker thread that reads the journal and hands finished batches to asyncio.

All per-line work (read, rate limit, encode, batch) happens here, and so does
compressing each finished batch (`[logs] compression`), so the event loop only
publishes whole batches. Measured, compressing here beats a worker thread: zstd
lets go of the GIL while it works, which hands the event loop a window to
publish, where a worker would cost the loop more GIL hand-overs per batch.

The handoff is bounded by `slots` (batches read but not yet acknowledged): when
NATS is away nothing is acknowledged, the slots run out and the pump stops
reading. The journal is the buffer.

Batches stay under `batch_max_bytes` and, once the bus knows it, the server's
max_payload (less room for headers); the shipper splits any batch built before
that was known.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.config import LogsSection
from agent.logs.cursor import SavedCursor
from agent.logs.filters import Filters
from agent.logs.fit import HEADER_ROOM
from agent.logs.ratelimit import DropTally, RateLimiter
from agent.logs.reader import Entry, JournalReader
from agent.logs.records import (
    GAP_PREFIX,
    Encoder,
    batch_json,
    cursor_realtime_us,
    dropped_record,
    gap_record,
)
from harmony_core.errors import JournalError
from harmony_core.logcodec import Compressor

__all__ = [
    "CHECKPOINT_EVERY_S",
    "MAP_BUDGET",
    "Batch",
    "Encode",
    "Pump",
    "encoder_of",
    "filters_of",
    "msg_id",
]

log = logging.getLogger("agent.logs")

# Idle and caught up: how often to checkpoint the tail of the whole journal, so a
# restart does not start behind a long run of lines the filters do not want.
CHECKPOINT_EVERY_S = 5.0
# libsystemd keeps the journal windows it read mapped (up to 64 x 8 MiB), and
# every page of them counts in the RSS. Past this much, reopen the journal.
MAP_BUDGET = 8 * 1024 * 1024
_IDLE_WAIT_S = 0.5
_DROP_ANNOUNCE_EVERY_S = 1.0
_BATCH_OVERHEAD = 64


def filters_of(cfg: LogsSection) -> Filters:
    return Filters(tuple(cfg.units), tuple(cfg.identifiers), cfg.max_priority)


def msg_id(first_key: str, last_key: str) -> str:
    """Nats-Msg-Id of a batch: the same lines always give the same id."""
    return hashlib.sha256(f"{first_key}\n{last_key}".encode()).hexdigest()[:40]


# A LogBatch's JSON -> (what goes on the wire, the headers saying how it is encoded).
Encode = Callable[[bytes], tuple[bytes, Mapping[str, str] | None]]


def _plain(payload: bytes) -> tuple[bytes, Mapping[str, str] | None]:
    return payload, None


def encoder_of(compression: str) -> Encode:
    """How batches go on the wire under `[logs] compression`: zstd, or as they are.

    Each call makes its own zstd context: use one per thread.
    """
    return Compressor().compress if compression == "zstd" else _plain


@dataclass(frozen=True)
class Batch:
    """One LogBatch payload (or, with payload None, only a checkpoint) and what acking it saves.

    The pump hands over batches `encoded` (what goes on the wire, with `headers`
    saying how); the shipper encodes one that is not (the batch's JSON) itself.
    `commit` is None for a batch that moves the saved cursor nowhere (the gap
    record of a saved cursor that was no journal position at all).
    """

    payload: bytes | None
    msg_id: str | None
    lines: int
    records: int
    gaps: int
    commit: SavedCursor | None
    oldest_us: int | None
    headers: Mapping[str, str] | None = None
    encoded: bool = False


def _nbytes(text: str) -> int:
    """UTF-8 size of `text` (isascii is O(1) in CPython: most lines cost nothing more)."""
    return len(text) if text.isascii() else len(text.encode())


class _Builder:
    """The batch being filled; the pump's hot loop appends to `records` directly."""

    def __init__(self, device_id: str, max_lines: int, max_bytes: int, encode: Encode) -> None:
        self.device_id = device_id
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.encode = encode
        self.reset()

    def reset(self) -> None:
        self.records: list[str] = []
        self.size = _BATCH_OVERHEAD + len(self.device_id)
        self.first_key = ""
        self.last_key = ""
        self.lines = 0
        self.gaps = 0
        self.oldest_us: int | None = None
        # The journal position acking this batch lets us save: its last line, or
        # the last line read and not shipped (dropped), or a checkpoint.
        self.commit_at: tuple[str, int | None] | None = None
        self.started = 0.0

    def fits(self, n: int) -> bool:
        return not self.records or (
            len(self.records) < self.max_lines and self.size + n + 1 <= self.max_bytes
        )

    def add(self, text: str, key: str, realtime_us: int, *, line: bool, now: float) -> None:
        if not self.records:
            self.first_key = key
            self.started = now
        self.records.append(text)
        self.size += _nbytes(text) + 1
        self.last_key = key
        if line:
            self.lines += 1
            if self.oldest_us is None:
                self.oldest_us = realtime_us

    def take(self) -> Batch:
        payload: bytes | None = None
        headers: Mapping[str, str] | None = None
        if self.records:
            payload, headers = self.encode(batch_json(self.device_id, self.records))
        b = Batch(
            payload,
            msg_id(self.first_key, self.last_key) if self.records else None,
            self.lines,
            len(self.records),
            self.gaps,
            SavedCursor(*self.commit_at) if self.commit_at is not None else None,
            self.oldest_us,
            headers,
            encoded=True,
        )
        self.reset()
        return b


class Pump:
    """Reads from a start position until `stop` is set; `handoff(batch)` blocks for a slot."""

    def __init__(
        self,
        cfg: LogsSection,
        device_id: str,
        start: SavedCursor | None,
        handoff: Callable[[Batch], bool],
        stop: threading.Event,
        max_payload: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.cfg = cfg
        self.max_payload = max_payload
        self.start = start
        self.handoff = handoff
        self.stop = stop
        self.reader = JournalReader(filters_of(cfg), cfg.max_message_bytes)
        self.builder = _Builder(
            device_id, cfg.batch_max_lines, cfg.batch_max_bytes, encoder_of(cfg.compression)
        )
        self.limiter = RateLimiter(
            cfg.rate_limit_lines, cfg.rate_limit_bytes, cfg.rate_limit_burst, time.monotonic()
        )
        self.encoder = Encoder(cfg.max_message_bytes)
        self.tally = DropTally()
        self.tally_started = 0.0
        self.dropped = 0
        # Read by the event loop (plain attribute reads are atomic under the GIL).
        self.positioned = False
        self.at_tail = False
        self.current_us: int | None = None
        self._last_commit: str | None = start.cursor if start else None
        self._tail_at = 0.0
        self._tail_candidate: tuple[str, int] | None = None
        self._remap = False

    # --- positioning -------------------------------------------------------------

    def _batch_bytes(self) -> int:
        """How big the next batch may be: batch_max_bytes, and the server's max_payload."""
        limit = self.max_payload()
        if limit is None:
            return self.cfg.batch_max_bytes
        return max(1, min(self.cfg.batch_max_bytes, limit - HEADER_ROOM))

    def _position(self) -> None:
        r = self.reader
        r.open()
        self.builder.max_bytes = self._batch_bytes()
        if self.start is None:
            r.seek_start(self.cfg.start_at)
            log.info("logs: no saved cursor; starting at %s", self.cfg.start_at)
            return
        cur = self.start.cursor
        try:
            there, next_us = r.exists(cur)
        except ValueError as e:  # libsystemd: "Invalid cursor" (or a NUL in it)
            self._start_over(e)
            return
        if not there:
            from_us = self.start.realtime_us or cursor_realtime_us(cur)
            log.warning(
                "logs: the saved cursor is no longer in the journal (rotated or vacuumed); "
                "continuing from the oldest line still there",
                extra={"event": "logs-gap"},
            )
            now_us = time.time_ns() // 1000
            self.builder.add(
                gap_record(cur, from_us, next_us, now_us),
                cur,
                now_us,
                line=False,
                now=time.monotonic(),
            )
            self.builder.gaps += 1
            self.builder.commit_at = (cur, self.start.realtime_us)
        r.seek_after(cur)

    def _start_over(self, e: ValueError) -> None:
        """The saved cursor is no journal position: say so (a gap), start by `start_at`."""
        assert self.start is not None
        cur, at = self.start.cursor, self.cfg.start_at
        log.warning(
            "logs: the saved cursor %.200r is not a valid journal position (%s); "
            "starting at [logs] start_at = %s",
            cur,
            e,
            at,
            extra={"event": "logs-cursor-invalid"},
        )
        now_us = time.time_ns() // 1000
        why = f"the saved cursor is not a valid journal position; shipping from start_at = {at}"
        from_us = self.start.realtime_us or cursor_realtime_us(cur)
        gap = gap_record(cur, from_us, None, now_us, why=why)
        self.builder.add(gap, GAP_PREFIX + cur, now_us, line=False, now=time.monotonic())
        self.builder.gaps += 1
        # Nothing to commit: its ack moves the saved cursor nowhere; the first line's does.
        self.start = None
        self._last_commit = None
        self.reader.seek_start(at)

    def _reopen(self, e: OSError) -> None:
        """Rotation or vacuum broke the open files: reopen, continue after the last line read."""
        log.warning(
            "logs: journal changed under the reader (%s); reopening",
            e,
            extra={"event": "logs-journal-reopened"},
        )
        last = self.reader.last_cursor or (self.start.cursor if self.start else None)
        self.reader.open()
        if last is not None:
            self.reader.seek_after(last)
        else:
            self.reader.seek_start(self.cfg.start_at)

    # --- the loop ----------------------------------------------------------------

    def run(self) -> None:
        try:
            self._position()
            self.positioned = True
            self._loop()
        except OSError as e:
            raise JournalError(f"reading the journal failed: {e}") from e
        finally:
            self.reader.close()

    def request_stop(self) -> None:
        """Stop reading: at once if the pump is waiting for new lines (from any thread)."""
        self.stop.set()
        self.reader.wake()

    def _flush(self) -> bool:
        b = self.builder
        if b.commit_at is None and not b.records:
            return True
        batch = b.take()
        b.max_bytes = self._batch_bytes()
        if batch.commit is not None:
            self._last_commit = batch.commit.cursor
        if self.reader.mapped_bytes() > MAP_BUDGET:
            self._remap = True
        return self.handoff(batch)

    def _announce_drops(self, now: float) -> None:
        t = self.tally
        if not t or t.first_cursor is None:
            return
        text = dropped_record(t.first_cursor, t.by_priority, t.since_us, t.until_us)
        key = "harmony-dropped:" + t.first_cursor
        if not self.builder.fits(_nbytes(text)) and not self._flush():
            return
        self.builder.add(text, key, t.until_us, line=False, now=now)
        log.warning("logs: rate limit dropped %d line(s)", t.total, extra={"event": "logs-dropped"})
        self.tally = DropTally()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                if not self._run_lines():
                    return
            except OSError as err:
                if not JournalReader.is_reopen_error(err):
                    raise
                self._reopen(err)

    def _run_lines(self) -> bool:
        """Read until the end of the journal, then idle once. False when stopping."""
        r = self.reader
        e = r.next()
        now = time.monotonic()
        if e is None:
            return self._idle(now, self.cfg.batch_max_wait)
        self.at_tail = False
        self._tail_candidate = None
        if self.limiter.active:
            return self._run_limited(e, now)
        return self._run_fast(e, now)

    def _run_fast(self, e: Entry, now: float) -> bool:
        """No rate limit: every line goes into a batch.

        The hot loop: every line passes here, so it keeps to locals and plain
        calls, and syncs the builder once per batch.
        """
        r, b, stop = self.reader, self.builder, self.stop
        max_wait, max_lines = self.cfg.batch_max_wait, b.max_lines
        clock, line = time.monotonic, self.encoder.line
        nxt, get_cursor, get_rt, get_all = r.raw_calls()
        cursor, rt, fields = e
        text: str | None = None  # a line read but not yet in a batch
        while True:
            records = b.records
            if not records:
                b.first_key, b.started, b.oldest_us = cursor, now, rt
            append = records.append
            size, lines, started, max_bytes = b.size, b.lines, b.started, b.max_bytes
            last: str | None = None  # the cursor (and `last_rt` the time) of the last line batched
            last_rt = 0
            at_end = False
            try:
                while True:
                    if text is None:
                        text = line(cursor, rt, fields)
                        n = len(text) if text.isascii() else len(text.encode())
                    if records and size + n >= max_bytes:
                        break  # `text` opens the next batch
                    append(text)
                    size += n + 1
                    text = None
                    lines += 1
                    last, last_rt = cursor, rt
                    if len(records) >= max_lines or clock() - started >= max_wait:
                        break
                    if not nxt():
                        at_end = True
                        break
                    cursor = get_cursor()
                    rt = get_rt()
                    fields = get_all()
            finally:
                # Also on a journal error: the reopen continues after the last line batched.
                b.size, b.lines = size, lines
                if last is not None:
                    b.last_key = last
                    b.commit_at = (last, last_rt)
                    self.current_us = last_rt
                    r.last_cursor = last
            if at_end:
                return True
            if not self._flush() or stop.is_set():
                return False
            if self._remap:
                # The pending line (if any) is read again after the reopen.
                self._remap = False
                r.reopen()
                return True
            if text is None:
                if not nxt():
                    return True
                cursor = get_cursor()
                rt = get_rt()
                fields = get_all()
            now = clock()

    def _run_limited(self, e: Entry, now: float) -> bool:
        """With a rate limit: lines are admitted or tallied one by one."""
        r, b, lim, stop = self.reader, self.builder, self.limiter, self.stop
        max_wait = self.cfg.batch_max_wait
        clock, encode = time.monotonic, self.encoder.encode
        nxt, get_cursor, get_rt, get_all = r.raw_calls()
        cursor, rt, fields = e
        while True:
            text, prio, nbytes = encode(cursor, rt, fields)
            if not lim.admit(prio, nbytes, now):
                self._drop(cursor, prio, rt, now)
            else:
                if self.tally:
                    self._announce_drops(now)
                if not b.fits(_nbytes(text)) and not self._flush():
                    return False
                b.add(text, cursor, rt, line=True, now=now)
            b.commit_at = (cursor, rt)
            self.current_us = rt
            r.last_cursor = cursor
            if (
                b.records
                and (len(b.records) >= b.max_lines or now - b.started >= max_wait)
                and not self._flush()
            ):
                return False
            if self._remap:
                self._remap = False
                r.reopen()
                return True
            if stop.is_set() or not nxt():
                return True
            cursor = get_cursor()
            rt = get_rt()
            fields = get_all()
            now = clock()

    def _drop(self, cursor: str, priority: int, realtime_us: int, now: float) -> None:
        if not self.tally:
            self.tally_started = now
        self.tally.add(cursor, priority, realtime_us)
        self.dropped += 1
        if now - self.tally_started >= _DROP_ANNOUNCE_EVERY_S:
            self._announce_drops(now)

    def _idle(self, now: float, max_wait: float) -> bool:
        """At the end of the journal: flush, checkpoint, wait. False when stopping."""
        b = self.builder
        if self.tally:
            self._announce_drops(now)
        if b.records:
            remaining = max_wait - (now - b.started)
            if remaining > 0:
                self.reader.wait(min(remaining, _IDLE_WAIT_S))
                return True
            return self._flush()
        if b.commit_at is not None:  # only dropped lines since the last flush
            return self._flush()
        self.at_tail = True
        cand = self._tail_candidate
        if cand is not None:
            # The filtered reader found nothing new after the tail was taken: every
            # wanted line up to it has been read, so its position may be saved.
            self._tail_candidate = None
            if cand[0] != self._last_commit:
                b.commit_at = cand
                if not self._flush():
                    return False
        elif now - self._tail_at >= CHECKPOINT_EVERY_S:
            self._tail_at = now
            self._tail_candidate = self.reader.tail()
            return True  # look once more before trusting it
        self.reader.wait(_IDLE_WAIT_S)
        return True
