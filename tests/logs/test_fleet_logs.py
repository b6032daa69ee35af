"""`harmony-fleet logs`: journalctl-like lines; `-f` shows a systemd-cat line within a second."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard

from harmony_core.bus import Bus
from harmony_core.contracts import LogBatch, LogRecord, dump_json
from harmony_core.logcodec import MAX_DECODED_BYTES, Compressor
from harmony_core.settings import NatsSection
from harmony_fleet.logs import format_record, parse_since, record_matches
from tests.logs.helpers import make_config, running_service, stream_records, wait_async
from tests.logs.journald import Journald, send, systemd_cat
from tests.natsserver import NatsServer

STREAM = NatsSection().logs_stream


def _rec(**kw: object) -> LogRecord:
    base: dict[str, object] = {
        "cursor": "c",
        "realtime_us": 1_795_000_000_000_000,
        "priority": 6,
        "identifier": "app",
        "pid": 42,
        "message": "hi",
        "unit": "app.service",
    }
    return LogRecord.model_validate({**base, **kw})


def test_format_like_journalctl() -> None:
    line = format_record(_rec(), "dev-1", utc=True)
    when = datetime.fromtimestamp(1_795_000_000, UTC).strftime("%b %d %H:%M:%S")
    assert line == f"{when} dev-1 app[42]: hi"
    assert format_record(_rec(pid=None, message=None, message_b64="AAAA"), "d", utc=True).endswith(
        " app: [3 B blob data]"
    )


def test_filters() -> None:
    assert record_matches(_rec(), {"app.service"}, set(), 6)
    assert not record_matches(_rec(), {"other.service"}, set(), None)
    assert not record_matches(_rec(priority=7), set(), set(), 6)
    assert not record_matches(_rec(), set(), {"x"}, None)
    gap = _rec(gap={"lost_cursor": "x"}, priority=4, unit=None)
    assert record_matches(gap, {"app.service"}, {"x"}, 4)


def test_since() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert parse_since("10m", now) == datetime(2026, 11, 26, 11, 50, tzinfo=UTC)
    assert parse_since("2026-11-26T10:00:00Z", now) == datetime(2026, 11, 26, 10, tzinfo=UTC)


async def _fleet(url: str, *args: str) -> asyncio.subprocess.Process:
    exe = Path(sys.executable).parent / "harmony-fleet"
    return await asyncio.create_subprocess_exec(
        str(exe),
        "-s",
        url,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TZ": "UTC"},
    )


@pytest.mark.journald
async def test_follow_shows_a_systemd_cat_line_within_a_second(
    journald: Journald, nats_js: NatsServer, tmp_path: Path, device_id: str, ident: str
) -> None:
    cfg = make_config(tmp_path / "state", nats_js.url, identifiers=[ident])
    async with running_service(cfg, device_id):
        send("already there", ident, 3)
        await wait_async(lambda: stream_records(nats_js.url, device_id), 10, "a first line")
        proc = await _fleet(nats_js.url, "logs", device_id, "-f")
        assert proc.stdout is not None
        try:
            # The follower starts at "now": write until it shows one, then time one line.
            async def shows(marker: str) -> bool:
                systemd_cat([marker], ident)
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), 0.5)  # type: ignore[union-attr]
                except TimeoutError:
                    return False
                return marker in line.decode()

            await wait_async(lambda: shows("warm-up"), 15, "the follower to show a line", 0)
            t0 = time.monotonic()
            systemd_cat(["timed line"], ident)

            async def timed() -> bytes:
                while b"timed line" not in (got := await proc.stdout.readline()):  # type: ignore[union-attr]
                    assert got, "harmony-fleet logs -f ended"
                return got

            line = await asyncio.wait_for(timed(), 5)
            elapsed = time.monotonic() - t0
        finally:
            proc.terminate()
            await proc.wait()
        assert "timed line" in line.decode() and f" {device_id} {ident}[" in line.decode()
        assert elapsed < 1.0, elapsed

        # Without -f: everything so far, filtered by priority, then exit 0.
        proc = await _fleet(nats_js.url, "logs", device_id, "-p", "err", "--utc")
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, err
        lines = out.decode().splitlines()
        assert len(lines) == 1 and lines[0].endswith(f"{ident}[{os.getpid()}]: already there")


@pytest.mark.journald
async def test_terminal_escapes_in_a_real_line_are_shown_not_sent(
    journald: Journald, nats_js: NatsServer, tmp_path: Path, device_id: str, ident: str
) -> None:
    """OSC 52 (write the clipboard) and OSC 0 (retitle the window) from a device's journal."""
    osc52, osc0 = "\x1b]52;c;aGVsbG8=\x07", "\x1b]0;pwned\x07"
    cfg = make_config(tmp_path / "state", nats_js.url, identifiers=[ident])
    async with running_service(cfg, device_id):
        send(f"clip {osc52} title {osc0}", ident)
        await wait_async(lambda: stream_records(nats_js.url, device_id), 10, "the line shipped")
    for output in ("short", "json"):
        proc = await _fleet(nats_js.url, "logs", device_id, "--utc", "-o", output)
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, err
        assert b"\x1b" not in out and b"\x07" not in out, out
    assert out.decode().count("\n") == 1 and '"clip \\u001b]52;c;' in out.decode()
    proc = await _fleet(nats_js.url, "logs", device_id, "--utc")
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    assert out.decode().endswith(
        f"{ident}[{os.getpid()}]: clip \\x1b]52;c;aGVsbG8=\\x07 title \\x1b]0;pwned\\x07\n"
    )


