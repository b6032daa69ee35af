"""LogsService against a real journald and a real nats-server, in this process."""

from __future__ import annotations

import base64
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.logs.pump import Pump
from agent.logs.visibility import JournalPaths, blind_reason
from tests.logs.helpers import (
    make_config,
    running_service,
    stream_encodings,
    stream_records,
    wait_async,
)
from tests.logs.journald import Journald, journalctl_json, send, systemd_cat, unique
from tests.natsserver import NatsServer

pytestmark = pytest.mark.journald


def _lines(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if not r["cursor"].startswith("harmony-")]


async def _wait_records(url: str, dev: str, n: int, timeout: float = 20) -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]] | None:
        recs = await stream_records(url, dev)
        return recs if len(_lines(recs)) >= n else None

    result: list[dict[str, Any]] = await wait_async(enough, timeout, f"{n} lines in the stream")
    return result


async def test_lines_arrive_as_journalctl_shows_them(
    journald: Journald,
    nats_js: NatsServer,
    tmp_path: Path,
    device_id: str,
    ident: str,
    compression: str,
) -> None:
    cfg = make_config(
        tmp_path / "state",
        nats_js.url,
        identifiers=[ident],
        max_priority="debug",
        compression=compression,
    )
    async with running_service(cfg, device_id) as run:
        for i in range(40):
            send(f"native {i}", ident, i % 8, CUSTOM="x")
        systemd_cat([f"piped {i}" for i in range(10)], ident, "notice")
        records = await _wait_records(nats_js.url, device_id, 50)
        oracle = journalctl_json("-t", ident)
        assert [r["cursor"] for r in records] == [e["__CURSOR"] for e in oracle]
        for r, e in zip(records, oracle, strict=True):
            assert r["message"] == e["MESSAGE"]
            assert r["identifier"] == ident
            assert r["priority"] == int(e["PRIORITY"])
            assert r["pid"] == int(e["_PID"])
            assert r["boot_id"] == e["_BOOT_ID"]
            assert r["realtime_us"] == int(e["__REALTIME_TIMESTAMP"])
        s = await wait_async(
            lambda: (x := run.svc.summary()).state == "shipping" and x.shipped == 50 and x,
            5,
            "the summary to count 50",
        )
        assert s.lag_s is not None and s.lag_s < 5 and s.in_flight == 0
        await wait_async(lambda: run.svc.store.written == run.svc.committed, 5, "cursor saved")
    # On the wire as configured: every batch zstd-compressed, or every one plain JSON.
    encodings = set(await stream_encodings(nats_js.url, device_id))
    assert encodings == ({"zstd"} if compression == "zstd" else {None})
    saved = json.loads((tmp_path / "state" / "logs" / "cursor").read_text())
    assert saved["cursor"] == oracle[-1]["__CURSOR"]


async def test_binary_and_overlong_messages(
    journald: Journald,
    nats_js: NatsServer,
    tmp_path: Path,
    device_id: str,
    ident: str,
    compression: str,
) -> None:
    cfg = make_config(
        tmp_path / "state",
        nats_js.url,
        identifiers=[ident],
        max_message_bytes=1024,
        compression=compression,
    )
    async with running_service(cfg, device_id):
        send(b"\xff\xfe not utf-8 \x00\x01", ident)
        send("é" * 3000, ident)
        send(b"\xfe" * 5000, ident)
        send("short", ident)
        r = await _wait_records(nats_js.url, device_id, 4)
    assert base64.b64decode(r[0]["message_b64"]) == b"\xff\xfe not utf-8 \x00\x01"
    assert "message" not in r[0] and "truncated" not in r[0]
    assert r[1]["truncated"] is True and r[1]["message"] == "é" * 512
    assert r[2]["truncated"] is True and base64.b64decode(r[2]["message_b64"]) == b"\xfe" * 1024
    assert r[3]["message"] == "short" and "truncated" not in r[3]


async def test_rate_limit_drops_only_less_severe_and_says_so(
    journald: Journald,
    nats_js: NatsServer,
    tmp_path: Path,
    device_id: str,
    ident: str,
    compression: str,
) -> None:
    cfg = make_config(
        tmp_path / "state",
        nats_js.url,
        identifiers=[ident],
        max_priority="debug",
        rate_limit_lines=100,
        rate_limit_burst="1s",
        compression=compression,
    )
    async with running_service(cfg, device_id) as run:
        for i in range(3000):
            send(f"line {i}", ident, 3 if i % 30 == 0 else 6)
        send("the end", ident, 2)
        want = journalctl_json("-t", ident)
        assert len(want) == 3001

        async def done() -> list[dict[str, Any]] | None:
            recs = await stream_records(nats_js.url, device_id)
            return recs if recs and recs[-1].get("message") == "the end" else None

        recs: list[dict[str, Any]] = await wait_async(done, 30, "the last line")
        summary = run.svc.summary()
    lines = _lines(recs)
    notices = [r for r in recs if r["cursor"].startswith("harmony-dropped:")]
    severe = [e["__CURSOR"] for e in want if int(e["PRIORITY"]) <= 3]
    assert len(severe) == 101
    assert set(severe) <= {r["cursor"] for r in lines}
    assert notices, "drops must be announced in the stream"
    dropped = sum(n for r in notices for n in r["dropped"]["by_priority"].values())
    assert set().union(*(r["dropped"]["by_priority"] for r in notices)) == {"6"}
    assert dropped > 0 and dropped + len(lines) == 3001
    assert summary.dropped == dropped


