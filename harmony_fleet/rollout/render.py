"""What `rollout create`, `status` and `list` print: tables a person scans, JSON for machines.

Pure: the callers fetch the rollout, the live upgrade phases and the devices
that match the selector now; this only arranges them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from harmony_core.contracts import Rollout, format_ts
from harmony_core.durations import ago, format_duration
from harmony_fleet.rollout.state import FINAL_STATES, budget_of, counts, summary
from harmony_fleet.terminal import escape_controls

__all__ = ["controller_line", "list_table", "plan_json", "plan_text", "status_json", "status_text"]

_SHOWN_PER_WAVE = 12  # devices a plan names per wave before "+N more"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(escape_controls(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    )


def _what(r: Rollout) -> str:
    n = sum(len(w.devices) for w in r.waves)
    target = f"-l '{r.selector}'" if r.selector is not None else "named devices"
    return f"{r.version} to {n} device{'s' if n != 1 else ''} ({target})"


def _settings(r: Rollout) -> str:
    window = f", confirm window {format_duration(r.confirm_window_s)}" if r.confirm_window_s else ""
    return (
        f"bake {format_duration(r.bake_s)}, deadline {format_duration(r.deadline_s)}{window}, "
        f"failure budget: {budget_of(r)}"
    )


def plan_json(r: Rollout) -> dict[str, Any]:
    """`{"name", "version", "waves": [{"devices": [...]}]}`."""
    return {
        "name": r.name,
        "version": r.version,
        "waves": [{"devices": [d.id for d in w.devices]} for w in r.waves],
    }


def plan_text(r: Rollout) -> str:
    rows = [["WAVE", "UP TO", "DEVICES", ""]]
    for i, w in enumerate(r.waves):
        ids = [d.id for d in w.devices]
        shown = " ".join(ids[:_SHOWN_PER_WAVE])
        more = f" +{len(ids) - _SHOWN_PER_WAVE} more" if len(ids) > _SHOWN_PER_WAVE else ""
        rows.append([str(i + 1), f"{w.percent:g}%", str(len(ids)), shown + more])
    return (
        f"rollout {r.name}: {_what(r)} in {len(r.waves)} wave{'s' if len(r.waves) != 1 else ''}\n"
        f"{_settings(r)}\n{_table(rows)}"
    )


def controller_line(r: Rollout, written_at: datetime | None, now: datetime) -> str:
    """Who drives it: the lease holder, and whether it is alive by the record's last write."""
    if r.state in FINAL_STATES:
        return "none (it ended)"
    lease = r.lease
    if lease is None:
        return f"none: start one with harmony-fleet rollout run {r.name} --key KEY"
    silent = (now - written_at).total_seconds() if written_at else 0.0
    if silent > lease.ttl_s:
        return (
            f"none: {lease.holder} went silent {ago(written_at, now)}; "
            f"start one with harmony-fleet rollout run {r.name} --key KEY"
        )
    return f"{lease.holder} (last write {ago(written_at, now)})"


def _wave_line(r: Rollout, i: int) -> str:
    w = r.waves[i]
    when = (
        f"started {format_ts(w.started_at)[:19]}Z" if w.started_at is not None else "not started"
    )
    if w.ended_at is not None:
        when += f", ended {format_ts(w.ended_at)[:19]}Z"
    return f"wave {i + 1}/{len(r.waves)} (up to {w.percent:g}%): {len(w.devices)} devices, {when}"


def status_text(
    r: Rollout,
    phases: Mapping[str, str],
    left_out: Sequence[str],
    controller: str,
) -> str:
    lines = [
        f"rollout {r.name}: {r.state}" + (f" — {r.reason}" if r.reason else ""),
        f"{_what(r)}; created {format_ts(r.created_at)[:19]}Z by {r.created_by}",
        _settings(r),
        f"now: {summary(r)}",
        f"controller: {controller}",
    ]
    rows = [["DEVICE", "WAVE", "OUTCOME", "PHASE", "REASON"]]
    for i, w in enumerate(r.waves):
        lines.append(_wave_line(r, i))
        for d in w.devices:
            rows.append(
                [d.id, str(i + 1), d.outcome, phases.get(d.id, "-"), (d.reason or "")[:160]]
            )
    out = "\n".join(escape_controls(x) for x in lines) + "\n" + _table(rows)
    if left_out:
        out += (
            f"\nleft out (matched -l '{r.selector}' only after the rollout was created): "
            + escape_controls(", ".join(left_out))
        )
    return out


def status_json(
    r: Rollout, phases: Mapping[str, str], left_out: Sequence[str], controller: str
) -> dict[str, Any]:
    c = counts(r)
    return {
        "name": r.name,
        "version": r.version,
        "selector": r.selector,
        "state": r.state,
        "reason": r.reason,
        "wave": r.wave + 1 if r.wave >= 0 else None,
        "waves": [
            {
                "percent": w.percent,
                "started_at": format_ts(w.started_at) if w.started_at else None,
                "ended_at": format_ts(w.ended_at) if w.ended_at else None,
                "devices": [
                    {
                        "id": d.id,
                        "outcome": d.outcome,
                        "phase": phases.get(d.id),
                        "reason": d.reason,
                    }
                    for d in w.devices
                ],
            }
            for w in r.waves
        ],
        "counts": {k: v for k, v in c.by_outcome.items() if v},
        "excused": r.excused,
        "left_out": list(left_out),
        "controller": controller,
    }


def list_table(rollouts: Sequence[Rollout]) -> str:
    rows = [["NAME", "STATE", "VERSION", "WAVE", "DEVICES", "CREATED", "NOW"]]
    for r in rollouts:
        n = sum(len(w.devices) for w in r.waves)
        wave = f"{r.wave + 1}/{len(r.waves)}" if r.wave >= 0 else f"-/{len(r.waves)}"
        created = format_ts(r.created_at)[:16] + "Z"
        now = summary(r).split(": ", 1)[-1]
        rows.append([r.name, r.state, r.version, wave, str(n), created, now])
    return _table(rows)
