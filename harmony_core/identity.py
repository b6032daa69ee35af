"""The device's login claim (ADR-023 §3, §4): what the agent sends as the connect `auth_token`.

A device authenticates with its nkey (a signature over the server's nonce); the
`auth_token` beside it is this small JSON: who the device says it is, the
enrollment token while it has never been let in, and during a rotation the
proof that the old key hands over to the new one. Both sides use this module:
the agent writes the claim, the callout reads it. Pure.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "MAX_CLAIM_BYTES",
    "LoginClaim",
    "Rotation",
    "parse_claim",
    "rotation_statement",
]

# A connect's auth_token larger than this is refused unread (a real claim is ~300 bytes;
# nats-server itself refuses a CONNECT line past 4 KiB).
MAX_CLAIM_BYTES = 2048


class Rotation(BaseModel):
    """The old key's statement that the key this connect signs with replaces it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    old_key: str = Field(max_length=64, description="The public key (U…) being replaced.")
    sig: str = Field(
        max_length=128,
        description="The old key's signature over rotation_statement(new key, server nonce), "
        "base64url.",
    )


class LoginClaim(BaseModel):
    """The connect `auth_token` of a device (JSON, at most MAX_CLAIM_BYTES)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    v: int = Field(default=1, description="Version of this claim.")
    device_id: str = Field(max_length=63, description="The device_id the device claims.")
    token: str | None = Field(
        default=None, max_length=256, description="Enrollment token (until first let in)."
    )
    machine_id: str | None = Field(default=None, max_length=128)
    hostname: str | None = Field(default=None, max_length=255)
    arch: str | None = Field(default=None, max_length=32)
    agent_version: str | None = Field(default=None, max_length=64)
    rotation: Rotation | None = None


def parse_claim(text: str | None) -> LoginClaim:
    """The claim in an auth_token; ValueError saying what is wrong with it."""
    if not text:
        raise ValueError("no auth_token (a device sends its login claim there)")
    if len(text.encode()) > MAX_CLAIM_BYTES:
        raise ValueError(f"auth_token larger than {MAX_CLAIM_BYTES} bytes")
    try:
        return LoginClaim.model_validate_json(text)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "auth_token"
        raise ValueError(f"malformed auth_token ({where}: {first['msg']})") from None


def rotation_statement(new_key: str, nonce: str) -> bytes:
    """What the old key signs to hand over to `new_key` on a connect with server `nonce`.

    The nonce makes it good for that one connection: a copied statement is worthless.
    """
    return f"harmony-rotate-v1\n{new_key}\n{nonce}".encode()