async def test_blind_until_journald_is_in_sight(
    journald: Journald,
    nats_js: NatsServer,
    tmp_path: Path,
    device_id: str,
    ident: str,
    compression: str,
) -> None:
    cfg = make_config(tmp_path / "state", nats_js.url, identifiers=[ident], compression=compression)
    missing = JournalPaths(socket=tmp_path / "no-journald.socket")
    async with running_service(cfg, device_id, journal_paths=missing, recheck_s=0.2) as run:
        s = run.svc.summary()
        assert s.state == "blind" and s.detail is not None and "journald is not running" in s.detail
        run.svc.paths = JournalPaths(dirs=(tmp_path / "empty",))
        await wait_async(
            lambda: "no journal files" in (run.svc.summary().detail or ""), 5, "no files"
        )
        run.svc.paths = JournalPaths()
        await wait_async(lambda: run.svc.summary().state == "shipping", 5, "shipping")
        send("seen", ident)
        r = await _wait_records(nats_js.url, device_id, 1)
    assert r[0]["message"] == "seen"


async def test_reconfigure_reopens_with_new_filters(
    journald: Journald, nats_js: NatsServer, tmp_path: Path, device_id: str, compression: str
) -> None:
    a, b = unique("a"), unique("b")
    cfg = make_config(tmp_path / "state", nats_js.url, identifiers=[a], compression=compression)
    async with running_service(cfg, device_id) as run:
        send("a1", a)
        await _wait_records(nats_js.url, device_id, 1)
        run.svc.reconfigure(
            make_config(tmp_path / "state", nats_js.url, identifiers=[b], compression=compression)
        )
        await wait_async(lambda: run.svc.summary().state == "shipping", 10, "reopened")
        send("a2", a)
        send("b1", b)
        recs = await _wait_records(nats_js.url, device_id, 2)
    assert [r["message"] for r in recs] == ["a1", "b1"]


async def test_checkpoint_moves_past_filtered_out_lines(
    journald: Journald,
    nats_js: NatsServer,
    tmp_path: Path,
    device_id: str,
    ident: str,
    monkeypatch: pytest.MonkeyPatch,
    compression: str,
) -> None:
    monkeypatch.setattr("agent.logs.pump.CHECKPOINT_EVERY_S", 0.2)
    cfg = make_config(tmp_path / "state", nats_js.url, identifiers=[ident], compression=compression)
    other = unique("noise")
    async with running_service(cfg, device_id) as run:
        send("wanted", ident)
        await _wait_records(nats_js.url, device_id, 1)
        for i in range(500):
            send(f"noise {i}", other)
        (last_noise,) = (e["__CURSOR"] for e in journalctl_json("-t", other, "-n", "1"))
        await wait_async(
            lambda: (
                (w := run.svc.store.written) is not None
                and _seqnum(w.cursor) >= _seqnum(last_noise)
            ),
            10,
            "the saved cursor to pass the filtered-out lines",
        )


def _seqnum(cursor: str) -> int:
    parts = dict(p.split("=", 1) for p in cursor.split(";"))
    return int(parts["i"], 16)


def test_blind_as_a_user_outside_systemd_journal(journald: Journald) -> None:
    """libsystemd shows such a user an empty journal, no error: the check must say why."""
    if not shutil.which("setpriv") or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run as nobody")
    code = "from agent.logs.visibility import blind_reason; print(blind_reason())"
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    if proc.returncode != 0:
        pytest.skip(f"nobody cannot run this checkout's Python: {proc.stderr.strip()[-200:]}")
    out = proc.stdout
    assert "cannot read the system journal" in out and "systemd-journal" in out, out
    assert blind_reason() is None  # root sees it


async def test_reopening_to_drop_mappings_loses_and_repeats_nothing(
    journald: Journald,
    nats_js: NatsServer,
    tmp_path: Path,
    device_id: str,
    ident: str,
    monkeypatch: pytest.MonkeyPatch,
    compression: str,
) -> None:
    monkeypatch.setattr("agent.logs.pump.MAP_BUDGET", -1)  # reopen after every batch
    for i in range(3000):
        send(f"line {i}", ident)
    cfg = make_config(
        tmp_path / "state",
        nats_js.url,
        identifiers=[ident],
        start_at="all",
        batch_max_lines=100,
        compression=compression,
    )
    async with running_service(cfg, device_id):
        records = await _wait_records(nats_js.url, device_id, 3000)
    assert [r["cursor"] for r in records] == [e["__CURSOR"] for e in journalctl_json("-t", ident)]


async def test_a_journal_error_is_shown_then_retried(
    journald: Journald,
    nats_js: NatsServer,
    tmp_path: Path,
    device_id: str,
    ident: str,
    monkeypatch: pytest.MonkeyPatch,
    compression: str,
) -> None:
    """A failed generation says `error` in the summary, then starts again (on `retrying`)."""
    failures = [OSError(errno.EIO, "injected: a journal file cannot be read")]

    class FailsOnce(Pump):
        def _position(self) -> None:
            if failures:
                raise failures.pop()
            super()._position()

    monkeypatch.setattr("agent.logs.service.Pump", FailsOnce)
    cfg = make_config(tmp_path / "state", nats_js.url, identifiers=[ident], compression=compression)
    async with running_service(cfg, device_id) as run:
        s = await wait_async(
            lambda: (x := run.svc.summary()).state == "error" and x, 5, "the error in the summary"
        )
        assert s.detail is not None and "injected" in s.detail
        await wait_async(lambda: run.svc.summary().state == "shipping", 10, "shipping again")
        send("after the error", ident)
        r = await _wait_records(nats_js.url, device_id, 1)
    assert r[0]["message"] == "after the error" and not failures
