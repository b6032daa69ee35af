"""Rollouts against a real nats-server and a fleet of fake devices (tests/fleet/fakefleet.py).

The controller is the real `harmony-fleet rollout run` process; the devices are
a test double that answers requests in KV like the agent. Each test checks what
every device was asked: exactly once for those whose wave started, never for
the others.
"""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from harmony_core.contracts import Rollout
from harmony_fleet.rollout.state import counts, request_id
from tests.fleet.fakefleet import FakeDevice, fake_fleet
from tests.fleet.rollouts import Env
from tests.logs.helpers import wait_async

FAST = ["--bake", "300ms", "--deadline", "20s"]


def _devices(n: int, **kw: object) -> list[FakeDevice]:
    return [FakeDevice(f"dev-{i:02d}", labels={"site": "berlin"}, **kw) for i in range(n)]  # type: ignore[arg-type]


def _outcomes(r: Rollout) -> dict[str, str]:
    return {d.id: d.outcome for w in r.waves for d in w.devices}


async def test_waves_complete_in_order_and_each_device_is_asked_once(env: Env) -> None:
    devs = _devices(6)
    async with fake_fleet(env.bus, devs, env.keys):
        plan = await env.create("r1", "-l", "site=berlin", "--waves", "20%,50%,100%", *FAST)
        assert "3 waves" in plan.out
        ctl = await env.controller("r1")
        assert await ctl.wait() == 0, "\n".join(ctl.lines)
    r = await env.record("r1")
    assert r.state == "completed"
    assert [len(w.devices) for w in r.waves] == [2, 1, 3]
    assert set(_outcomes(r).values()) == {"succeeded"}
    for d in devs:
        assert d.request_ids == [f"{d.id}-{r.uid}"], d
    # A wave starts only once the one before ended (every device baked).
    first_asked = {d.id: d.asked[0][1] for d in devs}
    for before, after in zip(r.waves, r.waves[1:], strict=False):
        assert before.ended_at is not None and after.started_at is not None
        assert before.ended_at <= after.started_at
        assert max(first_asked[d.id] for d in before.devices) < min(
            first_asked[d.id] for d in after.devices
        )
    assert ctl.saw(r"rollout r1 completed: all 3 waves ended: 6 succeeded")


async def test_a_failing_canary_halts_and_later_waves_are_never_asked(env: Env) -> None:
    devs = _devices(5)
    async with fake_fleet(env.bus, devs, env.keys):
        await env.create("r1", "-l", "site=berlin", "--waves", "20%,100%", *FAST)
        r = await env.record("r1")
        canary = r.waves[0].devices[0].id
        next(d for d in devs if d.id == canary).behaviour = "rollback"
        ctl = await env.controller("r1")
        assert await ctl.wait() == 3, "\n".join(ctl.lines)
        r = await env.record("r1")
        assert r.state == "halted" and r.reason is not None
        assert canary in r.reason and "rolled_back" in r.reason
        assert [d.request_ids for d in devs if d.id != canary] == [[]] * 4
        status = await env.cli("rollout", "status", "r1", "--json")
        got = json.loads(status.out)
        assert (got["state"], got["wave"]) == ("halted", 1)
        assert got["waves"][0]["devices"][0]["outcome"] == "failed"
        assert {d["outcome"] for d in got["waves"][1]["devices"]} == {"pending"}
        # The operator accepts it (say the device was broken anyway) and goes on.
        resumed = await env.cli("rollout", "resume", "r1")
        assert resumed.rc == 0 and canary in resumed.out, resumed
        ctl = await env.controller("r1")
        assert await ctl.wait() == 0, "\n".join(ctl.lines)
    r = await env.record("r1")
    assert r.state == "completed" and r.excused == [canary]
    assert all(len(d.request_ids) == 1 for d in devs)


