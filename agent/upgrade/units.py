"""The agent's systemd unit as the root side sees it: restart, state, its last journal lines."""

from __future__ import annotations

import subprocess
from datetime import datetime
from typing import Protocol

from agent.upgrade.confirm import UnitState

__all__ = ["SystemdUnit", "UnitControl", "parse_show"]


class UnitControl(Protocol):
    def restart(self) -> None: ...
    def state(self) -> UnitState: ...
    def log_tail(self, since: datetime, lines: int = 20) -> list[str]: ...


def parse_show(text: str) -> UnitState:
    """Parse `systemctl show -p ...` output (KEY=VALUE lines)."""
    kv = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def num(key: str) -> int:
        try:
            return int(kv.get(key, "0") or 0)
        except ValueError:
            return 0

    return UnitState(
        active_state=kv.get("ActiveState", "unknown"),
        sub_state=kv.get("SubState", "unknown"),
        n_restarts=num("NRestarts"),
        main_pid=num("MainPID"),
        exec_main_status=num("ExecMainStatus") or None,
    )


class SystemdUnit:
    """UnitControl over `systemctl` and `journalctl` (the switch runs as root)."""

    def __init__(self, unit: str, systemctl: str = "systemctl", journalctl: str = "journalctl"):
        self.unit = unit
        self.systemctl = systemctl
        self.journalctl = journalctl

    def restart(self) -> None:
        # --no-block: the watch below judges READY itself, with its own deadline.
        subprocess.run(
            [self.systemctl, "restart", "--no-block", self.unit],
            check=True, capture_output=True, timeout=30,
        )

    def state(self) -> UnitState:
        out = subprocess.run(
            [self.systemctl, "show", "-p",
             "ActiveState,SubState,NRestarts,MainPID,ExecMainStatus", self.unit],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout
        return parse_show(out)

    def log_tail(self, since: datetime, lines: int = 20) -> list[str]:
        try:
            out = subprocess.run(
                [self.journalctl, "-u", self.unit, "--since", f"@{since.timestamp():.0f}",
                 "-n", str(lines), "-o", "short-iso", "--no-pager", "-q"],
                capture_output=True, text=True, timeout=30,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        return [line[:500] for line in out.splitlines()[-lines:]]
