"""The pure parts of rollouts, table by table: waves, the failure budget, and each step."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from harmony_core.contracts import (
    Artifact,
    Rollout,
    RolloutDevice,
    RolloutWave,
    UpgradeStatus,
)
from harmony_core.errors import RolloutError
from harmony_fleet.rollout.plan import (
    Budget,
    budget_notes,
    budget_problems,
    over_budget,
    parse_budget,
    parse_waves,
    plan_waves,
    wave_sizes,
)
from harmony_fleet.rollout.state import Observed, advance, counts, operate, request_id, summary

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("1%,10%,50%,100%", [1, 10, 50, 100]),
        ("100%", [100]),
        (" 5% , 25.5% ,100%", [5, 25.5, 100]),
        ("10%,50%", [10, 50]),
    ],
)
def test_waves_parse(text: str, want: list[float]) -> None:
    assert parse_waves(text) == want


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("10%,5%", "waves must increase"),
        ("10%,10%", "waves must increase"),
        ("50%,150%", "over 100%"),
        ("0%,100%", "more than 0%"),
        ("10,100", "not a percentage"),
        ("", "not a percentage"),
        ("1%,,100%", "not a percentage"),
    ],
)
def test_bad_waves_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_waves(text)


@pytest.mark.parametrize(
    ("total", "percents", "want"),
    [
        (200, [1, 10, 50, 100], [(1, 2), (10, 20), (50, 100), (100, 200)]),
        (10, [1, 10, 50, 100], [(1, 1), (10, 2), (50, 5), (100, 10)]),  # at least one more
        (3, [1, 10, 50, 100], [(1, 1), (10, 2), (50, 3)]),  # everyone by the third wave
        (1, [1, 10, 50, 100], [(1, 1)]),
        (30, [10, 100], [(10, 3), (100, 30)]),  # 10% of 30 is 3, not 4 (floats)
        (7, [50, 100], [(50, 4), (100, 7)]),  # rounded up
        (10, [10, 50], [(10, 1), (50, 5)]),  # a rollout may stop short of 100%
    ],
)
def test_wave_sizes_are_cumulative_rounded_up_and_never_empty(
    total: int, percents: list[float], want: list[tuple[float, int]]
) -> None:
    assert wave_sizes(total, percents) == want


def test_a_plan_is_reproducible_and_depends_on_the_rollout_name() -> None:
    devices = [f"dev-{i:03d}" for i in range(100)]
    plan = plan_waves("r1", devices, [1, 10, 100])
    assert plan == plan_waves("r1", list(reversed(devices)), [1, 10, 100])
    assert [len(ids) for _, ids in plan] == [1, 9, 90]
    assert sorted(d for _, ids in plan for d in ids) == devices
    canaries = {plan_waves(f"r{i}", devices, [1, 100])[0][1][0] for i in range(20)}
    assert len(canaries) > 10, "another rollout name picks another canary"


@pytest.mark.parametrize(
    ("text", "want"), [("0", (0, None)), ("2", (2, None)), ("5%", (None, 5.0)), ("0%", (None, 0))]
)
def test_budget_parse(text: str, want: tuple[int | None, float | None]) -> None:
    assert parse_budget(text) == want


@pytest.mark.parametrize("text", ["100%", "150%", "-1", "two", "2.5"])
def test_a_budget_that_is_no_budget_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_budget(text)


@pytest.mark.parametrize(
    ("failures", "finished", "budget", "halt"),
    [
        (0, 10, Budget(0), False),
        (1, 1, Budget(0), True),
        (1, 5, Budget(1), False),
        (2, 5, Budget(1), True),
        (2, 10, Budget(None, 20), False),  # 20 % of 10 may fail
        (3, 10, Budget(None, 20), True),
        (1, 4, Budget(None, 20), True),  # 25 % > 20 %
        (1, 5, Budget(None, 20), False),
        (3, 4, Budget(0, min_executed=5), False),  # not counted before 5 finished
        (3, 5, Budget(0, min_executed=5), True),
        (1, 20, Budget(None, 5), False),
        (2, 20, Budget(None, 5), True),
    ],
)
def test_budget_arithmetic(failures: int, finished: int, budget: Budget, halt: bool) -> None:
    assert over_budget(failures, finished, budget) is halt


def test_a_budget_that_can_never_be_counted_is_a_problem() -> None:
    assert budget_problems(3, Budget(0, min_executed=5)) == [
        "--min-executed 5 is more than the 3 devices of the rollout: the failure budget would "
        "never be counted; give at most 3"
    ]
    assert budget_problems(5, Budget(0, min_executed=5)) == []
    assert budget_notes(3, Budget(3)) and not budget_notes(3, Budget(2))


# --- steps ----------------------------------------------------------------------------------


def _rollout(waves: list[list[str]], **kw: object) -> Rollout:
    fields: dict[str, object] = {
        "name": "r1", "uid": "abc123", "version": "0.2.0", "created_at": T0,
        "created_by": "ops@host", "keyid": "k" * 64,
        "releases": {"amd64": Artifact(bucket="b", name="n", sha256="a" * 64, size=1)},
        "bake_s": 60, "deadline_s": 600, "max_failures": 0, "updated_at": T0,
        "waves": [
            RolloutWave(percent=100 * (i + 1) / len(waves),
                        devices=[RolloutDevice(id=d, arch="amd64") for d in ids])
            for i, ids in enumerate(waves)
        ],
    }  # fmt: skip
    fields.update(kw)
    return Rollout.model_validate(fields)


def _ready(version: str = "0.1.0", **kw: object) -> Observed:
    return Observed("Ready", version, **kw)  # type: ignore[arg-type]


def _status(r: Rollout, device: str, phase: str, reason: str = "") -> UpgradeStatus:
    return UpgradeStatus(
        device_id=device, request_id=request_id(r, device), phase=phase,  # type: ignore[arg-type]
        reason=reason or None, updated_at=T0,
    )  # fmt: skip


def _outcomes(r: Rollout) -> dict[str, str]:
    return {d.id: d.outcome for w in r.waves for d in w.devices}


def test_the_first_step_starts_wave_one_and_skips_devices_that_are_not_ready() -> None:
    r = _rollout([["a", "b", "c", "d", "e"], ["f"]])
    obs = {
        "a": _ready(revision=7),
        "b": Observed("Offline", "0.1.0"),
        "c": Observed("Stale", "0.1.0"),
        "d": Observed("Stopped", "0.1.0"),
        "e": _ready("0.2.0"),
    }
    assert advance(r, obs, T0)
    assert (r.wave, r.waves[0].started_at) == (0, T0)
    assert _outcomes(r) == {
        "a": "asking", "b": "skipped", "c": "skipped", "d": "skipped", "e": "up-to-date",
        "f": "pending",
    }  # fmt: skip
    a = r.waves[0].devices[0]
    assert a.revision == 7, "the key's revision before our write: the compare-and-set names it"
    assert r.waves[0].devices[1].reason == "Offline when its wave started"
    assert not advance(r, obs, T0), "nothing new: nothing changes (nothing to save)"


def _asked(r: Rollout, device: str, at: datetime = T0, revision: int = 9) -> None:
    for w in r.waves:
        for d in w.devices:
            if d.id == device:
                d.outcome, d.asked_at, d.revision = "asked", at, revision


@pytest.mark.parametrize(
    ("phase", "observed", "after_s", "want", "reason"),
    [
        ("downloading", _ready(), 10, "asked", None),
        ("rolled_back", _ready(), 10, "failed", "rolled_back: boom"),
        ("failed", _ready(), 10, "failed", "failed: boom"),
        ("rejected", _ready(), 10, "failed", "rejected: boom"),
        ("committed", _ready("0.2.0"), 10, "baking", None),
        ("committed", _ready("0.1.0"), 10, "asked", None),  # not yet heard on 0.2.0
        ("committed", Observed("Stale", "0.2.0"), 10, "failed", "not Ready after its commit"),
        ("watching", _ready(), 601, "failed", "deadline (last: watching)"),
        (None, _ready(), 601, "failed", "deadline (last: no status for our request)"),
        ("committed", _ready("0.1.0"), 601, "failed", "committed, but not Ready on 0.2.0"),
    ],
)
def test_an_asked_device_is_judged_by_its_status_and_heartbeat(
    phase: str | None, observed: Observed, after_s: float, want: str, reason: str | None
) -> None:
    r = _rollout([["a"], ["b"]])
    advance(r, {"a": _ready(revision=9)}, T0)
    _asked(r, "a")
    st = _status(r, "a", phase, "boom") if phase else None
    o = Observed(observed.status, observed.version, request_id(r, "a"), 9, st)
    advance(r, {"a": o}, T0 + timedelta(seconds=after_s))
    d = r.waves[0].devices[0]
    assert d.outcome == want
    if reason:
        assert d.reason is not None and reason in d.reason


def test_a_status_of_another_request_is_not_ours() -> None:
    r = _rollout([["a"]])
    advance(r, {"a": _ready(revision=9)}, T0)
    _asked(r, "a")
    other = UpgradeStatus(device_id="a", request_id="manual-1", phase="rolled_back", updated_at=T0)
    advance(r, {"a": _ready(request_id=request_id(r, "a"), revision=9, upgrade=other)}, T0)
    assert _outcomes(r)["a"] == "asked"


def test_a_replaced_request_is_a_conflict_and_not_counted() -> None:
    r = _rollout([["a", "b"]])
    advance(r, {"a": _ready(), "b": _ready()}, T0)
    _asked(r, "a", revision=9)
    _asked(r, "b", revision=10)
    advance(
        r,
        {
            "a": _ready(request_id="a-manual", revision=11),
            "b": _ready(request_id=request_id(r, "b"), revision=10,
                        upgrade=_status(r, "b", "rolled_back", "crash")),
        },
        T0,
    )  # fmt: skip
    assert _outcomes(r) == {"a": "conflict", "b": "failed"}
    assert "a-manual" in (r.waves[0].devices[0].reason or "")
    c = counts(r)
    assert (c["conflict"], len(c.failed), c.finished) == (1, 1, 1)


def test_bake_ends_in_success_or_in_failure_when_not_ready() -> None:
    r = _rollout([["a", "b"], ["c"]], bake_s=60)
    advance(r, {"a": _ready(), "b": _ready(), "c": _ready()}, T0)
    _asked(r, "a")
    _asked(r, "b", revision=10)
    committed = {
        "a": _ready("0.2.0", request_id=request_id(r, "a"), revision=9,
                    upgrade=_status(r, "a", "committed")),
        "b": _ready("0.2.0", request_id=request_id(r, "b"), revision=10,
                    upgrade=_status(r, "b", "committed")),
    }  # fmt: skip
    advance(r, committed, T0)
    assert _outcomes(r) == {"a": "baking", "b": "baking", "c": "pending"}
    b_gone = {**committed, "b": Observed("Stopped", "0.2.0", request_id(r, "b"), 10)}
    advance(r, b_gone, T0 + timedelta(seconds=30))
    assert _outcomes(r)["b"] == "failed"
    assert "stopped being Ready on 0.2.0 during the bake (Stopped" in (
        r.waves[0].devices[1].reason or ""
    )
    assert r.state == "halted", "budget 0: one failure halts"
    assert _outcomes(r)["c"] == "pending", "the next wave never starts"
    assert "b (stopped being Ready" in (r.reason or "")


def test_a_wave_ends_when_every_device_ended_and_the_last_one_completes() -> None:
    r = _rollout([["a"], ["b"]], bake_s=0)
    advance(r, {"a": _ready(), "b": _ready()}, T0)
    _asked(r, "a")
    done = {
        "a": _ready("0.2.0", request_id=request_id(r, "a"), revision=9,
                    upgrade=_status(r, "a", "committed")),
        "b": _ready(revision=3),
    }  # fmt: skip
    advance(r, done, T0)  # baking
    advance(r, done, T0 + timedelta(seconds=1))  # succeeded; wave 2 starts
    assert _outcomes(r) == {"a": "succeeded", "b": "asking"}
    assert r.waves[0].ended_at is not None and r.wave == 1
    r.waves[1].devices[0].outcome = "skipped"
    advance(r, done, T0 + timedelta(seconds=2))
    assert r.state == "completed"
    assert r.reason == (
        "all 2 waves ended: 1 succeeded, 0 up to date, 1 skipped, 0 conflicting, 0 failed"
    )


def test_waves_of_devices_that_are_all_skipped_pass_at_once() -> None:
    r = _rollout([["a"], ["b"], ["c"]])
    advance(r, {"c": _ready()}, T0)
    assert (r.wave, _outcomes(r)) == (2, {"a": "skipped", "b": "skipped", "c": "asking"})


def test_min_executed_lets_the_next_wave_start_before_failures_count() -> None:
    r = _rollout([["a"], ["b", "c"]], min_executed=3)
    obs = {"a": _ready(), "b": _ready(), "c": _ready()}
    advance(r, obs, T0)
    _asked(r, "a")
    obs["a"] = _ready(request_id=request_id(r, "a"), revision=9,
                      upgrade=_status(r, "a", "rolled_back", "x"))  # fmt: skip
    advance(r, obs, T0)
    assert r.state == "running" and r.wave == 1, "1 finished < 3: not counted yet"


def test_a_crash_between_saving_asking_and_writing_is_resolved_from_the_key() -> None:
    r = _rollout([["a", "b"]])
    advance(r, {"a": _ready(revision=4), "b": _ready()}, T0)
    # a's request went out before the crash (its key holds it); b's did not.
    advance(r, {"a": _ready(request_id=request_id(r, "a"), revision=5), "b": _ready()}, T0)
    assert _outcomes(r) == {"a": "asked", "b": "asking"}
    assert r.waves[0].devices[0].revision == 5


def test_a_halt_skips_the_devices_whose_request_never_went_out() -> None:
    r = _rollout([["a", "b"]])
    advance(r, {"a": _ready(), "b": _ready()}, T0)
    _asked(r, "a")
    failed = _ready(request_id=request_id(r, "a"), revision=9,
                    upgrade=_status(r, "a", "failed", "x"))  # fmt: skip
    advance(r, {"a": failed, "b": _ready()}, T0)
    assert r.state == "halted"
    assert _outcomes(r) == {"a": "failed", "b": "skipped"}
    assert r.waves[0].devices[1].reason == "not asked: the rollout halted"


@pytest.mark.parametrize(
    ("state", "action", "after", "said"),
    [
        ("running", "pause", "paused", "paused"),
        ("paused", "pause", "paused", None),
        ("paused", "resume", "running", "resumed"),
        ("running", "resume", "running", None),
        ("running", "abort", "aborted", "aborted"),
        ("paused", "abort", "aborted", "aborted"),
        ("halted", "abort", "aborted", "aborted"),
        ("halted", "resume", "running", "accepted"),
        ("aborted", "abort", "aborted", None),
    ],
)
def test_operator_transitions(state: str, action: str, after: str, said: str | None) -> None:
    r = _rollout([["a"]], state=state)
    got = operate(r, action, "ops@host", T0)
    assert r.state == after
    assert (got is None) if said is None else (got is not None and said in got)


@pytest.mark.parametrize(
    ("state", "action"),
    [("completed", "pause"), ("completed", "resume"), ("completed", "abort"),
     ("aborted", "resume"), ("aborted", "pause"), ("halted", "pause")],
)  # fmt: skip
def test_an_ended_rollout_stays_ended(state: str, action: str) -> None:
    r = _rollout([["a"]], state=state)
    with pytest.raises(RolloutError, match="cannot be"):
        operate(r, action, "ops@host", T0)
    assert r.state == state


def test_resume_after_a_halt_accepts_the_failures_so_far() -> None:
    r = _rollout([["a"], ["b"]])
    advance(r, {"a": _ready(), "b": _ready()}, T0)
    _asked(r, "a")
    failed = _ready(request_id=request_id(r, "a"), revision=9,
                    upgrade=_status(r, "a", "rolled_back", "x"))  # fmt: skip
    advance(r, {"a": failed, "b": _ready()}, T0)
    assert r.state == "halted"
    operate(r, "resume", "ops@host", T0)
    assert (r.state, r.excused) == ("running", ["a"])
    advance(r, {"a": failed, "b": _ready()}, T0)
    assert (r.state, r.wave, _outcomes(r)["b"]) == ("running", 1, "asking")
    assert summary(r) == "running, wave 2/2: 1 asking", "an accepted failure is not counted"