@pytest.mark.parametrize(
    ("failing", "budget", "rc"),
    [
        (2, ["--max-failures", "2"], 0),
        (3, ["--max-failures", "2"], 3),
        (2, ["--max-failures", "20%", "--min-executed", "10"], 0),
        (3, ["--max-failures", "20%", "--min-executed", "10"], 3),
    ],
)
async def test_the_failure_budget(env: Env, failing: int, budget: list[str], rc: int) -> None:
    devs = _devices(10)
    for d, how in zip(devs[:failing], ["fail", "reject", "rollback"], strict=False):
        d.behaviour = how  # type: ignore[assignment]
    async with fake_fleet(env.bus, devs, env.keys):
        await env.create("r1", "-l", "site=berlin", "--waves", "100%", *FAST, *budget)
        ctl = await env.controller("r1")
        assert await ctl.wait() == rc, "\n".join(ctl.lines)
    r = await env.record("r1")
    c = counts(r)
    if rc == 0:
        assert (r.state, len(c.failed), c["succeeded"]) == ("completed", failing, 10 - failing)
    else:
        assert r.state == "halted" and r.reason is not None
        assert all(d.id in r.reason for d in devs[:failing])
    assert all(len(d.request_ids) == 1 for d in devs)


async def test_failures_count_only_once_min_executed_devices_finished(env: Env) -> None:
    devs = _devices(4)
    async with fake_fleet(env.bus, devs, env.keys):
        await env.create("r1", "-l", "site=berlin", "--waves", "25%,100%", "--min-executed",
                         "3", *FAST)  # fmt: skip
        r = await env.record("r1")
        canary = r.waves[0].devices[0].id
        next(d for d in devs if d.id == canary).behaviour = "rollback"
        ctl = await env.controller("r1")
        assert await ctl.wait() == 3, "\n".join(ctl.lines)
    r = await env.record("r1")
    assert r.state == "halted" and r.wave == 1, "wave 2 started: 1 finished was < 3"
    assert all(len(d.request_ids) == 1 for d in devs)


async def test_a_device_silent_past_the_deadline_fails(env: Env) -> None:
    devs = _devices(3)
    devs[1].behaviour = "silent"
    async with fake_fleet(env.bus, devs, env.keys):
        await env.create("r1", "-l", "site=berlin", "--waves", "100%", "--bake", "200ms",
                         "--deadline", "1500ms", "--max-failures", "1")  # fmt: skip
        ctl = await env.controller("r1")
        assert await ctl.wait() == 0, "\n".join(ctl.lines)
    r = await env.record("r1")
    silent = next(d for w in r.waves for d in w.devices if d.id == devs[1].id)
    assert silent.outcome == "failed"
    assert silent.reason == (
        "no terminal phase within the 1.5s deadline (last: no status for our request)"
    )
    assert _outcomes(r) == {devs[0].id: "succeeded", devs[1].id: "failed", devs[2].id: "succeeded"}


async def test_devices_not_ready_when_their_wave_starts_are_skipped_not_counted(env: Env) -> None:
    devs = _devices(5)
    devs[1].heartbeats = False  # never heard from: Unknown
    devs[2].stopped = True  # its agent stopped cleanly: Stopped
    devs[3].version = "0.2.0"  # already there
    async with fake_fleet(env.bus, devs, env.keys):
        await env.create("r1", "-l", "site=berlin", "--waves", "100%", *FAST)
        ctl = await env.controller("r1")
        assert await ctl.wait() == 0, "\n".join(ctl.lines)
        status = await env.cli("rollout", "status", "r1")
    r = await env.record("r1")
    assert _outcomes(r) == {
        "dev-00": "succeeded", "dev-01": "skipped", "dev-02": "skipped", "dev-03": "up-to-date",
        "dev-04": "succeeded",
    }  # fmt: skip
    reasons = {d.id: d.reason for w in r.waves for d in w.devices}
    assert reasons["dev-01"] == "Unknown when its wave started"
    assert reasons["dev-02"] == "Stopped when its wave started"
    assert [d.request_ids for d in devs[1:4]] == [[], [], []]
    assert "2 succeeded, 0 up to date" not in (r.reason or "")
    assert "2 succeeded, 1 up to date, 2 skipped" in (r.reason or "")
    assert "dev-01  1     skipped" in status.out


