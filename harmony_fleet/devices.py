"""`harmony-fleet init | devices | watch | forget`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Literal, TextIO, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from harmony_core.bus import Bus, KvEntry
from harmony_core.contracts import (
    DeviceInfo,
    Heartbeat,
    Rollout,
    UpgradeStatus,
    format_ts,
    utcnow,
)
from harmony_core.durations import ago
from harmony_core.errors import BucketMissingError, UnknownDeviceError
from harmony_core.labels import DNS1123_LABEL, RESERVED_LABEL_PREFIX
from harmony_core.selectors import Selector, device_status, match_labels
from harmony_core.settings import NatsSection
from harmony_fleet.options import selector_arg
from harmony_fleet.provision import ROLLOUTS_BUCKET, provision_layout
from harmony_fleet.rollout.state import summary
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


_T = TypeVar("_T", DeviceInfo, Heartbeat, UpgradeStatus, Rollout)


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


class _InfoColumns(BaseModel):
    """The DeviceInfo fields a listing shows (read without building the rest, 10,000 times)."""

    model_config = ConfigDict(extra="ignore")
    schema_version: Literal[1]
    labels: dict[str, str]
    agent_version: str
    arch: str
    hostname: str
    heartbeat_interval_s: float


class _BeatColumns(BaseModel):
    """The Heartbeat fields a listing shows."""

    model_config = ConfigDict(extra="ignore")
    schema_version: Literal[1]
    agent_version: str
    interval_s: float
    state: Literal["running", "stopping"]


_C = TypeVar("_C", _InfoColumns, _BeatColumns)


def _columns(model: type[_C], e: KvEntry | None) -> _C | None:
    if e is None:
        return None
    try:
        return model.model_validate_json(e.value)
    except ValidationError:
        return None


async def list_devices(
    bus: Bus,
    n: NatsSection,
    selector: Selector | Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> list[DeviceRow]:
    """Every device with a DeviceInfo or a heartbeat, status from the heartbeat's server time;
    only those `selector` matches, when given (a plain mapping: matchLabels).

    Two bulk reads (every latest value of each bucket, `Bus.kv_entries`), side by side:
    no request per device, whatever the fleet's size.
    """
    now = now or utcnow()
    info_entries, beat_entries = await asyncio.gather(
        bus.kv_entries(n.device_info_bucket), bus.kv_entries(n.heartbeat_bucket)
    )
    infos = {e.key: e for e in info_entries}
    beats = {e.key: e for e in beat_entries}
    rows: list[DeviceRow] = []
    for dev in sorted(infos.keys() | beats.keys()):
        info = _columns(_InfoColumns, infos.get(dev))
        labels = info.labels if info else {}
        if selector is not None and not match_labels(selector, labels):
            continue
        entry = beats.get(dev)
        hb = _columns(_BeatColumns, entry)
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


def _table(rows: list[list[str]], out: TextIO) -> None:
    """Aligned columns, written a line at a time (a fleet's table is not one big string)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def _json_rows(rows: list[DeviceRow], out: TextIO) -> None:
    """`json.dumps(rows, indent=2)`, byte for byte, written a row at a time."""
    if not rows:
        out.write("[]\n")
        return
    out.write("[\n")
    for i, r in enumerate(rows):
        text = json.dumps(asdict(r), indent=2).replace("\n", "\n  ")
        out.write(f"  {text}{',' if i < len(rows) - 1 else ''}\n")
    out.write("]\n")


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
    selector: Selector = args.selector or Selector()
    now = utcnow()
    rows = await list_devices(bus, n, selector, now)
    if args.json:
        _json_rows(rows, sys.stdout)
        return 0
    if not rows:
        shown = str(selector)
        print("No devices found" + (f" matching {shown}" if shown else "") + ".")
        return 0
    out = [["DEVICE", "STATUS", "VERSION", "LAST SEEN", "LABELS"]]
    for r in rows:
        seen = ago(datetime.fromisoformat(r.last_seen), now) if r.last_seen else "never"
        out.append([r.device_id, r.status, r.version or "-", seen, labels_cell(r.labels)])
    _table([[escape_controls(c) for c in row] for row in out], sys.stdout)
    return 0


async def _cmd_init(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    done = await provision_layout(bus, n, replicas=args.replicas)
    for d in done:
        print(d)
    return 1 if any(d.did.outcome == "refused" for d in done) else 0


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
    if bucket == ROLLOUTS_BUCKET and (ro := _parse(Rollout, e)):
        why = f" — {ro.reason}" if ro.state in ("halted", "paused", "aborted") and ro.reason else ""
        return f"rollout {ro.version} {summary(ro)}{why}"
    return f"{len(e.value)} bytes"


async def _cmd_watch(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    """The current values first (unless --watch-only), then every change, like `kubectl get -w`.

    Rollouts too: with a DEVICE or `-l`, those that include a device shown.
    """
    buckets = [n.device_info_bucket, n.heartbeat_bucket, n.upgrade_status_bucket]
    queue: asyncio.Queue[tuple[str, KvEntry]] = asyncio.Queue()
    sel: Selector | None = args.selector
    labels: dict[str, dict[str, str]] = {}
    if sel is not None:  # known before any heartbeat arrives, kept current below
        for e in await bus.kv_entries(n.device_info_bucket):
            if di := _parse(DeviceInfo, e):
                labels[e.key] = di.labels

    def wanted(device: str) -> bool:
        return (args.device is None or device == args.device) and (
            sel is None or sel.matches(labels.get(device, {}))
        )

    def shown(bucket: str, e: KvEntry) -> bool:
        if bucket == ROLLOUTS_BUCKET:
            ro = _parse(Rollout, e)
            return ro is None or any(wanted(d.id) for w in ro.waves for d in w.devices)
        if bucket == n.device_info_bucket and not e.deleted and (di := _parse(DeviceInfo, e)):
            labels[e.key] = di.labels
        return wanted(e.key)

    async def pump(bucket: str, key: str) -> None:
        current = True
        async for e in bus.kv_watch(bucket, key):
            if e is None:
                current = False
                continue
            if not (current and args.watch_only):
                await queue.put((bucket, e))

    async def rollouts() -> None:
        try:
            await pump(ROLLOUTS_BUCKET, ">")
        except BucketMissingError:  # made before rollouts existed: devices only
            print(f"(no {ROLLOUTS_BUCKET} bucket: run harmony-fleet init to watch rollouts too)",
                  file=sys.stderr, flush=True)  # fmt: skip

    try:
        async with asyncio.TaskGroup() as tg:
            for b in buckets:
                tg.create_task(pump(b, args.device or ">"))
            tg.create_task(rollouts())
            while True:
                bucket, e = await queue.get()
                if shown(bucket, e):
                    _print_change(args, n, bucket, e)
                if queue.empty():  # a fleet's current state is one write, not 30,000
                    sys.stdout.flush()
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
        what = "rollout" if bucket == ROLLOUTS_BUCKET else "device"
        print(json.dumps({"time": when, "bucket": bucket, what: e.key, "value": body}))
    else:
        line = f"{when[:19]}Z  {bucket:<22} {e.key:<24} {_describe(bucket, n, e)}"
        print(escape_controls(line))


def _replicas(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 5:  # JetStream's own limit
        raise argparse.ArgumentTypeError(
            f"{text!r}: replicas are 1 to 5 (3 for a 3-server cluster)"
        )
    return n


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    p = sub.add_parser(
        "init", parents=parents, help="create the buckets and stream of the contract (idempotent)"
    )
    p.add_argument(
        "--replicas",
        type=_replicas,
        metavar="N",
        help="replicas of every bucket, the object store and the stream: 3 on a 3-server "
        "NATS cluster (default: 1 for what is created, existing ones keep theirs)",
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
        help="only devices whose labels (automatic ones too) match, as kubectl -l: "
        "k=v, k!=v, 'k in (a,b)', 'k notin (a,b)', k, !k, comma-joined",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output, every label")
    p.set_defaults(func=_cmd_devices)
    p = sub.add_parser(
        "watch",
        parents=parents,
        help="device-info / heartbeat / upgrade-status / rollouts: the current values, then "
        "changes live",
    )
    p.add_argument("device", nargs="?", help="only this device")
    p.add_argument(
        "-l",
        "--selector",
        type=selector_arg,
        help="only devices whose labels match (as for devices), and their rollouts",
    )
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
