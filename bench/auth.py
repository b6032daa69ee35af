"""Device identity benchmark (ADR-023): the auth callout's decisions and what devices feel.

    python -m bench.auth [--devices 1000] [--revokes 20] [--out FILE]

Starts a fleet as tests/auth/fleet.py does (auth init, nats-server with the
include, `harmony-fleet init`, one real `harmony-fleet auth serve` process) and
measures:

1. decisions/s of the callout itself: `Callout.answer` in this process, 64 at a
   time as `serve` runs them, on authorization requests signed like the
   server's, for approved device keys, against the real registry (one fresh
   direct get of the key and one of the binding per decision, the signature
   checks, a user JWT signed).
2. N devices connecting at once through nats-server and the callout process
   (one process hosts every simulated device: each its own key, its own
   nats-py connection): time until all are connected, and each connect's
   latency (start → CONNECT accepted), p50 / p99. Devices the server refuses
   (the callout too slow for the server's auth timeout) retry, as the agent
   does, and count with their retries.
3. revoke → disconnected: for a sample of connected devices, from the start of
   the revoke (the registry write, then the system account's CONNZ and KICK,
   as `harmony-fleet revoke` does) to the device's connection seeing the
   disconnect; p50 / p99 / max, and that none got back in.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harmony_core import nkey
from harmony_core.bus import Bus, BusState, NkeyLogin
from harmony_core.contracts import dump_json, utcnow
from harmony_core.identity import LoginClaim
from harmony_core.permissions import inbox_prefix
from harmony_core.settings import NatsSection
from harmony_fleet.auth.callout import Callout
from harmony_fleet.auth.enroll import revoke_device
from harmony_fleet.auth.jwt import encode
from harmony_fleet.auth.kick import device_connections, kick
from harmony_fleet.auth.registry import REGISTRY_BUCKET, Binding, KeyRecord, binding_key, key_key
from harmony_fleet.auth.setup import load_authd
from tests.auth.fleet import AuthFleet
from tests.natsserver import nats_server_binary

_CONCURRENT_WRITES = 64


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


async def _enroll(bus: Bus, n: int) -> list[tuple[str, str]]:
    """n approved device keys written straight into the registry: (device_id, seed)."""
    now = utcnow()
    devices = [(f"bench-{i:05d}", nkey.new_seed()) for i in range(n)]
    sem = asyncio.Semaphore(_CONCURRENT_WRITES)

    async def one(dev: str, seed: str) -> None:
        pub = nkey.public_key(seed)
        rec = KeyRecord(
            public_key=pub,
            fingerprint=nkey.fingerprint(pub),
            device_id=dev,
            status="approved",
            created_at=now,
            updated_at=now,
        )
        b = Binding(device_id=dev, public_key=pub, updated_at=now)
        async with sem:
            await bus.kv_put(REGISTRY_BUCKET, key_key(pub), dump_json(rec))
            await bus.kv_put(REGISTRY_BUCKET, binding_key(dev), dump_json(b))

    async with asyncio.TaskGroup() as tg:
        for dev, seed in devices:
            tg.create_task(one(dev, seed))
    return devices


def _request(server_seed: str, dev: str, seed: str) -> bytes:
    """An authorization request as nats-server signs it, for a device with key `seed`."""
    nonce = os.urandom(11).hex()
    sig = nkey.encode_sig(nkey.sign(seed, nonce.encode()))
    claim = LoginClaim(device_id=dev).model_dump_json(exclude_none=True)
    body = {
        "aud": "nats-authorization-request",
        "sub": nkey.public_key(server_seed),
        "exp": int(time.time()) + 10,
        "nats": {
            "type": "authorization_request",
            "version": 2,
            "server_id": {"id": nkey.public_key(server_seed), "name": "bench"},
            "user_nkey": nkey.public_key(nkey.new_seed()),
            "client_info": {"host": "127.0.0.1", "nonce": nonce},
            "connect_opts": {"nkey": nkey.public_key(seed), "sig": sig, "auth_token": claim},
        },
    }
    return encode(body, server_seed).encode()


async def bench_decisions(fleet: AuthFleet, devices: list[tuple[str, str]]) -> dict[str, Any]:
    cfg = load_authd(fleet.dir / "authd.toml")
    cfg = cfg.model_copy(update={"nats": cfg.nats.model_copy(update={"servers": [fleet.url]})})
    seed = cfg.callout.issuer_seed_file.read_text().strip()
    server = nkey.new_seed("account")  # any key: the request names it as its server
    requests = [_request(server, dev, s) for dev, s in devices]
    bus = Bus(cfg.nats, name="bench-callout")
    await bus.connect_once()
    try:
        callout = Callout(cfg, bus, seed)
        sem = asyncio.Semaphore(cfg.callout.max_concurrent)

        async def one(req: bytes) -> None:
            async with sem:
                assert await callout.answer(req) is not None

        began = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for req in requests:
                tg.create_task(one(req))
        took = time.perf_counter() - began
        assert callout.stats.admitted == len(requests), callout.stats
    finally:
        await bus.close()
    return {"decisions": len(requests), "seconds": took, "per_s": len(requests) / took}


class _Device:
    """One simulated device: its own key, the agent's own connection code (login, backoff)."""

    def __init__(self, url: str, dev: str, seed: str) -> None:
        self.dev = dev
        self.attempts = 0
        self.began = 0.0
        self.connected_at: float | None = None
        self.disconnected_at: float | None = None
        claim = LoginClaim(device_id=dev).model_dump_json(exclude_none=True)

        def login() -> NkeyLogin:
            self.attempts += 1
            return NkeyLogin(seed=seed, token=lambda _nonce: claim)

        self.bus = Bus(
            NatsSection(servers=[url], reconnect_max_wait=2.0, connect_timeout=10.0),
            name=f"harmony-agent {dev}",
            login=login,
            inbox_prefix=inbox_prefix(dev),
            on_change=self._changed,
        )

    def _changed(self, st: BusState) -> None:
        now = time.monotonic()
        if st.state == "connected":
            if self.connected_at is None:
                self.connected_at = now
        elif self.connected_at is not None and self.disconnected_at is None:
            self.disconnected_at = now


