"""The NATS side of the fleet bench: one server or a 3-node cluster, and what they cost.

Servers come from `tests.natsserver` (the same ones the tests run), each with its
monitoring port: CPU and memory come from `/varz` (as the issue asks) and, more
exactly, from `/proc/<pid>/stat` (CPU seconds over a window).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tests.natsserver import NatsCluster, NatsServer, free_port, wait_for

__all__ = ["Servers", "Usage"]

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class Usage:
    """What the servers used over a window: CPU (share of one core), RSS, /varz's view."""

    cpu_core: float  # from /proc: CPU seconds / wall seconds, all servers together
    varz_cpu: float  # /varz "cpu" (percent of one core), averaged over samples, summed
    rss: int  # VmRSS, all servers, at the end
    varz_mem: int  # /varz "mem", all servers, at the end
    connections: int
    slow_consumers: int


class Servers:
    """One nats-server -js (`size` 1) or a cluster of `size`, with a `jetstream` config block."""

    def __init__(self, root: Path, size: int, *, jetstream_conf: str = "") -> None:
        self.size = size
        conf = "max_connections: 100000\n"
        if size == 1:
            js = f"jetstream {{ {jetstream_conf} }}\n" if jetstream_conf else ""
            self.nodes = [NatsServer(root / "n1", conf=conf + js, monitor_port=free_port())]
            self.cluster: NatsCluster | None = None
        else:
            self.cluster = NatsCluster(root, size, jetstream_conf=jetstream_conf, conf=conf)
            self.nodes = self.cluster.nodes

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self) -> float:
        """Start them all; the wall time (time.time()) at which they took clients and had
        JetStream (for a cluster: a meta leader every node agrees on)."""
        if self.cluster is not None:
            self.cluster.start(timeout=120)
        else:
            self.nodes[0].start()
            wait_for(lambda: self._js_ready(self.nodes[0]), 60, "JetStream")
        return time.time()

    @staticmethod
    def _js_ready(n: NatsServer) -> bool:
        try:
            return "config" in n.jsz()
        except OSError:
            return False

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes if n.pid is not None]

    def cpu_s(self) -> float:
        return sum(_cpu_s(p) for p in self.pids())

    def usage(self, window_s: float, cpu_before: float, varz_cpu: list[float]) -> Usage:
        varz = [n.varz() for n in self.nodes if n.pid is not None]
        return Usage(
            cpu_core=(self.cpu_s() - cpu_before) / window_s,
            varz_cpu=sum(varz_cpu) / max(len(varz_cpu), 1),
            rss=sum(_rss(p) for p in self.pids()),
            varz_mem=sum(int(v["mem"]) for v in varz),
            connections=sum(int(v["connections"]) for v in varz),
            slow_consumers=sum(int(v.get("slow_consumers", 0)) for v in varz),
        )

    def varz_cpu(self) -> float:
        """/varz "cpu" of every server, summed (percent of one core)."""
        return sum(float(n.varz()["cpu"]) for n in self.nodes if n.pid is not None)

    def connections(self) -> int:
        total = 0
        for n in self.nodes:
            if n.pid is None:
                continue
            with contextlib.suppress(OSError):
                total += int(n.varz()["connections"])
        return total
