"""DSSE envelopes: PAE, Ed25519 signing and verification. Pure: no I/O.

https://github.com/secure-systems-lab/dsse/blob/master/protocol.md — the
signature covers PAE(payloadType, payload), never the JSON around it, so a
re-serialised envelope still verifies and a changed payload type does not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from harmony_core.contracts import DsseEnvelope, UpgradeRequest
from harmony_core.errors import UpgradeRejectedError

if TYPE_CHECKING:
    # cryptography costs ~8 MB of RSS: the daemon loads it only when a request arrives.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PublicKey,
    )

__all__ = [
    "PAYLOAD_TYPE",
    "Verified",
    "keyid_of",
    "pae",
    "verify_envelope",
]

PAYLOAD_TYPE = "application/vnd.harmony.agent-upgrade.v1+json"
# An envelope larger than this is not ours; refuse before decoding anything.
MAX_ENVELOPE_BYTES = 64 * 1024


class Verified:
    """A request whose signature checked out, with the key that signed it."""

    __slots__ = ("keyid", "raw", "request")

    def __init__(self, request: UpgradeRequest, keyid: str, raw: dict[str, Any]) -> None:
        self.request = request
        self.keyid = keyid
        # The signed payload as a dict, for fields newer than this reader's model.
        self.raw = raw


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


def verify_envelope(data: bytes, keys: Mapping[str, Ed25519PublicKey]) -> Verified:
    """The request in `data` if one signature by a key in `keys` verifies.

    Raises UpgradeRejectedError with a reason a person understands otherwise.
    """
    from cryptography.exceptions import InvalidSignature

    if len(data) > MAX_ENVELOPE_BYTES:
        raise UpgradeRejectedError(f"the envelope is larger than {MAX_ENVELOPE_BYTES} bytes")
    try:
        env = DsseEnvelope.model_validate_json(data)
    except (ValidationError, ValueError) as e:
        raise UpgradeRejectedError("not a DSSE envelope (invalid JSON or missing fields)") from e
    if env.payloadType != PAYLOAD_TYPE:
        raise UpgradeRejectedError(f"payload type {env.payloadType!r} is not {PAYLOAD_TYPE!r}")
    if not keys:
        raise UpgradeRejectedError(
            "no trusted keys: put the operator's Ed25519 public key (*.pub) in trusted_keys_dir"
        )
    body = _b64(env.payload, "the payload")
    message = pae(env.payloadType, body)
    signer: str | None = None
    for s in env.signatures:
        sig = _b64(s.sig, "a signature")
        # A keyid hint that names a trusted key is tried first; an unknown or empty
        # hint still gets every key, because keyids are hints, not authority (DSSE).
        order = [s.keyid] if s.keyid in keys else []
        order += [k for k in keys if k != s.keyid]
        for kid in order:
            try:
                keys[kid].verify(sig, message)
            except InvalidSignature:
                continue
            signer = kid
            break
        if signer:
            break
    if signer is None:
        raise UpgradeRejectedError(
            "no signature by a trusted key (tampered request, or signed by an unknown key)"
        )
    try:
        raw = json.loads(body)
        request = UpgradeRequest.model_validate(raw)
    except (ValidationError, ValueError) as e:
        raise UpgradeRejectedError(f"the signed payload is not an UpgradeRequest: {e}") from e
    if not isinstance(raw, dict):  # pragma: no cover - model_validate already refused
        raise UpgradeRejectedError("the signed payload is not a JSON object")
    return Verified(request, signer, raw)
