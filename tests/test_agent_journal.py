"""The agent's own lines go to a real journald with structured fields (as under systemd)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.agentproc import AgentProcess, write_config
from tests.logs.journald import Journald, unique
from tests.natsserver import NatsServer, wait_for


def _lines(**match: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["journalctl", "--no-pager", "-o", "json", *(f"{k}={v}" for k, v in match.items())],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.journald
def test_agent_lines_carry_device_id_and_event(
    journald: Journald, nats_js: NatsServer, tmp_path: Path
) -> None:
    dev = unique("dev")
    cfg = write_config(tmp_path / "agent.toml", servers=[nats_js.url], device_id=dev)
    agent = AgentProcess(cfg, env={"HARMONY_AGENT_LOG": "journal"})
    try:
        agent.wait_notify("READY", "1")
        wait_for(lambda: _lines(DEVICE_ID=dev, HARMONY_EVENT="started"), 10, "a started line")
        wait_for(
            lambda: _lines(DEVICE_ID=dev, HARMONY_EVENT="deviceinfo-published"),
            10,
            "a deviceinfo-published line",
        )
        (line,) = _lines(DEVICE_ID=dev, HARMONY_EVENT="started")
        assert line["SYSLOG_IDENTIFIER"] == "harmony-agent" and line["PRIORITY"] == "6"
        assert dev in line["MESSAGE"]
        assert agent.stderr() == ""  # nothing doubled on stderr
    finally:
        agent.stop()


@pytest.mark.journald
def test_bad_config_is_one_journal_line_with_its_path(journald: Journald, tmp_path: Path) -> None:
    bad = tmp_path / f"{unique('cfg')}.toml"
    bad.write_text("[agent]\ndevice_id = 'Not_Valid'\n")
    r = subprocess.run(
        [sys.executable, "-m", "agent.cli", "-c", str(bad), "run"],
        capture_output=True,
        text=True,
        env={"HARMONY_AGENT_LOG": "journal", "PATH": "/usr/bin"},
    )
    assert r.returncode == 78
    wait_for(lambda: _lines(CONFIG_PATH=str(bad)), 10, "the config error in the journal")
    (line,) = _lines(CONFIG_PATH=str(bad))
    assert line["HARMONY_EVENT"] == "config-invalid" and line["PRIORITY"] == "3"
    assert "agent.device_id" in line["MESSAGE"] and "Not_Valid" in line["MESSAGE"]
