"""Is the new version healthy? A pure judge fed observations of systemd and the health file.

Healthy means, by the end of the confirm window: systemd saw READY (the unit is
active/running), the unit never restarted, and the health file of *that*
process (same pid, the target version) reports a heartbeat that NATS
acknowledged after the restart. Anything that proves the opposite ends the
watch at once; what is merely missing is judged when the window closes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from harmony_core.contracts import Health

__all__ = ["Judge", "Observation", "UnitState", "Verdict"]


@dataclass(frozen=True)
class UnitState:
    """`systemctl show -p ActiveState,SubState,NRestarts,MainPID` of the agent's unit."""

    active_state: str
    sub_state: str
    n_restarts: int
    main_pid: int
    exec_main_status: int | None = None


@dataclass(frozen=True)
class Observation:
    unit: UnitState
    health: Health | None
    at: datetime  # wall clock of the observation


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reason: str


class Judge:
    """Accumulates observations of one confirm window; `verdict` says when it is decided."""

    def __init__(
        self,
        target_version: str,
        restarted_at: datetime,
        window_s: float,
        *,
        baseline_restarts: int = 0,
        old_pid: int = 0,
    ) -> None:
        self.target = target_version
        self.restarted_at = restarted_at
        self.window_s = window_s
        self.baseline_restarts = baseline_restarts
        # The process that ran before the restart: what it does says nothing of the new one.
        self.old_pid = old_pid
        self.ready_pid: int | None = None
        self.acked = False
        self.seen_version: str | None = None
        self.last_unit: UnitState | None = None

    def observe(self, obs: Observation) -> Verdict | None:
        """Feed one observation; a Verdict once the outcome is known, else None."""
        u = obs.unit
        self.last_unit = u
        elapsed = (obs.at - self.restarted_at).total_seconds()
        if self.old_pid and u.main_pid == self.old_pid:
            return self._at_deadline() if elapsed >= self.window_s else None
        # systemd zeroes NRestarts on a manual restart: count from the lowest value seen.
        self.baseline_restarts = min(self.baseline_restarts, u.n_restarts)
        if u.n_restarts > self.baseline_restarts:
            return Verdict(False, f"the new version crashed: systemd restarted it "
                                  f"{u.n_restarts - self.baseline_restarts} time(s)")
        if u.sub_state == "auto-restart" or u.active_state == "failed":
            status = f" (exit status {u.exec_main_status})" if u.exec_main_status else ""
            return Verdict(False, f"the new version exited{status}: unit {u.active_state}/"
                                  f"{u.sub_state}")
        gone = u.main_pid != self.ready_pid or u.active_state != "active"
        if self.ready_pid is not None and gone:
            return Verdict(False, f"the new version stopped after READY: unit {u.active_state}/"
                                  f"{u.sub_state}, pid {self.ready_pid} -> {u.main_pid}")
        if u.active_state == "active" and u.sub_state == "running" and u.main_pid > 0:
            self.ready_pid = u.main_pid
        h = obs.health
        if h is not None and self.ready_pid is not None and h.pid == self.ready_pid:
            self.seen_version = h.version
            ack = h.last_heartbeat_ack_at
            if h.version == self.target and ack is not None and ack > self.restarted_at:
                self.acked = True
        if elapsed < self.window_s:
            return None
        return self._at_deadline()

    def _at_deadline(self) -> Verdict:
        w = f"{self.window_s:g}s"
        if self.ready_pid is None:
            u = self.last_unit
            state = f" (unit {u.active_state}/{u.sub_state})" if u else ""
            return Verdict(False, f"the new version never sent READY within {w}{state}")
        if self.seen_version is not None and self.seen_version != self.target:
            return Verdict(False, f"version {self.seen_version} runs instead of {self.target}")
        if not self.acked:
            return Verdict(False, f"no heartbeat of the new version was acknowledged by NATS "
                                  f"within {w} (can it reach NATS?)")
        return Verdict(True, f"READY, no restart and heartbeats acknowledged for {w}")
