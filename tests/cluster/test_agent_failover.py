"""A real agent through NATS cluster failovers: nothing lost, heartbeats back at once.

A 3-node cluster (R3 layout), a real `harmony-agent run` listing all three
servers, shipping a steady stream of journal lines from a real journald and
heartbeating every 2 s. Then, in turn: kill -9 the leader of DEVICE_LOGS and
restart it; kill -9 the leader of device-heartbeat's stream (writing an upgrade
request meanwhile) and restart it; a rolling restart of all three servers in
lame-duck mode. Afterwards every journal line is in the stream (by cursor,
against journalctl), heartbeats came back within one interval of each new
leader, DeviceInfo is current on the cluster, and the upgrade request was
handled (the agent's status for it is in agent-upgrade-status).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.health import read_health
from harmony_core.bus import Bus, KvEntry
from harmony_core.contracts import DeviceInfo, Heartbeat, UpgradeStatus, utcnow
from harmony_core.errors import BusError
from harmony_core.settings import NatsSection
from tests.agentproc import AgentProcess, run_bus
from tests.logs.journald import Journald, journal_cursors, send, unique
from tests.natsserver import NatsCluster, NatsServer, wait_for
from tests.upgrade.helpers import make_request, signed, write_pub

pytestmark = [pytest.mark.slow, pytest.mark.journald]

_INTERVAL_S = 2.0
# The heartbeat is jittered ±10 %; the server's clock is the same as ours (one machine).
_RESUME_BOUND_S = _INTERVAL_S * 1.1 + 0.5
_LINE_EVERY_S = 0.02
_BATCH_LINES = 50
_IN_FLIGHT = 4


def _live(cluster: NatsCluster) -> NatsSection:
    return NatsSection(servers=[n.url for n in cluster.up()])


def _kv(cluster: NatsCluster, bucket: str, key: str) -> KvEntry | None:
    """The key's entry; a read that meets an election (or a server going) is tried again."""

    async def get(bus: Bus) -> KvEntry | None:
        return await bus.kv_get(bucket, key)

    for attempt in range(5):
        try:
            entry: KvEntry | None = run_bus(_live(cluster), get)
            return entry
        except BusError:
            if attempt == 4:
                raise
            time.sleep(0.5)
    return None


def _stream_records(cluster: NatsCluster, subject: str) -> list[dict[str, Any]]:
    """Every record of every LogBatch on `subject`, in stream order (compressed or not)."""
    import nats

    async def read() -> list[dict[str, Any]]:
        nc = await nats.connect(servers=_live(cluster).servers)
        out: list[dict[str, Any]] = []
        try:
            js = nc.jetstream()
            sub = await js.subscribe(subject, stream="DEVICE_LOGS", ordered_consumer=True)
            while True:
                try:
                    msg = await sub.next_msg(timeout=2)
                except nats.errors.TimeoutError:
                    break
                data = msg.data
                if (msg.headers or {}).get("Content-Encoding"):
                    from harmony_core.logcodec import decode_batch

                    data = decode_batch(data, msg.headers)
                out.extend(json.loads(data)["records"])
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await nc.close()
        return out

    return asyncio.run(read())


@dataclass
class _Writer:
    """A steady stream of journal lines with one identifier (a thread), numbered."""

    ident: str
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sent += 1
            send(f"{self.ident} line {self.sent}", self.ident)
            time.sleep(_LINE_EVERY_S)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def _config(tmp: Path, cluster: NatsCluster, dev: str, ident: str, keys: Path) -> Path:
    cfg = tmp / "agent.toml"
    cfg.write_text(
        "\n".join(
            [
                "[agent]",
                f'device_id = "{dev}"',
                f'state_dir = "{tmp / "state"}"',
                f'health_file = "{tmp / "run" / "health.json"}"',
                "[labels]",
                'site = "lab"',
                "[nats]",
                "servers = [" + ", ".join(f'"{u}"' for u in cluster.urls) + "]",
                'reconnect_max_wait = "1s"',
                "[heartbeat]",
                f'interval = "{int(_INTERVAL_S)}s"',
                "[logs]",
                f'identifiers = ["{ident}"]',
                f"batch_max_lines = {_BATCH_LINES}",
                f"max_in_flight = {_IN_FLIGHT}",
                'ack_timeout = "2s"',
                "[upgrade]",
                f'trusted_keys_dir = "{keys}"',
            ]
        )
        + "\n"
    )
    return cfg


