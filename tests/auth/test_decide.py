"""The callout's decision, table-driven (pure: no NATS)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from harmony_core import nkey
from harmony_core.identity import LoginClaim, Rotation, rotation_statement
from harmony_fleet.auth.decide import Decision, Facts, decide
from harmony_fleet.auth.registry import (
    Binding,
    KeyRecord,
    TokenRecord,
    Versioned,
    binding_key,
    hash_secret,
    key_key,
    token_key,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SEED = nkey.new_seed()
PUB = nkey.public_key(SEED)
OTHER = nkey.public_key(nkey.new_seed())
TOKEN_ID = "0a1b2c3d4e"
SECRET = "s3cret"
TOKEN = f"hft1.{TOKEN_ID}.{SECRET}"
NONCE = "n0nce"


def _token(**kw: object) -> Versioned[TokenRecord]:
    rec = TokenRecord(
        token_id=TOKEN_ID,
        sha256=hash_secret(SECRET),
        created_at=NOW,
        expires_at=NOW + timedelta(hours=1),
        max_uses=1,
    )
    return Versioned(rec.model_copy(update=kw), 7)


def _key(status: str = "approved", pub: str = PUB, device: str = "dev1") -> Versioned[KeyRecord]:
    return Versioned(
        KeyRecord(
            public_key=pub,
            fingerprint=nkey.fingerprint(pub),
            device_id=device,
            status=status,  # type: ignore[arg-type]
            created_at=NOW,
            updated_at=NOW,
        ),
        3,
    )


def _binding(pub: str = PUB, rotate_until: datetime | None = None) -> Versioned[Binding]:
    return Versioned(
        Binding(device_id="dev1", public_key=pub, rotate_until=rotate_until, updated_at=NOW), 5
    )


def _facts(**kw: object) -> Facts:
    base = Facts(
        public_key=PUB,
        nonce=NONCE,
        sig_ok=True,
        claim=LoginClaim(device_id="dev1", token=TOKEN),
        claim_problem=None,
        now=NOW,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def _written(d: Decision) -> dict[str, tuple[str, int | None]]:
    return {w.key: (getattr(w.record, "status", type(w.record).__name__), w.last) for w in d.writes}


CASES: list[tuple[str, Facts, bool, str]] = [
    ("forged signature", _facts(sig_ok=False), False, "auth-bad-signature"),
    (
        "malformed claim",
        _facts(claim=None, claim_problem="malformed auth_token"),
        False,
        "auth-bad-claim",
    ),
    ("approved key", _facts(key=_key(), binding=_binding()), True, "auth-admitted"),
    ("pending key", _facts(key=_key("pending"), binding=None), False, "auth-pending"),
    ("denied key", _facts(key=_key("denied")), False, "auth-denied"),
    ("revoked key", _facts(key=_key("revoked"), binding=_binding()), False, "auth-revoked"),
    ("rotated key", _facts(key=_key("rotated"), binding=_binding(OTHER)), False, "auth-revoked"),
    (
        "approved key claiming another id",
        _facts(key=_key(), binding=_binding(), claim=LoginClaim(device_id="dev2")),
        False,
        "auth-wrong-device",
    ),
    (
        "approved key, device bound elsewhere",
        _facts(key=_key(), binding=_binding(OTHER), claim=LoginClaim(device_id="dev1")),
        False,
        "auth-replaced",
    ),
    (
        "unknown key, no token",
        _facts(claim=LoginClaim(device_id="dev1")),
        False,
        "auth-unknown-key",
    ),
    (
        "token of another format",
        _facts(claim=LoginClaim(device_id="dev1", token="abc")),
        False,
        "auth-bad-token",
    ),
    ("token of another fleet", _facts(token=None), False, "auth-bad-token"),
    (
        "wrong secret",
        _facts(claim=LoginClaim(device_id="dev1", token=f"hft1.{TOKEN_ID}.x"), token=_token()),
        False,
        "auth-bad-token",
    ),
    ("revoked token", _facts(token=_token(revoked=True)), False, "auth-bad-token"),
    ("expired token", _facts(token=_token(expires_at=NOW)), False, "auth-bad-token"),
    ("used-up token", _facts(token=_token(uses=1)), False, "auth-bad-token"),
    (
        "invalid device id",
        _facts(claim=LoginClaim(device_id="Not_A_Label", token=TOKEN), token=_token()),
        False,
        "auth-bad-claim",
    ),
    ("manual token", _facts(token=_token()), False, "auth-pending"),
    ("auto-approve token", _facts(token=_token(auto_approve=True)), True, "auth-enrolled"),
    (
        "reusable token",
        _facts(token=_token(max_uses=None, uses=50, auto_approve=True)),
        True,
        "auth-enrolled",
    ),
    (
        "auto-approve, device id taken",
        _facts(token=_token(auto_approve=True), binding=_binding(OTHER)),
        False,
        "auth-pending",
    ),
]


@pytest.mark.parametrize(("name", "facts", "allow", "event"), CASES, ids=[c[0] for c in CASES])
def test_decisions(name: str, facts: Facts, allow: bool, event: str) -> None:
    d = decide(facts)
    assert (d.allow, d.event) == (allow, event), d.reason
    assert d.reason


def test_refusals_write_nothing_but_enrollment_records() -> None:
    for name, facts, _, event in CASES:
        d = decide(facts)
        if event not in ("auth-pending", "auth-enrolled") or facts.key is not None:
            assert d.writes == (), name


def test_auto_approve_writes_token_use_then_key_then_binding() -> None:
    d = decide(_facts(token=_token(auto_approve=True)))
    assert [w.key for w in d.writes] == [token_key(TOKEN_ID), key_key(PUB), binding_key("dev1")]
    assert _written(d) == {
        token_key(TOKEN_ID): ("TokenRecord", 7),
        key_key(PUB): ("approved", None),
        binding_key("dev1"): ("Binding", None),
    }
    assert d.writes[0].record.uses == 1  # type: ignore[union-attr]


def test_a_second_device_claiming_a_bound_id_waits_and_touches_nothing_of_the_first() -> None:
    d = decide(_facts(token=_token(auto_approve=True), binding=_binding(OTHER)))
    assert not d.allow
    assert set(_written(d)) == {token_key(TOKEN_ID), key_key(PUB)}  # no binding, no other key
    assert _written(d)[key_key(PUB)] == ("pending", None)


def test_binding_lost_in_a_crash_is_restored() -> None:
    d = decide(_facts(key=_key(), binding=None, claim=LoginClaim(device_id="dev1")))
    assert d.allow and _written(d) == {binding_key("dev1"): ("Binding", None)}


# --- rotation ---------------------------------------------------------------------------

OLD_SEED = nkey.new_seed()
OLD = nkey.public_key(OLD_SEED)


def _rotation(nonce: str = NONCE, signer: str = OLD_SEED, old: str = OLD) -> LoginClaim:
    sig = nkey.sign(signer, rotation_statement(PUB, nonce))
    return LoginClaim(device_id="dev1", rotation=Rotation(old_key=old, sig=nkey.encode_sig(sig)))


def _rot_facts(**kw: object) -> Facts:
    base = _facts(
        claim=_rotation(),
        old_key=_key(pub=OLD),
        binding=_binding(OLD, rotate_until=NOW + timedelta(minutes=5)),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_rotation_hands_the_binding_over_new_key_first_old_key_last() -> None:
    d = decide(_rot_facts())
    assert d.allow and d.event == "auth-rotated"
    assert [w.key for w in d.writes] == [key_key(PUB), binding_key("dev1"), key_key(OLD)]
    assert _written(d) == {
        key_key(PUB): ("approved", None),
        binding_key("dev1"): ("Binding", 5),
        key_key(OLD): ("rotated", 3),
    }


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("not asked for", {"binding": _binding(OLD)}),
        ("window passed", {"binding": _binding(OLD, rotate_until=NOW)}),
        ("statement for another nonce", {"claim": _rotation(nonce="other")}),
        ("statement by another key", {"claim": _rotation(signer=nkey.new_seed())}),
        ("old key not the bound one", {"binding": _binding(OTHER, NOW + timedelta(minutes=5))}),
        ("old key revoked", {"old_key": _key("revoked", pub=OLD)}),
    ],
)
def test_rotation_refused(name: str, kw: dict[str, object]) -> None:
    d = decide(_rot_facts(**kw))
    assert not d.allow and d.event == "auth-rotation-refused", d.reason
    assert d.writes == ()


def test_rotation_interrupted_after_the_new_key_was_written_is_finished() -> None:
    d = decide(_rot_facts(key=_key(pub=PUB)))  # new key approved, binding still old
    assert d.allow and d.event == "auth-rotated"
    assert d.writes[0].last == 3  # over the record the crash left


def test_rotation_done_before_a_crash_lets_the_new_key_in() -> None:
    d = decide(_rot_facts(key=_key(pub=PUB), binding=_binding(PUB)))
    assert d.allow and d.event == "auth-admitted" and d.writes == ()
