"""A real `harmony-agent run` process with a real NOTIFY_SOCKET, for integration tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import NatsSection
from harmony_core.bus import Bus
from tests.natsserver import wait_for

__all__ = ["AgentProcess", "kv_get_json", "run_bus", "write_config"]


def write_config(
    path: Path,
    *,
    servers: list[str],
    device_id: str = "dev-test",
    interval: str = "1s",
    labels: dict[str, str] | None = None,
    extra: str = "",
    logs: bool = False,
    upgrade: bool = False,
) -> Path:
    state = path.parent / "state"
    lines = [
        "[agent]",
        f'device_id = "{device_id}"',
        f'state_dir = "{state}"',
        f'health_file = "{path.parent / "run" / "health.json"}"',
        "[labels]",
        *(f'"{k}" = "{v}"' for k, v in (labels or {}).items()),
        "[nats]",
        "servers = [" + ", ".join(f'"{s}"' for s in servers) + "]",
        'reconnect_max_wait = "1s"',
        "[heartbeat]",
        f'interval = "{interval}"',
        "[logs]",
        f"enabled = {'true' if logs else 'false'}",
        "[upgrade]",
        f"enabled = {'true' if upgrade else 'false'}",
        extra,
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


class AgentProcess:
    """`python -m agent.cli -c CONFIG run` with a datagram NOTIFY_SOCKET the test reads."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.dir = config.parent
        self.notify_path = self.dir / f"notify-{time.monotonic_ns()}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.notify_path))
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr_path = self.dir / "agent.stderr"
        full_env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), **(env or {})}
        full_env.pop("JOURNAL_STREAM", None)
        self.started = time.monotonic()
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "-c", str(config), "run"],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=full_env,
            )

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append(fields)

    def notified(self, key: str, value: str | None = None) -> list[dict[str, str]]:
        with self._lock:
            return [m for m in self.messages if key in m and (value is None or m[key] == value)]

    def wait_notify(
        self, key: str, value: str | None = None, timeout: float = 10
    ) -> dict[str, str]:
        wait_for(lambda: self.notified(key, value), timeout, f"sd_notify {key}={value}")
        return self.notified(key, value)[0]

    def last_status(self) -> str:
        with self._lock:
            st = [m["STATUS"] for m in self.messages if "STATUS" in m]
        return st[-1] if st else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        self._stop.set()
        self._reader.join(2)
        self.sock.close()
        self.notify_path.unlink(missing_ok=True)


def run_bus(target: str | NatsSection, fn: Callable[[Bus], Any]) -> Any:
    """Connect to `target` (a URL, or full NATS options), await `fn(bus)`, close."""
    n = NatsSection(servers=[target]) if isinstance(target, str) else target

    async def go() -> Any:
        bus = Bus(n, name="harmony-tests")
        await bus.connect_once()
        try:
            return await fn(bus)
        finally:
            await bus.close()

    return asyncio.run(go())


def kv_get_json(url: str, bucket: str, key: str) -> tuple[dict[str, Any], int, Any] | None:
    """(value as JSON, revision, server time) of a KV key, or None."""
    import json

    async def get(bus: Bus) -> Any:
        e = await bus.kv_get(bucket, key)
        return None if e is None else (json.loads(e.value), e.revision, e.created)

    result: tuple[dict[str, Any], int, Any] | None = run_bus(url, get)
    return result
