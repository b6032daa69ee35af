"""The NATS connection settings both sides share (the agent's `[nats]`, `harmony-fleet`'s options).

Also the strict base model and the duration type every config section uses.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from harmony_core.durations import parse_duration

__all__ = ["Duration", "NatsSection", "Section"]

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


class Section(BaseModel):
    """A config section: unknown keys are errors, values never change after load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NatsSection(Section):
    servers: list[str] = Field(
        default=["nats://127.0.0.1:4222"],
        min_length=1,
        description="NATS server URLs (nats:// or tls://); the agent tries them all.",
    )
    creds_file: Path | None = Field(
        default=None, description="A NATS .creds file (user JWT + nkey seed)."
    )
    nkey_seed_file: Path | None = Field(default=None, description="A file holding an nkey seed.")
    user: str | None = Field(default=None, description="User name; needs password_file.")
    password_file: Path | None = Field(
        default=None, description="A file holding the password for `user`."
    )
    token_file: Path | None = Field(default=None, description="A file holding a token.")
    tls_ca_file: Path | None = Field(
        default=None, description="PEM CA bundle to verify the servers with."
    )
    tls_cert_file: Path | None = Field(
        default=None, description="PEM client certificate (with tls_key_file)."
    )
    tls_key_file: Path | None = Field(default=None, description="PEM client key.")
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

    @field_validator("servers")
    @classmethod
    def _servers(cls, v: list[str]) -> list[str]:
        for url in v:
            if not re.match(r"^(nats|tls|ws|wss)://[^/\s]+$", url):
                raise ValueError(
                    f'{url!r} is not a NATS server URL; write it like "nats://host:4222"'
                )
        return v

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
        kinds = [
            k
            for k, on in (
                ("creds_file", self.creds_file),
                ("nkey_seed_file", self.nkey_seed_file),
                ("user", self.user or self.password_file),
                ("token_file", self.token_file),
            )
            if on
        ]
        if len(kinds) > 1:
            raise ValueError(f"set only one way to authenticate, not {' and '.join(kinds)}")
        if bool(self.user) != bool(self.password_file):
            raise ValueError("user and password_file go together; set both or neither")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together; set both or neither")
        return self
