"""Release versions in dpkg's order, checked against dpkg itself; which versions are releases."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harmony_core.versions import (
    RELEASE_VERSION,
    Version,
    compare_versions,
    dpkg_compare,
    parse_version,
)

ROOT = Path(__file__).resolve().parents[2]
BUILD_SH = ROOT / "packaging" / "deb" / "build.sh"

# (a, b, order of a against b as dpkg says: -1 older, 0 same, 1 newer)
ORDER: list[tuple[str, str, int]] = [
    ("0.2.0", "0.1.9", 1),
    ("0.10.0", "0.9.0", 1),  # numeric runs are numbers
    ("9", "10", -1),
    ("1.0", "1.0", 0),
    ("1.0", "1.00", 0),  # leading zeros do not count
    ("007", "7", 0),
    ("1", "1.0", -1),
    ("1.0", "1.0.0", -1),
    ("1.2.3", "1.2.3.0", -1),
    ("1.5.0~rc.1", "1.5.0", -1),  # '~' sorts before anything, even the end
    ("1.5.0-rc.1", "1.5.0", 1),  # a '-' starts a revision: newer to dpkg, older to semver
    ("1.0.0+build.5", "1.0.0", 1),  # '+' is no build metadata to dpkg
    ("1.0.0rc1", "1.0.0", 1),
    ("1~", "1", -1),
    ("1~~", "1~", -1),
    ("1~~a", "1~~", 1),
    ("1~", "1~a", -1),
    ("1.0+~", "1.0+", -1),
    ("1.0+~", "1.0", 1),
    ("1.0~rc1", "1.0~rc10", -1),
    ("1.0~rc.2", "1.0~rc.10", -1),
    ("1.0~alpha", "1.0~beta", -1),
    ("1.0~rc1", "1.0~beta", 1),
    ("1.0a", "1.0", 1),
    ("1.0a", "1.0+", -1),  # letters sort before non-letters
    ("1.0+", "1.0.", -1),  # then by character code
    ("1.0a", "1.0A", 1),
    ("1.a", "1.1", 1),
    ("1:1.0", "1.0", 1),  # epochs
    ("2:1.0", "10.0", 1),
    ("0:1.0", "1.0", 0),
    ("1:0", "0:9", 1),
    ("1.0-1", "1.0-2", -1),  # revisions
    ("1.0-10", "1.0-9", 1),
    ("1.0-1", "1.0", 1),
    ("1.0-0", "1.0", 0),
    ("1.0-1~bpo1", "1.0-1", -1),
    ("1.0-a-b", "1.0-a", 1),  # the revision is after the last '-'
]


def _dpkg(a: str, b: str) -> int:
    def holds(op: str) -> bool:
        r = subprocess.run(["dpkg", "--compare-versions", a, op, b], capture_output=True)
        assert not r.stderr, r.stderr  # dpkg warns about a version it finds malformed
        return r.returncode == 0

    return -1 if holds("lt") else 0 if holds("eq") else 1


@pytest.mark.parametrize(("a", "b", "order"), ORDER, ids=[f"{a} vs {b}" for a, b, _ in ORDER])
def test_order_is_dpkgs(a: str, b: str, order: int) -> None:
    assert dpkg_compare(a, b) == order
    assert dpkg_compare(b, a) == -order
    if shutil.which("dpkg") is None:
        pytest.skip("no dpkg here to check the table against")
    assert _dpkg(a, b) == order, "the table itself is wrong: dpkg disagrees"


def test_sorting_release_versions_is_dpkgs_sort() -> None:
    names = ["1.5.0", "1.5.0~rc.1", "1.5.0+1", "1.4.10", "1.4.9", "1.5.0~rc.10", "1.5.0~beta"]
    ours = sorted(names, key=parse_version)
    theirs = sorted(names, key=functools.cmp_to_key(_dpkg))
    assert ours == theirs == [
        "1.4.9", "1.4.10", "1.5.0~beta", "1.5.0~rc.1", "1.5.0~rc.10", "1.5.0", "1.5.0+1",
    ]


def test_versions_equal_to_dpkg_are_equal_and_hash_alike() -> None:
    assert parse_version("1.0") == parse_version("1.00")
    assert hash(parse_version("1.0")) == hash(parse_version("1.00"))
    assert hash(parse_version("007")) == hash(parse_version("7"))
    assert parse_version("1.0") != parse_version("1.0.0")
    assert parse_version("1.0~") < parse_version("1.0") < parse_version("1.0+")
    assert compare_versions("1.5.0~rc.1", "1.5.0") == -1


@pytest.mark.parametrize(
    "text", ["0.1.0", "1.4.0", "1.5.0~rc.1", "0.2.0+hotfix1", "10", "1.0.0+e2e", "1" * 128]
)
def test_release_versions(text: str) -> None:
    assert isinstance(parse_version(text), Version)
    assert parse_version(text).text == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1.5.0-rc.1", r"no '-'.*1\.5\.0~rc\.1"),  # the hint says how to write a pre-release
        ("1:1.0", "no epoch"),
        ("v1.4.0", "not a release version"),
        ("latest", "not a release version"),
        ("", "not a release version"),
        (" 1.4.0", "not a release version"),
        ("1.4.0\n", "not a release version"),
        ("1.0_1", "not a release version"),
        ("1/2", "not a release version"),
        ("1" * 129, "not a release version"),
    ],
)
def test_not_release_versions(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_version(text)
    with pytest.raises(ValueError):
        compare_versions(text, "1.0")


def test_build_sh_refuses_what_the_agent_refuses() -> None:
    m = re.search(r'\[\[ "\$VERSION" =~ (\S+) \]\]', BUILD_SH.read_text())
    assert m is not None, "build.sh checks VERSION with one [[ =~ ]] test"
    assert m.group(1) == RELEASE_VERSION.pattern


@pytest.mark.parametrize("version", ["1.5.0-rc.1", "1:1.0", "v1", "1" * 129],
                         ids=["dash", "epoch", "v-prefix", "too-long"])
def test_build_sh_stops_at_once_on_a_version_that_is_not_a_release(
    version: str, tmp_path: Path
) -> None:
    env = {**os.environ, "VERSION": version, "SRC": str(ROOT), "OUT": str(tmp_path)}
    r = subprocess.run(["bash", str(BUILD_SH)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1
    assert "is not a Debian native version" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []
