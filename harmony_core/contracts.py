"""The wire payloads of contract v1 (docs/contract.md §3), as pydantic models.

Every payload is a UTF-8 JSON object with ``schema_version: 1``; timestamps are
RFC 3339 UTC with ``Z``. Readers ignore fields they do not know, so a newer
writer never breaks an older reader. `python -m harmony_core.contracts` regenerates
``contracts/*.schema.json``; a test fails when they drift from these models.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PlainSerializer

__all__ = [
    "MAX_CONFIRM_WINDOW_S",
    "SCHEMAS",
    "SCHEMA_VERSION",
    "Artifact",
    "CpuInfo",
    "DeviceInfo",
    "DiskInfo",
    "DsseEnvelope",
    "DsseSignature",
    "Health",
    "Heartbeat",
    "Load",
    "LogBatch",
    "LogDrops",
    "LogGap",
    "LogRecord",
    "LogsSummary",
    "NatsHealth",
    "NetworkInterface",
    "OsInfo",
    "ReleaseManifest",
    "Rollout",
    "RolloutDevice",
    "RolloutLease",
    "RolloutOutcome",
    "RolloutState",
    "RolloutWave",
    "Timestamp",
    "UpgradePhase",
    "UpgradeRequest",
    "UpgradeStatus",
    "UpgradeSummary",
    "dump_json",
    "format_ts",
    "render_schemas",
    "utcnow",
]

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_ts(value: datetime) -> str:
    """RFC 3339 UTC with a `Z`, microseconds kept."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


Timestamp = Annotated[
    datetime,
    PlainSerializer(format_ts, return_type=str, when_used="json"),
    Field(json_schema_extra={"format": "date-time"}),
]
# Signed input says its timezone: a naive time cannot be compared with the device's clock.
_AwareTimestamp = Annotated[
    AwareDatetime,
    PlainSerializer(format_ts, return_type=str, when_used="json"),
    Field(json_schema_extra={"format": "date-time"}),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=False)


class _Payload(_Model):
    schema_version: Literal[1] = 1


# --- DeviceInfo -----------------------------------------------------------------


class OsInfo(_Model):
    id: str
    version_id: str
    pretty_name: str


class CpuInfo(_Model):
    model: str
    count: int


class DiskInfo(_Model):
    root_total_bytes: int


class NetworkInterface(_Model):
    name: str
    mac: str | None = None
    addresses: list[str] = Field(default_factory=list)


class DeviceInfo(_Payload):
    """What a device is; KV `device-info/<device_id>`."""

    device_id: str
    machine_id: str
    hostname: str
    labels: dict[str, str]
    agent_version: str
    os: OsInfo
    kernel: str
    arch: str
    boot_id: str
    booted_at: Timestamp
    started_at: Timestamp
    cpu: CpuInfo
    memory_total_bytes: int
    disk: DiskInfo
    network: list[NetworkInterface]
    heartbeat_interval_s: float
    updated_at: Timestamp


# --- Heartbeat ------------------------------------------------------------------


class Load(_Model):
    cpu_percent: float
    memory_used_percent: float
    disk_used_percent: float


class LogsSummary(_Model):
    """Where log shipping stands; carried in heartbeats, health and `status`."""

    state: Literal["starting", "shipping", "waiting-for-nats", "blind", "disabled", "error"]
    lag_s: float | None = None
    shipped: int = 0
    in_flight: int = 0
    dropped: int = 0
    gaps: int = 0
    detail: str | None = None


UpgradePhase = Literal[
    "received",
    "downloading",
    "verifying",
    "staged",
    "switching",
    "watching",
    "committed",
    "rejected",
    "rolled_back",
    "failed",
]


class UpgradeSummary(_Model):
    phase: UpgradePhase | None = None
    request_id: str | None = None
    target_version: str | None = None
    reason: str | None = None
    updated_at: Timestamp | None = None


class Heartbeat(_Payload):
    """That a device is alive; KV `device-heartbeat/<device_id>`."""

    device_id: str
    agent_version: str
    seq: int
    sent_at: Timestamp
    interval_s: float
    boot_id: str
    uptime_s: float
    agent_uptime_s: float
    state: Literal["running", "stopping"]
    load: Load
    logs: LogsSummary | None = None
    upgrade: UpgradeSummary | None = None


# --- Logs -----------------------------------------------------------------------


class LogGap(_Model):
    """Lines that were lost from the journal before they could be shipped."""

    from_realtime_us: int | None = None
    to_realtime_us: int | None = None
    lost_cursor: str | None = None


