"""Core agent benchmark against a real nats-server -js; prints a markdown table.

    python -m bench.agent [--runs 10] [--idle-seconds 60] [--hb-seconds 5] [--out FILE]

What it measures, and how:

1. READY: wall time from just before fork/exec of `harmony-agent -c CFG run`
   to the arrival of READY=1 on a NOTIFY_SOCKET datagram socket this script
   owns; median (and max) of N runs. Peer: the same wall time for
   `python3 -c 'import nats, pydantic, psutil'` to start and exit.
2. Idle: once the agent's health file shows a JetStream-acknowledged
   heartbeat and a short settle, utime+stime from /proc/<pid>/stat over the
   window (60 s) → % of one core; VmRSS (largest sample) and VmHWM from
   /proc/<pid>/status. At a 15 s and a 1 s heartbeat, with `[logs] enabled`
   true and false (`[upgrade]` on, as shipped). Peers: a Python that imported
   nats + pydantic + psutil and waits, and the idle nats-server itself.
3. Heartbeats/s: one process, one connection, the real send path
   (`HeartbeatService.send`: build the Heartbeat with fresh psutil load, JSON,
   KV put, wait for JetStream's ack) in a loop, each send awaited like the
   daemon does. The agent itself cannot be driven faster than its 0.5 s minimum
   interval, so the loop is the honest ceiling. Peers: the same loop with a
   fixed payload (`Bus.kv_put` alone: the NATS round trip) and `build()` alone
   (CPU cost of one heartbeat without I/O).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.config import Config, NatsSection
from agent.deviceinfo import read_boot_id
from agent.health import read_health
from agent.heartbeat import HeartbeatService
from agent.runtime import RuntimeState
from harmony_core.bus import Bus
from harmony_core.contracts import utcnow
from harmony_fleet.provision import ensure_layout
from tests.natsserver import NatsServer, wait_for

__all__ = ["main"]

TARGET_READY_S = 0.5
TARGET_RSS_MB = 40.0
TARGET_CPU_PCT = 0.2
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_SETTLE_S = 3.0


# --- /proc readers ------------------------------------------------------------


def proc_status_kb(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/status (VmRSS, VmHWM, RssAnon, RssFile, ...)."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if rest.strip().endswith(" kB"):
                fields[key] = int(rest.split()[0])
    return fields


def proc_mem_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of `pid` in kB."""
    st = proc_status_kb(pid)
    return st["VmRSS"], st["VmHWM"]


