"""The NATS connection settings both sides share (the agent's `[nats]`, `harmony-fleet`'s options).

Also the strict base model and the duration type every config section uses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from harmony_core.durations import parse_duration

__all__ = [
    "SECRET_IN_URL",
    "ConfigPath",
    "Duration",
    "NatsSection",
    "Section",
    "nats_pairing_problems",
]

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _duration(value: Any, info: ValidationInfo) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and not _from_toml(info):
        return float(value)  # from code (tests, the fleet CLI): seconds
    if not isinstance(value, str):
        raise ValueError('durations are strings: write it like "15s", "5m" or "1h"')
    return parse_duration(value)


def _from_toml(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("toml"))


Duration = Annotated[float, BeforeValidator(_duration)]


def _absolute_in_toml(value: Path, info: ValidationInfo) -> Path:
    # A daemon's working directory is /: a relative path in its config file names the
    # wrong file. From code (harmony-fleet --creds op.creds) relative paths are fine.
    if _from_toml(info) and not value.is_absolute():
        raise ValueError(
            "must be an absolute path (starting with /): the agent's working directory "
            "is /, not the config file's directory"
        )
    return value


ConfigPath = Annotated[Path, AfterValidator(_absolute_in_toml)]
"""A file or directory path; in a config file it must be absolute."""

# The error type of a server URL that carries credentials: shown without its value.
SECRET_IN_URL = "secret_in_url"
_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@]*@")


def _server_url(url: str, info: ValidationInfo) -> str:
    # Credentials in a URL end up in every log line that names the server: refuse them,
    # and never repeat them in the error.
    if _from_toml(info) and _USERINFO.match(url):
        raise PydanticCustomError(
            SECRET_IN_URL,
            "a server URL must not carry a user, password or token (it would be logged); "
            "write nats://host:port and set user + password_file, or token_file",
        )
    if not re.match(r"^(nats|tls|ws|wss)://[^/\s]+$", url):
        raise ValueError('not a NATS server URL; write it like "nats://host:4222"')
    return url


_ServerUrl = Annotated[str, AfterValidator(_server_url)]


class Section(BaseModel):
    """A config section: unknown keys are errors, values never change after load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NatsSection(Section):
    servers: list[_ServerUrl] = Field(
        default=["nats://127.0.0.1:4222"],
        min_length=1,
        description="NATS server URLs (nats:// or tls://); the agent tries them all.",
    )
    creds_file: ConfigPath | None = Field(
        default=None, description="A NATS .creds file (user JWT + nkey seed)."
    )
    nkey_seed_file: ConfigPath | None = Field(
        default=None, description="A file holding an nkey seed."
    )
    user: str | None = Field(default=None, description="User name; needs password_file.")
    password_file: ConfigPath | None = Field(
        default=None, description="A file holding the password for `user`."
    )
    token_file: ConfigPath | None = Field(default=None, description="A file holding a token.")
    tls_ca_file: ConfigPath | None = Field(
        default=None, description="PEM CA bundle to verify the servers with."
    )
    tls_cert_file: ConfigPath | None = Field(
        default=None, description="PEM client certificate (with tls_key_file)."
    )
    tls_key_file: ConfigPath | None = Field(default=None, description="PEM client key.")
    connect_timeout: Duration = Field(default=5.0, description="Timeout of one connect attempt.")
    reconnect_max_wait: Duration = Field(
        default=30.0,
        description="Cap of the jittered exponential backoff between reconnect attempts.",
    )
    device_info_bucket: str = Field(default="device-info", description="KV bucket of DeviceInfo.")
    heartbeat_bucket: str = Field(
        default="device-heartbeat", description="KV bucket of heartbeats."
    )
    logs_stream: str = Field(default="DEVICE_LOGS", description="Stream the journal lines go to.")
    logs_subject_prefix: str = Field(
        default="logs", description="Lines go to subject `<prefix>.<device_id>`."
    )
    upgrade_bucket: str = Field(
        default="agent-upgrade", description="KV bucket of signed upgrade requests."
    )
    upgrade_status_bucket: str = Field(
        default="agent-upgrade-status", description="KV bucket of upgrade status."
    )
    artifacts_bucket: str = Field(
        default="agent-artifacts", description="Object store of release artifacts."
    )

    @field_validator(
        "device_info_bucket",
        "heartbeat_bucket",
        "logs_stream",
        "upgrade_bucket",
        "upgrade_status_bucket",
        "artifacts_bucket",
        "logs_subject_prefix",
    )
    @classmethod
    def _names(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("a bucket, stream or subject name is A-Z a-z 0-9 '-' '_' only")
        return v

    @model_validator(mode="after")
    def _auth(self) -> NatsSection:
        problems = nats_pairing_problems(dict(self))
        if problems:
            raise ValueError("; ".join(msg for _, msg in problems))
        return self


_AUTH_KINDS = (("creds_file",), ("nkey_seed_file",), ("user", "password_file"), ("token_file",))


def nats_pairing_problems(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, problem) for each cross-field rule of `[nats]` these values break. Pure.

    A key counts as set when present and not None (and `user` when not empty), whether or
    not its value is valid: the config check runs this on the raw TOML too, so these
    problems are reported together with the field errors, not after they are fixed.
    """

    def on(key: str) -> bool:
        v = values.get(key)
        return bool(v) if key == "user" else v is not None

    out: list[tuple[str, str]] = []
    kinds = [" + ".join(k) for k in _AUTH_KINDS if any(on(x) for x in k)]
    if len(kinds) > 1:
        last = next(x for x in reversed(_AUTH_KINDS) if any(on(k) for k in x))
        key = next(k for k in last if on(k))
        out.append((key, f"set only one way to authenticate, not {' and '.join(kinds)}"))
    for a, b in (("user", "password_file"), ("tls_cert_file", "tls_key_file")):
        if on(a) != on(b):
            have, lack = (a, b) if on(a) else (b, a)
            out.append((have, f"{a} and {b} go together; set {lack} too, or neither"))
    return out
