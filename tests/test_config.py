"""Config validation: every bad input gives an error naming its TOML path and bad value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import Config, check_files, label_problems, load_config, parse_config
from agent.config_doc import render_example
from harmony_core.durations import format_duration, parse_duration
from harmony_core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    return e.value.problems


@pytest.mark.parametrize(
    ("toml", "path", "shown"),
    [
        ("[agent\n", "not valid TOML", "line 1"),
        ("[agent]\ndevcie_id = 'x'\n", "agent.devcie_id: unknown key", ""),
        ("[nope]\n", "nope: unknown key", ""),
        (
            "[agent]\ndevice_id = 'Bad_Name'\n",
            "agent.device_id: a device_id is a DNS-1123",
            "Bad_Name",
        ),
        ("[agent]\ndevice_id = '-x'\n", "agent.device_id", "'-x'"),
        ("[agent]\ndevice_id = '" + "a" * 64 + "'\n", "agent.device_id", "a" * 64),
        ("[labels]\n'a b' = 'x'\n", 'labels."a b": a label name', "'x'"),
        ("[labels]\nsite = 'has space'\n", "labels.site: a label value", "has space"),
        ("[labels]\nsite = '" + "v" * 64 + "'\n", "labels.site: a label value", "v" * 64),
        ("[labels]\n'Bad.Prefix/x' = 'y'\n", 'labels."Bad.Prefix/x": the prefix', "y"),
        ("[labels]\n'harmony.nationtech.io/arch' = 'z'\n", "is reserved", "z"),
        ("[labels]\nn = 5\n", "labels.n: label values are strings", "5"),
        ("[heartbeat]\ninterval = 15\n", "heartbeat.interval: durations are strings", "15"),
        ("[heartbeat]\ninterval = '15 parsecs'\n", "heartbeat.interval", "15 parsecs"),
        ("[heartbeat]\ninterval = '0s'\n", "heartbeat.interval: the heartbeat interval", ""),
        ("[logs]\nmax_priority = 'loud'\n", "logs.max_priority: a priority", "loud"),
        ("[logs]\nmax_priority = 9\n", "logs.max_priority", "9"),
        ("[logs]\nstart_at = 'yesterday'\n", "logs.start_at", "yesterday"),
        ("[nats]\nservers = ['http://x:1']\n", "nats.servers", "http://x:1"),
        ("[nats]\nservers = []\n", "nats.servers", ""),
        ("[nats]\ncreds_file = '/a'\ntoken_file = '/b'\n", "set only one way to authenticate", ""),
        ("[nats]\nuser = 'u'\n", "user and password_file go together", ""),
        ("[nats]\ntls_cert_file = '/c'\n", "tls_cert_file and tls_key_file go together", ""),
        ("[nats]\nheartbeat_bucket = 'a.b'\n", "nats.heartbeat_bucket", "a.b"),
        ("[upgrade]\nkeep_releases = 0\n", "upgrade.keep_releases", "0"),
    ],
)
def test_bad_input_names_path_and_value(toml: str, path: str, shown: str) -> None:
    found = problems(toml)
    assert any(path in p and shown in p for p in found), found


def test_every_error_is_reported_at_once() -> None:
    found = problems(
        "[agent]\ndevice_id = 'X'\ntypo = 1\n[labels]\n'a b' = 'c'\n[heartbeat]\ninterval = 1\n"
    )
    assert len(found) == 4, found


def test_defaults_match_the_contract() -> None:
    c = parse_config("")
    assert c.nats.servers == ["nats://127.0.0.1:4222"]
    assert c.heartbeat.interval == 15.0
    assert (c.logs.enabled, c.logs.units, c.logs.identifiers) == (True, [], [])
    assert (c.logs.max_priority, c.logs.start_at) == (6, "now")
    assert c.upgrade.confirm_window == 300.0 and c.upgrade.keep_releases == 2
    assert str(c.upgrade.trusted_keys_dir) == "/etc/harmony-agent/keys"
    assert str(c.agent.state_dir) == "/var/lib/harmony-agent"
    assert (c.nats.device_info_bucket, c.nats.heartbeat_bucket) == (
        "device-info",
        "device-heartbeat",
    )
    assert (c.nats.logs_stream, c.nats.upgrade_bucket) == ("DEVICE_LOGS", "agent-upgrade")
    assert c.nats.upgrade_status_bucket == "agent-upgrade-status"
    assert c.nats.artifacts_bucket == "agent-artifacts"


def test_good_config_parses() -> None:
    c = parse_config(
        "[agent]\ndevice_id = 'edge-1'\n[labels]\nsite = 'b'\n'example.com/role' = 'gw'\n"
        "empty = ''\n[heartbeat]\ninterval = '1m30s'\n[logs]\nmax_priority = 'warning'\n"
    )
    assert c.labels == {"site": "b", "example.com/role": "gw", "empty": ""}
    assert c.heartbeat.interval == 90.0 and c.logs.max_priority == 4


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15s", 15), ("5m", 300), ("1h", 3600), ("500ms", 0.5), ("1h30m", 5400), ("2d", 172800)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "15", "s", "1x", "-1s", "1s 2s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_label_rules() -> None:
    assert label_problems("a.b-c_d", "v") == []
    assert label_problems("example.com/x", "") == []
    assert label_problems("x" * 63, "y" * 63) == []
    assert label_problems("x" * 64, "")
    assert label_problems("/x", "")
    assert label_problems("harmony.nationtech.io/arch", "amd64")
    assert label_problems("harmony.nationtech.io/arch", "amd64", allow_reserved=True) == []


def test_missing_creds_file_is_named(tmp_path: Path) -> None:
    c = parse_config(f"[nats]\ncreds_file = '{tmp_path / 'device.creds'}'\n")
    (found,) = check_files(c)
    assert found.startswith("nats.creds_file:") and "device.creds" in found


def test_missing_config_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"agent\.example\.toml"):
        load_config(tmp_path / "none.toml")


def test_example_is_generated_from_the_models() -> None:
    assert (ROOT / "agent.example.toml").read_text() == render_example(), (
        "agent.example.toml is stale: run `make example`"
    )


def test_example_documents_every_key() -> None:
    text = (ROOT / "agent.example.toml").read_text()
    for section, field in Config.model_fields.items():
        assert f"[{section}]" in text
        model = field.annotation
        for key in getattr(model, "model_fields", {}):
            assert f"# {key} = " in text, f"{section}.{key} is not documented"


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "agent.cli", "-c", str(ROOT / "agent.example.toml"), "check-config"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\ndevice_id = 'NO'\n[labels]\n'a b' = 'c'\n")
    r = subprocess.run(
        [sys.executable, "-m", "agent.cli", "check-config"],
        capture_output=True,
        text=True,
        env={"HARMONY_AGENT_CONFIG": str(bad), "PATH": "/usr/bin"},
    )
    assert r.returncode == 78
    assert "agent.device_id" in r.stderr and 'labels."a b"' in r.stderr
