"""The one mapping of nats-py's errors to ours; nothing of nats-py gets past the bus.

Every bus method runs its nats-py calls under `mapped(...)`, which re-raises a
nats-py error (or the bare `TimeoutError` nats-py lets through) as one of ours
`from` it. Errors that are not nats-py's (a caller's writer refusing bytes, a
cancellation) pass untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from harmony_core.errors import (
    BucketMissingError,
    BusError,
    BusUnavailableError,
    ObjectMissingError,
    RevisionMismatchError,
)

__all__ = ["STREAM_NOT_FOUND", "mapped", "translate"]

# JetStream's error codes (nats-server's errors.json) the bus tells apart.
STREAM_NOT_FOUND = 10059


def _reason(e: BaseException) -> str:
    text = getattr(e, "description", None) or str(e).removeprefix("nats: ").strip()
    return str(text) or type(e).__name__


def translate(e: BaseException, kind: str, name: str, item: str | None = None) -> BusError | None:
    """Our error for nats-py's `e` about `kind name` (and its `item`); None if not nats-py's.

    `kind` is what `name` is ("KV bucket", "stream", "object store"); `item` the
    key or object inside it, when there is one.
    """
    import nats.errors as ne
    import nats.js.errors as je

    if isinstance(e, BusError) or not isinstance(e, ne.Error | TimeoutError):
        return None
    where = f"{kind} {name!r}"
    if isinstance(e, je.KeyWrongLastSequenceError):
        return RevisionMismatchError(f"key {item!r} of {where} changed meanwhile ({_reason(e)})")
    if isinstance(e, je.ObjectNotFoundError | je.ObjectDeletedError):
        return ObjectMissingError(name, item or "?")
    if isinstance(e, je.BucketNotFoundError):
        return BucketMissingError(kind, name)
    if isinstance(e, je.NotFoundError):
        if e.err_code in (STREAM_NOT_FOUND, None):
            return BucketMissingError(kind, name)
        return BusError(f"{where}: not found on the NATS server ({_reason(e)})")
    # Nothing listens on the subject: the stream (of the bucket) is not there. (Without
    # JetStream at all the same holds, and `harmony-fleet init` says so.)
    if isinstance(e, ne.NoRespondersError | je.NoStreamResponseError):
        return BucketMissingError(kind, name)
    if isinstance(
        e,
        ne.ConnectionClosedError
        | ne.ConnectionDrainingError
        | ne.ConnectionReconnectingError
        | ne.StaleConnectionError
        | ne.OutboundBufferLimitError
        | ne.NoServersError
        | je.ServiceUnavailableError
        | TimeoutError,  # nats-py's own TimeoutError is one too
    ):
        return BusUnavailableError(f"NATS did not answer ({_reason(e)})")
    if isinstance(e, ne.MaxPayloadError):
        return BusError(
            f"a message for {where} is larger than the server's max_payload ({_reason(e)})"
        )
    if isinstance(e, je.DigestMismatchError):
        return BusError(
            f"object {item!r} of {where} is corrupt (its digest does not match); upload it again"
        )
    if isinstance(e, je.APIError):
        return BusError(f"JetStream refused ({where}): {_reason(e)}")
    return BusError(f"NATS failed ({where}): {type(e).__name__}: {_reason(e)}")


@contextlib.contextmanager
def mapped(kind: str, name: str, item: str | None = None) -> Iterator[None]:
    """Run nats-py calls (awaits included) and re-raise their errors as ours, `from` them."""
    try:
        yield
    except Exception as e:
        ours = translate(e, kind, name, item)
        if ours is None:
            raise
        raise ours from e
