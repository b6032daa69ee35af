"""Journal entry -> LogRecord JSON: equal to what the contract model would write."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from agent.logs.records import (
    MAX_MESSAGE_JSON,
    Encoder,
    batch_json,
    cursor_realtime_us,
    decode_message,
    dropped_record,
    gap_record,
)
from harmony_core.contracts import LogBatch, LogRecord, dump_json

CURSOR = "s=abc;i=1f;b=0123;m=10;t=5f0a1b2c3d4e5;x=99"

BASE: dict[str, Any] = {
    "MESSAGE": b'hello "world" \\ \t\x01',
    "PRIORITY": b"3",
    "SYSLOG_IDENTIFIER": b"app",
    "_PID": b"42",
    "_BOOT_ID": b"0123456789abcdef0123456789abcdef",
    "_SYSTEMD_UNIT": b"app.service",
    "_SOURCE_REALTIME_TIMESTAMP": b"1700000000000001",
}


def _enc(fields: dict[str, Any], limit: int = 64) -> dict[str, Any]:
    text, _prio, _n = Encoder(limit).encode(CURSOR, 1700000000000002, fields)
    out: dict[str, Any] = json.loads(text)
    LogRecord.model_validate(out)
    return out


def test_full_entry_matches_the_contract_model() -> None:
    got = _enc(BASE)
    want = LogRecord(
        cursor=CURSOR,
        realtime_us=1700000000000002,
        source_realtime_us=1700000000000001,
        boot_id="0123456789abcdef0123456789abcdef",
        unit="app.service",
        identifier="app",
        pid=42,
        priority=3,
        message='hello "world" \\ \t\x01',
    )
    assert got == json.loads(dump_json(want))


@pytest.mark.parametrize(
    ("fields", "expect"),
    [
        ({"MESSAGE": b"x"}, {"priority": 6, "message": "x"}),
        ({"MESSAGE": b"x", "_COMM": b"cat"}, {"identifier": "cat"}),
        ({"MESSAGE": b"x", "SYSLOG_PID": b"7"}, {"pid": 7}),
        ({"MESSAGE": b"x", "PRIORITY": b"9"}, {"priority": 6}),
        ({"MESSAGE": b"x", "_PID": b"nope"}, {}),
        ({"MESSAGE": [b"first", b"second"]}, {"message": "first"}),
        ({"MESSAGE": b"caf\xc3\xa9"}, {"message": "caf\u00e9"}),
        ({}, {"message": ""}),
    ],
)
def test_missing_odd_and_repeated_fields(fields: dict[str, Any], expect: dict[str, Any]) -> None:
    got = _enc(fields)
    for k, v in expect.items():
        assert got[k] == v
    assert "pid" in got or "pid" not in expect


def test_binary_message_ships_as_base64() -> None:
    raw = b"\xff\xfebinary\x00"
    got = _enc({"MESSAGE": raw})
    assert "message" not in got
    assert base64.b64decode(got["message_b64"]) == raw
    assert "truncated" not in got


def test_long_message_is_cut_and_flagged() -> None:
    got = _enc({"MESSAGE": b"a" * 100}, limit=64)
    assert got["message"] == "a" * 64
    assert got["truncated"] is True


def test_cut_through_a_multibyte_character_stays_text() -> None:
    text, b64, truncated = decode_message("é".encode() * 40, 9)
    assert (text, b64, truncated) == ("éééé", None, True)


def test_long_binary_is_cut_and_base64() -> None:
    got = _enc({"MESSAGE": b"\xff" * 100}, limit=64)
    assert base64.b64decode(got["message_b64"]) == b"\xff" * 64
    assert got["truncated"] is True


def test_fragment_cache_does_not_mix_processes() -> None:
    enc = Encoder(64)
    a = json.loads(enc.encode(CURSOR, 1, {**BASE, "_PID": b"1"})[0])
    b = json.loads(enc.encode(CURSOR, 2, {**BASE, "_PID": b"2"})[0])
    assert (a["pid"], b["pid"]) == (1, 2)


def test_synthetic_records_validate_and_have_unique_keys() -> None:
    gap = json.loads(gap_record(CURSOR, 10, 20, 30))
    rec = LogRecord.model_validate(gap)
    assert rec.cursor == "harmony-gap:" + CURSOR
    assert rec.gap is not None and (rec.gap.from_realtime_us, rec.gap.to_realtime_us) == (10, 20)
    assert rec.gap.lost_cursor == CURSOR
    dropped = LogRecord.model_validate(json.loads(dropped_record(CURSOR, {6: 5, 7: 2}, 1, 2)))
    assert dropped.cursor == "harmony-dropped:" + CURSOR
    assert dropped.dropped is not None and dropped.dropped.by_priority == {"6": 5, "7": 2}


def test_batch_is_a_log_batch() -> None:
    text = Encoder(64).encode(CURSOR, 1, BASE)[0]
    batch = LogBatch.model_validate_json(batch_json("dev-1", [text, text]))
    assert batch.device_id == "dev-1" and len(batch.records) == 2


def test_cursor_realtime() -> None:
    assert cursor_realtime_us(CURSOR) == 0x5F0A1B2C3D4E5
    assert cursor_realtime_us("s=1;i=2") is None


def test_escape_heavy_message_stays_under_the_payload_guard() -> None:
    raw = b"\x01" * 200_000  # valid UTF-8, but 6 bytes of JSON per byte
    text, _prio, _n = Encoder(256 * 1024).encode(CURSOR, 1, {"MESSAGE": raw})
    got = json.loads(text)
    assert len(text) < MAX_MESSAGE_JSON + 1024
    assert base64.b64decode(got["message_b64"]) == raw
