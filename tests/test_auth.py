"""Every credential kind of contract §2 against a real nats-server configured for it.

Each case: a nats-server that demands that credential, `harmony-fleet init`'s
layout created with the same credential (`Bus` + `ensure_layout`), then the
real `harmony-agent run` process, whose heartbeat must arrive in KV. Plus: a
wrong password (the agent keeps running, READY, and says why) and a server
list whose first server is down.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nkeys  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.config import NatsSection
from agent.health import read_health
from harmony_core.bus import Bus
from harmony_fleet.provision import ensure_layout
from tests.agentproc import AgentProcess, run_bus, write_config
from tests.natsserver import NatsServer, free_port, wait_for

DEV = "dev-auth"


# --- helpers ------------------------------------------------------------------


def _server(tmp: Path, conf: str, port: int | None = None) -> NatsServer:
    """A nats-server -js whose config file (auth, TLS, operator) is `conf`."""
    d = tmp / "nats"
    d.mkdir(parents=True, exist_ok=True)
    (d / "server.conf").write_text(conf)
    return NatsServer(d, port=port, extra=["-c", str(d / "server.conf")]).start()


def _agent_config(tmp: Path, servers: list[str], nats_keys: dict[str, str]) -> Path:
    """write_config's file with `nats_keys` added to its [nats] table."""
    cfg = write_config(tmp / "agent.toml", servers=servers, device_id=DEV)
    added = "".join(f"{k} = {json.dumps(v)}\n" for k, v in nats_keys.items())
    text = cfg.read_text()
    assert "[heartbeat]\n" in text
    cfg.write_text(text.replace("[heartbeat]\n", added + "[heartbeat]\n", 1))
    return cfg


def _nats(servers: list[str], nats_keys: dict[str, str]) -> NatsSection:
    return NatsSection.model_validate({"servers": servers, **nats_keys})


def _init(n: NatsSection) -> None:
    """`harmony-fleet init` with the same credentials."""
    done: list[str] = run_bus(n, lambda bus: ensure_layout(bus, n))
    assert any("created" in line for line in done), done


def _heartbeat(n: NatsSection) -> dict[str, Any] | None:
    async def get(bus: Bus) -> dict[str, Any] | None:
        e = await bus.kv_get(n.heartbeat_bucket, DEV)
        return None if e is None else dict(json.loads(e.value))

    result: dict[str, Any] | None = run_bus(n, get)
    return result


