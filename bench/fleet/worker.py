"""A process of the fleet simulator: `--count` simulated devices in one event loop.

Started by `python -m bench.fleet` (never by hand); answers one JSON line on
stdout per command line it reads on stdin:

- `status`: how many devices are connected, and ready (connected, DeviceInfo claimed);
- `window`: heartbeat put latencies since the last `window`, this process's CPU
  seconds and the wall time since then, acks, log lines shipped;
- `ready-since T`: per device, its first connect and first acknowledged heartbeat
  after wall time T (the parent's restart), as counts and the latest of each;
- `quit`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import sys
import time
from collections import Counter
from typing import Any

from agent.config import Config, parse_config
from agent.deviceinfo import collect_device_info
from agent.logs.shipper import encoder_of
from bench.fleet.device import SimDevice
from harmony_core.contracts import Load, utcnow

__all__ = ["main"]


class _Events(logging.Handler):
    """Counts the agent's log events (heartbeat-failed, nats-reconnected, ...); prints none."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[str(getattr(record, "event", record.levelname.lower()))] += 1


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit (one socket per device)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _share_load_readings() -> None:
    """One /proc reading of the machine's load per second for every device of this process.

    Each heartbeat reads CPU, memory and disk use (`agent.heartbeat._load`); thousands
    of simulated devices on one machine would all read the same numbers, 1,000 times
    a second, and the simulator would measure /proc. Same readings, read once a second.
    """
    import agent.heartbeat as hb

    read = hb._load
    last: list[tuple[float, Load]] = []

    def shared() -> Load:
        now = time.monotonic()
        if not last or now - last[0][0] > 1.0:
            last[:] = [(now, read())]
        return last[0][1]

    hb._load = shared


def _config(servers: list[str], interval: str, site_of: str) -> Config:
    text = "\n".join(
        [
            "[labels]",
            f'site = "{site_of}"',
            "[nats]",
            "servers = [" + ", ".join(json.dumps(s) for s in servers) + "]",
            "[heartbeat]",
            f'interval = "{interval}"',
        ]
    )
    return parse_config(text + "\n")


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class _Worker:
    def __init__(self, args: argparse.Namespace, events: _Events) -> None:
        self.args = args
        self.events = events
        self.devices: list[SimDevice] = []
        self._window_cpu = _cpu_s()
        self._window_wall = time.time()
        self._acks_taken = 0
        self._lags: list[float] = []

    def build(self) -> None:
        a = self.args
        configs = {
            s: _config(a.server, a.interval, f"s{s}") for s in range(10)
        }  # one per site label
        template = collect_device_info(configs[0], "sim-template", "0" * 32, utcnow())
        encode = encoder_of(configs[0].logs.compression)
        for i in range(a.first, a.first + a.count):
            self.devices.append(
                SimDevice(
                    configs[i % 10],
                    f"sim-{i:05d}",
                    template,
                    log_every_s=a.log_every,
                    log_lines=a.log_lines,
                    encode=encode,
                    watches=a.watches,
                )
            )

    async def run(self) -> None:
        """Start the devices (a ramp, not a storm), answer commands until `quit`, then exit.

        At `quit` the process ends at once: the parent stops the servers anyway, and
        closing thousands of connections one by one would only time the simulator.
        """
        async with asyncio.TaskGroup() as tg:
            commands = tg.create_task(self._commands())
            tg.create_task(self._lag())
            for d in self.devices:
                tg.create_task(d.run())
                await asyncio.sleep(1.0 / self.args.rate)
            await commands
            sys.stdout.flush()
            os._exit(0)

    async def _lag(self) -> None:
        """How late this event loop runs a 100 ms timer: the simulator's own share of latency."""
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.1)
            self._lags.append(loop.time() - t - 0.1)

    async def _commands(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or line.strip() == "quit":
                return
            cmd, _, arg = line.strip().partition(" ")
            reply: dict[str, Any]
            if cmd == "status":
                reply = self._status()
            elif cmd == "window":
                reply = self._window()
            elif cmd == "ready-since":
                reply = self._ready_since(float(arg))
            else:
                reply = {"error": f"unknown command {cmd!r}"}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()

    def _status(self) -> dict[str, Any]:
        return {
            "devices": len(self.devices),
            "started": sum(1 for d in self.devices if d.metrics.connected_at),
            "connected": sum(1 for d in self.devices if d.metrics.connected),
            "ready": sum(1 for d in self.devices if d.ready and d.metrics.acks),
        }

    def _window(self) -> dict[str, Any]:
        lat: list[float] = []
        acks = 0
        for d in self.devices:
            lat += d.metrics.put_latencies
            d.metrics.put_latencies.clear()
            acks += len(d.metrics.acks)
        cpu, wall = _cpu_s(), time.time()
        out = {
            "latencies_ms": [round(x * 1000, 2) for x in lat],
            "cpu_s": cpu - self._window_cpu,
            "wall_s": wall - self._window_wall,
            "acks": acks - self._acks_taken,
            "lines_shipped": sum(d.shipper.shipped for d in self.devices),
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "loop_lag_ms": [round(x * 1000, 1) for x in self._lags],
            "events": dict(self.events.counts),
        }
        self._window_cpu, self._window_wall, self._acks_taken = cpu, wall, acks
        self._lags.clear()
        return out

    def _ready_since(self, t: float) -> dict[str, Any]:
        conn = [
            min((c for c in d.metrics.connected_at if c >= t), default=None) for d in self.devices
        ]
        ack = [min((c for c in d.metrics.acks if c >= t), default=None) for d in self.devices]
        ready = [
            max(c, a) if c is not None and a is not None and d.metrics.connected else None
            for c, a, d in zip(conn, ack, self.devices, strict=True)
        ]
        got_c = [c for c in conn if c is not None]
        got_r = [r for r in ready if r is not None]
        return {
            "devices": len(self.devices),
            "connected": len(got_c),
            "ready": len(got_r),
            "last_connected": max(got_c, default=None),
            "last_ready": max(got_r, default=None),
            "connected_at": sorted(round(c - t, 3) for c in got_c),
            "events": dict(self.events.counts),
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.fleet.worker")
    p.add_argument("--server", action="append", required=True)
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--interval", default="15s")
    p.add_argument("--log-every", type=float, default=60.0)
    p.add_argument("--log-lines", type=int, default=5)
    p.add_argument("--rate", type=float, default=250.0, help="devices started per second")
    p.add_argument("--watches", action="store_true", help="the upgrade service's two watches")
    args = p.parse_args(argv)
    raise_nofile()
    _share_load_readings()
    events = _Events()
    root = logging.getLogger()
    root.handlers[:] = [events]
    root.setLevel(logging.INFO)
    w = _Worker(args, events)
    w.build()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(w.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
