"""Publishing batches to JetStream: bounded in flight, acks awaited, retried, committed in order.

A batch counts as shipped only when JetStream acknowledged it. Acks may come
back out of order; the cursor is committed only up to the longest acknowledged
prefix, so the saved cursor never passes an unacknowledged line. A failed or
timed-out publish is retried with the same `Nats-Msg-Id` (capped, jittered
backoff), so a batch the server did store is not stored twice.

The pump hands over batches compressed (`[logs] compression`,
harmony_core.logcodec); one that is not yet (a batch's JSON) is compressed here
before it is published. A batch still larger than the connected server's
max_payload (built before the limit was known) is split, as JSON, into parts
that fit even uncompressed, each compressed again and with its own
`Nats-Msg-Id`, published in order; the batch counts as acknowledged once every
part is (`agent.logs.fit`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.logs.cursor import SavedCursor
from agent.logs.fit import HEADER_ROOM, split_batch
from agent.logs.pump import Batch, Encode, encoder_of, msg_id
from harmony_core.bus import Bus, PubAck, backoff_delay
from harmony_core.errors import BusError, BusUnavailableError
from harmony_core.logcodec import decode_batch

# encoder_of: re-exported, the shipper's `encode` is one.
__all__ = ["Encode", "Shipper", "encoder_of"]

log = logging.getLogger("agent.logs")

_RETRY_CAP_S = 15.0


@dataclass
class _Pending:
    batch: Batch
    done: bool = False


@dataclass(frozen=True)
class _Message:
    """One message to publish: a whole batch, or a part of one split to fit max_payload.

    Its payload is the batch's JSON until `encoded`, then what goes on the wire.
    """

    payload: bytes
    msg_id: str | None
    headers: Mapping[str, str] | None = None
    encoded: bool = False


class Shipper:
    """Takes batches from `queue`, publishes them, calls `commit` in order as acks arrive."""

    def __init__(
        self,
        bus: Bus,
        subject: str,
        stream: str,
        *,
        max_in_flight: int,
        ack_timeout: float,
        slots: threading.Semaphore,
        commit: Callable[[SavedCursor], None],
        encode: Encode,
    ) -> None:
        self.bus = bus
        self.subject = subject
        self.stream = stream
        self.ack_timeout = ack_timeout
        self.slots = slots
        self.commit = commit
        # Used by one thread at a time: publishing is serialised by `_publishing`.
        self.encode = encode
        self.queue: asyncio.Queue[Batch] = asyncio.Queue()
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._publishing = asyncio.Lock()
        self._pending: deque[_Pending] = deque()
        self.shipped = 0
        self.gaps = 0
        self.publishing = 0
        self.failing_since: float | None = None
        self.error: str | None = None
        self._drained = asyncio.Event()
        self._drained.set()

    # --- what the summary reads ------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self.publishing

    @property
    def backlog(self) -> int:
        return len(self._pending) + self.queue.qsize()

    def oldest_unshipped_us(self) -> int | None:
        for p in self._pending:
            if p.batch.oldest_us is not None and not p.done:
                return p.batch.oldest_us
        return None

    # --- the loop ----------------------------------------------------------------

    def put(self, batch: Batch) -> None:
        """From the event loop thread (the pump uses call_soon_threadsafe)."""
        self._drained.clear()
        self.queue.put_nowait(batch)

    async def drained(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            while True:
                batch = await self.queue.get()
                p = _Pending(batch)
                self._pending.append(p)
                if batch.payload is None:
                    p.done = True
                    self._advance()
                    continue
                await self._in_flight.acquire()
                self.publishing += 1
                tg.create_task(self._send(p))

    async def _send(self, p: _Pending) -> None:
        b = p.batch
        assert b.payload is not None
        messages = [_Message(b.payload, b.msg_id, b.headers, b.encoded)]
        attempt = 0
        try:
            while True:
                try:
                    await self._publish(messages)
                    break
                except ValueError as e:  # max_payload too small for even one record's stub
                    self._failed(str(e), error=True)
                except BusUnavailableError as e:
                    self._failed(str(e))
                    await self.bus.wait_connected(self.ack_timeout)
                except TimeoutError:
                    self._failed("no ack within ack_timeout")
                except BusError as e:  # refused: no stream, over the server's max_payload, ...
                    self._failed(str(e), error=True)
                attempt += 1
                await asyncio.sleep(backoff_delay(attempt, _RETRY_CAP_S))
        finally:
            self.publishing -= 1
            self._in_flight.release()
        if attempt:
            log.info("logs: batch published after %d retries", attempt)
        self.failing_since = None
        self.error = None
        p.done = True
        self._advance()

    async def _publish(self, messages: list[_Message]) -> None:
        """Publish `messages` (encoded and split to fit first, in place) and await every ack.

        A retry publishes the same messages: the same bytes, the same `Nats-Msg-Id`s.
        """
        futs: list[asyncio.Future[PubAck]] = []
        try:
            # Issued one at a time, in order (nats-py may suspend inside a publish,
            # and NATS may be away), so the stream keeps the journal's order; acks
            # are awaited concurrently.
            async with self._publishing:
                while not self.bus.connected:
                    # Not a failure (the bus logs its own state): just wait.
                    if self.failing_since is None:
                        self.failing_since = time.monotonic()
                    await self.bus.wait_connected(self.ack_timeout)
                messages[:] = self._prepare(messages)
                for m in messages:
                    futs.append(
                        await self.bus.publish_nowait(
                            self.subject,
                            m.payload,
                            stream=self.stream,
                            msg_id=m.msg_id,
                            headers=m.headers,
                        )
                    )
            acks = await asyncio.wait_for(
                asyncio.gather(*futs, return_exceptions=True), self.ack_timeout
            )
        finally:
            for f in futs:
                if not f.done():
                    f.cancel()  # frees nats-py's pending ack
                elif not f.cancelled():
                    f.exception()  # seen: no "exception was never retrieved"
        for a in acks:
            if isinstance(a, BaseException):
                raise a

    def _prepare(self, messages: list[_Message]) -> list[_Message]:
        """`messages` encoded, those above the connected server's max_payload split into parts.

        The common case costs nothing: the pump encoded the batch, and it fits.
        """
        limit = self.bus.max_payload
        room = None if limit is None else limit - HEADER_ROOM
        if all(m.encoded and (room is None or len(m.payload) <= room) for m in messages):
            return messages
        out: list[_Message] = []
        for m in messages:
            if not m.encoded:
                payload, headers = self.encode(m.payload)
                m = _Message(payload, m.msg_id, headers, encoded=True)
            if room is None or len(m.payload) <= room:
                out.append(m)
                continue
            # Split as JSON, so each part fits even if it does not compress at all.
            parts = split_batch(decode_batch(m.payload, m.headers), room)
            log.info(
                "logs: a batch of %d bytes split into %d for the server's max_payload of %d",
                len(m.payload),
                len(parts),
                limit,
                extra={"event": "logs-batch-split"},
            )
            for x in parts:
                payload, headers = self.encode(x.payload)
                out.append(_Message(payload, msg_id(x.first_key, x.last_key), headers, True))
        return out

    def _failed(self, why: str, *, error: bool = False) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            log.warning(
                "logs: publishing failed (%s); retrying",
                why,
                extra={"event": "logs-publish-failed"},
            )
        self.error = why if error else None

    def _advance(self) -> None:
        commit: SavedCursor | None = None
        while self._pending and self._pending[0].done:
            b = self._pending.popleft().batch
            self.shipped += b.lines
            self.gaps += b.gaps
            self.slots.release()
            commit = b.commit or commit
        if commit is not None:
            self.commit(commit)
        if not self._pending and self.queue.empty():
            self._drained.set()
