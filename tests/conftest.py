"""Shared fixtures: a real nats-server with JetStream (and the fleet layout), a real journald."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import NatsSection
from agent.logs.visibility import journald_running
from harmony_fleet.provision import ensure_layout
from tests.agentproc import run_bus
from tests.logs.journald import Journald
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
    run_bus(url, lambda bus: ensure_layout(bus, NatsSection(servers=[url])))


@pytest.fixture
def nats_js(nats_server: NatsServer) -> NatsServer:
    """A nats-server with every bucket and stream of contract §3 created."""
    init_layout(nats_server.url)
    return nats_server


@pytest.fixture(scope="session")
def journald() -> Iterator[Journald]:
    """systemd-journald: the running one, or one started (and stopped) for this session."""
    if not shutil.which("journalctl"):
        pytest.skip("journalctl missing: apt-get install systemd")
    if os.geteuid() != 0 and not journald_running():
        pytest.skip("no systemd-journald running, and only root can start one")
    jd = Journald().ensure()
    try:
        yield jd
    finally:
        jd.stop()
