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

from harmony_core.contracts import UpgradeRequest
from harmony_core.versions import compare_versions, parse_version

__all__ = [
    "EXTRACT_FACTOR",
    "MARGIN_BYTES",
    "CheckContext",
    "DiskSpace",
    "check_request",
    "disk_needs",
]

# Kept free on every filesystem we write to, so an upgrade never fills a disk.
MARGIN_BYTES = 64 * 1024 * 1024
# A release unpacks to a few times the size of its compressed .deb.
EXTRACT_FACTOR = 4
_ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,200}$")


@dataclass(frozen=True)
class DiskSpace:
    """One filesystem an upgrade writes to: a path on it, its st_dev, its free bytes."""

    path: str
    dev: int
    free: int


@dataclass(frozen=True)
class CheckContext:
    """The device's own facts a request is checked against (the side that checks gathers them)."""

    device_id: str
    arch: str
    running_version: str
    now: datetime
    seen_request_ids: Collection[str] = frozenset()
    rolled_back_digests: Collection[str] = frozenset()
    # The filesystems of the download spool and of the releases; None: not checked.
    spool_disk: DiskSpace | None = None
    releases_disk: DiskSpace | None = None


def disk_needs(size: int, spool: DiskSpace, releases: DiskSpace) -> dict[int, int]:
    """Bytes needed per filesystem (st_dev) for an artifact of `size`.

    The spool holds the download and the root side's copy of it; the releases
    filesystem holds the extracted release. The two may be one filesystem.
    """
    needs: dict[int, int] = {}
    for fs, amount in ((spool, 2 * size), (releases, EXTRACT_FACTOR * size)):
        needs[fs.dev] = needs.get(fs.dev, 0) + amount
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
        order = compare_versions(r.target_version, c.running_version)  # dpkg's order, apt's
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
    if r.artifact.sha256 in c.rolled_back_digests and not r.retry_rolled_back:
        return (
            f"artifact {r.artifact.sha256[:12]} already rolled back on this device; "
            "send a new request with retry_rolled_back to try it again"
        )
    return None


def _disk(r: UpgradeRequest, c: CheckContext) -> str | None:
    if c.spool_disk is None or c.releases_disk is None:
        return None
    needs = disk_needs(r.artifact.size, c.spool_disk, c.releases_disk)
    for d in (c.spool_disk, c.releases_disk):
        needed = needs.pop(d.dev, None)  # one filesystem is named once, by its first path
        if needed is not None and d.free < needed:
            return (
                f"not enough free disk on {d.path}: {d.free // 2**20} MiB free, "
                f"{needed // 2**20} MiB needed; free some space and send a new request"
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

