"""The agent's TOML configuration (contract §2), validated strictly.

Unknown keys are errors, every problem is reported at once with its TOML path
and the bad value, durations are strings. Each option is documented once, here,
in its `Field(description=...)`; `agent.example.toml` is generated from these
models (`python -m agent.config_doc`) and a test keeps it current.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
)

from agent.permissions import unsafe_file
from harmony_core.errors import ConfigError
from harmony_core.journal_names import priority_of
from harmony_core.labels import DNS1123_LABEL, RESERVED_LABEL_PREFIX, label_problems
from harmony_core.settings import (
    SECRET_IN_URL,
    ConfigPath,
    Duration,
    NatsSection,
    Section,
    nats_pairing_problems,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "RESERVED_LABEL_PREFIX",
    "AgentSection",
    "Config",
    "HeartbeatSection",
    "IdentitySection",
    "LogsSection",
    "NatsSection",
    "UpgradeSection",
    "check_files",
    "config_path_from_env",
    "label_problems",
    "load_config",
    "parse_config",
]

DEFAULT_CONFIG_PATH = Path("/etc/harmony-agent/agent.toml")


def _priority(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a priority is a name (emerg ... debug) or a number 0-7")
    if isinstance(value, int) and 0 <= value <= 7:
        return value
    if isinstance(value, str) and (prio := priority_of(value)) is not None:
        return prio
    raise ValueError(
        "a priority is one of emerg, alert, crit, err, warning, notice, info, debug, or 0-7"
    )


_Priority = Annotated[int, BeforeValidator(_priority)]


class AgentSection(Section):
    device_id: str | None = Field(
        default=None,
        description=(
            "The device's name in the fleet, a DNS-1123 label (lowercase letters, digits "
            "and '-', at most 63). Unset: the contents of /etc/machine-id."
        ),
        json_schema_extra={"example": "edge-berlin-17"},
    )
    state_dir: ConfigPath = Field(
        default=Path("/var/lib/harmony-agent"),
        description="The agent's own state: journal cursor, download spool, seen request ids.",
    )
    health_file: ConfigPath = Field(
        default=Path("/run/harmony-agent/health.json"),
        description=(
            "The local health file (version, NATS state, last acknowledged heartbeat) "
            "that `harmony-agent status` and the upgrade watcher read."
        ),
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="The least severe of the agent's own lines that it logs."
    )

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, v: str | None) -> str | None:
        if v is not None and not DNS1123_LABEL.match(v):
            raise ValueError(
                "a device_id is a DNS-1123 label: 1-63 of a-z 0-9 '-', "
                "starting and ending with a letter or digit"
            )
        return v


class HeartbeatSection(Section):
    interval: Duration = Field(
        default=15.0,
        description="How often a heartbeat is written (jittered by ±10 %).",
    )

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: float) -> float:
        if not 0.5 <= v <= 3600:
            raise ValueError("the heartbeat interval must be between 500ms and 1h")
        return v


class LogsSection(Section):
    enabled: bool = Field(default=True, description="Ship journal lines to NATS.")
    units: list[str] = Field(
        default=[], description="Only these systemd units (like `journalctl -u`); [] = all."
    )
    identifiers: list[str] = Field(
        default=[], description="Only these syslog identifiers (like `journalctl -t`); [] = all."
    )
    max_priority: _Priority = Field(
        default=6,
        description="The least severe priority shipped (like `journalctl -p`): a name or 0-7.",
        json_schema_extra={"toml_default": '"info"'},
    )
    start_at: Literal["now", "boot", "all"] = Field(
        default="now",
        description="Where to begin when no cursor is saved yet: now, boot or all.",
    )
    batch_max_lines: int = Field(default=1000, ge=1, le=100_000, description="Lines per batch.")
    batch_max_bytes: int = Field(
        default=512 * 1024,
        ge=1024,
        le=900 * 1024,
        description="Bytes per batch (stay under the server's max_payload).",
    )
    batch_max_wait: Duration = Field(
        default=0.2, description="How long a partly full batch may wait before it is sent."
    )
    max_in_flight: int = Field(
        default=16, ge=1, le=1024, description="Batches published and not yet acknowledged."
    )
    ack_timeout: Duration = Field(
        default=5.0, description="How long to wait for JetStream's ack before a retry."
    )
    max_message_bytes: int = Field(
        default=16 * 1024,
        ge=64,
        le=256 * 1024,
        description="Longer messages are cut to this size and flagged `truncated`.",
    )
    compression: Literal["zstd", "none"] = Field(
        default="zstd",
        description=(
            "How batches are sent: zstd (with the log-batch dictionary; header "
            "`Content-Encoding: zstd`) or none (plain JSON, for readers that cannot "
            "decompress)."
        ),
    )
    rate_limit_lines: int = Field(
        default=0,
        ge=0,
        description=(
            "Sustained lines/s above which lines less severe than err are dropped; 0 = off."
        ),
    )
    rate_limit_bytes: int = Field(
        default=0,
        ge=0,
        description="Sustained message bytes/s above which the same happens; 0 = off.",
    )
    rate_limit_burst: Duration = Field(
        default=10.0,
        description="How long a burst above the rate may last before lines are dropped.",
    )


class UpgradeSection(Section):
    enabled: bool = Field(default=True, description="Act on operator upgrade requests.")
    trusted_keys_dir: ConfigPath = Field(
        default=Path("/etc/harmony-agent/keys"),
        description="Ed25519 public keys (PEM, *.pub) trusted to sign upgrade requests.",
    )
    confirm_window: Duration = Field(
        default=300.0,
        description="How long a new version must prove healthy before it is committed.",
    )
    keep_releases: int = Field(
        default=2, ge=1, le=10, description="Releases kept on disk, the running one included."
    )


class IdentitySection(Section):
    key_dir: ConfigPath | None = Field(
        default=None,
        description=(
            "Where the agent keeps its own Ed25519 key (made on its first start, 0600; it "
            "never leaves the device). It logs in with it whenever [nats] names no other "
            "credential. Unset: <state_dir>/identity."
        ),
        json_schema_extra={"example": "/var/lib/harmony-agent/identity"},
    )
    enroll_token_file: ConfigPath | None = Field(
        default=None,
        description=(
            "A file holding the enrollment token from `harmony-fleet enroll token create` "
            "(root:harmony-agent 0640; never logged). Sent until the device is first let in."
        ),
        json_schema_extra={"example": "/etc/harmony-agent/enroll-token"},
    )


class Config(Section):
    agent: AgentSection = AgentSection()
    labels: dict[str, str] = Field(
        default={},
        description='Free `key = "value"` labels (Kubernetes syntax) the operator selects on.',
    )
    nats: NatsSection = NatsSection()
    heartbeat: HeartbeatSection = HeartbeatSection()
    logs: LogsSection = LogsSection()
    upgrade: UpgradeSection = UpgradeSection()
    identity: IdentitySection = IdentitySection()

    @property
    def key_dir(self) -> Path:
        """The device key's directory: `[identity] key_dir`, else `<state_dir>/identity`."""
        return self.identity.key_dir or self.agent.state_dir / "identity"

    @property
    def uses_own_key(self) -> bool:
        """Whether the agent logs in with its own key (ADR-023): [nats] names no credential."""
        n = self.nats
        static = (n.creds_file, n.nkey_seed_file, n.user, n.token_file, n.tls_cert_file)
        return not any(static)


