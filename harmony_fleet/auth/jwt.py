"""NATS JWTs: encode (signed with an nkey), decode (signature checked), and the claims we use.

A NATS JWT is `header.payload.signature`, each base64url without padding; the
header is `{"typ":"JWT","alg":"ed25519-nkey"}`, the signature an Ed25519
signature by the issuer (`iss`, an nkey) over `header.payload`. The claim field
names follow nats-io/jwt v2 (`authorization_request`, `authorization_response`,
`user`). No I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harmony_core import nkey
from harmony_core.permissions import Permissions

__all__ = [
    "AuthRequest",
    "JwtError",
    "StaleRequestError",
    "auth_response",
    "decode",
    "encode",
    "parse_auth_request",
    "user_jwt",
]

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
# The server's authorization requests are small; anything far larger is not one.
_MAX_JWT = 64 * 1024


class JwtError(ValueError):
    """Not a NATS JWT, or its signature does not verify."""


class StaleRequestError(JwtError):
    """An authorization request the server no longer waits for (it queued too long)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise JwtError("not base64url") from e


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def encode(claims: dict[str, Any], seed: str, *, now: float | None = None) -> str:
    """`claims` signed by `seed` (which becomes `iss`), with `iat` and a `jti` filled in."""
    c = dict(claims)
    c["iss"] = nkey.public_key(seed)
    c.setdefault("iat", int(now if now is not None else time.time()))
    c["jti"] = ""
    # nats-io/jwt's jti: a hash of the claims without it (base32, no padding).
    c["jti"] = base64.b32encode(hashlib.sha256(_json(c)).digest()).decode().rstrip("=")
    signing_input = f"{_b64(_json(_HEADER))}.{_b64(_json(c))}"
    sig = nkey.sign(seed, signing_input.encode())
    return f"{signing_input}.{_b64(sig)}"


def decode(
    token: str, *, before_verify: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """The claims of a JWT whose signature by its `iss` verifies; JwtError otherwise.

    `before_verify(claims)` may refuse it (raising JwtError) before the signature is
    checked, the costly part.
    """
    if len(token) > _MAX_JWT:
        raise JwtError("too large")
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise JwtError("not three dot-separated parts")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise JwtError("header or payload is not JSON") from e
    if not isinstance(header, dict) or header.get("alg") != _HEADER["alg"]:
        raise JwtError(f"unsupported header {header!r}")
    if not isinstance(claims, dict) or not isinstance(claims.get("iss"), str):
        raise JwtError("no issuer")
    if before_verify is not None:
        before_verify(claims)
    signing_input = f"{parts[0]}.{parts[1]}".encode()
    if not nkey.verify(claims["iss"], signing_input, _unb64(parts[2])):
        raise JwtError("signature does not verify")
    return claims


@dataclass(frozen=True)
class AuthRequest:
    """What the auth callout needs of one authorization request (nats-server → callout)."""

    server_id: str
    user_nkey: str
    nonce: str
    client_nkey: str | None
    client_sig: str | None
    auth_token: str | None
    client_host: str | None
    expires: int | None


def parse_auth_request(token: str, *, now: float | None = None) -> AuthRequest:
    """The request in the server's signed JWT; JwtError when it is not a valid one.

    It must be signed by the server it names (`iss` = `server_id.id`), and not expired.
    """
    t = now if now is not None else time.time()

    def fresh(claims: dict[str, Any]) -> None:
        exp = claims.get("exp")
        # `exp` is the server's deadline in whole seconds (issued at floor(t), t + its
        # auth timeout): one second past it, the server has surely given up on an answer.
        if isinstance(exp, int) and exp + 1 <= t:
            raise StaleRequestError("the server gave up on this request before it was answered")

    c = decode(token, before_verify=fresh)
    n = c.get("nats")
    if not isinstance(n, dict) or n.get("type") != "authorization_request":
        raise JwtError("not an authorization request")
    server = n.get("server_id") or {}
    server_id = server.get("id") if isinstance(server, dict) else None
    if not isinstance(server_id, str) or server_id != c["iss"]:
        raise JwtError("not signed by the server it names")
    exp = c.get("exp")
    opts = n.get("connect_opts") or {}
    info = n.get("client_info") or {}
    if not isinstance(opts, dict) or not isinstance(info, dict):
        raise JwtError("malformed connect_opts or client_info")

    def text(d: dict[str, Any], key: str) -> str | None:
        v = d.get(key)
        return v if isinstance(v, str) and v else None

    user_nkey = text(n, "user_nkey")
    if user_nkey is None:
        raise JwtError("no user_nkey")
    return AuthRequest(
        server_id=server_id,
        user_nkey=user_nkey,
        nonce=text(info, "nonce") or "",
        client_nkey=text(opts, "nkey"),
        client_sig=text(opts, "sig"),
        auth_token=text(opts, "auth_token"),
        client_host=text(info, "host"),
        expires=exp if isinstance(exp, int) else None,
    )


def user_jwt(
    seed: str,
    *,
    user_nkey: str,
    account: str,
    name: str,
    permissions: Permissions,
    expires_at: int,
    tags: list[str],
    now: float | None = None,
) -> str:
    """A user JWT for the server to admit the connection as `name` into `account`."""
    claims = {
        "sub": user_nkey,
        "aud": account,  # config mode: the account the user is placed in
        "name": name,
        "exp": expires_at,
        "nats": {
            **permissions.as_jwt(),
            "subs": -1,
            "data": -1,
            "payload": -1,
            "tags": tags,
            "type": "user",
            "version": 2,
        },
    }
    return encode(claims, seed, now=now)


def auth_response(
    seed: str,
    req: AuthRequest,
    *,
    user: str | None = None,
    error: str | None = None,
    now: float | None = None,
) -> bytes:
    """The callout's answer: a user JWT to admit, or an error to refuse (signed by the issuer)."""
    body: dict[str, Any] = {"type": "authorization_response", "version": 2}
    if user is not None:
        body["jwt"] = user
    else:
        body["error"] = error or "refused"
    claims = {"sub": req.user_nkey, "aud": req.server_id, "nats": body}
    return encode(claims, seed, now=now).encode()
