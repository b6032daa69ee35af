"""Batches that fit the server's max_payload: split between records, stub what cannot fit.

The pump sizes batches by `batch_max_bytes` and, once it is known, the
server's max_payload. A batch built before that was known (or before the agent
reconnected to a server with a lower one) is split here, on that rare path,
into parts in journal order. A record too big to fit even alone is replaced by
its stub: the same record with its message cut to what fits and
`"truncated": true`; only if even that is too big are its optional fields left
out. Nothing is ever too big to ship, so no line can stop the ones after it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.logs.records import batch_json

__all__ = ["HEADER_ROOM", "Part", "split_batch", "stub_record"]

# Bytes of a message kept free for its NATS headers (Nats-Msg-Id is ~70): the
# server counts headers in max_payload, nats-py does not, and the server closes
# the connection of a client that sends too much.
HEADER_ROOM = 256

_DEC = json.JSONDecoder()
_HEAD = '{"schema_version":1,"device_id":'
_RECORDS = ',"records":['
# Left out of a stub, in this order, only when its cut message alone is not enough.
_OPTIONAL = ("gap", "dropped", "unit", "identifier", "boot_id", "source_realtime_us", "pid")


@dataclass(frozen=True)
class Part:
    """One LogBatch payload of a split batch and the keys its Nats-Msg-Id is made of."""

    payload: bytes
    first_key: str
    last_key: str


def _records(payload: bytes) -> tuple[str, list[tuple[str, str]]]:
    """(device id, [(record JSON text, its cursor key)]) of a `batch_json` payload."""
    doc = payload.decode()
    if not doc.startswith(_HEAD):
        raise ValueError("not a LogBatch written by batch_json")
    device_id, i = _DEC.raw_decode(doc, len(_HEAD))
    if not doc.startswith(_RECORDS, i):
        raise ValueError("not a LogBatch written by batch_json")
    i += len(_RECORDS)
    out: list[tuple[str, str]] = []
    while doc[i] != "]":
        rec, end = _DEC.raw_decode(doc, i)
        out.append((doc[i:end], rec["cursor"]))
        i = end + 1 if doc[end] == "," else end
    return device_id, out


def split_batch(payload: bytes, limit: int) -> list[Part]:
    """`payload` (a LogBatch) as payloads of at most `limit` bytes, records in order.

    Records are packed greedily (the fewest parts); a record that cannot fit
    alone becomes its stub (`stub_record`). ValueError if `limit` cannot hold
    even a stub.
    """
    device_id, records = _records(payload)
    wrap = len(batch_json(device_id, []))
    parts: list[Part] = []
    texts: list[str] = []
    keys: list[str] = []
    size = wrap

    def close() -> None:
        nonlocal size
        if texts:
            parts.append(Part(batch_json(device_id, texts), keys[0], keys[-1]))
            texts.clear()
            keys.clear()
        size = wrap

    for text, key in records:
        n = len(text.encode())
        if wrap + n > limit:
            close()
            stub = stub_record(text, limit - wrap)
            parts.append(Part(batch_json(device_id, [stub]), key, key))
            continue
        if texts and size + 1 + n > limit:
            close()
        size += n + (1 if texts else 0)
        texts.append(text)
        keys.append(key)
    close()
    return parts


def _dump(rec: dict[str, Any]) -> str:
    return json.dumps(rec, ensure_ascii=False, separators=(",", ":"))


def _largest(fits: Callable[[int], bool], hi: int) -> int:
    """The largest n in [0, hi] with fits(n), given fits(0) and fits is monotonic."""
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def stub_record(text: str, limit: int) -> str:
    """Record JSON `text` cut to at most `limit` bytes: its message cut, `"truncated": true`."""
    rec: dict[str, Any] = json.loads(text)
    message: str | None = rec.pop("message", None)
    b64: str | None = rec.pop("message_b64", None)
    rec.pop("truncated", None)
    raw = base64.b64decode(b64) if b64 is not None else b""
    for drop in range(len(_OPTIONAL) + 1):
        base = {k: v for k, v in rec.items() if k not in _OPTIONAL[:drop]}

        def stub(n: int, base: dict[str, Any] = base) -> str:
            if b64 is not None:
                cut: dict[str, Any] = {"message_b64": base64.b64encode(raw[:n]).decode("ascii")}
            elif message is not None:
                cut = {"message": message[:n]}
            else:
                cut = {}
            return _dump({**base, **cut, "truncated": True})

        def fits(n: int) -> bool:
            return len(stub(n).encode()) <= limit

        if fits(0):
            # A character is at least one byte, base64 4 bytes for 3.
            hi = min(len(raw), limit * 3 // 4) if b64 is not None else len(message or "")
            hi = min(hi, limit)
            return stub(_largest(fits, hi))
    raise ValueError(
        f"the server's max_payload leaves {limit} bytes for a log record, "
        "too few even for its stub; raise max_payload on the NATS server"
    )
