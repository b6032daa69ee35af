"""Benchmark: the agent vs systemd-journal-upload, shipping the same journal lines.

    .venv/bin/python -m bench.logs [--lines 200000] [--runs 3] [--baseline DIR]
                                   [--profile] [--json]

Two data sets, each written into the real journald, then exported and imported
(systemd-journal-remote) into a private journal directory that only the
benchmark reads, so other jobs writing to the system journal change nothing:

- synthetic: `--lines` lines `bench line N lorem ipsum...` through `systemd-cat`;
- corpus: bench/data/journal-corpus.jsonl (real logs of a Debian machine, see
  bench.corpus) written once into journald, each unit's lines from a process in
  that unit's cgroup, then repeated (later in time) until at least `--lines`.

For each, alternately, `--runs` times:

(a) the agent (`python -m agent.logs --until-idle`, start_at = "all", run by
    bench/journal_dir.py on the private journal) into a fresh JetStream stream
    on a local nats-server, every batch acknowledged, the cursor saved;
(a') with `--baseline DIR`, the agent of another checkout (e.g. `git archive`
    of an older commit) the same way;
(b) `systemd-journal-upload -D DIR` into `systemd-journal-remote` (Debian's
    stock at-least-once shipper of the same journal).

Per run: lines, wall seconds, lines/s (whole process, and for the agent also
from the reader positioned to the last ack), CPU seconds (wait4) and for the
agent per thread (the reader/pump thread, the event loop, the rest), peak RSS
(VmHWM), and bytes on the wire per line: the agent's from nats-server's `/varz`
`in_bytes` (message headers and payloads), journal-upload's counted by a
splice() proxy between it and journal-remote (HTTP included). Medians of the
runs; the ratios are from the same session. `--profile` adds one agent run per
data set under py-spy (sampling: it does not slow the agent down; `pip install
py-spy`, or `--py-spy PATH`) and prints, for the pump thread and the event
loop's, the source lines where most samples were (a libsystemd call counts on
the line that calls it).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.corpus import load, replay
from tests.conftest import init_layout
from tests.logs.journald import Journald, journal_cursors, send, unique
from tests.natsserver import NatsServer, free_port, wait_for

__all__ = ["Result", "main"]

REMOTE = "/lib/systemd/systemd-journal-remote"
UPLOAD = "/lib/systemd/systemd-journal-upload"
ROOT = Path(__file__).resolve().parents[1]
WRAPPER = Path(__file__).resolve().parent / "journal_dir.py"


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
    threads_cpu_s: dict[str, float] = field(default_factory=dict)


@dataclass
class Dataset:
    name: str
    directory: Path
    lines: int


# --- measuring one process ------------------------------------------------------------


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


class _CountingProxy:
    """127.0.0.1:`port` -> 127.0.0.1:`target`, counting the bytes sent to the target.

    os.splice moves the bytes between the sockets in the kernel, so the proxy costs
    the shipper almost nothing and never touches the data in Python.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.sent = 0
        self._lsock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._lsock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._lsock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            for src, dst, up in ((client, server, True), (server, client, False)):
                t = threading.Thread(target=self._pump, args=(src, dst, up), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        r, w = os.pipe()
        try:
            while True:
                n = os.splice(src.fileno(), w, 1 << 20)
                if n == 0:
                    break
                if up:
                    self.sent += n
                while n:
                    n -= os.splice(r, dst.fileno(), n)
        except OSError:
            pass
        finally:
            os.close(r)
            os.close(w)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._lsock.close()
        for t in self._threads:
            t.join(10)


# --- the data sets -----------------------------------------------------------------------


def _export(args: list[str]) -> bytes:
    return subprocess.run(
        ["journalctl", "-q", "--no-pager", "-o", "export", *args], capture_output=True, check=True
    ).stdout


_Entry = list[tuple[bytes, bytes, bool]]


def _entries(export: bytes) -> list[_Entry]:
    """The entries of journal export format: [(field, value, binary?)] each."""
    entries: list[_Entry] = []
    fields: _Entry = []
    i = 0
    while i < len(export):
        nl = export.index(b"\n", i)
        line = export[i:nl]
        if not line:  # an empty line ends an entry
            entries.append(fields)
            fields = []
            i = nl + 1
        elif b"=" in line:
            key, _, value = line.partition(b"=")
            fields.append((key, value, False))
            i = nl + 1
        else:  # FIELD\n, little-endian 64-bit size, the data, \n
            size = int.from_bytes(export[nl + 1 : nl + 9], "little")
            fields.append((line, export[nl + 9 : nl + 9 + size], True))
            i = nl + 9 + size + 1
    if fields:
        entries.append(fields)
    return entries


def _repeated(entries: list[_Entry], times: int) -> bytes:
    """`entries` `times` times, in export format, each pass later in time than the last."""
    _TIMES = {b"__REALTIME_TIMESTAMP", b"__MONOTONIC_TIMESTAMP", b"_SOURCE_REALTIME_TIMESTAMP"}
    stamps = [int(v) for e in entries for k, v, _b in e if k == b"__REALTIME_TIMESTAMP"]
    span = max(stamps) - min(stamps) + 1_000_000
    out: list[bytes] = []
    for n in range(times):
        for e in entries:
            for k, v, binary in e:
                if k == b"__CURSOR":
                    continue  # journal-remote gives each entry its own
                if k in _TIMES:
                    v = str(int(v) + n * span).encode()
                if binary:
                    out.append(k + b"\n" + len(v).to_bytes(8, "little") + v + b"\n")
                else:
                    out.append(k + b"=" + v + b"\n")
            out.append(b"\n")
    return b"".join(out)


def _import(export: bytes, directory: Path) -> int:
    """Journal export format into journal-remote: a journal of those lines only."""
    directory.mkdir(parents=True)
    subprocess.run(
        [REMOTE, f"--output={directory}/bench.journal", "--split-mode=none", "-"],
        input=export,
        check=True,
        capture_output=True,
    )
    return _count(["-D", str(directory)])


def _count(args: list[str]) -> int:
    """Journal entries matching `args` (one JSON line each; a MESSAGE may hold newlines)."""
    out = subprocess.run(
        ["journalctl", "-q", "--no-pager", "-o", "json", "--output-fields=_PID", *args],
        capture_output=True,
        check=True,
    ).stdout
    return out.count(b"\n")


def synthetic(n: int, work: Path) -> Dataset:
    """`n` lines through systemd-cat (a service's stdout), in a journal of their own."""
    ident = unique("bench")
    pad = "lorem ipsum dolor sit amet " * 2
    text = "".join(f"bench line {i} {pad}\n" for i in range(n))
    subprocess.run(["systemd-cat", "-t", ident], input=text.encode(), check=True)
    wait_for(lambda: _count(["-t", ident]) >= n, 300, f"{n} lines in the journal", interval=0.5)
    got = _import(_export(["-t", ident]), work / "synthetic")
    return Dataset(f"synthetic ({n} lines)", work / "synthetic", got)


def corpus(n: int, work: Path) -> Dataset:
    """The corpus through journald once, then repeated to at least `n` lines, in a journal
    of its own.

    Once through journald, so every line has the fields journald gives it (its unit's
    cgroup, pid, transport, boot...); then its export repeated, each pass later in
    time, into the private journal: replayed `n` lines at once, journald's per-unit
    rate limit (10,000 lines per 30 s, scaled by free disk) would drop a quarter.
    """
    entries = load()
    times = max(1, -(-n // len(entries)))
    marker = unique("bench-corpus")
    send("the corpus follows", marker)
    wait_for(lambda: len(journal_cursors("-t", marker)) == 1, 10, "the marker")
    (start,) = journal_cursors("-t", marker)
    written, pids = replay(entries, 1)
    matches: list[str] = []
    for pid in pids:
        matches += [f"_PID={pid}", "+"]
    # --cursor, not --after-cursor: with matches, journalctl skips one line too many
    # after a cursor whose line does not match (the marker's does not).
    args = ["--cursor", start, *matches[:-1]]
    wait_for(lambda: _count(args) >= written, 60, "the corpus in the journal", interval=0.5)
    got = _import(_repeated(_entries(_export(args)), times), work / "corpus")
    return Dataset(f"corpus ({len(entries)} lines x {times})", work / "corpus", got)


# --- the shippers ------------------------------------------------------------------------


def _varz_in_bytes(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=5) as r:
        return int(json.load(r)["in_bytes"])


def run_agent(
    ds: Dataset,
    work: Path,
    *,
    root: Path = ROOT,
    label: str = "harmony-agent",
    py_spy: list[str] | None = None,
) -> Result:
    mport = free_port()
    srv = NatsServer(work / "nats", extra=["-m", str(mport)]).start()
    try:
        init_layout(srv.url)
        toml = work / "agent.toml"
        toml.write_text(
            "\n".join(
                [
                    "[agent]",
                    'device_id = "bench"',
                    f'state_dir = "{work / "state"}"',
                    "[nats]",
                    f'servers = ["{srv.url}"]',
                    "[logs]",
                    'max_priority = "debug"',
                    'start_at = "all"',
                ]
            )
            + "\n"
        )
        before = _varz_in_bytes(mport)
        settle = 0.1
        out, threads = work / "summary.json", work / "threads.json"
        env = {**os.environ, "PYTHONPATH": str(root), "BENCH_THREADS": str(threads)}
        cmd = [
            *(py_spy or []),
            sys.executable,
            str(WRAPPER),
            str(ds.directory),
            "-c",
            str(toml),
            "--until-idle",
            "--settle",
            str(settle),
        ]
        with open(out, "wb") as f, open(work / "agent.log", "wb") as err:
            wall, usage, rc, peak = _run_measured(cmd, stdout=f, stderr=err, cwd=root, env=env)
        if rc != 0:
            raise RuntimeError(f"{label} exited {rc}; see {work / 'agent.log'}")
        # The summary is the last line (py-spy, when it runs the agent, prints its own).
        lines_out = [x for x in out.read_text().splitlines() if x.startswith("{")]
        summary = json.loads(lines_out[-1])
        lines = int(summary["shipped"])
        shipping = float(summary["shipping_s"])
        wire = _varz_in_bytes(mport) - before
    finally:
        srv.stop()
    wall -= settle  # the idle time it waits to be sure it is done
    return Result(
        label,
        lines,
        round(wall, 3),
        round(lines / wall),
        round(lines / shipping),
        peak,
        round(usage.ru_utime + usage.ru_stime, 2),
        round(wire / max(lines, 1), 1),
        json.loads(threads.read_text()),
    )


def run_upload(ds: Dataset, work: Path) -> Result:
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
    proxy: _CountingProxy | None = None
    try:

        def up() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(up, 10, "systemd-journal-remote")
        proxy = _CountingProxy(port)
        with open(work / "upload.log", "wb") as err:
            wall, usage, rc, peak = _run_measured(
                [
                    UPLOAD,
                    f"--url=http://127.0.0.1:{proxy.port}",
                    "-D",
                    str(ds.directory),
                    "--follow=no",
                    f"--save-state={work / 'upload.state'}",
                ],
                stdout=err,
                stderr=err,
            )
        if rc != 0:
            raise RuntimeError(f"systemd-journal-upload exited {rc}; see {work / 'upload.log'}")
    finally:
        remote.terminate()
        remote.wait(30)
        if proxy is not None:
            proxy.close()
    got = _count(["-D", str(out_dir)])
    return Result(
        "systemd-journal-upload",
        got,
        round(wall, 3),
        round(got / wall),
        round(got / wall),
        peak,
        round(usage.ru_utime + usage.ru_stime, 2),
        round(proxy.sent / max(got, 1), 1) if proxy else 0.0,
    )


# --- reporting ------------------------------------------------------------------------------


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _median(rs: list[Result]) -> Result:
    def med(get: Any) -> float:
        return float(statistics.median(get(r) for r in rs))

    mid = sorted(rs, key=lambda r: r.lines_per_s)[len(rs) // 2]
    threads = {
        k: round(med(lambda r, k=k: r.threads_cpu_s.get(k, 0.0)), 3) for k in mid.threads_cpu_s
    }
    return Result(
        mid.shipper,
        mid.lines,
        round(med(lambda r: r.wall_s), 3),
        round(med(lambda r: r.lines_per_s)),
        round(med(lambda r: r.shipping_lines_per_s)),
        max(r.peak_rss_mb for r in rs),
        round(med(lambda r: r.cpu_s), 2),
        round(med(lambda r: r.wire_bytes_per_line), 1),
        threads,
    )


def _profile(raw: Path, n: int) -> dict[str, list[str]]:
    """Per thread (the pump's, the event loop's), the `n` source lines most sampled, from
    py-spy's raw (collapsed stacks) output."""
    by: dict[str, collections.Counter[str]] = {
        "pump": collections.Counter(),
        "loop": collections.Counter(),
    }
    totals: collections.Counter[str] = collections.Counter()
    text = raw.read_text()
    # py-spy names a thread only once Python's threading module has: the main
    # thread's first samples (start-up) carry its id alone.
    main = re.search(r"^thread \((\d+)\): MainThread", text, re.M)
    main_label = f"thread ({main.group(1)})" if main else "MainThread"
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        label = frames[0]
        thread = "pump" if "logs-pump" in label else "loop" if main_label in label else ""
        if not thread or len(frames) < 2:
            continue
        leaf = re.sub(r" \((?:.*/)?([^/]+:\d+)\)$", r" (\1)", frames[-1])
        by[thread][leaf] += int(count)
        totals[thread] += int(count)
    return {
        t: [f"{100 * c / totals[t]:5.1f}%  {f}" for f, c in cnt.most_common(n)]
        for t, cnt in by.items()
        if totals[t]
    }


def by_batch_size(ds: Dataset, sizes: tuple[int, ...] = (1, 5, 20, 1000)) -> list[str]:
    """Payload bytes per line of `ds`'s first 20,000 lines in batches of `sizes` records:
    plain JSON, zstd alone, zstd with the dictionary (computed with the agent's encoder
    and harmony_core.logcodec; the headers add ~70 bytes a message)."""
    import zstandard
    from systemd import journal

    from agent.logs.records import Encoder, batch_json
    from harmony_core.logcodec import LEVEL, Compressor

    r = journal.Reader(path=str(ds.directory), converters={})
    line = Encoder(16 * 1024).line
    recs: list[str] = []
    while len(recs) < 20_000 and r._next():
        recs.append(line(r._get_cursor(), r._get_realtime(), r._get_all()))
    r.close()
    plain = zstandard.ZstdCompressor(level=LEVEL, write_checksum=False)
    with_dict = Compressor()
    out = ["| batch of | plain JSON | zstd | zstd + dictionary |", "| ---: | ---: | ---: | ---: |"]
    for k in sizes:
        batches = [
            batch_json("3d1219c7c4c5404aaa1f6d2a48adfda4", recs[i : i + k])
            for i in range(0, len(recs), k)
        ]
        raw = sum(map(len, batches)) / len(recs)
        z = sum(len(plain.compress(b)) for b in batches) / len(recs)
        d = sum(len(with_dict.compress(b)[0]) for b in batches) / len(recs)
        out.append(f"| {k} | {raw:.0f} | {z:.0f} | {d:.0f} |")
    return out


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _table(rows: list[Result], upload: Result) -> list[str]:
    out = [
        "| shipper | lines | lines/s (process) | lines/s (shipping) | CPU (s) "
        "| of it: pump / loop / other | peak RSS (MB) | wire B/line |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        t = r.threads_cpu_s
        split = (
            f"{t.get('pump', 0):.2f} / {t.get('main', 0):.2f} / {t.get('other', 0):.2f}"
            if t
            else "-"
        )
        out.append(
            f"| {r.shipper} | {r.lines} | {r.lines_per_s} | {r.shipping_lines_per_s} | "
            f"{r.cpu_s} | {split} | {r.peak_rss_mb} | {r.wire_bytes_per_line} |"
        )
    out.append("")
    for r in rows:
        if r is upload:
            continue
        out.append(
            f"{r.shipper} / journal-upload: lines/s {r.lines_per_s / upload.lines_per_s:.2f}x "
            f"(once started {r.shipping_lines_per_s / upload.lines_per_s:.2f}x), "
            f"CPU {r.cpu_s / upload.cpu_s:.2f}x, "
            f"wire {r.wire_bytes_per_line / upload.wire_bytes_per_line:.3f}x"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.logs", description=__doc__.split("\n")[0])
    p.add_argument("--lines", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=3, help="alternating runs of each; medians")
    p.add_argument("--baseline", type=Path, help="also run the agent of this checkout")
    p.add_argument("--sets", default="synthetic,corpus", help="which data sets")
    p.add_argument("--profile", action="store_true", help="one more agent run under py-spy")
    p.add_argument("--py-spy", default=shutil.which("py-spy"), help="the py-spy to use")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    for tool in (REMOTE, UPLOAD):
        if not Path(tool).exists():
            print(f"{tool} missing: apt-get install systemd-journal-remote", file=sys.stderr)
            return 2
    if args.profile and not args.py_spy:
        print("--profile needs py-spy: pip install py-spy, or --py-spy PATH", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "machine": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "nproc": os.cpu_count(),
            "cpu": _cpu_model(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "runs": args.runs,
        },
        "sets": {},
    }
    shippers = ["harmony-agent", *(["baseline"] if args.baseline else []), "upload"]
    jd = Journald().ensure()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
            work = Path(tmp)
            makers = {"synthetic": synthetic, "corpus": corpus}
            for name in args.sets.split(","):
                ds = makers[name](args.lines, work / "data")
                runs: dict[str, list[Result]] = {s: [] for s in shippers}
                loads = [_loadavg()]
                for i in range(args.runs):
                    for s in shippers:
                        w = work / f"{name}-{s}-{i}"
                        if s == "upload":
                            runs[s].append(run_upload(ds, w))
                        elif s == "baseline":
                            runs[s].append(run_agent(ds, w, root=args.baseline, label="baseline"))
                        else:
                            runs[s].append(run_agent(ds, w))
                    loads.append(_loadavg())
                profiles: dict[str, list[str]] = {}
                if args.profile:
                    w = work / f"{name}-profile"
                    raw = w / "py-spy.txt"
                    w.mkdir()
                    spy = [
                        args.py_spy,
                        "record",
                        "-r",
                        "500",
                        "--threads",
                        "-f",
                        "raw",
                        "-o",
                        str(raw),
                        "--",
                    ]
                    run_agent(ds, w, py_spy=spy)
                    profiles = _profile(raw, 15)
                sizes = by_batch_size(ds) if name == "corpus" else []
                report["sets"][name] = {
                    "dataset": asdict(ds) | {"directory": str(ds.directory)},
                    "load": loads,
                    "runs": {s: [asdict(r) for r in rs] for s, rs in runs.items()},
                    "median": {s: asdict(_median(rs)) for s, rs in runs.items()},
                    "profiles": profiles,
                    "by_batch_size": sizes,
                }
                if not args.json:
                    med = {s: _median(rs) for s, rs in runs.items()}
                    print(f"\n## {ds.name}: {ds.lines} lines; load average {' -> '.join(loads)}\n")
                    print("\n".join(_table(list(med.values()), med["upload"])))
                    for s, rs in runs.items():
                        print(
                            f"  {s} runs (lines/s, CPU s):", [(r.lines_per_s, r.cpu_s) for r in rs]
                        )
                    for thread, lines in profiles.items():
                        print(f"\n  profile, thread {thread}:")
                        print("\n".join("    " + x for x in lines))
                    if sizes:
                        print("\npayload bytes per line by batch size (computed):\n")
                        print("\n".join(sizes))
                shutil.rmtree(ds.directory, ignore_errors=True)
    finally:
        jd.stop()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        m = report["machine"]
        print(
            f"\n{m['date']}, {m['nproc']} x {m['cpu']}, kernel {m['kernel']}, "
            f"Python {m['python']}, median of {m['runs']} runs"
        )
    return 0


if __name__ == "__main__":
    shutil.which("journalctl") or sys.exit("journalctl missing: apt-get install systemd")
    sys.exit(main())
