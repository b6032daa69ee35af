"""Journal entry -> LogRecord JSON, written by hand for speed (no model per line).

The reader hands us the raw fields of one entry (`{name: bytes}`, as libsystemd
returns them); we emit the JSON of one `harmony_core.contracts.LogRecord` with `None`
fields left out, exactly what `dump_json(LogRecord(...))` would produce. Tests
check that equivalence; this path runs ~100,000 times a second.

Every field is capped, so no journal entry makes a record anywhere near NATS's
default max_payload (1 MiB): the message at `max_message_bytes` (and its JSON at
MAX_MESSAGE_JSON), the text fields at FIELD_MAX_BYTES, numbers at what fits an
int64. A cut field sets `"truncated": true`.

Synthetic records (a gap, a rate-limit drop) have no journal cursor; they get a
key that cannot collide with one: `harmony-gap:<lost cursor>` and
`harmony-dropped:<cursor of the first dropped line>` (see docs/logs.md).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from json.encoder import encode_basestring as _q
from typing import Any

__all__ = [
    "DROPPED_PREFIX",
    "FIELD_MAX_BYTES",
    "GAP_PREFIX",
    "MAX_MESSAGE_JSON",
    "Encoder",
    "batch_json",
    "cursor_realtime_us",
    "decode_message",
    "dropped_record",
    "gap_record",
]

GAP_PREFIX = "harmony-gap:"
# A record's message part never exceeds this many characters of JSON.
MAX_MESSAGE_JSON = 512 * 1024
# Messages shorter than this cannot exceed MAX_MESSAGE_JSON even fully escaped.
_ESCAPE_SAFE = MAX_MESSAGE_JSON // 6
DROPPED_PREFIX = "harmony-dropped:"
# boot_id, unit and identifier are cut to this many bytes (a unit name is at most
# 256 characters; SYSLOG_IDENTIFIER is whatever a sender wrote, even megabytes).
FIELD_MAX_BYTES = 256
# Longer digit strings than this are no int64 (pid, source timestamp): left out.
_MAX_DIGITS = 19
_AGENT_ID = "harmony-agent"
_TRUNCATED_END = ',"truncated":true}'


def _one(v: Any) -> bytes | None:
    # A field may repeat in one entry; libsystemd then gives a list. The first wins.
    if isinstance(v, list):
        v = v[0] if v else None
    return v if isinstance(v, bytes) else None


def cursor_realtime_us(cursor: str) -> int | None:
    """The `t=` (realtime, hex µs) part of a journal cursor, or None."""
    for part in cursor.split(";"):
        if part.startswith("t="):
            try:
                return int(part[2:], 16)
            except ValueError:
                return None
    return None


def decode_message(raw: bytes, limit: int) -> tuple[str | None, str | None, bool]:
    """(text, base64, truncated): text when valid UTF-8, else base64; cut at `limit` bytes."""
    truncated = len(raw) > limit
    if truncated:
        raw = raw[:limit]
    try:
        return raw.decode("utf-8"), None, truncated
    except UnicodeDecodeError as e:
        # The cut may split one multi-byte character: drop its head, it is still text.
        if truncated and e.start >= len(raw) - 3 and e.reason == "unexpected end of data":
            try:
                return raw[: e.start].decode("utf-8"), None, True
            except UnicodeDecodeError:
                pass
    return None, base64.b64encode(raw).decode("ascii"), truncated


def _int(v: bytes | None) -> int | None:
    if v is None or len(v) > _MAX_DIGITS:
        return None
    try:
        return int(v)
    except ValueError:
        return None


def _text(v: bytes) -> str:
    return v.decode("utf-8", "replace")


def _capped(v: bytes) -> tuple[str, bool]:
    """(text, cut): `v` as text, cut to FIELD_MAX_BYTES, never inside a character."""
    if len(v) <= FIELD_MAX_BYTES:
        return _text(v), False
    cut = v[:FIELD_MAX_BYTES]
    try:
        return cut.decode("utf-8"), True
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data":
            cut = cut[: e.start]
    return _text(cut), True


class Encoder:
    """Encodes journal entries; caches the JSON of the fields lines of one process share.

    `line()` is the hot path: one f-string per line, the per-process part (boot,
    unit, identifier, pid, priority) looked up in a cache keyed by the raw
    values it is made of. It leaves the line's priority and message size in
    `priority` and `message_bytes` for the rate limit.
    """

    _MAX_CACHED = 4096

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # key -> (JSON of the shared fields, priority, the record's closing text)
        self._frags: dict[tuple[Any, ...], tuple[str, int, str]] = {}
        self.priority = 6
        self.message_bytes = 0

    def encode(
        self, cursor: str, realtime_us: int, fields: Mapping[str, Any]
    ) -> tuple[str, int, int]:
        """(JSON text, priority, message bytes) of one entry as a LogRecord."""
        text = self.line(cursor, realtime_us, fields)
        return text, self.priority, self.message_bytes

    def line(self, cursor: str, realtime_us: int, fields: Mapping[str, Any]) -> str:
        """The JSON text of one entry as a LogRecord."""
        g = fields.get
        ident = g("SYSLOG_IDENTIFIER")
        pid = g("_PID")
        # _COMM and SYSLOG_PID only count when SYSLOG_IDENTIFIER or _PID is missing.
        key = (
            (g("_BOOT_ID"), g("_SYSTEMD_UNIT"), ident, pid, g("PRIORITY"))
            if ident and pid
            else (
                g("_BOOT_ID"),
                g("_SYSTEMD_UNIT"),
                ident,
                g("_COMM"),
                pid,
                g("SYSLOG_PID"),
                g("PRIORITY"),
            )
        )
        try:
            frag, priority, end = self._frags[key]
        except KeyError:
            frag, priority, end = _fragment(fields)
            # A huge field (a sender's megabyte SYSLOG_IDENTIFIER or SYSLOG_PID) is not
            # cached: the key would keep it alive.
            if all(v is None or len(v) <= FIELD_MAX_BYTES for v in key):
                if len(self._frags) >= self._MAX_CACHED:
                    self._frags.clear()
                self._frags[key] = (frag, priority, end)
        except TypeError:  # a repeated field gave a list: not hashable, not cached
            frag, priority, end = _fragment(fields)
        self.priority = priority
        src = g("_SOURCE_REALTIME_TIMESTAMP")
        if src is None:
            srcpart = ""
        elif (
            src.__class__ is bytes
            and 0 < len(src) <= _MAX_DIGITS
            and src.isdigit()
            and (src[0] != 48 or len(src) == 1)
        ):
            # Plain digits are their own JSON (what int() would give back).
            srcpart = f',"source_realtime_us":{src.decode()}'
        else:
            n = _int(_one(src))
            srcpart = "" if n is None else f',"source_realtime_us":{n}'
        raw = g("MESSAGE", b"")
        if raw.__class__ is bytes and len(raw) <= self.limit and len(raw) < _ESCAPE_SAFE:
            try:
                text = (
                    f'{{"cursor":"{cursor}","realtime_us":{realtime_us}{srcpart}{frag},'
                    f'"message":{_q(raw.decode())}{end}'
                )
                self.message_bytes = len(raw)
                return text
            except UnicodeDecodeError:
                pass
        head = f'{{"cursor":"{cursor}","realtime_us":{realtime_us}{srcpart}{frag}'
        raw = _one(raw) or b""
        msg, b64, truncated = decode_message(raw, self.limit)
        body = f',"message":{_q(msg)}' if msg is not None else f',"message_b64":"{b64}"'
        if len(body) > MAX_MESSAGE_JSON:
            # Control characters escape to 6 bytes each: keep a record well under
            # NATS's max_payload by shipping such a message as base64 instead.
            cut = raw[: self.limit]
            body = f',"message_b64":"{base64.b64encode(cut).decode("ascii")}"'
        self.message_bytes = min(len(raw), self.limit)
        return f"{head}{body}{_TRUNCATED_END if truncated else end}"


def _fragment(fields: Mapping[str, Any]) -> tuple[str, int, str]:
    """The JSON of boot_id, unit, identifier, pid and priority; the priority; the record's end.

    The end is `,"truncated":true}` when a field was cut, else `}`.
    """
    g = fields.get
    prio_raw = _one(g("PRIORITY"))
    priority = 6
    if prio_raw is not None and len(prio_raw) == 1 and 48 <= prio_raw[0] <= 55:
        priority = prio_raw[0] - 48
    parts = []
    cut = False
    for name, raw in (
        ("boot_id", _one(g("_BOOT_ID"))),
        ("unit", _one(g("_SYSTEMD_UNIT"))),
        ("identifier", _one(g("SYSLOG_IDENTIFIER")) or _one(g("_COMM"))),
    ):
        if raw is not None:
            text, was_cut = _capped(raw)
            cut = cut or was_cut
            parts.append(f',"{name}":{_q(text)}')
    pid = _int(_one(g("_PID")) or _one(g("SYSLOG_PID")))
    if pid is not None:
        parts.append(f',"pid":{pid}')
    parts.append(f',"priority":{priority}')
    return "".join(parts), priority, _TRUNCATED_END if cut else "}"


def _synthetic(key: str, realtime_us: int, priority: int, message: str, extra: str) -> str:
    return (
        f'{{"cursor":{_q(key)},"realtime_us":{realtime_us},"identifier":"{_AGENT_ID}",'
        f'"priority":{priority},"message":{_q(message)},{extra}}}'
    )


_VACUUMED = "the journal was rotated or vacuumed past the saved cursor"


def gap_record(
    lost_cursor: str,
    from_us: int | None,
    to_us: int | None,
    now_us: int,
    *,
    why: str = _VACUUMED,
) -> str:
    """A record saying the lines from `lost_cursor` on, up to `to_us`, left the journal unread."""
    span = []
    if from_us is not None:
        span.append(f'"from_realtime_us":{from_us}')
    if to_us is not None:
        span.append(f'"to_realtime_us":{to_us}')
    span.append(f'"lost_cursor":{_q(lost_cursor)}')
    msg = f"harmony-agent: journal lines were lost before they could be shipped ({why})"
    return _synthetic(
        GAP_PREFIX + lost_cursor, to_us or now_us, 4, msg, f'"gap":{{{",".join(span)}}}'
    )


def dropped_record(
    first_cursor: str, by_priority: Mapping[int, int], since_us: int, until_us: int
) -> str:
    """A record saying how many lines of which priority the rate limit dropped, and when."""
    total = sum(by_priority.values())
    counts = ",".join(f'"{p}":{n}' for p, n in sorted(by_priority.items()))
    msg = f"harmony-agent: rate limit dropped {total} line(s)"
    return _synthetic(
        DROPPED_PREFIX + first_cursor,
        until_us,
        4,
        msg,
        f'"dropped":{{"by_priority":{{{counts}}},"since_realtime_us":{since_us},'
        f'"until_realtime_us":{until_us}}}',
    )


def batch_json(device_id: str, records: list[str]) -> bytes:
    """A LogBatch payload from record JSON texts.

    Built as bytes in one allocation: joining a batch as one str and then encoding
    it made two buffers of the batch's size each time, and glibc gave that memory
    back to the kernel and faulted it in again, batch after batch (a tenth of the
    pump's time in the benchmark).
    """
    head = f'{{"schema_version":1,"device_id":{_q(device_id)},"records":['.encode()
    if not records:
        return head + b"]}"
    parts = [r.encode() for r in records]
    parts[0] = head + parts[0]
    parts[-1] += b"]}"
    return b",".join(parts)
