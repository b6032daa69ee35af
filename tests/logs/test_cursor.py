"""The cursor file: atomic, versioned, unreadable treated as absent, writes coalesced."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from agent.logs.cursor import CursorStore, SavedCursor


def test_absent_then_saved(tmp_path: Path) -> None:
    store = CursorStore(tmp_path / "logs" / "cursor")
    assert store.load() is None
    store.write_now(SavedCursor("s=1;i=2", 5))
    raw = json.loads((tmp_path / "logs" / "cursor").read_text())
    assert raw["schema_version"] == 1 and raw["cursor"] == "s=1;i=2"
    assert CursorStore(store.path).load() == SavedCursor("s=1;i=2", 5)
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["cursor"]


def test_unreadable_is_absent(tmp_path: Path) -> None:
    p = tmp_path / "cursor"
    for text in ("{", '{"cursor": 1}', '{"schema_version": 2, "cursor": "x"}', "[]"):
        p.write_text(text)
        assert CursorStore(p).load() is None


async def test_background_writes_keep_the_newest(tmp_path: Path) -> None:
    store = CursorStore(tmp_path / "cursor")
    task = asyncio.ensure_future(store.run())
    for i in range(50):
        store.save(SavedCursor(f"c{i}", i))
    await asyncio.wait_for(store.wait_idle(), 5)
    assert CursorStore(store.path).load() == SavedCursor("c49", 49)
    store.save(SavedCursor("last", 1))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert CursorStore(store.path).load() == SavedCursor("last", 1)


def test_malformed_files_are_absent_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = tmp_path / "cursor"
    bad: list[bytes] = [
        b"\xff\xfe not text",
        b"[" * 20_000 + b"]" * 20_000,  # nesting deeper than json's recursion limit
        b'{"schema_version": 1, "cursor": "' + b"s" * 10_000_000 + b'"}',  # huge
        b'{"schema_version": 1, "cursor": "s=1\\u0000"}',
        b'{"schema_version": 1, "cursor": ["s=1"]}',
        b'{"schema_version": true, "cursor": "s=1"}',
        b'"s=1"',
        b"null",
        b"",
    ]
    for data in bad:
        p.write_bytes(data)
        caplog.clear()
        assert CursorStore(p).load() is None, data[:40]
        (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert getattr(warning, "event", None) == "logs-cursor-unreadable"
        assert "start_at" in warning.getMessage() and len(warning.getMessage()) < 400


def test_odd_realtime_is_dropped_not_fatal(tmp_path: Path) -> None:
    p = tmp_path / "cursor"
    for rt in ('"5"', "true", "1e400", "-1", "[1]"):
        p.write_text(f'{{"schema_version": 1, "cursor": "s=1;i=2", "realtime_us": {rt}}}')
        assert CursorStore(p).load() == SavedCursor("s=1;i=2", None)


async def test_writes_come_at_most_every_min_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While acks pour in (catching up), the file is written ~every 0.1 s, not per ack."""
    store = CursorStore(tmp_path / "cursor", min_interval=0.1)
    writes: list[SavedCursor] = []
    write_now = store.write_now

    def counted(saved: SavedCursor) -> None:
        writes.append(saved)
        write_now(saved)

    monkeypatch.setattr(store, "write_now", counted)
    task = asyncio.ensure_future(store.run())
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    i = 0
    while loop.time() - t0 < 0.5:  # an ack every ~2 ms for half a second
        store.save(SavedCursor(f"c{i}", i))
        i += 1
        await asyncio.sleep(0.002)
    await asyncio.wait_for(store.wait_idle(), 5)
    assert i > 100
    assert 3 <= len(writes) <= 8, len(writes)
    assert writes[-1] == SavedCursor(f"c{i - 1}", i - 1)  # the newest always lands
    assert [w.realtime_us for w in writes] == sorted(w.realtime_us or 0 for w in writes)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
