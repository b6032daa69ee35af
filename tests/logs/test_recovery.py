"""Crashes and outages with the shipper as its own process: nothing lost, memory bounded."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.agentproc import AgentProcess, write_config
from tests.conftest import init_layout
from tests.logs.helpers import (
    agent_process,
    config_toml,
    make_config,
    stream_records,
    wait_async,
)
from tests.logs.journald import Journald, journal_cursors, send
from tests.natsserver import NatsServer

pytestmark = pytest.mark.journald


class _Writer(threading.Thread):
    """Writes `n` lines at about `rate` lines/s in the background."""

    def __init__(self, ident: str, n: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.identifier, self.n, self.rate = ident, n, rate
        self.written = 0
        self.stop = threading.Event()

    def run(self) -> None:
        chunk = max(1, int(self.rate / 50))
        while self.written < self.n and not self.stop.is_set():
            for _ in range(min(chunk, self.n - self.written)):
                send(f"line {self.written}", self.identifier)
                self.written += 1
            self.stop.wait(0.02)


def _toml(tmp_path: Path, url: str, device_id: str, ident: str, **logs: Any) -> Path:
    cfg = make_config(tmp_path / "state", url, identifiers=[ident], **logs)
    p = tmp_path / "agent.toml"
    p.write_text(config_toml(cfg, device_id))
    return p


async def _all_arrived(url: str, dev: str, want: list[str]) -> list[dict[str, Any]]:
    last: list[dict[str, Any]] = []

    async def check() -> list[dict[str, Any]] | None:
        nonlocal last
        last = await stream_records(url, dev)
        return last if set(want) <= {r["cursor"] for r in last} else None

    try:
        result: list[dict[str, Any]] = await wait_async(check, 60, "every line", 0.5)
    except AssertionError:
        have = {r["cursor"] for r in last}
        missing = [i for i, c in enumerate(want) if c not in have]
        raise AssertionError(
            f"{len(missing)} of {len(want)} lines missing, first at index "
            f"{missing[:3]}, stream has {len(last)} records"
        ) from None
    return result


def _daemon_config(tmp_path: Path, url: str, device_id: str, ident: str, compression: str) -> Path:
    cfg = write_config(tmp_path / "agent.toml", servers=[url], device_id=device_id, logs=True)
    text = cfg.read_text().replace(
        "[logs]\nenabled = true",
        f'[logs]\nenabled = true\nidentifiers = ["{ident}"]\nstart_at = "all"\n'
        f'batch_max_lines = 200\ncompression = "{compression}"',
    )
    cfg.write_text(text)
    return cfg


async def test_sigkill_mid_stream_then_restart_loses_nothing(
    journald: Journald,
    nats_js: NatsServer,
    tmp_path: Path,
    device_id: str,
    ident: str,
    compression: str,
) -> None:
    """The real daemon (`harmony-agent run`), SIGKILLed while lines stream in."""
    cfg = _daemon_config(tmp_path, nats_js.url, device_id, ident, compression)
    writer = _Writer(ident, 20000, 4000)
    agent = AgentProcess(cfg)
    try:
        agent.wait_notify("READY", "1")
        writer.start()
        cursor_file = tmp_path / "state" / "logs" / "cursor"
        await wait_async(cursor_file.exists, 20, "a first saved cursor")
        await wait_async(lambda: writer.written > 8000, 20, "the writer to be mid-way")
        assert "logs" in agent.last_status()
        agent.kill()
        before = len(await stream_records(nats_js.url, device_id))
        assert before > 0
        agent.close()
        agent = AgentProcess(cfg)
        agent.wait_notify("READY", "1")
        writer.join(60)
        want = journal_cursors("-t", ident)
        assert len(want) == 20000
        recs = await _all_arrived(nats_js.url, device_id, want)
    finally:
        writer.stop.set()
        agent.stop()
        agent.close()
    counts = collections.Counter(r["cursor"] for r in recs)
    dups = sum(n - 1 for n in counts.values())
    # Only the unacknowledged window may come twice: max_in_flight (16) + 2 batches.
    assert dups <= 18 * 200, dups
    assert set(counts) == set(want)


@pytest.fixture
def nats_synced(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server that fsyncs every message before acking it.

    By default JetStream acks a message once it is in its write buffer; SIGKILL of
    the server can then lose an acked message. That would be the server's loss,
    not the shipper's: this test is about the shipper, so the server syncs.
    """
    conf = tmp_path / "nats.conf"
    conf.write_text("jetstream {\n  sync_interval: always\n}\n")
    srv = NatsServer(tmp_path / "nats", extra=["-c", str(conf)]).start()
    try:
        init_layout(srv.url)
        yield srv
    finally:
        srv.stop()


async def test_nats_outage_stops_reading_and_loses_nothing(
    journald: Journald,
    nats_synced: NatsServer,
    tmp_path: Path,
    device_id: str,
    ident: str,
    compression: str,
) -> None:
    nats_js = nats_synced
    toml = _toml(
        tmp_path,
        nats_js.url,
        device_id,
        ident,
        start_at="now",
        batch_max_lines=100,
        max_in_flight=4,
        ack_timeout="1s",
        compression=compression,
    )
    agent = agent_process(toml)
    try:
        # Lines written before the agent reads are before `start_at = "now"`: probe
        # until one arrives, then that one is the first line of the test.
        async def probe() -> str | None:
            send("probe", ident)
            recs = await stream_records(url, device_id)
            return str(recs[0]["cursor"]) if recs else None

        url = nats_js.url
        first: str = await wait_async(probe, 20, "the agent to ship a first line", 0.5)
        nats_js.kill()
        proc = psutil.Process(agent.pid)
        rss_before = proc.memory_info().rss
        for i in range(30000):
            send(f"during outage {i} " + "x" * 200, ident)
        # The agent reads at most (max_in_flight + 2) batches, then waits: memory stays flat.
        await asyncio.sleep(1.0)
        rss_during = proc.memory_info().rss
        assert rss_during - rss_before < 30 * 1024 * 1024, (rss_before, rss_during)
        nats_js.start()
        for i in range(100):
            send(f"after {i}", ident)
        want = journal_cursors("-t", ident)
        want = want[want.index(first) :]
        assert len(want) >= 30101
        recs = await _all_arrived(nats_js.url, device_id, want)
        # Retried batches may land after later ones: the order is the journal's only
        # when nothing failed; every line is there, none twice (same Nats-Msg-Id).
        got = [r["cursor"] for r in recs]
        assert sorted(got) == sorted(want) and len(got) == len(set(got))
        assert proc.memory_info().rss < 150 * 1024 * 1024
    finally:
        agent.terminate()
        agent.wait(10)