def _fleet(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`harmony-fleet -s URL ARGS...` (a separate process: a refused connect is its own)."""
    cmd = [sys.executable, "-m", "harmony_fleet.cli", "-s", url, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _secret(tmp: Path, name: str, text: str) -> str:
    p = tmp / name
    p.write_text(text + "\n")  # a trailing newline, as editors write it
    p.chmod(0o640)
    return str(p)


def _agent_heartbeats(tmp: Path, n: NatsSection, nats_keys: dict[str, str]) -> None:
    """init with `n`, run the real agent with the same keys, see its heartbeats in KV."""
    _init(n)
    agent = AgentProcess(_agent_config(tmp, list(n.servers), nats_keys))
    try:
        agent.wait_notify("READY", "1", timeout=10)
        wait_for(lambda: (_heartbeat(n) or {}).get("seq", 0) >= 2, 20, "two heartbeats in KV", 0.2)
        health = read_health(tmp / "run" / "health.json")
        assert health is not None and health.nats.state == "connected"
        assert health.last_heartbeat_ack_at is not None
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0, agent.stderr()


# --- JWTs for operator mode ------------------------------------------------------


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _keypair(prefix: int) -> Any:
    return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))


def _pub(kp: Any) -> str:
    return str(kp.public_key.decode())


def _jwt(issuer: Any, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A NATS JWT: header.claims.sig, base64url, signed (ed25519) by the issuer nkey."""
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": _pub(issuer),
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    digest = hashlib.new("sha512_256", json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = _b64(bytes(issuer.sign(f"{header}.{body}".encode())))
    return f"{header}.{body}.{sig}"


def _operator_setup(tmp: Path) -> tuple[str, str]:
    """(server config, creds file path): operator → account (JetStream on) → user."""
    op = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    acct = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user = _keypair(nkeys.PREFIX_BYTE_USER)
    op_jwt = _jwt(op, _pub(op), "op", {"type": "operator"})
    unlimited = {"subs": -1, "data": -1, "payload": -1}
    acct_jwt = _jwt(
        op,
        _pub(acct),
        "fleet",
        {
            "type": "account",
            "limits": {
                **unlimited,
                "imports": -1,
                "exports": -1,
                "wildcards": True,
                "conn": -1,
                "leaf": -1,
                "mem_storage": -1,
                "disk_storage": -1,
                "streams": -1,
                "consumer": -1,
            },
            "default_permissions": {"pub": {}, "sub": {}},
        },
    )
    user_jwt = _jwt(acct, _pub(user), "device", {"type": "user", "pub": {}, "sub": {}, **unlimited})
    # JetStream needs the server's system account (an account without JetStream).
    sys_acct = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    sys_jwt = _jwt(op, _pub(sys_acct), "SYS", {"type": "account"})
    creds = tmp / "device.creds"
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user.seed.decode()}\n"
        "------END USER NKEY SEED------\n"
    )
    creds.chmod(0o640)
    conf = (
        f'operator: "{op_jwt}"\n'
        "resolver: MEMORY\n"
        f"system_account: {_pub(sys_acct)}\n"
        f'resolver_preload: {{ {_pub(acct)}: "{acct_jwt}", {_pub(sys_acct)}: "{sys_jwt}" }}\n'
    )
    return conf, str(creds)


# --- TLS material ------------------------------------------------------------------


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return b.sign(issuer_key, hashes.SHA256())


