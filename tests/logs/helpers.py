"""Helpers of the log tests: configs, the service in-process or as a process, the stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import Config, LogsSection, NatsSection, parse_config
from agent.logs import LogsService
from harmony_core.bus import Bus
from harmony_core.logcodec import CONTENT_ENCODING, decode_batch


def make_config(state_dir: Path, url: str, *, reconnect: str = "1s", **logs: Any) -> Config:
    """A Config for tests: short waits, state in `state_dir`, the given [logs] options."""
    lines = [
        "[agent]",
        f'state_dir = "{state_dir}"',
        "[nats]",
        f'servers = ["{url}"]',
        f'reconnect_max_wait = "{reconnect}"',
        "[logs]",
    ]
    for k, v in logs.items():
        lines.append(f"{k} = {json.dumps(v)}")
    return parse_config("\n".join(lines) + "\n")


def config_toml(cfg: Config, device_id: str) -> str:
    """The TOML text of `cfg` (for a subprocess agent)."""
    lg: LogsSection = cfg.logs
    items = {
        k: v
        for k, v in lg.model_dump().items()
        if k
        in {
            "units",
            "identifiers",
            "start_at",
            "batch_max_lines",
            "max_in_flight",
            "max_message_bytes",
            "rate_limit_lines",
            "rate_limit_bytes",
            "compression",
        }
    }
    out = [
        "[agent]",
        f'device_id = "{device_id}"',
        f'state_dir = "{cfg.agent.state_dir}"',
        "[nats]",
        f"servers = {json.dumps(cfg.nats.servers)}",
        f'reconnect_max_wait = "{int(cfg.nats.reconnect_max_wait * 1000)}ms"',
        "[logs]",
        f"max_priority = {lg.max_priority}",
        f'batch_max_wait = "{int(lg.batch_max_wait * 1000)}ms"',
        f'ack_timeout = "{int(lg.ack_timeout * 1000)}ms"',
    ]
    out += [f"{k} = {json.dumps(v)}" for k, v in items.items()]
    return "\n".join(out) + "\n"


@dataclass
class Running:
    svc: LogsService
    bus: Bus
    cfg: Config
    device_id: str


@contextlib.asynccontextmanager
async def running_service(cfg: Config, device_id: str, **kw: Any) -> AsyncIterator[Running]:
    """The LogsService and its Bus under one TaskGroup, in this event loop; cancelled on exit."""
    bus = Bus(cfg.nats, name="logs-test")
    svc = LogsService(cfg, device_id, bus, **kw)
    ready = asyncio.Event()
    stop = asyncio.Event()

    class _Stop(Exception):
        pass

    async def stopper() -> None:
        await stop.wait()
        raise _Stop

    async def body(tg_ready: asyncio.Event) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(bus.run())
                tg.create_task(svc.run(ready.set))
                tg.create_task(stopper())
                tg_ready.set()
        except* _Stop:
            pass

    started = asyncio.Event()
    runner = asyncio.ensure_future(body(started))
    try:
        await asyncio.wait_for(ready.wait(), 15)
        yield Running(svc, bus, cfg, device_id)
    finally:
        stop.set()
        await asyncio.wait_for(runner, 15)
        await bus.close()


async def stream_records(
    url: str, device_id: str, nats: NatsSection | None = None
) -> list[dict[str, Any]]:
    """Every record on `logs.<device_id>`, in stream order."""
    n = nats or NatsSection(servers=[url])
    bus = Bus(n, name="logs-test-reader")
    await bus.connect_once()
    out: list[dict[str, Any]] = []
    try:
        async for data, _ts, headers in bus.fetch_stream(n.logs_stream, f"logs.{device_id}"):
            out.extend(json.loads(decode_batch(data, headers))["records"])
    finally:
        await bus.close()
    return out


async def stream_encodings(url: str, device_id: str) -> list[str | None]:
    """The `Content-Encoding` of every message on `logs.<device_id>` (None: plain JSON)."""
    n = NatsSection(servers=[url])
    bus = Bus(n, name="logs-test-reader")
    await bus.connect_once()
    try:
        return [
            h.get(CONTENT_ENCODING)
            async for _data, _ts, h in bus.fetch_stream(n.logs_stream, f"logs.{device_id}")
        ]
    finally:
        await bus.close()


async def wait_async(
    cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Await until `cond()` (sync or async) is truthy; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def agent_process(toml: Path) -> subprocess.Popen[bytes]:
    """`python -m agent.logs -c toml` as a separate process (to be killed)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(toml.with_suffix(".log"), "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "agent.logs", "-c", str(toml)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
        )


__all__ = [
    "Running",
    "agent_process",
    "config_toml",
    "make_config",
    "running_service",
    "stream_encodings",
    "stream_records",
    "wait_async",
]
