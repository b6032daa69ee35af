"""No line stops log shipping: fields are capped, batches fit the server's max_payload.

Issue 9, finding 5: a 1.5 MB SYSLOG_IDENTIFIER made a 2 MB record the server
refused; the batch was retried for ever and every later line waited behind it.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.logs.cursor import SavedCursor
from agent.logs.fit import split_batch, stub_record
from agent.logs.pump import Batch, msg_id
from agent.logs.records import FIELD_MAX_BYTES, Encoder, batch_json
from agent.logs.shipper import Shipper, encoder_of
from harmony_core.bus import Bus
from harmony_core.contracts import LogBatch, LogRecord
from harmony_core.settings import NatsSection
from tests.conftest import init_layout
from tests.logs.helpers import make_config, running_service, stream_records, wait_async
from tests.logs.journald import Journald, journalctl_json, send, seqnum, unique
from tests.natsserver import NatsServer, wait_for

SMALL = 64 * 1024


def _rec(i: int, message: str | bytes, **extra: Any) -> str:
    fields: dict[str, Any] = {
        "MESSAGE": message if isinstance(message, bytes) else message.encode(),
        "SYSLOG_IDENTIFIER": b"app",
        "_BOOT_ID": b"0123456789abcdef0123456789abcdef",
        **extra,
    }
    cursor = f"s=abc;i={i:x};b=0123;m=10;t=5f0a1b2c3d4e5;x=99"
    text, _p, _n = Encoder(256 * 1024).encode(cursor, 1_700_000_000_000_000 + i, fields)
    return text


# --- pure: caps, split, stub ---------------------------------------------------------


@pytest.mark.parametrize("field", ["SYSLOG_IDENTIFIER", "_SYSTEMD_UNIT", "_BOOT_ID"])
def test_every_text_field_is_capped_and_flagged(field: str) -> None:
    text, _p, _n = Encoder(1024).encode("c", 1, {"MESSAGE": b"m", field: b"\x01" * 1_500_000})
    rec = LogRecord.model_validate_json(text)
    key = {"SYSLOG_IDENTIFIER": "identifier", "_SYSTEMD_UNIT": "unit", "_BOOT_ID": "boot_id"}
    assert getattr(rec, key[field]) == "\x01" * FIELD_MAX_BYTES
    assert rec.truncated is True and rec.message == "m"
    assert len(text) < 8 * FIELD_MAX_BYTES


def test_a_capped_field_cut_inside_a_character_stays_text() -> None:
    text, _p, _n = Encoder(1024).encode("c", 1, {"SYSLOG_IDENTIFIER": "é".encode() * 1000})
    rec = LogRecord.model_validate_json(text)
    assert rec.identifier == "é" * (FIELD_MAX_BYTES // 2) and rec.truncated is True


def test_short_fields_are_not_flagged_and_the_cache_keeps_the_flag() -> None:
    enc = Encoder(1024)
    long_id = {"MESSAGE": b"m", "SYSLOG_IDENTIFIER": b"x" * 5000, "_PID": b"1"}
    for _ in range(2):  # the second comes from the fragment cache
        assert json.loads(enc.encode("c", 1, long_id)[0])["truncated"] is True
        assert "truncated" not in json.loads(enc.encode("c", 1, {"MESSAGE": b"m"})[0])


def test_huge_fields_are_not_kept_in_the_fragment_cache() -> None:
    enc = Encoder(1024)
    for i in range(3):
        enc.encode("c", 1, {"MESSAGE": b"m", "SYSLOG_IDENTIFIER": b"%d" % i + b"x" * 100_000})
        enc.encode("c", 1, {"MESSAGE": b"m", "SYSLOG_PID": b"%d" % i + b"9" * 100_000})
    enc.encode("c", 1, {"MESSAGE": b"m", "SYSLOG_IDENTIFIER": b"small"})
    assert len(enc._frags) == 1


def test_numbers_too_long_for_an_int64_are_left_out() -> None:
    fields = {"MESSAGE": b"m", "SYSLOG_PID": b"9" * 4000, "_SOURCE_REALTIME_TIMESTAMP": b"1" * 30}
    got = json.loads(Encoder(1024).encode("c", 1, fields)[0])
    assert "pid" not in got and "source_realtime_us" not in got


def test_split_keeps_every_record_in_order_under_the_limit() -> None:
    texts = [_rec(i, f"line {i} " + "x" * 3000) for i in range(200)]
    payload = batch_json("dev-1", texts)
    assert len(payload) > 8 * SMALL
    parts = split_batch(payload, SMALL)
    assert all(len(p.payload) <= SMALL for p in parts)
    got: list[str] = []
    for p in parts:
        b = LogBatch.model_validate_json(p.payload)
        assert b.device_id == "dev-1"
        assert (p.first_key, p.last_key) == (b.records[0].cursor, b.records[-1].cursor)
        got += [r.cursor for r in b.records]
    assert got == [json.loads(t)["cursor"] for t in texts]
    # Greedy: no two neighbours would have fitted together.
    sizes = [len(p.payload) for p in parts]
    assert all(a + b > SMALL for a, b in itertools.pairwise(sizes))


def test_a_batch_that_fits_is_one_part() -> None:
    payload = batch_json("dev-1", [_rec(1, "a"), _rec(2, "b")])
    (part,) = split_batch(payload, SMALL)
    assert part.payload == payload


@pytest.mark.parametrize(
    "message",
    ["y" * 200_000, "é" * 100_000, "\x01" * 40_000, b"\xff" * 150_000],
    ids=["ascii", "multibyte", "escaped", "binary"],
)
def test_a_record_that_cannot_fit_ships_as_a_marked_stub(message: str | bytes) -> None:
    big = _rec(2, message, _SYSTEMD_UNIT=b"app.service", _PID=b"42")
    payload = batch_json("dev-1", [_rec(1, "before"), big, _rec(3, "after")])
    parts = split_batch(payload, SMALL)
    records = [r for p in parts for r in LogBatch.model_validate_json(p.payload).records]
    assert all(len(p.payload) <= SMALL for p in parts)
    assert [r.message for r in (records[0], records[2])] == ["before", "after"]
    stub, orig = records[1], LogRecord.model_validate_json(big)
    assert stub.truncated is True
    assert stub.model_dump(exclude={"message", "message_b64", "truncated"}) == orig.model_dump(
        exclude={"message", "message_b64", "truncated"}
    )
    if isinstance(message, bytes):
        assert stub.message_b64 is not None and stub.message is None
        kept = base64.b64decode(stub.message_b64)
        assert message.startswith(kept) and len(kept) > SMALL // 2
    else:
        assert stub.message is not None and message.startswith(stub.message)
        assert len(json.dumps(stub.message, ensure_ascii=False).encode()) > SMALL // 2


def test_a_stub_drops_optional_fields_before_it_gives_up() -> None:
    text = _rec(1, "m" * 1000, _SYSTEMD_UNIT=b"u" * 200, _PID=b"7")
    tiny = stub_record(text, 200)
    rec = LogRecord.model_validate_json(tiny)
    assert len(tiny.encode()) <= 200 and rec.truncated is True
    assert rec.cursor == json.loads(text)["cursor"] and rec.priority == 6
    with pytest.raises(ValueError, match="max_payload"):
        stub_record(text, 40)


# --- against a real journald and nats-server ----------------------------------------


@pytest.fixture
def nats_small(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server whose max_payload is 64 KiB, below batch_max_bytes."""
    conf = tmp_path / "nats.conf"
    conf.write_text(f"max_payload: {SMALL}\n")
    srv = NatsServer(tmp_path / "nats", extra=["-c", str(conf)]).start()
    try:
        init_layout(srv.url)
        yield srv
    finally:
        srv.stop()


