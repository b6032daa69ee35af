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
from harmony_core.errors import UnknownDeviceError
from harmony_core.labels import DNS1123_LABEL, RESERVED_LABEL_PREFIX
from harmony_core.selectors import device_status, match_labels
from harmony_core.settings import NatsSection
from harmony_fleet.options import selector_arg
from harmony_fleet.provision import ensure_layout
from harmony_fleet.terminal import escape_controls

__all__ = [
    "DeviceRow",
    "device_buckets",
    "labels_cell",
    "list_devices",
    "register",
    "require_device",
]


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


def _key_buckets(n: NatsSection) -> list[str]:
    return [n.device_info_bucket, n.heartbeat_bucket, n.upgrade_bucket, n.upgrade_status_bucket]


async def device_buckets(bus: Bus, n: NatsSection, device: str) -> list[str]:
    """The KV buckets that hold a key of `device`."""
    if not DNS1123_LABEL.match(device):  # not a device id: no key can be its
        return []
    return [b for b in _key_buckets(n) if await bus.kv_get(b, device) is not None]


async def require_device(bus: Bus, n: NatsSection, device: str) -> None:
    """UnknownDeviceError unless NATS holds a key or a log line of `device`."""
    if await device_buckets(bus, n, device):
        return
    if DNS1123_LABEL.match(device) and await bus.has_messages(
        n.logs_stream, f"{n.logs_subject_prefix}.{device}"
    ):
        return
    raise UnknownDeviceError(device)


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


def labels_cell(labels: dict[str, str]) -> str:
    """The LABELS column: the user's labels; with none, the automatic ones as `auto: k=v`.

    Automatic labels (harmony.nationtech.io/...) are shown without their prefix;
    `-` only when a device has no label at all. `--json` has them all, in full.
    """
    user = {k: v for k, v in labels.items() if not k.startswith(RESERVED_LABEL_PREFIX)}
    if user:
        return ",".join(f"{k}={v}" for k, v in sorted(user.items()))
    auto = {k.removeprefix(RESERVED_LABEL_PREFIX): v for k, v in labels.items()}
    if auto:
        return "auto: " + ",".join(f"{k}={v}" for k, v in sorted(auto.items()))
    return "-"


async def _cmd_devices(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    selector: dict[str, str] = args.selector or {}
    now = utcnow()
    rows = await list_devices(bus, n, selector, now)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    if not rows:
        shown = ",".join(f"{k}={v}" for k, v in selector.items())
        print("No devices found" + (f" matching {shown}" if shown else "") + ".")
        return 0
    out = [["DEVICE", "STATUS", "VERSION", "LAST SEEN", "LABELS"]]
    for r in rows:
        seen = ago(datetime.fromisoformat(r.last_seen), now) if r.last_seen else "never"
        out.append([r.device_id, r.status, r.version or "-", seen, labels_cell(r.labels)])
    print(_table([[escape_controls(c) for c in row] for row in out]))
    return 0


async def _cmd_init(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    for line in await ensure_layout(bus, n):
        print(line)
    return 0


async def _cmd_forget(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    held = await device_buckets(bus, n, args.device)
    if not held:
        await require_device(bus, n, args.device)  # only log lines: nothing to purge
        print(f"{args.device}: no keys to purge (its log lines age out of {n.logs_stream})")
        return 0
    for bucket in held:
        await bus.kv_delete(bucket, args.device)
    print(f"forgot {args.device}: purged its keys in {', '.join(held)}")
    return 0


def _describe(bucket: str, n: NatsSection, e: KvEntry) -> str:
    if e.deleted:
        return "deleted"
    if bucket == n.heartbeat_bucket and (hb := _parse(Heartbeat, e)):
        return f"heartbeat seq={hb.seq} {hb.state} v{hb.agent_version} cpu={hb.load.cpu_percent}%"
    if bucket == n.device_info_bucket and (di := _parse(DeviceInfo, e)):
        return (
            f"device-info v{di.agent_version} {di.hostname} {di.arch} "
            f"labels {labels_cell(di.labels)}"
        )
    if bucket == n.upgrade_status_bucket and (us := _parse(UpgradeStatus, e)):
        return f"upgrade {us.phase} {us.from_version}→{us.target_version} {us.reason or ''}"
    return f"{len(e.value)} bytes"


async def _cmd_watch(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    """The current values first (unless --watch-only), then every change, like `kubectl get -w`."""
    buckets = [n.device_info_bucket, n.heartbeat_bucket, n.upgrade_status_bucket]
    queue: asyncio.Queue[tuple[str, KvEntry]] = asyncio.Queue()

    async def pump(bucket: str) -> None:
        current = True
        async for e in bus.kv_watch(bucket, args.device or ">"):
            if e is None:
                current = False
                continue
            if not (current and args.watch_only):
                await queue.put((bucket, e))

    try:
        async with asyncio.TaskGroup() as tg:
            for b in buckets:
                tg.create_task(pump(b))
            while True:
                bucket, e = await queue.get()
                _print_change(args, n, bucket, e)
    except BaseExceptionGroup as eg:
        # A watch failed (NATS gone, a bucket missing): that error, not the group.
        raise eg.exceptions[0] from None


def _print_change(args: argparse.Namespace, n: NatsSection, bucket: str, e: KvEntry) -> None:
    when = format_ts(e.created) if e.created else format_ts(utcnow())
    if args.json:
        try:
            body = None if e.deleted else json.loads(e.value or b"null")
        except ValueError:  # not JSON: the text as it is
            body = e.value.decode("utf-8", "replace")
        print(
            json.dumps({"time": when, "bucket": bucket, "device": e.key, "value": body}),
            flush=True,
        )
    else:
        line = f"{when[:19]}Z  {bucket:<22} {e.key:<24} {_describe(bucket, n, e)}"
        print(escape_controls(line), flush=True)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    p = sub.add_parser(
        "init", parents=parents, help="create the buckets and stream of the contract (idempotent)"
    )
    p.set_defaults(func=_cmd_init)
    p = sub.add_parser(
        "devices",
        parents=parents,
        help="list devices: Ready / Stale / Offline / Stopped, version, labels",
    )
    p.add_argument(
        "-l",
        "--selector",
        type=selector_arg,
        help="only devices with these labels (automatic ones too): key=value,...",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output, every label")
    p.set_defaults(func=_cmd_devices)
    p = sub.add_parser(
        "watch",
        parents=parents,
        help="device-info / heartbeat / upgrade-status: the current values, then changes live",
    )
    p.add_argument("device", nargs="?", help="only this device")
    p.add_argument(
        "--watch-only", action="store_true", help="only changes, not the current values first"
    )
    # The current values are printed first by default now; --all stays accepted.
    p.add_argument("--all", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_cmd_watch)
    p = sub.add_parser(
        "forget", parents=parents, help="delete a device's keys (e.g. after re-imaging)"
    )
    p.add_argument("device")
    p.set_defaults(func=_cmd_forget)
