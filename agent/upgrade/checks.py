"""Manifest checks: may this device act on this request? Pure: every fact is passed in.

Each check returns a reason a person understands, or nothing. The agent runs
them before anything changes; the root-side switch runs them again on its own
facts, because it trusts nothing the agent wrote.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime

from agent.upgrade.semver import compare_versions, parse_version
from harmony_core.contracts import UpgradeRequest

__all__ = [
    "MARGIN_BYTES",
    "CheckContext",
    "DiskSpace",
    "check_request",
    "disk_needs",
    "first_reason",
]

# Kept free on every filesystem we write to, so an upgrade never fills a disk.
MARGIN_BYTES = 64 * 1024 * 1024
# A release unpacks to a few times the size of its compressed .deb.
EXTRACT_FACTOR = 4
_ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,200}$")


@dataclass(frozen=True)
class DiskSpace:
    """Free bytes on one filesystem and what this upgrade would write there."""

    path: str
    free: int
    needed: int


@dataclass(frozen=True)
class CheckContext:
    device_id: str
    arch: str
    running_version: str
    now: datetime
    seen_request_ids: Collection[str] = frozenset()
    rolled_back_digests: Collection[str] = frozenset()
    disk: tuple[DiskSpace, ...] = ()
    # Set by the signed payload (`retry_rolled_back: true`): try a digest that rolled back.
    retry_rolled_back: bool = False


def disk_needs(size: int, spool: tuple[str, int], releases: tuple[str, int]) -> dict[int, int]:
    """Bytes needed per filesystem (st_dev) for an artifact of `size`.

    The spool holds the download and the root side's copy of it; the releases
    filesystem holds the extracted release. The two may be one filesystem.
    """
    needs: dict[int, int] = {}
    for (_path, dev), amount in ((spool, 2 * size), (releases, EXTRACT_FACTOR * size)):
        needs[dev] = needs.get(dev, 0) + amount
    return {dev: n + MARGIN_BYTES for dev, n in needs.items()}


def _device(r: UpgradeRequest, c: CheckContext) -> str | None:
    if r.device_id != c.device_id:
        return f"the request is for device {r.device_id!r}, this is {c.device_id!r}"
    return None


def _arch(r: UpgradeRequest, c: CheckContext) -> str | None:
    if r.arch != c.arch:
        return f"the artifact is built for {r.arch}, this device is {c.arch}"
    return None


def _expiry(r: UpgradeRequest, c: CheckContext) -> str | None:
    if r.expires_at <= r.issued_at:
        return "the request expires before it was issued"
    if r.expires_at <= c.now:
        return f"the request expired at {r.expires_at.isoformat()}; sign a new one"
    return None


def _replay(r: UpgradeRequest, c: CheckContext) -> str | None:
    if r.request_id in c.seen_request_ids:
        return f"request id {r.request_id!r} was already handled (replay); use a new request id"
    return None


def _version(r: UpgradeRequest, c: CheckContext) -> str | None:
    try:
        parse_version(r.target_version)
    except ValueError as e:
        return f"target version: {e}"
    try:
        order = compare_versions(r.target_version, c.running_version)
    except ValueError:
        # A running build with an odd version (a dev build) can only be replaced on purpose.
        order = -1
    if order == 0:
        return f"version {r.target_version} is already running"
    if order < 0 and not r.allow_downgrade:
        return (
            f"version {r.target_version} is older than the running {c.running_version}; "
            "set allow_downgrade to go back"
        )
    return None


def _artifact(r: UpgradeRequest, c: CheckContext) -> str | None:
    if not _ARTIFACT_NAME.match(r.artifact.name) or not _ARTIFACT_NAME.match(r.artifact.bucket):
        return "the artifact's bucket or name has characters that are not allowed"
    return None


def _rolled_back(r: UpgradeRequest, c: CheckContext) -> str | None:
    if r.artifact.sha256 in c.rolled_back_digests and not c.retry_rolled_back:
        return (
            f"artifact {r.artifact.sha256[:12]} already rolled back on this device; "
            "send a new request with retry_rolled_back to try it again"
        )
    return None


def _disk(r: UpgradeRequest, c: CheckContext) -> str | None:
    for d in c.disk:
        if d.free < d.needed:
            return (
                f"not enough free disk on {d.path}: {d.free // 2**20} MiB free, "
                f"{d.needed // 2**20} MiB needed; free some space and send a new request"
            )
    return None


_CHECKS: tuple[Callable[[UpgradeRequest, CheckContext], str | None], ...] = (
    _device,
    _arch,
    _expiry,
    _replay,
    _artifact,
    _version,
    _rolled_back,
    _disk,
)


def check_request(request: UpgradeRequest, ctx: CheckContext) -> list[str]:
    """Every reason to refuse `request`, most fundamental first; empty means go."""
    return [reason for check in _CHECKS if (reason := check(request, ctx))]


def first_reason(request: UpgradeRequest, ctx: CheckContext) -> str | None:
    reasons = check_request(request, ctx)
    return reasons[0] if reasons else None