async def test_a_device_that_stops_being_ready_during_the_bake_fails(env: Env) -> None:
    devs = _devices(2)
    devs[0].behaviour = "unready-after-commit"
    async with fake_fleet(env.bus, devs, env.keys):
        await env.create("r1", "dev-00", "dev-01", "--waves", "100%", "--bake", "3s",
                         "--deadline", "20s")  # fmt: skip
        ctl = await env.controller("r1")
        assert await ctl.wait() == 3, "\n".join(ctl.lines)
    r = await env.record("r1")
    bad = r.waves[0].devices[0]
    assert bad.id == "dev-00" and bad.outcome == "failed"
    assert (bad.reason or "").startswith("stopped being Ready on 0.2.0 during the bake (Stopped")


async def test_an_overwritten_request_is_reported_as_conflicting(env: Env) -> None:
    devs = _devices(3)
    devs[1].behaviour = "silent"
    async with fake_fleet(env.bus, devs, env.keys):
        await env.create("r1", "-l", "site=berlin", "--waves", "100%", "--bake", "200ms",
                         "--deadline", "30s")  # fmt: skip
        ctl = await env.controller("r1")
        await wait_async(lambda: devs[1].asked, 20, "dev-01 asked by the rollout")
        manual = await env.cli("upgrade", "dev-01", "--version", "0.2.0", "--key",
                               str(env.key_path))  # fmt: skip
        assert manual.rc == 0, manual
        assert await ctl.wait() == 0, "\n".join(ctl.lines)
    r = await env.record("r1")
    d1 = r.waves[0].devices[1]
    assert d1.outcome == "conflict"
    other = devs[1].request_ids[-1]
    assert other in (d1.reason or "") and other != request_id(r, "dev-01")
    c = counts(r)
    assert (c["succeeded"], c["conflict"], len(c.failed)) == (2, 1, 0)
    assert ctl.saw(r"dev-01: conflict \(our request was replaced by request dev-01-")


async def test_devices_that_join_later_are_left_out_and_status_says_so(env: Env) -> None:
    devs = _devices(2)
    async with fake_fleet(env.bus, devs, env.keys) as fleet:
        await env.create("r1", "-l", "site=berlin", "--waves", "100%", *FAST)
        late = FakeDevice("dev-late", labels={"site": "berlin"})
        fleet.add(late)
        await fleet.publish_info(late)
        await fleet.heartbeat(late)
        status = await env.cli("rollout", "status", "r1", "--json")
        assert json.loads(status.out)["left_out"] == ["dev-late"]
        text = await env.cli("rollout", "status", "r1")
        assert "left out (matched -l 'site=berlin' only after the rollout was created): " \
            "dev-late" in text.out
        ctl = await env.controller("r1")
        assert await ctl.wait() == 0, "\n".join(ctl.lines)
    assert late.asked == []


async def test_pause_holds_the_next_wave_and_resume_goes_on(env: Env) -> None:
    devs = _devices(4)
    async with fake_fleet(env.bus, devs, env.keys):
        await env.create("r1", "-l", "site=berlin", "--waves", "25%,100%", "--bake", "1s",
                         "--deadline", "20s")  # fmt: skip
        ctl = await env.controller("r1")
        await ctl.wait_line(r"wave 1/2 .* started")
        paused = await env.cli("rollout", "pause", "r1")
        assert paused.rc == 0 and "paused" in paused.out, paused
        await ctl.wait_line(r"rollout r1 paused")
        await ctl.wait_line(r": succeeded")
        wave1 = (await env.record("r1")).waves[0].devices[0].id
        # Paused: the canary baked, and no further request goes out.
        await asyncio.sleep(1.0)
        assert [d.id for d in devs if d.asked] == [wave1]
        assert (await env.record("r1")).wave == 0
        again = await env.cli("rollout", "pause", "r1")
        assert again.out.strip() == "rollout r1 is paused already"
        resumed = await env.cli("rollout", "resume", "r1")
        assert resumed.rc == 0, resumed
        assert await ctl.wait() == 0, "\n".join(ctl.lines)
    assert all(len(d.request_ids) == 1 for d in devs)


