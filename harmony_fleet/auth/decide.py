"""The callout's decision for one connect: admit, enroll, rotate, or refuse, and why. Pure.

Given what was read (the key's record, the device's binding, the token, the old
key of a rotation) the decision says whether to admit the connection as which
device, the one-line reason for the callout's log, and the registry writes that
go with it (each a compare-and-set on the revision read). No I/O: the callout
reads, calls `decide`, writes, and decides again if a write lost a race.

The rules (ADR-023 §3, §4):
- the signature over the server's nonce must verify with the presented key;
- an approved key is admitted as the device it is bound to, and only if it
  still claims that device_id;
- pending, denied, revoked and rotated keys are refused;
- an unknown key is recorded only with a valid enrollment token (so no one
  can fill the pending queue): pending, or approved at once when the token
  auto-approves and the device_id is not bound to another key. A bound
  device_id is never re-bound silently: the new key waits for an explicit
  `enroll approve --replace`;
- a rotation hands the binding to the new key only while the operator's
  request stands, with the old key's signature over (new key, this nonce).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from harmony_core import nkey
from harmony_core.identity import LoginClaim, rotation_statement
from harmony_core.labels import DNS1123_LABEL
from harmony_fleet.auth.registry import (
    Binding,
    KeyRecord,
    KeyStatus,
    TokenRecord,
    Versioned,
    binding_key,
    key_key,
    secret_matches,
    split_token,
    token_key,
)

__all__ = ["Decision", "Facts", "Write", "decide"]


@dataclass(frozen=True)
class Write:
    """One registry write: `record` under `key` if the key is still at revision `last`."""

    key: str
    record: KeyRecord | Binding | TokenRecord
    last: int | None


@dataclass(frozen=True)
class Facts:
    """What the callout read for one connect (None: not there, or not read)."""

    public_key: str
    nonce: str
    sig_ok: bool
    claim: LoginClaim | None
    claim_problem: str | None
    now: datetime
    key: Versioned[KeyRecord] | None = None
    binding: Versioned[Binding] | None = None
    token: Versioned[TokenRecord] | None = None
    old_key: Versioned[KeyRecord] | None = None


@dataclass(frozen=True)
class Decision:
    allow: bool
    event: str
    reason: str
    device_id: str | None = None
    writes: tuple[Write, ...] = ()


def _refuse(event: str, reason: str, device_id: str | None = None, *writes: Write) -> Decision:
    return Decision(False, event, reason, device_id, tuple(writes))


def _admit(event: str, reason: str, device_id: str, *writes: Write) -> Decision:
    return Decision(True, event, reason, device_id, tuple(writes))


def _new_key(f: Facts, claim: LoginClaim, status: KeyStatus, note: str | None) -> KeyRecord:
    parts = split_token(claim.token) if claim.token else None
    return KeyRecord(
        public_key=f.public_key,
        fingerprint=nkey.fingerprint(f.public_key),
        device_id=claim.device_id,
        status=status,
        machine_id=claim.machine_id,
        hostname=claim.hostname,
        arch=claim.arch,
        agent_version=claim.agent_version,
        token_id=parts[0] if parts else None,
        note=note,
        created_at=f.now,
        updated_at=f.now,
    )


def _binding(device_id: str, public_key: str, now: datetime) -> Binding:
    return Binding(device_id=device_id, public_key=public_key, updated_at=now)


def decide(f: Facts) -> Decision:
    """Admit or refuse one connect, with the reason and the registry writes that go with it."""
    if not f.sig_ok:
        return _refuse(
            "auth-bad-signature",
            "the signature over the server's nonce does not "
            "verify with the presented key (forged, or replayed from another connect)",
        )
    if f.claim is None:
        return _refuse("auth-bad-claim", f.claim_problem or "no login claim")
    claim = f.claim
    if f.key is not None:
        return _known(f, claim, f.key)
    if claim.rotation is not None:
        return _rotate(f, claim)
    if claim.token is not None:
        return _enroll(f, claim, claim.token)
    return _refuse(
        "auth-unknown-key",
        f"unknown key {nkey.fingerprint(f.public_key)} and no "
        "enrollment token (set [identity] enroll_token_file on the device)",
        claim.device_id,
    )


def _known(f: Facts, claim: LoginClaim, key: Versioned[KeyRecord]) -> Decision:
    rec = key.record
    fp = rec.fingerprint
    dev = rec.device_id
    if rec.status == "pending":
        return _refuse(
            "auth-pending",
            f"key {fp} of {dev} is pending approval" + (f" ({rec.note})" if rec.note else ""),
            dev,
        )
    if rec.status == "denied":
        return _refuse("auth-denied", f"key {fp} of {dev} was denied", dev)
    if rec.status in ("revoked", "rotated"):
        return _refuse("auth-revoked", f"key {fp} of {dev} is {rec.status}", dev)
    # approved
    if claim.device_id != dev:
        return _refuse(
            "auth-wrong-device",
            f"key {fp} is enrolled as {dev} but claims "
            f'{claim.device_id!r}; set [agent] device_id = "{dev}" on the device',
            dev,
        )
    b = f.binding
    if b is None:  # a crash between writing the key and the binding: finish it
        return _admit(
            "auth-admitted",
            f"key {fp} admitted as {dev} (binding restored)",
            dev,
            Write(binding_key(dev), _binding(dev, f.public_key, f.now), None),
        )
    if b.record.public_key == f.public_key:
        return _admit("auth-admitted", f"key {fp} admitted as {dev}", dev)
    if claim.rotation is not None:  # approved by an unfinished rotation: finish it
        return _rotate(f, claim)
    return _refuse(
        "auth-replaced",
        f"key {fp} of {dev} is approved, but {dev} is bound to "
        f"key {nkey.fingerprint(b.record.public_key)}",
        dev,
    )


def _rotate(f: Facts, claim: LoginClaim) -> Decision:
    assert claim.rotation is not None
    old_pub = claim.rotation.old_key
    dev = claim.device_id
    fp = nkey.fingerprint(f.public_key) if nkey.is_public_key(f.public_key) else "?"
    b, old = f.binding, f.old_key
    if b is None or old is None or b.record.public_key != old_pub or old.record.device_id != dev:
        return _refuse(
            "auth-rotation-refused",
            f"rotation of {dev} to key {fp} refused: the "
            "old key is not the one the device is bound to",
            dev,
        )
    if old.record.status != "approved":
        return _refuse(
            "auth-rotation-refused",
            f"rotation of {dev} to key {fp} refused: the old key is {old.record.status}",
            dev,
        )
    if b.record.rotate_until is None or f.now >= b.record.rotate_until:
        return _refuse(
            "auth-rotation-refused",
            f"rotation of {dev} to key {fp} refused: no "
            f"rotation was asked for (run `harmony-fleet rotate {dev}`)",
            dev,
        )
    try:
        sig = nkey.decode_sig(claim.rotation.sig)
    except nkey.NkeyError:
        sig = b""
    if not f.nonce or not nkey.verify(old_pub, rotation_statement(f.public_key, f.nonce), sig):
        return _refuse(
            "auth-rotation-refused",
            f"rotation of {dev} to key {fp} refused: the "
            "old key's statement does not verify for this connect",
            dev,
        )
    new = KeyRecord(
        public_key=f.public_key,
        fingerprint=fp,
        device_id=dev,
        status="approved",
        machine_id=old.record.machine_id,
        hostname=claim.hostname or old.record.hostname,
        arch=claim.arch or old.record.arch,
        agent_version=claim.agent_version or old.record.agent_version,
        note=f"rotated from {old.record.fingerprint}",
        created_at=f.key.record.created_at if f.key else f.now,
        updated_at=f.now,
    )
    return _admit(
        "auth-rotated",
        f"{dev} rotated from key {old.record.fingerprint} to {fp}",
        dev,
        # The new key first, then the binding, then the old key: a crash between any
        # two leaves the device able to get in with one of its keys.
        Write(key_key(f.public_key), new, f.key.revision if f.key else None),
        Write(binding_key(dev), _binding(dev, f.public_key, f.now), b.revision),
        Write(
            key_key(old_pub),
            old.record.model_copy(
                update={"status": "rotated", "updated_at": f.now, "note": f"rotated to {fp}"}
            ),
            old.revision,
        ),
    )


def _enroll(f: Facts, claim: LoginClaim, token: str) -> Decision:
    dev = claim.device_id
    fp = nkey.fingerprint(f.public_key)
    parts = split_token(token)
    t = f.token
    if parts is None:
        return _refuse(
            "auth-bad-token",
            f"key {fp} ({dev}): the enrollment token is not one of harmony-fleet's (hft1.…)",
            dev,
        )
    if t is None:
        return _refuse(
            "auth-bad-token",
            f"key {fp} ({dev}): unknown enrollment token {parts[0]} (another fleet's, or deleted)",
            dev,
        )
    rec = t.record
    if not secret_matches(rec, parts[1]):
        return _refuse(
            "auth-bad-token",
            f"key {fp} ({dev}): wrong secret for enrollment token {rec.token_id}",
            dev,
        )
    if rec.revoked:
        return _refuse(
            "auth-bad-token", f"key {fp} ({dev}): enrollment token {rec.token_id} was revoked", dev
        )
    if rec.expires_at is not None and f.now >= rec.expires_at:
        return _refuse(
            "auth-bad-token", f"key {fp} ({dev}): enrollment token {rec.token_id} expired", dev
        )
    if rec.max_uses is not None and rec.uses >= rec.max_uses:
        return _refuse(
            "auth-bad-token",
            f"key {fp} ({dev}): enrollment token {rec.token_id} "
            f"is used up ({rec.uses} of {rec.max_uses})",
            dev,
        )
    if not DNS1123_LABEL.match(dev):
        return _refuse(
            "auth-bad-claim", f"key {fp}: claimed device_id {dev!r} is not a DNS-1123 label", None
        )
    used = Write(token_key(rec.token_id), rec.model_copy(update={"uses": rec.uses + 1}), t.revision)
    b = f.binding
    if b is not None:
        note = (
            f"{dev} is bound to key {nkey.fingerprint(b.record.public_key)}; "
            f"`harmony-fleet enroll approve {dev} --replace` re-binds it"
        )
        return _refuse(
            "auth-pending",
            f"key {fp} claims {dev}, which is bound to another key: pending",
            dev,
            used,
            Write(key_key(f.public_key), _new_key(f, claim, "pending", note), None),
        )
    if rec.auto_approve:
        return _admit(
            "auth-enrolled",
            f"key {fp} enrolled as {dev} (token {rec.token_id}, auto-approved)",
            dev,
            used,
            Write(key_key(f.public_key), _new_key(f, claim, "approved", None), None),
            Write(binding_key(dev), _binding(dev, f.public_key, f.now), None),
        )
    return _refuse(
        "auth-pending",
        f"key {fp} of {dev} recorded: pending approval (token {rec.token_id})",
        dev,
        used,
        Write(key_key(f.public_key), _new_key(f, claim, "pending", None), None),
    )
