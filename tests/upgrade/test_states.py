"""The root journal's transition table, recovery table and confirmation judge."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agent.upgrade.confirm import Judge, Observation, UnitState
from agent.upgrade.states import (
    MAX_RESUMES,
    MAX_STORE_COUNT,
    TERMINAL,
    Event,
    Recovery,
    State,
    next_state,
    phase_of,
    recovery_for,
    resume_state,
)
from harmony_core.contracts import Health, NatsHealth
from tests.upgrade.helpers import NOW

HAPPY = [
    (State.VERIFYING, Event.VERIFIED, State.EXTRACTING),
    (State.EXTRACTING, Event.EXTRACTED, State.SWITCHING),
    (State.SWITCHING, Event.SWITCHED, State.WATCHING),
    (State.WATCHING, Event.HEALTHY, State.COMMITTING),
    (State.COMMITTING, Event.PRUNED, State.COMMITTED),
]
SAD = [
    (State.VERIFYING, Event.REFUSED, State.REJECTED),
    (State.VERIFYING, Event.ERROR, State.FAILED),
    (State.EXTRACTING, Event.ERROR, State.FAILED),
    (State.SWITCHING, Event.ERROR, State.ROLLING_BACK),
    (State.WATCHING, Event.UNHEALTHY, State.ROLLING_BACK),
    (State.ROLLING_BACK, Event.RESTORED, State.ROLLED_BACK),
]


@pytest.mark.parametrize(("state", "event", "to"), HAPPY + SAD)
def test_transitions(state: State, event: Event, to: State) -> None:
    assert next_state(state, event) is to


@pytest.mark.parametrize("state", sorted(TERMINAL))
@pytest.mark.parametrize("event", list(Event))
def test_terminal_states_go_nowhere(state: State, event: Event) -> None:
    with pytest.raises(ValueError, match="no transition"):
        next_state(state, event)


def test_nothing_skips_the_watch() -> None:
    with pytest.raises(ValueError):
        next_state(State.SWITCHING, Event.HEALTHY)


@pytest.mark.parametrize(
    ("stored", "resumes", "action"),
    [
        ("verifying", 0, Recovery.ABANDON),
        ("extracting", 0, Recovery.ABANDON),
        ("switching", 0, Recovery.RESUME),
        ("watching", 0, Recovery.RESUME),
        ("watching", MAX_RESUMES, Recovery.ROLL_BACK),
        ("committing", 0, Recovery.FINISH_COMMIT),
        ("rolling-back", 0, Recovery.ROLL_BACK),
        ("committed", 0, Recovery.NOTHING),
        ("rolled-back", 0, Recovery.NOTHING),
        ("failed", 0, Recovery.NOTHING),
        ("no-such-state", 0, Recovery.ROLL_BACK),
    ],
)
def test_recovery_table(stored: str, resumes: int, action: Recovery) -> None:
    assert recovery_for(stored, resumes=resumes) is action


@pytest.mark.parametrize(
    ("stored", "resumes", "store_count", "to"),
    [
        ("verifying", 0, 0, State.FAILED),
        ("extracting", 0, 0, State.FAILED),
        ("switching", 0, 0, State.SWITCHING),
        ("switching", MAX_RESUMES, 0, State.ROLLING_BACK),
        ("watching", 0, 0, State.WATCHING),
        ("watching", MAX_RESUMES, 0, State.ROLLING_BACK),
        ("watching", 0, MAX_STORE_COUNT, State.ROLLING_BACK),
        ("committing", 0, 0, State.COMMITTING),
        ("committing", MAX_RESUMES, 0, State.COMMITTING),
        ("rolling-back", 0, 0, State.ROLLING_BACK),
        ("rolling-back", MAX_RESUMES, 0, State.ROLLING_BACK),
        ("committed", 0, 0, None),
        ("rolled-back", 0, 0, None),
        ("failed", 0, 0, None),
        ("rejected", 0, 0, None),
        ("corrupt", 0, 0, State.ROLLING_BACK),
    ],
)
def test_resuming_goes_through_the_table(
    stored: str, resumes: int, store_count: int, to: State | None
) -> None:
    """What the switch saves before it finishes a journal found unfinished after a crash."""
    assert resume_state(stored, resumes=resumes, store_count=store_count) is to


def test_every_unfinished_state_can_be_resumed_or_given_up() -> None:
    for s in set(State) - TERMINAL:
        assert resume_state(s.value) is not None
        assert resume_state(s.value, resumes=MAX_RESUMES) not in TERMINAL - {State.FAILED}


def test_stored_names_are_kebab_case_and_every_state_has_a_phase() -> None:
    for s in State:
        assert s.value == s.value.lower() and "_" not in s.value
        assert phase_of(s)


# --- the confirmation judge ---------------------------------------------------

def _unit(
    active: str = "active", sub: str = "running", restarts: int = 0, pid: int = 200
) -> UnitState:
    return UnitState(active, sub, restarts, pid)


def _health(version: str = "0.2.0", pid: int = 200, acked: bool = True) -> Health:
    return Health(version=version, pid=pid, device_id="dev-1", started_at=NOW, updated_at=NOW,
                  ready=True, nats=NatsHealth(state="connected"),
                  last_heartbeat_ack_at=NOW + timedelta(seconds=2) if acked else None)


def _judge() -> Judge:
    return Judge("0.2.0", NOW, 10.0, baseline_restarts=3, old_pid=100)


def _at(s: float) -> Observation:
    return Observation(_unit(), _health(), NOW + timedelta(seconds=s))


def test_healthy_only_when_the_window_is_over() -> None:
    j = _judge()
    assert j.observe(_at(1)) is None
    v = j.observe(_at(10))
    assert v is not None and v.healthy


@pytest.mark.parametrize(
    ("unit", "health", "reason"),
    [
        (_unit("activating", "auto-restart", 0, 0), None, "exited"),
        (_unit("failed", "failed", 0, 0), None, "exited"),
        (_unit("activating", "start", 0, 200), None, "never sent READY"),
        (_unit(), _health(acked=False), "no heartbeat of the new version was acknowledged"),
        (_unit(), _health(version="0.1.0"), "version 0.1.0 runs instead of 0.2.0"),
        (_unit(), None, "no heartbeat"),
    ],
    ids=["auto-restart", "failed", "no-ready", "no-ack", "wrong-version", "no-health-file"],
)
def test_unhealthy_reasons(unit: UnitState, health: Health | None, reason: str) -> None:
    j = _judge()
    v = j.observe(Observation(unit, health, NOW + timedelta(seconds=1)))
    if v is None:
        v = j.observe(Observation(unit, health, NOW + timedelta(seconds=11)))
    assert v is not None and not v.healthy
    assert reason in v.reason


def test_a_restart_after_ready_is_caught_at_once() -> None:
    j = _judge()
    assert j.observe(Observation(_unit(restarts=0), _health(), NOW)) is None  # manual restart: 0
    v = j.observe(Observation(_unit(restarts=1, pid=300), None, NOW + timedelta(seconds=1)))
    assert v is not None and not v.healthy and "restarted it 1 time" in v.reason


def test_the_old_process_says_nothing_about_the_new_one() -> None:
    j = _judge()
    old = Observation(_unit(pid=100), _health(pid=100), NOW + timedelta(seconds=1))
    assert j.observe(old) is None
    v = j.observe(Observation(_unit(pid=100), _health(pid=100), NOW + timedelta(seconds=10)))
    assert v is not None and not v.healthy and "never sent READY" in v.reason


def test_an_ack_from_before_the_restart_does_not_count() -> None:
    j = _judge()
    h = _health().model_copy(update={"last_heartbeat_ack_at": NOW - timedelta(seconds=1)})
    j.observe(Observation(_unit(), h, NOW + timedelta(seconds=1)))
    v = j.observe(Observation(_unit(), h, NOW + timedelta(seconds=10)))
    assert v is not None and not v.healthy and "acknowledged" in v.reason
