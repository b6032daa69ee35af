"""Streams: publish with JetStream's ack (awaited, or as a future), read a subject in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from harmony_core.bus._errors import mapped, translate
from harmony_core.bus._publish import new_msg_id, publish_acked
from harmony_core.bus.connection import Connection
from harmony_core.errors import BusError, BusUnavailableError

__all__ = ["PubAck", "StreamOps"]

_STREAM = "stream"
# JetStream's "no message found".
_NO_MESSAGE = 10037
# How often an idle follower looks whether its connection is gone for good.
_IDLE_CHECK_S = 2.0


@dataclass(frozen=True)
class PubAck:
    stream: str
    seq: int
    duplicate: bool


class StreamOps(Connection):
    """The stream operations of the bus."""

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        stream: str,
        msg_id: str | None = None,
        timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
    ) -> PubAck:
        """Publish to JetStream and wait for its ack; retried within `timeout` across a
        leader election, always with the same `Nats-Msg-Id` (`msg_id`, or a fresh one)."""
        ack = await publish_acked(
            self,
            subject,
            payload,
            headers={**(headers or {}), "Nats-Msg-Id": msg_id or new_msg_id()},
            timeout=timeout,
            kind=_STREAM,
            name=stream,
            stream=stream,
        )
        return PubAck(ack.stream, ack.seq, bool(ack.duplicate))

    async def publish_nowait(
        self,
        subject: str,
        payload: bytes,
        *,
        stream: str,
        msg_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> asyncio.Future[PubAck]:
        """Publish and return a future of the ack (bounded by the caller); it fails with ours."""
        js = self._jet()
        hdrs = {**headers} if headers else {}
        if msg_id:
            hdrs["Nats-Msg-Id"] = msg_id
        with mapped(_STREAM, stream):
            fut = await js.publish_async(subject, payload, headers=hdrs or None)
        loop = asyncio.get_running_loop()
        out: asyncio.Future[PubAck] = loop.create_future()

        def _done(f: asyncio.Future[Any]) -> None:
            if out.done():
                return
            if f.cancelled():
                out.set_exception(BusUnavailableError("publish cancelled"))
            elif (e := f.exception()) is not None:
                ours = translate(e, _STREAM, stream)
                out.set_exception(ours or BusError(f"publish to {stream} failed: {e}"))
            else:
                a = f.result()
                out.set_result(PubAck(a.stream, a.seq, bool(a.duplicate)))

        def _abandoned(o: asyncio.Future[PubAck]) -> None:
            # A caller that gave up (e.g. wait_for timed out) must free nats-py's
            # pending-ack slot, or a lost ack would hold it forever.
            if o.cancelled() and not fut.done():
                fut.cancel()

        fut.add_done_callback(_done)
        out.add_done_callback(_abandoned)
        return out

    async def has_messages(self, stream: str, subject: str) -> bool:
        """Whether `stream` holds any message on `subject`."""
        import nats.js.errors as je

        js = self._jet()
        with mapped(_STREAM, stream):
            try:
                await js.get_msg(stream, subject=subject, direct=False)
            except je.NotFoundError as e:
                if e.err_code == _NO_MESSAGE:
                    return False
                raise
        return True

    async def fetch_stream(
        self,
        stream: str,
        subject: str,
        *,
        start_time: datetime | None = None,
        follow: bool = False,
    ) -> AsyncIterator[tuple[bytes, datetime | None, dict[str, str]]]:
        """(payload, time, headers) of the messages of `subject` in order (ordered consumer);
        with `follow`, forever.

        A follow ends with BusUnavailableError once its connection is closed for good.
        """
        import nats.errors as ne
        from nats.js.api import ConsumerConfig, DeliverPolicy

        js = self._jet()
        nc = self._nc
        with mapped(_STREAM, stream):
            info = await js.stream_info(stream)
            last_seq = info.state.last_seq
            cfg = ConsumerConfig()
            if start_time is not None:
                cfg.deliver_policy = DeliverPolicy.BY_START_TIME
                cfg.opt_start_time = start_time.astimezone(UTC)
            sub = await js.subscribe(subject, ordered_consumer=True, stream=stream, config=cfg)
        try:
            while True:
                with mapped(_STREAM, stream):
                    try:
                        msg = await sub.next_msg(timeout=_IDLE_CHECK_S if follow else 1.0)
                    except ne.TimeoutError:
                        if not follow:
                            return
                        if self._gone(nc):
                            raise BusUnavailableError("the connection to NATS closed") from None
                        continue
                meta = msg.metadata
                yield msg.data, meta.timestamp, dict(msg.headers or {})
                if not follow and meta.sequence.stream >= last_seq:
                    return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
