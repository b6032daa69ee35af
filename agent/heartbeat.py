"""Heartbeats to KV `device-heartbeat/<device_id>` every interval ±10 %.

A heartbeat only counts as acknowledged when JetStream acked the KV write; that
time goes to the runtime state (and from there to the health file that the
self-upgrade trusts). Writes that fail while NATS is away are dropped, not
queued: the next one carries the current state. Anything else that breaks the
loop (a device file that cannot be read) is retried by `agent.service.retrying`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import time
from collections.abc import Callable

from agent.config import Config
from agent.runtime import RuntimeState
from agent.service import retrying
from agent.version import __version__
from harmony_core.bus import Bus
from harmony_core.contracts import Heartbeat, Load, LogsSummary, UpgradeSummary, dump_json, utcnow
from harmony_core.errors import BucketMissingError, BusError

__all__ = ["HeartbeatService", "Summaries", "jittered"]

log = logging.getLogger("agent.heartbeat")

Summaries = Callable[[], tuple[LogsSummary | None, UpgradeSummary | None]]


def jittered(interval: float, rnd: float | None = None) -> float:
    """`interval` ±10 %; `rnd` in [0, 1) for tests."""
    r = random.random() if rnd is None else rnd
    return interval * (0.9 + 0.2 * r)


def _load() -> Load:
    import psutil

    disk = shutil.disk_usage("/")
    return Load(
        cpu_percent=psutil.cpu_percent(interval=None),
        memory_used_percent=psutil.virtual_memory().percent,
        disk_used_percent=round(100.0 * disk.used / disk.total, 1) if disk.total else 0.0,
    )


class HeartbeatService:
    """The heartbeat loop, a daemon `Service`; its acks go to the RuntimeState."""

    name = "heartbeat"

    def __init__(
        self,
        cfg: Config,
        bus: Bus,
        state: RuntimeState,
        summaries: Summaries,
        *,
        boot_id: str,
    ) -> None:
        self._cfg = cfg
        self._bus = bus
        self._state = state
        self._summaries = summaries
        self._seq = 0
        self._boot_id = boot_id
        self._wake = asyncio.Event()
        bus.on_reconnect(self._wake.set)

    def reconfigure(self, cfg: Config) -> None:
        changed = cfg.heartbeat.interval != self._cfg.heartbeat.interval
        self._cfg = cfg
        if changed:
            self._wake.set()

    def summary(self) -> None:
        """Nothing of its own: the last acknowledged heartbeat is in the RuntimeState."""
        return None

    def build(self, state: str = "running") -> Heartbeat:
        self._seq += 1
        logs, upgrade = self._summaries()
        return Heartbeat(
            device_id=self._state.device_id,
            agent_version=__version__,
            seq=self._seq,
            sent_at=utcnow(),
            interval_s=self._cfg.heartbeat.interval,
            boot_id=self._boot_id,
            uptime_s=round(time.clock_gettime(time.CLOCK_BOOTTIME), 1),
            agent_uptime_s=round(time.monotonic() - self._state.started_mono, 3),
            state="stopping" if state == "stopping" else "running",
            load=_load(),
            logs=logs,
            upgrade=upgrade,
        )

    async def send(self, state: str = "running", timeout: float = 5.0) -> bool:
        """One heartbeat; True when JetStream acknowledged it."""
        hb = self.build(state)
        if not self._bus.connected or not self._state.owned:
            return False
        try:
            await asyncio.wait_for(
                self._bus.kv_put(
                    self._cfg.nats.heartbeat_bucket, self._state.device_id, dump_json(hb)
                ),
                timeout,
            )
        except BucketMissingError as e:
            if self._state.problems.get("heartbeat") != str(e):
                log.error("%s", e, extra={"event": "bucket-missing"})
            self._state.problem("heartbeat", str(e))
            return False
        except (BusError, TimeoutError) as e:
            log.warning(
                "heartbeat %d not acknowledged: %s",
                hb.seq,
                e or "timeout",
                extra={"event": "heartbeat-failed"},
            )
            return False
        self._state.problem("heartbeat", None)
        self._state.last_heartbeat_ack_at = utcnow()
        self._state.last_heartbeat_seq = hb.seq
        self._state.changed.set()
        return True

    async def run(self, started: Callable[[], None]) -> None:
        """Beat until cancelled; `started()` at once (never gated on NATS)."""
        started()
        await retrying(self.name, self._beat_forever)

    async def _beat_forever(self) -> None:
        import psutil

        psutil.cpu_percent(interval=None)  # prime: the first reading is otherwise 0
        while True:
            self._state.heartbeat_alive_at = time.monotonic()
            if self._state.owned:  # not yet claimed, or another machine's: say nothing
                await self.send()
            self._state.heartbeat_alive_at = time.monotonic()
            # Before our first write, look again soon: DeviceInfo may just have been claimed.
            wait = jittered(self._cfg.heartbeat.interval) if self._state.owned else 0.5
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()