async def bench_connects(
    fleet: AuthFleet, devices: list[tuple[str, str]], tg: asyncio.TaskGroup
) -> tuple[dict[str, Any], list[_Device]]:
    sims = [_Device(fleet.url, d, s) for d, s in devices]
    began = time.monotonic()
    for sim in sims:
        sim.began = began
        tg.create_task(sim.bus.run())
    deadline = began + 120
    while any(s.connected_at is None for s in sims) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    done = [s for s in sims if s.connected_at is not None]
    lat = [s.connected_at - began for s in done if s.connected_at is not None]
    wall = max(lat) if len(done) == len(sims) else float("inf")
    return (
        {
            "devices": len(devices),
            "all_connected_s": wall,
            "p50": _pct(lat, 50),
            "p99": _pct(lat, 99),
            "max": max(lat),
            "retried": sum(1 for s in sims if s.attempts > 1),
        },
        sims,
    )


async def bench_revoke(fleet: AuthFleet, sims: list[_Device], sample: int) -> dict[str, Any]:
    from harmony_fleet.auth.registry import Registry

    op = Bus(fleet.operator, name="bench-operator")
    sysbus = Bus(
        NatsSection(servers=[fleet.url], nkey_seed_file=fleet.dir / "system.nk"),
        name="bench-system",
    )
    await op.connect_once()
    await sysbus.connect_once()
    took: list[float] = []
    step = max(1, len(sims) // sample)
    chosen = sims[::step][:sample]
    try:
        for sim in chosen:
            t0 = time.monotonic()
            await revoke_device(Registry(op), sim.dev)
            for c in await device_connections(sysbus, sim.dev, account="DEVICES"):
                await kick(sysbus, c)
            deadline = t0 + 10
            while sim.disconnected_at is None and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            took.append((sim.disconnected_at or float("inf")) - t0)
        await asyncio.sleep(3)  # their reconnects (the agent's backoff) are refused: none back
        back = 0
        for sim in chosen:
            back += len(await device_connections(sysbus, sim.dev, account="DEVICES"))
    finally:
        await op.close()
        await sysbus.close()
    return {
        "n": len(took),
        "p50": _pct(took, 50),
        "p99": _pct(took, 99),
        "max": max(took),
        "back_in": back,
    }


class _Done(Exception):
    """Ends the devices' TaskGroup."""


def _machine() -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} x {cpu}, kernel {platform.release()}, Python {platform.python_version()}"
    )


async def _main(args: argparse.Namespace) -> str:
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp:
        fleet = AuthFleet(Path(tmp) / "fleet").start()
        try:
            op = Bus(fleet.operator, name="bench-enroll")
            await op.connect_once()
            try:
                devices = await _enroll(op, args.devices)
            finally:
                await op.close()
            load0 = os.getloadavg()
            decisions = await bench_decisions(fleet, devices)
            try:
                async with asyncio.TaskGroup() as tg:
                    connects, sims = await bench_connects(fleet, devices, tg)
                    revoke = await bench_revoke(fleet, sims, args.revokes)
                    raise _Done
            except* _Done:
                pass
            for sim in sims:
                await sim.bus.close()
            load1 = os.getloadavg()
            version = subprocess.run(
                [nats_server_binary(), "--version"], capture_output=True, text=True
            ).stdout.strip()
        finally:
            fleet.stop()

    rows = [
        (
            "callout decisions/s (in process, 64 at once, approved keys)",
            f"{decisions['per_s']:.0f}/s ({decisions['decisions']} in "
            f"{decisions['seconds']:.2f} s)",
            "≥ 1,000/s",
            "yes" if decisions["per_s"] >= 1000 else "**no**",
        ),
        (
            f"{connects['devices']} devices connecting at once: all connected",
            f"{connects['all_connected_s']:.2f} s",
            "≤ 10 s",
            "yes" if connects["all_connected_s"] <= 10 else "**no**",
        ),
        (
            "connect latency through the callout p50 / p99 / max",
            f"{connects['p50'] * 1000:.0f} / {connects['p99'] * 1000:.0f} / "
            f"{connects['max'] * 1000:.0f} ms ({connects['retried']} retried)",
            "-",
            "-",
        ),
        (
            "end-to-end decisions/s (connects / wall time)",
            f"{connects['devices'] / connects['all_connected_s']:.0f}/s",
            "-",
            "-",
        ),
        (
            f"revoke → disconnected ({revoke['n']} devices) p50 / p99 / max",
            f"{revoke['p50'] * 1000:.0f} / {revoke['p99'] * 1000:.0f} / "
            f"{revoke['max'] * 1000:.0f} ms, {revoke['back_in']} back in",
            "≤ 5 s p99, none back",
            "yes" if revoke["p99"] <= 5 and revoke["back_in"] == 0 else "**no**",
        ),
    ]
    out = [
        f"### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {_machine()}, {version}. `uptime` before: {uptime}; load during: "
        f"{load0[0]:.2f} → {load1[0]:.2f}.",
        "",
        "| measurement | result | target | met |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    import logging

    # A thousand connections say "connected"; the tables say what matters.
    logging.getLogger("harmony_core").setLevel(logging.ERROR)
    p = argparse.ArgumentParser(prog="python -m bench.auth", description=__doc__)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--revokes", type=int, default=20)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    text = asyncio.run(_main(args))
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
