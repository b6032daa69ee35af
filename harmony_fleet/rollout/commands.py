"""`harmony-fleet rollout create | run | status | list | pause | resume | abort`.

Exit codes beyond the CLI's own: `run` exits 0 when the rollout completed, 3
when it halted, 4 when it was aborted (`controller.exit_code`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harmony_core.bus import Bus
from harmony_core.contracts import (
    MAX_CONFIRM_WINDOW_S,
    Rollout,
    UpgradeStatus,
    utcnow,
)
from harmony_core.durations import parse_duration
from harmony_core.envelope import VerifyingKey, keyid_of
from harmony_core.labels import DNS1123_LABEL
from harmony_core.selectors import Selector, parse_selector
from harmony_core.settings import NatsSection
from harmony_core.versions import parse_version
from harmony_fleet.devices import list_devices
from harmony_fleet.keys import load_public_keys, load_signing_key
from harmony_fleet.options import selector_arg
from harmony_fleet.rollout import render, store
from harmony_fleet.rollout.controller import drive
from harmony_fleet.rollout.create import Wanted, plan_rollout
from harmony_fleet.rollout.plan import (
    DEFAULT_WAVES,
    Budget,
    budget_notes,
    parse_budget,
    parse_waves,
)
from harmony_fleet.rollout.state import operate, request_id

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["register"]


# --- argument types: a bad one is a usage error (exit 2) --------------------------------------


def _name(text: str) -> str:
    if not DNS1123_LABEL.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a rollout name is lowercase letters, digits and '-' (at most 63), "
            "like canary-0-2-0"
        )
    return text


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _positive_duration(text: str) -> float:
    seconds = _duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a duration longer than 0s")
    return seconds


def _confirm_window(text: str) -> float:
    seconds = _duration(text)
    if not 0 < seconds <= MAX_CONFIRM_WINDOW_S:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a confirm window is longer than 0s and at most 24h (devices refuse others)"
        )
    return seconds


def _version(text: str) -> str:
    try:
        parse_version(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return text


def _waves(text: str) -> list[float]:
    try:
        return parse_waves(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _budget(text: str) -> tuple[int | None, float | None]:
    try:
        return parse_budget(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of devices, at least 1")
    return int(text)


def _who() -> str:
    return f"{os.environ.get('USER', 'operator')}@{socket.gethostname()}"


def _trusted(key: Ed25519PrivateKey, directory: str | None) -> dict[str, VerifyingKey]:
    """The keys whose release manifests are trusted: the signing key's own, and DIR/*.pub."""
    keys: dict[str, VerifyingKey] = {keyid_of(key.public_key()): key.public_key()}
    if directory is not None:
        keys.update(load_public_keys(Path(directory)))
    return keys


# --- create ----------------------------------------------------------------------------------


