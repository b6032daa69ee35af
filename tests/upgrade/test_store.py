"""The agent's replay store: durable, and safe to read whatever was left in its place."""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent.upgrade.store import ReplayStore, load_json
from tests.blocking import must_return_within


def test_remembered_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "upgrade" / "replay.json"
    s = ReplayStore(path)
    s.remember("req-1", 7, "a" * 64, "0.2.0")
    s.start("req-1")
    s.mark_rolled_back("a" * 64)
    again = ReplayStore(path)
    assert (again.last_revision, again.in_progress, again.rolled_back) == (7, "req-1", ["a" * 64])
    assert again.seen["req-1"] == {"revision": 7, "sha256": "a" * 64, "target": "0.2.0"}
    assert json.loads(path.read_text())["schema_version"] == 1
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_fifo_in_place_of_a_record_reads_as_absent(tmp_path: Path) -> None:
    fifo = tmp_path / "replay.json"
    os.mkfifo(fifo)
    with must_return_within(5):
        assert load_json(fifo) is None
        assert ReplayStore(fifo).seen == {}


def test_an_oversized_record_reads_as_absent(tmp_path: Path) -> None:
    path = tmp_path / "rolled-back.json"
    path.write_bytes(b" " * (5 * 1024 * 1024) + b'{"rolled_back": []}')
    assert load_json(path) is None


def test_a_symlinked_record_is_not_followed(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text('{"rolled_back": ["x"]}')
    (tmp_path / "link.json").symlink_to(real)
    assert load_json(tmp_path / "link.json") is None
    assert load_json(real) == {"rolled_back": ["x"]}