def _heartbeat(cluster: NatsCluster, dev: str) -> tuple[Heartbeat, datetime] | None:
    e = _kv(cluster, "device-heartbeat", dev)
    if e is None or e.created is None:
        return None
    return Heartbeat.model_validate_json(e.value), e.created


def _leader_since(cluster: NatsCluster, stream: str) -> datetime:
    c = cluster.stream_cluster(stream)
    assert c is not None and c.get("leader_since"), c
    return datetime.fromisoformat(str(c["leader_since"]).replace("Z", "+00:00"))


class _Beats:
    """Every heartbeat the cluster stored (seq -> server time), polled in a thread."""

    def __init__(self, cluster: NatsCluster, dev: str) -> None:
        self.cluster = cluster
        self.dev = dev
        self.seen: dict[int, datetime] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                hb = _heartbeat(self.cluster, self.dev)
            except Exception:  # a server going away under the poll: poll again
                hb = None
            if hb is not None:
                self.seen.setdefault(hb[0].seq, hb[1])
            time.sleep(0.1)

    def first_after(self, since: datetime) -> datetime | None:
        after = [t for t in self.seen.values() if t > since]
        return min(after) if after else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _resumed_after(beats: _Beats, cluster: NatsCluster, stream: str) -> float:
    """Seconds from `stream`'s new leader to the first heartbeat the server stored after it."""
    since = _leader_since(cluster, stream)
    wait_for(lambda: beats.first_after(since), 30, f"a heartbeat after {stream}'s new leader")
    first = beats.first_after(since)
    assert first is not None
    return (first - since).total_seconds()


def _kill_leader(cluster: NatsCluster, stream: str) -> tuple[NatsServer, str]:
    leader = cluster.wait_leader(stream)
    node = cluster.node(leader)
    node.kill()
    return node, cluster.wait_leader(stream, other_than=leader)


def _restart(cluster: NatsCluster, node: NatsServer) -> None:
    node.start()
    wait_for(cluster.meta_ready, 30, "the cluster's meta leader after a restart")
    for s in ("DEVICE_LOGS", "KV_device-heartbeat", "KV_device-info", "KV_agent-upgrade"):
        wait_for(lambda s=s: cluster.current(s), 30, f"every replica of {s} current")


def _has_line(cluster: NatsCluster, dev: str, message: str) -> bool:
    """Whether the stream holds `message` from `dev` (False while the stream elects a leader)."""
    try:
        records = _stream_records(cluster, f"logs.{dev}")
    except Exception:  # the reader's own consumer caught in an election: look again
        return False
    return any(r.get("message") == message for r in records)