async def test_abort_ends_it_and_nothing_more_is_asked(env: Env) -> None:
    devs = _devices(4, behaviour="silent")
    async with fake_fleet(env.bus, devs, env.keys):
        await env.create("r1", "-l", "site=berlin", "--waves", "25%,100%", *FAST)
        ctl = await env.controller("r1")
        await ctl.wait_line(r": asked")
        aborted = await env.cli("rollout", "abort", "r1")
        assert aborted.rc == 0 and "aborted" in aborted.out, aborted
        assert await ctl.wait() == 4, "\n".join(ctl.lines)
        assert ctl.saw("rollout r1 aborted: aborted by ")
        r = await env.record("r1")
        assert r.state == "aborted" and r.lease is None
        assert sum(1 for d in devs if d.asked) == 1
        # An aborted rollout stays so; running it again does nothing but say so.
        again = await env.cli("rollout", "resume", "r1")
        assert again.rc == 1 and "cannot be running" in again.err
        ctl = await env.controller("r1")
        assert await ctl.wait() == 4
    assert sum(1 for d in devs if d.asked) == 1


async def test_two_controllers_at_once_never_both_drive(env: Env) -> None:
    devs = _devices(6, delay_s=0.2)
    async with fake_fleet(env.bus, devs, env.keys):
        await env.create("r1", "-l", "site=berlin", "--waves", "34%,100%", "--bake", "1s",
                         "--deadline", "20s")  # fmt: skip
        one, two = await env.controller("r1"), await env.controller("r1")
        rcs = sorted([await one.wait(), await two.wait()])
        err = await one.stderr() + await two.stderr()
    drivers = [c for c in (one, two) if c.saw("driving it as")]
    assert len(drivers) == 1, one.lines + two.lines
    assert rcs == [0, 1], (rcs, err)
    assert "two controllers never drive one rollout" in err
    assert all(len(d.request_ids) == 1 for d in devs)
    assert (await env.record("r1")).state == "completed"


@pytest.mark.parametrize(
    "kill_after", [r"wave 1/3 .* started", r": asked", r"baking", r"wave 2/3 .* started"]
)
async def test_a_controller_killed_mid_wave_resumes_without_asking_twice_or_skipping(
    env: Env, kill_after: str
) -> None:
    devs = _devices(8, delay_s=0.2)
    async with fake_fleet(env.bus, devs, env.keys):
        await env.create("r1", "-l", "site=berlin", "--waves", "25%,50%,100%", "--bake",
                         "500ms", "--deadline", "20s")  # fmt: skip
        first = await env.controller("r1")
        await first.wait_line(kill_after)
        first.kill()
        assert await first.wait() == -9
        assert (await env.record("r1")).lease is not None, "SIGKILL: nobody gave the lease up"
        second = await env.controller("r1")
        assert await second.wait() == 0, "\n".join([*first.lines, "--", *second.lines])
        # It waited out the dead one's lease (or found it run out already), then drove.
        assert second.saw(r"driving it as")
    r = await env.record("r1")
    assert set(_outcomes(r).values()) == {"succeeded"}, _outcomes(r)
    for d in devs:
        assert d.request_ids == [request_id(r, d.id)], d


async def test_watch_shows_rollout_changes(env: Env) -> None:
    devs = _devices(2)
    async with fake_fleet(env.bus, devs, env.keys):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "harmony_fleet.cli", "-s", env.url, "watch", "--json",
            "--watch-only", stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await env.create("r1", "-l", "site=berlin", "--waves", "100%", *FAST)
            assert proc.stdout is not None
            seen: list[dict[str, object]] = []

            async def rollout_line() -> bool:
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), 20)
                seen.append(json.loads(line))
                return seen[-1]["bucket"] == "agent-rollouts"

            await wait_async(rollout_line, 20, "a rollout change in watch")
            got = seen[-1]
            assert got["rollout"] == "r1"
            assert isinstance(got["value"], dict) and got["value"]["state"] == "running"
        finally:
            proc.kill()
            await proc.wait()
