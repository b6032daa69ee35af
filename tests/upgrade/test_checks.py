"""Every refusal reason of the manifest checks, as a table."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from agent.upgrade.checks import CheckContext, DiskSpace, check_request, disk_needs
from agent.upgrade.semver import compare_versions, parse_version
from harmony_core.contracts import Artifact
from tests.upgrade.helpers import NOW, make_request

CTX = CheckContext(device_id="dev-1", arch="amd64", running_version="0.1.0", now=NOW)
ART = Artifact(bucket="agent-artifacts", name="x.deb", sha256="b" * 64, size=1000)


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
        ({"target_version": "latest"}, CTX, "not a version"),
        ({"artifact": ART}, replace(CTX, rolled_back_digests={"b" * 64}), "already rolled back"),
        ({}, replace(CTX, disk=(DiskSpace("/var/lib/x", 10 * 2**20, 100 * 2**20),)),
         "not enough free disk on /var/lib/x"),
        ({"artifact": ART.model_copy(update={"name": "../../etc/passwd"})}, CTX,
         "not allowed"),
    ],
    ids=["other-device", "other-arch", "expired", "expires-before-issued", "replayed",
         "downgrade", "same-version", "bad-version", "rolled-back-digest", "disk", "bad-name"],
)
def test_each_refusal_has_its_reason(over: dict[str, Any], ctx: CheckContext, reason: str) -> None:
    reasons = check_request(make_request(**over), ctx)
    assert reasons, "expected a refusal"
    assert reason in reasons[0]


def test_downgrade_is_allowed_when_asked() -> None:
    assert check_request(make_request(target_version="0.0.9", allow_downgrade=True), CTX) == []


def test_rolled_back_digest_may_be_retried_explicitly() -> None:
    ctx = replace(CTX, rolled_back_digests={"b" * 64}, retry_rolled_back=True)
    assert check_request(make_request(artifact=ART), ctx) == []


def test_disk_needs_adds_up_on_one_filesystem() -> None:
    same = disk_needs(100 * 2**20, ("/var", 1), ("/opt", 1))
    split = disk_needs(100 * 2**20, ("/var", 1), ("/opt", 2))
    assert list(same) == [1]
    assert same[1] == split[1] + split[2] - 64 * 2**20


@pytest.mark.parametrize(
    ("a", "b", "order"),
    [
        ("0.2.0", "0.1.9", 1), ("1.0.0", "1.0.0", 0), ("1.0.0-rc.1", "1.0.0", -1),
        ("1.0.0-rc.2", "1.0.0-rc.10", -1), ("1.0.0-alpha", "1.0.0-1", 1),
        ("1.0.0+build.5", "1.0.0", 0), ("0.10.0", "0.9.0", 1),
    ],
)
def test_version_order(a: str, b: str, order: int) -> None:
    assert compare_versions(a, b) == order


def test_bad_version_is_an_error() -> None:
    with pytest.raises(ValueError, match="is not a version"):
        parse_version("1.2")
