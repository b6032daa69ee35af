"""The root-side upgrade journal's states and their one transition table. Pure.

Mender-style: a state is saved to the journal *before* its side effects, so a
crash at any instant finds the journal naming the step that was under way.
Stored names are kebab-case and never renamed; an unknown stored name means
roll back; a store counter breaks loops of crash-and-resume. Resuming an
interrupted journal is a transition too (`resume_state`): RESUMED goes on
where it stopped, INTERRUPTED gives up (nothing switched yet: failed;
switched, or resumed too often: roll back).
"""

from __future__ import annotations

import enum
from typing import Final

from harmony_core.contracts import UpgradePhase

__all__ = [
    "MAX_RESUMES",
    "MAX_STORE_COUNT",
    "TERMINAL",
    "Event",
    "Recovery",
    "State",
    "next_state",
    "phase_of",
    "recovery_for",
    "resume_state",
]


class State(enum.StrEnum):
    VERIFYING = "verifying"  # staged input copied and re-verified; nothing changed yet
    EXTRACTING = "extracting"  # releases/<v>.tmp being written
    SWITCHING = "switching"  # release complete; `current` flip and restart under way
    WATCHING = "watching"  # new version running, confirm window open
    COMMITTING = "committing"  # healthy; pruning old releases
    ROLLING_BACK = "rolling-back"  # flipping `current` back and restarting the old version
    COMMITTED = "committed"
    ROLLED_BACK = "rolled-back"
    FAILED = "failed"  # nothing switched; the old version never stopped
    REJECTED = "rejected"  # the root side refused the staged request


class Event(enum.StrEnum):
    VERIFIED = "verified"
    REFUSED = "refused"
    ERROR = "error"
    EXTRACTED = "extracted"
    SWITCHED = "switched"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    PRUNED = "pruned"
    RESTORED = "restored"
    RESUMED = "resumed"  # found unfinished after a crash or kill: carry on
    INTERRUPTED = "interrupted"  # found unfinished: give up on it


class Recovery(enum.StrEnum):
    """What the boot-time recovery does with a journal found in a state."""

    NOTHING = "nothing"  # terminal: at most re-publish the final status
    ABANDON = "abandon"  # nothing switched yet: remove partial work, report failed
    RESUME = "resume"  # make sure the new release runs, watch it again
    ROLL_BACK = "roll-back"
    FINISH_COMMIT = "finish-commit"


TERMINAL: Final = frozenset(
    {State.COMMITTED, State.ROLLED_BACK, State.FAILED, State.REJECTED}
)
# A journal resumed this often, or saved this often, is looping: roll back.
MAX_RESUMES: Final = 3
MAX_STORE_COUNT: Final = 64

_TABLE: Final[dict[tuple[State, Event], State]] = {
    (State.VERIFYING, Event.VERIFIED): State.EXTRACTING,
    (State.VERIFYING, Event.REFUSED): State.REJECTED,
    (State.VERIFYING, Event.ERROR): State.FAILED,
    (State.EXTRACTING, Event.EXTRACTED): State.SWITCHING,
    (State.EXTRACTING, Event.ERROR): State.FAILED,
    (State.SWITCHING, Event.SWITCHED): State.WATCHING,
    (State.SWITCHING, Event.ERROR): State.ROLLING_BACK,
    (State.WATCHING, Event.HEALTHY): State.COMMITTING,
    (State.WATCHING, Event.UNHEALTHY): State.ROLLING_BACK,
    (State.WATCHING, Event.ERROR): State.ROLLING_BACK,
    (State.COMMITTING, Event.PRUNED): State.COMMITTED,
    (State.ROLLING_BACK, Event.RESTORED): State.ROLLED_BACK,
    # Resuming a journal found unfinished (resume_state picks the event).
    (State.VERIFYING, Event.INTERRUPTED): State.FAILED,
    (State.EXTRACTING, Event.INTERRUPTED): State.FAILED,
    (State.SWITCHING, Event.RESUMED): State.SWITCHING,
    (State.SWITCHING, Event.INTERRUPTED): State.ROLLING_BACK,
    (State.WATCHING, Event.RESUMED): State.WATCHING,
    (State.WATCHING, Event.INTERRUPTED): State.ROLLING_BACK,
    (State.COMMITTING, Event.RESUMED): State.COMMITTING,
    (State.ROLLING_BACK, Event.RESUMED): State.ROLLING_BACK,
}

_PHASE: Final[dict[State, UpgradePhase]] = {
    State.VERIFYING: "switching",
    State.EXTRACTING: "switching",
    State.SWITCHING: "switching",
    State.WATCHING: "watching",
    State.COMMITTING: "watching",
    State.ROLLING_BACK: "watching",
    State.COMMITTED: "committed",
    State.ROLLED_BACK: "rolled_back",
    State.FAILED: "failed",
    State.REJECTED: "rejected",
}

_RECOVERY: Final[dict[State, Recovery]] = {
    State.VERIFYING: Recovery.ABANDON,
    State.EXTRACTING: Recovery.ABANDON,
    State.SWITCHING: Recovery.RESUME,
    State.WATCHING: Recovery.RESUME,
    State.COMMITTING: Recovery.FINISH_COMMIT,
    State.ROLLING_BACK: Recovery.ROLL_BACK,
    State.COMMITTED: Recovery.NOTHING,
    State.ROLLED_BACK: Recovery.NOTHING,
    State.FAILED: Recovery.NOTHING,
    State.REJECTED: Recovery.NOTHING,
}


def next_state(state: State, event: Event) -> State:
    """The state `event` leads to; ValueError for a transition the table does not have."""
    try:
        return _TABLE[(state, event)]
    except KeyError:
        raise ValueError(f"no transition from {state.value} on {event.value}") from None


def phase_of(state: State) -> UpgradePhase:
    """The UpgradeStatus phase a journal state is reported as."""
    return _PHASE[state]


def recovery_for(stored: str, *, resumes: int = 0, store_count: int = 0) -> Recovery:
    """What to do at boot with a journal whose stored state name is `stored`."""
    try:
        state = State(stored)
    except ValueError:
        return Recovery.ROLL_BACK
    action = _RECOVERY[state]
    looping = resumes >= MAX_RESUMES or store_count >= MAX_STORE_COUNT
    if action is Recovery.RESUME and looping:
        return Recovery.ROLL_BACK
    return action


def resume_state(stored: str, *, resumes: int = 0, store_count: int = 0) -> State | None:
    """The state to save before finishing a journal found in `stored`; None: it is finished.

    Through the transition table: RESUMED where the journal goes on as it was,
    INTERRUPTED where it gives up. An unknown stored name rolls back.
    """
    action = recovery_for(stored, resumes=resumes, store_count=store_count)
    if action is Recovery.NOTHING:
        return None
    try:
        state = State(stored)
    except ValueError:
        return State.ROLLING_BACK
    goes_on = action in (Recovery.RESUME, Recovery.FINISH_COMMIT) or state is State.ROLLING_BACK
    return next_state(state, Event.RESUMED if goes_on else Event.INTERRUPTED)
