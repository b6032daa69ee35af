"""A rollout's plan: waves by a stable hash, the failure budget, and what input cannot work. Pure.

Devices are ordered by sha256(rollout name + "\\n" + device id): the same name and
devices always give the same plan, and another rollout name gives another
canary. Wave k takes the devices up to its cumulative percentage of all of them,
rounded up, and at least one more than the wave before; the plan is stored when
the rollout is created, so a device's wave never changes afterwards.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_WAVES",
    "Budget",
    "budget_notes",
    "budget_problems",
    "over_budget",
    "parse_budget",
    "parse_waves",
    "plan_waves",
    "wave_sizes",
]

DEFAULT_WAVES = "1%,10%,50%,100%"
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")


def parse_waves(text: str) -> list[float]:
    """`1%,10%,50%,100%` -> [1, 10, 50, 100]; ValueError saying what is wrong, and how."""
    out: list[float] = []
    for part in (p.strip() for p in text.split(",")):
        m = _PERCENT.fullmatch(part)
        if not m:
            raise ValueError(f"wave {part!r} is not a percentage; write waves like {DEFAULT_WAVES}")
        pct = float(m.group(1))
        if pct <= 0:
            raise ValueError(f"wave {part} is empty; every wave is more than 0%")
        if pct > 100:
            raise ValueError(f"wave {part} is over 100%; the last wave is at most 100%")
        if out and pct <= out[-1]:
            raise ValueError(
                f"waves must increase (they are cumulative): {part} after {out[-1]:g}%; "
                f"write them like {DEFAULT_WAVES}"
            )
        out.append(pct)
    return out


@dataclass(frozen=True)
class Budget:
    """How many finished devices may fail: a count, or a percentage of those finished."""

    max_failures: int | None = 0
    max_failures_percent: float | None = None
    min_executed: int = 1

    def __str__(self) -> str:
        allowed = (
            f"{self.max_failures_percent:g}% of finished devices"
            if self.max_failures_percent is not None
            else f"{self.max_failures} failure{'s' if self.max_failures != 1 else ''}"
        )
        return f"{allowed}, counted once {self.min_executed} finished"


def parse_budget(text: str) -> tuple[int | None, float | None]:
    """`2` -> (2, None); `5%` -> (None, 5.0); ValueError otherwise."""
    t = text.strip()
    if m := _PERCENT.fullmatch(t):
        pct = float(m.group(1))
        if pct >= 100:
            raise ValueError(f"--max-failures {t} can never be exceeded; give less than 100%")
        return None, pct
    if t.isdigit():
        return int(t), None
    raise ValueError(f"--max-failures {t!r}: give a number of devices (2) or a percentage (5%)")


def wave_sizes(total: int, percents: Sequence[float]) -> list[tuple[float, int]]:
    """(percentage, cumulative device count) per wave: the percentage of `total` rounded up,
    at least one more than the wave before, at most `total`; a wave that would add nobody
    (`total` reached) is dropped."""
    out: list[tuple[float, int]] = []
    for pct in percents:
        # Round before ceil: 10% of 30 is 3, not the 3.0000000000000004 floats say.
        want = math.ceil(round(pct * total / 100, 9))
        before = out[-1][1] if out else 0
        count = min(total, max(want, before + 1))
        if count > before:
            out.append((pct, count))
    return out


def _rank(name: str, device: str) -> bytes:
    return hashlib.sha256(f"{name}\n{device}".encode()).digest()


def plan_waves(
    name: str, devices: Iterable[str], percents: Sequence[float]
) -> list[tuple[float, list[str]]]:
    """(cumulative percentage, the wave's devices sorted by id) for each non-empty wave."""
    order = sorted(set(devices), key=lambda d: (_rank(name, d), d))
    out: list[tuple[float, list[str]]] = []
    start = 0
    for pct, count in wave_sizes(len(order), percents):
        out.append((pct, sorted(order[start:count])))
        start = count
    return out


def budget_problems(total: int, budget: Budget) -> list[str]:
    """Why a budget can never be met for `total` devices (empty when it can)."""
    problems = []
    if budget.min_executed < 1:
        problems.append("--min-executed is at least 1")
    elif budget.min_executed > total:
        problems.append(
            f"--min-executed {budget.min_executed} is more than the {total} device"
            f"{'s' if total != 1 else ''} of the rollout: the failure budget would never be "
            f"counted; give at most {total}"
        )
    return problems


def budget_notes(total: int, budget: Budget) -> list[str]:
    """What an operator should know about a budget that works but may not be meant."""
    if budget.max_failures is not None and budget.max_failures >= total:
        return [
            f"--max-failures {budget.max_failures} allows every one of the {total} devices to "
            "fail: this rollout never halts"
        ]
    return []


def over_budget(failures: int, finished: int, budget: Budget) -> bool:
    """True once `finished` reached `min_executed` and `failures` exceed what is allowed."""
    if finished < budget.min_executed or failures == 0:
        return False
    if budget.max_failures_percent is not None:
        return failures * 100 > budget.max_failures_percent * finished
    return failures > (budget.max_failures or 0)
