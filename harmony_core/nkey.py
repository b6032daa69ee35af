"""NATS nkeys (Ed25519 keys in NATS's base32 spelling): make, sign, verify, fingerprint. Pure.

A seed (`S…`) is the private half; a public key starts with its role's letter
(`U` a user, `A` an account). Both sides use these: the agent makes and signs
with its own user key (ADR-023 §1), the callout verifies what a device signed.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
from typing import Literal

__all__ = [
    "NkeyError",
    "Role",
    "decode_sig",
    "encode_sig",
    "fingerprint",
    "is_public_key",
    "new_seed",
    "public_key",
    "sign",
    "verify",
]

Role = Literal["user", "account"]

# NATS's prefix bytes (nkeys: PREFIX_BYTE_USER / PREFIX_BYTE_ACCOUNT).
_PREFIX = {"user": 20 << 3, "account": 0}
_LETTER = {"user": "U", "account": "A"}
# Public keys a signature may come from: those, and a server's (N…, its requests) or an
# operator's (O…).
_PUBLIC_PREFIXES = (*_PREFIX.values(), 13 << 3, 14 << 3)


class NkeyError(ValueError):
    """Not a valid nkey (seed or public key) of the role asked for."""


def new_seed(role: Role = "user") -> str:
    """A fresh random seed for a key of `role`."""
    import nkeys  # type: ignore[import-untyped]

    return bytes(nkeys.encode_seed(os.urandom(32), _PREFIX[role])).decode()


@functools.lru_cache(maxsize=16)
def _pair(seed: str) -> object:
    # Cached: deriving the key pair is most of a signature's cost, and the callout signs
    # every answer with the same issuer seed.
    import nkeys

    try:
        return nkeys.from_seed(bytearray(seed.strip().encode()))
    except (nkeys.NkeysError, binascii.Error, ValueError, IndexError) as e:
        raise NkeyError("not an nkey seed") from e


def public_key(seed: str) -> str:
    """The public key (`U…`, `A…`) of a seed."""
    kp = _pair(seed)
    return bytes(kp.public_key).decode()  # type: ignore[attr-defined]


def sign(seed: str, data: bytes) -> bytes:
    """The raw Ed25519 signature of `data` by the seed's key."""
    kp = _pair(seed)
    return bytes(kp.sign(data))  # type: ignore[attr-defined]


def _crc16(data: bytes) -> int:
    # CRC-16/XMODEM, as nkeys checks its encodings (binascii's C implementation).
    return binascii.crc_hqx(data, 0)


@functools.lru_cache(maxsize=4096)
def _raw_public(key: str, role: Role | None = None) -> bytes:
    """The 32 key bytes of a public nkey; NkeyError when it is not one (of `role`)."""
    text = key.strip()
    if role is not None and not text.startswith(_LETTER[role]):
        raise NkeyError(f"not a {role} public key (it starts with {_LETTER[role]})")
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError) as e:
        raise NkeyError("not base32") from e
    if len(raw) != 35 or raw[0] not in _PUBLIC_PREFIXES:
        raise NkeyError("not a public nkey")
    body, crc = raw[:33], int.from_bytes(raw[33:], "little")
    if _crc16(body) != crc:
        raise NkeyError("checksum mismatch")
    return body[1:]


def is_public_key(key: str, role: Role = "user") -> bool:
    try:
        _raw_public(key, role)
    except NkeyError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _verifier(key: str) -> object:
    # libsodium (PyNaCl, which nkeys brings): twice as fast as OpenSSL's Ed25519 verify
    # here, and the callout verifies two signatures per decision.
    import nacl.signing

    return nacl.signing.VerifyKey(_raw_public(key))


def verify(key: str, data: bytes, sig: bytes) -> bool:
    """Whether `sig` is the signature of `data` by public key `key` (any malformed input: False)."""
    import nacl.exceptions

    if len(sig) != 64:
        return False
    try:
        _verifier(key).verify(data, sig)  # type: ignore[attr-defined]
    except (NkeyError, nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


def encode_sig(sig: bytes) -> str:
    """A signature as base64url without padding (how NATS JWTs and our proofs spell it)."""
    return base64.urlsafe_b64encode(sig).rstrip(b"=").decode()


def decode_sig(text: str) -> bytes:
    """A signature in any of the base64 spellings clients send (std or url, padded or not)."""
    s = text.strip()
    padded = s + "=" * (-len(s) % 4)
    alphabet = base64.urlsafe_b64decode if ("-" in s or "_" in s) else base64.b64decode
    try:
        return alphabet(padded)
    except (binascii.Error, ValueError) as e:
        raise NkeyError("signature is not base64") from e


def fingerprint(key: str) -> str:
    """A short, stable name of a public key a person can compare: 4 groups of 4 hex digits."""
    digest = hashlib.sha256(_raw_public(key)).hexdigest()[:16]
    return ":".join(digest[i : i + 4] for i in range(0, 16, 4))
