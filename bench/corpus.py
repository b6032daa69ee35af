"""A corpus of realistic journal lines, made from real logs of this machine, and its replay.

    .venv/bin/python -m bench.corpus [--out bench/data/journal-corpus.jsonl] [--lines 6000]

Synthetic `line N` messages compress absurdly well, so bytes per line are
measured on this instead. Each source is a real log of a Debian machine, given
the unit, identifier and priority it has in a device's journal:

- the kernel ring buffer (`dmesg -r`: its own priorities), no unit;
- systemd (PID 1, `init.scope`) starting, finishing and stopping the units
  installed here (`/lib/systemd/system/*.service`, their `Description=`), with
  CPU-time lines and the odd failure;
- apt's terminal output (`/var/log/apt/term.log`) and history (long `Install:`
  lines) as `apt-daily-upgrade.service`, dpkg's log (`/var/log/dpkg.log`) and
  update-alternatives (`/var/log/alternatives.log`) from the same unit;
- nats-server's own log (`nats-server.service`, from the test servers'
  `nats-server.log` files under /tmp, if any), priorities from `[INF]`/`[WRN]`/...,
  and the agent's own (`harmony-agent.service`, the tests' `agent.log` files);
- a sensor writing raw bytes (not UTF-8: shipped as `message_b64`).

The sources are interleaved the way a device's journal interleaves them (runs of
a few lines from one source), deterministically (`--seed`). One JSON object a
line: `unit` (optional), `identifier`, `priority`, and `message` or
`message_b64`. The output is checked in (bench/data/, < 1 MB): the machine's
logs change, the corpus must not. `replay()` writes it into journald, each
unit's lines from a process in a cgroup under one named like the unit
(`_SYSTEMD_UNIT` is a trusted field: journald reads it from the sender's cgroup).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["CORPUS", "Entry", "build", "load", "replay"]

CORPUS = Path(__file__).resolve().parent / "data" / "journal-corpus.jsonl"
Entry = dict[str, Any]

_APT_UNIT = "apt-daily-upgrade.service"
_NATS_PRIO = {"FTL": 2, "ERR": 3, "WRN": 4, "INF": 6, "DBG": 7, "TRC": 7}


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


# Kernel lines about how this (virtual) machine was started, and init's argv and
# environment, say nothing about logs and are nobody's business: left out.
_KERNEL_SKIP = re.compile(
    r"(?i)command line|init process|with arguments|with environment|"
    r"firecracker|vsock|process_api"
)


def _kernel() -> list[Entry]:
    out = subprocess.run(["dmesg", "-r"], capture_output=True, text=True).stdout
    entries: list[Entry] = []
    for line in out.splitlines():
        m = re.match(r"<(\d+)>\[\s*[\d.]+\] ?(.*)", line)
        if not m or not m.group(2) or _KERNEL_SKIP.search(m.group(2)):
            continue
        prio = int(m.group(1)) & 7
        if prio == 7 and m.group(2).startswith("    "):
            continue  # an indented dump of init's arguments or environment
        entries.append({"identifier": "kernel", "priority": prio, "message": m.group(2)})
    return entries


def _units() -> list[tuple[str, str]]:
    units = []
    for p in sorted(Path("/lib/systemd/system").glob("*.service")):
        if "@" in p.name:
            continue
        desc = next((x[12:] for x in _lines(p) if x.startswith("Description=")), p.stem)
        units.append((p.name, desc))
    return units


def _systemd(rng: random.Random, n: int) -> list[Entry]:
    units = _units()
    entries: list[Entry] = []

    def say(msg: str, prio: int = 6) -> None:
        entries.append(
            {"unit": "init.scope", "identifier": "systemd", "priority": prio, "message": msg}
        )

    while len(entries) < n and units:
        unit, desc = rng.choice(units)
        say(f"Starting {unit} - {desc}...")
        if rng.random() < 0.04:
            code = rng.choice([1, 2, 127])
            say(f"{unit}: Main process exited, code=exited, status={code}/FAILURE", 5)
            say(f"{unit}: Failed with result 'exit-code'.", 4)
            say(f"Failed to start {unit} - {desc}.", 3)
            continue
        say(f"Started {unit} - {desc}." if rng.random() < 0.5 else f"Finished {unit} - {desc}.")
        if rng.random() < 0.7:
            say(f"{unit}: Deactivated successfully.")
            say(f"{unit}: Consumed {rng.uniform(0.01, 40):.3f}s CPU time.")
    return entries


def _apt_priority(line: str) -> int:
    low = line.lower()
    if low.startswith(("e:", "error")) or " error" in low:
        return 3
    if low.startswith(("w:", "warning")) or "warning" in low:
        return 4
    return 6


def _apt() -> list[Entry]:
    entries: list[Entry] = []
    for line in _lines(Path("/var/log/apt/term.log")):
        if line.strip():
            entries.append(
                {
                    "unit": _APT_UNIT,
                    "identifier": "apt.systemd.daily",
                    "priority": _apt_priority(line),
                    "message": line,
                }
            )
    for line in _lines(Path("/var/log/apt/history.log")):
        if line.strip():
            entries.append({"unit": _APT_UNIT, "identifier": "apt", "priority": 6, "message": line})
    return entries


def _dpkg() -> list[Entry]:
    out: list[Entry] = []
    for line in _lines(Path("/var/log/dpkg.log")):
        parts = line.split(" ", 2)
        if len(parts) == 3:
            # "status" lines are dpkg's chatter; the rest is what it did.
            prio = 7 if parts[2].startswith("status ") else 6
            out.append(
                {"unit": _APT_UNIT, "identifier": "dpkg", "priority": prio, "message": parts[2]}
            )
    for line in _lines(Path("/var/log/alternatives.log")):
        msg = line.split(": ", 1)[-1]
        out.append(
            {"unit": _APT_UNIT, "identifier": "update-alternatives", "priority": 6, "message": msg}
        )
    return out


def _nats() -> list[Entry]:
    out: list[Entry] = []
    for log in sorted(Path("/tmp").glob("pytest-of-*/*/*/nats/nats-server.log"))[:40]:
        for line in _lines(log):
            m = re.match(r"\[\d+\] \S+ \S+ \[(\w+)\] (.*)", line)
            if m:
                out.append(
                    {
                        "unit": "nats-server.service",
                        "identifier": "nats-server",
                        "priority": _NATS_PRIO.get(m.group(1), 6),
                        "message": m.group(2),
                    }
                )
    return out


def _agent() -> list[Entry]:
    out: list[Entry] = []
    for log in sorted(Path("/tmp").glob("pytest-of-*/*/*/agent.log"))[:20]:
        for line in _lines(log):
            m = re.match(r"\S+ \S+ (\w+) (.*)", line)
            if m:
                prio = {"ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}.get(m.group(1), 6)
                out.append(
                    {
                        "unit": "harmony-agent.service",
                        "identifier": "harmony-agent",
                        "priority": prio,
                        "message": m.group(2),
                    }
                )
    return out


def _binary(rng: random.Random, n: int) -> list[Entry]:
    blob = Path(sys.executable).resolve().read_bytes()
    out: list[Entry] = []
    while len(out) < n:
        start = rng.randrange(0, max(1, len(blob) - 256))
        raw = blob[start : start + rng.randint(8, 160)]
        try:
            raw.decode("utf-8")
            continue
        except UnicodeDecodeError:
            pass
        out.append(
            {
                "unit": "sensor-bridge.service",
                "identifier": "sensor-bridge",
                "priority": 6,
                "message_b64": base64.b64encode(raw).decode(),
            }
        )
    return out


def _interleave(rng: random.Random, streams: list[list[Entry]], n: int) -> list[Entry]:
    """Up to `n` entries: runs of 1-8 lines from one stream at a time, each stream in order."""
    pos = [0] * len(streams)
    out: list[Entry] = []
    while len(out) < n:
        live = [i for i, s in enumerate(streams) if pos[i] < len(s)]
        if not live:
            break
        i = rng.choices(live, weights=[len(streams[j]) - pos[j] for j in live])[0]
        run = min(rng.randint(1, 8), len(streams[i]) - pos[i], n - len(out))
        out += streams[i][pos[i] : pos[i] + run]
        pos[i] += run
    return out


def _sample(rng: random.Random, entries: list[Entry], n: int) -> list[Entry]:
    """`n` entries of `entries` in their order: a random window of runs (keeps bursts whole)."""
    if len(entries) <= n:
        return entries
    runs = [entries[i : i + 40] for i in range(0, len(entries), 40)]
    keep = sorted(rng.sample(range(len(runs)), max(1, n // 40)))
    return [e for k in keep for e in runs[k]][:n]


def build(lines: int, seed: int) -> list[Entry]:
    rng = random.Random(seed)
    kernel = _kernel()[: lines // 10]
    # apt, dpkg and systemd a share each, nats-server (mostly start-up banners) half of one.
    share = max(1, int((lines - len(kernel)) / 3.6))
    streams = [
        _sample(rng, _apt(), share),
        _sample(rng, _dpkg(), share),
        _sample(rng, _nats(), share // 2),
        _systemd(rng, share),
        _agent(),
        _binary(rng, max(1, lines // 100)),
    ]
    # The kernel speaks first (boot), then everything else interleaved.
    return kernel + _interleave(rng, [s for s in streams if s], lines - len(kernel))


def load(path: Path = CORPUS) -> list[Entry]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_stdin() -> None:
    """The writer process: each stdin line a JSON list of entries, sent; "ok" once sent."""
    from systemd import journal

    for line in sys.stdin:
        for d in json.loads(line):
            b64 = d.get("message_b64")
            msg = base64.b64decode(b64) if b64 is not None else d["message"].encode()
            journal.sendv(
                b"MESSAGE=" + msg,
                "SYSLOG_IDENTIFIER=" + d["identifier"],
                f"PRIORITY={d['priority']}",
                *d.get("extra", ()),
            )
        print("ok", flush=True)


class _Writers:
    """One writer process per unit and pass, in cgroup `<unit>/p<pass>`.

    journald rate-limits each cgroup (10,000 lines per 30 s, scaled by free disk
    space), and `_SYSTEMD_UNIT` comes from the first unit name in the cgroup path:
    a cgroup per pass keeps every pass under the limit with the same units (as if
    each service restarted). Lines without a unit come from `bench-corpus/p<pass>`.
    """

    def __init__(self) -> None:
        self.procs: dict[str | None, subprocess.Popen[bytes]] = {}
        from tests.logs.journald import cgroup_root

        self.pids: list[int] = []
        self.root = cgroup_root()
        self.round = 0
        self._cgroups: list[Path] = []

    def send(self, unit: str | None, batch: list[Entry]) -> None:
        p = self.procs.get(unit)
        if p is None:
            p = subprocess.Popen(
                [sys.executable, "-m", "bench.corpus", "--writer"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=Path(__file__).resolve().parents[1],
            )
            if self.root is not None:
                parent = self.root / (unit or "bench-corpus")
                cg = parent / f"p{self.round}"
                cg.mkdir(parents=True, exist_ok=True)
                (cg / "cgroup.procs").write_text(str(p.pid))
                self._cgroups += [cg, parent]
            self.procs[unit] = p
            self.pids.append(p.pid)
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write((json.dumps(batch) + "\n").encode())
        p.stdin.flush()
        if p.stdout.readline().strip() != b"ok":
            raise RuntimeError(f"the corpus writer of {unit} failed")

    def next_round(self) -> None:
        """End this pass's writers (they exit once their lines are stored)."""
        for p in self.procs.values():
            assert p.stdin is not None and p.stdout is not None
            p.stdin.close()
            p.wait(30)
            p.stdout.close()
        self.procs.clear()
        for cg in dict.fromkeys(self._cgroups):
            with contextlib.suppress(OSError):
                cg.rmdir()
        self._cgroups.clear()
        self.round += 1

    def close(self) -> None:
        self.next_round()


def _runs(entries: list[Entry]) -> Iterator[tuple[str | None, list[Entry]]]:
    run: list[Entry] = []
    for e in entries:
        if run and run[-1].get("unit") != e.get("unit"):
            yield run[-1].get("unit"), run
            run = []
        run.append(e)
    if run:
        yield run[-1].get("unit"), run


def replay(entries: list[Entry], times: int, extra: tuple[str, ...] = ()) -> tuple[int, list[int]]:
    """Write `entries` `times` times into journald; (lines written, the writers' pids).

    `extra` fields (`NAME=value`) go on every line.
    """
    w = _Writers()
    n = 0
    try:
        for _ in range(times):
            for unit, run in _runs(entries):
                w.send(unit, [{**e, "extra": extra} for e in run] if extra else run)
                n += len(run)
            w.next_round()
    finally:
        w.close()
    return n, w.pids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.corpus", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=CORPUS)
    p.add_argument("--lines", type=int, default=6000)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--writer", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.writer:
        _write_stdin()
        return 0
    entries = build(args.lines, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
    print(f"wrote {args.out}: {len(entries)} lines, {args.out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