def _toml_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts[-1] = f"{parts[-1]}[{p}]" if parts else f"[{p}]"
        elif re.match(r"^[A-Za-z0-9_-]+$", p):
            parts.append(p)
        else:
            parts.append(f'"{p}"')
    return ".".join(parts) or "(top level)"


def _problems(err: ValidationError) -> list[str]:
    out: list[str] = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling; see agent.example.toml for every key)"
        elif e["type"] == "missing":
            msg = "required"
        hidden = {"extra_forbidden", "missing", SECRET_IN_URL}
        shown = "" if e["type"] in hidden else f" (got {e['input']!r})"
        if isinstance(e["input"], dict):
            shown = ""
        out.append(f"{_toml_path(loc)}: {msg}{shown}")
    return out


def parse_config(text: str, source: str = "agent.toml") -> Config:
    """Validate TOML text; ConfigError lists every problem at once."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, [f"not valid TOML: {e}"]) from e
    problems: list[str] = []
    labels = raw.get("labels", {})
    if isinstance(labels, dict):
        for key, value in labels.items():
            if not isinstance(value, str):
                problems.append(
                    f"{_toml_path(('labels', key))}: label values are strings (got {value!r})"
                )
                continue
            problems.extend(
                f"{_toml_path(('labels', key))}: {p} (got {key} = {value!r})"
                for p in label_problems(key, value)
            )
    # The pairing rules of [nats] run on the raw values too: a model validator runs only
    # once every field is valid, and these must be reported with the field errors.
    nats = raw.get("nats")
    pairing = nats_pairing_problems(nats) if isinstance(nats, dict) else []
    try:
        cfg = Config.model_validate(raw, context={"toml": True})
    except ValidationError as e:
        problems.extend(
            p
            for p in _problems(e)
            if not p.startswith("labels.") and not (pairing and p.startswith("nats: "))
        )
        problems.extend(f"{_toml_path(('nats', key))}: {msg}" for key, msg in pairing)
        raise ConfigError(source, problems) from e
    if problems:
        raise ConfigError(source, problems)
    return cfg


def load_config(path: Path) -> Config:
    """Read and validate the config file at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(
            str(path),
            [f"no such file; copy agent.example.toml there or pass -c PATH ({e.strerror})"],
        ) from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), [f"cannot be read: {e}"]) from e
    return parse_config(text, str(path))


