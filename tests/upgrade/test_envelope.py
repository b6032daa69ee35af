"""DSSE envelope verification: table of good and bad envelopes."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harmony_core.envelope import PAYLOAD_TYPE, keyid_of, pae, verify_envelope
from harmony_core.errors import UpgradeRejectedError
from harmony_fleet.signing import sign_request
from tests.upgrade.helpers import make_request

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
TRUSTED = {keyid_of(KEY.public_key()): KEY.public_key()}


def _env(mutate: Callable[[dict[str, Any]], None] = lambda e: None,
         key: Ed25519PrivateKey = KEY) -> bytes:
    env = json.loads(sign_request(make_request(), key).model_dump_json())
    mutate(env)
    return json.dumps(env).encode()


def _tamper(env: dict[str, Any]) -> None:
    body = json.loads(base64.b64decode(env["payload"]))
    body["target_version"] = "9.9.9"
    env["payload"] = base64.b64encode(json.dumps(body).encode()).decode()


def _set(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def f(env: dict[str, Any]) -> None:
        env[field] = value
    return f


def _sig(value: str) -> Callable[[dict[str, Any]], None]:
    def f(env: dict[str, Any]) -> None:
        env["signatures"][0]["sig"] = value
    return f


def test_pae_matches_the_dsse_spec() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_good_envelope_verifies() -> None:
    v = verify_envelope(_env(), TRUSTED)
    assert v.request.request_id == "req-1"
    assert v.keyid == keyid_of(KEY.public_key())


def test_unknown_keyid_hint_still_verifies_with_a_trusted_key() -> None:
    def hint(env: dict[str, Any]) -> None:
        env["signatures"][0]["keyid"] = "whatever"
    assert verify_envelope(_env(hint), TRUSTED).request.request_id == "req-1"


@pytest.mark.parametrize(
    ("data", "keys", "reason"),
    [
        (_env(_tamper), TRUSTED, "no signature by a trusted key"),
        (_env(_set("payloadType", "application/json")), TRUSTED, "payload type"),
        (_env(key=OTHER), TRUSTED, "no signature by a trusted key"),
        (_env(), {}, "no trusted keys"),
        (_env(_sig("***not base64***")), TRUSTED, "not valid base64"),
        (_env(_set("payload", "%%%")), TRUSTED, "not valid base64"),
        (_env(_set("signatures", [])), TRUSTED, "no signature by a trusted key"),
        (b"{not json", TRUSTED, "not a DSSE envelope"),
        (b"x" * 70_000, TRUSTED, "larger than"),
    ],
    ids=["tampered-payload", "wrong-payload-type", "unknown-key", "no-keys", "bad-sig-base64",
         "bad-payload-base64", "no-signatures", "not-json", "too-large"],
)
def test_bad_envelopes_are_rejected_with_a_reason(
    data: bytes, keys: dict[str, Any], reason: str
) -> None:
    with pytest.raises(UpgradeRejectedError, match=reason):
        verify_envelope(data, keys)


def test_signed_payload_that_is_not_a_request_is_rejected() -> None:
    body = b'{"hello": "world"}'
    env = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(body).decode(),
        "signatures": [{"keyid": "", "sig": base64.b64encode(
            KEY.sign(pae(PAYLOAD_TYPE, body))).decode()}],
    }
    with pytest.raises(UpgradeRejectedError, match="not an UpgradeRequest"):
        verify_envelope(json.dumps(env).encode(), TRUSTED)