class LogDrops(_Model):
    """Lines the rate limit dropped, by priority, in [since, until]."""

    by_priority: dict[str, int]
    since_realtime_us: int
    until_realtime_us: int


class LogRecord(_Model):
    cursor: str
    realtime_us: int
    source_realtime_us: int | None = None
    boot_id: str | None = None
    unit: str | None = None
    identifier: str | None = None
    pid: int | None = None
    priority: int = Field(ge=0, le=7)
    message: str | None = None
    message_b64: str | None = None
    truncated: bool | None = None
    gap: LogGap | None = None
    dropped: LogDrops | None = None


class LogBatch(_Payload):
    """Journal lines on `logs.<device_id>` in stream `DEVICE_LOGS`.

    On the wire a batch is this JSON, or, when the message has the NATS header
    `Content-Encoding: zstd`, this JSON compressed as one zstd frame with the
    dictionary the header `Zstd-Dictionary` names (`log-batch-1`: the file
    `contracts/log-batch-1.zdict`; e.g. `zstd -d -D contracts/log-batch-1.zdict`).
    A message without `Content-Encoding` is plain JSON (every agent before
    compression, and `[logs] compression = "none"`). Readers refuse a batch that
    decompresses to more than 4 MiB. See docs/contract.md §3.
    """

    device_id: str
    records: list[LogRecord]


# --- Upgrade --------------------------------------------------------------------


class Artifact(_Model):
    bucket: str
    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(gt=0)


# The longest confirm window a request may ask for: the switch watches (and holds the
# old release) that long, so an endless or absurd one is refused, not obeyed.
MAX_CONFIRM_WINDOW_S = 24 * 3600


class UpgradeRequest(_Payload):
    """The signed payload inside the DSSE envelope at `agent-upgrade/<device_id>`."""

    request_id: str = Field(min_length=1, max_length=128)
    device_id: str
    # Checked by the manifest checks (harmony_core.versions), so a refusal names the request.
    target_version: str = Field(
        description="A release version: Debian native, ordered as dpkg orders it "
        "(1.4.0, 1.5.0~rc.1 < 1.5.0 < 1.5.0+hotfix1).",
    )
    arch: str
    artifact: Artifact
    issued_at: _AwareTimestamp = Field(description="With its timezone (RFC 3339).")
    expires_at: _AwareTimestamp = Field(description="With its timezone (RFC 3339).")
    confirm_window_s: float | None = Field(
        default=None,
        gt=0,
        le=MAX_CONFIRM_WINDOW_S,
        allow_inf_nan=False,
        description="Seconds the new version must stay healthy, at most a day; "
        "absent: the device's [upgrade] confirm_window.",
    )
    allow_downgrade: bool = False
    # Ask again for a digest that rolled back before (ADR-022 §7: only explicitly). An
    # addition within schema_version 1: absent means False, older readers ignore it.
    retry_rolled_back: bool = False


class DsseSignature(_Model):
    keyid: str = ""
    sig: str


class DsseEnvelope(_Model):
    payloadType: str
    payload: str
    signatures: list[DsseSignature]


