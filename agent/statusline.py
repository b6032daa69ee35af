"""Human renderings of the health record: the STATUS= line and `harmony-agent status`. Pure."""

from __future__ import annotations

from datetime import datetime

from harmony_core.contracts import Health
from harmony_core.durations import ago

__all__ = ["status_line", "status_text"]

# How the login's problems begin (agent.identity): shown first, where a person looks.
_AUTH = "auth:"


def _nats(h: Health) -> str:
    n = h.nats
    if n.state == "connected":
        return f"connected to {n.server}"
    err = f" ({n.last_error})" if n.last_error else ""
    return f"NATS {n.state}{err}, retrying"


def status_line(h: Health, now: datetime) -> str:
    """One line for `systemctl status` (STATUS=)."""
    auth = [p for p in h.problems if p.startswith(_AUTH)]
    parts = [*auth, _nats(h)]
    if h.conflict:
        parts.insert(0, "CONFLICT: " + h.conflict)
    parts.append(
        f"last heartbeat ack {ago(h.last_heartbeat_ack_at, now)}"
        + (f" (seq {h.last_heartbeat_seq})" if h.last_heartbeat_seq else "")
    )
    if h.logs is not None:
        lg = h.logs
        lag = f", lag {lg.lag_s:.1f}s" if lg.lag_s is not None else ""
        why = f" ({lg.detail})" if lg.detail and lg.state in ("blind", "error") else ""
        parts.append(f"logs {lg.state}{why}{lag}, {lg.shipped} shipped")
    if h.upgrade is not None and h.upgrade.phase:
        parts.append(f"upgrade {h.upgrade.phase} {h.upgrade.target_version or ''}".rstrip())
    parts.extend(p for p in h.problems if not p.startswith(_AUTH))
    return "; ".join(parts)


def status_text(h: Health, now: datetime, *, running: bool) -> str:
    """The multi-line report of `harmony-agent status`."""
    lines = [
        f"harmony-agent {h.version} (pid {h.pid}, {'running' if running else 'NOT running'})",
        f"  device:      {h.device_id}",
        f"  started:     {ago(h.started_at, now)}",
        f"  nats:        {_nats(h)}",
        "  heartbeat:   last ack "
        + ago(h.last_heartbeat_ack_at, now)
        + (f" (seq {h.last_heartbeat_seq})" if h.last_heartbeat_seq else ""),
    ]
    if h.conflict:
        lines.append(f"  CONFLICT:    {h.conflict}")
    if h.logs is not None:
        lg = h.logs
        lag = f"{lg.lag_s:.1f}s" if lg.lag_s is not None else "-"
        lines.append(
            f"  logs:        {lg.state}, lag {lag}, shipped {lg.shipped}, in flight "
            f"{lg.in_flight}, dropped {lg.dropped}, gaps {lg.gaps}"
            + (f" — {lg.detail}" if lg.detail else "")
        )
    if h.upgrade is not None:
        u = h.upgrade
        lines.append(
            f"  upgrade:     {u.phase or 'idle'}"
            + (f" → {u.target_version}" if u.target_version else "")
            + (f" ({u.reason})" if u.reason else "")
        )
    for p in h.problems:
        if p.startswith(_AUTH):  # the device's login (ADR-023): its own line, first
            lines.insert(3, f"  auth:        {p.removeprefix(_AUTH).strip()}")
        else:
            lines.append(f"  problem:     {p}")
    lines.append(f"  updated:     {ago(h.updated_at, now)}")
    return "\n".join(lines)