def _tls_files(d: Path) -> dict[str, str]:
    """ca.pem, server.{pem,key}, client.{pem,key} under `d`; returns their paths."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("harmony test CA", ca_key, None, ca=True)
    out = {"ca": d / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"harmony {who}", key, (ca.subject, ca_key), server=who == "server")
        out[who] = d / f"{who}.pem"
        out[f"{who}_key"] = d / f"{who}.key"
        out[who].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{who}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        out[f"{who}_key"].chmod(0o600)  # the agent refuses a private key every user may read
    return {k: str(v) for k, v in out.items()}


# --- the credential kinds -------------------------------------------------------------


def test_user_and_password_file(tmp_path: Path) -> None:
    srv = _server(
        tmp_path, 'authorization { users = [ { user: "device", password: "pa55-w0rd" } ] }\n'
    )
    try:
        keys = {"user": "device", "password_file": _secret(tmp_path, "pw", "pa55-w0rd")}
        _agent_heartbeats(tmp_path, _nats([srv.url], keys), keys)
    finally:
        srv.stop()


def test_token_file(tmp_path: Path) -> None:
    srv = _server(tmp_path, 'authorization { token: "t0ken-of-the-fleet" }\n')
    try:
        keys = {"token_file": _secret(tmp_path, "token", "t0ken-of-the-fleet")}
        _agent_heartbeats(tmp_path, _nats([srv.url], keys), keys)
    finally:
        srv.stop()


def test_nkey_seed_file(tmp_path: Path) -> None:
    user = _keypair(nkeys.PREFIX_BYTE_USER)
    srv = _server(tmp_path, f'authorization {{ users = [ {{ nkey: "{_pub(user)}" }} ] }}\n')
    try:
        keys = {"nkey_seed_file": _secret(tmp_path, "device.nk", user.seed.decode())}
        _agent_heartbeats(tmp_path, _nats([srv.url], keys), keys)
    finally:
        srv.stop()


def test_creds_file_operator_mode_with_jetstream(tmp_path: Path) -> None:
    conf, creds = _operator_setup(tmp_path)
    srv = _server(tmp_path, conf)
    try:
        # Without credentials the operator-mode server refuses the operator CLI ...
        refused = _fleet(srv.url, "devices")
        assert refused.returncode == 69 and "authoriz" in refused.stderr.lower(), refused
        keys = {"creds_file": creds}
        _agent_heartbeats(tmp_path, _nats([srv.url], keys), keys)
        # ... and with them it sees the device.
        seen = _fleet(srv.url, "--creds", creds, "devices", "--json")
        assert seen.returncode == 0, seen.stderr
        assert DEV in seen.stdout
    finally:
        srv.stop()


def test_tls_with_client_certificate(tmp_path: Path) -> None:
    f = _tls_files(tmp_path / "tls")
    srv = _server(
        tmp_path,
        "tls {\n"
        f'  cert_file: "{f["server"]}"\n'
        f'  key_file: "{f["server_key"]}"\n'
        f'  ca_file: "{f["ca"]}"\n'
        "  verify: true\n"
        "}\n",
    )
    try:
        url = f"tls://127.0.0.1:{srv.port}"
        keys = {
            "tls_ca_file": f["ca"],
            "tls_cert_file": f["client"],
            "tls_key_file": f["client_key"],
        }
        # verify: true means no client certificate, no connection.
        refused = _fleet(url, "--tls-ca", f["ca"], "devices")
        assert refused.returncode == 69, refused
        assert "cannot connect" in refused.stderr, refused.stderr
        _agent_heartbeats(tmp_path, _nats([url], keys), keys)
    finally:
        srv.stop()


# --- failures the agent must live with ------------------------------------------------


def test_wrong_password_keeps_running_and_says_why(tmp_path: Path) -> None:
    srv = _server(
        tmp_path, 'authorization { users = [ { user: "device", password: "right-one" } ] }\n'
    )
    keys = {"user": "device", "password_file": _secret(tmp_path, "pw", "wrong-one")}
    agent = AgentProcess(_agent_config(tmp_path, [srv.url], keys))

    def refusals() -> int:
        return srv.log.read_text(errors="replace").count("authentication error")

    try:
        agent.wait_notify("READY", "1", timeout=10)
        wait_for(lambda: "authoriz" in agent.last_status().lower(), 15, "STATUS= naming it")
        # Several refused attempts later the agent still runs and still says why: the
        # socket reset that follows each refusal must not replace the reason.
        wait_for(lambda: refusals() >= 4, 30, "four refused connects")
        statuses = [m["STATUS"] for m in agent.notified("STATUS")]
        first = next(i for i, st in enumerate(statuses) if "authoriz" in st.lower())
        assert all("authoriz" in st.lower() for st in statuses[first:]), statuses
        assert not any("wrong-one" in st for st in statuses)
        out = subprocess.run(
            [sys.executable, "-m", "agent.cli", "-c", str(agent.config), "status"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert "authoriz" in out.stdout.lower(), out.stdout
        assert "connected to" not in out.stdout
        health = read_health(tmp_path / "run" / "health.json")
        assert health is not None and health.nats.state != "connected"
        assert health.last_heartbeat_ack_at is None
        assert agent.proc.poll() is None, agent.stderr()
        # The agent's own log (journald under systemd) names the refusal too, without the secret.
        log = agent.stderr()
        assert "authoriz" in log.lower() and "wrong-one" not in log
        assert "Traceback" not in log
    finally:
        assert agent.stop() == 0, agent.stderr()
        srv.stop()


def test_first_server_down_connects_to_the_second(tmp_path: Path, nats_js: NatsServer) -> None:
    down = f"nats://127.0.0.1:{free_port()}"
    n = _nats([nats_js.url], {})
    agent = AgentProcess(_agent_config(tmp_path, [down, nats_js.url], {}))
    try:
        agent.wait_notify("READY", "1", timeout=10)
        wait_for(
            lambda: (_heartbeat(n) or {}).get("seq", 0) >= 2, 20, "heartbeats via server 2", 0.2
        )
        health = read_health(tmp_path / "run" / "health.json")
        assert health is not None and health.nats.server == nats_js.url
    finally:
        assert agent.stop() == 0, agent.stderr()
