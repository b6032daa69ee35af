"""Publishes DeviceInfo to KV `device-info/<device_id>`, and guards the key against duplicates.

Written at start, on any change, after every reconnect, and at least every 5
minutes. A key that holds another machine's DeviceInfo is never overwritten
(compare-and-set on the revision): the conflict is logged, shown in `status`,
and looked at again on the agent's one retry policy (`agent.service.retrying`),
like every other failure of the announcer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from pydantic import ValidationError

from agent.config import Config
from agent.deviceinfo.collect import collect_device_info, same_device_info
from agent.runtime import RuntimeState
from agent.service import retrying
from harmony_core.bus import Bus
from harmony_core.contracts import DeviceInfo, dump_json
from harmony_core.errors import (
    BucketMissingError,
    BusError,
    DeviceConflictError,
    RevisionMismatchError,
)

__all__ = ["Announcer", "claim_and_write"]

log = logging.getLogger("agent.announce")

_REFRESH_S = 300.0
_CHANGE_CHECK_S = 60.0


async def claim_and_write(bus: Bus, bucket: str, info: DeviceInfo) -> int:
    """Write `info` unless the key belongs to another machine; DeviceConflictError then."""
    for _ in range(5):
        current = await bus.kv_get(bucket, info.device_id)
        if current is not None:
            try:
                theirs = DeviceInfo.model_validate_json(current.value).machine_id
            except ValidationError:
                theirs = None  # garbage under our key: ours to overwrite
            if theirs is not None and theirs != info.machine_id:
                raise DeviceConflictError(info.device_id, info.machine_id, theirs)
        try:
            return await bus.kv_update(
                bucket, info.device_id, dump_json(info), current.revision if current else None
            )
        except RevisionMismatchError:
            continue  # someone wrote between our read and write: look again
    raise BusError(f"device-info/{info.device_id} keeps changing under us; retrying later")


class Announcer:
    """The DeviceInfo publisher, a daemon `Service`; its state lives in the RuntimeState."""

    name = "announce"

    def __init__(self, cfg: Config, bus: Bus, state: RuntimeState) -> None:
        self._cfg = cfg
        self._bus = bus
        self._state = state
        self._wake = asyncio.Event()
        self._last: DeviceInfo | None = None
        self._last_written = 0.0
        bus.on_reconnect(self.trigger)

    def trigger(self) -> None:
        """Publish now (reconnect, SIGHUP with changed labels)."""
        self._last = None
        self._wake.set()

    def reconfigure(self, cfg: Config) -> None:
        changed = cfg.labels != self._cfg.labels or cfg.heartbeat != self._cfg.heartbeat
        self._cfg = cfg
        if changed:
            self.trigger()

    def summary(self) -> None:
        """Nothing of its own: ownership and conflicts are in the RuntimeState."""
        return None

    def current(self) -> DeviceInfo:
        s = self._state
        return collect_device_info(self._cfg, s.device_id, s.machine_id, s.started_at)

    async def run(self, started: Callable[[], None]) -> None:
        """Publish until cancelled; `started()` at once (never gated on NATS)."""
        started()
        await retrying(self.name, self._publish_forever)

    async def _publish_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wait = await self._once(loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()

    async def _once(self, now: float) -> float:
        """One look; returns how long to wait before the next. Raises what must be retried."""
        if not self._bus.connected:
            return _CHANGE_CHECK_S  # the reconnect callback wakes us
        info = await asyncio.to_thread(self.current)
        due = now - self._last_written >= _REFRESH_S
        if same_device_info(self._last, info) and not due and self._state.owned:
            return _CHANGE_CHECK_S
        try:
            await claim_and_write(self._bus, self._cfg.nats.device_info_bucket, info)
        except DeviceConflictError as e:
            if self._state.conflict != str(e):
                log.error("%s", e, extra={"event": "device-id-conflict"})
            self._state.owned = False
            self._state.conflict = str(e)
            self._state.changed.set()
            raise
        except BucketMissingError as e:
            if self._state.problems.get("device-info") != str(e):
                log.error("%s", e, extra={"event": "bucket-missing"})
            self._state.problem("device-info", str(e))
            raise
        if self._state.conflict:
            log.info("device id conflict resolved", extra={"event": "device-id-conflict-resolved"})
        if self._state.conflict or not self._state.owned:
            self._state.changed.set()
        self._state.conflict = None
        self._state.owned = True
        self._state.problem("device-info", None)
        self._last = info
        self._last_written = now
        log.info("DeviceInfo published", extra={"event": "deviceinfo-published"})
        return _CHANGE_CHECK_S
