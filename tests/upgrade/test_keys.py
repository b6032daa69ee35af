"""Trusted keys on disk: only from a directory and files no one else can write (like ssh)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.upgrade.keys import load_trusted_keys
from harmony_core.envelope import keyid_of
from tests.upgrade.helpers import write_pub

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
KID = keyid_of(KEY.public_key())
STRANGER = 54321  # a uid that is neither root nor this user

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def _keys_dir(base: Path, mode: int = 0o755) -> Path:
    d = base / "keys"
    write_pub(KEY, d)
    d.chmod(mode)
    (d / "operator.pub").chmod(0o644)
    return d


def test_a_safe_directory_loads_its_keys(tmp_path: Path) -> None:
    keys, problems = load_trusted_keys(_keys_dir(tmp_path))
    assert list(keys) == [KID] and problems == []


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777, 0o1777], ids=oct)
def test_a_directory_others_can_write_yields_no_key_at_all(tmp_path: Path, mode: int) -> None:
    d = _keys_dir(tmp_path, mode)
    keys, problems = load_trusted_keys(d)
    assert keys == {}
    (p,) = problems
    assert str(d) in p and "writable by group or others" in p and "chmod go-w" in p


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666], ids=oct)
def test_a_key_file_others_can_write_is_skipped(tmp_path: Path, mode: int) -> None:
    d = _keys_dir(tmp_path)
    bad = write_pub(OTHER, d, "other")
    bad.chmod(mode)
    keys, problems = load_trusted_keys(d)
    assert list(keys) == [KID], "the safe key still counts, the other does not"
    (p,) = problems
    assert str(bad) in p and "writable by group or others" in p


def test_an_ancestor_others_can_write_taints_the_directory(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    d = _keys_dir(open_dir)
    open_dir.chmod(0o777)  # anyone could rename keys/ away and put their own in its place
    keys, problems = load_trusted_keys(d)
    assert keys == {}
    (p,) = problems
    assert str(open_dir) in p and "writable by group or others" in p


def test_a_sticky_ancestor_like_tmp_is_fine(tmp_path: Path) -> None:
    sticky = tmp_path / "sticky"
    d = _keys_dir(sticky)
    sticky.chmod(0o1777)  # others may not rename what they do not own
    keys, problems = load_trusted_keys(d)
    assert list(keys) == [KID] and problems == []


def test_a_symlinked_directory_is_judged_where_it_points(tmp_path: Path) -> None:
    real = _keys_dir(tmp_path / "real", 0o777)
    link = tmp_path / "keys-link"
    link.symlink_to(real)
    keys, problems = load_trusted_keys(link)
    assert keys == {} and str(real) in problems[0]


def test_a_symlinked_key_file_is_skipped(tmp_path: Path) -> None:
    d = _keys_dir(tmp_path)
    elsewhere = write_pub(OTHER, tmp_path / "elsewhere")
    (d / "other.pub").symlink_to(elsewhere)
    keys, problems = load_trusted_keys(d)
    assert list(keys) == [KID]
    (p,) = problems
    assert "other.pub" in p and "symlink" in p


def test_a_missing_directory_is_a_problem_not_silence(tmp_path: Path) -> None:
    keys, problems = load_trusted_keys(tmp_path / "nope")
    assert keys == {}
    (p,) = problems
    assert str(tmp_path / "nope") in p


@as_root
def test_a_directory_owned_by_someone_else_yields_no_key(tmp_path: Path) -> None:
    d = _keys_dir(tmp_path)
    os.chown(d, STRANGER, -1)
    keys, problems = load_trusted_keys(d)
    assert keys == {}
    (p,) = problems
    assert f"owned by uid {STRANGER}" in p and "chown root" in p


@as_root
def test_a_key_file_owned_by_someone_else_is_skipped(tmp_path: Path) -> None:
    d = _keys_dir(tmp_path)
    bad = write_pub(OTHER, d, "other")
    os.chown(bad, STRANGER, -1)
    keys, problems = load_trusted_keys(d)
    assert list(keys) == [KID]
    (p,) = problems
    assert str(bad) in p and f"owned by uid {STRANGER}" in p
