"""What the boot-time recovery does, decided from facts alone. Pure: no I/O.

At boot, before the agent starts, `current` must name the release the
journal will end with: the new one when the upgrade is resumed or being
committed, the old one when it is abandoned or rolled back. When `current`
dangles (or names an incomplete release) and the journal names nothing
usable, the newest complete release is taken, newest as dpkg orders
versions (1.10.0 after 1.9.0). `root.recover_on_boot` gathers the facts
and applies the plan.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from agent.upgrade.states import Recovery, recovery_for
from harmony_core.versions import compare_versions

__all__ = ["BootFacts", "BootPlan", "JournalFacts", "newest", "plan_boot"]


@dataclass(frozen=True)
class JournalFacts:
    """What the boot decision needs of the upgrade journal."""

    state: str
    from_version: str | None = None
    to_version: str | None = None
    resumes: int = 0
    store_count: int = 0
    published: bool = False


@dataclass(frozen=True)
class BootFacts:
    journal: JournalFacts | None
    current: str | None  # the release `current` names; None when missing or odd
    complete: frozenset[str]  # release directories that hold their marker


@dataclass(frozen=True)
class BootPlan:
    remove: tuple[str, ...] = ()  # incomplete releases to delete (never a complete one)
    flip_to: str | None = None  # point `current` here; None: leave it
    start_switch: bool = False  # the journal is unfinished, or its end not yet reported


def _order(a: str, b: str) -> int:
    try:
        return compare_versions(a, b)
    except ValueError:
        # A name that is no version sorts before every version, then by name.
        va, vb = _is_version(a), _is_version(b)
        return (va > vb) - (va < vb) or (a > b) - (a < b)


def _is_version(name: str) -> bool:
    try:
        compare_versions(name, name)
    except ValueError:
        return False
    return True


def newest(names: Iterable[str]) -> str | None:
    """The newest of `names` in version order; None when there are none."""
    ordered = sorted(names, key=functools.cmp_to_key(_order))
    return ordered[-1] if ordered else None


def plan_boot(facts: BootFacts) -> BootPlan:
    """Which partial release to remove, where `current` must point, whether the switch runs."""
    j = facts.journal
    action = (
        recovery_for(j.state, resumes=j.resumes, store_count=j.store_count) if j else None
    )
    old = j.from_version if j else None
    new = j.to_version if j else None
    remove = (new,) if action is Recovery.ABANDON and new and new not in facts.complete else ()
    target: str | None
    if action in (Recovery.RESUME, Recovery.FINISH_COMMIT) and new in facts.complete:
        target = new  # boot straight into the release the journal will end with
    elif action in (None, Recovery.NOTHING):
        target = None
    else:
        target = old
    flip_to: str | None = None
    if target is not None and target in facts.complete:
        flip_to = target
    elif facts.current not in facts.complete:
        # `current` dangles: the old release if there is one, else the newest there is.
        flip_to = old if old in facts.complete else newest(facts.complete)
    if flip_to == facts.current:
        flip_to = None
    start = j is not None and (action is not Recovery.NOTHING or not j.published)
    return BootPlan(remove=remove, flip_to=flip_to, start_switch=start)
