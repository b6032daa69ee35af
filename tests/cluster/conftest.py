"""A real 3-node NATS cluster (three `nats-server -js` with routes) for the failover tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harmony_core.settings import NatsSection
from harmony_fleet.provision import ensure_layout
from tests.agentproc import run_bus
from tests.natsserver import NatsCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three routed nats-server -js processes on free ports, each with its own store dir."""
    cl = NatsCluster(tmp_path / "cluster").start()
    try:
        yield cl
    finally:
        cl.stop()


@pytest.fixture
def cluster_js(cluster: NatsCluster) -> NatsCluster:
    """The cluster with the contract's layout at 3 replicas (`harmony-fleet init --replicas 3`)."""
    n = NatsSection(servers=cluster.urls)
    lines = run_bus(n, lambda bus: ensure_layout(bus, n, replicas=3))
    assert all("created" in line for line in lines), lines
    return cluster
