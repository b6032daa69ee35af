"""How a rollout moves, given what the devices report: one pure step, table-tested. No I/O.

`advance` is the whole decision: it judges each asked device from its upgrade
status and heartbeat, halts when the failure budget is exceeded, ends a wave
when all its devices ended, and starts the next one (saving `asking` for the
devices to ask before any request is written). The controller saves what it
returns with compare-and-set and only then writes requests; after a crash the
saved record plus the KV says exactly which devices were asked.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from harmony_core.contracts import Rollout, RolloutDevice, RolloutWave, UpgradeStatus
from harmony_core.durations import format_duration
from harmony_core.errors import RolloutError
from harmony_fleet.rollout.plan import Budget, over_budget

__all__ = [
    "ENDED",
    "FINAL_STATES",
    "Counts",
    "Observed",
    "advance",
    "budget_of",
    "counts",
    "devices",
    "operate",
    "request_id",
    "summary",
    "wave_ended",
]

# Outcomes that never change again.
ENDED = frozenset({"succeeded", "failed", "skipped", "conflict", "up-to-date"})
FINAL_STATES = frozenset({"halted", "completed", "aborted"})
_FAILED_PHASES = frozenset({"rolled_back", "failed", "rejected"})
_NAMED = 10  # devices named in a halt reason before "and N more"


@dataclass(frozen=True)
class Observed:
    """What NATS says of one device right now."""

    status: str = "Unknown"  # Ready / Stale / Offline / Stopped / Unknown (heartbeat age)
    version: str | None = None  # the agent version of its last heartbeat
    request_id: str | None = None  # the request in its `agent-upgrade` key
    revision: int | None = None  # that key's revision (None: no key)
    upgrade: UpgradeStatus | None = None  # its `agent-upgrade-status`


@dataclass
class Counts:
    by_outcome: dict[str, int] = field(default_factory=dict)
    failed: list[RolloutDevice] = field(default_factory=list)  # not excused

    def __getitem__(self, outcome: str) -> int:
        return self.by_outcome.get(outcome, 0)

    @property
    def finished(self) -> int:
        return self["succeeded"] + self["failed"]


def request_id(r: Rollout, device: str) -> str:
    """The one request id a rollout ever gives a device."""
    return f"{device}-{r.uid}"


def budget_of(r: Rollout) -> Budget:
    return Budget(r.max_failures, r.max_failures_percent, r.min_executed)


def devices(r: Rollout, *, started_only: bool = False) -> Iterator[tuple[int, RolloutDevice]]:
    """(wave index, device) in plan order."""
    for i, w in enumerate(r.waves):
        if started_only and i > r.wave:
            break
        for d in w.devices:
            yield i, d


def counts(r: Rollout) -> Counts:
    c = Counts()
    excused = set(r.excused)
    for _, d in devices(r):
        c.by_outcome[d.outcome] = c.by_outcome.get(d.outcome, 0) + 1
        if d.outcome == "failed" and d.id not in excused:
            c.failed.append(d)
    c.by_outcome["failed"] = len(c.failed)
    return c


def wave_ended(w: RolloutWave) -> bool:
    return all(d.outcome in ENDED for d in w.devices)


def _set(d: RolloutDevice, outcome: str, now: datetime, reason: str | None = None) -> None:
    d.outcome = outcome  # type: ignore[assignment]
    d.since = now
    d.reason = reason


def _judge(r: Rollout, d: RolloutDevice, o: Observed, now: datetime) -> None:
    """One device of a started wave, from what it reports."""
    rid = request_id(r, d.id)
    if d.outcome == "asking":
        if o.request_id == rid:  # written before a crash: asked, not to be asked again
            d.outcome, d.revision = "asked", o.revision
            d.asked_at = d.asked_at or now
        return
    if d.outcome == "asked":
        st = o.upgrade if o.upgrade is not None and o.upgrade.request_id == rid else None
        if st is not None and st.phase in _FAILED_PHASES:
            _set(d, "failed", now, f"{st.phase}: {st.reason or 'no reason given'}")
        elif st is not None and st.phase == "committed":
            if o.status == "Ready" and o.version == r.version:
                _set(d, "baking", now)
            elif o.status != "Ready":  # (Ready on the old version: its new heartbeat is on the way)
                _set(d, "failed", now, f"not Ready after its commit ({o.status})")
        elif o.revision != d.revision and o.request_id != rid:
            by = f"request {o.request_id}" if o.request_id else "its deletion"
            _set(d, "conflict", now, f"our request was replaced by {by} "
                 "(another rollout or a manual upgrade)")  # fmt: skip
        late = d.asked_at is not None and (now - d.asked_at).total_seconds() > r.deadline_s
        if d.outcome == "asked" and late:
            where: str = st.phase if st is not None else "no status for our request"
            if st is not None and st.phase == "committed":
                where = f"committed, but not Ready on {r.version} ({o.status}, {o.version})"
            _set(d, "failed", now,
                 f"no terminal phase within the {format_duration(r.deadline_s)} deadline "
                 f"(last: {where})")  # fmt: skip
        return
    if d.outcome == "baking":
        if o.status != "Ready" or o.version != r.version:
            _set(d, "failed", now, f"stopped being Ready on {r.version} during the bake "
                 f"({o.status}, running {o.version or 'unknown'})")  # fmt: skip
        elif d.since is not None and (now - d.since).total_seconds() >= r.bake_s:
            _set(d, "succeeded", now)


def _halt_reason(r: Rollout, c: Counts) -> str:
    named = ", ".join(f"{d.id} ({d.reason})" for d in c.failed[:_NAMED])
    more = f", and {len(c.failed) - _NAMED} more" if len(c.failed) > _NAMED else ""
    return (
        f"{len(c.failed)} of {c.finished} finished devices failed, over the budget "
        f"({budget_of(r)}): {named}{more}"
    )


def _start_wave(r: Rollout, i: int, obs: Mapping[str, Observed], now: datetime) -> None:
    w = r.waves[i]
    w.started_at = now
    r.wave = i
    for d in w.devices:
        o = obs.get(d.id, Observed())
        if o.status != "Ready":
            _set(d, "skipped", now, f"{o.status} when its wave started")
        elif o.version == r.version:
            _set(d, "up-to-date", now, f"already ran {r.version}")
        else:
            _set(d, "asking", now)
            d.revision = o.revision


def advance(r: Rollout, obs: Mapping[str, Observed], now: datetime) -> bool:
    """One step of `r` (changed in place) from `obs`, device id -> what NATS says now.

    Returns whether anything changed. Requests are written only for the devices it
    leaves `asking`, and only after the record is saved.
    """
    if r.state in FINAL_STATES:
        return False
    before = _fingerprint(r)
    for w in r.waves[: r.wave + 1]:
        if w.ended_at is not None:
            continue
        for d in w.devices:
            _judge(r, d, obs.get(d.id, Observed()), now)
        if wave_ended(w):
            w.ended_at = now
    c = counts(r)
    if r.state != "aborted" and over_budget(len(c.failed), c.finished, budget_of(r)):
        r.state, r.reason = "halted", _halt_reason(r, c)
        for _, d in devices(r, started_only=True):
            if d.outcome == "asking":  # its request never went out, and now never will
                _set(d, "skipped", now, "not asked: the rollout halted")
    while r.state == "running" and (r.wave < 0 or r.waves[r.wave].ended_at is not None):
        if r.wave + 1 >= len(r.waves):
            c = counts(r)
            r.state = "completed"
            r.reason = (
                f"all {len(r.waves)} waves ended: {c['succeeded']} succeeded, "
                f"{c['up-to-date']} up to date, {c['skipped']} skipped, "
                f"{c['conflict']} conflicting, {c['failed']} failed"
            )
            break
        _start_wave(r, r.wave + 1, obs, now)
        if wave_ended(r.waves[r.wave]):
            r.waves[r.wave].ended_at = now
    return _fingerprint(r) != before


def _fingerprint(r: Rollout) -> tuple[object, ...]:
    """What `advance` may change, cheaply comparable (a large rollout is thousands of devices)."""
    return (
        r.state,
        r.wave,
        tuple(w.ended_at for w in r.waves),
        tuple((d.outcome, d.revision, d.asked_at) for _, d in devices(r, started_only=True)),
    )


_SHOWN = ("asking", "asked", "baking", "succeeded", "failed", "skipped", "conflict", "up-to-date")


def summary(r: Rollout) -> str:
    """One line: state, wave, and how many devices stand where."""
    c = counts(r)
    wave = f"wave {r.wave + 1}/{len(r.waves)}" if r.wave >= 0 else f"{len(r.waves)} waves"
    parts = [f"{c[o]} {o}" for o in _SHOWN if c[o]]
    return f"{r.state}, {wave}: " + (", ".join(parts) if parts else "nothing asked yet")


def operate(r: Rollout, action: str, who: str, now: datetime) -> str | None:
    """`pause`, `resume` or `abort` `r` in place, for the operator `who`.

    Returns what happened, None when it already was so; RolloutError when it cannot be
    (a rollout that ended stays ended).
    """
    want = {"pause": "paused", "resume": "running", "abort": "aborted"}[action]
    if r.state == want:
        return None
    if r.state in ("completed", "aborted") or (r.state == "halted" and action == "pause"):
        raise RolloutError(
            f"rollout {r.name} is {r.state}; it cannot be {want} "
            f"(create a new rollout to go on)"
        )
    if action == "abort":
        r.state, r.reason = "aborted", (
            f"aborted by {who} at {now:%Y-%m-%d %H:%M:%S}Z; devices already asked finish "
            "on their own"
        )
        return f"rollout {r.name} aborted: no further requests go out"
    if action == "pause":
        r.state, r.reason = "paused", f"paused by {who}"
        return f"rollout {r.name} paused: no new wave starts until it is resumed"
    said = f"rollout {r.name} resumed"
    if r.state == "halted":
        accepted = [d.id for d in counts(r).failed]
        r.excused = [*r.excused, *accepted]
        said += (
            f" after its halt; the failures of {', '.join(accepted) or 'nobody'} are accepted "
            "and no longer counted"
        )
    r.state, r.reason = "running", f"resumed by {who}"
    return said
