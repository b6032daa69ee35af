"""Enrollment against the real thing: nats-server with the callout config, `auth serve`,
real `harmony-agent run` processes that make their own keys (ADR-023 §1, §3).
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.agentproc import AgentProcess
from tests.auth.fleet import AuthFleet, device_config
from tests.natsserver import wait_for


def _identity(config: Path) -> dict[str, object]:
    r = subprocess.run(
        [sys.executable, "-m", "agent.cli", "-c", str(config), "identity", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    out: dict[str, object] = json.loads(r.stdout)
    return out


def _heartbeat(fleet: AuthFleet, device: str) -> dict[str, Any] | None:
    return fleet.kv("device-heartbeat", device)


def _seq(fleet: AuthFleet, device: str) -> int:
    return int((_heartbeat(fleet, device) or {}).get("seq", 0))


def test_auto_approve_token_enrolls_and_turns_ready(auth_fleet: AuthFleet, tmp_path: Path) -> None:
    token = auth_fleet.token("--auto-approve")
    cfg = device_config(auth_fleet, tmp_path / "dev", "edge-1", token=token)
    agent = AgentProcess(cfg)
    try:
        wait_for(lambda: _heartbeat(auth_fleet, "edge-1"), 30, "a heartbeat of edge-1", 0.2)
        key = tmp_path / "dev" / "state" / "identity" / "key.nk"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
        ident = _identity(cfg)
        row = auth_fleet.key_of("edge-1")
        assert row is not None and row["status"] == "approved" and row["bound"]
        assert row["public_key"] == ident["public_key"]
        assert row["fingerprint"] == ident["fingerprint"]
        assert ident["admitted"] is True
        assert "auth-enrolled" in auth_fleet.callout_log()
        assert token not in auth_fleet.callout_log()
    finally:
        agent.stop()


def test_manual_token_waits_pending_without_a_heartbeat_until_approved(
    auth_fleet: AuthFleet, tmp_path: Path
) -> None:
    token = auth_fleet.token()
    cfg = device_config(auth_fleet, tmp_path / "dev", "edge-2", token=token)
    agent = AgentProcess(cfg)
    try:
        try:
            wait_for(lambda: "pending approval" in agent.last_status(), 30, "STATUS= pending")
        except AssertionError as e:
            raise AssertionError(
                f"{e}; STATUS={agent.last_status()!r}\nagent: {agent.stderr()[-2000:]}\n"
                f"callout: {auth_fleet.callout_log()[-2000:]}"
            ) from None
        fp = str(_identity(cfg)["fingerprint"])
        assert agent.last_status().startswith(f"auth: pending approval (fingerprint {fp})")
        agent.wait_notify("READY", "1")  # never gated on NATS, never exits
        row = auth_fleet.key_of("edge-2")
        assert row is not None and row["status"] == "pending" and row["fingerprint"] == fp
        # several refused attempts, the process the same, and nothing written meanwhile
        wait_for(
            lambda: auth_fleet.callout_log().count("is pending approval") >= 2,
            30,
            "the agent retrying",
        )
        assert agent.proc.poll() is None
        assert _heartbeat(auth_fleet, "edge-2") is None
        assert auth_fleet.kv("device-info", "edge-2") is None
        status = subprocess.run(
            [sys.executable, "-m", "agent.cli", "-c", str(cfg), "status"],
            capture_output=True,
            text=True,
        ).stdout
        assert f"auth:        pending approval (fingerprint {fp})" in status

        out = auth_fleet.fleet("enroll", "approve", "edge-2")
        assert f"approved edge-2: key {fp}" in out
        wait_for(lambda: _heartbeat(auth_fleet, "edge-2"), 30, "a heartbeat after approval", 0.2)
        wait_for(lambda: not agent.last_status().startswith("auth:"), 10, "STATUS= clear")
        assert "auth-admitted" in agent.stderr()
    finally:
        agent.stop()


async def _refused(fleet: AuthFleet, device: str, token: str) -> bool:
    import nats.errors

    from tests.auth.fleet import connect_device, new_device_key

    try:
        nc = await connect_device(fleet.url, new_device_key(), device, token=token)
    except nats.errors.Error as e:
        assert "authorization violation" in str(e).lower()
        return True
    await nc.close()
    return False


def test_expired_used_up_and_revoked_tokens_are_refused(auth_fleet: AuthFleet) -> None:
    import asyncio
    import time

    expired = auth_fleet.token("--auto-approve", "--expires", "1s")
    once = auth_fleet.token("--uses", "1")
    revoked = auth_fleet.token("--auto-approve", "--reusable")
    auth_fleet.fleet("enroll", "token", "revoke", revoked.split(".")[1])
    time.sleep(1.2)
    assert asyncio.run(_refused(auth_fleet, "dev-exp", expired))
    assert asyncio.run(_refused(auth_fleet, "dev-once-1", once))  # pending: refused, recorded
    assert asyncio.run(_refused(auth_fleet, "dev-once-2", once))  # used up
    assert asyncio.run(_refused(auth_fleet, "dev-rev", revoked))
    log = auth_fleet.callout_log()
    assert f"enrollment token {expired.split('.')[1]} expired" in log
    assert f"enrollment token {once.split('.')[1]} is used up (1 of 1)" in log
    assert f"enrollment token {revoked.split('.')[1]} was revoked" in log
    # only the one valid use left a record: refusals fill no pending queue
    assert [r["device_id"] for r in auth_fleet.key_rows()] == ["dev-once-1"]
    listed = auth_fleet.fleet("enroll", "token", "list")
    assert "expired" in listed and "used-up" in listed and "revoked" in listed


def test_a_second_device_claiming_an_enrolled_id_stays_pending(
    auth_fleet: AuthFleet, tmp_path: Path
) -> None:
    token = auth_fleet.token("--auto-approve", "--reusable")
    first = AgentProcess(device_config(auth_fleet, tmp_path / "a", "edge-9", token=token))
    second: AgentProcess | None = None
    try:
        wait_for(lambda: _heartbeat(auth_fleet, "edge-9"), 30, "the first device's heartbeat")
        info_before = auth_fleet.kv("device-info", "edge-9")
        assert info_before is not None
        cfg_b = device_config(auth_fleet, tmp_path / "b", "edge-9", token=token)
        second = AgentProcess(cfg_b)
        wait_for(lambda: "pending approval" in second.last_status(), 30, "the second pending")
        rows = [r for r in auth_fleet.key_rows() if r["device_id"] == "edge-9"]
        assert sorted(r["status"] for r in rows) == ["approved", "pending"]
        pending = next(r for r in rows if r["status"] == "pending")
        assert pending["public_key"] == _identity(cfg_b)["public_key"]
        assert "bound to key" in pending["note"] and "--replace" in pending["note"]
        # the first device's keys are untouched, and it keeps beating
        seq = _seq(auth_fleet, "edge-9")
        wait_for(lambda: _seq(auth_fleet, "edge-9") > seq + 1, 10, "the first still beating")
        info_after = auth_fleet.kv("device-info", "edge-9") or {}
        assert info_after.get("machine_id") == info_before["machine_id"]
        assert "is pending approval" in auth_fleet.callout_log()
        out = auth_fleet.fleet("enroll", "approve", pending["fingerprint"], check=False)
        assert "--replace" in out  # never re-bound silently
    finally:
        first.stop()
        if second is not None:
            second.stop()