async def _arrived(url: str, dev: str, want: list[str], timeout: float) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        recs = await stream_records(url, dev)
        return recs if set(want) <= {r["cursor"] for r in recs} else None

    got: list[dict[str, Any]] = await wait_async(check, timeout, f"{len(want)} lines", 0.5)
    return got


@pytest.mark.journald
async def test_a_huge_identifier_does_not_stop_shipping(
    journald: Journald, nats_js: NatsServer, tmp_path: Path, device_id: str, ident: str
) -> None:
    # No filters: the huge line's identifier is not `ident`. journald stores it whole.
    cfg = make_config(tmp_path / "state", nats_js.url, start_at="now")
    mark = unique("mark")
    async with running_service(cfg, device_id):
        huge = ident + "x" * 1_500_000
        send("the huge one", huge, MARK=mark)
        for i in range(5):
            send(f"after {i}", ident)
        # journald stores lines asynchronously: wait until it has them all.
        wait_for(lambda: len(journalctl_json("-t", ident)) == 5, 10, "the lines after it")
        wait_for(lambda: journalctl_json(f"MARK={mark}"), 10, "the huge line")
        (big,) = journalctl_json(f"MARK={mark}", "--all", "--output-fields=SYSLOG_IDENTIFIER")
        assert len(big["SYSLOG_IDENTIFIER"]) == len(huge)
        after = [e["__CURSOR"] for e in journalctl_json("-t", ident)]
        recs = await _arrived(nats_js.url, device_id, [big["__CURSOR"], *after], 30)
    stub = next(r for r in recs if r["cursor"] == big["__CURSOR"])
    assert stub["identifier"] == huge[:FIELD_MAX_BYTES]
    assert stub["truncated"] is True and stub["message"] == "the huge one"
    shipped = [r["message"] for r in recs if r.get("identifier") == ident]
    assert shipped == [f"after {i}" for i in range(5)]


