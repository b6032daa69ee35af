"""DSSE envelope verification: table of good and bad envelopes."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from harmony_core.envelope import (
    MAX_SIGNATURES,
    PAYLOAD_TYPE,
    keyid_of,
    pae,
    verify_envelope,
)
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


# --- what one envelope may cost ------------------------------------------------------


class Counting:
    """A trusted key that counts the verifications asked of it."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self.key = key
        self.calls = 0

    def verify(self, signature: bytes, data: bytes) -> None:
        self.calls += 1
        self.key.verify(signature, data)


def _counting(*keys: Ed25519PrivateKey) -> dict[str, Counting]:
    return {keyid_of(k.public_key()): Counting(k.public_key()) for k in keys}


def _with_signatures(sigs: list[dict[str, str]], key: Ed25519PrivateKey = KEY) -> bytes:
    def f(env: dict[str, Any]) -> None:
        env["signatures"] = sigs + env["signatures"]
    return _env(f, key)


def _fake(keyid: str = "") -> dict[str, str]:
    return {"keyid": keyid, "sig": base64.b64encode(bytes(64)).decode()}


def test_a_thousand_signatures_are_refused_before_any_verification() -> None:
    keys = _counting(KEY, OTHER)
    # Short signatures keep 1,000 of them under the size limit.
    data = _with_signatures([{"sig": "AAAA"}] * 999)
    with pytest.raises(UpgradeRejectedError, match="1000 signatures"):
        verify_envelope(data, keys)
    assert [k.calls for k in keys.values()] == [0, 0]


def test_one_signature_over_the_cap_is_refused_before_any_verification() -> None:
    keys = _counting(KEY)
    data = _with_signatures([_fake()] * MAX_SIGNATURES)  # and the good one: one too many
    with pytest.raises(UpgradeRejectedError, match=f"at most {MAX_SIGNATURES}"):
        verify_envelope(data, keys)
    assert [k.calls for k in keys.values()] == [0]


def test_unknown_keyids_try_every_key_but_the_cap_bounds_the_work() -> None:
    keys = _counting(KEY, OTHER, Ed25519PrivateKey.generate())
    data = _with_signatures([_fake("unknown")] * (MAX_SIGNATURES - 1))
    assert verify_envelope(data, keys).keyid == keyid_of(KEY.public_key())
    # Three fakes against every key, then the good one (hinted) against its own key.
    assert sum(k.calls for k in keys.values()) == (MAX_SIGNATURES - 1) * len(keys) + 1


def test_a_keyid_naming_a_trusted_key_is_verified_against_that_key_only() -> None:
    keys = _counting(KEY, OTHER)
    other_id = keyid_of(OTHER.public_key())

    def claim_other(env: dict[str, Any]) -> None:
        env["signatures"][0]["keyid"] = other_id

    with pytest.raises(UpgradeRejectedError, match="no signature by a trusted key"):
        verify_envelope(_env(claim_other), keys)  # signed by KEY, which is trusted too
    assert keys[other_id].calls == 1
    assert keys[keyid_of(KEY.public_key())].calls == 0


def test_a_signature_that_is_not_64_bytes_costs_no_verification() -> None:
    keys = _counting(KEY)
    data = _with_signatures([{"keyid": "", "sig": "AAAA"}])
    assert verify_envelope(data, keys).keyid == keyid_of(KEY.public_key())
    assert [k.calls for k in keys.values()] == [1]
