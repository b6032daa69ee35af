"""DSSE envelopes: PAE, Ed25519 signing and verification. Pure: no I/O.

https://github.com/secure-systems-lab/dsse/blob/master/protocol.md — the
signature covers PAE(payloadType, payload), never the JSON around it, so a
re-serialised envelope still verifies and a changed payload type does not.

Anyone who may write the request key can hand us an envelope, so what one
costs is bounded before any cryptography: at most MAX_ENVELOPE_BYTES, at most
MAX_SIGNATURES signatures, and a signature whose keyid names a trusted key is
checked against that key alone (an unknown keyid is tried against each).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from pydantic import ValidationError

from harmony_core.contracts import DsseEnvelope, UpgradeRequest
from harmony_core.errors import UpgradeRejectedError

if TYPE_CHECKING:
    # cryptography costs ~8 MB of RSS: the daemon loads it only when a request arrives.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PublicKey,
    )

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "MAX_SIGNATURES",
    "PAYLOAD_TYPE",
    "Verified",
    "VerifyingKey",
    "keyid_of",
    "pae",
    "verify_envelope",
    "verify_payload",
]

PAYLOAD_TYPE = "application/vnd.harmony.agent-upgrade.v1+json"
# An envelope larger than this is not ours; refuse before decoding anything. The one
# limit: the agent's KV watch, the staged copy the root side reads, and verification.
MAX_ENVELOPE_BYTES = 64 * 1024
# One operator key signs; a few leave room for a key rotation. More are refused unread.
MAX_SIGNATURES = 4
_ED25519_SIGNATURE_BYTES = 64


class VerifyingKey(Protocol):
    """What verification needs of a trusted key (an Ed25519PublicKey is one)."""

    def verify(self, signature: bytes, data: bytes, /) -> None:
        """Return if `signature` over `data` is good; raise InvalidSignature if not."""


class Verified:
    """A request whose signature checked out, with the key that signed it."""

    __slots__ = ("keyid", "request")

    def __init__(self, request: UpgradeRequest, keyid: str) -> None:
        self.request = request
        self.keyid = keyid


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: 'DSSEv1' SP len(type) SP type SP len(body) SP body."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def keyid_of(key: Ed25519PublicKey) -> str:
    """sha256 of the raw 32-byte public key, hex: the same id on both sides, never chosen."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as e:
        raise UpgradeRejectedError(f"{what} is not valid base64") from e


def _problems(e: ValidationError) -> str:
    """A pydantic error as one line: `field: message; ...`."""
    parts = [f"{'.'.join(map(str, err['loc'])) or 'payload'}: {err['msg']}" for err in e.errors()]
    return "; ".join(parts[:3]) + (f"; and {len(parts) - 3} more" if len(parts) > 3 else "")


def verify_payload(
    data: bytes,
    keys: Mapping[str, VerifyingKey],
    payload_type: str = PAYLOAD_TYPE,
    what: str = "request",
) -> tuple[bytes, str]:
    """The signed payload of the envelope `data` and the keyid of the trusted key that signed it.

    Only an envelope of `payload_type` is read: a signature covers its type (PAE), so
    one kind of signed document is never taken for another. `what` names the document
    in the reasons. Raises UpgradeRejectedError with a reason a person understands.
    At most MAX_SIGNATURES x len(keys) verifications, none for an envelope
    that is too large or carries too many signatures.
    """
    if len(data) > MAX_ENVELOPE_BYTES:
        raise UpgradeRejectedError(f"the envelope is larger than {MAX_ENVELOPE_BYTES} bytes")
    try:
        env = DsseEnvelope.model_validate_json(data)
    except (ValidationError, ValueError) as e:
        raise UpgradeRejectedError("not a DSSE envelope (invalid JSON or missing fields)") from e
    if env.payloadType != payload_type:
        raise UpgradeRejectedError(f"payload type {env.payloadType!r} is not {payload_type!r}")
    if len(env.signatures) > MAX_SIGNATURES:
        raise UpgradeRejectedError(
            f"the envelope carries {len(env.signatures)} signatures; "
            f"at most {MAX_SIGNATURES} are accepted"
        )
    if not keys:
        raise UpgradeRejectedError(
            "no trusted keys: put the operator's Ed25519 public key (*.pub) in trusted_keys_dir"
        )
    body = _b64(env.payload, "the payload")
    message = pae(env.payloadType, body)
    signer: str | None = None
    for s in env.signatures:
        if signer := _signer(s.keyid, _b64(s.sig, "a signature"), message, keys):
            break
    if signer is None:
        raise UpgradeRejectedError(
            f"no signature by a trusted key (tampered {what}, or signed by an unknown key)"
        )
    return body, signer


def verify_envelope(data: bytes, keys: Mapping[str, VerifyingKey]) -> Verified:
    """The request in `data` if one signature by a key in `keys` verifies (`verify_payload`).

    Raises UpgradeRejectedError with a reason a person understands otherwise.
    """
    body, signer = verify_payload(data, keys)
    try:
        request = UpgradeRequest.model_validate_json(body)
    except ValidationError as e:
        raise UpgradeRejectedError(
            f"the signed payload is not an UpgradeRequest: {_problems(e)}"
        ) from e
    except ValueError as e:
        raise UpgradeRejectedError(f"the signed payload is not an UpgradeRequest: {e}") from e
    return Verified(request, signer)


def _signer(
    keyid: str, sig: bytes, message: bytes, keys: Mapping[str, VerifyingKey]
) -> str | None:
    """The keyid of the trusted key that made `sig`, or None.

    A keyid naming a trusted key binds the signature to that key; DSSE makes keyids
    optional, so an unknown or empty one is tried against every key.
    """
    from cryptography.exceptions import InvalidSignature

    if len(sig) != _ED25519_SIGNATURE_BYTES:
        return None  # not an Ed25519 signature: no key could have made it
    for kid in [keyid] if keyid in keys else keys:
        try:
            keys[kid].verify(sig, message)
        except InvalidSignature:
            continue
        return kid
    return None
