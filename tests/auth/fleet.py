"""A fleet with device identity, for tests and the bench: real nats-server, real callout.

`AuthFleet` runs `harmony-fleet auth init` into a directory, a nats-server whose
config includes the `nats-auth.conf` it wrote (a path relative to the config,
as nats-server wants), `harmony-fleet init` with the operator's key, and the
real `harmony-fleet auth serve` process (stoppable, restartable, with a TTL).
Operator commands run as the real CLI; `registry()` reads the registry.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harmony_core import nkey
from harmony_core.bus import Bus
from harmony_core.identity import LoginClaim
from harmony_core.settings import NatsSection
from tests.agentproc import write_config
from tests.natsserver import NatsServer, stop_process, wait_for

__all__ = ["AuthFleet", "connect_device", "device_config", "new_device_key"]

FLEET = [sys.executable, "-m", "harmony_fleet.cli"]


class AuthFleet:
    def __init__(self, root: Path, *, ttl: str = "1h") -> None:
        self.root = root
        self.dir = root / "auth"
        self.ttl = ttl
        store = root / "nats"
        store.mkdir(parents=True, exist_ok=True)
        include = os.path.relpath(self.dir / "nats-auth.conf", store)
        self.server = NatsServer(store, conf=f'include "{include}"\n')
        self.authd: subprocess.Popen[bytes] | None = None
        self.authd_log = root / "authd.log"

    # --- setting up ---------------------------------------------------------------

    def start(self, *, callout: bool = True) -> AuthFleet:
        out = self.fleet("auth", "init", str(self.dir), operator=False)
        assert "operator.nk" in out, out
        self.server.start()
        self.fleet("init")
        if callout:
            self.start_callout()
        return self

    def start_callout(self, ttl: str | None = None) -> None:
        assert self.authd is None or self.authd.poll() is not None
        log = open(self.authd_log, "ab")  # noqa: SIM115 - the child owns it
        self.authd = subprocess.Popen(
            [*FLEET, "auth", "serve", "-c", str(self.dir / "authd.toml"), "--ttl", ttl or self.ttl],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(lambda: "auth-serving" in self.callout_log(), 20, "the callout answering")

    def stop_callout(self) -> None:
        if self.authd is not None:
            stop_process(self.authd)
            self.authd = None

    def stop(self) -> None:
        self.stop_callout()
        self.server.stop()

    def callout_log(self) -> str:
        return self.authd_log.read_text(errors="replace") if self.authd_log.exists() else ""

    # --- the operator ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def operator(self) -> NatsSection:
        return NatsSection(servers=[self.url], nkey_seed_file=self.dir / "operator.nk")

    def fleet(self, *args: str, operator: bool = True, check: bool = True) -> str:
        """Run `harmony-fleet ARGS` (as the operator); its stdout (stderr appended on failure)."""
        conn = (
            ["-s", self.url, "--nkey", str(self.dir / "operator.nk")]
            if operator
            else ["-s", self.url]
        )
        r = subprocess.run([*FLEET, *conn, *args], capture_output=True, text=True, timeout=90)
        if check and r.returncode != 0:
            raise AssertionError(
                f"harmony-fleet {' '.join(args)}: rc {r.returncode}\n{r.stdout}\n{r.stderr}"
            )
        return r.stdout + (r.stderr if r.returncode else "")

    def token(self, *flags: str) -> str:
        """A new enrollment token (the last line of `enroll token create`)."""
        return self.fleet("enroll", "token", "create", *flags).strip().splitlines()[-1]

    def key_rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.fleet("enroll", "list", "--json"))
        return rows

    def key_of(self, device: str) -> dict[str, Any] | None:
        rows = [r for r in self.key_rows() if r["device_id"] == device]
        return rows[-1] if rows else None

    def run(self, fn: Callable[[Bus], Any]) -> Any:
        """Await `fn(bus)` on an operator connection."""

        async def go() -> Any:
            bus = Bus(self.operator, name="auth-tests")
            await bus.connect_once()
            try:
                return await fn(bus)
            finally:
                await bus.close()

        return asyncio.run(go())

    def kv(self, bucket: str, key: str) -> dict[str, Any] | None:
        async def get(bus: Bus) -> Any:
            e = await bus.kv_get(bucket, key)
            return None if e is None else json.loads(e.value)

        result: dict[str, Any] | None = self.run(get)
        return result


def device_config(
    fleet: AuthFleet,
    tmp: Path,
    device_id: str,
    *,
    token: str | None = None,
    logs: bool = False,
    interval: str = "1s",
    extra: str = "",
) -> Path:
    """An agent config with no credential in [nats] (so: its own key) and maybe a token."""
    tmp.mkdir(parents=True, exist_ok=True)
    ident = ""
    if token is not None:
        tf = tmp / "enroll-token"
        tf.write_text(token + "\n")
        tf.chmod(0o600)
        ident = f'[identity]\nenroll_token_file = "{tf}"\n'
    return write_config(
        tmp / "agent.toml",
        servers=[fleet.url],
        device_id=device_id,
        interval=interval,
        logs=logs,
        extra=ident + extra,
    )


async def connect_device(
    url: str,
    seed: str,
    device_id: str,
    *,
    token: str | None = None,
    claim: str | None = None,
    inbox: str | None = None,
) -> Any:
    """A raw nats-py connection logging in as a device would (for the attacker's view)."""
    import contextlib

    from nats.aio.client import Client

    text = (
        claim
        if claim is not None
        else LoginClaim(device_id=device_id, token=token).model_dump_json(exclude_none=True)
    )
    nc = Client()
    try:
        await nc.connect(
            url,
            nkeys_seed_str=seed,
            token=text,
            inbox_prefix=inbox or f"_INBOX_{device_id}",
            allow_reconnect=False,
            max_reconnect_attempts=1,
            connect_timeout=5,
            error_cb=_quiet,
        )
    except BaseException:
        # nats-py leaves the socket of a refused connect open
        with contextlib.suppress(Exception):
            await nc.close()
        raise
    return nc


async def _quiet(e: Exception) -> None:
    return None


def new_device_key() -> str:
    return nkey.new_seed("user")