class ReleaseManifest(_Payload):
    """What the operator built and published: the signed payload beside the artifact.

    `harmony-fleet publish-artifact --key` signs it (DSSE) over the file at hand and
    stores it as object `<name>.manifest` in `agent-artifacts`; `harmony-fleet upgrade`
    signs requests only from a manifest that verifies, for an artifact that matches it.
    """

    name: str = Field(description="The artifact's object name: harmony-agent_<version>_<arch>.deb.")
    version: str
    arch: str
    size: int = Field(gt=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    published_at: _AwareTimestamp = Field(description="With its timezone (RFC 3339).")


class UpgradeStatus(_Payload):
    """Where an upgrade stands; KV `agent-upgrade-status/<device_id>`."""

    device_id: str
    request_id: str | None = None
    from_version: str | None = None
    target_version: str | None = None
    phase: UpgradePhase
    progress: int | None = Field(default=None, ge=0, le=100)
    reason: str | None = None
    log_tail: list[str] | None = None
    updated_at: Timestamp


# --- Local health (runtime file, read by `status` and the upgrade watcher) ------


class NatsHealth(_Model):
    state: Literal["connecting", "connected", "disconnected", "closed"]
    server: str | None = None
    since: Timestamp | None = None
    last_error: str | None = None


class Health(_Payload):
    """The agent's local health file, e.g. /run/harmony-agent/health.json."""

    version: str
    pid: int
    device_id: str
    started_at: Timestamp
    updated_at: Timestamp
    ready: bool
    nats: NatsHealth
    last_heartbeat_ack_at: Timestamp | None = None
    last_heartbeat_seq: int | None = None
    conflict: str | None = None
    problems: list[str] = Field(default_factory=list)
    logs: LogsSummary | None = None
    upgrade: UpgradeSummary | None = None


# --- Rollouts (operator side) ----------------------------------------------------


RolloutState = Literal["running", "paused", "halted", "completed", "aborted"]
# Where one device of a rollout stands. Stored names; never renamed.
RolloutOutcome = Literal[
    "pending",  # its wave has not started
    "asking",  # its request is about to be written (saved before the write)
    "asked",  # its request is written; no terminal phase yet
    "baking",  # committed and Ready on the new version; the bake time runs
    "succeeded",  # stayed Ready on the new version for the bake time
    "failed",  # rolled_back, failed, rejected, no terminal phase by the deadline, or not Ready
    "skipped",  # not Ready when its wave started: not asked, not counted
    "conflict",  # another request replaced ours before it ended: not counted
    "up-to-date",  # already ran the version when its wave started: not asked
]


class RolloutDevice(_Model):
    id: str
    arch: str
    outcome: RolloutOutcome = "pending"
    revision: int | None = Field(
        default=None,
        description="The device's `agent-upgrade` key revision: the one seen before our "
        "write while `asking` (null: no key), then our request's.",
    )
    asked_at: Timestamp | None = None
    since: Timestamp | None = Field(
        default=None, description="When the outcome was reached (`baking`: when the bake began)."
    )
    reason: str | None = None


class RolloutWave(_Model):
    percent: float = Field(gt=0, le=100, description="Cumulative share of the devices.")
    devices: list[RolloutDevice]
    started_at: Timestamp | None = None
    ended_at: Timestamp | None = None


class RolloutLease(_Model):
    """The controller that drives the rollout; it writes at least every `ttl_s` / 3."""

    holder: str
    renewed_at: Timestamp
    ttl_s: float = Field(gt=0)


class Rollout(_Payload):
    """A rollout of one version in waves; KV `agent-rollouts/<name>`, written with
    compare-and-set only (`harmony-fleet rollout`)."""

    name: str
    uid: str = Field(description="Random at create; a device's request id is `<device>-<uid>`.")
    version: str
    selector: str | None = Field(
        default=None, description="The -l it was planned from; null when devices were named."
    )
    created_at: Timestamp
    created_by: str
    keyid: str = Field(description="The signing key `create` checked; `run` signs with it.")
    releases: dict[str, Artifact] = Field(description="Per arch, the artifact `create` checked.")
    confirm_window_s: float | None = None
    allow_downgrade: bool = False
    bake_s: float = Field(ge=0)
    deadline_s: float = Field(gt=0)
    max_failures: int | None = Field(default=None, ge=0)
    max_failures_percent: float | None = Field(default=None, ge=0, lt=100)
    min_executed: int = Field(default=1, ge=1)
    state: RolloutState = "running"
    reason: str | None = None
    wave: int = Field(default=-1, description="Index of the last wave started; -1: none yet.")
    waves: list[RolloutWave]
    excused: list[str] = Field(
        default_factory=list,
        description="Failed devices a `resume` after a halt accepted: no longer counted.",
    )
    lease: RolloutLease | None = None
    updated_at: Timestamp


SCHEMAS: dict[str, type[BaseModel]] = {
    "device-info": DeviceInfo,
    "heartbeat": Heartbeat,
    "log-batch": LogBatch,
    "upgrade-request": UpgradeRequest,
    "dsse-envelope": DsseEnvelope,
    "release-manifest": ReleaseManifest,
    "upgrade-status": UpgradeStatus,
    "health": Health,
    "rollout": Rollout,
}


def dump_json(model: BaseModel) -> bytes:
    """Compact UTF-8 JSON of a payload, None fields left out."""
    return model.model_dump_json(exclude_none=True).encode()


def render_schemas() -> dict[str, str]:
    """File name -> text of every JSON Schema, as kept in `contracts/`."""
    out: dict[str, str] = {}
    for name, model in SCHEMAS.items():
        schema: dict[str, Any] = model.model_json_schema(mode="serialization")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://harmony.nationtech.io/schemas/agent/v1/{name}.schema.json"
        out[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def _main(argv: list[str]) -> int:
    target = Path(argv[1] if len(argv) > 1 else "contracts")
    target.mkdir(parents=True, exist_ok=True)
    for name, text in render_schemas().items():
        (target / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
