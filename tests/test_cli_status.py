"""`harmony-agent status`: only this config's agent, and JSON whenever --json is asked for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from agent.health import write_health
from harmony_core.contracts import Health, NatsHealth

EX_NOT_RUNNING = 3


def _config(tmp_path: Path, device_id: str = "dev-a") -> tuple[Path, Path]:
    health = tmp_path / "run" / "health.json"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[agent]\ndevice_id = "{device_id}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'health_file = "{health}"\n'
    )
    return cfg, health


def _health(device_id: str, pid: int) -> Health:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    return Health(
        version="9.9.9",
        pid=pid,
        device_id=device_id,
        started_at=t,
        updated_at=t,
        ready=True,
        nats=NatsHealth(state="connected", server="nats://127.0.0.1:4222"),
    )


def _status(cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "-c", str(cfg), "status", *extra],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_status_refuses_the_health_file_of_another_device(tmp_path: Path) -> None:
    cfg, health = _config(tmp_path, "dev-a")
    write_health(health, _health("dev-b", os.getpid()))  # alive: looks like a running agent
    r = _status(cfg)
    assert r.returncode not in (0, EX_NOT_RUNNING), r
    assert "dev-b" in r.stderr and "dev-a" in r.stderr and str(health) in r.stderr
    assert "9.9.9" not in r.stdout + r.stderr  # never describes the other agent
    rj = _status(cfg, "--json")
    assert rj.returncode == r.returncode
    body = json.loads(rj.stdout)
    assert body["running"] is None
    assert (body["device_id"], body["health_device_id"]) == ("dev-a", "dev-b")
    assert "dev-b" in body["error"]


def test_status_json_when_no_agent_runs(tmp_path: Path) -> None:
    cfg, health = _config(tmp_path)
    r = _status(cfg, "--json")
    assert r.returncode == EX_NOT_RUNNING
    body = json.loads(r.stdout)
    assert body["running"] is False
    assert str(health) in body["reason"]
    text = _status(cfg)
    assert text.returncode == EX_NOT_RUNNING
    assert text.stdout == "" and "not running" in text.stderr


def test_status_json_when_the_agent_died_without_cleaning_up(tmp_path: Path) -> None:
    cfg, health = _config(tmp_path)
    pid = _dead_pid()
    write_health(health, _health("dev-a", pid))
    r = _status(cfg, "--json")
    assert r.returncode == EX_NOT_RUNNING
    body = json.loads(r.stdout)
    assert body["running"] is False and str(pid) in body["reason"]
    assert body["device_id"] == "dev-a" and body["version"] == "9.9.9"


def test_status_describes_its_own_running_agent(tmp_path: Path) -> None:
    cfg, health = _config(tmp_path)
    write_health(health, _health("dev-a", os.getpid()))
    r = _status(cfg)
    assert r.returncode == 0, r.stderr
    assert "dev-a" in r.stdout and "9.9.9" in r.stdout
    body = json.loads(_status(cfg, "--json").stdout)
    assert body["running"] is True and body["device_id"] == "dev-a"
