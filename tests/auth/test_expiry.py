"""A login that expires every few seconds is routine (ADR-023 §6).

The callout issues user JWTs for 3 s; nats-server disconnects the agent at each
expiry ("authentication expired") and nats-py gives up on that connection
(nats.py#1019). The agent logs in again through the callout by itself: the same
process all along, heartbeats going on, and every journal line written meanwhile
in the stream, none lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess
from tests.auth.fleet import AuthFleet, device_config
from tests.logs.helpers import stream_records
from tests.logs.journald import Journald, send, unique
from tests.natsserver import wait_for

pytestmark = pytest.mark.journald

TTL_S = 3


@pytest.fixture
def short_fleet(tmp_path: Path) -> Iterator[AuthFleet]:
    fleet = AuthFleet(tmp_path / "fleet", ttl=f"{TTL_S}s").start()
    try:
        yield fleet
    finally:
        fleet.stop()


def _seq(fleet: AuthFleet, device: str) -> int:
    return int((fleet.kv("device-heartbeat", device) or {}).get("seq", 0))


def test_the_agent_lives_through_expiries_with_the_same_pid_and_no_line_lost(
    short_fleet: AuthFleet, journald: Journald, tmp_path: Path
) -> None:
    ident = unique("expiry")
    device = "edge-ttl"
    cfg = device_config(
        short_fleet,
        tmp_path / "dev",
        device,
        token=short_fleet.token("--auto-approve"),
        logs=True,
        interval="500ms",
    )
    cfg.write_text(
        cfg.read_text().replace(
            "[logs]\nenabled = true\n",
            f'[logs]\nenabled = true\nidentifiers = ["{ident}"]\nbatch_max_wait = "50ms"\n',
        )
    )
    agent = AgentProcess(cfg)
    try:
        wait_for(lambda: _seq(short_fleet, device) >= 1, 30, "the first heartbeat", 0.2)
        pid = agent.proc.pid
        sent = []
        began = time.monotonic()
        i = 0
        while time.monotonic() - began < 4 * TTL_S:  # through several expiries
            msg = f"line {i} of {ident}"
            send(msg, ident)
            sent.append(msg)
            i += 1
            time.sleep(0.05)
        seq_mid = _seq(short_fleet, device)

        def shipped() -> list[str]:
            records = asyncio.run(
                stream_records(short_fleet.url, device, nats=short_fleet.operator)
            )
            return [str(r.get("message")) for r in records]

        wait_for(lambda: set(sent) <= set(shipped()), 60, "every line in the stream", 0.5)
        got = [m for m in shipped() if m in set(sent)]
        assert set(got) == set(sent)  # every line (a batch retried after a new login may land
        # after a later one: the records carry their journal cursor and time)
        # a retry of an unacknowledged batch keeps its Nats-Msg-Id: stored once
        assert len(got) - len(set(got)) <= 1000
        wait_for(lambda: _seq(short_fleet, device) > seq_mid + 2, 15, "heartbeats going on")
        assert agent.proc.poll() is None and agent.proc.pid == pid
        expiries = agent.stderr().count("event=auth-expired")
        assert expiries >= 3, agent.stderr()[-3000:]
        assert short_fleet.callout_log().count("admitted as edge-ttl") >= expiries
    finally:
        agent.stop()
