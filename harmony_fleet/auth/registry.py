"""The identity registry: KV `device-identity`, written only by the callout and `harmony-fleet`.

Three kinds of record, each a JSON value with `schema_version`:
- `keys.<public key>`: one device key (`KeyRecord`): pending, approved, denied,
  revoked or rotated, with what the device claimed when it first came;
- `devices.<device_id>`: which key a device_id is bound to (`Binding`), and
  until when a rotation asked for by the operator may hand it to a new key;
- `tokens.<token id>`: an enrollment token (`TokenRecord`): only its hash.

Every write is a compare-and-set on the revision read, so two callouts (or a
callout and an operator) never overwrite each other's decision. Devices have
no permission on this bucket at all.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from harmony_core.bus import Bus
from harmony_core.contracts import Timestamp, dump_json

__all__ = [
    "REGISTRY_BUCKET",
    "Binding",
    "KeyRecord",
    "KeyStatus",
    "Registry",
    "TokenRecord",
    "Versioned",
    "binding_key",
    "hash_secret",
    "key_key",
    "new_token",
    "secret_matches",
    "split_token",
    "token_key",
]

REGISTRY_BUCKET = "device-identity"
_TOKEN_PREFIX = "hft1"

KeyStatus = Literal["pending", "approved", "denied", "revoked", "rotated"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Literal[1] = 1


class KeyRecord(_Record):
    """One device key and what became of it."""

    public_key: str
    fingerprint: str
    device_id: str
    status: KeyStatus
    machine_id: str | None = None
    hostname: str | None = None
    arch: str | None = None
    agent_version: str | None = None
    token_id: str | None = None
    # Why it waits, or why it was refused (a person reads it in `enroll list`).
    note: str | None = None
    created_at: Timestamp
    updated_at: Timestamp


class Binding(_Record):
    """The key a device_id belongs to; `rotate_until`: a rotation may hand it on until then."""

    device_id: str
    public_key: str
    rotate_until: Timestamp | None = None
    updated_at: Timestamp


class TokenRecord(_Record):
    """An enrollment token: its hash, never the token."""

    token_id: str
    sha256: str
    created_at: Timestamp
    expires_at: Timestamp | None = None
    max_uses: int | None = None  # None: reusable
    uses: int = 0
    auto_approve: bool = False
    revoked: bool = False
    note: str | None = None


R = TypeVar("R", KeyRecord, Binding, TokenRecord)


@dataclass(frozen=True)
class Versioned(Generic[R]):
    """A record with the KV revision it was read at (for the compare-and-set write)."""

    record: R
    revision: int
    written_at: datetime | None = None


def key_key(public_key: str) -> str:
    return f"keys.{public_key}"


def binding_key(device_id: str) -> str:
    return f"devices.{device_id}"


def token_key(token_id: str) -> str:
    return f"tokens.{token_id}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> tuple[str, str, str]:
    """(token id, secret, the token a person copies): `hft1.<id>.<secret>`."""
    token_id = secrets.token_hex(5)
    secret = secrets.token_urlsafe(24)
    return token_id, secret, f"{_TOKEN_PREFIX}.{token_id}.{secret}"


def split_token(token: str) -> tuple[str, str] | None:
    """(token id, secret) of a token in our format, or None."""
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != _TOKEN_PREFIX or not parts[1] or not parts[2]:
        return None
    if not all(c in "0123456789abcdef" for c in parts[1]):
        return None
    return parts[1], parts[2]


def secret_matches(record: TokenRecord, secret: str) -> bool:
    return hmac.compare_digest(record.sha256, hash_secret(secret))


class Registry:
    """The registry's records in KV, read with their revision and written by compare-and-set."""

    def __init__(self, bus: Bus, bucket: str = REGISTRY_BUCKET) -> None:
        self.bus = bus
        self.bucket = bucket

    async def _get(self, key: str, model: type[R]) -> Versioned[R] | None:
        e = await self.bus.kv_get(self.bucket, key)
        if e is None:
            return None
        try:
            return Versioned(model.model_validate_json(e.value), e.revision, e.created)
        except ValidationError:
            return None  # garbage under a key: treated as absent, overwritten by CAS

    async def key(self, public_key: str) -> Versioned[KeyRecord] | None:
        return await self._get(key_key(public_key), KeyRecord)

    async def binding(self, device_id: str) -> Versioned[Binding] | None:
        return await self._get(binding_key(device_id), Binding)

    async def token(self, token_id: str) -> Versioned[TokenRecord] | None:
        return await self._get(token_key(token_id), TokenRecord)

    async def write(self, key: str, record: BaseModel, last: int | None) -> int:
        """Compare-and-set: RevisionMismatchError when `key` moved past `last` meanwhile."""
        return await self.bus.kv_update(self.bucket, key, dump_json(record), last)

    async def all(
        self,
    ) -> tuple[list[Versioned[KeyRecord]], list[Versioned[Binding]], list[Versioned[TokenRecord]]]:
        """Every record, by kind."""
        keys: list[Versioned[KeyRecord]] = []
        bindings: list[Versioned[Binding]] = []
        tokens: list[Versioned[TokenRecord]] = []
        for e in await self.bus.kv_entries(self.bucket):
            try:
                if e.key.startswith("keys."):
                    keys.append(
                        Versioned(KeyRecord.model_validate_json(e.value), e.revision, e.created)
                    )
                elif e.key.startswith("devices."):
                    bindings.append(
                        Versioned(Binding.model_validate_json(e.value), e.revision, e.created)
                    )
                elif e.key.startswith("tokens."):
                    tokens.append(
                        Versioned(TokenRecord.model_validate_json(e.value), e.revision, e.created)
                    )
            except ValidationError:
                continue
        return keys, bindings, tokens
