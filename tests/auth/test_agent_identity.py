"""The device side of identity without NATS: config, the key on disk, the login, status."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.config import check_files, parse_config
from agent.identity import DeviceLogin, KeyStore
from agent.identity.login import Facts
from agent.statusline import status_line, status_text
from harmony_core import nkey
from harmony_core.contracts import Health, NatsHealth
from harmony_core.errors import IdentityError
from harmony_core.identity import parse_claim, rotation_statement


def test_identity_section_defaults_and_when_the_own_key_is_used(tmp_path: Path) -> None:
    cfg = parse_config(f'[agent]\nstate_dir = "{tmp_path}"\n')
    assert cfg.key_dir == tmp_path / "identity" and cfg.uses_own_key
    assert cfg.identity.enroll_token_file is None
    for static in (
        'token_file = "/t"',
        'nkey_seed_file = "/k"',
        'creds_file = "/c"',
        'user = "u"\npassword_file = "/p"',
        'tls_cert_file = "/c"\ntls_key_file = "/k"',
    ):
        assert not parse_config(f"[nats]\n{static}\n").uses_own_key, static
    cfg = parse_config('[identity]\nkey_dir = "/k"\nenroll_token_file = "/t"\n')
    assert cfg.key_dir == Path("/k") and cfg.identity.enroll_token_file == Path("/t")
    with pytest.raises(Exception, match="absolute"):
        parse_config('[identity]\nkey_dir = "relative"\n')


def test_the_token_file_is_checked_like_a_credential(tmp_path: Path) -> None:
    token = tmp_path / "token"
    cfg = parse_config(f'[identity]\nenroll_token_file = "{token}"\n')
    assert any("does not exist" in p for p in check_files(cfg))
    token.write_text("hft1.x.y\n")
    token.chmod(0o644)
    assert any("readable by every user" in p for p in check_files(cfg))
    token.chmod(0o640)
    assert check_files(cfg) == []


def test_the_key_is_made_once_0600_in_0700(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "state" / "identity")
    assert store.seed() is None
    seed = store.ensure()
    assert store.ensure() == seed == store.seed()
    assert stat.S_IMODE(store.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.dir.stat().st_mode) == 0o700
    assert nkey.public_key(seed).startswith("U")


def test_a_foreign_key_file_is_refused_not_replaced(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    store.key.write_text("not a seed\n")
    with pytest.raises(IdentityError, match="not an nkey seed"):
        store.ensure()
    assert store.key.read_text() == "not a seed\n"
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    with pytest.raises(IdentityError):
        KeyStore(tmp_path)._read_seed(tmp_path / "link")  # never through a link


def test_rotation_files(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    old = store.ensure()
    new = store.begin_rotation()
    assert store.begin_rotation() == new != old  # asked again: the same new key
    assert store.seed() == old and store.next_seed() == new
    store.finish_rotation()
    assert store.seed() == new and store.next_seed() is None
    again = store.begin_rotation()
    store.abandon_rotation()
    assert store.seed() == new and store.next_seed() is None and again != new


def _login(tmp_path: Path, token: Path | None = None) -> tuple[DeviceLogin, KeyStore]:
    store = KeyStore(tmp_path / "id")
    store.ensure()
    return DeviceLogin(store, Facts("dev-1", "m1", "amd64", "1.0"), token), store


def test_the_claim_carries_the_token_until_the_key_was_let_in(tmp_path: Path) -> None:
    tf = tmp_path / "token"
    tf.write_text("hft1.abc.secret\n")
    login, store = _login(tmp_path, tf)
    attempt = login()
    claim = parse_claim(attempt.token("nonce") if attempt.token else None)
    assert (claim.device_id, claim.token, claim.machine_id) == ("dev-1", "hft1.abc.secret", "m1")
    assert attempt.outcome is not None
    attempt.outcome(None)
    assert store.admitted() == nkey.public_key(store.seed() or "")
    attempt = login()
    assert parse_claim(attempt.token("n2") if attempt.token else None).token is None


def _state(login: DeviceLogin) -> str | None:
    return login.state.state if login.state is not None else None


def test_refusals_say_pending_then_revoked(tmp_path: Path) -> None:
    tf = tmp_path / "token"
    tf.write_text("hft1.abc.secret\n")
    login, _ = _login(tmp_path, tf)
    a = login()
    assert a.outcome is not None
    a.outcome("nats: 'Authorization Violation'")
    assert _state(login) == "pending" and login.state is not None
    assert login.state.text.startswith("auth: pending approval (fingerprint ")
    a.outcome(None)
    assert _state(login) == "admitted"
    a.outcome("nats: 'Authorization Violation'")
    assert _state(login) == "revoked"
    nologin, _ = _login(tmp_path / "other")
    b = nologin()
    assert b.outcome is not None
    b.outcome("nats: 'Authorization Violation'")
    assert _state(nologin) == "no-token"


def test_a_pending_rotation_tries_the_new_key_with_the_old_ones_statement(tmp_path: Path) -> None:
    login, store = _login(tmp_path)
    old = store.seed() or ""
    new_pub = login.begin_rotation()
    first = login()
    assert nkey.public_key(first.seed) == new_pub
    claim = parse_claim(first.token("the-nonce") if first.token else None)
    assert claim.rotation is not None and claim.rotation.old_key == nkey.public_key(old)
    assert nkey.verify(
        claim.rotation.old_key,
        rotation_statement(new_pub, "the-nonce"),
        nkey.decode_sig(claim.rotation.sig),
    )
    assert first.outcome is not None
    first.outcome("nats: 'Authorization Violation'")  # not taken (yet)
    second = login()
    assert second.seed == old  # the old key's turn
    assert parse_claim(second.token("n") if second.token else None).rotation is None
    assert second.outcome is not None
    second.outcome(None)  # the fleet kept the old key: the new one is dropped
    assert store.next_seed() is None and store.seed() == old


def test_a_taken_rotation_makes_the_new_key_the_key(tmp_path: Path) -> None:
    login, store = _login(tmp_path)
    new_pub = login.begin_rotation()
    attempt = login()
    assert attempt.outcome is not None
    attempt.outcome(None)
    assert nkey.public_key(store.seed() or "") == new_pub and store.next_seed() is None


def _health(problems: list[str]) -> Health:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return Health(
        version="1",
        pid=1,
        device_id="d",
        started_at=now,
        updated_at=now,
        ready=True,
        nats=NatsHealth(state="disconnected", last_error="Authorization Violation"),
        problems=problems,
    )


def test_status_says_the_login_state_first() -> None:
    h = _health(["logs: x", "auth: pending approval (fingerprint aaaa:bbbb:cccc:dddd)"])
    assert status_line(h, h.updated_at).startswith("auth: pending approval (fingerprint aaaa")
    text = status_text(h, h.updated_at, running=True)
    assert "  auth:        pending approval (fingerprint aaaa:bbbb:cccc:dddd)" in text
    assert text.index("auth:") < text.index("nats:")
    assert "problem:     logs: x" in text


def test_identity_command(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\ndevice_id = "dev-9"\nstate_dir = "{tmp_path / "state"}"\n')

    def identity(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent.cli", "-c", str(cfg), "identity", *args],
            capture_output=True,
            text=True,
        )

    r = identity()
    assert r.returncode == 1 and "no key yet" in r.stderr  # it never makes the key itself
    assert not (tmp_path / "state" / "identity").exists()
    seed = KeyStore(tmp_path / "state" / "identity").ensure()
    out = json.loads(identity("--json").stdout)
    pub = nkey.public_key(seed)
    assert out["device_id"] == "dev-9" and out["public_key"] == pub
    assert out["fingerprint"] == nkey.fingerprint(pub) and out["in_use"] is True
    assert f"fingerprint: {nkey.fingerprint(pub)}" in identity().stdout
