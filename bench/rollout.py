"""A 1,000-device rollout against fake devices; prints a markdown table.

    python -m bench.rollout [--devices 1000] [--bake 5s] [--waves 1%,10%,50%,100%] [--out FILE]

It starts its own nats-server -js, creates the layout, publishes a release
signed with a fresh key, and runs N fake devices (tests/fleet/fakefleet.py: each
answers its request in KV as the agent does, in 7 status writes, and heartbeats
every 30 s) in this process. `rollout create` runs as the CLI; the controller
(`rollout run`'s `drive`) runs in a thread of its own with its own connection,
so its CPU is that thread's (`time.thread_time`) and every bus call it makes is
counted. Measured:

- controller CPU, in total and per device;
- the controller's KV operations per device: writes (requests, the rollout
  record), reads, and the entries its watches received;
- per wave, wall time beyond the bake time: from the wave's start to its end,
  less the bake; this includes the fake devices' own answer (7 KV writes each);
- the size of the rollout record.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harmony_core.bus import Bus, KvEntry
from harmony_core.contracts import Rollout, dump_json
from harmony_core.durations import parse_duration
from harmony_core.envelope import keyid_of
from harmony_core.settings import NatsSection
from harmony_fleet.keys import private_pem
from harmony_fleet.provision import ROLLOUTS_BUCKET, ensure_layout
from harmony_fleet.releases import publish_release
from harmony_fleet.rollout.controller import drive
from tests.fleet.fakefleet import FakeDevice, FakeFleet
from tests.natsserver import NatsServer
from tests.upgrade.helpers import build_deb


class _Counting(Bus):
    """A bus that counts what the controller asks of NATS."""

    def __init__(self, n: NatsSection) -> None:
        super().__init__(n, name="bench-rollout-controller")
        self.calls: collections.Counter[str] = collections.Counter()

    async def kv_get(self, bucket: str, key: str) -> KvEntry | None:
        self.calls["read"] += 1
        return await super().kv_get(bucket, key)

    async def kv_put(self, bucket: str, key: str, value: bytes, **kw: Any) -> int:
        self.calls["write " + ("record" if bucket == ROLLOUTS_BUCKET else "request")] += 1
        return await super().kv_put(bucket, key, value, **kw)

    async def kv_update(
        self, bucket: str, key: str, value: bytes, last: int | None, **kw: Any
    ) -> int:
        self.calls["write " + ("record" if bucket == ROLLOUTS_BUCKET else "request")] += 1
        return await super().kv_update(bucket, key, value, last, **kw)

    async def kv_watch(
        self, bucket: str, key: str = ">", **kw: Any
    ) -> AsyncIterator[KvEntry | None]:
        self.calls["watch"] += 1
        async for e in super().kv_watch(bucket, key, **kw):
            if e is not None:
                self.calls["watched entry"] += 1
            yield e


def _controller(
    url: str, key: Ed25519PrivateKey, done: Callable[[int, float, collections.Counter[str]], None]
) -> None:
    """`rollout run` in this thread: its own loop, its own connection; its CPU is ours."""

    async def go() -> None:
        bus = _Counting(NatsSection(servers=[url]))
        await bus.connect_once()
        try:
            cpu0 = time.thread_time()
            with open(os.devnull, "w") as quiet:
                rc = await drive(bus, bus._cfg, "bench", key,
                                 trusted={keyid_of(key.public_key()): key.public_key()},
                                 out=quiet)  # fmt: skip
            done(rc, time.thread_time() - cpu0, bus.calls)
        finally:
            await bus.close()

    asyncio.run(go())


def _machine() -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} x {cpu}, kernel {platform.release()}, "
        f"Python {platform.python_version()}"
    )


async def _bench(args: argparse.Namespace, work: Path, url: str) -> tuple[str, list[str]]:
    key = Ed25519PrivateKey.generate()
    key_path = work / "ops.key"
    key_path.write_bytes(private_pem(key))
    bus = Bus(NatsSection(servers=[url]), name="bench-rollout-fleet")
    await bus.connect_once()
    try:
        n = NatsSection(servers=[url])
        await ensure_layout(bus, n)
        deb, _, _ = build_deb(work, "0.2.0")
        await publish_release(bus, n, deb, key)
        devices = [
            FakeDevice(f"dev-{i:05d}", labels={"site": "bench"}) for i in range(args.devices)
        ]
        fleet = FakeFleet(bus, devices, {keyid_of(key.public_key()): key.public_key()},
                          interval_s=30.0, step_s=0.0)  # fmt: skip
        await fleet.start()
        create = subprocess.run(
            [sys.executable, "-m", "harmony_fleet.cli", "-s", url, "rollout", "create", "bench",
             "-l", "site=bench", "--version", "0.2.0", "--key", str(key_path), "--waves",
             args.waves, "--bake", args.bake, "--deadline", "10m"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if create.returncode != 0:
            raise RuntimeError(create.stderr)
        result: dict[str, Any] = {}

        def done(rc: int, cpu: float, calls: collections.Counter[str]) -> None:
            result.update(rc=rc, cpu=cpu, calls=calls)

        answering = asyncio.create_task(fleet.run())
        load0 = os.getloadavg()[0]
        t0 = time.monotonic()
        thread = threading.Thread(target=_controller, args=(url, key, done))
        thread.start()
        await asyncio.to_thread(thread.join)
        wall = time.monotonic() - t0
        load1 = os.getloadavg()[0]
        while not answering.done():
            answering.cancel()
            await asyncio.wait([answering], timeout=0.2)
        e = await bus.kv_get(ROLLOUTS_BUCKET, "bench")
        assert e is not None
        r = Rollout.model_validate_json(e.value)
    finally:
        await bus.close()
    if result.get("rc") != 0:
        raise RuntimeError(f"the rollout did not complete: {r.state} {r.reason}")
    count = args.devices
    calls: collections.Counter[str] = result["calls"]
    bake = parse_duration(args.bake)
    rows = [
        f"| devices, waves | {count}, {' / '.join(str(len(w.devices)) for w in r.waves)} |",
        f"| rollout wall time (bake {args.bake} per wave) | {wall:.1f} s |",
        f"| controller CPU | {result['cpu']:.2f} s "
        f"({result['cpu'] / count * 1000:.2f} ms per device) |",
        f"| KV writes per device (requests + rollout record) | "
        f"{(calls['write request'] + calls['write record']) / count:.3f} "
        f"({calls['write request']} + {calls['write record']}) |",
        f"| KV reads per device | {calls['read'] / count:.3f} ({calls['read']}) |",
        f"| watch entries received per device (4 watches) | "
        f"{calls['watched entry'] / count:.1f} |",
    ]
    for i, w in enumerate(r.waves):
        assert w.started_at is not None and w.ended_at is not None
        beyond = (w.ended_at - w.started_at).total_seconds() - bake
        rows.append(f"| wave {i + 1} ({len(w.devices)} devices): wall time beyond the bake | "
                    f"{beyond:.2f} s |")  # fmt: skip
    size = len(dump_json(r))
    rows.append(
        f"| rollout record | {size / 1024:.0f} KiB ({size / count:.0f} bytes per device) |"
    )
    rows.append(f"| fake fleet KV writes (statuses, heartbeats) | {fleet.kv_writes} |")
    return f"load average {load0:.2f} → {load1:.2f} during the run", rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--bake", default="5s")
    p.add_argument("--waves", default="1%,10%,50%,100%")
    p.add_argument("--out", type=Path, help="also write the table here")
    args = p.parse_args(argv)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="harmony-bench-rollout-"))
    srv = NatsServer(work / "nats").start()
    try:
        load, rows = asyncio.run(_bench(args, work, srv.url))
        version = subprocess.run([srv_binary(), "--version"], capture_output=True,
                                 text=True).stdout.strip()  # fmt: skip
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    table = "\n".join([
        f"Machine: {_machine()}, {version}. `uptime` before: {uptime}; {load}.",
        "",
        "| measurement | result |",
        "|---|---|",
        *rows,
    ])  # fmt: skip
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


def srv_binary() -> str:
    from tests.natsserver import nats_server_binary

    return nats_server_binary()


if __name__ == "__main__":
    sys.exit(main())
