"""`harmony-fleet keygen | publish-artifact | upgrade | upgrade-status` (ADR-022)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from harmony_core.bus import Bus, KvEntry
from harmony_core.contracts import (
    MAX_CONFIRM_WINDOW_S,
    Artifact,
    DeviceInfo,
    ReleaseManifest,
    UpgradeRequest,
    UpgradeStatus,
    format_ts,
    utcnow,
)
from harmony_core.durations import parse_duration
from harmony_core.envelope import VerifyingKey, keyid_of
from harmony_core.selectors import match_labels
from harmony_core.settings import NatsSection
from harmony_core.versions import parse_version
from harmony_fleet.devices import require_device
from harmony_fleet.keys import load_public_keys, load_signing_key, private_pem, public_pem
from harmony_fleet.options import selector_arg
from harmony_fleet.releases import fetch_release, publish_release
from harmony_fleet.signing import sign_request
from harmony_fleet.terminal import escape_controls

__all__ = ["TERMINAL_PHASES", "register", "sign_upgrade", "status_row"]

TERMINAL_PHASES = frozenset({"committed", "rejected", "rolled_back", "failed"})
_HEADER = ("DEVICE", "PHASE", "FROM→TO", "PROGRESS", "REASON", "UPDATED")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _confirm_window(text: str) -> float:
    seconds = _duration(text)
    if not 0 < seconds <= MAX_CONFIRM_WINDOW_S:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a confirm window is longer than 0s and at most 24h (devices refuse others)"
        )
    return seconds


def _release_version(text: str) -> str:
    """A version devices accept and order as dpkg does (harmony_core.versions)."""
    try:
        parse_version(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return text


# --- keygen -------------------------------------------------------------------


async def _cmd_keygen(args: argparse.Namespace, bus: Bus | None, n: NatsSection | None) -> int:
    prefix = Path(args.out)
    key_path, pub_path = prefix.with_suffix(".key"), prefix.with_suffix(".pub")
    for p in (key_path, pub_path):
        if p.exists():
            print(f"harmony-fleet: {p} exists; choose another --out or remove it", file=sys.stderr)
            return 1
    key = Ed25519PrivateKey.generate()
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem(key))
    pub_path.write_bytes(public_pem(key.public_key()))
    print(f"private key: {key_path} (keep it secret; sign with --key {key_path})")
    print(f"public key:  {pub_path} (copy to /etc/harmony-agent/keys/ on every device)")
    print(f"keyid:       {keyid_of(key.public_key())}")
    return 0


# --- publish-artifact ------------------------------------------------------------


async def _cmd_publish(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    key = load_signing_key(Path(args.key))
    published = await publish_release(bus, n, Path(args.file), key)
    m, keyid = published.manifest, keyid_of(key.public_key())
    if args.json:
        print(
            json.dumps(
                {
                    "bucket": n.artifacts_bucket,
                    "name": m.name,
                    "version": m.version,
                    "arch": m.arch,
                    "sha256": m.sha256,
                    "size": m.size,
                    "manifest": published.manifest_object,
                    "keyid": keyid,
                    "published_at": format_ts(m.published_at),
                }
            )
        )
    else:
        print(
            f"published {n.artifacts_bucket}/{m.name}  version {m.version}  "
            f"arch {m.arch}  {m.size} bytes  sha256 {m.sha256}"
        )
        print(f"signed    {n.artifacts_bucket}/{published.manifest_object}  keyid {keyid}")
    return 0


# --- upgrade ---------------------------------------------------------------------


def sign_upgrade(
    release: ReleaseManifest,
    device: str,
    key: Ed25519PrivateKey,
    *,
    bucket: str,
    request_id: str,
    issued_at: datetime,
    expires_s: float,
    confirm_window_s: float | None = None,
    allow_downgrade: bool = False,
    retry_rolled_back: bool = False,
) -> tuple[UpgradeRequest, bytes]:
    """The upgrade primitive: `device`'s request to run `release` (a verified manifest of
    artifacts store `bucket`), and its signed envelope as written to `agent-upgrade`."""
    req = UpgradeRequest(
        request_id=request_id,
        device_id=device,
        target_version=release.version,
        arch=release.arch,
        artifact=Artifact(
            bucket=bucket, name=release.name, sha256=release.sha256, size=release.size
        ),
        issued_at=issued_at,
        expires_at=issued_at + timedelta(seconds=expires_s),
        confirm_window_s=confirm_window_s,
        allow_downgrade=allow_downgrade,
    )
    extra = {"retry_rolled_back": True} if retry_rolled_back else None
    return req, sign_request(req, key, extra).model_dump_json().encode()


async def _targets(args: argparse.Namespace, bus: Bus, n: NatsSection) -> dict[str, str | None]:
    """Device id -> arch (None when the device never published its DeviceInfo)."""
    infos: dict[str, DeviceInfo] = {}
    for e in await bus.kv_entries(n.device_info_bucket):
        try:
            infos[e.key] = DeviceInfo.model_validate_json(e.value)
        except ValidationError:
            continue
    if args.selector is not None:
        sel = args.selector
        return {d: i.arch for d, i in sorted(infos.items()) if match_labels(sel, i.labels)}
    return {d: (infos[d].arch if d in infos else None) for d in args.devices}


async def _cmd_upgrade(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    if bool(args.devices) == (args.selector is not None):
        print("harmony-fleet: name devices or give -l SELECTOR (one of them)", file=sys.stderr)
        return 2
    key = load_signing_key(Path(args.key))
    # The releases it signs for are those a trusted key published (harmony_fleet.manifest).
    trusted: dict[str, VerifyingKey] = {keyid_of(key.public_key()): key.public_key()}
    if args.trusted_keys is not None:
        trusted.update(load_public_keys(Path(args.trusted_keys)))
    targets = await _targets(args, bus, n)
    if not targets:
        print(
            "harmony-fleet: no device matches the selector (see harmony-fleet devices)",
            file=sys.stderr,
        )
        return 1
    arches: dict[str, str] = {}
    rc = 0
    for device, arch in targets.items():
        arch = arch or args.arch
        if arch is None:
            print(
                escape_controls(f"{device}: skipped: no DeviceInfo to tell its arch (pass --arch)"),
                file=sys.stderr,
            )
            rc = 1
            continue
        arches[device] = arch
    # Every release is checked before any request is written: all devices, or none.
    releases: dict[str, ReleaseManifest] = {}
    for arch in sorted(set(arches.values())):
        releases[arch] = await fetch_release(bus, n, args.version, arch, trusted)
    now = utcnow()
    for device, arch in arches.items():
        a = releases[arch]
        req, env = sign_upgrade(
            a,
            device,
            key,
            bucket=n.artifacts_bucket,
            request_id=f"{device}-{uuid.uuid4().hex[:12]}",
            issued_at=now,
            expires_s=args.expires,
            confirm_window_s=args.confirm_window,
            allow_downgrade=args.allow_downgrade,
            retry_rolled_back=args.retry_rolled_back,
        )
        await bus.kv_put(n.upgrade_bucket, device, env)
        said = f"{device}: requested {args.version} ({a.name}), request {req.request_id}"
        print(escape_controls(said))
    return rc


# --- upgrade-status ----------------------------------------------------------------


def status_row(st: UpgradeStatus) -> tuple[str, ...]:
    """One table row: device, phase, from→to, progress, reason, updated.

    What the device wrote is shown with its control characters escaped (`terminal`).
    """
    row = (
        st.device_id,
        st.phase,
        f"{st.from_version or '?'}→{st.target_version or '?'}",
        f"{st.progress}%" if st.progress is not None else "",
        (st.reason or "").replace("\n", " "),
        format_ts(st.updated_at)[:19] + "Z",
    )
    return tuple(escape_controls(c) for c in row)


def _table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in [_HEADER, *rows]) for i in range(len(_HEADER))]
    widths[4] = min(widths[4], 70)
    for r in [_HEADER, *rows]:
        cells = [c if len(c) <= widths[i] else c[: widths[i] - 1] + "…" for i, c in enumerate(r)]
        out.write("  ".join(c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip() + "\n")


def _parse_status(e: KvEntry) -> UpgradeStatus | None:
    try:
        return UpgradeStatus.model_validate_json(e.value)
    except ValidationError:
        return None


async def _cmd_status(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    out = sys.stdout
    if args.device:
        await require_device(bus, n, args.device)
    key = args.device or ">"
    latest: dict[str, UpgradeStatus] = {}
    follow = args.follow or args.wait
    initial = True
    async for e in bus.kv_watch(n.upgrade_status_bucket, key):
        if e is None:
            initial = False
            rows = [latest[d] for d in sorted(latest)]
            if args.json:
                for st in rows:
                    out.write(st.model_dump_json() + "\n")
            elif rows:
                _table([status_row(st) for st in rows], out)
            else:
                out.write("no upgrade status yet\n")
            out.flush()
            if not follow or (args.wait and _all_done(latest)):
                break
            continue
        parsed = None if e.deleted else _parse_status(e)
        if parsed is None:
            continue
        st = parsed
        latest[e.key] = st
        if not initial:
            if args.json:
                out.write(st.model_dump_json() + "\n")
            else:
                out.write("  ".join(status_row(st)).rstrip() + "\n")
            out.flush()
            if args.wait and _all_done(latest):
                break
    if args.wait:
        return 0 if latest and all(s.phase == "committed" for s in latest.values()) else 1
    return 0


def _all_done(latest: dict[str, UpgradeStatus]) -> bool:
    return bool(latest) and all(s.phase in TERMINAL_PHASES for s in latest.values())


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    k = sub.add_parser(
        "keygen", parents=parents, help="make an Ed25519 key pair for signing upgrade requests"
    )
    k.add_argument(
        "--out",
        default="harmony-upgrade",
        help="path prefix: writes PREFIX.key (0600) and PREFIX.pub",
    )
    k.set_defaults(func=_cmd_keygen, needs_bus=False)

    p = sub.add_parser(
        "publish-artifact",
        parents=parents,
        help="upload a harmony-agent .deb and its signed release manifest",
    )
    p.add_argument("file", help="the .deb (as built by `make deb`)")
    p.add_argument(
        "--key",
        required=True,
        help="the private key from `harmony-fleet keygen`: signs the release manifest",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_publish)

    u = sub.add_parser(
        "upgrade", parents=parents, help="sign and send an upgrade request to devices"
    )
    u.add_argument("devices", nargs="*", metavar="DEVICE", help="device ids")
    u.add_argument(
        "-l",
        "--selector",
        type=selector_arg,
        help="every device whose labels match, as kubectl -l: k=v,'k in (a,b)',!k,...",
    )
    u.add_argument(
        "--version",
        required=True,
        type=_release_version,
        help="the version to run (published before), e.g. 1.4.0 or 1.5.0~rc.1",
    )
    u.add_argument("--key", required=True, help="the private key from `harmony-fleet keygen`")
    u.add_argument(
        "--trusted-keys",
        metavar="DIR",
        help="also trust release manifests signed by the keys in DIR/*.pub "
        "(its own public half is always trusted)",
    )
    u.add_argument(
        "--confirm-window",
        type=_confirm_window,
        default=None,
        metavar="D",
        help='how long the new version must stay healthy, e.g. "2m", at most "24h" '
        "(default: the device's [upgrade] confirm_window)",
    )
    u.add_argument("--allow-downgrade", action="store_true", help="allow an older version")
    u.add_argument(
        "--retry-rolled-back",
        action="store_true",
        help="try again an artifact that already rolled back on a device",
    )
    u.add_argument(
        "--expires",
        type=_duration,
        default=3600.0,
        metavar="D",
        help='the request is void after this long (default "1h")',
    )
    u.add_argument("--arch", help="arch of devices without DeviceInfo (amd64, arm64, ...)")
    u.set_defaults(func=_cmd_upgrade)

    s = sub.add_parser(
        "upgrade-status",
        parents=parents,
        help="where upgrades stand: phase, versions, reason (-f to follow)",
    )
    s.add_argument("device", nargs="?", help="only this device")
    s.add_argument("-f", "--follow", action="store_true", help="print every change")
    s.add_argument(
        "-w",
        "--wait",
        action="store_true",
        help="follow until every shown upgrade ended; exit 0 only if all committed",
    )
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.set_defaults(func=_cmd_status)
