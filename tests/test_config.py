"""Config validation: every bad input gives an error naming its TOML path and bad value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.config import (
    Config,
    NatsSection,
    check_files,
    label_problems,
    load_config,
    parse_config,
)
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


def test_cross_field_problems_come_with_the_field_errors() -> None:
    # A pairing rule (user needs password_file) must not wait until the field errors are fixed.
    found = problems("[nats]\nservers = ['http://x:1']\nuser = 'u'\n[agent]\ndevice_id = 'X'\n")
    assert any(p.startswith("nats.servers[0]: not a NATS server URL") for p in found), found
    assert any(p.startswith("agent.device_id:") for p in found), found
    assert any(p.startswith("nats.user:") and "password_file" in p for p in found), found
    assert len(found) == 3, found


@pytest.mark.parametrize(
    ("toml", "path", "says"),
    [
        ("user = 'u'\n", "nats.user", "password_file"),
        ("password_file = '/p'\n", "nats.password_file", "user"),
        ("creds_file = '/a'\ntoken_file = '/b'\n", "nats.token_file", "only one way"),
        ("tls_cert_file = '/c'\n", "nats.tls_cert_file", "tls_key_file"),
        ("tls_key_file = '/k'\n", "nats.tls_key_file", "tls_cert_file"),
    ],
)
def test_each_cross_field_problem_names_its_key(toml: str, path: str, says: str) -> None:
    found = problems("[nats]\nconnect_timeout = 5\n" + toml)
    assert any(p.startswith("nats.connect_timeout:") for p in found), found
    assert any(p.startswith(f"{path}: ") and says in p for p in found), found


def test_a_bad_value_still_counts_as_set_for_the_pairing_rules() -> None:
    found = problems("[nats]\nuser = 'u'\npassword_file = 'relative/pw'\n")
    assert found == [
        "nats.password_file: must be an absolute path (starting with /): the agent's working "
        "directory is /, not the config file's directory (got 'relative/pw')"
    ]


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("agent", "state_dir"),
        ("agent", "health_file"),
        ("upgrade", "trusted_keys_dir"),
        ("nats", "creds_file"),
        ("nats", "nkey_seed_file"),
        ("nats", "token_file"),
        ("nats", "tls_ca_file"),
    ],
)
def test_relative_paths_are_refused(section: str, key: str) -> None:
    found = problems(f"[{section}]\n{key} = 'var/x'\n")
    assert found == [
        f"{section}.{key}: must be an absolute path (starting with /): the agent's working "
        "directory is /, not the config file's directory (got 'var/x')"
    ], found


def test_code_may_still_pass_relative_paths() -> None:
    # harmony-fleet --creds op.creds: relative to the operator's shell, not a config file.
    assert str(NatsSection(creds_file=Path("op.creds")).creds_file) == "op.creds"


@pytest.mark.parametrize(
    "url",
    ["nats://alice:s3cret@nats.example:4222", "tls://s3cret@nats.example", "nats://a:s3cret@h"],
)
def test_credentials_in_server_urls_are_refused_without_echoing_them(url: str) -> None:
    found = problems(f"[nats]\nservers = ['nats://ok:4222', '{url}']\n")
    assert len(found) == 1, found
    assert found[0].startswith("nats.servers[1]: ")
    assert "user" in found[0] and "password_file" in found[0] and "token_file" in found[0]
    assert "s3cret" not in found[0] and "alice" not in found[0]


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


# Secrets: no one but the agent (and root) may read them; no one else may write any of them.
_SECRETS = ("creds_file", "nkey_seed_file", "password_file", "token_file", "tls_key_file")


def _nats_file(tmp_path: Path, key: str, mode: int) -> Config:
    """A config naming one file of `mode` as `key` (with safe partners where one is needed)."""
    files: dict[str, Any] = {key: tmp_path / key}
    partner = {"tls_cert_file": "tls_key_file", "tls_key_file": "tls_cert_file"}.get(key)
    if partner:
        files[partner] = tmp_path / partner
    for k, path in files.items():
        path.write_text("secret\n")
        path.chmod(mode if k == key else 0o600)
    if key == "password_file":
        files["user"] = "device"
    return Config(nats=NatsSection.model_validate(files))


@pytest.mark.parametrize("key", _SECRETS)
@pytest.mark.parametrize("mode", [0o640, 0o600, 0o400], ids=oct)
def test_private_secret_files_pass(tmp_path: Path, key: str, mode: int) -> None:
    assert check_files(_nats_file(tmp_path, key, mode)) == []


@pytest.mark.parametrize("key", _SECRETS)
def test_a_world_readable_secret_is_reported(tmp_path: Path, key: str) -> None:
    (found,) = check_files(_nats_file(tmp_path, key, 0o644))
    assert found.startswith(f"nats.{key}: ")
    assert "readable by every user" in found and "chmod 0640" in found


@pytest.mark.parametrize("key", [*_SECRETS, "tls_ca_file", "tls_cert_file"])
@pytest.mark.parametrize("mode", [0o660, 0o602], ids=oct)
def test_a_credential_file_others_can_write_is_reported(
    tmp_path: Path, key: str, mode: int
) -> None:
    (found,) = check_files(_nats_file(tmp_path, key, mode))
    assert found.startswith(f"nats.{key}: ") and "writable by group or others" in found


@pytest.mark.parametrize("key", ["tls_ca_file", "tls_cert_file"])
def test_public_tls_files_may_be_world_readable(tmp_path: Path, key: str) -> None:
    assert check_files(_nats_file(tmp_path, key, 0o644)) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_credential_file_owned_by_someone_else_is_reported(tmp_path: Path) -> None:
    cfg = _nats_file(tmp_path, "creds_file", 0o640)
    assert cfg.nats.creds_file is not None
    os.chown(cfg.nats.creds_file, 54321, -1)
    (found,) = check_files(cfg)
    assert found.startswith("nats.creds_file: ") and "owned by uid 54321" in found


def test_check_config_reports_an_insecure_secret(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    token.chmod(0o644)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"[agent]\ndevice_id = 'edge-1'\n[nats]\ntoken_file = '{token}'\n")
    r = subprocess.run(
        [sys.executable, "-m", "agent.cli", "-c", str(cfg), "check-config"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 78
    assert f"nats.token_file: {str(token)!r} is readable by every user" in r.stderr, r.stderr


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
