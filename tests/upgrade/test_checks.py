"""Every refusal reason of the manifest checks, as a table."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from agent.upgrade.checks import CheckContext, DiskSpace, check_request, disk_needs
from harmony_core.contracts import Artifact
from tests.upgrade.helpers import NOW, make_request

CTX = CheckContext(device_id="dev-1", arch="amd64", running_version="0.1.0", now=NOW)
ART = Artifact(bucket="agent-artifacts", name="x.deb", sha256="b" * 64, size=1000)
MiB = 2**20
PLENTY = 10**12


def test_a_good_request_passes() -> None:
    assert check_request(make_request(), CTX) == []


@pytest.mark.parametrize(
    ("over", "ctx", "reason"),
    [
        ({"device_id": "dev-2"}, CTX, "is for device 'dev-2'"),
        ({"arch": "arm64"}, CTX, "built for arm64, this device is amd64"),
        ({"expires_at": NOW - timedelta(seconds=1)}, CTX, "expired"),
        ({"expires_at": NOW - timedelta(hours=2)}, CTX, "expires before it was issued"),
        ({}, replace(CTX, seen_request_ids={"req-1"}), "already handled"),
        ({"target_version": "0.0.9"}, CTX, "older than the running 0.1.0"),
        ({"target_version": "0.1.0"}, CTX, "already running"),
        ({"target_version": "latest"}, CTX, "not a release version"),
        ({"target_version": "0.2.0-rc.1"}, CTX, "no '-'"),
        ({"target_version": "0.1.0~rc.1"}, CTX, "older than the running 0.1.0"),
        ({"artifact": ART}, replace(CTX, rolled_back_digests={"b" * 64}), "already rolled back"),
        ({}, replace(CTX, spool_disk=DiskSpace("/var/lib/x", 1, 10 * MiB),
                     releases_disk=DiskSpace("/opt/x", 2, PLENTY)),
         "not enough free disk on /var/lib/x: 10 MiB free"),
        ({}, replace(CTX, spool_disk=DiskSpace("/var/lib/x", 1, PLENTY),
                     releases_disk=DiskSpace("/opt/x", 2, 10 * MiB)),
         "not enough free disk on /opt/x"),
        # One filesystem for both: named once, by the spool's path, needing the sum.
        ({}, replace(CTX, spool_disk=DiskSpace("/var/lib/x", 1, 64 * MiB + 5000),
                     releases_disk=DiskSpace("/opt/x", 1, 64 * MiB + 5000)),
         "not enough free disk on /var/lib/x"),
        ({"artifact": ART.model_copy(update={"name": "../../etc/passwd"})}, CTX,
         "not allowed"),
    ],
    ids=["other-device", "other-arch", "expired", "expires-before-issued", "replayed",
         "downgrade", "same-version", "bad-version", "semver-pre-release",
         "pre-release-of-running", "rolled-back-digest", "spool-disk",
         "releases-disk", "one-disk-for-both", "bad-name"],
)
def test_each_refusal_has_its_reason(over: dict[str, Any], ctx: CheckContext, reason: str) -> None:
    reasons = check_request(make_request(**over), ctx)
    assert reasons, "expected a refusal"
    assert reason in reasons[0]


def test_downgrade_is_allowed_when_asked() -> None:
    assert check_request(make_request(target_version="0.0.9", allow_downgrade=True), CTX) == []


def test_rolled_back_digest_may_be_retried_explicitly() -> None:
    ctx = replace(CTX, rolled_back_digests={"b" * 64})
    assert check_request(make_request(artifact=ART, retry_rolled_back=True), ctx) == []


def test_enough_disk_passes() -> None:
    # 1000 bytes: 2 x 1000 on the spool, 4 x 1000 for the release, plus the margin on each.
    ctx = replace(CTX, spool_disk=DiskSpace("/var", 1, 64 * MiB + 2000),
                  releases_disk=DiskSpace("/opt", 2, 64 * MiB + 4000))
    assert check_request(make_request(), ctx) == []
    assert check_request(make_request(), replace(ctx, spool_disk=DiskSpace("/var", 1, 0)))


def test_disk_needs_adds_up_on_one_filesystem() -> None:
    var, opt1, opt2 = DiskSpace("/var", 1, 0), DiskSpace("/opt", 1, 0), DiskSpace("/opt", 2, 0)
    same = disk_needs(100 * MiB, var, opt1)
    split = disk_needs(100 * MiB, var, opt2)
    assert list(same) == [1]
    assert same[1] == split[1] + split[2] - 64 * MiB


def test_versions_are_in_dpkg_order() -> None:
    # '+' is no build metadata to dpkg: 0.1.0+hotfix1 is newer than 0.1.0 (semver: the same).
    assert check_request(make_request(target_version="0.1.0+hotfix1"), CTX) == []
    assert check_request(make_request(target_version="0.1.0~rc.1", allow_downgrade=True), CTX) == []
