"""The pure pieces of device identity: nkeys, NATS JWTs, the permission set and its contract,
the login claim, `auth init`'s files."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from harmony_core import nkey
from harmony_core.identity import MAX_CLAIM_BYTES, LoginClaim, parse_claim
from harmony_core.permissions import (
    PERMISSIONS_FILE,
    device_permissions,
    inbox_prefix,
    render_permissions,
)
from harmony_core.settings import NatsSection
from harmony_fleet.auth.jwt import (
    JwtError,
    StaleRequestError,
    decode,
    encode,
    parse_auth_request,
)
from harmony_fleet.auth.setup import init_auth_dir

ROOT = Path(__file__).resolve().parent.parent.parent


# --- nkeys ------------------------------------------------------------------------------


def test_nkey_sign_verify_and_what_is_refused() -> None:
    seed = nkey.new_seed()
    pub = nkey.public_key(seed)
    assert pub.startswith("U") and nkey.is_public_key(pub)
    sig = nkey.sign(seed, b"nonce")
    assert nkey.verify(pub, b"nonce", sig)
    assert not nkey.verify(pub, b"other", sig)
    assert not nkey.verify(nkey.public_key(nkey.new_seed()), b"nonce", sig)
    assert not nkey.verify(pub[:-1] + ("A" if pub[-1] != "A" else "B"), b"nonce", sig)  # crc
    assert not nkey.verify("not-a-key", b"nonce", sig)
    # clients send either base64 flavour
    assert nkey.decode_sig(base64.b64encode(sig).decode()) == sig
    assert nkey.decode_sig(nkey.encode_sig(sig)) == sig
    account = nkey.public_key(nkey.new_seed("account"))
    assert account.startswith("A") and not nkey.is_public_key(account, "user")
    assert len(nkey.fingerprint(pub)) == 19


# --- JWTs -------------------------------------------------------------------------------


def test_jwt_roundtrip_and_tampering() -> None:
    seed = nkey.new_seed("account")
    token = encode({"sub": "x", "nats": {"type": "user"}}, seed)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"typ": "JWT", "alg": "ed25519-nkey"}
    assert "=" not in token
    claims = decode(token)
    assert claims["iss"] == nkey.public_key(seed) and claims["jti"]
    h, _, s = token.split(".")
    forged = encode({"sub": "y", "nats": {"type": "user"}}, seed).split(".")[1]
    with pytest.raises(JwtError):
        decode(f"{h}.{forged}.{s}")
    with pytest.raises(JwtError):
        decode("a.b")


def test_an_authorization_request_must_be_signed_by_its_server() -> None:
    server = nkey.new_seed("account")  # any key: what matters is iss == server_id.id
    body = {
        "nats": {
            "type": "authorization_request",
            "user_nkey": "UX",
            "server_id": {"id": nkey.public_key(server)},
            "client_info": {"nonce": "abc"},
            "connect_opts": {"nkey": "UK", "sig": "s", "auth_token": "t"},
        }
    }
    req = parse_auth_request(encode(body, server))
    assert (req.nonce, req.client_nkey, req.auth_token) == ("abc", "UK", "t")
    timed = encode({**body, "exp": 1000}, server)
    assert parse_auth_request(timed, now=1000.5).nonce == "abc"  # the server may still wait
    with pytest.raises(StaleRequestError):
        parse_auth_request(timed, now=1001.0)  # it surely gave up: not worth deciding
    other = {**body, "nats": {**body["nats"], "server_id": {"id": "NOTHER"}}}
    with pytest.raises(JwtError):
        parse_auth_request(encode(other, server))


# --- permissions --------------------------------------------------------------------------


def test_device_permissions_contract_is_current() -> None:
    have = (ROOT / "contracts" / PERMISSIONS_FILE).read_text()
    assert have == render_permissions(), (
        "contracts/device-permissions.json is stale: run `make schemas`"
    )


def test_every_subject_is_the_device_own_and_nothing_of_the_management_api() -> None:
    perms = device_permissions("dev-7", NatsSection())
    for subject in perms.publish:
        if subject.startswith("$JS.API.DIRECT.GET.OBJ_"):
            continue  # the artifact store: read-only, the same for every device
        assert subject.endswith(".dev-7"), subject
    assert perms.subscribe == (f"{inbox_prefix('dev-7')}.>",)
    text = " ".join(perms.publish + perms.subscribe)
    for never in (
        "_INBOX.>",
        "STREAM.MSG.GET",
        "STREAM.CREATE",
        "STREAM.DELETE",
        "STREAM.PURGE",
        "STREAM.UPDATE",
        "CONSUMER.DELETE",
        "device-identity",
        "$O.",
        ">.",
        " >",
    ):
        assert never not in text, never
    assert not any(s in ("$JS.API.>", ">") for s in perms.publish)


def test_bucket_names_come_from_the_fleet_settings() -> None:
    perms = device_permissions("d", NatsSection(heartbeat_bucket="beats", logs_subject_prefix="l"))
    assert "$KV.beats.d" in perms.publish and "l.d" in perms.publish


# --- the login claim ------------------------------------------------------------------------


def test_claims_malformed_or_oversized_are_refused_with_a_reason() -> None:
    ok = LoginClaim(device_id="d", token="t").model_dump_json()
    assert parse_claim(ok).device_id == "d"
    for bad in (
        None,
        "",
        "{",
        "[]",
        '{"token":"x"}',
        '{"device_id": 5}',
        "x" * (MAX_CLAIM_BYTES + 1),
    ):
        with pytest.raises(ValueError):
            parse_claim(bad)


# --- auth init --------------------------------------------------------------------------------


def test_auth_init_makes_secrets_0600_and_never_regenerates_a_key(tmp_path: Path) -> None:
    d = tmp_path / "auth"
    first = init_auth_dir(d, ["nats://127.0.0.1:4222"])
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    seeds = {
        n: (d / n).read_text() for n in ("issuer.nk", "callout.nk", "operator.nk", "system.nk")
    }
    for name in seeds:
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
    conf = (d / "nats-auth.conf").read_text()
    assert "auth_callout" in conf and "system_account: SYS" in conf
    assert nkey.public_key(seeds["issuer.nk"]) in conf
    for seed in seeds.values():
        assert seed.strip() not in conf  # only public keys
    (d / "authd.toml").write_text((d / "authd.toml").read_text() + "# mine\n")
    second = init_auth_dir(d, ["nats://other:4222"])
    assert {n: (d / n).read_text() for n in seeds} == seeds
    assert (d / "nats-auth.conf").read_text() == conf
    assert (d / "authd.toml").read_text().endswith("# mine\n")
    assert all("created" in line or "written" in line for line in first.lines)
    assert all("exists" in line for line in second.lines)
