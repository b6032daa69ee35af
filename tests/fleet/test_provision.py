"""`harmony-fleet init` says truly what it did: created, exists, or updated (and what changed)."""

from __future__ import annotations

import asyncio

import pytest

from harmony_core.bus import Bus, Ensured
from harmony_core.settings import NatsSection
from harmony_fleet.cli import main as fleet
from harmony_fleet.provision import LOG_MAX_BYTES, ensure_layout
from tests.agentproc import run_bus
from tests.natsserver import NatsServer

ITEMS = [
    "KV device-info",
    "KV device-heartbeat",
    "KV agent-upgrade",
    "KV agent-upgrade-status",
    "KV agent-rollouts",
    "KV device-identity",
    "object store agent-artifacts",
    "stream DEVICE_LOGS",
]


def _init(url: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    capsys.readouterr()
    assert fleet(["-s", url, "init"]) == 0
    return capsys.readouterr().out.splitlines()


def test_rerun_says_exists_and_a_change_says_updated(
    nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = nats_server.url
    assert _init(url, capsys) == [f"{i}: created" for i in ITEMS]
    # Nothing changed: nothing claims to be updated.
    assert _init(url, capsys) == [f"{i}: exists" for i in ITEMS]
    # Limits set otherwise (an older init, a hand edit): brought back, saying what changed.
    n = NatsSection(servers=[url])
    lines = run_bus(url, lambda bus: ensure_layout(bus, n, log_max_age_s=86400))
    assert lines[:-1] == [f"{i}: exists" for i in ITEMS[:-1]]
    assert lines[-1] == "stream DEVICE_LOGS: updated (max_age 168h→24h)"
    assert _init(url, capsys)[-1] == "stream DEVICE_LOGS: updated (max_age 24h→168h)"
    assert _init(url, capsys)[-1] == "stream DEVICE_LOGS: exists"


def test_an_update_keeps_the_streams_other_settings(nats_server: NatsServer) -> None:
    """A stream made by hand with its own max_msgs: init changes its limits, nothing else."""
    import nats
    from nats.js.api import StreamConfig

    async def by_hand() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().add_stream(
                StreamConfig(name="DEVICE_LOGS", subjects=["logs.>"], max_msgs=1000, max_age=3600)
            )
        finally:
            await nc.close()

    asyncio.run(by_hand())

    async def ensure(bus: Bus) -> Ensured:
        return await bus.ensure_stream(
            "DEVICE_LOGS",
            subjects=["logs.>"],
            description="d",
            max_age_s=7 * 86400,
            max_bytes=LOG_MAX_BYTES,
            duplicate_window_s=120,
        )

    did: Ensured = run_bus(nats_server.url, ensure)
    assert did.outcome == "updated"
    assert did.changes == ("max_age 1h→168h", "max_bytes unlimited→1GiB", "description")

    async def config() -> tuple[int | None, float | None, int | None]:
        nc = await nats.connect(nats_server.url)
        try:
            info = await nc.jetstream().stream_info("DEVICE_LOGS")
        finally:
            await nc.close()
        return info.config.max_msgs, info.config.max_age, info.config.max_bytes

    assert asyncio.run(config()) == (1000, 7 * 86400.0, LOG_MAX_BYTES)
    assert str(run_bus(nats_server.url, ensure)) == "exists"
