"""Signing upgrade requests as DSSE envelopes (operator side); `harmony_core.envelope` verifies."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from harmony_core.contracts import DsseEnvelope, DsseSignature, UpgradeRequest
from harmony_core.envelope import PAYLOAD_TYPE, keyid_of, pae

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["sign_request"]


def sign_request(
    request: UpgradeRequest, key: Ed25519PrivateKey, extra: Mapping[str, Any] | None = None
) -> DsseEnvelope:
    """The DSSE envelope of `request` signed by `key` (operator side).

    `extra` adds payload fields newer than the model (e.g. `retry_rolled_back`).
    """
    body = request.model_dump_json(exclude_none=True).encode()
    if extra:
        body = json.dumps({**json.loads(body), **extra}, separators=(",", ":")).encode()
    sig = key.sign(pae(PAYLOAD_TYPE, body))
    return DsseEnvelope(
        payloadType=PAYLOAD_TYPE,
        payload=base64.b64encode(body).decode(),
        signatures=[
            DsseSignature(keyid=keyid_of(key.public_key()), sig=base64.b64encode(sig).decode())
        ],
    )