# The credential files of [nats], and whether each is a secret (a CA or a certificate is not).
_CREDENTIAL_FILES = {
    "creds_file": True,
    "nkey_seed_file": True,
    "password_file": True,
    "token_file": True,
    "tls_ca_file": False,
    "tls_cert_file": False,
    "tls_key_file": True,
}


def check_files(cfg: Config) -> list[str]:
    """Problems with files the config names; empty when all are fine.

    Missing or unreadable; and, like ssh with a private key, a credential someone
    other than root or this user owns or may write (they could swap it), or a
    secret every user may read (they could copy it).
    """
    problems: list[str] = []
    n = cfg.nats
    for key, secret in _CREDENTIAL_FILES.items():
        path: Path | None = getattr(n, key)
        if path is None:
            continue
        if not path.is_file():
            problems.append(f"nats.{key}: {str(path)!r} does not exist or is not a file")
        elif not os.access(path, os.R_OK):
            problems.append(
                f"nats.{key}: {str(path)!r} is not readable by this user "
                "(it should be root:harmony-agent 0640)"
            )
        elif unsafe := unsafe_file(repr(str(path)), path.stat(), secret=secret):
            problems.append(f"nats.{key}: {unsafe}")
    token = cfg.identity.enroll_token_file
    if token is not None:
        if not token.is_file():
            problems.append(
                f"identity.enroll_token_file: {str(token)!r} does not exist or is not a file"
            )
        elif not os.access(token, os.R_OK):
            problems.append(
                f"identity.enroll_token_file: {str(token)!r} is not readable by "
                "this user (it should be root:harmony-agent 0640)"
            )
        elif unsafe := unsafe_file(repr(str(token)), token.stat(), secret=True):
            problems.append(f"identity.enroll_token_file: {unsafe}")
    return problems


def config_path_from_env(explicit: str | None) -> Path:
    """-c/--config first, then HARMONY_AGENT_CONFIG, then the default path."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("HARMONY_AGENT_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH
