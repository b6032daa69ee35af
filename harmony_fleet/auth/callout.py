"""`harmony-fleet auth serve`: the auth callout (ADR-023 §2).

nats-server sends every connect that is not one of its own users to
`$SYS.REQ.USER.AUTH` as a JWT signed by the server; the callout (any number of
instances, one queue group) checks the request, verifies the device's
signature over the server's nonce with the key it presents, reads the registry,
decides (`decide`), writes what the decision records, and answers with a user
JWT scoped to that one device (`harmony_core.permissions`) for `ttl`, or an
error. Every refusal is one line in its log with the reason and a named event;
the device only ever hears "Authorization Violation".

It keeps no state but the registry, read fresh for every decision: a revoke is
in force for the next connect, whichever instance answers it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from harmony_core import nkey
from harmony_core.bus import Bus, Message
from harmony_core.contracts import utcnow
from harmony_core.errors import BusError, BusUnavailableError, RevisionMismatchError
from harmony_core.identity import LoginClaim, parse_claim
from harmony_core.labels import DNS1123_LABEL
from harmony_core.permissions import device_permissions
from harmony_fleet.auth.decide import Decision, Facts, decide
from harmony_fleet.auth.jwt import (
    AuthRequest,
    JwtError,
    StaleRequestError,
    auth_response,
    parse_auth_request,
    user_jwt,
)
from harmony_fleet.auth.registry import Registry, split_token
from harmony_fleet.auth.setup import AuthdConfig

__all__ = ["AUTH_SUBJECT", "Callout", "CalloutStats", "serve"]

log = logging.getLogger("harmony_fleet.auth")

AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"
# A decision that loses a compare-and-set race is read and made again, this often.
_RACES = 4


@dataclass
class CalloutStats:
    admitted: int = 0
    refused: int = 0
    errors: int = 0
    stale: int = 0


class Callout:
    """Decides authorization requests; `answer` turns one request into the server's reply."""

    def __init__(self, cfg: AuthdConfig, bus: Bus, issuer_seed: str) -> None:
        self.cfg = cfg
        self.bus = bus
        self.registry = Registry(bus, cfg.callout.registry_bucket)
        self._seed = issuer_seed
        self.stats = CalloutStats()

    async def _facts(
        self,
        req: AuthRequest,
        pub: str,
        sig_ok: bool,
        claim: LoginClaim | None,
        problem: str | None,
    ) -> Facts:
        f = Facts(
            public_key=pub,
            nonce=req.nonce,
            sig_ok=sig_ok,
            claim=claim,
            claim_problem=problem,
            now=utcnow(),
        )
        if not sig_ok or claim is None:
            return f
        # The key and the claimed device's binding at once: for an approved key they are
        # the same device (else the claim is refused whatever the binding says).
        key, binding = await asyncio.gather(
            self.registry.key(pub), self.registry.binding(claim.device_id)
        )
        if key is not None and key.record.device_id != claim.device_id:
            binding = await self.registry.binding(key.record.device_id)
        token = old = None
        if key is None and claim.token and (parts := split_token(claim.token)):
            token = await self.registry.token(parts[0])
        if claim.rotation is not None and nkey.is_public_key(claim.rotation.old_key):
            old = await self.registry.key(claim.rotation.old_key)
        return Facts(
            public_key=pub,
            nonce=req.nonce,
            sig_ok=sig_ok,
            claim=claim,
            claim_problem=problem,
            now=f.now,
            key=key,
            binding=binding,
            token=token,
            old_key=old,
        )

    async def decide(self, req: AuthRequest) -> Decision:
        """Check the request, read the registry, decide, record; again if a write raced."""
        pub = req.client_nkey or ""
        if not nkey.is_public_key(pub):
            return Decision(
                False,
                "auth-no-key",
                "no user nkey in the connect: a device logs in with its own key (ADR-023)",
            )
        try:
            sig = nkey.decode_sig(req.client_sig or "")
        except nkey.NkeyError:
            sig = b""
        sig_ok = bool(req.nonce) and nkey.verify(pub, req.nonce.encode(), sig)
        try:
            claim: LoginClaim | None = parse_claim(req.auth_token)
            problem = None
        except ValueError as e:
            claim, problem = None, str(e)
        if claim is not None and not DNS1123_LABEL.match(claim.device_id):
            # before any registry read: it names the keys read
            problem = f"claimed device_id {claim.device_id!r} is not a DNS-1123 label"
            claim = None
        for _ in range(_RACES):
            d = decide(await self._facts(req, pub, sig_ok, claim, problem))
            try:
                for w in d.writes:
                    await self.registry.write(w.key, w.record, w.last)
            except RevisionMismatchError:
                continue  # another decision wrote meanwhile: read again
            return d
        return Decision(
            False,
            "auth-busy",
            f"key {nkey.fingerprint(pub)}: the registry kept "
            "changing under this decision; the device retries",
        )

    def _user(self, req: AuthRequest, d: Decision) -> str:
        assert d.device_id is not None
        c = self.cfg.callout
        now = time.time()
        return user_jwt(
            self._seed,
            user_nkey=req.user_nkey,
            account=c.account,
            name=f"device-{d.device_id}",
            permissions=device_permissions(d.device_id, self.cfg.nats),
            expires_at=int(now + c.ttl),
            tags=[f"device:{d.device_id}", f"key:{nkey.fingerprint(req.client_nkey or '')}"],
            now=now,
        )

    async def answer(self, data: bytes) -> bytes | None:
        """The reply to one request; None when it is not a request we can answer at all."""
        try:
            req = parse_auth_request(data.decode("utf-8", "replace"))
        except StaleRequestError:
            # A burst queued longer than the server waits: deciding it now would only
            # take time from the fresh ones (the device retries).
            self.stats.stale += 1
            return None
        except JwtError as e:
            self.stats.errors += 1
            log.warning(
                "ignored an authorization request that is not valid: %s",
                e,
                extra={"event": "auth-bad-request"},
            )
            return None
        try:
            d = await self.decide(req)
        except BusError as e:
            d = Decision(
                False,
                "auth-registry-unavailable",
                f"the registry cannot be read or written ({e}); the device retries",
            )
        where = f" from {req.client_host}" if req.client_host else ""
        if d.allow:
            self.stats.admitted += 1
            log.info("%s%s", d.reason, where, extra={"event": d.event})
            return auth_response(self._seed, req, user=self._user(req, d))
        self.stats.refused += 1
        log.warning("refused: %s%s", d.reason, where, extra={"event": d.event})
        return auth_response(self._seed, req, error=d.reason)

    async def _one(self, msg: Message) -> None:
        try:
            reply = await self.answer(msg.data)
            if reply is not None:
                await msg.respond(reply)
        except BusError as e:
            log.warning(
                "could not answer an authorization request: %s",
                e,
                extra={"event": "auth-reply-failed"},
            )
        except Exception:  # a defect: keep the traceback, keep answering the others
            self.stats.errors += 1
            log.exception(
                "deciding an authorization request failed", extra={"event": "auth-defect"}
            )

    async def _worker(self, backlog: deque[Message], arrived: asyncio.Event) -> None:
        while True:
            while not backlog:
                arrived.clear()
                await arrived.wait()
            # Newest first: under a burst the server gives up on a request after its auth
            # timeout, so the fresh ones are the ones worth deciding; the old ones turn
            # stale and are dropped unread (the devices retry).
            await self._one(backlog.pop())

    async def run(self, on_subscribed: Callable[[], None] | None = None) -> None:
        """Answer requests until the connection closes for good (BusUnavailableError).

        `max_concurrent` decisions at a time; the queue group shares the requests with the
        other instances.
        """
        backlog: deque[Message] = deque()
        arrived = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(self.cfg.callout.max_concurrent):
                    tg.create_task(self._worker(backlog, arrived))
                async for msg in self.bus.subscribe(
                    AUTH_SUBJECT, queue=self.cfg.callout.queue, on_subscribed=on_subscribed
                ):
                    backlog.append(msg)
                    arrived.set()
        except* BusUnavailableError as eg:
            raise eg.exceptions[0] from None


async def serve(cfg: AuthdConfig, issuer_seed: str) -> int:
    """Run the callout until SIGTERM/SIGINT: connect (retrying for ever), subscribe, answer."""
    bus = Bus(cfg.nats, name="harmony-fleet-auth")
    callout = Callout(cfg, bus, issuer_seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def subscribed() -> None:
        log.info(
            "answering %s (queue %s, ttl %ds)",
            AUTH_SUBJECT,
            cfg.callout.queue,
            int(cfg.callout.ttl),
            extra={"event": "auth-serving"},
        )

    async def answering() -> None:
        while True:
            await bus.wait_connected()
            try:
                await callout.run(subscribed)
            except BusUnavailableError as e:
                log.warning(
                    "lost NATS (%s); answering again once reconnected",
                    e,
                    extra={"event": "auth-reconnecting"},
                )
                await asyncio.sleep(0.5)

    async def stopping() -> None:
        await stop.wait()
        raise _Stop

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(bus.run())
            tg.create_task(answering())
            tg.create_task(stopping())
    except* _Stop:
        pass
    await bus.close()
    st = callout.stats
    log.info(
        "stopped (%d admitted, %d refused, %d too late to answer)",
        st.admitted,
        st.refused,
        st.stale,
        extra={"event": "auth-stopped"},
    )
    return 0


class _Stop(Exception):
    """Ends serve's TaskGroup in order."""
