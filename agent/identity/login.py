"""How the agent logs in with its own key: what the bus asks before each connect.

Each connect signs the server's nonce with one key and sends the login claim
(`harmony_core.identity`) as its auth_token: the device_id and facts, the
enrollment token while this key was never let in, and — when a rotation's new
key is tried — the old key's statement over (new key, this nonce).

With a rotation pending, the new key is tried first, then the old one, in turn:
whichever the fleet lets in decides (new: it becomes the key; old: the rotation
was not taken, the new key is dropped). So a crash anywhere in a rotation still
leaves a key that gets in.

The server tells a refused client only "Authorization Violation" (the callout's
reason stays in the callout's log), so the agent says what it can know: never
let in with this key — pending approval (or denied, or a token the fleet did
not take); let in before and refused now — revoked.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.identity.keys import KeyStore
from harmony_core import nkey
from harmony_core.bus import NkeyLogin
from harmony_core.errors import IdentityError
from harmony_core.identity import LoginClaim, Rotation, rotation_statement

__all__ = ["AuthState", "AuthStateName", "DeviceLogin", "Facts", "device_facts"]

log = logging.getLogger("agent.identity")

AuthStateName = Literal["admitted", "pending", "no-token", "revoked"]


@dataclass(frozen=True)
class AuthState:
    """Where the device's login stands; `text` is for status, STATUS= and the journal."""

    state: AuthStateName
    fingerprint: str
    text: str


@dataclass(frozen=True)
class Facts:
    """What the claim says of the device besides the token."""

    device_id: str
    machine_id: str | None
    arch: str | None
    agent_version: str | None


_EVENTS: dict[AuthStateName, str] = {
    "admitted": "auth-admitted",
    "pending": "auth-pending",
    "no-token": "auth-not-enrolled",
    "revoked": "auth-revoked",
}


class DeviceLogin:
    """The bus's `login`: a new NkeyLogin per connect, and what its outcome means."""

    def __init__(
        self,
        store: KeyStore,
        facts: Facts,
        token_file: Path | None,
        on_state: Callable[[AuthState], None] | None = None,
    ) -> None:
        self.store = store
        self.facts = facts
        self.token_file = token_file
        self.on_state = on_state
        self.state: AuthState | None = None
        self._next_turn = True  # with a rotation pending: try the new key this time
        self._token_problem: str | None = None
        # The new key of a rotation was refused at least once (so the old key's success
        # means the fleet did not take it, not that it was never tried).
        self._next_refused = False

    def _token(self) -> str | None:
        if self.token_file is None:
            return None
        try:
            text = self.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            why = f"cannot read the enrollment token file {self.token_file} ({type(e).__name__})"
            if why != self._token_problem:
                log.warning("%s", why, extra={"event": "auth-token-unreadable"})
                self._token_problem = why
            return None
        self._token_problem = None
        return text or None

    def _claim(self, seed: str, old: str | None, nonce: str) -> str:
        pub = nkey.public_key(seed)
        rotation = None
        if old is not None:
            sig = nkey.sign(old, rotation_statement(pub, nonce))
            rotation = Rotation(old_key=nkey.public_key(old), sig=nkey.encode_sig(sig))
        # The token only until this key was let in once: no secret sent for nothing.
        token = self._token() if self.store.admitted() != pub else None
        claim = LoginClaim(
            device_id=self.facts.device_id,
            token=token,
            machine_id=self.facts.machine_id,
            hostname=socket.gethostname(),
            arch=self.facts.arch,
            agent_version=self.facts.agent_version,
            rotation=rotation,
        )
        return claim.model_dump_json(exclude_none=True)

    def begin_rotation(self) -> str:
        """Make the new key (once) and try it at the next login; its public key."""
        seed = self.store.begin_rotation()
        self._next_turn = True
        self._next_refused = False
        return nkey.public_key(seed)

    def __call__(self) -> NkeyLogin:
        current = self.store.seed()
        if current is None:
            current = self.store.ensure()
        pending = self.store.next_seed()
        use_next = pending is not None and self._next_turn
        if pending is not None:
            self._next_turn = not self._next_turn
        seed = pending if use_next and pending is not None else current
        old = current if use_next else None

        def token(nonce: str) -> str | None:
            return self._claim(seed, old, nonce)

        def outcome(refusal: str | None) -> None:
            self._outcome(seed, rotating=use_next, refusal=refusal)

        return NkeyLogin(seed=seed, token=token, outcome=outcome)

    def _outcome(self, seed: str, *, rotating: bool, refusal: str | None) -> None:
        pub = nkey.public_key(seed)
        fp = nkey.fingerprint(pub)
        try:
            if refusal is None:
                if rotating:
                    self.store.finish_rotation()
                    log.info(
                        "rotated to key %s: the fleet took it", fp, extra={"event": "auth-rotated"}
                    )
                elif self._next_refused and self.store.next.exists():
                    self.store.abandon_rotation()
                    log.warning(
                        "the fleet kept the old key %s; the new key is dropped (ask "
                        "again with harmony-fleet rotate)",
                        fp,
                        extra={"event": "auth-rotation-dropped"},
                    )
                self.store.mark_admitted(pub)
                self._set("admitted", fp, f"auth: logged in (key {fp})")
                return
        except (OSError, IdentityError) as e:
            log.error(
                "cannot record the login in %s: %s",
                self.store.dir,
                e,
                extra={"event": "auth-store-failed"},
            )
            return
        if rotating:
            self._next_refused = True
            return  # the old key's turn comes next; its outcome says where we stand
        if self.store.admitted() == pub:
            self._set(
                "revoked",
                fp,
                f"auth: refused after being let in (key {fp}): revoked "
                "by the operator, or the fleet's auth service is down; retrying",
            )
        elif self.token_file is None:
            self._set(
                "no-token",
                fp,
                f"auth: key {fp} is not enrolled and [identity] "
                "enroll_token_file is unset; approve it (harmony-fleet enroll) or set a "
                "token",
            )
        else:
            self._set(
                "pending",
                fp,
                f"auth: pending approval (fingerprint {fp}); approve with "
                "harmony-fleet enroll approve",
            )

    def _set(self, state: AuthStateName, fp: str, text: str) -> None:
        new = AuthState(state, fp, text)
        if new == self.state:
            return
        self.state = new
        level = logging.INFO if state == "admitted" else logging.WARNING
        log.log(level, "%s", text, extra={"event": _EVENTS[state]})
        if self.on_state is not None:
            self.on_state(new)


def device_facts(device_id: str, machine_id: str | None, version: str) -> Facts:
    """The device's facts for its claim (no I/O beyond the arch name)."""
    from agent.deviceinfo.arch import debian_arch

    try:
        arch: str | None = debian_arch()
    except (OSError, ValueError):
        arch = None
    return Facts(device_id, machine_id, arch, version)
