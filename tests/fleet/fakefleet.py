"""A test double for many devices: each answers upgrade requests in KV as the agent does.

It writes DeviceInfo and heartbeats (Ready) for each device, watches
`agent-upgrade`, verifies each request's signature like a device, and walks
`agent-upgrade-status` through received → … → committed (then heartbeats with
the new version), or ends it `rolled_back`, `failed` or `rejected`, or never
answers — per device, as the test says. A request id seen before is rejected, as
a real device's replay store does; `asked` keeps every request each device got.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from harmony_core.bus import Bus
from harmony_core.contracts import (
    CpuInfo,
    DeviceInfo,
    DiskInfo,
    Heartbeat,
    Load,
    OsInfo,
    UpgradePhase,
    UpgradeStatus,
    dump_json,
    utcnow,
)
from harmony_core.envelope import VerifyingKey, verify_envelope
from harmony_core.errors import UpgradeRejectedError

__all__ = ["Behaviour", "FakeDevice", "FakeFleet", "fake_fleet"]

Behaviour = Literal["commit", "rollback", "fail", "reject", "silent", "unready-after-commit"]
_WAY_TO_COMMIT: tuple[UpgradePhase, ...] = (
    "received", "downloading", "verifying", "staged", "switching", "watching",
)  # fmt: skip


@dataclass
class FakeDevice:
    id: str
    labels: dict[str, str] = field(default_factory=dict)
    behaviour: Behaviour = "commit"
    version: str = "0.1.0"
    arch: str = "amd64"
    heartbeats: bool = True  # False: never heartbeats (its status stays Unknown)
    stopped: bool = False  # its one heartbeat says `stopping` (Stopped)
    delay_s: float = 0.0  # before it answers a request
    # (request id, monotonic time it arrived) for every request it got.
    asked: list[tuple[str, float]] = field(default_factory=list)

    @property
    def request_ids(self) -> list[str]:
        return [rid for rid, _ in self.asked]


class FakeFleet:
    def __init__(
        self,
        bus: Bus,
        devices: Iterable[FakeDevice],
        keys: Mapping[str, VerifyingKey],
        *,
        interval_s: float = 0.5,
        step_s: float = 0.01,
    ) -> None:
        self.bus = bus
        self.devices = {d.id: d for d in devices}
        self.keys = keys
        self.interval_s = interval_s
        self.step_s = step_s
        self._seq = 0
        self._silenced: set[str] = set()
        self.kv_writes = 0

    def add(self, d: FakeDevice) -> None:
        self.devices[d.id] = d

    async def publish_info(self, d: FakeDevice) -> None:
        now = utcnow()
        info = DeviceInfo(
            device_id=d.id, machine_id="m" * 32, hostname=d.id, labels=d.labels,
            agent_version=d.version, os=OsInfo(id="debian", version_id="12", pretty_name="Debian"),
            kernel="6.1", arch=d.arch, boot_id="b", booted_at=now, started_at=now,
            cpu=CpuInfo(model="x", count=2), memory_total_bytes=1,
            disk=DiskInfo(root_total_bytes=1), network=[], heartbeat_interval_s=self.interval_s,
            updated_at=now,
        )  # fmt: skip
        await self._put("device-info", d.id, dump_json(info))

    async def heartbeat(
        self, d: FakeDevice, state: Literal["running", "stopping"] = "running"
    ) -> None:
        self._seq += 1
        hb = Heartbeat(
            device_id=d.id, agent_version=d.version, seq=self._seq, sent_at=utcnow(),
            interval_s=self.interval_s, boot_id="b", uptime_s=1, agent_uptime_s=1, state=state,
            load=Load(cpu_percent=1, memory_used_percent=1, disk_used_percent=1),
        )  # fmt: skip
        await self._put("device-heartbeat", d.id, dump_json(hb))

    async def _put(self, bucket: str, key: str, value: bytes) -> None:
        self.kv_writes += 1
        await self.bus.kv_put(bucket, key, value)

    async def _status(self, d: FakeDevice, rid: str, phase: UpgradePhase, reason: str = "") -> None:
        st = UpgradeStatus(
            device_id=d.id, request_id=rid, from_version=d.version, target_version=None,
            phase=phase, reason=reason or None, updated_at=utcnow(),
        )  # fmt: skip
        await self._put("agent-upgrade-status", d.id, dump_json(st))

    async def start(self) -> None:
        """DeviceInfo and the first heartbeats, before any rollout is planned."""
        for d in self.devices.values():
            await self.publish_info(d)
            if d.stopped:
                await self.heartbeat(d, "stopping")
            elif d.heartbeats:
                await self.heartbeat(d)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            for d in list(self.devices.values()):
                if d.heartbeats and not d.stopped and d.id not in self._silenced:
                    await self.heartbeat(d)

    async def _answer(self, d: FakeDevice, data: bytes) -> None:
        try:
            req = verify_envelope(data, self.keys).request
        except UpgradeRejectedError as e:
            await self._status(d, "", "rejected", str(e))
            return
        rid = req.request_id
        seen = rid in d.request_ids
        d.asked.append((rid, time.monotonic()))
        if seen:
            await self._status(d, rid, "rejected", "request id seen before (replayed)")
            return
        if d.behaviour == "silent":
            return
        await asyncio.sleep(d.delay_s)
        if d.behaviour == "reject":
            await self._status(d, rid, "rejected", "refused by the test double")
            return
        for phase in _WAY_TO_COMMIT[: 2 if d.behaviour == "fail" else None]:
            await self._status(d, rid, phase)
            await asyncio.sleep(self.step_s)
        if d.behaviour == "fail":
            await self._status(d, rid, "failed", "download failed (test double)")
            return
        if d.behaviour == "rollback":
            await self._status(d, rid, "rolled_back", "the new version crashed (test double)")
            return
        d.version = req.target_version
        await self.heartbeat(d)  # the new version's heartbeat, acknowledged before the commit
        await self._status(d, rid, "committed", "healthy for the confirm window")
        if d.behaviour == "unready-after-commit":
            await asyncio.sleep(0.5)  # the bake has begun
            self._silenced.add(d.id)
            await self.heartbeat(d, "stopping")

    async def _requests(self) -> None:
        async with asyncio.TaskGroup() as tg:
            async for e in self.bus.kv_watch("agent-upgrade"):
                if e is None or e.deleted or e.key not in self.devices:
                    continue
                tg.create_task(self._answer(self.devices[e.key], e.value))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._beat())
            tg.create_task(self._requests())


@contextlib.asynccontextmanager
async def fake_fleet(
    bus: Bus, devices: Iterable[FakeDevice], keys: Mapping[str, VerifyingKey], **kw: float
) -> AsyncIterator[FakeFleet]:
    """The fleet, started (DeviceInfo and heartbeats written) and answering until the end."""
    fleet = FakeFleet(bus, devices, keys, **kw)
    await fleet.start()
    task = asyncio.create_task(fleet.run())
    try:
        yield fleet
    finally:
        # Until it ended: on Python 3.11 a cancel can be lost in nats-py's next_msg.
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=0.2)
        with contextlib.suppress(asyncio.CancelledError):
            await task
