"""The daemon's services on one protocol (`agent.service.Service`), and none that a failing
read of a device file can end: they retry on `agent.service.retrying`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from agent.config import Config
from agent.deviceinfo import Announcer
from agent.heartbeat import HeartbeatService
from agent.logs import LogsService
from agent.runtime import RuntimeState
from agent.service import Service
from harmony_core.bus import Bus
from harmony_core.contracts import LogsSummary, UpgradeSummary, utcnow
from tests.agentproc import kv_get_json
from tests.natsserver import NatsServer


def _cfg(url: str) -> Config:
    return Config.model_validate(
        {
            "nats": {"servers": [url], "reconnect_max_wait": "1s"},
            "agent": {"device_id": "dev-svc"},
            "heartbeat": {"interval": "500ms"},
            "logs": {"enabled": False},
        }
    )


def test_every_service_is_a_service() -> None:
    cfg = _cfg("nats://127.0.0.1:1")
    bus = Bus(cfg.nats)
    state = RuntimeState("dev-svc", "m" * 32, utcnow())
    # Typed as the protocol: mypy --strict proves each one conforms.
    services: list[Service[object]] = [
        Announcer(cfg, bus, state),
        HeartbeatService(cfg, bus, state, lambda: (None, None), boot_id="b"),
        LogsService(cfg, "dev-svc", bus),
    ]
    assert [s.name for s in services] == ["announce", "heartbeat", "logs"]
    summaries = [s.summary() for s in services]
    assert summaries[:2] == [None, None]
    assert summaries[2] == LogsSummary(state="disabled")
    for s in services:
        s.reconfigure(cfg)


async def test_heartbeat_outlives_failing_reads(
    nats_js: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A read that raises (an unreadable device file, a defect) is retried, not the end."""
    cfg = _cfg(nats_js.url)
    bus = Bus(cfg.nats, name="test-heartbeat")
    await bus.connect_once()
    state = RuntimeState("dev-svc", "m" * 32, utcnow())
    state.owned = True
    failures: list[Exception] = [OSError("cannot read /proc/x"), ValueError("not UTF-8")]

    def summaries() -> tuple[LogsSummary | None, UpgradeSummary | None]:
        if failures:
            raise failures.pop(0)
        return None, None

    started: list[bool] = []
    svc = HeartbeatService(cfg, bus, state, summaries, boot_id="b")
    caplog.set_level(logging.WARNING, "agent.service")
    task = asyncio.ensure_future(svc.run(lambda: started.append(True)))
    try:
        deadline = asyncio.get_running_loop().time() + 15
        while (state.last_heartbeat_seq or 0) < 2:
            assert not task.done(), task
            assert asyncio.get_running_loop().time() < deadline, "no heartbeat after the failures"
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await bus.close()
    assert started == [True] and not failures
    retries = [r for r in caplog.records if getattr(r, "event", None) == "heartbeat-retry"]
    assert len(retries) == 2
    assert "cannot read /proc/x" in retries[0].getMessage()
    assert retries[1].exc_info is not None  # a defect keeps its traceback
    got = await asyncio.to_thread(kv_get_json, nats_js.url, "device-heartbeat", "dev-svc")
    assert got is not None and got[0]["boot_id"] == "b"


async def test_announcer_outlives_a_failing_collect(
    nats_js: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(nats_js.url)
    bus = Bus(cfg.nats, name="test-announce")
    await bus.connect_once()
    state = RuntimeState("dev-svc", "m" * 32, utcnow())
    svc = Announcer(cfg, bus, state)
    real: Callable[[], object] = svc.current
    calls = 0

    def current() -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return real()

    monkeypatch.setattr(svc, "current", current)
    task = asyncio.ensure_future(svc.run(lambda: None))
    svc.trigger()
    try:
        deadline = asyncio.get_running_loop().time() + 15
        while not state.owned:
            assert not task.done(), task
            assert asyncio.get_running_loop().time() < deadline, "DeviceInfo never published"
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await bus.close()
    assert calls >= 2
