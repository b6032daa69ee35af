"""Shared fixtures: a real nats-server with JetStream, and the fleet layout on it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.bus import Bus
from agent.config import NatsSection
from agent.fleet.layout import ensure_layout
from tests.natsserver import NatsServer


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server -js on a free port with a temporary store dir."""
    srv = NatsServer(tmp_path / "nats").start()
    try:
        yield srv
    finally:
        srv.stop()


def init_layout(url: str) -> None:
    """What `harmony-fleet init` does, against `url`."""

    async def go() -> None:
        bus = Bus(NatsSection(servers=[url]))
        await bus.connect_once()
        try:
            await ensure_layout(bus, NatsSection(servers=[url]))
        finally:
            await bus.close()

    asyncio.run(go())


@pytest.fixture
def nats_js(nats_server: NatsServer) -> NatsServer:
    """A nats-server with every bucket and stream of contract §3 created."""
    init_layout(nats_server.url)
    return nats_server
