"""packaging/systemd/harmony-agent.service: the settings the contract needs, verified by systemd."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.packaging.debbuild import REPO

UNIT = REPO / "packaging" / "systemd" / "harmony-agent.service"
MAX_EXPOSURE = 2.0


def settings(path: Path = UNIT) -> dict[str, list[str]]:
    """Key -> every value given (systemd allows repeats), comments dropped."""
    out: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("needs systemd-analyze (apt-get install systemd)")
    return tool


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Restart", "always"),
        ("RestartPreventExitStatus", "78"),
        ("User", "harmony-agent"),
        ("SupplementaryGroups", "systemd-journal"),
        ("StateDirectory", "harmony-agent"),
        ("RuntimeDirectory", "harmony-agent"),
        ("ExecStart", "/usr/bin/harmony-agent run"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("WantedBy", "multi-user.target"),
    ],
)
def test_unit_setting(key: str, value: str) -> None:
    assert settings().get(key) == [value]


@pytest.mark.parametrize(
    ("unit", "args"),
    [
        ("harmony-agent-upgrade.service", []),
        ("harmony-agent-upgrade-recover.service", ["--recover"]),
    ],
)
def test_upgrade_units_run_the_one_root_entry(unit: str, args: list[str]) -> None:
    """Both root-side units start `agent.upgrade.root` (tests/upgrade/test_root.py runs it)."""
    (cmd,) = settings(UNIT.parent / unit)["ExecStart"]
    assert cmd.lstrip("-").split() == [
        "/usr/bin/python3", "-s", "-B", "-m", "agent.upgrade.root", *args
    ]


def test_watchdog_is_on() -> None:
    (value,) = settings()["WatchdogSec"]
    assert re.fullmatch(r"\d+s", value) and int(value[:-1]) >= 10


def test_releases_and_keys_are_not_writable() -> None:
    """The agent writes its state and runtime dirs only: never /opt (the releases) or /etc."""
    s = settings()
    writable = " ".join(s.get("ReadWritePaths", []) + s.get("BindPaths", []))
    assert "/opt" not in writable and "/etc" not in writable
    assert "/etc/harmony-agent" not in " ".join(s.get("InaccessiblePaths", []))


def test_verify_is_clean(tmp_path: Path) -> None:
    """`systemd-analyze verify` on a root holding the unit, its binaries and systemd's units."""
    tool = analyze()
    host_units = Path("/lib/systemd/system")
    if not (host_units / "multi-user.target").exists():
        pytest.skip("needs systemd's own units in /lib/systemd/system")
    root = tmp_path / "root"
    shutil.copytree(host_units, root / "lib/systemd/system", symlinks=True)
    for exe in ("usr/bin/harmony-agent", "bin/kill"):
        (root / exe).parent.mkdir(parents=True, exist_ok=True)
        (root / exe).write_text("#!/bin/sh\n")
        (root / exe).chmod(0o755)
    shutil.copy2(UNIT, root / "lib/systemd/system" / UNIT.name)
    proc = subprocess.run(
        [tool, "verify", f"--root={root}", UNIT.name], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 even for some warnings: clean means it said nothing.
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_security_exposure_is_low() -> None:
    tool = analyze()
    proc = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, proc.stdout
