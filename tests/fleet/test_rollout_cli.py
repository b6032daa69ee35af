"""`harmony-fleet rollout create` and friends: the plan, and every bad input refused with
a line that says what to do — before anything is written."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harmony_fleet.keys import private_pem
from harmony_fleet.provision import ROLLOUTS_BUCKET
from harmony_fleet.rollout.plan import plan_waves
from tests.fleet.fakefleet import FakeDevice, fake_fleet
from tests.fleet.rollouts import Env

_NAME_RULE = "name part must consist of alphanumeric characters"


def _devices(n: int, site: str = "berlin", arch: str = "amd64") -> list[FakeDevice]:
    return [FakeDevice(f"{site}-{i:02d}", labels={"site": site}, arch=arch) for i in range(n)]


async def _nothing_written(env: Env) -> None:
    assert await env.bus.kv_entries(ROLLOUTS_BUCKET) == []
    assert await env.bus.kv_entries("agent-upgrade") == []


async def test_dry_run_json_prints_the_plan_and_writes_nothing(env: Env) -> None:
    devs = _devices(20)
    async with fake_fleet(env.bus, devs, env.keys):
        got = await env.cli("rollout", "create", "r1", "-l", "site=berlin", "--version", "0.2.0",
                            "--key", str(env.key_path), "--dry-run", "--json")  # fmt: skip
        assert got.rc == 0, got
        plan = json.loads(got.out)
        assert plan == {
            "name": "r1",
            "version": "0.2.0",
            "waves": [{"devices": ids} for _, ids in
                      plan_waves("r1", [d.id for d in devs], [1, 10, 50, 100])],
        }  # fmt: skip
        assert [len(w["devices"]) for w in plan["waves"]] == [1, 1, 8, 10]
        again = await env.cli("rollout", "create", "r1", "-l", "site=berlin", "--version",
                              "0.2.0", "--key", str(env.key_path), "--dry-run",
                              "--json")  # fmt: skip
        assert json.loads(again.out) == plan, "a plan is reproducible"
        text = await env.cli("rollout", "create", "r1", "-l", "site in (berlin)", "--version",
                             "0.2.0", "--key", str(env.key_path), "--dry-run")  # fmt: skip
        assert text.rc == 0, text
        assert "rollout r1: 0.2.0 to 20 devices (-l 'site in (berlin)') in 4 waves" in text.out
        assert text.out.rstrip().endswith("dry run: nothing written")
        await _nothing_written(env)


async def test_create_stores_the_plan_and_list_and_status_show_it(env: Env) -> None:
    devs = _devices(3)
    async with fake_fleet(env.bus, devs, env.keys):
        got = await env.create("r1", "-l", "site=berlin", "--waves", "50%,100%")
        assert "created rollout r1; drive it: harmony-fleet rollout run r1" in got.out
        again = await env.cli("rollout", "create", "r1", "-l", "site=berlin", "--version",
                              "0.2.0", "--key", str(env.key_path))  # fmt: skip
        assert again.rc == 1 and 'rollout "r1" exists' in again.err, again
        listed = await env.cli("rollout", "list")
        assert listed.out.splitlines()[0].split() == [
            "NAME", "STATE", "VERSION", "WAVE", "DEVICES", "CREATED", "NOW"
        ]  # fmt: skip
        assert listed.out.splitlines()[1].split()[:5] == ["r1", "running", "0.2.0", "-/2", "3"]
        status = await env.cli("rollout", "status", "r1")
        assert status.rc == 0
        assert "controller: none: start one with harmony-fleet rollout run r1" in status.out
        assert (await env.cli("rollout", "status", "nosuch")).err.strip() == (
            'harmony-fleet: no rollout "nosuch" (see harmony-fleet rollout list)'
        )
    r = await env.record("r1")
    assert (r.state, r.wave, r.selector) == ("running", -1, "site=berlin")
    assert r.releases["amd64"].name == "harmony-agent_0.2.0_amd64.deb"
    assert await env.bus.kv_entries("agent-upgrade") == [], "create asks nobody"


@pytest.mark.parametrize(
    ("args", "rc", "says"),
    [
        (["-l", "site=nowhere"], 1, "no device matches -l 'site=nowhere'"),
        (["-l", "site=berlin", "--version", "9.9.9"], 1,
         "publish it first: harmony-fleet publish-artifact harmony-agent_9.9.9_amd64.deb"),
        (["-l", "site=berlin", "--waves", "50%,10%"], 2, "waves must increase"),
        (["-l", "site=berlin", "--waves", "50%,120%"], 2, "over 100%"),
        (["-l", "site=berlin", "--min-executed", "4"], 1,
         "--min-executed 4 is more than the 3 devices of the rollout"),
        (["-l", "site=berlin", "--max-failures", "100%"], 2, "can never be exceeded"),
        (["-l", "site=berlin", "--deadline", "2m", "--confirm-window", "5m"], 1,
         "the deadline 2m is not longer than the confirm window 5m"),
        (["berlin-00", "-l", "site=berlin"], 2, "name devices or give -l SELECTOR"),
        ([], 2, "name devices or give -l SELECTOR"),
        (["-l", "app:monolith"], 2, f'<nil>: Invalid value: "app:monolith": {_NAME_RULE}'),
        (["-l", "site in (a b)"], 2,
         "unable to parse requirement: found 'b', expected: ',' or ')'"),
        (["-l", "site=berlin", "--bake", "soon"], 2, "is not a duration"),
        (["ghost"], 1, "no DeviceInfo tells the arch of ghost; pass --arch"),
    ],
)  # fmt: skip
async def test_bad_input_is_refused_before_anything_is_written(
    env: Env, args: list[str], rc: int, says: str
) -> None:
    async with fake_fleet(env.bus, _devices(3), env.keys):
        base = ["rollout", "create", "r1", *args]
        if "--version" not in args:
            base += ["--version", "0.2.0"]
        got = await env.cli(*base, "--key", str(env.key_path))
        assert got.rc == rc, got
        assert says in got.err, got.err
        assert len(got.err.strip().splitlines()) == 1 or rc == 2, "one line"
        await _nothing_written(env)


async def test_an_arch_without_an_artifact_is_refused(env: Env) -> None:
    devs = [*_devices(2), *_devices(1, site="berlin-arm", arch="arm64")]
    for d in devs:
        d.labels = {"site": "berlin"}
    async with fake_fleet(env.bus, devs, env.keys):
        got = await env.cli("rollout", "create", "r1", "-l", "site=berlin", "--version", "0.2.0",
                            "--key", str(env.key_path))  # fmt: skip
        assert got.rc == 1
        assert "0.2.0 for arm64 (devices berlin-arm-00): " in got.err
        assert "harmony-agent_0.2.0_arm64.deb is not published" in got.err
        await env.publish("0.2.0", "arm64")
        ok = await env.create("r1", "-l", "site=berlin", "--dry-run")
        assert "3 devices" in ok.out


async def test_run_needs_the_key_the_rollout_was_created_with(env: Env) -> None:
    async with fake_fleet(env.bus, _devices(1), env.keys):
        await env.create("r1", "berlin-00")
        other = env.tmp / "other.key"
        other.write_bytes(private_pem(Ed25519PrivateKey.generate()))
        got = await env.cli("rollout", "run", "r1", "--key", str(other))
        assert got.rc == 1
        assert "run it with the key it was created with (--key)" in got.err
        assert (await env.record("r1")).lease is None


@pytest.mark.parametrize("command", [["devices"], ["upgrade", "--version", "0.2.0", "--key", "k"],
                                     ["watch"]])  # fmt: skip
async def test_every_l_takes_the_kubernetes_grammar(env: Env, command: list[str]) -> None:
    bad = await env.cli(*command, "-l", "a$b=c")
    assert bad.rc == 2
    assert 'unable to parse requirement: <nil>: Invalid value: "a$b": ' + _NAME_RULE in bad.err


async def test_devices_l_matches_as_kubectl_does(env: Env) -> None:
    devs = [
        FakeDevice("a", labels={"site": "berlin", "ring": "canary"}),
        FakeDevice("b", labels={"site": "paris", "ring": "beta"}),
        FakeDevice("c", labels={"site": "berlin", "retired": "yes"}),
        FakeDevice("d", labels={}),
    ]
    async with fake_fleet(env.bus, devs, env.keys):
        for selector, want in [
            ("site=berlin", ["a", "c"]),
            ("site==berlin,!retired", ["a"]),
            ("site!=berlin", ["b", "d"]),
            ("ring in (canary,beta)", ["a", "b"]),
            ("ring notin (canary)", ["b", "c", "d"]),
            ("retired", ["c"]),
            ("", ["a", "b", "c", "d"]),
        ]:
            got = await env.cli("devices", "-l", selector, "--json")
            assert got.rc == 0, got
            assert [row["device_id"] for row in json.loads(got.out)] == want, selector
        none = await env.cli("devices", "-l", "site in (rome),x")
        assert none.out.strip() == "No devices found matching site in (rome),x."
