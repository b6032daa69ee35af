"""admit(): the one verify-and-check pipeline both sides run, as a table. Pure: no I/O."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.upgrade.admission import RequestRefusedError, admit
from agent.upgrade.checks import CheckContext, DiskSpace
from harmony_core.contracts import UpgradeRequest
from harmony_core.envelope import MAX_ENVELOPE_BYTES, PAYLOAD_TYPE, keyid_of, pae
from harmony_core.errors import UpgradeRejectedError
from tests.upgrade.helpers import NOW, make_request, signed

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
KEYS = {keyid_of(KEY.public_key()): KEY.public_key()}
CTX = CheckContext(device_id="dev-1", arch="amd64", running_version="0.1.0", now=NOW)
DIGEST = "a" * 64  # make_request's artifact


def _sign_body(body: bytes, key: Ed25519PrivateKey = KEY) -> bytes:
    """An envelope around exactly `body` (to sign payloads the model would not produce)."""
    sig = key.sign(pae(PAYLOAD_TYPE, body))
    return json.dumps({
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(body).decode(),
        "signatures": [{"keyid": "", "sig": base64.b64encode(sig).decode()}],
    }).encode()


def _payload(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(make_request().model_dump_json())
    data.update(over)
    return data


def test_a_good_request_is_admitted() -> None:
    req = make_request()
    assert admit(signed(req, KEY), KEYS, CTX) == req


# (envelope, context, reason): refused before the signature verified, so no request is known.
UNVERIFIED: list[tuple[str, bytes, str]] = [
    ("too-large", b" " * (MAX_ENVELOPE_BYTES + 1), f"larger than {MAX_ENVELOPE_BYTES} bytes"),
    ("not-dsse", b"{not json", "not a DSSE envelope"),
    ("unknown-key", signed(make_request(), OTHER), "no signature by a trusted key"),
    ("not-a-request", _sign_body(b'{"hello": "world"}'), "not an UpgradeRequest"),
    ("wrong-payload-type",
     signed(make_request(), KEY).replace(b"agent-upgrade.v1+json", b"other+json"),
     "payload type"),
]


@pytest.mark.parametrize(("data", "reason"), [(d, r) for _, d, r in UNVERIFIED],
                         ids=[i for i, _, _ in UNVERIFIED])
def test_refused_before_the_signature_verified(data: bytes, reason: str) -> None:
    with pytest.raises(UpgradeRejectedError, match=reason) as e:
        admit(data, KEYS, CTX)
    assert not isinstance(e.value, RequestRefusedError)


def test_no_trusted_keys_refuses_everything() -> None:
    with pytest.raises(UpgradeRejectedError, match="no trusted keys"):
        admit(signed(make_request(), KEY), {}, CTX)


# (request fields, context, reason): the signature verified, a check refused it.
REFUSED: list[tuple[str, dict[str, Any], CheckContext, str]] = [
    ("other-device", {"device_id": "dev-2"}, CTX, "is for device 'dev-2'"),
    ("other-arch", {"arch": "arm64"}, CTX, "built for arm64, this device is amd64"),
    ("expired", {"expires_at": NOW - timedelta(seconds=1)}, CTX, "expired"),
    ("replayed", {}, replace(CTX, seen_request_ids={"req-1"}), r"already handled \(replay\)"),
    ("same-version", {"target_version": "0.1.0"}, CTX, "already running"),
    ("downgrade", {"target_version": "0.0.9"}, CTX, "older than the running 0.1.0"),
    ("rolled-back", {}, replace(CTX, rolled_back_digests={DIGEST}), "already rolled back"),
    ("disk", {}, replace(CTX, spool_disk=DiskSpace("/var/lib/x", 1, 0),
                         releases_disk=DiskSpace("/opt", 2, 10**12)),
     "not enough free disk on /var/lib/x"),
]


@pytest.mark.parametrize(("over", "ctx", "reason"), [(o, c, r) for _, o, c, r in REFUSED],
                         ids=[i for i, _, _, _ in REFUSED])
def test_refused_by_a_check_carries_the_request(
    over: dict[str, Any], ctx: CheckContext, reason: str
) -> None:
    req = make_request(**over)
    with pytest.raises(RequestRefusedError, match=reason) as e:
        admit(signed(req, KEY), KEYS, ctx)
    assert e.value.request == req
    assert isinstance(e.value, UpgradeRejectedError)


def test_retry_rolled_back_comes_from_the_signed_request() -> None:
    ctx = replace(CTX, rolled_back_digests={DIGEST})
    req = make_request(retry_rolled_back=True)
    assert admit(signed(req, KEY), KEYS, ctx).retry_rolled_back is True


def test_retry_rolled_back_absent_from_an_older_payload_means_no() -> None:
    body = _payload()
    del body["retry_rolled_back"]
    ctx = replace(CTX, rolled_back_digests={DIGEST})
    with pytest.raises(RequestRefusedError, match="already rolled back"):
        admit(_sign_body(json.dumps(body).encode()), KEYS, ctx)
    assert admit(_sign_body(json.dumps(body).encode()), KEYS, CTX).retry_rolled_back is False


def test_retry_rolled_back_added_after_signing_is_not_trusted() -> None:
    env = json.loads(signed(make_request(), KEY))
    body = json.loads(base64.b64decode(env["payload"]))
    body["retry_rolled_back"] = True
    env["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    ctx = replace(CTX, rolled_back_digests={DIGEST})
    with pytest.raises(UpgradeRejectedError, match="no signature by a trusted key"):
        admit(json.dumps(env).encode(), KEYS, ctx)


def test_fields_newer_than_the_model_are_ignored() -> None:
    body = json.dumps(_payload(some_future_field={"x": 1})).encode()
    req = admit(_sign_body(body), KEYS, CTX)
    assert isinstance(req, UpgradeRequest) and req.request_id == "req-1"


def _raw_window(literal: str) -> bytes:
    """A payload whose confirm_window_s is `literal`, which JSON proper cannot say."""
    rest = _payload()
    rest.pop("confirm_window_s", None)
    return f'{{"confirm_window_s": {literal}, '.encode() + json.dumps(rest)[1:].encode()


# Signed payloads with loose types: each must be a clean refusal, never an exception
# that escapes (a naive time used to raise TypeError in the expiry check, every retry).
_ISSUED = (NOW - timedelta(minutes=1)).replace(tzinfo=None).isoformat()
_EXPIRES = (NOW + timedelta(hours=1)).replace(tzinfo=None).isoformat()
LOOSE: list[tuple[str, bytes, str]] = [
    ("naive-issued_at", json.dumps(_payload(issued_at=_ISSUED)).encode(),
     "issued_at: .*timezone"),
    ("naive-expires_at", json.dumps(_payload(expires_at=_EXPIRES)).encode(),
     "expires_at: .*timezone"),
    ("window-infinity", _raw_window("Infinity"), "confirm_window_s: .*finite"),
    ("window-nan", _raw_window("NaN"), "confirm_window_s: .*finite"),
    ("window-huge", _raw_window("1e400"), "confirm_window_s: .*finite"),
    ("window-negative", json.dumps(_payload(confirm_window_s=-5)).encode(),
     "confirm_window_s: .*greater than 0"),
    ("window-zero", json.dumps(_payload(confirm_window_s=0)).encode(),
     "confirm_window_s: .*greater than 0"),
    ("window-over-a-day", json.dumps(_payload(confirm_window_s=86400.5)).encode(),
     "confirm_window_s: .*less than or equal to 86400"),
]


@pytest.mark.parametrize(("body", "reason"), [(b, r) for _, b, r in LOOSE],
                         ids=[i for i, _, _ in LOOSE])
def test_loose_types_in_the_signed_payload_are_refused_with_a_reason(
    body: bytes, reason: str
) -> None:
    with pytest.raises(UpgradeRejectedError, match=f"not an UpgradeRequest: {reason}") as e:
        admit(_sign_body(body), KEYS, CTX)
    assert "\n" not in str(e.value), "a reason is one line"


def test_an_offset_other_than_utc_is_a_time_like_any_other() -> None:
    issued = (NOW - timedelta(minutes=1)).astimezone(timezone(timedelta(hours=2))).isoformat()
    req = admit(_sign_body(json.dumps(_payload(issued_at=issued)).encode()), KEYS, CTX)
    assert req.issued_at == NOW - timedelta(minutes=1)


@pytest.mark.parametrize("window", [0.5, 300, 86400])
def test_a_confirm_window_up_to_a_day_is_admitted(window: float) -> None:
    req = make_request(confirm_window_s=window)
    assert admit(signed(req, KEY), KEYS, CTX).confirm_window_s == window


def test_refused_key_files_are_the_reason_when_no_key_is_left() -> None:
    problem = "trusted keys refused: /k is writable by group or others (mode 0777): chmod go-w /k"
    with pytest.raises(UpgradeRejectedError, match=r"no usable trusted key: trusted keys refused"):
        admit(signed(make_request(), KEY), {}, CTX, [problem])


def test_refused_key_files_are_named_when_no_trusted_key_signed() -> None:
    problem = "key skipped: /k/other.pub is writable by group or others"
    with pytest.raises(UpgradeRejectedError, match=r"no signature.*; refused keys: key skipped"):
        admit(signed(make_request(), OTHER), KEYS, CTX, [problem])
    assert admit(signed(make_request(), KEY), KEYS, CTX, [problem]) == make_request()
