"""Plain NATS messages: publish, request, scatter-gather, and subscriptions that answer.

For the services that are not JetStream: the auth callout answering the
server's authorization requests, the operator asking every server for its
connections (system account), a device hearing a rotation request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from harmony_core.bus._errors import mapped
from harmony_core.bus.connection import Connection
from harmony_core.errors import BusUnavailableError

__all__ = ["Message", "MessageOps"]

_SUBJECT = "subject"
# How often an idle subscription looks whether its connection is gone for good.
_IDLE_CHECK_S = 2.0


@dataclass(frozen=True)
class Message:
    """One message received; `respond` answers its reply subject (if it has one)."""

    subject: str
    data: bytes
    reply: str
    _nc: Any

    async def respond(self, data: bytes) -> None:
        if not self.reply:
            return
        with mapped(_SUBJECT, self.reply):
            await self._nc.publish(self.reply, data)


class MessageOps(Connection):
    """Core NATS publish / request / subscribe of the bus."""

    def _client(self) -> Any:
        self._jet()  # raises BusUnavailableError while not connected
        return self._nc

    async def publish_plain(self, subject: str, data: bytes) -> None:
        """Publish without JetStream (no ack); flushed before returning."""
        nc = self._client()
        with mapped(_SUBJECT, subject):
            await nc.publish(subject, data)
            await nc.flush(timeout=self._cfg.connect_timeout)

    async def request(self, subject: str, data: bytes, *, timeout: float = 5.0) -> bytes:
        """One request, one reply (BusUnavailableError on timeout or no responders)."""
        nc = self._client()
        with mapped(_SUBJECT, subject):
            msg = await nc.request(subject, data, timeout=timeout)
        return bytes(msg.data or b"")

    async def gather(
        self, subject: str, data: bytes, *, wait: float = 1.0, idle: float | None = None
    ) -> list[bytes]:
        """Every reply that arrives within `wait` seconds (e.g. one per server); with `idle`,
        done as soon as no more came for that long after the first."""
        import nats.errors as ne

        nc = self._client()
        inbox = nc.new_inbox()
        replies: list[bytes] = []
        with mapped(_SUBJECT, subject):
            sub = await nc.subscribe(inbox)
            try:
                await nc.publish(subject, data, reply=inbox)
                await nc.flush(timeout=wait)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + wait
                while (left := deadline - loop.time()) > 0:
                    if replies and idle is not None:
                        left = min(left, idle)
                    try:
                        msg = await sub.next_msg(timeout=left)
                    except ne.TimeoutError:  # the window closed
                        break
                    replies.append(bytes(msg.data or b""))
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        return replies

    async def subscribe(
        self,
        subject: str,
        *,
        queue: str = "",
        pending: int = 65536,
        on_subscribed: Callable[[], None] | None = None,
    ) -> AsyncIterator[Message]:
        """Messages on `subject` (in a queue group when `queue`), until the connection closes.

        `on_subscribed()` runs once the server has the subscription. Ends with
        BusUnavailableError once its connection is closed for good.
        """
        import nats.errors as ne

        nc = self._client()
        with mapped(_SUBJECT, subject):
            sub = await nc.subscribe(subject, queue=queue, pending_msgs_limit=pending)
            await nc.flush(timeout=self._cfg.connect_timeout)
        if on_subscribed is not None:
            on_subscribed()
        try:
            while True:
                with mapped(_SUBJECT, subject):
                    try:
                        msg = await sub.next_msg(timeout=_IDLE_CHECK_S)
                    except ne.TimeoutError:
                        if self._gone(nc):
                            raise BusUnavailableError("the connection to NATS closed") from None
                        continue
                yield Message(msg.subject, bytes(msg.data or b""), msg.reply or "", nc)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
