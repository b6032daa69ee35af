"""`harmony-fleet init --replicas N`: every item with N replicas; a change of N says what it did."""

from __future__ import annotations

import asyncio

import pytest

from harmony_core.settings import NatsSection
from harmony_fleet.cli import main as fleet
from harmony_fleet.provision import _kvs
from tests.natsserver import NatsCluster, NatsServer

# The contract's items (harmony_fleet.provision may hold more, e.g. operator-only buckets).
CONTRACT = {
    "KV device-info",
    "KV device-heartbeat",
    "KV agent-upgrade",
    "KV agent-upgrade-status",
    "object store agent-artifacts",
    "stream DEVICE_LOGS",
}


def _items(n: NatsSection) -> list[str]:
    """Every item `init` makes, in its order, as it names them."""
    return [
        *(f"KV {kv.name}" for kv in _kvs(n)),
        f"object store {n.artifacts_bucket}",
        f"stream {n.logs_stream}",
    ]


def _stream(item: str) -> str:
    """The JetStream stream behind an item ("KV x" is KV_x, "object store x" is OBJ_x)."""
    kind, _, name = item.rpartition(" ")
    return {"KV": f"KV_{name}", "object store": f"OBJ_{name}"}.get(kind, name)


ITEMS = _items(NatsSection())
assert set(ITEMS) >= CONTRACT
STREAMS = [_stream(i) for i in ITEMS]


def _init(
    servers: list[str], capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = fleet([*(a for s in servers for a in ("-s", s)), "init", *args])
    return rc, capsys.readouterr().out.splitlines()


def _replicas(servers: list[str]) -> dict[str, int]:
    import nats

    async def go() -> dict[str, int]:
        nc = await nats.connect(servers=servers)
        try:
            js = nc.jetstream()
            return {s: (await js.stream_info(s)).config.num_replicas or 1 for s in STREAMS}
        finally:
            await nc.close()

    return asyncio.run(go())


def test_replicas_on_a_cluster(cluster: NatsCluster, capsys: pytest.CaptureFixture[str]) -> None:
    urls = cluster.urls
    assert _init(urls, capsys, "--replicas", "3") == (
        0,
        [f"{i}: created (replicas 3)" for i in ITEMS],
    )
    assert set(_replicas(urls).values()) == {3}
    # Idempotent, with or without the flag: nothing claims to change.
    assert _init(urls, capsys, "--replicas", "3") == (0, [f"{i}: exists" for i in ITEMS])
    assert _init(urls, capsys) == (0, [f"{i}: exists" for i in ITEMS])
    # Down to R1 and back, in place, saying so.
    assert _init(urls, capsys, "--replicas", "1") == (
        0,
        [f"{i}: updated (replicas 3→1)" for i in ITEMS],
    )
    assert set(_replicas(urls).values()) == {1}
    assert _init(urls, capsys, "--replicas", "3") == (
        0,
        [f"{i}: updated (replicas 1→3)" for i in ITEMS],
    )
    # More replicas than servers: refused, saying why; nothing changed; exit 1.
    rc, out = _init(urls, capsys, "--replicas", "5")
    assert rc == 1
    for item, line in zip(ITEMS, out, strict=True):
        assert line.startswith(f"{item}: refused (cannot change replicas 3→5: "), line
        assert "fewer servers than replicas" in line, line
    assert set(_replicas(urls).values()) == {3}


def test_replicas_on_a_single_server_are_refused(
    nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out = _init([nats_server.url], capsys, "--replicas", "3")
    assert rc == 1
    for item, line in zip(ITEMS, out, strict=True):
        assert line.startswith(f"{item}: refused (cannot create with 3 replicas: "), line
        assert "run NATS as a cluster, or pass --replicas 1" in line, line
    assert _init([nats_server.url], capsys) == (0, [f"{i}: created" for i in ITEMS])
    rc, out = _init([nats_server.url], capsys, "--replicas", "3")
    assert rc == 1 and all("refused (cannot change replicas 1→3" in line for line in out), out


def test_replicas_must_be_1_to_5(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        fleet(["init", "--replicas", "0"])
    assert e.value.code == 2
    assert "replicas are 1 to 5" in capsys.readouterr().err
