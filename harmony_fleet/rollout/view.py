"""What NATS says of a rollout's devices, kept current by watches: the controller's eyes.

One watch per bucket (heartbeats, requests, upgrade statuses, and the rollout
record itself) keeps the latest of each key in memory, so a step reads nothing
from NATS; `observe` turns that into what `state.advance` judges by.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from harmony_core.bus import Bus, KvEntry
from harmony_core.contracts import Heartbeat, Rollout, UpgradeStatus
from harmony_core.selectors import device_status
from harmony_core.settings import NatsSection
from harmony_fleet.provision import ROLLOUTS_BUCKET
from harmony_fleet.rollout.state import Observed, devices

__all__ = ["View", "request_id_of", "watching"]


def request_id_of(value: bytes) -> str | None:
    """The request id inside an envelope (not verified: it is only compared with ours)."""
    try:
        body = json.loads(base64.b64decode(json.loads(value)["payload"], validate=True))
        rid = body.get("request_id")
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    return rid if isinstance(rid, str) else None


@dataclass
class View:
    """What NATS says now, kept current by one watch per bucket."""

    heartbeats: dict[str, tuple[Heartbeat, datetime]] = field(default_factory=dict)
    requests: dict[str, tuple[str | None, int]] = field(default_factory=dict)
    statuses: dict[str, UpgradeStatus] = field(default_factory=dict)
    record_revision: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    synced: dict[str, asyncio.Event] = field(default_factory=dict)

    async def pump(
        self, bus: Bus, bucket: str, key: str, keep: Callable[[KvEntry], None]
    ) -> None:
        done = self.synced[bucket]
        entries: AsyncIterator[KvEntry | None] = bus.kv_watch(bucket, key)
        async for e in entries:
            if e is None:
                done.set()
            else:
                keep(e)
            self.changed.set()

    def keep_heartbeat(self, e: KvEntry) -> None:
        try:
            hb = None if e.deleted else Heartbeat.model_validate_json(e.value)
        except ValidationError:
            hb = None
        if hb is None or e.created is None:
            self.heartbeats.pop(e.key, None)
        else:
            self.heartbeats[e.key] = (hb, e.created)

    def keep_request(self, e: KvEntry) -> None:
        if e.deleted:
            self.requests.pop(e.key, None)
        else:
            self.requests[e.key] = (request_id_of(e.value), e.revision)

    def keep_status(self, e: KvEntry) -> None:
        try:
            self.statuses[e.key] = UpgradeStatus.model_validate_json(e.value)
        except ValidationError:
            self.statuses.pop(e.key, None)

    def keep_record(self, e: KvEntry) -> None:
        self.record_revision = e.revision

    def observe(self, r: Rollout, now: datetime) -> dict[str, Observed]:
        """Every device of the rollout (a step may start the next waves too)."""
        out: dict[str, Observed] = {}
        for _, d in devices(r):
            status, version = "Unknown", None
            if beat := self.heartbeats.get(d.id):
                hb, at = beat
                age = (now - at).total_seconds()
                status, version = device_status(age, hb.interval_s, hb.state), hb.agent_version
            rid, rev = self.requests.get(d.id, (None, None))
            out[d.id] = Observed(status, version, rid, rev, self.statuses.get(d.id))
        return out


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel `tasks` until they ended: on Python 3.11 a cancel that meets a message arriving
    at the same instant inside nats-py's `next_msg` (its `wait_for`) is lost."""
    while pending := [t for t in tasks if not t.done()]:
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=0.2)




@contextlib.asynccontextmanager
async def watching(bus: Bus, n: NatsSection, name: str) -> AsyncIterator[View]:
    """A view of rollout `name`'s devices, current once yielded; its watches end with it.

    A watch that fails (NATS gone) fails the block with that error.
    """
    view = View()
    buckets: dict[str, tuple[str, Callable[[KvEntry], None]]] = {
        n.heartbeat_bucket: (">", view.keep_heartbeat),
        n.upgrade_bucket: (">", view.keep_request),
        n.upgrade_status_bucket: (">", view.keep_status),
        ROLLOUTS_BUCKET: (name, view.keep_record),
    }
    view.synced = {b: asyncio.Event() for b in buckets}
    try:
        async with asyncio.TaskGroup() as tg:
            pumps = [tg.create_task(view.pump(bus, b, k, keep)) for b, (k, keep) in buckets.items()]
            try:
                for ev in view.synced.values():
                    await ev.wait()
                yield view
            finally:
                await _stop(pumps)
    except BaseExceptionGroup as eg:
        raise eg.exceptions[0] from None
