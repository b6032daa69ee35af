"""Rollouts over real agent processes and real builds, without the booted Debian.

Each device is the upgrade rig (tests/upgrade/rig.py): a real `harmony-agent run`
of release 0.1.0 under a stand-in for systemd, with its own state dir and root
side; what the path unit does on a device (run the root switch once an upgrade is
staged) is done here by a task per device. The rollout is the real
`harmony-fleet rollout run` process; the builds are real .debs of this tree, a
good one and one that crashes at start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from agent.upgrade.layout import Staging
from harmony_fleet.releases import publish_release
from tests.fleet.rollouts import Env
from tests.upgrade.helpers import write_pub
from tests.upgrade.rig import Rig


async def _path_unit(rig: Rig) -> None:
    """harmony-agent-upgrade.path: the root switch runs whenever an upgrade is staged."""
    ready = rig.staging.staged / Staging.READY
    while True:
        if ready.exists():
            # In a thread of its own, as the unit runs outside the agent: switches of
            # several devices go on side by side.
            await asyncio.to_thread(lambda: asyncio.run(rig.switch().run()))
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def _fleet(env: Env, tmp: Path, n: int) -> AsyncIterator[list[Rig]]:
    """`n` real agents of 0.1.0 that trust the operator's key, heartbeating."""
    rigs: list[Rig] = []
    units: list[asyncio.Task[None]] = []
    try:
        for i in range(n):
            # A confirm window the agents meet with several of them starting at once.
            rig = Rig(tmp / f"dev-{i}", env.url, window="5s", device=f"dev-{i}")
            write_pub(env.key, rig.tmp / "keys", name="rollout-operator")
            rigs.append(rig)
            rig.sup.start()
        await asyncio.gather(*(asyncio.to_thread(r.running, "0.1.0") for r in rigs))
        units = [asyncio.create_task(_path_unit(r)) for r in rigs]
        yield rigs
    finally:
        while pending := [u for u in units if not u.done()]:
            for u in pending:
                u.cancel()
            await asyncio.wait(pending, timeout=1)
        for r in rigs:
            r.close()


async def _publish(env: Env, rig: Rig, version: str, variant: str = "good") -> None:
    path, _, _ = rig.deb(version, variant)
    await publish_release(env.bus, env.n, path, env.key)


async def _create(env: Env, name: str, version: str) -> None:
    got = await env.cli(
        "rollout", "create", name, "dev-0", "dev-1", "dev-2", "--version", version,
        "--key", str(env.key_path), "--waves", "33%,100%", "--bake", "1s", "--deadline", "90s",
    )  # fmt: skip
    assert got.rc == 0, got


async def test_a_wave_of_real_agents_commits(env: Env, tmp_path: Path) -> None:
    async with _fleet(env, tmp_path, 3) as rigs:
        await _publish(env, rigs[0], "0.5.0")
        await _create(env, "good", "0.5.0")
        ctl = await env.controller("good")
        assert await ctl.wait(timeout=240) == 0, "\n".join(ctl.lines)
        await asyncio.gather(*(asyncio.to_thread(r.running, "0.5.0") for r in rigs))
    r = await env.record("good")
    assert [len(w.devices) for w in r.waves] == [1, 2]
    assert {d.outcome for w in r.waves for d in w.devices} == {"succeeded"}
    first, second = r.waves
    assert first.ended_at is not None and second.started_at is not None
    assert first.ended_at <= second.started_at


async def test_a_crashing_build_halts_after_the_canary_and_later_waves_are_untouched(
    env: Env, tmp_path: Path
) -> None:
    async with _fleet(env, tmp_path, 3) as rigs:
        await _publish(env, rigs[0], "0.6.0", "crash")
        await _create(env, "bad", "0.6.0")
        r = await env.record("bad")
        canary = r.waves[0].devices[0].id
        ctl = await env.controller("bad")
        assert await ctl.wait(timeout=240) == 3, "\n".join(ctl.lines)
        r = await env.record("bad")
        assert r.state == "halted" and r.reason is not None
        assert f"{canary} (rolled_back: " in r.reason
        for rig in rigs:
            key = await env.bus.kv_get("agent-upgrade", rig.device)
            if rig.device == canary:
                assert key is not None
            else:
                assert key is None, f"{rig.device} of wave 2 was asked"
        # Every device runs the old version: the canary again, the others still.
        await asyncio.gather(*(asyncio.to_thread(r.running, "0.1.0") for r in rigs))
    assert {d.outcome for d in r.waves[1].devices} == {"pending"}
