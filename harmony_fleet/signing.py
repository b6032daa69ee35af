"""Signing DSSE envelopes (operator side): upgrade requests, release manifests.

`harmony_core.envelope` verifies; the signature covers PAE(payloadType, payload),
so each kind of signed document carries its own payload type.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from harmony_core.contracts import DsseEnvelope, DsseSignature, UpgradeRequest
from harmony_core.envelope import PAYLOAD_TYPE, keyid_of, pae

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["sign_payload", "sign_request"]


def sign_payload(body: bytes, payload_type: str, key: Ed25519PrivateKey) -> DsseEnvelope:
    """The DSSE envelope of exactly `body`, of `payload_type`, signed by `key`."""
    sig = key.sign(pae(payload_type, body))
    return DsseEnvelope(
        payloadType=payload_type,
        payload=base64.b64encode(body).decode(),
        signatures=[
            DsseSignature(keyid=keyid_of(key.public_key()), sig=base64.b64encode(sig).decode())
        ],
    )


def sign_request(
    request: UpgradeRequest, key: Ed25519PrivateKey, extra: Mapping[str, Any] | None = None
) -> DsseEnvelope:
    """The DSSE envelope of `request` signed by `key` (operator side).

    `extra` adds payload fields newer than the model (e.g. `retry_rolled_back`).
    """
    body = request.model_dump_json(exclude_none=True).encode()
    if extra:
        body = json.dumps({**json.loads(body), **extra}, separators=(",", ":")).encode()
    return sign_payload(body, PAYLOAD_TYPE, key)
