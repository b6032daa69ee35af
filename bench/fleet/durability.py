"""What `sync_interval: always` costs the log stream: `python -m bench.fleet.durability`.

JetStream acknowledges a write once it is in the stream's file (and, replicated,
on a quorum) — in the page cache, flushed to disk every `sync_interval` (2 min
by default). A majority of servers losing power within that window can lose
acknowledged writes (Jepsen, NATS 2.12.1). `sync_interval: always` fsyncs every
write before the ack. This measures the price on the agent's log path, in one
run, alternating the two settings on fresh servers:

- backlog: one agent's `Shipper` publishing batches of 1,000 journal lines
  (the default `batch_max_lines`), 16 in flight, as after a reconnect: lines/s;
- trickle: batches of 5 lines, one at a time, as a quiet device sends them:
  the publish → ack latency, p50 and p99.

Against one server and, with `--cluster`, a 3-node cluster with the R3 layout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent.config import parse_config
from agent.logs.shipper import Shipper, encoder_of
from bench.fleet.device import log_batch
from bench.fleet.servers import Servers
from harmony_core.bus import Bus
from harmony_core.settings import NatsSection
from harmony_fleet.provision import ensure_layout

_BACKLOG_BATCHES = 200
_BACKLOG_LINES = 1000
_TRICKLE = 300


async def _measure(servers: list[str]) -> dict[str, float]:
    cfg = parse_config("[nats]\nservers = [" + ", ".join(json.dumps(s) for s in servers) + "]\n")
    encode = encoder_of(cfg.logs.compression)
    bus = Bus(cfg.nats, name="bench-durability")
    await bus.connect_once()
    try:
        await ensure_layout(bus, NatsSection(servers=servers), replicas=len(servers))
        # backlog: the shipper as the agent runs it, every batch acknowledged
        done = asyncio.Event()
        shipper = Shipper(
            bus,
            "logs.bench",
            "DEVICE_LOGS",
            max_in_flight=16,
            ack_timeout=30.0,
            slots=threading.Semaphore(1 << 20),
            commit=lambda _: None,
            encode=encode,
        )
        batches = [log_batch("bench", i, _BACKLOG_LINES) for i in range(_BACKLOG_BATCHES)]
        task = asyncio.create_task(shipper.run())
        t0 = time.perf_counter()
        for b in batches:
            shipper.put(b)

        async def drained() -> None:
            while shipper.shipped < _BACKLOG_BATCHES * _BACKLOG_LINES:
                await asyncio.sleep(0.005)
            done.set()

        await asyncio.wait_for(drained(), 300)
        backlog_s = time.perf_counter() - t0
        task.cancel()
        # trickle: one small batch at a time, publish to ack
        lat: list[float] = []
        for i in range(_TRICKLE):
            b = log_batch("quiet", 10_000 + i, 5)
            assert b.payload is not None
            t = time.perf_counter()
            payload, headers = encode(b.payload)  # as the shipper sends it
            await bus.publish(
                "logs.quiet",
                payload,
                stream="DEVICE_LOGS",
                msg_id=b.msg_id,
                timeout=10,
                headers=headers,
            )
            lat.append(time.perf_counter() - t)
        lat.sort()
        wire = sum(len(encode(b.payload or b"")[0]) for b in batches)
    finally:
        await bus.close()
    return {
        "backlog_lines_per_s": round(_BACKLOG_BATCHES * _BACKLOG_LINES / backlog_s),
        "backlog_mb_per_s": round(wire / backlog_s / 2**20, 2),
        "trickle_p50_ms": round(1000 * lat[len(lat) // 2], 2),
        "trickle_p99_ms": round(1000 * lat[int(len(lat) * 0.99)], 2),
    }


def _one(size: int, sync: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-durability-") as d:
        servers = Servers(Path(d), size, jetstream_conf="sync_interval: always" if sync else "")
        servers.start()
        try:
            return asyncio.run(_measure(servers.urls))
        finally:
            servers.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet.durability")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cluster", action="store_true", help="also a 3-node cluster, R3")
    args = p.parse_args(argv)
    sizes = [1, 3] if args.cluster else [1]
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for size in sizes:
            for sync in ("", "always"):  # alternate: load drifts on a shared machine
                name = f"{'R3 cluster' if size == 3 else 'one server'}, sync_interval " + (
                    "always" if sync else "default (2m)"
                )
                runs.setdefault(name, []).append(_one(size, sync))
                print(name, runs[name][-1], file=sys.stderr, flush=True)
    print("| setup | backlog lines/s | backlog MB/s | 5-line batch ack p50 / p99 |")
    print("|---|---:|---:|---:|")
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        out[name] = {"median": med, "runs": rs}
        print(
            f"| {name} | {med['backlog_lines_per_s']:,.0f} | {med['backlog_mb_per_s']} | "
            f"{med['trickle_p50_ms']} / {med['trickle_p99_ms']} ms |"
        )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
