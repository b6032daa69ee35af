"""What `rollout create` checks and plans: the devices, their releases, the signing key.

Everything is checked before anything is stored: the devices the selector (or the
names) give and their arch, the signed release of the version for every arch,
a request signed with the key and verified, the budget against the number of
devices, and the record against the server's max_payload.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harmony_core.bus import Bus
from harmony_core.contracts import (
    Artifact,
    DeviceInfo,
    ReleaseManifest,
    Rollout,
    RolloutDevice,
    RolloutWave,
    dump_json,
    utcnow,
)
from harmony_core.durations import format_duration
from harmony_core.envelope import VerifyingKey, keyid_of, verify_envelope
from harmony_core.errors import RolloutError, UpgradeError
from harmony_core.selectors import Selector
from harmony_core.settings import NatsSection
from harmony_fleet.devices import list_devices
from harmony_fleet.releases import fetch_release
from harmony_fleet.rollout.plan import Budget, budget_problems, plan_waves
from harmony_fleet.upgrade import sign_upgrade

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["Wanted", "plan_rollout"]


@dataclass(frozen=True)
class Wanted:
    """What the operator asked for (`rollout create`'s options)."""

    name: str
    version: str
    selector: Selector | None  # or the devices named
    devices: Sequence[str]
    arch: str | None  # of devices without DeviceInfo
    waves: Sequence[float]
    budget: Budget
    bake_s: float
    deadline_s: float
    confirm_window_s: float | None
    allow_downgrade: bool
    created_by: str


async def _targets(bus: Bus, n: NatsSection, w: Wanted) -> dict[str, str]:
    """Device id -> arch of everything the rollout is for; RolloutError when that is nobody."""
    found: dict[str, str | None] = {}
    if w.selector is not None:
        for row in await list_devices(bus, n, w.selector):
            found[row.device_id] = row.arch
        if not found:
            sel = str(w.selector)
            raise RolloutError(
                f"no device matches -l '{sel}'; see harmony-fleet devices -l '{sel}'"
            )
    else:
        for device in w.devices:
            e = await bus.kv_get(n.device_info_bucket, device)
            found[device] = DeviceInfo.model_validate_json(e.value).arch if e else None
    out: dict[str, str] = {}
    lacking = []
    for device, arch in found.items():
        if arch := arch or w.arch:
            out[device] = arch
        else:
            lacking.append(device)
    if lacking:
        raise RolloutError(
            f"no DeviceInfo tells the arch of {', '.join(lacking)}; pass --arch (amd64, arm64, ...)"
        )
    return out


async def _releases(
    bus: Bus,
    n: NatsSection,
    version: str,
    targets: dict[str, str],
    trusted: Mapping[str, VerifyingKey],
) -> dict[str, ReleaseManifest]:
    out: dict[str, ReleaseManifest] = {}
    for arch in sorted(set(targets.values())):
        try:
            out[arch] = await fetch_release(bus, n, version, arch, trusted)
        except UpgradeError as e:
            users = sorted(d for d, a in targets.items() if a == arch)
            shown = ", ".join(users[:3]) + (f" and {len(users) - 3} more" if len(users) > 3 else "")
            raise RolloutError(f"{version} for {arch} (devices {shown}): {e}") from e
    return out


def _check_signing(key: Ed25519PrivateKey, releases: dict[str, ReleaseManifest]) -> None:
    """Sign one request per release and verify it, as a device would, before anything is stored."""
    now = utcnow()
    public = {keyid_of(key.public_key()): key.public_key()}
    for m in releases.values():
        _, env = sign_upgrade(
            m, "plan-check", key, bucket="check", request_id="plan-check", issued_at=now,
            expires_s=60,
        )  # fmt: skip
        verify_envelope(env, public)


async def plan_rollout(
    bus: Bus,
    n: NatsSection,
    w: Wanted,
    key: Ed25519PrivateKey,
    trusted: Mapping[str, VerifyingKey],
) -> Rollout:
    """The rollout `w` asks for, every check passed; RolloutError (or UpgradeError) saying
    what to do otherwise. Nothing is written."""
    if w.confirm_window_s is not None and w.deadline_s <= w.confirm_window_s:
        raise RolloutError(
            f"the deadline {format_duration(w.deadline_s)} is not longer than the confirm "
            f"window {format_duration(w.confirm_window_s)}: no device could end in time; "
            "give a longer --deadline"
        )
    targets = await _targets(bus, n, w)
    if problems := budget_problems(len(targets), w.budget):
        raise RolloutError("; ".join(problems))
    releases = await _releases(bus, n, w.version, targets, trusted)
    _check_signing(key, releases)
    now = utcnow()
    r = Rollout(
        name=w.name,
        uid=uuid.uuid4().hex[:12],
        version=w.version,
        selector=str(w.selector) if w.selector is not None else None,
        created_at=now,
        created_by=w.created_by,
        keyid=keyid_of(key.public_key()),
        releases={
            a: Artifact(bucket=n.artifacts_bucket, name=m.name, sha256=m.sha256, size=m.size)
            for a, m in releases.items()
        },
        confirm_window_s=w.confirm_window_s,
        allow_downgrade=w.allow_downgrade,
        bake_s=w.bake_s,
        deadline_s=w.deadline_s,
        max_failures=w.budget.max_failures,
        max_failures_percent=w.budget.max_failures_percent,
        min_executed=w.budget.min_executed,
        waves=[
            RolloutWave(percent=pct, devices=[RolloutDevice(id=d, arch=targets[d]) for d in ids])
            for pct, ids in plan_waves(w.name, targets, w.waves)
        ],
        updated_at=now,
    )
    size, limit = len(dump_json(r)), bus.max_payload
    if limit is not None and size > limit:
        raise RolloutError(
            f"the rollout's record would be {size} bytes, more than the server's max_payload "
            f"{limit}: split it into smaller rollouts with a narrower -l"
        )
    return r
