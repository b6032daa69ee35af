"""`python -m bench.fleet` (`make bench-fleet N=10000`): a simulated fleet against real NATS.

1. Start nats-server (or a 3-node cluster with `--cluster`), `harmony-fleet init`
   (with `--replicas 3` on the cluster).
2. Start N simulated devices (`bench.fleet.device`: the agent's own announce,
   heartbeat and log-batch code, one NATS connection each) in `--procs`
   processes, ramped; wait until every one is connected and heartbeating.
3. Measure a steady window: heartbeat KV put latency p50/p99, server CPU and RSS
   (/varz and /proc), client CPU per device, what the streams grew by.
4. Restart the server(s) (stop all, `--down` seconds, start all) and time how
   long until every device is connected again and has a heartbeat acknowledged
   (Ready again): the reconnect storm, paced by the agent's jittered backoff.
5. Stop the simulated devices (their keys stay) and time the operator's
   commands over the fleet (`bench.fleet.operator`): an operator's workstation
   does not share its CPU with 10,000 devices.

`--probes` of the devices run in a process of their own, which stays light: their
figures are what a device with a CPU of its own sees; the other processes carry
thousands of devices each, and on a 2-core machine their event loops lag (the
report shows by how much).

Prints a table; `--out FILE` writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.fleet.operator import time_commands
from bench.fleet.servers import Servers
from bench.fleet.worker import raise_nofile
from harmony_core.settings import NatsSection
from harmony_fleet.provision import ensure_layout
from tests.agentproc import run_bus

_STREAMS = ["KV_device-info", "KV_device-heartbeat", "DEVICE_LOGS"]


class _Workers:
    """The worker processes and their command pipes."""

    def __init__(self, args: argparse.Namespace, servers: list[str]) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        # The last `--probes` devices run in a process of their own: a light event loop,
        # so their put latency is the servers' and the network's, not the simulator's.
        bulk = args.devices - args.probes
        per = -(-bulk // args.procs)
        spans = [(w * per, min(per, bulk - w * per)) for w in range(args.procs)]
        spans = [(first, n) for first, n in spans if n > 0]
        if args.probes:
            spans.append((bulk, args.probes))
        self.probe = len(spans) - 1 if args.probes else None
        for first, count in spans:
            cmd = [
                sys.executable, "-m", "bench.fleet.worker",
                *(a for s in servers for a in ("--server", s)),
                "--first", str(first), "--count", str(count),
                "--interval", args.interval, "--log-every", str(args.log_every),
                "--log-lines", str(args.log_lines), "--rate", str(args.rate / len(spans)),
                *(["--watches"] if args.watches else []),
            ]  # fmt: skip
            self.procs.append(
                subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            )

    def ask(self, command: str) -> list[dict[str, Any]]:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(command + "\n")
            p.stdin.flush()
        out = []
        for p in self.procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"a worker ended (exit {p.wait()})")
            out.append(json.loads(line))
        return out

    def total(self, command: str, key: str) -> int:
        return sum(int(r[key]) for r in self.ask(command))

    def quit(self) -> None:
        for p in self.procs:
            try:
                assert p.stdin is not None
                p.stdin.write("quit\n")
                p.stdin.flush()
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _all_ready(workers: _Workers, n: int) -> bool:
    return workers.total("status", "ready") >= n


def _wait(what: str, cond: Any, timeout: float, every: float = 0.5) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - t0


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _stream_bytes(servers: list[str]) -> dict[str, tuple[int, int]]:
    """(bytes, messages) of each stream the fleet writes."""

    async def go(bus: Any) -> dict[str, tuple[int, int]]:
        js = bus._jet()
        out = {}
        for s in _STREAMS:
            st = (await js.stream_info(s)).state
            out[s] = (int(st.bytes), int(st.messages))
        return out

    got: dict[str, tuple[int, int]] = run_bus(NatsSection(servers=servers), go)
    return got


def _steady(args: argparse.Namespace, servers: Servers, workers: _Workers) -> dict[str, Any]:
    workers.ask("window")  # starts the window
    before = _stream_bytes(servers.urls)
    cpu0, t0 = servers.cpu_s(), time.monotonic()
    varz_cpu: list[float] = []
    while time.monotonic() - t0 < args.window:
        time.sleep(2)
        varz_cpu.append(servers.varz_cpu())
    wall = time.monotonic() - t0
    usage = servers.usage(wall, cpu0, varz_cpu)
    replies = workers.ask("window")
    after = _stream_bytes(servers.urls)
    lat = [x for r in replies for x in r["latencies_ms"]]
    lag = [x for r in replies for x in r["loop_lag_ms"]]
    probe = replies[workers.probe] if workers.probe is not None else {"latencies_ms": []}
    plat, plag = probe["latencies_ms"], probe.get("loop_lag_ms", [])
    client_cpu = sum(r["cpu_s"] for r in replies) / max(r["wall_s"] for r in replies)
    grew = {s: (after[s][0] - before[s][0], after[s][1] - before[s][1]) for s in _STREAMS}
    return {
        "window_s": round(wall, 1),
        "heartbeats": len(lat),
        "put_p50_ms": _pct(lat, 0.50),
        "put_p99_ms": _pct(lat, 0.99),
        "put_max_ms": max(lat, default=float("nan")),
        "probe_puts": len(plat),
        "probe_put_p50_ms": _pct(plat, 0.50),
        "probe_put_p99_ms": _pct(plat, 0.99),
        "probe_put_max_ms": max(plat, default=float("nan")),
        "probe_loop_lag_p99_ms": _pct(plag, 0.99),
        "client_loop_lag_p99_ms": _pct(lag, 0.99),
        "client_loop_lag_max_ms": max(lag, default=float("nan")),
        "server_cpu_core": round(usage.cpu_core, 3),
        "server_varz_cpu_pct": round(usage.varz_cpu, 1),
        "server_rss_mb": round(usage.rss / 2**20, 1),
        "server_varz_mem_mb": round(usage.varz_mem / 2**20, 1),
        "server_connections": usage.connections,
        "slow_consumers": usage.slow_consumers,
        "client_cpu_core": round(client_cpu, 3),
        "client_cpu_per_device_pct": round(100 * client_cpu / args.devices, 5),
        "client_rss_mb": round(sum(r["max_rss_mb"] for r in replies), 1),
        "stream_growth": grew,
        "stream_totals": after,
    }


def _restart(args: argparse.Namespace, servers: Servers, workers: _Workers) -> dict[str, Any]:
    stopped = time.time()
    servers.stop()
    gone = time.time()  # every server process has exited: what connects now is the restart's
    time.sleep(args.down)
    started = time.time()  # the restart: times below count from here
    up = servers.start()
    samples: list[tuple[float, int]] = []

    def all_ready() -> bool:
        samples.append((round(time.time() - started, 1), servers.connections()))
        ready: bool = workers.total(f"ready-since {gone}", "ready") >= args.devices
        return ready

    try:
        took = _wait("every device Ready again", all_ready, args.recover_timeout)
    except RuntimeError:  # say how far it got
        took = float("nan")
    replies = workers.ask(f"ready-since {gone}")
    last_conn = max(r["last_connected"] or started for r in replies) - started
    last_ready = max(r["last_ready"] or started for r in replies) - started
    # connected_at counts from `gone`; from the restart instead:
    conn_at = sorted(x - (started - gone) for r in replies for x in r["connected_at"])
    probe = replies[workers.probe] if workers.probe is not None else None
    # The storm's shape: connections per second in the busiest second after the restart.
    per_s: dict[int, int] = {}
    for x in conn_at:
        per_s[int(x)] = per_s.get(int(x), 0) + 1
    return {
        "connected": sum(r["connected"] for r in replies),
        "ready": sum(r["ready"] for r in replies),
        "down_s": round(started - stopped, 1),
        "servers_ready_s": round(up - started, 2),
        "all_connected_s": round(last_conn, 2),
        "all_ready_s": round(last_ready, 2),
        "polled_s": round(took, 1),
        "connected_p50_s": _pct(conn_at, 0.5),
        "connected_p90_s": _pct(conn_at, 0.9),
        "peak_connects_per_s": max(per_s.values(), default=0),
        "probe_all_connected_s": round((probe["last_connected"] or started) - started, 2)
        if probe
        else None,
        "probe_all_ready_s": round((probe["last_ready"] or started) - started, 2)
        if probe
        else None,
        "probe_ready": probe["ready"] if probe else None,
        "connections_curve": samples[:: max(1, len(samples) // 20)],
    }


def _events(workers: _Workers) -> dict[str, int]:
    """The agent's log events over the whole run, every process summed."""
    events: dict[str, int] = {}
    for r in workers.ask("ready-since 0"):
        for k, v in r["events"].items():
            events[k] = events.get(k, 0) + v
    return events


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=10000)
    p.add_argument("--procs", type=int, default=4, help="worker processes")
    p.add_argument(
        "--probes", type=int, default=100, help="devices (of --devices) in a light process"
    )
    p.add_argument("--cluster", action="store_true", help="a 3-node cluster, R3 layout")
    p.add_argument("--interval", default="15s", help="heartbeat interval")
    p.add_argument("--log-every", type=float, default=60.0, help="seconds between log batches")
    p.add_argument("--log-lines", type=int, default=5, help="lines per log batch")
    p.add_argument("--rate", type=float, default=500.0, help="devices started per second")
    p.add_argument("--window", type=float, default=60.0, help="seconds of steady measurement")
    p.add_argument("--down", type=float, default=5.0, help="seconds the servers stay down")
    p.add_argument("--recover-timeout", type=float, default=300.0)
    p.add_argument("--sync-always", action="store_true", help="jetstream sync_interval: always")
    p.add_argument(
        "--watches", action="store_true", help="each device also watches its upgrade keys"
    )
    p.add_argument("--no-commands", action="store_true", help="skip timing harmony-fleet")
    p.add_argument("--no-restart", action="store_true")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    nofile = raise_nofile()
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "nofile": nofile}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as d:
        size = 3 if args.cluster else 1
        servers = Servers(
            Path(d), size, jetstream_conf="sync_interval: always" if args.sync_always else ""
        )
        servers.start()
        workers: _Workers | None = None
        try:
            n = NatsSection(servers=servers.urls)
            run_bus(n, lambda bus: ensure_layout(bus, n, replicas=size if size > 1 else None))
            idle = servers.usage(1.0, servers.cpu_s(), [])
            result["server_idle_rss_mb"] = round(idle.rss / 2**20, 1)
            t0 = time.monotonic()
            workers = _Workers(args, servers.urls)
            ramp = _wait(
                f"{args.devices} devices connected and heartbeating",
                lambda: workers is not None and _all_ready(workers, args.devices),
                args.recover_timeout + args.devices / args.rate,
            )
            result["start_all_ready_s"] = round(time.monotonic() - t0, 1)
            print(f"{args.devices} devices ready in {ramp:.1f}s", file=sys.stderr, flush=True)
            time.sleep(min(30.0, 2 * float(args.interval.rstrip("s"))))  # settle
            result["steady"] = _steady(args, servers, workers)
            print(json.dumps(result["steady"], default=str), file=sys.stderr, flush=True)
            if not args.no_restart:
                result["restart"] = _restart(args, servers, workers)
            result["events"] = _events(workers)
            # The operator's commands on their own workstation do not share 2 cores with
            # 10,000 devices: time them with the simulator stopped (its keys stay).
            workers.quit()
            workers = None
            if not args.no_commands:
                result["commands"] = [t.__dict__ for t in time_commands(servers.urls, args.devices)]
        finally:
            if workers is not None:
                workers.quit()
            servers.stop()
    _report(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


def _report(r: dict[str, Any]) -> None:
    """The figures as a Markdown table (docs/benchmarks.md takes it as it is)."""
    s, a = r.get("steady", {}), r["args"]
    where = "3-node cluster (R3)" if a["cluster"] == "True" else "one server"
    print(f"\n## {a['devices']} devices, {where}, heartbeat {a['interval']}")
    lat = f"{s.get('put_p50_ms')} / {s.get('put_p99_ms')} / {s.get('put_max_ms')} ms"
    plat = (
        f"{s.get('probe_put_p50_ms')} / {s.get('probe_put_p99_ms')} / "
        f"{s.get('probe_put_max_ms')} ms (their loop lag p99 {s.get('probe_loop_lag_p99_ms')} ms)"
    )
    g = s.get
    rows = [
        ("heartbeat put p50 / p99 / max, probes", f"{plat} ({g('probe_puts')} puts)"),
        ("heartbeat put p50 / p99 / max, all", f"{lat} ({g('heartbeats')} puts)"),
        (
            "server CPU, /proc (/varz)",
            f"{g('server_cpu_core')} core ({g('server_varz_cpu_pct')} %)",
        ),
        ("server RSS (/varz mem)", f"{g('server_rss_mb')} MB ({g('server_varz_mem_mb')} MB)"),
        ("server RSS idle, layout only", f"{r.get('server_idle_rss_mb')} MB"),
        ("client CPU, all", f"{g('client_cpu_core')} core"),
        ("client CPU per device", f"{g('client_cpu_per_device_pct')} % of a core"),
        ("client RSS, all processes", f"{g('client_rss_mb')} MB"),
        (
            "client event loop lag p99 / max",
            f"{g('client_loop_lag_p99_ms')} / {g('client_loop_lag_max_ms')} ms",
        ),
        ("connections (slow consumers)", f"{g('server_connections')} ({g('slow_consumers')})"),
        ("start: all connected and heartbeating", f"{r.get('start_all_ready_s')} s"),
    ]
    for c in r.get("commands", []):
        took = f"{c['median_s']:.2f} s (max {c['max_s']:.2f}, {c['lines']} lines)"
        rows.append((f"harmony-fleet {c['command']}", took))
    if rr := r.get("restart"):
        back = f"{rr['all_connected_s']} s / {rr['all_ready_s']} s (down {rr['down_s']} s)"
        if rr["ready"] < int(a["devices"]):
            back += f"; only {rr['ready']} Ready after {a['recover_timeout']} s"
        storm = f"{rr['connected_p50_s']} / {rr['connected_p90_s']} s"
        rows.append(("restart: all connected / all Ready, from the restart", back))
        rows.append(("restart: connects p50 / p90", storm))
        probes = f"{rr['probe_all_connected_s']} s / {rr['probe_all_ready_s']} s"
        rows.append(("restart: probes all connected / all Ready", probes))
        rows.append(("restart: peak connects in one second", str(rr["peak_connects_per_s"])))
    print("| measure | result |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    extra = {k: s.get(k) for k in ("stream_growth", "stream_totals")}
    print(json.dumps({**extra, "events": r.get("events")}, default=str))


if __name__ == "__main__":
    sys.exit(main())
