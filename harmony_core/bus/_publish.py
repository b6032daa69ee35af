"""Acked publishes that ride out a JetStream leader election, retried with the same Nats-Msg-Id.

While a stream (a KV bucket is one too) elects a new leader — its leader's server
was killed, or went into lame-duck mode — a publish finds no responder (503) or
its ack never comes. Within the caller's `timeout` it is sent again with the
same headers: the `Nats-Msg-Id` lets JetStream store it once, whichever attempt
got there (the ack of a retry that was already stored says `duplicate`).

"No responders" is what a missing stream says too, and a device may not ask
whether a stream exists (ADR-023: no JetStream management API): so a publish
that only ever met no responders until its `timeout` reports the stream (or
bucket) missing, `BucketMissingError` — the error of before, after the timeout
instead of at once — unless this connection has written to that stream before:
then it is still electing a leader (a whole cluster restarting takes a while),
and the error says so (`BusUnavailableError`), not "run harmony-fleet init".

Pacing is the bus's one backoff (`backoff_delay`) from 50 ms up to 1 s: an
election takes seconds, and a fleet retrying must not hammer the new leader. A
connection that is away meanwhile is waited for (nats-py reconnects to another
server of the cluster), within the same `timeout`.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from typing import Any

from harmony_core.bus._errors import translate
from harmony_core.bus.connection import Connection, backoff_delay
from harmony_core.errors import BusUnavailableError

__all__ = ["new_msg_id", "publish_acked"]

_BASE_S = 0.05
_CAP_S = 1.0
# How long one attempt waits for its ack before it is sent again.
_ATTEMPT_S = 2.0
# JetStream's "JetStream system temporarily unavailable" (a cluster without a meta leader).
_JS_UNAVAILABLE = 10008
# "wrong last sequence" (a compare-and-set that lost), in its two spellings.
_WRONG_LAST = (10071, 10164)

# The streams each connection has had a write acknowledged by: they exist.
_written: weakref.WeakKeyDictionary[Connection, set[str]] = weakref.WeakKeyDictionary()


def new_msg_id() -> str:
    """A fresh `Nats-Msg-Id` for one logical write (kept by every retry of it)."""
    return uuid.uuid4().hex


def _kind_of(e: BaseException) -> str | None:
    """Whether `e` is worth another attempt: "no-responders", "transient", or None (final)."""
    import nats.errors as ne
    import nats.js.errors as je

    if isinstance(e, je.NoStreamResponseError | ne.NoRespondersError):
        return "no-responders"
    if isinstance(e, je.ServiceUnavailableError) or (
        isinstance(e, je.APIError) and e.err_code == _JS_UNAVAILABLE
    ):
        return "transient"
    if isinstance(
        e,
        ne.TimeoutError
        | TimeoutError
        | ne.ConnectionReconnectingError
        | ne.StaleConnectionError
        | ne.OutboundBufferLimitError,
    ):
        return "transient"
    return None


def _wrong_last(e: BaseException) -> BaseException:
    """A refused expected-last-sequence as nats-py's KV names it (our RevisionMismatchError)."""
    import nats.js.errors as je

    if isinstance(e, je.APIError) and e.err_code in _WRONG_LAST:
        return je.KeyWrongLastSequenceError(description=e.description)
    return e


async def publish_acked(
    conn: Connection,
    subject: str,
    payload: bytes,
    *,
    headers: dict[str, str],
    timeout: float,
    kind: str,
    name: str,
    stream: str,
    item: str | None = None,
) -> Any:
    """nats-py's PubAck of `payload` on `subject` of stream `stream`, retried as above.

    Our errors only: `kind name` (and `item`) say what was written, as in `mapped`.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    attempt = 0
    only_no_responders = True
    while True:
        remaining = deadline - loop.time()
        if not conn.connected and not await conn.wait_connected(max(remaining, 0)):
            raise BusUnavailableError("not connected to NATS")
        remaining = deadline - loop.time()
        try:
            ack = await conn._jet().publish(
                subject, payload, timeout=max(min(remaining, _ATTEMPT_S), 0.001), headers=headers
            )
            _written.setdefault(conn, set()).add(ack.stream)
            return ack
        except Exception as e:
            why = _kind_of(e)
            ours = translate(_wrong_last(e), kind, name, item)
            if ours is None:
                raise
            if why is None:
                raise ours from e
            only_no_responders = only_no_responders and why == "no-responders"
            attempt += 1
            delay = backoff_delay(attempt, _CAP_S, _BASE_S)
            if loop.time() + delay >= deadline:
                known = stream in _written.get(conn, ())
                if why == "no-responders" and (known or not only_no_responders):
                    raise BusUnavailableError(
                        f"{kind} {name!r} has no leader to take the write "
                        "(the NATS cluster is electing one, or lost its quorum)"
                    ) from e
                raise ours from e
            await asyncio.sleep(delay)
