"""A device in a temp dir for the root switch: releases, `current`, a supervised real agent.

The supervised agent is told the root side's paths (HARMONY_UPGRADE_*), so it
relays the switch's status file to NATS as on a device.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import Config, NatsSection, load_config
from agent.health import read_health
from agent.upgrade.handover import stage
from agent.upgrade.layout import MARKER, Layout, Staging
from agent.upgrade.release import flip_current
from agent.upgrade.states import State
from agent.upgrade.switch import Switch
from harmony_core.bus import Bus
from harmony_core.contracts import Artifact, UpgradeRequest, utcnow
from tests.agentproc import write_config
from tests.natsserver import wait_for
from tests.upgrade.helpers import build_deb, signed, write_pub
from tests.upgrade.supervisor import Supervisor
from tests.upgrade.variants import make_tree, release_files

__all__ = ["DEVICE", "REPO", "Rig", "status_bus"]

REPO = Path(__file__).resolve().parents[2]
DEVICE = "dev-up"


@contextlib.asynccontextmanager
async def status_bus(url: str) -> AsyncIterator[Bus]:
    """A connected bus to read what reached NATS, for one test."""
    bus = Bus(NatsSection(servers=[url]), name="test-switch")
    task = asyncio.create_task(bus.run())
    try:
        assert await bus.wait_connected(10)
        yield bus
    finally:
        await bus.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Rig:
    """releases/0.1.0 installed and running under a Supervisor; debs to upgrade to."""

    def __init__(self, tmp: Path, url: str, window: str = "1500ms", device: str = DEVICE) -> None:
        self.tmp = tmp
        self.url = url
        self.device = device  # several rigs, one device each, can run side by side
        self.key = Ed25519PrivateKey.generate()
        keys = tmp / "keys"
        write_pub(self.key, keys)
        self.cfg_path = write_config(
            tmp / "agent.toml", servers=[url], device_id=device, interval="500ms", upgrade=True,
            extra=f'trusted_keys_dir = "{keys}"\nconfirm_window = "{window}"\nkeep_releases = 2',
        )
        self.cfg: Config = load_config(self.cfg_path)
        self.layout = Layout(
            root=tmp / "opt", journal_dir=tmp / "upgrade-journal", config=self.cfg_path,
            dpkg_list=tmp / "dpkg.list", state_dir=self.cfg.agent.state_dir,
        )
        self.staging = Staging(self.cfg.agent.state_dir)
        self.install("0.1.0")
        flip_current(self.layout.root, "0.1.0")
        env = {"HARMONY_UPGRADE_ROOT": str(self.layout.root),
               "HARMONY_UPGRADE_JOURNAL_DIR": str(self.layout.journal_dir),
               "HARMONY_UPGRADE_STATE_DIR": str(self.layout.state_dir)}
        self.sup = Supervisor(self.layout.current, self.cfg_path, tmp, env=env)

    def install(self, version: str, variant: str = "good") -> None:
        """Put a release on disk directly, like apt would."""
        tree = make_tree(REPO, self.tmp / f"tree-{version}-{variant}-i", version, variant)
        rel = self.layout.releases / version
        for name, text in release_files(tree).items():
            p = rel / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        (rel / MARKER).write_text("{}\n")

    def deb(self, version: str, variant: str = "good") -> tuple[Path, str, int]:
        tree = make_tree(REPO, self.tmp / f"tree-{version}-{variant}", version, variant)
        out = self.tmp / f"debs-{variant}"
        out.mkdir(exist_ok=True)
        return build_deb(out, version, files=release_files(tree))

    def request(self, version: str, deb: tuple[Path, str, int], **over: object) -> UpgradeRequest:
        path, sha, size = deb
        now = utcnow()
        fields: dict[str, object] = {
            "request_id": f"req-{uuid.uuid4().hex[:8]}", "device_id": self.device,
            "target_version": version, "arch": self.switch().arch,
            "artifact": Artifact(bucket="agent-artifacts", name=path.name, sha256=sha, size=size),
            "issued_at": now - timedelta(seconds=5), "expires_at": now + timedelta(hours=1),
        }
        fields.update(over)
        return UpgradeRequest.model_validate(fields)

    def stage(self, req: UpgradeRequest, deb: Path) -> None:
        """What the agent side does once its download checked out."""
        copy = self.tmp / "download.part"
        copy.write_bytes(deb.read_bytes())
        stage(self.staging, signed(req, self.key), copy)

    def switch(self, after_save: Callable[[State], None] | None = None, **kw: Any) -> Switch:
        return Switch(self.layout, self.cfg, self.device, self.sup, poll_s=0.1,
                      after_save=after_save, **kw)

    def running(self, version: str, timeout: float = 30) -> None:
        """Wait until the supervised agent of `version` had a heartbeat acknowledged."""
        def ok() -> bool:
            h = read_health(self.cfg.agent.health_file)
            st = self.sup.state()
            return (h is not None and h.version == version and h.pid == st.main_pid
                    and h.last_heartbeat_ack_at is not None and st.active_state == "active")
        wait_for(ok, timeout, f"agent {version} running with an acknowledged heartbeat")

    def close(self) -> None:
        self.sup.close()