def _plain_batch(device_id: str, messages: list[str], first: int) -> bytes:
    """A LogBatch as every agent before compression sent it: plain JSON, no headers."""
    records = [
        LogRecord(
            cursor=f"s=old;i={first + i:x}",
            realtime_us=1_795_000_000_000_000 + first + i,
            identifier="app",
            pid=7,
            priority=6,
            message=m,
        )
        for i, m in enumerate(messages)
    ]
    return dump_json(LogBatch(device_id=device_id, records=records))


async def test_batches_of_an_older_agent_and_a_newer_one_both_read(
    nats_js: NatsServer, device_id: str
) -> None:
    """Plain batches (an agent from before compression, or `compression = "none"`) and
    zstd ones on one subject: `harmony-fleet logs` prints them all, in stream order; a
    zip bomb from a hostile device is skipped, not inflated, and the lines after it print."""
    subject = f"logs.{device_id}"
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 << 20))
    compressed, headers = Compressor().compress(_plain_batch(device_id, ["new 1", "new 2"], 10))
    assert headers is not None

    async def publish(bus: Bus) -> None:
        await bus.publish(subject, _plain_batch(device_id, ["old 1", "old 2"], 0), stream=STREAM)
        await bus.publish(subject, compressed, stream=STREAM, headers=headers)
        await bus.publish(subject, bomb, stream=STREAM, headers=headers)
        await bus.publish(subject, _plain_batch(device_id, ["old 3"], 20), stream=STREAM)

    bus = Bus(NatsSection(servers=[nats_js.url]), name="logs-test-writer")
    await bus.connect_once()
    try:
        await publish(bus)
    finally:
        await bus.close()
    for output in ("json", "short"):
        proc = await _fleet(nats_js.url, "logs", device_id, "--utc", "-o", output)
        out, err = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, err
        lines = out.decode().splitlines()
        if output == "json":
            got = [json.loads(line)["message"] for line in lines]
        else:
            got = [line.rsplit(": ", 1)[1] for line in lines]
        assert got == ["old 1", "old 2", "new 1", "new 2", "old 3"]
        assert err.decode().count("harmony-fleet: skipped") == 1
        assert "refused" in err.decode() and str(MAX_DECODED_BYTES) in err.decode()
