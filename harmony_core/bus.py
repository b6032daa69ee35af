"""The one adapter around nats-py: connect, KV, streams, object store, acked publish.

Nothing of nats-py leaks past this module: callers get our errors
(`BusUnavailableError`, `BucketMissingError`, `BusError`) and our small types.
The bus knows nothing of heartbeats, logs or upgrades.

Connection policy: the first connect is retried forever with capped, jittered
exponential backoff; after that nats-py reconnects forever, and we choose the
server and the delay (`_next_server`), again capped and jittered, so a fleet
that lost its server does not come back in lockstep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Literal

from harmony_core.errors import (
    BucketMissingError,
    BusError,
    BusUnavailableError,
    RevisionMismatchError,
)
from harmony_core.settings import NatsSection

__all__ = ["Bus", "BusState", "KvEntry", "PubAck", "backoff_delay"]

log = logging.getLogger("harmony_core.bus")

ConnState = Literal["connecting", "connected", "disconnected", "closed"]


@dataclass(frozen=True)
class KvEntry:
    key: str
    value: bytes
    revision: int
    # The server's timestamp of the write (None where nats-py does not tell it).
    created: datetime | None
    deleted: bool = False


@dataclass(frozen=True)
class PubAck:
    stream: str
    seq: int
    duplicate: bool


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


def _read_secret(path: Any) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


class Bus:
    """A NATS connection that comes back by itself, with JetStream helpers."""

    def __init__(
        self,
        cfg: NatsSection,
        *,
        name: str = "harmony-agent",
        on_change: Callable[[BusState], None] | None = None,
    ) -> None:
        self._cfg = cfg
        self._name = name
        self._on_change = on_change
        self._nc: Any = None
        self._js: Any = None
        self._connected = asyncio.Event()
        self._reconnected_cbs: list[Callable[[], None]] = []
        self._attempt = 0
        self._closing = False
        self._closed = asyncio.Event()
        self.state = BusState("connecting", None, datetime.now(UTC), None)

    # --- connection ---------------------------------------------------------

    def on_reconnect(self, cb: Callable[[], None]) -> None:
        """Call `cb` (synchronously, no I/O) after every (re)connect."""
        self._reconnected_cbs.append(cb)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

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
            if msg != last:
                log.warning("NATS: %s", msg, extra={"event": "nats-error"})
        log.debug("nats error: %s", msg)
        self.state = BusState(self.state.state, self.state.server, self.state.since, msg)

    async def _disconnected_cb(self) -> None:
        if self.state.state == "connected" and not self._closing:
            log.warning(
                "disconnected from NATS %s", self.state.server, extra={"event": "nats-disconnected"}
            )
        self._set("disconnected")

    async def _reconnected_cb(self) -> None:
        self._set("connected")
        log.info("reconnected to NATS %s", self.state.server, extra={"event": "nats-reconnected"})

    async def _closed_cb(self) -> None:
        self._set("closed")
        self._closed.set()

    async def connect_once(self) -> None:
        """One connect attempt (for the operator CLI); BusUnavailableError on failure."""
        from nats.aio.client import Client

        nc = Client()
        # nats-py gives up on a server only with max_reconnect_attempts >= 1: with the
        # daemon's -1, one "attempt" at a server that is down loops for ever.
        opts = {**self._options(), "allow_reconnect": False, "max_reconnect_attempts": 1}
        try:
            await nc.connect(**{**opts, "reconnect_time_wait": 0.5})
        except Exception as e:
            # nats-py leaves the socket of a refused connect (auth, TLS) open.
            with contextlib.suppress(Exception):
                await nc.close()
            # "no servers available" hides why; the last error of an attempt says it.
            why = self.state.last_error or str(e) or type(e).__name__
            raise BusUnavailableError(
                f"cannot connect to NATS at {', '.join(self._cfg.servers)}: {why}"
            ) from e
        self._nc = nc
        self._js = self._nc.jetstream()
        self._set("connected")

    async def run(self) -> None:
        """Connect, retrying forever; stay connected (nats-py reconnects) until cancelled.

        Should nats-py ever give up and close the connection (it can, e.g. after
        authorization errors during reconnects), start over with a new one.
        """
        from nats.aio.client import Client

        attempt = 0
        while True:
            self._set("connecting")
            nc = Client()
            try:
                # One pass over the servers (nats-py would otherwise retry the first connect
                # for ever at its fixed 2 s pace); the jittered backoff below paces the rest.
                await nc.connect(
                    **{**self._options(), "max_reconnect_attempts": 1, "reconnect_time_wait": 0.2}
                )
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await nc.close()
                raise
            except Exception as e:
                with contextlib.suppress(Exception):
                    await nc.close()
                attempt += 1
                delay = backoff_delay(attempt, self._cfg.reconnect_max_wait)
                msg = str(e) or type(e).__name__
                if "no servers" in msg.lower() and self.state.last_error:
                    msg = self.state.last_error  # the reason of the last server's refusal
                self._set("disconnected", msg)
                log.warning(
                    "cannot reach NATS at %s (%s); retrying in %.1fs",
                    ", ".join(self._cfg.servers),
                    msg,
                    delay,
                    extra={"event": "nats-unreachable"},
                )
                await asyncio.sleep(delay)
                continue
            attempt = 0
            # Connected: from now on nats-py reconnects for ever, paced by _next_server.
            nc.options["max_reconnect_attempts"] = -1
            self._closed.clear()
            self._nc = nc
            self._js = nc.jetstream()
            self._set("connected")
            log.info("connected to NATS %s", self.state.server, extra={"event": "nats-connected"})
            await self._closed.wait()
            if self._closing:
                return
            log.warning("NATS connection closed; connecting anew", extra={"event": "nats-closed"})
            self._nc = None
            self._js = None

    async def close(self) -> None:
        self._closing = True
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.drain(), 2)
            with contextlib.suppress(Exception):
                await self._nc.close()

    def _jet(self) -> Any:
        if self._js is None or not self._connected.is_set():
            raise BusUnavailableError("not connected to NATS")
        return self._js

    # --- error mapping ------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _mapped(self, kind: str, name: str) -> AsyncIterator[None]:
        import nats.errors as ne
        import nats.js.errors as je

        try:
            yield
        except je.KeyWrongLastSequenceError as e:
            raise RevisionMismatchError(str(e)) from e
        except je.BucketNotFoundError as e:
            raise BucketMissingError(kind, name) from e
        except je.NotFoundError as e:
            if getattr(e, "err_code", None) in (10059, None) and kind != "key":
                raise BucketMissingError(kind, name) from e
            raise
        except ne.NoRespondersError as e:
            raise BucketMissingError(kind, name) from e
        except (
            ne.ConnectionClosedError,
            ne.TimeoutError,
            ne.StaleConnectionError,
            ne.OutboundBufferLimitError,
            ne.ConnectionReconnectingError,
            TimeoutError,
        ) as e:
            raise BusUnavailableError(f"NATS did not answer ({type(e).__name__})") from e
        except je.APIError as e:
            raise BusError(f"JetStream refused: {e}") from e

    # --- KV -----------------------------------------------------------------

    async def _kv(self, bucket: str) -> Any:
        js = self._jet()
        async with self._mapped("KV bucket", bucket):
            return await js.key_value(bucket)

    async def kv_get(self, bucket: str, key: str) -> KvEntry | None:
        """The key's current value with the server's timestamp, or None."""
        import nats.js.errors as je

        js = self._jet()
        async with self._mapped("KV bucket", bucket):
            try:
                msg = await js.get_msg(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}", direct=False)
            except je.NotFoundError as e:
                if getattr(e, "err_code", None) == 10037 or "no message" in str(e).lower():
                    return None
                raise
        op = (msg.headers or {}).get("KV-Operation")
        if op in ("DEL", "PURGE"):
            return None
        return KvEntry(key, msg.data or b"", msg.seq or 0, msg.time)

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        kv = await self._kv(bucket)
        async with self._mapped("KV bucket", bucket):
            return int(await kv.put(key, value))

    async def kv_update(self, bucket: str, key: str, value: bytes, last: int | None) -> int:
        """Write only if the key is still at revision `last` (None: only if absent)."""
        kv = await self._kv(bucket)
        async with self._mapped("KV bucket", bucket):
            if last is None:
                return int(await kv.create(key, value))
            return int(await kv.update(key, value, last))

    async def kv_delete(self, bucket: str, key: str, *, purge: bool = True) -> None:
        kv = await self._kv(bucket)
        async with self._mapped("KV bucket", bucket):
            if purge:
                await kv.purge(key)
            else:
                await kv.delete(key)

    async def kv_watch(
        self, bucket: str, key: str = ">", *, include_history: bool = False
    ) -> AsyncIterator[KvEntry | None]:
        """Current values, then None once they are all delivered, then every change."""
        kv = await self._kv(bucket)
        async with self._mapped("KV bucket", bucket):
            watcher = await kv.watch(key, include_history=include_history)
        try:
            while True:
                try:
                    e = await watcher.updates(timeout=3600)
                except Exception as err:  # nats-py raises its TimeoutError when idle
                    import nats.errors as ne

                    if isinstance(err, ne.TimeoutError):
                        continue
                    raise
                if e is None:
                    yield None
                    continue
                yield KvEntry(
                    e.key,
                    e.value or b"",
                    e.revision or 0,
                    getattr(e, "created", None),
                    deleted=e.operation in ("DEL", "PURGE"),
                )
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def kv_entries(self, bucket: str) -> list[KvEntry]:
        """Every live key of a bucket with its server timestamp."""
        out: list[KvEntry] = []
        async for e in self.kv_watch(bucket):
            if e is None:
                break
            if not e.deleted:
                out.append(e)
        return out

    # --- streams ------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        stream: str,
        msg_id: str | None = None,
        timeout: float = 5.0,
    ) -> PubAck:
        """Publish to JetStream and wait for its ack."""
        js = self._jet()
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        async with self._mapped("stream", stream):
            ack = await js.publish(subject, payload, timeout=timeout, headers=headers)
        return PubAck(ack.stream, ack.seq, bool(ack.duplicate))

    async def publish_nowait(
        self, subject: str, payload: bytes, *, stream: str, msg_id: str | None = None
    ) -> asyncio.Future[PubAck]:
        """Publish and return a future of the ack (bounded by the caller)."""
        import nats.js.errors as je

        js = self._jet()
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        async with self._mapped("stream", stream):
            fut = await js.publish_async(subject, payload, headers=headers)
        loop = asyncio.get_running_loop()
        out: asyncio.Future[PubAck] = loop.create_future()

        def _done(f: asyncio.Future[Any]) -> None:
            if out.done():
                return
            if f.cancelled():
                out.set_exception(BusUnavailableError("publish cancelled"))
            elif (e := f.exception()) is not None:
                if isinstance(e, je.NoStreamResponseError):
                    out.set_exception(BucketMissingError("stream", stream))
                else:
                    out.set_exception(BusError(f"publish to {stream} failed: {e}"))
            else:
                a = f.result()
                out.set_result(PubAck(a.stream, a.seq, bool(a.duplicate)))

        def _abandoned(o: asyncio.Future[PubAck]) -> None:
            # A caller that gave up (e.g. wait_for timed out) must free nats-py's
            # pending-ack slot, or a lost ack would hold it forever.
            if o.cancelled() and not fut.done():
                fut.cancel()

        fut.add_done_callback(_done)
        out.add_done_callback(_abandoned)
        return out

    async def stream_exists(self, stream: str) -> bool:
        import nats.js.errors as je

        js = self._jet()
        try:
            async with self._mapped("stream", stream):
                await js.stream_info(stream)
        except (BucketMissingError, je.NotFoundError):
            return False
        return True

    async def fetch_stream(
        self,
        stream: str,
        subject: str,
        *,
        start_time: datetime | None = None,
        follow: bool = False,
    ) -> AsyncIterator[tuple[bytes, datetime | None]]:
        """Messages of `subject` in order (ordered consumer); with `follow`, forever."""
        import nats.errors as ne
        from nats.js.api import ConsumerConfig, DeliverPolicy

        js = self._jet()
        async with self._mapped("stream", stream):
            info = await js.stream_info(stream)
            last_seq = info.state.last_seq
            cfg = ConsumerConfig()
            if start_time is not None:
                cfg.deliver_policy = DeliverPolicy.BY_START_TIME
                when = start_time.astimezone(UTC).isoformat().replace("+00:00", "Z")
                cfg.opt_start_time = when  # type: ignore[assignment]
            sub = await js.subscribe(subject, ordered_consumer=True, stream=stream, config=cfg)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=1.0 if not follow else 3600)
                except ne.TimeoutError:
                    if follow:
                        continue
                    return
                meta = msg.metadata
                yield msg.data, meta.timestamp
                if not follow and meta.sequence.stream >= last_seq:
                    return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    @property
    def js(self) -> Any:
        """The raw JetStream context, for `harmony-fleet init` only (stream/bucket admin)."""
        return self._jet()

    # --- object store -------------------------------------------------------

    async def object_download(self, bucket: str, name: str, into: IO[bytes]) -> int:
        """Stream an object into a file; returns the size written."""
        import nats.js.errors as je

        js = self._jet()
        async with self._mapped("object store", bucket):
            obs = await js.object_store(bucket)
        try:
            async with self._mapped("object store", bucket):
                await obs.get(name, writeinto=into)
        except BucketMissingError as e:
            # The store exists (opened above): what is missing is the object.
            if isinstance(e.__cause__, je.ObjectNotFoundError | je.NotFoundError):
                raise BusError(f"object {name!r} is not in object store {bucket!r}") from e
            raise
        return into.tell()

    async def object_upload(self, bucket: str, name: str, data: IO[bytes]) -> int:
        js = self._jet()
        async with self._mapped("object store", bucket):
            obs = await js.object_store(bucket)
            info = await obs.put(name, data)
        return int(info.size or 0)
