"""`harmony-fleet init | devices | watch | forget`."""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TypeVar

from pydantic import ValidationError

from harmony_core.bus import Bus, KvEntry
from harmony_core.contracts import DeviceInfo, Heartbeat, UpgradeStatus, format_ts, utcnow
from harmony_core.durations import ago
from harmony_core.labels import RESERVED_LABEL_PREFIX
from harmony_core.selectors import device_status, match_labels, parse_selector
from harmony_core.settings import NatsSection
from harmony_fleet.provision import ensure_layout

__all__ = ["DeviceRow", "list_devices", "register"]


@dataclass
class DeviceRow:
    device_id: str
    status: str
    version: str | None
    labels: dict[str, str]
    last_seen: str | None
    age_s: float | None
    interval_s: float | None
    arch: str | None
    hostname: str | None


_T = TypeVar("_T", DeviceInfo, Heartbeat, UpgradeStatus)


def _parse(model: type[_T], e: KvEntry) -> _T | None:
    try:
        return model.model_validate_json(e.value)
    except ValidationError:
        return None


async def list_devices(
    bus: Bus, n: NatsSection, selector: dict[str, str], now: datetime | None = None
) -> list[DeviceRow]:
    """Every device with a DeviceInfo or a heartbeat, status from the heartbeat's server time."""
    now = now or utcnow()
    infos = {e.key: _parse(DeviceInfo, e) for e in await bus.kv_entries(n.device_info_bucket)}
    beats = {e.key: e for e in await bus.kv_entries(n.heartbeat_bucket)}
    rows: list[DeviceRow] = []
    for dev in sorted(set(infos) | set(beats)):
        info = infos.get(dev)
        labels = info.labels if info else {}
        if not match_labels(selector, labels):
            continue
        entry = beats.get(dev)
        hb = _parse(Heartbeat, entry) if entry else None
        seen = entry.created if entry else None
        age = (now - seen).total_seconds() if seen else None
        interval = hb.interval_s if hb else (info.heartbeat_interval_s if info else None)
        rows.append(
            DeviceRow(
                device_id=dev,
                status=device_status(age, interval, hb.state if hb else None),
                version=(hb.agent_version if hb else None)
                or (info.agent_version if info else None),
                labels=labels,
                last_seen=format_ts(seen) if seen else None,
                age_s=round(age, 3) if age is not None else None,
                interval_s=interval,
                arch=info.arch if info else None,
                hostname=info.hostname if info else None,
            )
        )
    return rows


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


async def cmd_devices(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    try:
        selector = parse_selector(args.selector or "")
    except ValueError as e:
        print(f"harmony-fleet: bad selector {e}")
        return 2
    now = utcnow()
    rows = await list_devices(bus, n, selector, now)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    if not rows:
        print("No devices found" + (f" matching {args.selector}" if args.selector else "") + ".")
        return 0
    out = [["DEVICE", "STATUS", "VERSION", "LAST SEEN", "LABELS"]]
    for r in rows:
        user = {k: v for k, v in r.labels.items() if not k.startswith(RESERVED_LABEL_PREFIX)}
        seen = ago(datetime.fromisoformat(r.last_seen), now) if r.last_seen else "never"
        out.append(
            [
                r.device_id,
                r.status,
                r.version or "-",
                seen,
                ",".join(f"{k}={v}" for k, v in sorted(user.items())) or "-",
            ]
        )
    print(_table(out))
    return 0


async def cmd_init(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    for line in await ensure_layout(bus, n):
        print(line)
    return 0


async def cmd_forget(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    for bucket in (
        n.device_info_bucket,
        n.heartbeat_bucket,
        n.upgrade_bucket,
        n.upgrade_status_bucket,
    ):
        await bus.kv_delete(bucket, args.device)
    print(f"forgot {args.device}: its device-info, heartbeat and upgrade keys are purged")
    return 0


def _describe(bucket: str, n: NatsSection, e: KvEntry) -> str:
    if e.deleted:
        return "deleted"
    if bucket == n.heartbeat_bucket and (hb := _parse(Heartbeat, e)):
        return f"heartbeat seq={hb.seq} {hb.state} v{hb.agent_version} cpu={hb.load.cpu_percent}%"
    if bucket == n.device_info_bucket and (di := _parse(DeviceInfo, e)):
        user = {k: v for k, v in di.labels.items() if not k.startswith(RESERVED_LABEL_PREFIX)}
        return f"device-info v{di.agent_version} {di.hostname} {di.arch} labels={user}"
    if bucket == n.upgrade_status_bucket and (us := _parse(UpgradeStatus, e)):
        return f"upgrade {us.phase} {us.from_version}→{us.target_version} {us.reason or ''}"
    return f"{len(e.value)} bytes"


async def cmd_watch(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    buckets = [n.device_info_bucket, n.heartbeat_bucket, n.upgrade_status_bucket]
    queue: asyncio.Queue[tuple[str, KvEntry]] = asyncio.Queue()

    async def pump(bucket: str) -> None:
        started = False
        async for e in bus.kv_watch(bucket, args.device or ">"):
            if e is None:
                started = True
                continue
            if started or args.all:
                await queue.put((bucket, e))

    async with asyncio.TaskGroup() as tg:
        for b in buckets:
            tg.create_task(pump(b))
        while True:
            bucket, e = await queue.get()
            when = format_ts(e.created) if e.created else format_ts(utcnow())
            if args.json:
                body = None if e.deleted else json.loads(e.value or b"null")
                print(
                    json.dumps({"time": when, "bucket": bucket, "device": e.key, "value": body}),
                    flush=True,
                )
            else:
                print(
                    f"{when[:19]}Z  {bucket:<22} {e.key:<24} {_describe(bucket, n, e)}", flush=True
                )


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    p = sub.add_parser(
        "init", parents=parents, help="create the buckets and stream of the contract (idempotent)"
    )
    p.set_defaults(func=cmd_init)
    p = sub.add_parser(
        "devices",
        parents=parents,
        help="list devices: Ready / Stale / Offline / Stopped, version, labels",
    )
    p.add_argument("-l", "--selector", help="only devices with these labels: key=value,...")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_devices)
    p = sub.add_parser(
        "watch", parents=parents, help="print device-info / heartbeat / upgrade-status changes live"
    )
    p.add_argument("device", nargs="?", help="only this device")
    p.add_argument("--all", action="store_true", help="print the current values first")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_watch)
    p = sub.add_parser(
        "forget", parents=parents, help="delete a device's keys (e.g. after re-imaging)"
    )
    p.add_argument("device")
    p.set_defaults(func=cmd_forget)
