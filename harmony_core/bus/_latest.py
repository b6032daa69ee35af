"""Every key's latest value of a KV bucket in one pass: the operator's bulk read.

One ephemeral consumer of the latest value per key (a KV watch's, made by
`KvOps._watch_consumer`) pushes them all; a subscription callback collects them
until the server says none is pending. No request per key: `harmony-fleet
devices` over 10,000 devices is two consumers and ~20,000 pushed messages, read
in well under a second.
The per-message work is the least that can be done: the JetStream metadata is
read from the reply subject by hand (nats-py's parser costs twice as much), and
nothing is awaited per message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from harmony_core.bus._errors import mapped
from harmony_core.bus.connection import Connection
from harmony_core.errors import BusUnavailableError

__all__ = ["Latest", "latest_values"]

# (key, value, revision, server time) of one key.
Latest = tuple[str, bytes, int, datetime]
# Creates the consumer of the latest value per key, delivering to a subject; returns
# how many values it will deliver (KvOps._watch_consumer, one bucket bound).
_MakeConsumer = Callable[[str], Awaitable[int]]

# With nothing arriving for this long (the consumer's idle heartbeat is 5 s), it is gone.
_STALL_S = 15.0


def _meta(reply: str) -> tuple[int, datetime, int]:
    """(stream sequence, server time, pending) from a JetStream delivery's reply subject.

    `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>`, or the
    newer form with `<domain>.<account hash>` before the stream and a token after.
    """
    t = reply.split(".")
    base = 2 if len(t) == 9 else 4
    ns = int(t[base + 5])
    return int(t[base + 3]), datetime.fromtimestamp(ns / 1e9, UTC), int(t[base + 6])


async def latest_values(conn: Connection, bucket: str, consumer: _MakeConsumer) -> list[Latest]:
    """Every live key of `bucket` with its value, revision and server time."""
    conn._jet()
    nc = conn._nc
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    out: dict[str, Latest] = {}
    prefix = len(f"$KV.{bucket}.")
    last_seen = loop.time()

    async def take(msg: Any) -> None:
        nonlocal last_seen
        last_seen = loop.time()
        if not msg.reply:  # an idle heartbeat
            return
        seq, when, pending = _meta(msg.reply)
        key = msg.subject[prefix:]
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            out.pop(key, None)
        else:
            out[key] = (key, msg.data or b"", seq, when)
        if pending == 0 and not done.done():
            done.set_result(None)

    deliver = nc.new_inbox()
    with mapped("KV bucket", bucket):
        sub = await nc.subscribe(deliver, cb=take)
        try:
            if await consumer(deliver):
                while not done.done():
                    await asyncio.wait([done], timeout=1.0)
                    if conn._gone(nc):
                        raise BusUnavailableError("the connection to NATS closed")
                    if not done.done() and loop.time() - last_seen > _STALL_S:
                        raise BusUnavailableError(f"reading {bucket} stopped half-way; try again")
        finally:
            await sub.unsubscribe()
    return list(out.values())