@pytest.mark.journald
@pytest.mark.parametrize("compression", ["zstd", "none"])
async def test_a_server_max_payload_below_batch_max_bytes_splits(
    journald: Journald,
    nats_small: NatsServer,
    tmp_path: Path,
    device_id: str,
    ident: str,
    compression: str,
) -> None:
    # Written before the service starts, so the first batches are full (512 KiB).
    for i in range(300):
        send(f"line {i} " + "x" * 3000, ident)
        if i == 150:
            send("big " + "y" * 200_000, ident)
    wait_for(lambda: len(journalctl_json("-t", ident)) == 301, 10, "the lines in the journal")
    want = journalctl_json("-t", ident)
    cfg = make_config(
        tmp_path / "state",
        nats_small.url,
        identifiers=[ident],
        start_at="all",
        batch_max_bytes=512 * 1024,
        max_message_bytes=256 * 1024,
        compression=compression,
    )
    async with running_service(cfg, device_id) as run:
        recs = await _arrived(nats_small.url, device_id, [e["__CURSOR"] for e in want], 30)
        last = seqnum(want[-1]["__CURSOR"])
        # At or past it: when idle, the pump checkpoints the tail of the whole journal.
        await wait_async(
            lambda: (c := run.svc.committed) is not None and seqnum(c.cursor) >= last,
            10,
            "the cursor to be committed past the last line",
        )
        assert run.svc.summary().state == "shipping"
    got = [r["cursor"] for r in recs]
    assert got == [e["__CURSOR"] for e in want]  # in order, none twice
    big = recs[151]
    if compression == "zstd":
        # 200 KB of "y" compresses to almost nothing: it fits whole.
        assert big["message"] == "big " + "y" * 200_000 and "truncated" not in big
    else:
        assert big["truncated"] is True and big["message"].startswith("big yyy")
        assert len(big["message"]) < SMALL


@pytest.mark.parametrize("compression", ["zstd", "none"])
async def test_the_shipper_splits_a_batch_the_server_would_refuse(
    nats_small: NatsServer, device_id: str, compression: str
) -> None:
    """A batch built before the server's limit was known: split, in order, one commit.

    Compressed, it is split as JSON and each part compressed again.
    """
    rng = random.Random(9)
    # Random text: it does not compress below the server's limit either.
    texts = [_rec(i, f"line {i} " + rng.randbytes(2250).hex()) for i in range(150)]
    texts.insert(70, _rec(1000, "z" * 200_000))
    keys = [json.loads(t)["cursor"] for t in texts]
    payload = batch_json(device_id, texts)
    wire, headers = encoder_of(compression)(payload)
    assert len(wire) > 4 * SMALL  # compressed too, it must be split
    assert (headers is not None) == (compression == "zstd")
    nats = NatsSection(servers=[nats_small.url])
    bus = Bus(nats, name="logs-test")
    commits: list[SavedCursor] = []
    slots = threading.Semaphore(0)
    run = asyncio.ensure_future(bus.run())
    try:
        await bus.wait_connected(10)
        assert bus.max_payload == SMALL
        sh = Shipper(
            bus,
            f"logs.{device_id}",
            nats.logs_stream,
            max_in_flight=4,
            ack_timeout=5,
            slots=slots,
            commit=commits.append,
            encode=encoder_of(compression),
        )
        task = asyncio.ensure_future(sh.run())
        end = SavedCursor(keys[-1], 1)
        n = len(texts)
        sh.put(Batch(payload, msg_id(keys[0], keys[-1]), n, n, 0, end, 1))
        assert await sh.drained(20), sh.error
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await bus.close()
    assert commits == [end] and sh.shipped == len(texts)
    recs = await stream_records(nats_small.url, device_id, nats)
    assert [r["cursor"] for r in recs] == keys
    assert recs[70]["truncated"] is True and recs[70]["message"].startswith("zzz")
