"""Enrollment, the operator's side: tokens, the list of keys, approve, deny, revoke, rotate.

Every change is a compare-and-set on the registry record read (another operator
or the callout writing meanwhile makes it fail, and it says so); the order of
multi-record changes keeps the rule that a device_id is bound to one key at a
time, and that a crash in between never lets a refused key in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from harmony_core import nkey
from harmony_core.contracts import utcnow
from harmony_core.errors import IdentityError
from harmony_fleet.auth.registry import (
    Binding,
    KeyRecord,
    Registry,
    TokenRecord,
    Versioned,
    binding_key,
    hash_secret,
    key_key,
    new_token,
    token_key,
)

__all__ = [
    "KeyRow",
    "Replaced",
    "approve",
    "create_token",
    "deny",
    "find_key",
    "key_rows",
    "request_rotation",
    "revoke_device",
    "revoke_token",
]


@dataclass(frozen=True)
class KeyRow:
    """One line of `enroll list`."""

    status: str
    device_id: str
    fingerprint: str
    public_key: str
    bound: bool
    machine_id: str | None
    hostname: str | None
    arch: str | None
    agent_version: str | None
    token_id: str | None
    note: str | None
    created_at: datetime
    updated_at: datetime


async def create_token(
    reg: Registry,
    *,
    expires_in_s: float | None,
    uses: int | None,
    auto_approve: bool,
    note: str | None = None,
) -> tuple[TokenRecord, str]:
    """A new enrollment token: its record (hash only) and the token, shown once."""
    token_id, secret, token = new_token()
    now = utcnow()
    rec = TokenRecord(
        token_id=token_id,
        sha256=hash_secret(secret),
        created_at=now,
        expires_at=now + timedelta(seconds=expires_in_s) if expires_in_s else None,
        max_uses=uses,
        auto_approve=auto_approve,
        note=note,
    )
    await reg.write(token_key(token_id), rec, None)
    return rec, token


async def revoke_token(reg: Registry, token_id: str) -> TokenRecord:
    t = await reg.token(token_id)
    if t is None:
        raise IdentityError(
            f"no enrollment token {token_id!r} (see harmony-fleet enroll token list)"
        )
    rec = t.record.model_copy(update={"revoked": True})
    await reg.write(token_key(token_id), rec, t.revision)
    return rec


async def key_rows(reg: Registry) -> list[KeyRow]:
    keys, bindings, _ = await reg.all()
    bound = {b.record.device_id: b.record.public_key for b in bindings}
    rows = [
        KeyRow(
            status=k.record.status,
            device_id=k.record.device_id,
            fingerprint=k.record.fingerprint,
            public_key=k.record.public_key,
            bound=bound.get(k.record.device_id) == k.record.public_key,
            machine_id=k.record.machine_id,
            hostname=k.record.hostname,
            arch=k.record.arch,
            agent_version=k.record.agent_version,
            token_id=k.record.token_id,
            note=k.record.note,
            created_at=k.record.created_at,
            updated_at=k.record.updated_at,
        )
        for k in keys
    ]
    return sorted(rows, key=lambda r: (r.device_id, r.created_at))


async def find_key(
    reg: Registry, target: str, *, status: str | None = None
) -> Versioned[KeyRecord]:
    """The one key `target` names: a public key, a fingerprint, or a device_id (with `status`)."""
    if nkey.is_public_key(target):
        k = await reg.key(target)
        if k is None:
            raise IdentityError(f"no key {target} in the registry (see harmony-fleet enroll list)")
        return k
    keys, _, _ = await reg.all()
    found = [
        k
        for k in keys
        if (k.record.fingerprint == target or k.record.device_id == target)
        and (status is None or k.record.status == status)
    ]
    if not found:
        what = f"{status} key" if status else "key"
        raise IdentityError(f"no {what} for {target!r} (see harmony-fleet enroll list)")
    if len(found) > 1:
        fps = ", ".join(k.record.fingerprint for k in found)
        raise IdentityError(
            f"{target!r} names {len(found)} keys ({fps}); name one by its fingerprint"
        )
    return found[0]


@dataclass(frozen=True)
class Replaced:
    """The key `approve --replace` revoked (its live connections are to be kicked)."""

    device_id: str
    public_key: str
    fingerprint: str


async def approve(
    reg: Registry, target: str, *, replace: bool
) -> tuple[KeyRecord, Replaced | None]:
    """Approve a pending (or denied) key and bind its device_id to it.

    A device_id bound to another key needs `replace`: the old key is revoked first,
    then the binding moves, then the new key is approved.
    """
    k = await find_key(reg, target, status=None if nkey.is_public_key(target) else "pending")
    rec = k.record
    if rec.status not in ("pending", "denied"):
        raise IdentityError(
            f"key {rec.fingerprint} of {rec.device_id} is {rec.status}, not pending"
        )
    now = utcnow()
    b = await reg.binding(rec.device_id)
    replaced: Replaced | None = None
    if b is not None and b.record.public_key != rec.public_key:
        old_fp = nkey.fingerprint(b.record.public_key)
        if not replace:
            raise IdentityError(
                f"{rec.device_id} is bound to key {old_fp}; approve with "
                "--replace to revoke that key and bind this one (a re-imaged "
                "device)"
            )
        old = await reg.key(b.record.public_key)
        if old is not None and old.record.status == "approved":
            await reg.write(
                key_key(old.record.public_key),
                old.record.model_copy(
                    update={
                        "status": "revoked",
                        "updated_at": now,
                        "note": f"replaced by {rec.fingerprint}",
                    }
                ),
                old.revision,
            )
        replaced = Replaced(rec.device_id, b.record.public_key, old_fp)
    if b is None or b.record.public_key != rec.public_key:
        binding = Binding(device_id=rec.device_id, public_key=rec.public_key, updated_at=now)
        await reg.write(binding_key(rec.device_id), binding, b.revision if b else None)
    done = rec.model_copy(update={"status": "approved", "updated_at": now, "note": None})
    await reg.write(key_key(rec.public_key), done, k.revision)
    return done, replaced


async def deny(reg: Registry, target: str) -> KeyRecord:
    k = await find_key(reg, target, status=None if nkey.is_public_key(target) else "pending")
    if k.record.status != "pending":
        raise IdentityError(
            f"key {k.record.fingerprint} is {k.record.status}, not pending "
            "(revoke an approved device with harmony-fleet revoke)"
        )
    rec = k.record.model_copy(update={"status": "denied", "updated_at": utcnow()})
    await reg.write(key_key(rec.public_key), rec, k.revision)
    return rec


async def _bound(reg: Registry, device: str) -> tuple[Versioned[Binding], Versioned[KeyRecord]]:
    b = await reg.binding(device)
    if b is None:
        raise IdentityError(f"{device!r} is not enrolled (see harmony-fleet enroll list)")
    k = await reg.key(b.record.public_key)
    if k is None:
        raise IdentityError(
            f"{device!r} is bound to key {b.record.public_key}, which the registry lacks"
        )
    return b, k


async def revoke_device(reg: Registry, device: str) -> KeyRecord:
    """Mark the key `device` is bound to revoked (the binding stays: no silent re-enrollment)."""
    _, k = await _bound(reg, device)
    if k.record.status == "revoked":
        return k.record
    rec = k.record.model_copy(
        update={"status": "revoked", "updated_at": utcnow(), "note": "revoked by the operator"}
    )
    await reg.write(key_key(rec.public_key), rec, k.revision)
    return rec


async def request_rotation(reg: Registry, device: str, window_s: float) -> Versioned[Binding]:
    """Let `device` hand its binding to a new key (proven by the old one) for `window_s`."""
    b, k = await _bound(reg, device)
    if k.record.status != "approved":
        raise IdentityError(
            f"{device}'s key {k.record.fingerprint} is {k.record.status}; only "
            "an approved device rotates"
        )
    now = utcnow()
    rec = b.record.model_copy(
        update={"rotate_until": now + timedelta(seconds=window_s), "updated_at": now}
    )
    await reg.write(binding_key(device), rec, b.revision)
    # Read back for the server's timestamp of the request: connections that began before
    # it are the old key's (the device logs in with the new key only after hearing it).
    after = await reg.binding(device)
    if after is None:
        raise IdentityError(f"{device}'s binding vanished while asking it to rotate")
    return after
