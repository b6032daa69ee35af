"""The operator's commands at fleet size, timed as a person runs them (whole process, wall time).

`harmony-fleet devices`, `devices -l`, `devices --json`, `watch` until it has
printed the current state of every device, and `upgrade -l` (one request per
matching device, signed; a release published first). Each is run `runs` times;
the median and the largest are kept, with the line count as a check.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Timing", "time_commands"]

_FLEET = [sys.executable, "-m", "harmony_fleet.cli"]


@dataclass(frozen=True)
class Timing:
    command: str
    median_s: float
    max_s: float
    lines: int


def _once(servers: list[str], args: list[str]) -> tuple[float, int]:
    cmd = [*_FLEET, *(a for s in servers for a in ("-s", s)), *args]
    t = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    took = time.monotonic() - t
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return took, len(r.stdout.splitlines())


def _watch_initial(servers: list[str], expect: int) -> tuple[float, int]:
    """`watch --json` until it printed `expect` current values (then it is stopped)."""
    cmd = [*_FLEET, *(a for s in servers for a in ("-s", s)), "watch", "--json"]
    t = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    n = 0
    try:
        while n < expect and proc.stdout.readline():
            n += 1
        took = time.monotonic() - t
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
    return took, n


def _timed(name: str, runs: int, fn: object) -> Timing:
    got = [fn() for _ in range(runs)]  # type: ignore[operator]
    times = [t for t, _ in got]
    return Timing(name, statistics.median(times), max(times), got[-1][1])


def _release(servers: list[str], work: Path) -> str:
    """A key, and release 9.9.9 built and published with it; the key's path."""
    from tests.upgrade.helpers import build_deb

    prefix = work / "op"
    _once(servers, ["keygen", "--out", str(prefix)])
    (work / "debs").mkdir()
    deb, _, _ = build_deb(work / "debs", "9.9.9")
    key = str(prefix.with_suffix(".key"))
    _once(servers, ["publish-artifact", str(deb), "--key", key])
    return key


def time_commands(servers: list[str], devices: int, runs: int = 3) -> list[Timing]:
    """Every command over a fleet of `devices` (labels site=s0..s9), `runs` times each."""
    out = [
        _timed("devices", runs, lambda: _once(servers, ["devices"])),
        _timed("devices -l site=s3", runs, lambda: _once(servers, ["devices", "-l", "site=s3"])),
        _timed("devices --json", runs, lambda: _once(servers, ["devices", "--json"])),
        # DeviceInfo and heartbeat of every device (no upgrade status in this fleet).
        _timed("watch (current state)", runs, lambda: _watch_initial(servers, 2 * devices)),
    ]
    with tempfile.TemporaryDirectory(prefix="bench-fleet-op-") as d:
        key = _release(servers, Path(d))
        args = ["upgrade", "-l", "site=s0", "--version", "9.9.9", "--key", key]
        out.append(_timed("upgrade -l site=s0", 1, lambda: _once(servers, args)))
    return out


if __name__ == "__main__":  # time the commands against a running fleet
    print(json.dumps([t.__dict__ for t in time_commands(sys.argv[1:], 10000)], indent=2))
