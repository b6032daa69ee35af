"""The health file: written atomically by the agent, read safely by `status` and by root."""

from __future__ import annotations

import os
from pathlib import Path

from agent.health import read_health, write_health
from harmony_core.contracts import Health, NatsHealth, dump_json, utcnow
from tests.blocking import must_return_within


def _health() -> Health:
    return Health(
        device_id="dev-1", version="0.1.0", pid=os.getpid(), started_at=utcnow(),
        ready=True, nats=NatsHealth(state="connected"), updated_at=utcnow(),
    )


def test_written_then_read(tmp_path: Path) -> None:
    path = tmp_path / "run" / "health.json"
    h = _health()
    write_health(path, h)
    assert read_health(path) == h
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in path.parent.iterdir()] == ["health.json"]


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    # The root-side switch reads the agent's health file: the agent must not point it elsewhere.
    real = tmp_path / "elsewhere.json"
    write_health(real, _health())
    link = tmp_path / "health.json"
    link.symlink_to(real)
    assert read_health(link) is None


def test_a_fifo_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "health.json"
    os.mkfifo(fifo)
    with must_return_within(5):
        assert read_health(fifo) is None


def test_an_oversized_file_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    # Valid JSON, padded: only the size bound refuses it.
    path.write_bytes(b" " * (2 * 1024 * 1024) + dump_json(_health()))
    assert read_health(path) is None
