"""What the rollout tests share: a real nats-server with the layout, a key, a published
release, `harmony-fleet` as a subprocess, and a controller (`rollout run`) to follow or kill."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harmony_core.bus import Bus
from harmony_core.contracts import Rollout
from harmony_core.envelope import VerifyingKey, keyid_of
from harmony_core.settings import NatsSection
from harmony_fleet.keys import private_pem
from harmony_fleet.provision import ROLLOUTS_BUCKET
from harmony_fleet.releases import publish_release
from tests.upgrade.helpers import build_deb

__all__ = ["Controller", "Env", "Result", "rollout_env"]

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str


@dataclass
class Controller:
    """`harmony-fleet rollout run` as a process; its stdout lines kept as they come."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def saw(self, pattern: str) -> bool:
        return any(re.search(pattern, line) for line in self.lines)

    async def wait_line(self, pattern: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not self.saw(pattern):
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"controller never printed /{pattern}/ (rc {self.proc.returncode}):\n"
                    + "\n".join(self.lines)
                )
            await asyncio.sleep(0.02)

    async def wait(self, timeout: float = 30) -> int:
        try:
            rc = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: where it hangs
            await self.proc.wait()
            raise AssertionError(
                "controller did not end:\n" + "\n".join(self.lines) + "\n" + await self.stderr()
            ) from None
        if self.reader is not None:
            await self.reader
        return rc

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode(errors="replace")

    def kill(self) -> None:
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)


@dataclass
class Env:
    url: str
    bus: Bus
    key: Ed25519PrivateKey
    key_path: Path
    tmp: Path

    @property
    def n(self) -> NatsSection:
        return NatsSection(servers=[self.url])

    @property
    def keys(self) -> dict[str, VerifyingKey]:
        return {keyid_of(self.key.public_key()): self.key.public_key()}

    def _argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "harmony_fleet.cli", "-s", self.url, *args]

    async def cli(self, *args: str, timeout: float = 60) -> Result:
        proc = await asyncio.create_subprocess_exec(
            *self._argv(*args),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode is not None
        return Result(proc.returncode, out.decode(), err.decode())

    async def controller(self, name: str, *extra: str, lease: str = "1s") -> Controller:
        proc = await asyncio.create_subprocess_exec(
            *self._argv("rollout", "run", name, "--key", str(self.key_path), "--lease", lease,
                        *extra),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"},
        )  # fmt: skip
        c = Controller(proc)
        c.reader = asyncio.create_task(c._read())
        return c

    async def create(self, name: str, *args: str) -> Result:
        got = await self.cli(
            "rollout", "create", name, *args, "--version", "0.2.0", "--key", str(self.key_path)
        )
        assert got.rc == 0, got
        return got

    async def record(self, name: str) -> Rollout:
        e = await self.bus.kv_get(ROLLOUTS_BUCKET, name)
        assert e is not None, f"no rollout {name}"
        return Rollout.model_validate_json(e.value)

    async def publish(self, version: str, arch: str = "amd64") -> None:
        out = self.tmp / f"debs-{version}-{arch}"
        out.mkdir(parents=True, exist_ok=True)
        deb, _, _ = build_deb(out, version, arch=arch)
        await publish_release(self.bus, self.n, deb, self.key)


@contextlib.asynccontextmanager
async def rollout_env(url: str, tmp: Path) -> AsyncIterator[Env]:
    """A connected bus, an operator key on disk, and 0.2.0 for amd64 published with it."""
    bus = Bus(NatsSection(servers=[url]), name="rollout-tests")
    await bus.connect_once()
    key = Ed25519PrivateKey.generate()
    key_path = tmp / "ops.key"
    key_path.write_bytes(private_pem(key))
    key_path.chmod(0o600)
    env = Env(url, bus, key, key_path, tmp)
    try:
        await env.publish("0.2.0")
        yield env
    finally:
        await bus.close()