async def _cmd_create(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    if bool(args.devices) == (args.selector is not None):
        print("harmony-fleet: name devices or give -l SELECTOR (one of them)", file=sys.stderr)
        return 2
    bad = [d for d in args.devices if not DNS1123_LABEL.match(d)]
    if bad:
        print(f"harmony-fleet: {bad[0]!r} is not a device id", file=sys.stderr)
        return 2
    max_failures, max_pct = args.max_failures
    wanted = Wanted(
        name=args.name,
        version=args.version,
        selector=args.selector,
        devices=args.devices,
        arch=args.arch,
        waves=args.waves,
        budget=Budget(max_failures, max_pct, args.min_executed),
        bake_s=args.bake,
        deadline_s=args.deadline,
        confirm_window_s=args.confirm_window,
        allow_downgrade=args.allow_downgrade,
        created_by=_who(),
    )
    key = load_signing_key(Path(args.key))
    r = await plan_rollout(bus, n, wanted, key, _trusted(key, args.trusted_keys))
    print(json.dumps(render.plan_json(r)) if args.json else render.plan_text(r))
    devices = sum(len(w.devices) for w in r.waves)
    for note in budget_notes(devices, wanted.budget):
        print(f"note: {note}", file=sys.stderr)
    if args.dry_run:
        if not args.json:
            print("dry run: nothing written")
        return 0
    await store.create(bus, r)
    print(
        f"created rollout {r.name}; drive it: harmony-fleet rollout run {r.name} --key {args.key}",
        file=sys.stderr if args.json else sys.stdout,
    )
    return 0


# --- run, status, list, pause, resume, abort ---------------------------------------------------


async def _cmd_run(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    key = load_signing_key(Path(args.key))
    return await drive(
        bus, n, args.name, key, trusted=_trusted(key, args.trusted_keys), lease_ttl=args.lease
    )


async def _cmd_status(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    s = await store.get(bus, args.name)
    r = s.rollout
    planned = {d.id for w in r.waves for d in w.devices}
    phases: dict[str, str] = {}
    for e in await bus.kv_entries(n.upgrade_status_bucket):
        if e.key in planned:
            try:
                st = UpgradeStatus.model_validate_json(e.value)
            except ValueError:
                continue
            if st.request_id == request_id(r, e.key):
                phases[e.key] = st.phase
    left_out: list[str] = []
    if r.selector is not None:
        sel: Selector = parse_selector(r.selector)
        now_matching = await list_devices(bus, n, sel)
        left_out = [x.device_id for x in now_matching if x.device_id not in planned]
    controller = render.controller_line(r, s.written_at, utcnow())
    if args.json:
        print(json.dumps(render.status_json(r, phases, left_out, controller), indent=2))
    else:
        print(render.status_text(r, phases, left_out, controller))
    return 0


async def _cmd_list(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    rollouts = [s.rollout for s in await store.list_all(bus)]
    if args.json:
        for r in rollouts:
            print(r.model_dump_json(exclude_none=True))
    elif rollouts:
        print(render.list_table(rollouts))
    else:
        print("No rollouts yet (harmony-fleet rollout create --help).")
    return 0


class _SameError(Exception):
    """The rollout already is in the state asked for: nothing to write."""


async def _cmd_operate(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    said: list[str] = []

    def change(r: Rollout) -> None:
        msg = operate(r, args.action, _who(), utcnow())
        if msg is None:
            raise _SameError
        said.append(msg)

    try:
        r = await store.update(bus, args.name, change)
    except _SameError:
        r = (await store.get(bus, args.name)).rollout
        print(f"rollout {r.name} is {r.state} already")
        return 0
    print(said[-1])
    if r.state == "running" and r.lease is None:
        print(f"no controller drives it: harmony-fleet rollout run {r.name} --key KEY")
    return 0


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    top = sub.add_parser(
        "rollout",
        help="roll a version out in waves (canary first), halting on failures",
        description="Roll a version out to devices in waves, with a bake time after each and "
        "an automatic halt when more devices fail than the budget allows.",
        epilog="run exits 0 when the rollout completed, 3 when it halted, 4 when aborted",
    )
    rs = top.add_subparsers(dest="rollout_command", required=True, metavar="COMMAND")

    c = rs.add_parser("create", parents=parents, help="plan a rollout and store it")
    c.add_argument("name", type=_name, help="its name, e.g. canary-0-2-0")
    c.add_argument("devices", nargs="*", metavar="DEVICE", help="device ids (or -l)")
    c.add_argument(
        "-l",
        "--selector",
        type=selector_arg,
        help="every device whose labels match, as kubectl -l: k=v,'k in (a,b)',!k,...",
    )
    c.add_argument("--version", required=True, type=_version, help="the version to roll out")
    c.add_argument(
        "--key", required=True, help="the private key that will sign the requests (checked now)"
    )
    c.add_argument(
        "--trusted-keys",
        metavar="DIR",
        help="also trust release manifests signed by the keys in DIR/*.pub",
    )
    c.add_argument(
        "--waves",
        type=_waves,
        default=parse_waves(DEFAULT_WAVES),
        metavar="P%,...",
        help=f"cumulative shares of the devices, increasing, at most 100%% "
        f"(default {DEFAULT_WAVES.replace('%', '%%')})",
    )
    c.add_argument(
        "--bake",
        type=_duration,
        default=600.0,
        metavar="D",
        help="how long each device must stay Ready on the new version (default 10m)",
    )
    c.add_argument(
        "--deadline",
        type=_positive_duration,
        default=1800.0,
        metavar="D",
        help="a device without a terminal phase this long after it was asked fails "
        "(default 30m)",
    )
    c.add_argument(
        "--max-failures",
        type=_budget,
        default=(0, None),
        metavar="N|P%",
        help="failed devices allowed before the rollout halts: a count, or a share of the "
        "finished devices (default 0)",
    )
    c.add_argument(
        "--min-executed",
        type=_at_least_one,
        default=1,
        metavar="N",
        help="count failures only once this many devices finished (default 1)",
    )
    c.add_argument(
        "--confirm-window",
        type=_confirm_window,
        metavar="D",
        help="the devices' confirm window (default: each device's own)",
    )
    c.add_argument("--allow-downgrade", action="store_true", help="allow an older version")
    c.add_argument("--arch", help="arch of devices without DeviceInfo (amd64, arm64, ...)")
    c.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    c.add_argument("--json", action="store_true", help="print the plan as JSON")
    c.set_defaults(func=_cmd_create)

    r = rs.add_parser("run", parents=parents, help="drive a rollout until it ends")
    r.add_argument("name", type=_name)
    r.add_argument("--key", required=True, help="the key the rollout was created with")
    r.add_argument("--trusted-keys", metavar="DIR", help="as for create")
    r.add_argument(
        "--lease",
        type=_positive_duration,
        default=30.0,
        metavar="D",
        help="how long another controller waits for this one's silence before taking over "
        "(default 30s)",
    )
    r.set_defaults(func=_cmd_run)

    s = rs.add_parser("status", parents=parents, help="where a rollout stands, device by device")
    s.add_argument("name", type=_name)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_status)

    ls = rs.add_parser("list", parents=parents, help="every rollout")
    ls.add_argument("--json", action="store_true", help="one rollout record per line")
    ls.set_defaults(func=_cmd_list)

    for action, what in (
        ("pause", "start no new wave until resumed"),
        ("resume", "go on (after a halt: accept the failures so far)"),
        ("abort", "end it: no further requests go out"),
    ):
        p = rs.add_parser(action, parents=parents, help=what)
        p.add_argument("name", type=_name)
        p.set_defaults(func=_cmd_operate, action=action)