def test_agent_through_leader_kills_and_a_rolling_restart(
    journald: Journald, cluster_js: NatsCluster, tmp_path: Path
) -> None:
    cluster = cluster_js
    dev, ident = unique("dev"), unique("failover")
    trusted = Ed25519PrivateKey.generate()
    keys = tmp_path / "keys"
    write_pub(trusted, keys)
    agent = AgentProcess(_config(tmp_path, cluster, dev, ident, keys))
    writer = _Writer(ident)
    beats = _Beats(cluster, dev)
    try:
        agent.wait_notify("READY", "1", timeout=15)
        wait_for(lambda: _heartbeat(cluster, dev) is not None, 20, "the first heartbeat")
        first_info = _kv(cluster, "device-info", dev)
        assert first_info is not None
        # Lines from here on must all arrive: the reader is past its start by then.
        send(f"{ident} hello", ident)
        wait_for(
            lambda: _has_line(cluster, dev, f"{ident} hello"),
            20,
            "the first line shipped",
        )
        writer.start()
        time.sleep(2)

        # 1. kill -9 the leader of DEVICE_LOGS; lines go on to the new one.
        node, _ = _kill_leader(cluster, "DEVICE_LOGS")
        mark = writer.sent + 25
        wait_for(
            lambda: _has_line(cluster, dev, f"{ident} line {mark}"),
            30,
            "lines shipped to the new leader",
        )
        _restart(cluster, node)

        # 2. kill -9 the leader of device-heartbeat's stream; an upgrade request meanwhile.
        leader = cluster.wait_leader("KV_device-heartbeat")
        node = cluster.node(leader)
        node.kill()
        now = utcnow()
        req = make_request(
            request_id=unique("req"),
            device_id=dev,
            issued_at=now - timedelta(seconds=5),
            expires_at=now + timedelta(hours=1),
        )
        run_bus(
            _live(cluster),
            lambda bus: bus.kv_put("agent-upgrade", dev, signed(req, trusted), timeout=30),
        )
        cluster.wait_leader("KV_device-heartbeat", other_than=leader)
        resumed = _resumed_after(beats, cluster, "KV_device-heartbeat")
        print(f"heartbeats resumed {resumed:.2f}s after KV_device-heartbeat's new leader")
        assert resumed <= _RESUME_BOUND_S, f"heartbeats resumed {resumed:.2f}s after the new leader"
        _restart(cluster, node)

        def handled() -> UpgradeStatus | None:
            e = _kv(cluster, "agent-upgrade-status", dev)
            st = UpgradeStatus.model_validate_json(e.value) if e is not None else None
            return st if st is not None and st.request_id == req.request_id else None

        wait_for(handled, 60, "the agent's status for the request written during the failover")

        # 3. A rolling restart in lame-duck mode: each server hands over, exits, comes back.
        for node in list(cluster.nodes):
            cluster.lame_duck(node)
            _restart(cluster, node)
        seq_now = (_heartbeat(cluster, dev) or (None, None))[0]
        assert seq_now is not None
        wait_for(
            lambda: (hb := _heartbeat(cluster, dev)) is not None and hb[0].seq > seq_now.seq,
            _RESUME_BOUND_S * 2,
            "heartbeats after the rolling restart",
        )
        writer.stop()
        send(f"{ident} bye", ident)
        wait_for(
            lambda: _has_line(cluster, dev, f"{ident} bye"),
            30,
            "the last line shipped",
        )

        # Every journal line of ours is in the stream; duplicates only from the unacked window.
        in_journal = journal_cursors("-t", ident)
        records = _stream_records(cluster, f"logs.{dev}")
        shipped = Counter(r["cursor"] for r in records)
        missing = [c for c in in_journal if c not in shipped]
        assert not missing, f"{len(missing)} of {len(in_journal)} journal lines not in the stream"
        dupes = sum(n - 1 for n in shipped.values())
        print(
            f"{len(in_journal)} journal lines, {len(records)} records shipped, {dupes} duplicates"
        )
        assert dupes <= _BATCH_LINES * _IN_FLIGHT, f"{dupes} duplicates"
        assert len(in_journal) >= writer.sent + 2

        # DeviceInfo: current (this agent run, re-announced after its reconnects), on every node.
        info = _kv(cluster, "device-info", dev)
        assert info is not None and info.revision > first_info.revision
        di = DeviceInfo.model_validate_json(info.value)
        assert di.labels["site"] == "lab"
        assert di.started_at == DeviceInfo.model_validate_json(first_info.value).started_at
        for n in cluster.nodes:
            one = run_bus(n.url, lambda bus: bus.kv_get("device-info", dev))
            assert one is not None and one.revision == info.revision and one.value == info.value
        health = read_health(tmp_path / "run" / "health.json")
        assert health is not None and health.nats.state == "connected"
        assert agent.proc.poll() is None
    finally:
        beats.stop()
        writer.stop()
        agent.stop()
