"""The connection: nats-py's options, one connect attempt, `run` (daemon) and `connect_once` (CLI).

Connection policy: the daemon's first connect is retried forever with capped,
jittered exponential backoff; after that nats-py reconnects forever, and we
choose the server and the delay (`_next_server`), again capped and jittered, so
a fleet that lost its server does not come back in lockstep. The CLI makes one
attempt and raises why it failed; it logs nothing itself, so the reason is
printed once, by the CLI.

A device logs in with its own nkey (ADR-023): the daemon hands a `login`
callable that names, for each connect, the seed to sign the server's nonce with
and the `auth_token` to send beside it (built from that nonce), and hears back
whether that login was let in. Static credentials of `[nats]` need none of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from harmony_core.errors import BusUnavailableError
from harmony_core.settings import NatsSection

__all__ = ["BusState", "ConnState", "Connection", "NkeyLogin", "backoff_delay"]

log = logging.getLogger("harmony_core.bus")

ConnState = Literal["connecting", "connected", "disconnected", "closed"]


@dataclass(frozen=True)
class BusState:
    state: ConnState
    server: str | None
    since: datetime
    last_error: str | None


def backoff_delay(attempt: int, cap: float, base: float = 0.5) -> float:
    """Full-jitter exponential backoff: uniform in [base/2, min(cap, base*2^attempt)]."""
    ceiling = min(cap, base * (2 ** min(attempt, 30)))
    return random.uniform(min(base / 2, ceiling), max(ceiling, base / 2))


@dataclass(frozen=True)
class NkeyLogin:
    """One connection's nkey login: the seed, the auth_token it sends, who hears the outcome.

    `token(nonce)` builds the auth_token from the server's nonce (None: send none);
    `outcome(None)` means let in, `outcome(reason)` refused by the server. Both run
    on the event loop, without I/O.
    """

    seed: str
    token: Callable[[str], str | None] | None = None
    outcome: Callable[[str | None], None] | None = None


def _is_auth_refusal(text: str) -> bool:
    # Not "user authentication expired": that ends a login that was let in (routine).
    return "authorization violation" in text.lower()


def _read_secret(path: Path) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


class Connection:
    """A NATS connection that comes back by itself (`run`), or one attempt (`connect_once`)."""

    def __init__(
        self,
        cfg: NatsSection,
        *,
        name: str = "harmony-agent",
        on_change: Callable[[BusState], None] | None = None,
        login: Callable[[], NkeyLogin] | None = None,
        inbox_prefix: str | None = None,
    ) -> None:
        self._cfg = cfg
        self._name = name
        self._on_change = on_change
        self._login = login
        self._login_now: NkeyLogin | None = None
        self._inbox_prefix = inbox_prefix
        self._nc: Any = None
        self._js: Any = None
        self._connected = asyncio.Event()
        self._reconnected_cbs: list[Callable[[], None]] = []
        self._attempt = 0
        self._attempt_error: str | None = None
        # The daemon logs what happens to its connection; the CLI raises it instead.
        self._logs = True
        self._closing = False
        self._relogin = False
        self._closed = asyncio.Event()
        self.state = BusState("connecting", None, datetime.now(UTC), None)

    def on_reconnect(self, cb: Callable[[], None]) -> None:
        """Call `cb` (synchronously, no I/O) after every (re)connect."""
        self._reconnected_cbs.append(cb)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def max_payload(self) -> int | None:
        """The largest message the connected server accepts (its INFO), None while unknown."""
        if self._nc is None or not self._connected.is_set():
            return None
        return int(self._nc.max_payload) or None

    async def wait_connected(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _set(self, state: ConnState, error: str | None = None) -> None:
        server = None
        if self._nc is not None and state == "connected":
            url = self._nc.connected_url
            server = f"{url.scheme}://{url.hostname}:{url.port}" if url else None
        self.state = BusState(state, server, datetime.now(UTC), error or self.state.last_error)
        if state == "connected":
            self._connected.set()
            self._attempt = 0
            for cb in self._reconnected_cbs:
                cb()
        else:
            self._connected.clear()
        if self._on_change:
            self._on_change(self.state)

    # --- nats-py's options and callbacks -------------------------------------------

    def _options(self) -> dict[str, Any]:
        c = self._cfg
        opts: dict[str, Any] = {
            "servers": list(c.servers),
            "name": self._name,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "connect_timeout": max(1, round(c.connect_timeout)),
            "ping_interval": 20,
            "max_outstanding_pings": 3,
            "reconnect_to_server_handler": self._next_server,
            "error_cb": self._error_cb,
            "disconnected_cb": self._disconnected_cb,
            "reconnected_cb": self._reconnected_cb,
            "closed_cb": self._closed_cb,
        }
        if self._inbox_prefix:
            opts["inbox_prefix"] = self._inbox_prefix
        if c.creds_file:
            opts["user_credentials"] = str(c.creds_file)
        elif c.nkey_seed_file:
            opts["nkeys_seed"] = str(c.nkey_seed_file)
        elif c.user and c.password_file:
            opts["user"] = c.user
            opts["password"] = _read_secret(c.password_file)
        elif c.token_file:
            opts["token"] = _read_secret(c.token_file)
        if c.tls_ca_file or c.tls_cert_file or any(s.startswith("tls://") for s in c.servers):
            ctx = ssl.create_default_context(cafile=str(c.tls_ca_file) if c.tls_ca_file else None)
            if c.tls_cert_file and c.tls_key_file:
                ctx.load_cert_chain(str(c.tls_cert_file), str(c.tls_key_file))
            opts["tls"] = ctx
        return opts

    def _next_server(self, servers: list[Any], info: dict[str, Any]) -> tuple[Any, float]:
        self._attempt += 1
        if not servers:
            return None, backoff_delay(self._attempt, self._cfg.reconnect_max_wait)
        return random.choice(servers), backoff_delay(self._attempt, self._cfg.reconnect_max_wait)

    async def _error_cb(self, e: Exception) -> None:
        msg = str(e) or type(e).__name__
        last = self.state.last_error or ""
        if self.state.state != "connected":
            # A refused CONNECT is followed by the server closing the socket: that reset
            # must not replace the reason a person has to act on (status, STATUS=).
            if isinstance(e, ConnectionResetError | EOFError) and "authoriz" in last.lower():
                return
            if msg != last and self._logs:
                log.warning("NATS: %s", msg, extra={"event": "nats-error"})
            self._attempt_error = msg
            self._tell_login(msg)
        log.debug("nats error: %s", msg)
        self.state = BusState(self.state.state, self.state.server, self.state.since, msg)

    def _login_expired(self) -> bool:
        """Whether the server ended the connection because its login (user JWT) ran out."""
        nc = self._nc
        return nc is not None and "authentication expired" in str(nc.last_error or "").lower()

    async def _disconnected_cb(self) -> None:
        expired = self._login_expired()
        if self.state.state == "connected" and not self._closing and self._logs and not expired:
            log.warning(
                "disconnected from NATS %s", self.state.server, extra={"event": "nats-disconnected"}
            )
        self._set("disconnected")

    async def _reconnected_cb(self) -> None:
        self._tell_login(None)
        self._set("connected")
        log.info("reconnected to NATS %s", self.state.server, extra={"event": "nats-reconnected"})

    async def _closed_cb(self) -> None:
        self._set("closed")
        self._closed.set()

    # --- logging in with the device's own key -----------------------------------------

    def _tell_login(self, refusal: str | None) -> None:
        """Tell the current login it was let in (None) or refused (an auth error only)."""
        login = self._login_now
        if login is None or login.outcome is None:
            return
        if refusal is None or _is_auth_refusal(refusal):
            login.outcome(refusal)

    @staticmethod
    def _token_of(nc: Any, login: NkeyLogin) -> Callable[[], str | None]:
        def token() -> str | None:
            # nats-py calls this while it writes CONNECT, after signing the nonce of
            # the INFO it just read: the same nonce the claim may need (a rotation).
            nonce = str((getattr(nc, "_server_info", None) or {}).get("nonce") or "")
            return login.token(nonce) if login.token else None

        return token

    def _login_options(self, nc: Any) -> dict[str, Any]:
        if self._login is None:
            return {}
        login = self._login()
        self._login_now = login
        opts: dict[str, Any] = {"nkeys_seed_str": login.seed}
        if login.token is not None:
            opts["token"] = self._token_of(nc, login)
        return opts

    async def relogin(self) -> None:
        """Drop the connection and log in anew (a new key, a new claim); `run` reconnects."""
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        self._relogin = True
        with contextlib.suppress(Exception):
            await nc.close()

    # --- connecting ------------------------------------------------------------------

    async def _connect_attempt(self, *, stay: bool) -> Any:
        """A new client after one pass over the servers; BusUnavailableError saying why not.

        nats-py gives up on a server only with max_reconnect_attempts >= 1 (with the
        daemon's -1, one "attempt" at a server that is down loops for ever, at its own
        fixed pace): one pass here, and the caller paces the rest. With `stay`, the
        client reconnects for ever once it is connected.
        """
        from nats.aio.client import Client

        nc = Client()
        self._attempt_error = None
        try:
            # Building the options is part of the attempt: a TLS CA that is not PEM, or a
            # password file gone since check-config, fails here and is retried like a
            # refusal, never ending the daemon.
            opts = {
                **self._options(),
                **self._login_options(nc),
                "allow_reconnect": stay,
                "max_reconnect_attempts": 1,
                "reconnect_time_wait": 0.2 if stay else 0.5,
            }
            await nc.connect(**opts)
        except BaseException as e:
            # nats-py leaves the socket of a refused connect (auth, TLS) open.
            with contextlib.suppress(Exception):
                await nc.close()
            if not isinstance(e, Exception):  # cancelled
                raise
            # "no servers available" hides why; the last error of this attempt says it
            # (or of the one before, when this one only saw the socket reset after it).
            why = str(e) or type(e).__name__
            if "no servers" in why.lower():
                why = self._attempt_error or self.state.last_error or why
            self._attempt_error = why
            self._tell_login(why)
            raise BusUnavailableError(
                f"cannot connect to NATS at {', '.join(self._cfg.servers)}: {why}"
            ) from e
        if not nc.is_connected:
            # nats-py returns from connect() when the server's first line after CONNECT is
            # a PING rather than PONG or -ERR (an auth callout slower than 2 s): the connect
            # was never confirmed. Treat it as what it is, a failed attempt.
            with contextlib.suppress(Exception):
                await nc.close()
            why = "the server did not confirm the login in time (its auth service is slow)"
            self._attempt_error = why
            raise BusUnavailableError(
                f"cannot connect to NATS at {', '.join(self._cfg.servers)}: {why}"
            )
        if stay:
            nc.options["max_reconnect_attempts"] = -1
        self._tell_login(None)
        return nc

    def _use(self, nc: Any) -> None:
        self._closed.clear()
        self._nc = nc
        self._js = nc.jetstream()
        self._set("connected")

    async def connect_once(self) -> None:
        """One connect attempt (for the operator CLI); BusUnavailableError on failure.

        Nothing is logged: the error raised is the one report of the failure.
        """
        self._logs = False
        self._use(await self._connect_attempt(stay=False))

    async def run(self) -> None:
        """Connect, retrying forever; stay connected (nats-py reconnects) until cancelled.

        Should nats-py ever give up and close the connection (it can, e.g. after
        authorization errors during reconnects), start over with a new one.
        """
        attempt = 0
        while True:
            self._set("connecting")
            try:
                nc = await self._connect_attempt(stay=True)
            except BusUnavailableError as e:
                attempt += 1
                delay = backoff_delay(attempt, self._cfg.reconnect_max_wait)
                why = self._attempt_error or str(e)
                self._set("disconnected", why)
                log.warning(
                    "cannot reach NATS at %s (%s); retrying in %.1fs",
                    ", ".join(self._cfg.servers),
                    why,
                    delay,
                    extra={"event": "nats-unreachable"},
                )
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self._use(nc)
            log.info("connected to NATS %s", self.state.server, extra={"event": "nats-connected"})
            await self._closed.wait()
            if self._closing:
                return
            self._closed_why(nc)
            self._nc = None
            self._js = None

    def _closed_why(self, nc: Any) -> None:
        """Log why nats-py gave up on its connection (we start a new one either way)."""
        why = str(getattr(nc, "last_error", None) or "")
        if self._relogin:
            self._relogin = False
            log.info("logging in to NATS anew", extra={"event": "nats-relogin"})
        elif "authentication expired" in why.lower():
            # Routine (ADR-023 §6): the login's user JWT ran out, and nats-py gives up on
            # the connection for it (nats.py#1019); a new one logs in through the callout.
            log.info("NATS login expired; logging in again", extra={"event": "auth-expired"})
        else:
            log.warning(
                "NATS connection closed%s; connecting anew",
                f" ({why})" if why else "",
                extra={"event": "nats-closed"},
            )

    async def close(self) -> None:
        self._closing = True
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.drain(), 2)
            with contextlib.suppress(Exception):
                await self._nc.close()

    # --- for the operations ----------------------------------------------------------

    def _jet(self) -> Any:
        """nats-py's JetStream context; BusUnavailableError while not connected."""
        if self._js is None or not self._connected.is_set():
            raise BusUnavailableError("not connected to NATS")
        return self._js

    def _gone(self, nc: Any) -> bool:
        """True once the client `nc` (of a watch or a follow) is closed for good."""
        return bool(nc is None or nc.is_closed or nc is not self._nc)
