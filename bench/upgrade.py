"""Self-upgrade benchmark in the booted-Debian harness; prints a markdown table.

    python -m bench.upgrade [--runs 3] [--window 5s] [--out FILE]     (root, systemd-nspawn)

What it measures, on one container with the checkout's .deb installed and a
real nats-server on the host:

1. request → committed: from the moment `harmony-fleet upgrade` wrote the
   signed request to the moment `agent-upgrade-status` says `committed`, for a
   good build. This includes download, staging, the root-side re-verification
   and extraction, the flip, the restart and the whole confirm window.
2. request → rolled_back: the same for a build that crashes at start.
3. the switch itself: from the flip of `current` (the journal's `restarted_at`,
   saved right after it) to the new agent's READY (systemd's
   ActiveEnterTimestamp of harmony-agent.service) — the target is < 5 s.

Each run uses fresh builds (distinct versions), so nothing is reused from an
earlier run; the window is short on purpose (the default is 5 minutes).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harmony_fleet.cli import main as fleet
from harmony_fleet.keys import private_pem, public_pem
from tests.agentproc import kv_get_json
from tests.conftest import init_layout
from tests.e2e.conftest import agent_toml
from tests.e2e.harness import Container, base_tree, missing_tools
from tests.natsserver import NatsServer
from tests.packaging.debbuild import REPO, build_deb
from tests.upgrade.variants import make_tree

AGENT = "harmony-agent"


def _wait_final(
    url: str, device: str, since: float, timeout: float = 300
) -> tuple[dict[str, Any], float]:
    final = {"committed", "rejected", "rolled_back", "failed"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = kv_get_json(url, "agent-upgrade-status", device)
        if got and got[0]["phase"] in final and got[2].timestamp() > since:
            return got[0], time.monotonic()
        time.sleep(0.1)
    raise TimeoutError("no final upgrade status")


def _switch_s(c: Container) -> float:
    journal = json.loads(c.run(["cat", "/var/lib/harmony-agent-upgrade/journal.json"],
                               check=True).stdout)
    flipped = datetime.fromisoformat(journal["restarted_at"]).timestamp()
    out = c.run(["systemctl", "show", "--timestamp=unix", "-p", "ActiveEnterTimestamp", AGENT],
                check=True).stdout.strip()
    ready = float(out.split("=", 1)[1].lstrip("@"))
    return ready - flipped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--window", default="5s", help="confirm window of each request")
    p.add_argument("--out", type=Path, help="also write the table here")
    args = p.parse_args(argv)
    if missing := missing_tools():
        print(f"bench.upgrade needs {', '.join(missing)}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="harmony-bench-upgrade-", dir="/var/tmp"))
    plan = [(f"0.{2 + i}.0", "good") for i in range(args.runs)]
    plan += [(f"0.9.{i}", "crash") for i in range(args.runs)]

    def one(item: tuple[str, str]) -> tuple[str, Path]:
        v, variant = item
        return v, build_deb("amd64", v, src=make_tree(REPO, work / v, v, variant))

    print(f"building {len(plan)} .debs ...", file=sys.stderr)
    with ThreadPoolExecutor(2) as pool:
        debs = dict(pool.map(one, plan))
    key = Ed25519PrivateKey.generate()
    (work / "op.key").write_bytes(private_pem(key))
    srv = NatsServer(work / "nats").start()
    committed: list[float] = []
    rolled: list[float] = []
    switch: list[float] = []
    try:
        init_layout(srv.url)
        for deb in [build_deb("amd64"), *debs.values()]:
            assert fleet(["-s", srv.url, "publish-artifact", str(deb),
                          "--key", str(work / "op.key")]) == 0
        with Container.create(base_tree(), "bench-upgrade") as c:
            c.boot()
            c.write_file("/etc/harmony-agent/agent.toml", agent_toml(srv.url, interval="1s"),
                         0o640)
            c.write_file("/etc/harmony-agent/keys/op.pub", public_pem(key.public_key()))
            c.install_deb(build_deb("amd64"))
            c.wait_active(AGENT)
            time.sleep(3)  # first heartbeats, DeviceInfo with the arch
            for version, variant in plan:
                since = time.time()
                t0 = time.monotonic()
                assert fleet(["-s", srv.url, "upgrade", c.machine_id, "--version", version,
                              "--key", str(work / "op.key"), "--confirm-window",
                              args.window]) == 0
                st, t1 = _wait_final(srv.url, c.machine_id, since)
                expected = "committed" if variant == "good" else "rolled_back"
                if st["phase"] != expected:
                    raise RuntimeError(f"{version}: {st}")
                (committed if variant == "good" else rolled).append(t1 - t0)
                if variant == "good":
                    switch.append(_switch_s(c))
                print(f"{version} {variant}: {st['phase']} in {t1 - t0:.1f}s", file=sys.stderr)
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)

    def cell(xs: list[float]) -> str:
        return f"{statistics.median(xs):.1f} s (max {max(xs):.1f} s)"

    table = "\n".join([
        f"Runs: {args.runs} each, confirm window {args.window}, "
        f"{platform.machine()}, {platform.node()}.",
        "",
        "| measure | median (max) |",
        "| --- | --- |",
        f"| request → committed (good build) | {cell(committed)} |",
        f"| request → rolled_back (crashing build) | {cell(rolled)} |",
        f"| switch: flip → new agent READY | {cell(switch)} |",
    ])
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
