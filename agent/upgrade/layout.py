"""Where the upgrade lives on a device; every path overridable (tests run it in a temp dir)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["MARKER", "Layout", "Staging"]

# Written last into a release directory: its presence means "complete".
MARKER = ".complete"


@dataclass(frozen=True)
class Layout:
    """The root side's paths and tools. `from_env` reads HARMONY_UPGRADE_* overrides."""

    root: Path = Path("/opt/harmony-agent")
    journal_dir: Path = Path("/var/lib/harmony-agent-upgrade")
    # The agent's state dir that harmony-agent-upgrade.path watches (`upgrade/staged/ready`
    # below it): upgrades need `[agent] state_dir` to be this directory.
    state_dir: Path = Path("/var/lib/harmony-agent")
    config: Path = Path("/etc/harmony-agent/agent.toml")
    unit: str = "harmony-agent.service"
    systemctl: str = "systemctl"
    journalctl: str = "journalctl"
    dpkg_deb: str = "dpkg-deb"
    # dpkg's list of the package's files: the release it shipped is never pruned.
    dpkg_list: Path = Path("/var/lib/dpkg/info/harmony-agent.list")
    # Test hook: pause this many seconds right after saving the named journal state.
    pause_at: dict[str, float] = field(default_factory=dict)

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def journal(self) -> Path:
        return self.journal_dir / "journal.json"

    @property
    def history(self) -> Path:
        return self.journal_dir / "history.json"

    @property
    def work(self) -> Path:
        return self.journal_dir / "work"

    @property
    def status(self) -> Path:
        """The root side's latest UpgradeStatus (0644 in the 0711 journal dir): the agent
        relays it to NATS, as the switch runs without a network."""
        return self.journal_dir / "status.json"

    @property
    def staging(self) -> Staging:
        return Staging(self.state_dir)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Layout:
        e = os.environ if env is None else env
        d = cls()
        pause: dict[str, float] = {}
        # HARMONY_UPGRADE_PAUSE_AT=watching:30 (E2E only: makes "kill at phase X" exact).
        if spec := e.get("HARMONY_UPGRADE_PAUSE_AT"):
            name, _, secs = spec.partition(":")
            pause[name] = float(secs or "30")
        return cls(
            root=Path(e.get("HARMONY_UPGRADE_ROOT", str(d.root))),
            journal_dir=Path(e.get("HARMONY_UPGRADE_JOURNAL_DIR", str(d.journal_dir))),
            state_dir=Path(e.get("HARMONY_UPGRADE_STATE_DIR", str(d.state_dir))),
            config=Path(e.get("HARMONY_AGENT_CONFIG", str(d.config))),
            unit=e.get("HARMONY_UPGRADE_UNIT", d.unit),
            systemctl=e.get("HARMONY_UPGRADE_SYSTEMCTL", d.systemctl),
            journalctl=e.get("HARMONY_UPGRADE_JOURNALCTL", d.journalctl),
            dpkg_deb=e.get("HARMONY_UPGRADE_DPKG_DEB", d.dpkg_deb),
            dpkg_list=Path(e.get("HARMONY_UPGRADE_DPKG_LIST", str(d.dpkg_list))),
            pause_at=pause,
        )


@dataclass(frozen=True)
class Staging:
    """The agent's side of the hand-over, under its state dir (agent-owned, untrusted by root)."""

    state_dir: Path

    @property
    def base(self) -> Path:
        return self.state_dir / "upgrade"

    @property
    def replay(self) -> Path:
        return self.base / "replay.json"

    @property
    def spool(self) -> Path:
        return self.base / "spool"

    @property
    def staged(self) -> Path:
        return self.base / "staged"

    # Names inside `staged`; `ready` is written last and is what the path unit watches.
    ENVELOPE = "envelope.json"
    ARTIFACT = "artifact.deb"
    READY = "ready"
    # Written by the root side (it owns it); the agent reads it before its checks.
    ROLLED_BACK = "rolled-back.json"
