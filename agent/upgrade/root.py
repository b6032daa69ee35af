"""Process entry of the root side: `python3 -m agent.upgrade.switch [--recover]`.

The unit starts it with PYTHONPATH set to the *resolved* `current` release, so
the code it runs is the release that ran when it started; `_pin_code` keeps it
that way after the flip, and a journal that is being resumed re-executes the
switch from the journal's old (known-good) release.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["NatsStatusSink", "main"]

log = logging.getLogger("agent.upgrade.root")

_RESUMABLE = {"switching", "watching", "rolling-back", "committing"}


def _pin_code() -> None:
    """Resolve sys.path so later imports never read the release `current` points at next."""
    sys.path[:] = [os.path.realpath(p) if p else p for p in sys.path]
    # Load now what the switch would otherwise import lazily after the flip.
    import nats
    import nats.errors
    import nats.js
    import nats.js.api
    import nats.js.errors
    import nats.js.kv  # noqa: F401


def _reexec_from_old_release(journal: Path, releases: Path, argv: list[str]) -> None:
    """When resuming an unfinished switch, run the old release's code, not the unproven one's."""
    if os.environ.get("HARMONY_UPGRADE_REEXEC"):
        return
    try:
        rec = json.loads(journal.read_bytes())
    except (OSError, ValueError):
        return
    old = rec.get("from_version") if isinstance(rec, dict) else None
    if not isinstance(old, str) or rec.get("state") not in _RESUMABLE or "/" in old:
        return
    target = releases / old
    here = Path(__file__).resolve().parents[2]
    if not (target / "agent" / "upgrade" / "switch.py").is_file() or target.resolve() == here:
        return
    env = {**os.environ, "PYTHONPATH": str(target.resolve()), "HARMONY_UPGRADE_REEXEC": "1"}
    log.info("resuming with the code of release %s", old)
    os.execve(sys.executable, [sys.executable, "-m", "agent.upgrade.switch", *argv], env)


class NatsStatusSink:
    """Publishes UpgradeStatus to `agent-upgrade-status/<device_id>`; False when NATS is away."""

    def __init__(self, bus: object, bucket: str) -> None:
        from harmony_core.bus import Bus

        assert isinstance(bus, Bus)
        self.bus = bus
        self.bucket = bucket

    async def publish(self, status: object, timeout: float) -> bool:
        from agent.upgrade.status import status_bytes
        from harmony_core.contracts import UpgradeStatus
        from harmony_core.errors import BusError

        assert isinstance(status, UpgradeStatus)
        if not await self.bus.wait_connected(timeout):
            return False
        try:
            await asyncio.wait_for(
                self.bus.kv_put(self.bucket, status.device_id, status_bytes(status)), timeout
            )
        except (BusError, TimeoutError) as e:
            log.warning("cannot publish upgrade status %s: %s", status.phase, e)
            return False
        return True


async def _run(layout: object) -> int:
    from agent.config import load_config
    from agent.identity import device_id_of, read_machine_id
    from agent.upgrade.layout import Layout
    from agent.upgrade.switch import Switch
    from agent.upgrade.units import SystemdUnit
    from harmony_core.bus import Bus

    assert isinstance(layout, Layout)
    cfg = load_config(layout.config)
    device_id = device_id_of(cfg, read_machine_id())
    bus = Bus(cfg.nats, name=f"harmony-agent-upgrade {device_id}")
    sink = NatsStatusSink(bus, cfg.nats.upgrade_status_bucket)
    unit = SystemdUnit(layout.unit, layout.systemctl, layout.journalctl)
    switch = Switch(layout, cfg, device_id, unit, sink)
    async with asyncio.TaskGroup() as tg:
        bus_task = tg.create_task(bus.run(), name="bus")
        try:
            state = await switch.run()
        finally:
            await bus.close()
            bus_task.cancel()
    log.info("upgrade switch done: %s", state.value if state else "nothing to do")
    return 0


def main(argv: list[str] | None = None) -> int:
    from agent.upgrade.layout import Layout
    from agent.upgrade.switch import recover_on_boot

    p = argparse.ArgumentParser(prog="python3 -m agent.upgrade.switch",
                                description="Root side of the harmony-agent self-upgrade.")
    p.add_argument("--recover", action="store_true",
                   help="boot-time recovery: repair releases and `current`, then hand over")
    args = p.parse_args(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    layout = Layout.from_env()
    if args.recover:
        try:
            unfinished = recover_on_boot(layout)
        except Exception:  # the agent must boot whatever happened here
            log.exception("boot-time upgrade recovery failed")
            return 0
        if unfinished:
            switch_unit = os.environ.get("HARMONY_UPGRADE_SWITCH_UNIT",
                                         "harmony-agent-upgrade.service")
            subprocess.run([layout.systemctl, "start", "--no-block", switch_unit], check=False)
        return 0
    _pin_code()
    _reexec_from_old_release(layout.journal, layout.releases, argv or [])
    return asyncio.run(_run(layout))
