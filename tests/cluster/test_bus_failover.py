"""The bus across a leader election: kill -9 a stream's leader mid-stream of writes.

Every write made while the stream elects a new leader still succeeds within its
timeout (retried, with the same Nats-Msg-Id), and the stream holds each exactly
once. The writer is connected to a server that stays up, so only the election is
in the way (the agent's own process test covers losing its server too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest

from harmony_core.bus import Bus
from harmony_core.errors import BusError
from harmony_core.settings import NatsSection
from tests.natsserver import NatsCluster

pytestmark = pytest.mark.slow

_WRITES_S = 12.0
_KILL_AT_S = 2.0


async def _bus(servers: list[str]) -> Bus:
    bus = Bus(NatsSection(servers=servers), name="failover-test")
    await bus.connect_once()
    return bus


def _survivor(cluster: NatsCluster, stream: str) -> tuple[str, list[str]]:
    """(the leader of `stream`, the URL of another server), for a writer that stays up."""
    leader = cluster.wait_leader(stream)
    return leader, [n.url for n in cluster.nodes if n.store_dir.name != leader][:1]


async def _write_through_a_kill(
    cluster: NatsCluster, stream: str, write: object
) -> tuple[int, list[float]]:
    """Call `write(bus, i)` every 50 ms for a while; kill -9 `stream`'s leader meanwhile.

    Returns how many writes were made and how long each took.
    """
    leader, urls = _survivor(cluster, stream)
    bus = await _bus(urls)
    took: list[float] = []
    try:
        t0 = time.monotonic()
        killed = False
        i = 0
        while time.monotonic() - t0 < _WRITES_S:
            if not killed and time.monotonic() - t0 > _KILL_AT_S:
                await asyncio.to_thread(cluster.node(leader).kill)
                killed = True
            i += 1
            s = time.monotonic()
            await write(bus, i)  # type: ignore[operator]
            took.append(time.monotonic() - s)
            await asyncio.sleep(0.05)
        new = await asyncio.to_thread(cluster.wait_leader, stream, leader)
        assert new != leader
    finally:
        await bus.close()
    return i, took


async def test_publishes_ride_out_a_leader_kill(cluster_js: NatsCluster) -> None:
    async def write(bus: Bus, i: int) -> None:
        ack = await bus.publish(
            "logs.dev-1",
            json.dumps({"i": i}).encode(),
            stream="DEVICE_LOGS",
            msg_id=f"m-{i}",
            timeout=15,
        )
        assert ack.stream == "DEVICE_LOGS"

    n, took = await _write_through_a_kill(cluster_js, "DEVICE_LOGS", write)
    # The election held some writes up for a while (that is what was ridden out) ...
    assert max(took) > 1.0, max(took)
    # ... and the stream holds every one of them exactly once, in order.
    bus = await _bus(cluster_js.urls[:1] if cluster_js.nodes[0].pid else cluster_js.urls)
    try:
        got = [json.loads(d)["i"] async for d, *_ in bus.fetch_stream("DEVICE_LOGS", "logs.dev-1")]
    finally:
        await bus.close()
    assert got == list(range(1, n + 1))


async def test_kv_puts_ride_out_a_leader_kill(cluster_js: NatsCluster) -> None:
    revisions: list[int] = []

    async def write(bus: Bus, i: int) -> None:
        revisions.append(await bus.kv_put("device-heartbeat", "dev-1", b"%d" % i, timeout=15))

    n, took = await _write_through_a_kill(cluster_js, "KV_device-heartbeat", write)
    assert max(took) > 1.0, max(took)
    # One revision per put: none stored twice (a retry is de-duplicated), none lost.
    assert revisions == sorted(revisions) and len(set(revisions)) == n
    bus = await _bus([n.url for n in cluster_js.up()])
    try:
        e = await bus.kv_get("device-heartbeat", "dev-1")
    finally:
        await bus.close()
    assert e is not None and e.value == b"%d" % n and e.revision == revisions[-1]


async def test_a_whole_cluster_restart_is_not_a_missing_bucket(cluster_js: NatsCluster) -> None:
    """All three servers stop and start again: while the streams elect their leaders, writes
    fail as "NATS unavailable", never as "run harmony-fleet init"; then they go through."""
    bus = Bus(NatsSection(servers=cluster_js.urls, reconnect_max_wait=1.0), name="restart-test")
    runner = asyncio.create_task(bus.run())
    errors: list[str] = []
    try:
        assert await bus.wait_connected(10)
        await bus.kv_put("device-heartbeat", "dev-1", b"before")
        await asyncio.to_thread(cluster_js.stop)
        for node in cluster_js.nodes:  # each takes clients at once; JetStream comes later
            await asyncio.to_thread(node.start)
        restarted = time.monotonic()
        while True:
            try:
                await bus.kv_put("device-heartbeat", "dev-1", b"after", timeout=2)
                break
            except BusError as e:
                errors.append(type(e).__name__)
            assert time.monotonic() - restarted < 60, errors
            await asyncio.sleep(0.2)
    finally:
        await bus.close()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    print(f"errors while the cluster came back: {errors}")
    assert "BucketMissingError" not in errors, errors
