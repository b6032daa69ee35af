"""One simulated device: the agent's announce, heartbeat and log-batch code, on its own connection.

What runs is the agent's, imported from `agent/`: the `Announcer` (DeviceInfo
claim-and-write, again after every reconnect), the `HeartbeatService` (a
jittered interval, a fresh psutil load, a KV put, woken by a reconnect) and the
`Shipper` (LogBatch publish with its ack, retried with its Nats-Msg-Id), each
on one `Bus` (nats-py connection, the agent's jittered reconnect backoff); with
`watches`, also the upgrade service's two watches of the device's own keys.
Only the DeviceInfo is collected once per process and copied with each
device's id (collecting /proc 10,000 times would measure the simulator, not
the fleet), and the log lines are made up, not read from a journal; they are
compressed as the agent's `[logs] compression` says (by the shipper, with one
compressor per process).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from dataclasses import dataclass, field

from agent.config import Config
from agent.deviceinfo import Announcer
from agent.heartbeat import HeartbeatService
from agent.logs.pump import Batch, msg_id
from agent.logs.shipper import Encode, Shipper
from agent.runtime import RuntimeState
from agent.service import retrying
from harmony_core.bus import Bus, BusState
from harmony_core.contracts import DeviceInfo, LogBatch, LogRecord, dump_json, utcnow

__all__ = ["Metrics", "SimDevice", "log_batch"]


@dataclass
class Metrics:
    """What one device measured (wall-clock times: the parent compares them across processes)."""

    put_latencies: list[float] = field(default_factory=list)  # heartbeat KV puts, seconds
    acks: list[float] = field(default_factory=list)  # time.time() of each acknowledged heartbeat
    connected_at: list[float] = field(default_factory=list)  # time.time() of each (re)connect
    connected: bool = False


class _TimedBus(Bus):
    """The agent's Bus; heartbeat puts timed (the put alone, as the server answers it)."""

    def __init__(self, cfg: Config, name: str, metrics: Metrics) -> None:
        super().__init__(cfg.nats, name=name, on_change=self._changed)
        self._metrics = metrics
        self._hb_bucket = cfg.nats.heartbeat_bucket

    def _changed(self, state: BusState) -> None:
        m = self._metrics
        m.connected = state.state == "connected"
        if m.connected:
            m.connected_at.append(time.time())

    async def kv_put(self, bucket: str, key: str, value: bytes, *, timeout: float = 5.0) -> int:
        t = time.perf_counter()
        rev = await super().kv_put(bucket, key, value, timeout=timeout)
        if bucket == self._hb_bucket:
            self._metrics.put_latencies.append(time.perf_counter() - t)
            self._metrics.acks.append(time.time())
        return rev


class _SimAnnouncer(Announcer):
    """The agent's Announcer with the process's DeviceInfo, made this device's."""

    def __init__(self, cfg: Config, bus: Bus, state: RuntimeState, template: DeviceInfo) -> None:
        super().__init__(cfg, bus, state)
        self._info = template.model_copy(
            update={
                "device_id": state.device_id,
                "machine_id": state.machine_id,
                "hostname": state.device_id,
                "started_at": state.started_at,
                "labels": {**template.labels, **cfg.labels},
            }
        )

    def current(self) -> DeviceInfo:
        return self._info


def log_batch(device_id: str, seq: int, lines: int) -> Batch:
    """A LogBatch of `lines` made-up journal lines, as the pump would hand it to the shipper."""
    now_us = time.time_ns() // 1000
    records = [
        LogRecord(
            cursor=f"s=sim;i={seq * lines + i:x};b=sim;m={i:x};t={now_us:x};x={device_id}",
            realtime_us=now_us,
            boot_id="sim",
            unit="app.service",
            identifier="app",
            pid=1234,
            priority=6,
            message=f"request {seq}.{i} served in 12 ms",
        )
        for i in range(lines)
    ]
    return Batch(
        payload=dump_json(LogBatch(device_id=device_id, records=records)),
        msg_id=msg_id(records[0].cursor, records[-1].cursor),
        lines=lines,
        records=lines,
        gaps=0,
        commit=None,
        oldest_us=now_us,
    )


class SimDevice:
    """A device: its Bus, Announcer, HeartbeatService and Shipper under one TaskGroup."""

    def __init__(
        self,
        cfg: Config,
        device_id: str,
        template: DeviceInfo,
        *,
        log_every_s: float,
        log_lines: int,
        encode: Encode,
        watches: bool = False,
    ) -> None:
        self.device_id = device_id
        self.metrics = Metrics()
        self.bus = _TimedBus(cfg, f"harmony-agent {device_id}", self.metrics)
        self.state = RuntimeState(device_id, f"{random.getrandbits(128):032x}", utcnow())
        self.announcer = _SimAnnouncer(cfg, self.bus, self.state, template)
        self.heartbeat = HeartbeatService(
            cfg, self.bus, self.state, lambda: (None, None), boot_id="sim"
        )
        self.shipper = Shipper(
            self.bus,
            f"{cfg.nats.logs_subject_prefix}.{device_id}",
            cfg.nats.logs_stream,
            max_in_flight=cfg.logs.max_in_flight,
            ack_timeout=cfg.logs.ack_timeout,
            slots=threading.Semaphore(1 << 20),
            encode=encode,
            commit=lambda _: None,  # no journal cursor to save
        )
        self._log_every_s = log_every_s
        self._log_lines = log_lines
        self._watches = [cfg.nats.upgrade_bucket, cfg.nats.upgrade_status_bucket] if watches else []

    @property
    def ready(self) -> bool:
        """Connected, and its DeviceInfo claimed (so its heartbeats go out)."""
        return self.metrics.connected and self.state.owned

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.bus.run())
            for svc in (self.announcer, self.heartbeat):
                tg.create_task(svc.run(_nothing))
            if self._log_every_s > 0:
                tg.create_task(self.shipper.run())
                tg.create_task(self._logs())
            for bucket in self._watches:
                tg.create_task(self._watch(bucket))

    async def _logs(self) -> None:
        seq = 0
        # Spread over the interval: devices do not log in lockstep.
        await asyncio.sleep(random.uniform(0, self._log_every_s))
        while True:
            seq += 1
            if self.bus.connected:
                self.shipper.put(log_batch(self.device_id, seq, self._log_lines))
            await asyncio.sleep(self._log_every_s * random.uniform(0.9, 1.1))

    async def _watch(self, bucket: str) -> None:
        """The upgrade service's watch of its own key (request, status), on its retry policy."""

        async def body() -> None:
            async for _ in self.bus.kv_watch(bucket, self.device_id):
                pass

        await retrying(f"watch-{bucket}", body, before=self.bus.wait_connected)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.bus.close()


def _nothing() -> None:
    return None
