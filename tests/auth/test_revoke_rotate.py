"""Revoke and rotate against the real thing (ADR-023 §4).

- `harmony-fleet revoke`: the running agent is disconnected within 5 s (its
  connection gone from every server, asked through the system account) and
  never gets back in; it keeps running and says so.
- `harmony-fleet rotate`: the agent makes a new key, the fleet binds the device
  to it, heartbeats go on, the old key no longer gets in.
- A SIGKILL at any step of a rotation leaves one of a handful of states on disk
  and in the registry; from each, the agent gets in again (the crash table).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats.errors
import pytest

from agent.identity import DeviceLogin, KeyStore
from agent.identity.login import Facts as DeviceFacts
from harmony_core import nkey
from harmony_core.bus import Bus
from harmony_core.permissions import inbox_prefix
from harmony_core.settings import NatsSection
from harmony_fleet.auth.enroll import request_rotation
from harmony_fleet.auth.kick import device_connections
from harmony_fleet.auth.registry import Registry
from tests.agentproc import AgentProcess
from tests.auth.fleet import AuthFleet, connect_device, device_config
from tests.natsserver import wait_for


def _seq(fleet: AuthFleet, device: str) -> int:
    return int((fleet.kv("device-heartbeat", device) or {}).get("seq", 0))


def _connections(fleet: AuthFleet, device: str) -> int:
    async def count() -> int:
        bus = Bus(
            NatsSection(servers=[fleet.url], nkey_seed_file=fleet.dir / "system.nk"),
            name="tests system",
        )
        await bus.connect_once()
        try:
            return len(await device_connections(bus, device, account="DEVICES"))
        finally:
            await bus.close()

    return asyncio.run(count())


def _gets_in(fleet: AuthFleet, seed: str, device: str) -> bool:
    async def go() -> bool:
        try:
            nc = await connect_device(fleet.url, seed, device)
        except nats.errors.Error:
            return False
        await nc.close()
        return True

    return asyncio.run(go())


def _enrolled_agent(fleet: AuthFleet, tmp: Path, device: str) -> tuple[AgentProcess, Path]:
    token = fleet.token("--auto-approve")
    cfg = device_config(fleet, tmp, device, token=token)
    agent = AgentProcess(cfg)
    wait_for(lambda: _seq(fleet, device) >= 2, 30, f"heartbeats of {device}", 0.2)
    return agent, cfg


def test_revoke_disconnects_within_5s_and_never_back(auth_fleet: AuthFleet, tmp_path: Path) -> None:
    agent, _ = _enrolled_agent(auth_fleet, tmp_path / "dev", "edge-r")
    try:
        assert _connections(auth_fleet, "edge-r") == 1
        seed = (tmp_path / "dev" / "state" / "identity" / "key.nk").read_text().strip()
        began = time.monotonic()
        out = auth_fleet.fleet("revoke", "edge-r")
        assert "kicked 1 live connection(s) on 1 server(s)" in out, out
        wait_for(lambda: _connections(auth_fleet, "edge-r") == 0, 5, "edge-r disconnected")
        assert time.monotonic() - began <= 5.0
        wait_for(lambda: "revoked" in agent.last_status(), 15, "STATUS= saying revoked")
        seq = _seq(auth_fleet, "edge-r")
        time.sleep(4)  # several of its retries (reconnect_max_wait 1s): none gets in
        assert _connections(auth_fleet, "edge-r") == 0
        assert _seq(auth_fleet, "edge-r") == seq
        assert agent.proc.poll() is None  # never exits, never restart-loops
        assert not _gets_in(auth_fleet, seed, "edge-r")
        assert auth_fleet.key_of("edge-r")["status"] == "revoked"  # type: ignore[index]
        assert "auth-revoked" in agent.stderr()
    finally:
        agent.stop()


def test_rotate_replaces_the_key_and_heartbeats_go_on(
    auth_fleet: AuthFleet, tmp_path: Path
) -> None:
    agent, cfg = _enrolled_agent(auth_fleet, tmp_path / "dev", "edge-o")
    key_file = tmp_path / "dev" / "state" / "identity" / "key.nk"
    try:
        old_seed = key_file.read_text().strip()
        old_pub = nkey.public_key(old_seed)
        pid = agent.proc.pid
        out = auth_fleet.fleet("rotate", "edge-o")
        assert "rotated edge-o" in out, out
        assert "kicked" not in out  # the device's new login is not the old key's
        new_seed = key_file.read_text().strip()
        new_pub = nkey.public_key(new_seed)
        assert new_pub != old_pub and new_pub in out
        assert not (key_file.parent / "next.nk").exists()
        seq = _seq(auth_fleet, "edge-o")
        wait_for(lambda: _seq(auth_fleet, "edge-o") >= seq + 2, 15, "heartbeats after rotation")
        assert agent.proc.pid == pid and agent.proc.poll() is None
        rows = {r["public_key"]: r["status"] for r in auth_fleet.key_rows()}
        assert rows == {old_pub: "rotated", new_pub: "approved"}
        assert not _gets_in(auth_fleet, old_seed, "edge-o")
        ident = json.loads(
            subprocess.run(
                [sys.executable, "-m", "agent.cli", "-c", str(cfg), "identity", "--json"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert ident["public_key"] == new_pub
        assert "auth-rotated" in agent.stderr() and "auth-rotated" in auth_fleet.callout_log()
    finally:
        agent.stop()


# --- the crash table ------------------------------------------------------------------------


def _login_once(fleet: AuthFleet, key_dir: Path, device: str) -> str | None:
    """One agent login from `key_dir` (the agent's own code); the key let in, or None."""
    login = DeviceLogin(KeyStore(key_dir), DeviceFacts(device, None, None, None), None)
    outcome: list[str | None] = []

    def attempt() -> Any:
        nk = login()
        inner = nk.outcome

        def told(refusal: str | None) -> None:
            outcome.append(None if refusal else nkey.public_key(nk.seed))
            assert inner is not None
            inner(refusal)

        return type(nk)(seed=nk.seed, token=nk.token, outcome=told)

    async def go() -> None:
        bus = Bus(
            NatsSection(servers=[fleet.url]),
            name="crash-table",
            login=attempt,
            inbox_prefix=inbox_prefix(device),
        )
        try:
            await bus.connect_once()
        except Exception:
            return
        await bus.close()

    for _ in range(2):  # with a rotation pending: the new key's turn, then the old key's
        asyncio.run(go())
        if outcome and outcome[-1]:
            return outcome[-1]
    return None


def _ask_rotation(fleet: AuthFleet, device: str, window_s: float) -> None:
    fleet.run(lambda bus: request_rotation(Registry(bus), device, window_s))


# (name, rotation window when killed, after the kill: what is in key_dir)
CRASHES = [
    ("before the new key was made", 600.0, "old"),
    ("after next.nk, before logging in with it", 600.0, "old+next"),
    ("after next.nk, the request since expired", 0.0, "old+next"),
    ("after the fleet took the new key, before the rename", 600.0, "old+next, taken"),
    ("after the rename", 600.0, "new"),
]


@pytest.mark.parametrize(("name", "window", "disk"), CRASHES, ids=[c[0] for c in CRASHES])
def test_sigkill_at_each_rotation_step_still_gets_in(
    auth_fleet: AuthFleet, tmp_path: Path, name: str, window: float, disk: str
) -> None:
    device = "edge-k"
    agent, cfg = _enrolled_agent(auth_fleet, tmp_path / "dev", device)
    key_dir = tmp_path / "dev" / "state" / "identity"
    agent.signal(signal.SIGKILL)
    agent.proc.wait(10)
    agent.close()
    store = KeyStore(key_dir)
    old = store.seed()
    assert old is not None
    _ask_rotation(auth_fleet, device, 600.0)
    if disk != "old":
        store.begin_rotation()
    if disk in ("old+next, taken", "new"):
        new = store.next_seed()
        assert _login_once(auth_fleet, key_dir, device) == nkey.public_key(new or "")
        assert store.seed() == new  # the rotation finished: now undo what the kill undid
        if disk == "old+next, taken":
            shutil.copy(key_dir / "key.nk", key_dir / "next.nk")
            (key_dir / "key.nk").write_text(old + "\n")
    if window == 0.0:
        _ask_rotation(auth_fleet, device, 0.001)
        time.sleep(0.05)
    # the agent starts again from that state, and gets in
    seq = _seq(auth_fleet, device)
    again = AgentProcess(cfg)
    try:
        wait_for(lambda: _seq(auth_fleet, device) >= seq + 2, 30, f"heartbeats ({name})", 0.2)
        assert not (key_dir / "next.nk").exists(), "a pending rotation was settled"
        bound = [r for r in auth_fleet.key_rows() if r["bound"]]
        assert [r["public_key"] for r in bound] == [nkey.public_key(store.seed() or "")]
    finally:
        again.stop()
