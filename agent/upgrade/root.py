"""The one process entry of the root side: `python3 -m agent.upgrade.root [--recover]`.

The units start it with PYTHONPATH set to `current`; `_pin_code` resolves that
to the release it names, so the code it runs is the release that ran when it
started, also after the flip; a journal that is being resumed re-executes the
switch from the journal's old (known-good) release.

It never needs the network (its units have none): the switch writes its
status to a file that the agent relays. An invalid config does not stop it:
it salvages what it can (the device id, the keys dir, the health file), so a
staged request is still consumed and refused with the reason, and an
unfinished journal still finished.

It imports the switch; the switch never imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from pydantic import ValidationError

from agent.config import Config, load_config
from agent.deviceinfo.identity import device_id_of, read_machine_id
from agent.upgrade.boot import BootFacts, JournalFacts, plan_boot
from agent.upgrade.journal import load_journal
from agent.upgrade.layout import Layout
from agent.upgrade.release import (
    current_version,
    flip_current,
    is_complete,
    is_safe_release_dir,
    remove_partials,
)
from agent.upgrade.states import Recovery, recovery_for
from agent.upgrade.switch import Switch
from agent.upgrade.units import SystemdUnit
from harmony_core.errors import ConfigError

__all__ = ["main", "recover_on_boot", "salvage_config"]

log = logging.getLogger("agent.upgrade.root")

# Runs the root side of any release, older ones included: each has `root.main(argv)`,
# not each has a `__main__` in the same module.
_ENTRY = "import sys; from agent.upgrade.root import main; sys.exit(main(sys.argv[1:]))"
# A journal in these hands over to the old release's code: something was switched.
_OLD_CODE = frozenset({Recovery.RESUME, Recovery.ROLL_BACK, Recovery.FINISH_COMMIT})


def _pin_code() -> None:
    """Resolve sys.path so later imports never read the release `current` points at next."""
    sys.path[:] = [os.path.realpath(p) if p else p for p in sys.path]


def _python_flags() -> list[str]:
    """The interpreter flags the units give (-s, -B), for a process started from this one."""
    on = (("-s", sys.flags.no_user_site), ("-B", sys.flags.dont_write_bytecode))
    return [flag for flag, set_ in on if set_]


def _reexec_from_old_release(layout: Layout, argv: list[str]) -> None:
    """When resuming an unfinished switch, run the old release's code, not the unproven one's."""
    if os.environ.get("HARMONY_UPGRADE_REEXEC"):
        return
    try:
        rec = load_journal(layout.journal)
    except OSError:
        return
    if rec is None:
        return
    action = recovery_for(rec.state, resumes=rec.resumes, store_count=rec.store_count)
    old = rec.from_version
    if action not in _OLD_CODE or not old or "/" in old:
        return
    target = layout.releases / old
    here = Path(__file__).resolve().parents[2]
    if not (target / "agent" / "upgrade" / "root.py").is_file() or target.resolve() == here:
        return
    env = {**os.environ, "PYTHONPATH": str(target.resolve()), "HARMONY_UPGRADE_REEXEC": "1"}
    log.info("resuming with the code of release %s", old)
    os.execve(sys.executable, [sys.executable, *_python_flags(), "-c", _ENTRY, *argv], env)


def salvage_config(path: Path) -> Config:
    """The sections of the config at `path` that are valid on their own; defaults for the rest.

    What the root side works with when the file as a whole is invalid (the
    agent that runs keeps its last good config after a reload): the same
    device id and paths, as far as their sections still read.
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return Config()
    good = {}
    for name, value in raw.items():
        try:
            Config.model_validate({name: value}, context={"toml": True})
        except ValidationError:
            continue
        good[name] = value
    try:
        return Config.model_validate(good, context={"toml": True})
    except ValidationError:  # pragma: no cover - each section validated alone
        return Config()


def _config(layout: Layout) -> tuple[Config, str, str | None]:
    """The config, the device id, and why the config is unusable (None when it is fine)."""
    problem: str | None = None
    try:
        cfg = load_config(layout.config)
    except ConfigError as e:
        cfg = salvage_config(layout.config)
        problem = f"the config is invalid: {e}"
    try:
        device_id = device_id_of(cfg, read_machine_id())
    except ConfigError as e:
        device_id = cfg.agent.device_id or "unknown"
        problem = problem or f"the config is invalid: {e}"
    return cfg, device_id, problem


def recover_on_boot(layout: Layout) -> bool:
    """The boot-time part (no network, fast): remove partial releases and make `current` safe.

    Returns True when the journal is unfinished or its end unreported, i.e. the
    switch service must run to finish it (it watches, rolls back, reports).
    The decision is boot.plan_boot's; this gathers its facts and applies it.
    """
    remove_partials(layout.releases)
    rec = load_journal(layout.journal)
    journal = None
    if rec is not None:
        journal = JournalFacts(
            state=rec.state, from_version=rec.from_version, to_version=rec.to_version,
            resumes=rec.resumes, store_count=rec.store_count, published=rec.published,
        )
    complete: frozenset[str] = frozenset()
    if layout.releases.is_dir():
        complete = frozenset(p.name for p in layout.releases.iterdir()
                             if not p.name.endswith(".tmp") and is_safe_release_dir(p)
                             and is_complete(p))
    plan = plan_boot(BootFacts(journal, current_version(layout.root), complete))
    if plan.remove:
        remove_partials(layout.releases, also=plan.remove)
    if plan.flip_to is not None:
        log.info("boot: pointing current at release %s", plan.flip_to)
        flip_current(layout.root, plan.flip_to)
    return plan.start_switch


async def _switch(layout: Layout) -> int:
    cfg, device_id, problem = _config(layout)
    if problem is not None:
        log.error("%s", problem)
    unit = SystemdUnit(layout.unit, layout.systemctl, layout.journalctl)
    switch = Switch(layout, cfg, device_id, unit, config_problem=problem)
    state = await switch.run()
    log.info("upgrade switch done: %s", state.value if state else "nothing to do")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python3 -m agent.upgrade.root",
                                description="Root side of the harmony-agent self-upgrade.")
    p.add_argument("--recover", action="store_true",
                   help="boot-time recovery: repair releases and `current`, then hand over")
    args = p.parse_args(argv)
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
    _reexec_from_old_release(layout, argv)
    return asyncio.run(_switch(layout))


if __name__ == "__main__":
    sys.exit(main())