def proc_cpu_s(pid: int) -> float:
    """utime + stime of `pid` in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name may hold spaces: the fields start after the last ')'.
    rest = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(rest[11]), int(rest[12])
    return (utime + stime) / _CLK_TCK


# --- an agent process with a NOTIFY_SOCKET -------------------------------------


def _agent_cmd(cfg: Path) -> list[str]:
    # `-m` runs the `agent` package of the current directory: a working tree can be measured.
    return [sys.executable, "-m", "agent.cli", "-c", str(cfg), "run"]


@dataclass
class _Agent:
    proc: subprocess.Popen[bytes]
    ready_s: float


def _drain(sock: socket.socket, stop: threading.Event) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return


@contextmanager
def agent_running(cfg: Path, timeout: float = 15.0) -> Iterator[_Agent]:
    """Start the agent, wait for READY=1 (timed from just before exec), stop it after."""
    sock_path = cfg.parent / f"notify-{time.monotonic_ns()}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path)}
    env.pop("JOURNAL_STREAM", None)
    env.pop("WATCHDOG_USEC", None)
    err = open(cfg.parent / "agent.stderr", "ab")  # noqa: SIM115 - closed in finally
    stop = threading.Event()
    drain: threading.Thread | None = None
    t0 = time.monotonic()
    proc = subprocess.Popen(_agent_cmd(cfg), stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        deadline = t0 + timeout
        ready_s: float | None = None
        while ready_s is None:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise RuntimeError(f"no READY=1 from the agent (see {cfg.parent}/agent.stderr)")
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if b"READY=1" in data.split(b"\n"):
                ready_s = time.monotonic() - t0
        # Keep reading like systemd does: a full datagram queue (net.unix.max_dgram_qlen,
        # 10 by default) would block the agent's sd_notify and freeze its event loop.
        drain = threading.Thread(target=_drain, args=(sock, stop), daemon=True)
        drain.start()
        yield _Agent(proc, ready_s)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        stop.set()
        if drain is not None:
            drain.join(2)
        err.close()
        sock.close()
        sock_path.unlink(missing_ok=True)


def write_bench_config(
    d: Path, url: str, *, interval: str, logs: bool, upgrade: bool = True
) -> Path:
    """A config as shipped except for paths, the server and the switches benchmarked."""
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "agent.toml"
    cfg.write_text(
        "\n".join(
            [
                "[agent]",
                'device_id = "bench-dev"',
                f'state_dir = "{d / "state"}"',
                f'health_file = "{d / "run" / "health.json"}"',
                "[nats]",
                f'servers = ["{url}"]',
                "[heartbeat]",
                f'interval = "{interval}"',
                "[logs]",
                f"enabled = {str(logs).lower()}",
                "[upgrade]",
                f"enabled = {str(upgrade).lower()}",
                f'trusted_keys_dir = "{d / "keys"}"',
                "",
            ]
        )
    )
    (d / "keys").mkdir(exist_ok=True)
    return cfg


# --- the measurements ----------------------------------------------------------


def bench_ready(url: str, work: Path, runs: int, *, logs: bool) -> list[float]:
    out: list[float] = []
    for i in range(runs):
        cfg = write_bench_config(work / f"ready-{logs}-{i}", url, interval="15s", logs=logs)
        with agent_running(cfg) as a:
            out.append(a.ready_s)
    return out


@dataclass(frozen=True)
class Idle:
    rss_mb: float
    hwm_mb: float
    anon_mb: float
    file_mb: float
    cpu_pct: float
    server_cpu_pct: float
    heartbeats: int
    log_lines: int | None
    logs_state: str | None


def _health_counts(path: Path) -> tuple[int, int | None, str | None]:
    """(last acknowledged heartbeat seq, journal lines shipped, logs state) from the health file."""
    h = read_health(path)
    if h is None:
        return 0, None, None
    if h.logs is None:
        return h.last_heartbeat_seq or 0, None, None
    return h.last_heartbeat_seq or 0, h.logs.shipped, h.logs.state


def bench_idle(srv: NatsServer, work: Path, *, interval: str, logs: bool, seconds: float) -> Idle:
    d = work / f"idle-{interval}-{logs}"
    cfg = write_bench_config(d, srv.url, interval=interval, logs=logs)
    assert srv.proc is not None
    with agent_running(cfg) as a:
        pid = a.proc.pid

        def acked() -> bool:
            h = read_health(d / "run" / "health.json")
            return h is not None and h.last_heartbeat_ack_at is not None

        wait_for(acked, 30, "the first acknowledged heartbeat")
        time.sleep(_SETTLE_S)  # let start-up work (DeviceInfo, watches, first batch) finish
        hb0, lines0, _ = _health_counts(d / "run" / "health.json")
        cpu0, srv0, t0 = proc_cpu_s(pid), proc_cpu_s(srv.proc.pid), time.monotonic()
        rss = 0
        end = t0 + seconds
        while (now := time.monotonic()) < end:
            rss = max(rss, proc_mem_kb(pid)[0])
            time.sleep(min(1.0, end - now))
        cpu1, srv1, t1 = proc_cpu_s(pid), proc_cpu_s(srv.proc.pid), time.monotonic()
        st = proc_status_kb(pid)
        hb1, lines1, logs_state = _health_counts(d / "run" / "health.json")
        if a.proc.poll() is not None:
            raise RuntimeError("the agent died during the idle window")
    span = t1 - t0
    return Idle(
        rss_mb=max(rss, st["VmRSS"]) / 1024,
        hwm_mb=st["VmHWM"] / 1024,
        anon_mb=st["RssAnon"] / 1024,
        file_mb=st["RssFile"] / 1024,
        heartbeats=hb1 - hb0,
        log_lines=None if lines0 is None or lines1 is None else lines1 - lines0,
        logs_state=logs_state,
        cpu_pct=100 * (cpu1 - cpu0) / span,
        server_cpu_pct=100 * (srv1 - srv0) / span,
    )


def python_import_peer(runs: int) -> tuple[float, float]:
    """(median start-to-exit seconds, RSS MB while waiting) of a Python that imports the deps."""
    code = "import nats, pydantic, psutil"
    times: list[float] = []
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.monotonic() - t0)
    p = subprocess.Popen(
        [sys.executable, "-c", code + "; import sys; print(1, flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert p.stdout is not None
        p.stdout.readline()
        rss_kb = proc_mem_kb(p.pid)[0]
    finally:
        p.kill()
        p.wait()
    return statistics.median(times), rss_kb / 1024


@dataclass(frozen=True)
class Rates:
    send_per_s: float
    put_per_s: float
    build_per_s: float
    payload_bytes: int


async def _rates(url: str, seconds: float) -> Rates:
    from harmony_core.contracts import dump_json

    cfg = Config.model_validate({"nats": {"servers": [url]}, "agent": {"device_id": "bench-hb"}})
    bus = Bus(cfg.nats)
    await bus.connect_once()
    try:
        state = RuntimeState("bench-hb", "bench-machine", utcnow())
        state.owned = True
        svc = HeartbeatService(cfg, bus, state, lambda: (None, None), boot_id=read_boot_id())
        payload = dump_json(svc.build())

        async def loop(step: Callable[[], object]) -> float:
            n, t0 = 0, time.monotonic()
            while (el := time.monotonic() - t0) < seconds:
                r = step()
                if asyncio.iscoroutine(r) and not await r:
                    raise RuntimeError("a heartbeat was not acknowledged")
                n += 1
            return n / el

        async def put() -> bool:
            await bus.kv_put(cfg.nats.heartbeat_bucket, "bench-put", payload)
            return True

        send = await loop(svc.send)
        raw = await loop(put)
        build = await loop(svc.build)
        return Rates(send, raw, build, len(payload))
    finally:
        await bus.close()


def _init_layout(url: str) -> None:
    async def go() -> None:
        n = NatsSection(servers=[url])
        bus = Bus(n)
        await bus.connect_once()
        try:
            await ensure_layout(bus, n)
        finally:
            await bus.close()

    asyncio.run(go())


# --- report ----------------------------------------------------------------------


def _ok(good: bool) -> str:
    return "yes" if good else "**NO**"


def run(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        work = Path(tmp)
        srv = NatsServer(work / "nats").start()
        try:
            _init_layout(srv.url)
            time.sleep(1.0)
            assert srv.proc is not None
            srv_rss = proc_mem_kb(srv.proc.pid)[0] / 1024
            peer_s, peer_rss = python_import_peer(args.runs)
            ready = {lg: bench_ready(srv.url, work, args.runs, logs=lg) for lg in (True, False)}
            idle = {
                (iv, lg): bench_idle(srv, work, interval=iv, logs=lg, seconds=args.idle_seconds)
                for iv in ("15s", "1s")
                for lg in (True, False)
            }
            rates = asyncio.run(_rates(srv.url, args.hb_seconds))
        finally:
            srv.stop()
    rows = [
        "| measurement | result | target | met | peer | ratio to peer |",
        "|---|---|---|---|---|---|",
    ]
    for lg, xs in ready.items():
        med = statistics.median(xs)
        rows.append(
            f"| start → READY=1, logs {'on' if lg else 'off'} (median of {len(xs)}, max)"
            f" | {med:.3f} s ({max(xs):.3f} s) | ≤ {TARGET_READY_S} s"
            f" | {_ok(med <= TARGET_READY_S)}"
            f" | python -c 'import nats, pydantic, psutil': {peer_s:.3f} s | {med / peer_s:.2f}x |"
        )
    for (iv, lg), r in idle.items():
        name = f"idle {args.idle_seconds:.0f} s at {iv}, logs {'on' if lg else 'off'}"
        rows.append(
            f"| {name}: VmRSS (max) / VmHWM (RssAnon + RssFile at the end)"
            f" | {r.rss_mb:.1f} MB / {r.hwm_mb:.1f} MB ({r.anon_mb:.1f} + {r.file_mb:.1f})"
            f" | ≤ {TARGET_RSS_MB:.0f} MB | {_ok(r.rss_mb <= TARGET_RSS_MB)}"
            f" | python + nats, pydantic, psutil imported: {peer_rss:.1f} MB"
            f" | {r.rss_mb / peer_rss:.2f}x |"
        )
        target = f"≤ {TARGET_CPU_PCT} %" if iv == "15s" else "-"
        met = _ok(r.cpu_pct <= TARGET_CPU_PCT) if iv == "15s" else "-"
        shipped = (
            "" if r.log_lines is None else f", logs {r.logs_state}: {r.log_lines} lines shipped"
        )
        rows.append(
            f"| {name}: CPU (% of one core; {r.heartbeats} heartbeats{shipped})"
            f" | {r.cpu_pct:.3f} % | {target} | {met}"
            f" | nats-server in the same window: {r.server_cpu_pct:.3f} % | - |"
        )
    rows.append(
        f"| nats-server (JetStream, layout created) idle VmRSS | {srv_rss:.1f} MB | - | - | - | - |"
    )
    rows.append(
        f"| heartbeats/s, `HeartbeatService.send` loop ({rates.payload_bytes} B)"
        f" | {rates.send_per_s:.0f}/s | - | - | `Bus.kv_put` of a fixed payload:"
        f" {rates.put_per_s:.0f}/s | {rates.send_per_s / rates.put_per_s:.2f}x |"
    )
    rows.append(
        f"| `HeartbeatService.build()` alone (no I/O) | {rates.build_per_s:.0f}/s | - | - | - | - |"
    )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    summary = (__doc__ or "").strip().splitlines()[0]
    p = argparse.ArgumentParser(prog="python -m bench.agent", description=summary)
    p.add_argument("--runs", type=int, default=10, help="start-up runs (median)")
    p.add_argument("--idle-seconds", type=float, default=60.0, help="idle window per case")
    p.add_argument("--hb-seconds", type=float, default=5.0, help="each heartbeat-rate loop")
    p.add_argument("--out", type=Path, help="also write the table here")
    args = p.parse_args(argv)
    table = run(args)
    print(table, end="")
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
