"""`harmony-fleet auth init|serve`, `enroll token create|list|revoke`, `enroll list|approve|deny`,
`revoke`, `rotate` (ADR-023).

Tables for people, `--json` for machines; a token is printed once, as the last
line of stdout. `revoke` marks the registry first, then kicks the device's live
connections on every server (the system account's key: `--system-nkey`, or
`system.nk` beside `--nkey`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harmony_core import nkey
from harmony_core.bus import Bus
from harmony_core.contracts import format_ts, utcnow
from harmony_core.durations import ago, parse_duration
from harmony_core.errors import IdentityError
from harmony_core.permissions import rotate_subject
from harmony_core.settings import NatsSection
from harmony_fleet.auth.enroll import (
    approve,
    create_token,
    deny,
    key_rows,
    request_rotation,
    revoke_device,
    revoke_token,
)
from harmony_fleet.auth.kick import device_connections, kick, system_nkey_path
from harmony_fleet.auth.registry import Registry
from harmony_fleet.auth.setup import ACCOUNT, init_auth_dir, load_authd, with_credentials
from harmony_fleet.options import nats_section
from harmony_fleet.terminal import escape_controls

__all__ = ["register"]

if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}; write it like 30m, 24h or 7d") from e


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(escape_controls(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    )


def _jsonable(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: format_ts(v) if isinstance(v, datetime) else v for k, v in obj.items()}


# --- auth init / serve ----------------------------------------------------------------


async def _cmd_auth_init(args: argparse.Namespace, _bus: None, _n: None) -> int:
    servers = list(nats_section(args).servers)
    result = init_auth_dir(args.dir, servers)
    for line in result.lines:
        print(line)
    d = result.operator_nkey.parent
    print(
        f"\nnext: include {d / 'nats-auth.conf'} in the nats-server config (a path "
        "relative to that config's directory) and restart nats-server; run "
        f"`harmony-fleet --nkey {result.operator_nkey} init`; then "
        f"`harmony-fleet auth serve -c {d / 'authd.toml'}`"
    )
    return 0


class _EventFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "event", None)
        base = super().format(record)
        return f"{base} [event={event}]" if event else base


async def _cmd_auth_serve(args: argparse.Namespace, _bus: None, _n: None) -> int:
    from harmony_fleet.auth.callout import serve

    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    cfg = with_credentials(load_authd(args.config), Path(creds) if creds else None)
    if args.ttl is not None:
        cfg = cfg.model_copy(update={"callout": cfg.callout.model_copy(update={"ttl": args.ttl})})
    try:
        seed = cfg.callout.issuer_seed_file.read_text().strip()
        nkey.public_key(seed)
    except (OSError, nkey.NkeyError) as e:
        raise IdentityError(
            f"{cfg.callout.issuer_seed_file}: cannot read the issuer seed ({e})"
            "; `harmony-fleet auth init` writes it"
        ) from e
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_EventFormatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return await serve(cfg, seed)


# --- enrollment tokens -----------------------------------------------------------------


async def _cmd_token_create(args: argparse.Namespace, bus: Bus, _n: NatsSection) -> int:
    rec, token = await create_token(
        Registry(bus),
        expires_in_s=args.expires,
        uses=None if args.reusable else args.uses,
        auto_approve=args.auto_approve,
        note=args.note,
    )
    expires = format_ts(rec.expires_at) if rec.expires_at else "never"
    uses = "reusable" if rec.max_uses is None else f"{rec.max_uses} use(s)"
    approval = "auto-approve" if rec.auto_approve else "manual approval"
    print(f"enrollment token {rec.token_id}: {uses}, expires {expires}, {approval}")
    print(
        "shown once; put it in the device's [identity] enroll_token_file (root:harmony-agent "
        "0640):",
        file=sys.stderr,
    )
    print(token, flush=True)
    return 0


async def _cmd_token_list(args: argparse.Namespace, bus: Bus, _n: NatsSection) -> int:
    _, _, tokens = await Registry(bus).all()
    recs = sorted((t.record for t in tokens), key=lambda r: r.created_at)
    if args.json:
        print(json.dumps([_jsonable(r.model_dump(exclude={"sha256"})) for r in recs], indent=2))
        return 0
    if not recs:
        print("No enrollment tokens.")
        return 0
    now = utcnow()
    rows = [["TOKEN", "STATE", "USES", "EXPIRES", "APPROVAL", "CREATED", "NOTE"]]
    for r in recs:
        expired = r.expires_at is not None and r.expires_at <= now
        used_up = r.max_uses is not None and r.uses >= r.max_uses
        state = (
            "revoked" if r.revoked else "expired" if expired else "used-up" if used_up else "valid"
        )
        rows.append(
            [
                r.token_id,
                state,
                f"{r.uses}/{r.max_uses}" if r.max_uses is not None else f"{r.uses}/∞",
                format_ts(r.expires_at)[:19] + "Z" if r.expires_at else "never",
                "auto" if r.auto_approve else "manual",
                ago(r.created_at, now),
                r.note or "",
            ]
        )
    print(_table(rows))
    return 0


async def _cmd_token_revoke(args: argparse.Namespace, bus: Bus, _n: NatsSection) -> int:
    rec = await revoke_token(Registry(bus), args.token_id)
    print(f"enrollment token {rec.token_id} revoked (devices it enrolled stay enrolled)")
    return 0


# --- keys ------------------------------------------------------------------------------


async def _cmd_enroll_list(args: argparse.Namespace, bus: Bus, _n: NatsSection) -> int:
    rows = await key_rows(Registry(bus))
    if args.json:
        print(json.dumps([_jsonable(asdict(r)) for r in rows], indent=2))
        return 0
    if not rows:
        print("No device keys yet (a device with an enrollment token shows up here).")
        return 0
    now = utcnow()
    table = [["STATUS", "DEVICE", "FINGERPRINT", "HOSTNAME", "MACHINE", "WHEN", "PUBLIC KEY"]]
    for r in rows:
        status = r.status + ("" if r.bound or r.status != "approved" else " (unbound)")
        table.append(
            [
                status,
                r.device_id,
                r.fingerprint,
                r.hostname or "-",
                (r.machine_id or "-")[:12],
                ago(r.updated_at, now),
                r.public_key,
            ]
        )
    print(_table(table))
    notes = [
        f"  {r.device_id} {r.fingerprint}: {r.note}"
        for r in rows
        if r.note and r.status == "pending"
    ]
    if notes:
        print("\n".join(["", "pending:", *notes]))
    return 0


async def _kick_device(
    args: argparse.Namespace, n: NatsSection, device: str, *, started_before: datetime | None = None
) -> tuple[int, int]:
    """Kick `device`'s connections (those started before `started_before`, if given).

    (kicked, servers that had one); IdentityError without the system account's key.
    """
    path = system_nkey_path(args.system_nkey, n.nkey_seed_file)
    sysbus = Bus(
        n.model_copy(update={"nkey_seed_file": path, "creds_file": None}),
        name="harmony-fleet system",
    )
    await sysbus.connect_once()
    try:
        conns = await device_connections(sysbus, device, account=args.account)
        if started_before is not None:
            conns = [c for c in conns if c.start is None or c.start < started_before]
        for c in conns:
            await kick(sysbus, c)
        return len(conns), len({c.server_id for c in conns})
    finally:
        await sysbus.close()


async def _cmd_enroll_approve(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    rec, replaced = await approve(Registry(bus), args.target, replace=args.replace)
    print(f"approved {rec.device_id}: key {rec.fingerprint} ({rec.public_key})")
    if replaced is not None:
        print(f"revoked the key it replaces: {replaced.fingerprint}")
        kicked, _ = await _kick_device(args, n, rec.device_id)
        print(f"kicked {kicked} connection(s) of the replaced key")
    return 0


async def _cmd_enroll_deny(args: argparse.Namespace, bus: Bus, _n: NatsSection) -> int:
    rec = await deny(Registry(bus), args.target)
    print(f"denied key {rec.fingerprint} of {rec.device_id}: it is refused until approved")
    return 0


async def _cmd_revoke(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    rec = await revoke_device(Registry(bus), args.device)
    print(f"revoked {rec.device_id}: key {rec.fingerprint} is refused from now on")
    try:
        kicked, servers = await _kick_device(args, n, rec.device_id)
    except IdentityError as e:
        print(
            f"harmony-fleet: connections not kicked: {e}; they last until their login "
            "expires (authd.toml ttl)",
            file=sys.stderr,
        )
        return 1
    print(f"kicked {kicked} live connection(s) on {servers} server(s)")
    return 0


async def _cmd_rotate(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    reg = Registry(bus)
    before = await request_rotation(reg, args.device, args.window)
    old = before.record.public_key
    await bus.publish_plain(
        rotate_subject(args.device), json.dumps({"requested_at": format_ts(utcnow())}).encode()
    )
    print(f"asked {args.device} for a new key (its key now: {nkey.fingerprint(old)})", flush=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.wait
    while loop.time() < deadline:
        b = await reg.binding(args.device)
        if b is not None and b.record.public_key != old:
            print(
                f"rotated {args.device}: key {nkey.fingerprint(old)} → "
                f"{nkey.fingerprint(b.record.public_key)} ({b.record.public_key})"
            )
            # Anyone still connected with the old key (a copy of it) goes now: whatever
            # connected before the request (server time); the device's new login came after.
            try:
                kicked, _ = await _kick_device(
                    args, n, args.device, started_before=before.written_at
                )
            except IdentityError as e:
                print(f"harmony-fleet: old connections not kicked: {e}", file=sys.stderr)
                return 0
            if kicked:
                print(f"kicked {kicked} connection(s) that were logged in with the old key")
            return 0
        await asyncio.sleep(0.5)
    print(
        f"harmony-fleet: {args.device} did not rotate within {args.wait:.0f}s (not "
        "connected?); the request stands until "
        f"{format_ts(before.record.rotate_until) if before.record.rotate_until else '?'}: "
        "run rotate again once it is online",
        file=sys.stderr,
    )
    return 1


# --- registering ------------------------------------------------------------------------


def _system_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--system-nkey",
        type=Path,
        metavar="FILE",
        help="system account key to kick connections (default: system.nk beside --nkey)",
    )
    p.add_argument("--account", default=ACCOUNT, help=argparse.SUPPRESS)


def register(sub: Sub, parents: list[argparse.ArgumentParser]) -> None:
    auth = sub.add_parser("auth", help="device identity: set up and run the auth callout")
    asub = auth.add_subparsers(dest="auth_command", required=True, metavar="COMMAND")
    p = asub.add_parser(
        "init",
        parents=parents,
        help="create the fleet's keys, nats-auth.conf and authd.toml in DIR "
        "(idempotent: never regenerates a key)",
    )
    p.add_argument("dir", type=Path, metavar="DIR")
    p.set_defaults(func=_cmd_auth_init, needs_bus=False)
    p = asub.add_parser("serve", help="run the auth callout (what harmony-fleet-auth.service does)")
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        required=True,
        metavar="FILE",
        help="authd.toml (auth init writes it)",
    )
    p.add_argument(
        "--ttl",
        type=_duration,
        metavar="D",
        help="how long a device's login lasts (default: authd.toml's, 1h)",
    )
    p.set_defaults(func=_cmd_auth_serve, needs_bus=False)

    enroll = sub.add_parser("enroll", help="enrollment: tokens, pending keys, approve, deny")
    esub = enroll.add_subparsers(dest="enroll_command", required=True, metavar="COMMAND")
    token = esub.add_parser("token", help="enrollment tokens: create, list, revoke")
    tsub = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    p = tsub.add_parser(
        "create", parents=parents, help="a new token, printed once (the last line of stdout)"
    )
    p.add_argument(
        "--expires",
        type=_duration,
        default=24 * 3600.0,
        metavar="D",
        help="valid for this long (default 24h)",
    )
    once = p.add_mutually_exclusive_group()
    once.add_argument(
        "--uses", type=int, default=1, metavar="N", help="enrolls at most N keys (default 1)"
    )
    once.add_argument("--reusable", action="store_true", help="any number of keys")
    p.add_argument(
        "--auto-approve",
        action="store_true",
        help="approve a key at once (unless its device_id is bound to another)",
    )
    p.add_argument("--note", help="free text shown in `enroll token list`")
    p.set_defaults(func=_cmd_token_create)
    p = tsub.add_parser("list", parents=parents, help="every token (never the secret)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_token_list)
    p = tsub.add_parser("revoke", parents=parents, help="no more enrollments with this token")
    p.add_argument("token_id", metavar="TOKEN_ID")
    p.set_defaults(func=_cmd_token_revoke)

    p = esub.add_parser(
        "list", parents=parents, help="device keys: pending, approved, denied, revoked, rotated"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_enroll_list)
    p = esub.add_parser(
        "approve", parents=parents, help="let a pending key in, bound to the device_id it claimed"
    )
    p.add_argument("target", metavar="DEVICE", help="device_id, fingerprint or public key")
    p.add_argument(
        "--replace",
        action="store_true",
        help="the device_id is bound to another key: revoke that one (re-imaged device)",
    )
    _system_options(p)
    p.set_defaults(func=_cmd_enroll_approve)
    p = esub.add_parser("deny", parents=parents, help="refuse a pending key")
    p.add_argument("target", metavar="DEVICE", help="device_id, fingerprint or public key")
    p.set_defaults(func=_cmd_enroll_deny)

    p = sub.add_parser(
        "revoke", parents=parents, help="throw a device out: refuse its key, kick its connections"
    )
    p.add_argument("device", metavar="DEVICE")
    _system_options(p)
    p.set_defaults(func=_cmd_revoke)
    p = sub.add_parser(
        "rotate",
        parents=parents,
        help="have a connected device replace its key (proven by the old one)",
    )
    p.add_argument("device", metavar="DEVICE")
    p.add_argument(
        "--window",
        type=_duration,
        default=600.0,
        metavar="D",
        help="how long the request stands (default 10m)",
    )
    p.add_argument(
        "--wait",
        type=_duration,
        default=60.0,
        metavar="D",
        help="how long to wait for the new key (default 1m)",
    )
    _system_options(p)
    p.set_defaults(func=_cmd_rotate)
