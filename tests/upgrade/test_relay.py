"""The agent relays the root switch's status file to NATS (the switch has no network).

And it refuses upgrades its state dir would never hand over: the path unit
watches one fixed directory (issue 9, finding 13).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import Config, parse_config
from agent.durable import atomic_write
from agent.upgrade import UpgradeService
from agent.upgrade.layout import Layout, Staging
from agent.upgrade.status import status_bytes
from harmony_core.bus import Bus
from harmony_core.contracts import UpgradeStatus, utcnow
from tests.agentproc import run_bus
from tests.logs.helpers import wait_async
from tests.natsserver import NatsServer
from tests.upgrade.helpers import make_request, signed, write_pub

DEV = "dev-1"
BUCKET = "agent-upgrade-status"


def _cfg(tmp: Path, url: str) -> Config:
    return parse_config(
        f'[agent]\ndevice_id = "{DEV}"\nstate_dir = "{tmp / "state"}"\n'
        f'[nats]\nservers = ["{url}"]\n'
        f'[upgrade]\ntrusted_keys_dir = "{tmp / "keys"}"\n'
    )


@contextlib.asynccontextmanager
async def _running(tmp: Path, url: str, layout: Layout) -> AsyncIterator[Bus]:
    """The upgrade service of an agent, running, and a bus to look at NATS with."""
    cfg = _cfg(tmp, url)
    bus = Bus(cfg.nats, name="test-relay")
    bus_task = asyncio.create_task(bus.run())
    assert await bus.wait_connected(10)
    svc = UpgradeService(cfg, DEV, bus, arch="amd64", layout=layout, relay_poll_s=0.05)
    started = asyncio.Event()
    run = asyncio.create_task(svc.run(started.set))
    try:
        await asyncio.wait_for(started.wait(), 5)
        yield bus
    finally:
        for task in (run, bus_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await bus.close()


def _layout(tmp: Path) -> Layout:
    return Layout(root=tmp / "opt", journal_dir=tmp / "journal", state_dir=tmp / "state")


def _write(layout: Layout, phase: str, *, device: str = DEV, age_s: float = 0,
           request_id: str = "req-1") -> UpgradeStatus:
    st = UpgradeStatus(device_id=device, request_id=request_id, from_version="0.1.0",
                       target_version="0.2.0", phase=phase,  # type: ignore[arg-type]
                       reason=f"{phase} by the switch",
                       updated_at=utcnow() - timedelta(seconds=age_s))
    atomic_write(layout.status, status_bytes(st), mode=0o644)
    return st


async def _in_nats(bus: Bus) -> UpgradeStatus | None:
    e = await bus.kv_get(BUCKET, DEV)
    return UpgradeStatus.model_validate_json(e.value) if e is not None else None


async def test_each_status_the_switch_writes_reaches_nats(
    tmp_path: Path, nats_js: NatsServer
) -> None:
    layout = _layout(tmp_path)
    async with _running(tmp_path, nats_js.url, layout) as bus:
        for phase in ("switching", "watching", "committed"):
            written = _write(layout, phase)

            async def relayed(written: UpgradeStatus = written) -> bool:
                return await _in_nats(bus) == written

            await wait_async(relayed, 10, f"{phase} relayed")


async def test_a_status_for_another_device_is_not_relayed(
    tmp_path: Path, nats_js: NatsServer
) -> None:
    layout = _layout(tmp_path)
    async with _running(tmp_path, nats_js.url, layout) as bus:
        _write(layout, "committed", device="someone-else")
        await asyncio.sleep(0.5)
        assert await _in_nats(bus) is None
        mine = _write(layout, "committed")

        async def relayed() -> bool:
            return await _in_nats(bus) == mine

        await wait_async(relayed, 10, "this device's status relayed")


async def test_an_older_status_never_replaces_a_newer_one(
    tmp_path: Path, nats_js: NatsServer
) -> None:
    """A restarted agent finds the last switch status; NATS has moved on since."""
    layout = _layout(tmp_path)
    _write(layout, "committed", age_s=60, request_id="req-old")
    newer = UpgradeStatus(device_id=DEV, request_id="req-new", phase="received",
                          updated_at=utcnow())
    await asyncio.to_thread(
        run_bus, nats_js.url, lambda bus: bus.kv_put(BUCKET, DEV, status_bytes(newer)))
    async with _running(tmp_path, nats_js.url, layout) as bus:
        await asyncio.sleep(0.5)
        assert await _in_nats(bus) == newer


@pytest.mark.parametrize("kind", ["symlink", "fifo", "huge"])
async def test_an_unsafe_status_file_is_not_read(
    tmp_path: Path, nats_js: NatsServer, kind: str
) -> None:
    layout = _layout(tmp_path)
    layout.journal_dir.mkdir()
    if kind == "symlink":
        real = tmp_path / "real.json"
        real.write_bytes(status_bytes(UpgradeStatus(device_id=DEV, phase="committed",
                                                    updated_at=utcnow())))
        layout.status.symlink_to(real)
    elif kind == "fifo":
        os.mkfifo(layout.status)
    else:
        layout.status.write_bytes(b" " * (1024 * 1024))
    async with _running(tmp_path, nats_js.url, layout) as bus:
        await asyncio.sleep(0.5)
        assert await _in_nats(bus) is None


async def test_a_state_dir_the_path_unit_does_not_watch_is_refused(
    tmp_path: Path, nats_js: NatsServer
) -> None:
    """Staged there, a request would sit at `staged` forever: refused, with what to do."""
    key = Ed25519PrivateKey.generate()
    write_pub(key, tmp_path / "keys")
    cfg = _cfg(tmp_path, nats_js.url)
    watched = Layout(root=tmp_path / "opt", journal_dir=tmp_path / "journal",
                     state_dir=tmp_path / "elsewhere")
    bus = Bus(cfg.nats, name="test-relay")
    bus_task = asyncio.create_task(bus.run())
    try:
        assert await bus.wait_connected(10)
        now = utcnow()
        req = make_request(device_id=DEV, target_version="99.0.0", issued_at=now,
                           expires_at=now + timedelta(hours=1))
        await bus.kv_put("agent-upgrade", DEV, signed(req, key))
        entry = await bus.kv_get("agent-upgrade", DEV)
        assert entry is not None
        svc = UpgradeService(cfg, DEV, bus, arch="amd64", layout=watched)
        assert await svc.handle(entry) == "rejected"
        st = await _in_nats(bus)
        assert st is not None and st.phase == "rejected" and st.request_id == req.request_id
        assert st.reason and "state_dir" in st.reason and str(tmp_path / "elsewhere") in st.reason
        assert not (Staging(cfg.agent.state_dir).staged / Staging.READY).exists()
    finally:
        bus_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await bus_task
        await bus.close()
