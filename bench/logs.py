"""Benchmark: ship N journal lines with harmony-agent vs systemd-journal-upload.

    .venv/bin/python -m bench.logs [--lines 200000] [--runs 3] [--json]

Fills the real journal (starting systemd-journald if none runs) with N lines
through `systemd-cat`, then ships every line after a marker, alternately:

(a) this agent (`python -m agent.logs --until-idle`) into a fresh JetStream
    stream on a local nats-server, with acks and the cursor saved;
(b) `systemd-journal-upload --after-cursor` into `systemd-journal-remote`
    (Debian package systemd-journal-remote), the stock at-least-once shipper.

For each: lines, wall seconds, lines/s, peak RSS and CPU seconds of the shipper
process (from wait4), and bytes on the wire per line (the agent: nats-server's
`in_bytes`; journal-upload: the size of the export format it POSTs). Figures go
to docs/benchmarks.md under "## Log streaming".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.logs.cursor import CursorStore, SavedCursor
from tests.conftest import init_layout
from tests.logs.journald import Journald, journal_cursors, send, unique
from tests.natsserver import NatsServer, free_port, wait_for

__all__ = ["Result", "main"]

REMOTE = "/lib/systemd/systemd-journal-remote"
UPLOAD = "/lib/systemd/systemd-journal-upload"
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    shipper: str
    lines: int
    wall_s: float
    lines_per_s: float  # over the whole process run, startup included
    shipping_lines_per_s: float  # from the reader positioned to all acked (= lines_per_s for b)
    peak_rss_mb: float
    cpu_s: float
    wire_bytes_per_line: float


def _hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _run_measured(cmd: list[str], **kw: Any) -> tuple[float, Any, int, float]:
    """Run `cmd`; (wall s, rusage, exit status, peak RSS MB) of that one process.

    The peak is /proc's VmHWM polled until exit: wait4's ru_maxrss would also count
    the forked benchmark process itself before exec.
    """
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, **kw)
    hwm = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        hwm = max(hwm, _hwm_kb(proc.pid))
        time.sleep(0.005)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage, proc.returncode, round(hwm / 1024, 1)


def fill(n: int) -> tuple[str, str]:
    """A marker line, then `n` lines; (marker cursor, identifier)."""
    marker, ident = unique("bench-start"), unique("bench")
    send("benchmark starts after this line", marker)
    wait_for(lambda: len(journal_cursors("-t", marker)) == 1, 10, "the marker")
    (start,) = journal_cursors("-t", marker)
    pad = "lorem ipsum dolor sit amet " * 2
    text = "".join(f"bench line {i} {pad}\n" for i in range(n))
    subprocess.run(["systemd-cat", "-t", ident], input=text.encode(), check=True)

    def count() -> int:
        out = subprocess.run(
            ["journalctl", "-q", "--no-pager", "-o", "cat", "-t", ident],
            capture_output=True,
            check=True,
        ).stdout
        return out.count(b"\n")

    wait_for(lambda: count() >= n, 120, f"{n} lines in the journal", interval=0.5)
    return start, ident


def _varz_in_bytes(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=5) as r:
        return int(json.load(r)["in_bytes"])


def run_agent(start: str, work: Path) -> Result:
    mport = free_port()
    srv = NatsServer(work / "nats", extra=["-m", str(mport)]).start()
    try:
        init_layout(srv.url)
        state = work / "state"
        CursorStore(state / "logs" / "cursor").write_now(SavedCursor(start, None))
        toml = work / "agent.toml"
        toml.write_text(
            "\n".join(
                [
                    "[agent]",
                    'device_id = "bench"',
                    f'state_dir = "{state}"',
                    "[nats]",
                    f'servers = ["{srv.url}"]',
                    "[logs]",
                    'max_priority = "debug"',
                ]
            )
            + "\n"
        )
        before = _varz_in_bytes(mport)
        settle = 0.1
        out = work / "summary.json"
        with open(out, "wb") as f, open(work / "agent.log", "wb") as err:
            wall, usage, rc, peak = _run_measured(
                [
                    sys.executable,
                    "-m",
                    "agent.logs",
                    "-c",
                    str(toml),
                    "--until-idle",
                    "--settle",
                    str(settle),
                ],
                stdout=f,
                stderr=err,
                cwd=ROOT,
            )
        if rc != 0:
            raise RuntimeError(f"agent exited {rc}; see {work / 'agent.log'}")
        summary = json.loads(out.read_text())
        lines = int(summary["shipped"])
        shipping = float(summary["shipping_s"])
        wire = _varz_in_bytes(mport) - before
    finally:
        srv.stop()
    wall -= settle  # the idle time it waits to be sure it is done
    return Result(
        "harmony-agent",
        lines,
        round(wall, 3),
        round(lines / wall),
        round(lines / shipping),
        peak,
        round(usage.ru_utime + usage.ru_stime, 2),
        round(wire / max(lines, 1), 1),
    )


def run_upload(start: str, work: Path) -> Result:
    port = free_port()
    out_dir = work / "remote"
    out_dir.mkdir(parents=True)
    remote = subprocess.Popen(
        [
            REMOTE,
            f"--listen-http={port}",
            f"--output={out_dir}/remote.journal",
            "--split-mode=none",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import socket

        def up() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(up, 10, "systemd-journal-remote")
        with open(work / "upload.log", "wb") as err:
            wall, usage, rc, peak = _run_measured(
                [
                    UPLOAD,
                    f"--url=http://127.0.0.1:{port}",
                    f"--after-cursor={start}",
                    "--follow=no",
                ],
                stdout=err,
                stderr=err,
            )
        if rc != 0:
            raise RuntimeError(f"systemd-journal-upload exited {rc}; see {work / 'upload.log'}")
    finally:
        remote.terminate()
        remote.wait(30)
    got = subprocess.run(
        ["journalctl", "-q", "--no-pager", "-D", str(out_dir), "-o", "cat"],
        capture_output=True,
        check=True,
    ).stdout.count(b"\n")
    export = subprocess.run(
        ["journalctl", "-q", "--no-pager", "--after-cursor", start, "-o", "export"],
        capture_output=True,
        check=True,
    ).stdout
    return Result(
        "systemd-journal-upload",
        got,
        round(wall, 3),
        round(got / wall),
        round(got / wall),
        peak,
        round(usage.ru_utime + usage.ru_stime, 2),
        round(len(export) / max(got, 1), 1),
    )


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _median(rs: list[Result]) -> Result:
    best = sorted(rs, key=lambda r: r.lines_per_s)[len(rs) // 2]
    return Result(
        best.shipper,
        best.lines,
        best.wall_s,
        round(statistics.median(r.lines_per_s for r in rs)),
        round(statistics.median(r.shipping_lines_per_s for r in rs)),
        max(r.peak_rss_mb for r in rs),
        best.cpu_s,
        best.wire_bytes_per_line,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.logs", description=__doc__.split("\n")[0])
    p.add_argument("--lines", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=3, help="alternating runs of each; medians")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    for tool in (REMOTE, UPLOAD):
        if not Path(tool).exists():
            print(f"{tool} missing: apt-get install systemd-journal-remote", file=sys.stderr)
            return 2
    jd = Journald().ensure()
    try:
        start, _ident = fill(args.lines)
        agent: list[Result] = []
        upload: list[Result] = []
        for i in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="bench-logs-") as d:
                agent.append(run_agent(start, Path(d) / f"a{i}"))
            with tempfile.TemporaryDirectory(prefix="bench-logs-") as d:
                upload.append(run_upload(start, Path(d) / f"u{i}"))
    finally:
        jd.stop()
    a, u = _median(agent), _median(upload)
    machine = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "lines_filled": args.lines,
        "runs": args.runs,
    }
    ratio = round(a.lines_per_s / u.lines_per_s, 2)
    ratio_shipping = round(a.shipping_lines_per_s / u.lines_per_s, 2)
    if args.json:
        print(
            json.dumps(
                {
                    "machine": machine,
                    "agent": [asdict(r) for r in agent],
                    "upload": [asdict(r) for r in upload],
                    "ratio": ratio,
                    "ratio_shipping": ratio_shipping,
                },
                indent=2,
            )
        )
        return 0
    print(
        f"{machine['date']}, {machine['nproc']} x {machine['cpu']}, kernel {machine['kernel']}, "
        f"{args.lines} lines, median of {args.runs} runs"
    )
    print()
    print(
        "| shipper | lines | lines/s (process) | lines/s (shipping) | peak RSS (MB) "
        "| CPU (s) | wire bytes/line |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in (a, u):
        print(
            f"| {r.shipper} | {r.lines} | {r.lines_per_s} | {r.shipping_lines_per_s} | "
            f"{r.peak_rss_mb} | {r.cpu_s} | {r.wire_bytes_per_line} |"
        )
    print()
    print(
        f"ratio agent / journal-upload: {ratio}x over the whole process, "
        f"{ratio_shipping}x once started"
    )
    print(
        "all runs (lines/s agent, upload):",
        [(x.lines_per_s, y.lines_per_s) for x, y in zip(agent, upload, strict=True)],
    )
    return 0


if __name__ == "__main__":
    shutil.which("journalctl") or sys.exit("journalctl missing: apt-get install systemd")
    sys.exit(main())
