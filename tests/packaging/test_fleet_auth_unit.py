"""packaging/systemd/harmony-fleet-auth.service: the callout's unit, hardened like the agent's.

Scored by `systemd-analyze security --offline=true` (≤ 2, as the agent's unit), verified
by `systemd-analyze verify`, and its credentials reach `auth serve` by file name.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harmony_core import nkey
from harmony_fleet.auth.setup import init_auth_dir, load_authd, with_credentials
from tests.packaging.test_systemd_unit import MAX_EXPOSURE, _exposure, analyze, settings

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "systemd" / "harmony-fleet-auth.service"


def test_exposure_is_as_low_as_the_agents() -> None:
    score, out = _exposure(UNIT)
    assert score <= MAX_EXPOSURE, out


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Restart", ["always"]),
        ("DynamicUser", ["yes"]),
        ("ProtectSystem", ["strict"]),
        ("NoNewPrivileges", ["yes"]),
        ("CapabilityBoundingSet", [""]),
        ("RestrictAddressFamilies", ["AF_UNIX AF_INET AF_INET6"]),
        ("WantedBy", ["multi-user.target"]),
    ],
)
def test_setting(key: str, value: list[str]) -> None:
    assert settings(UNIT).get(key) == value


def test_it_runs_auth_serve_with_the_credentials_systemd_hands_it() -> None:
    s = settings(UNIT)
    (cmd,) = s["ExecStart"]
    assert cmd.split()[1:] == ["auth", "serve", "-c", "${CREDENTIALS_DIRECTORY}/authd.toml"]
    names = sorted(c.split(":", 1)[0] for c in s["LoadCredential"])
    assert names == ["authd.toml", "callout.nk", "issuer.nk"]
    # never the operator's or the system account's key
    assert not any("operator.nk" in c or "system.nk" in c for c in s["LoadCredential"])


def test_credentials_by_file_name_win_over_authd_paths(tmp_path: Path) -> None:
    d = tmp_path / "auth"
    init_auth_dir(d, ["nats://127.0.0.1:4222"])
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name in ("authd.toml", "issuer.nk", "callout.nk"):
        shutil.copy(d / name, creds / name)
    cfg = with_credentials(load_authd(creds / "authd.toml"), creds)
    assert cfg.callout.issuer_seed_file == creds / "issuer.nk"
    assert cfg.nats.nkey_seed_file == creds / "callout.nk"
    nkey.public_key(cfg.callout.issuer_seed_file.read_text().strip())
    assert with_credentials(load_authd(d / "authd.toml"), None).callout.issuer_seed_file == (
        d / "issuer.nk"
    )


def test_verify_is_clean(tmp_path: Path) -> None:
    tool = analyze()
    host_units = Path("/lib/systemd/system")
    if not (host_units / "multi-user.target").exists():
        pytest.skip("needs systemd's own units in /lib/systemd/system")
    root = tmp_path / "root"
    shutil.copytree(host_units, root / "lib/systemd/system", symlinks=True)
    exe = root / "usr/local/bin/harmony-fleet"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    shutil.copy2(UNIT, root / "lib/systemd/system" / UNIT.name)
    proc = subprocess.run(
        [tool, "verify", f"--root={root}", UNIT.name], capture_output=True, text=True, timeout=60
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")
