"""`harmony-fleet init`: the buckets and the stream of contract §3, created idempotently.

`--replicas N` gives every bucket, the object store and the stream N replicas (a
NATS cluster of at least N servers); run again with another N, it says what it
changed, or what the server would not do.
"""

from __future__ import annotations

from dataclasses import dataclass

from harmony_core.bus import Bus, Ensured
from harmony_core.settings import NatsSection
from harmony_fleet.auth.registry import REGISTRY_BUCKET

__all__ = [
    "LOG_MAX_AGE_S",
    "LOG_MAX_BYTES",
    "ROLLOUTS_BUCKET",
    "Done",
    "ensure_layout",
    "provision_layout",
]

# Only the operator side reads and writes it (devices never see it), so it is not one
# of the agent's `[nats]` names.
ROLLOUTS_BUCKET = "agent-rollouts"
LOG_MAX_AGE_S = 7 * 24 * 3600
LOG_MAX_BYTES = 1024 * 1024 * 1024
_DUPLICATE_WINDOW_S = 2 * 60


@dataclass(frozen=True)
class _Kv:
    name: str
    history: int
    description: str


def _kvs(n: NatsSection) -> list[_Kv]:
    return [
        _Kv(n.device_info_bucket, 1, "DeviceInfo per device (harmony-agent)"),
        _Kv(n.heartbeat_bucket, 1, "Heartbeat per device (harmony-agent)"),
        _Kv(n.upgrade_bucket, 1, "Signed upgrade request per device (operator)"),
        _Kv(n.upgrade_status_bucket, 5, "Upgrade status per device (harmony-agent)"),
        _Kv(ROLLOUTS_BUCKET, 1, "Rollouts by name (harmony-fleet rollout; compare-and-set only)"),
        # Devices never have access (ADR-023): written by the auth callout and the operator.
        _Kv(REGISTRY_BUCKET, 5, "Device keys, bindings, enrollment tokens (auth callout)"),
    ]


@dataclass(frozen=True)
class Done:
    """What `init` did to one item ("KV device-info"); prints as its line of output."""

    item: str
    did: Ensured

    def __str__(self) -> str:
        return f"{self.item}: {self.did}"


async def provision_layout(
    bus: Bus,
    n: NatsSection,
    *,
    replicas: int | None = None,
    log_max_age_s: int = LOG_MAX_AGE_S,
    log_max_bytes: int = LOG_MAX_BYTES,
) -> list[Done]:
    """Create what is missing, bring the logs stream's limits to these; one `Done` per item.

    With `replicas`, every bucket, the object store and the stream are created with (or
    brought to) that many replicas; without, new ones get 1 and existing ones keep theirs.
    An item the server will not change is `refused`, saying why; the others still go on.
    """
    done: list[Done] = []
    for kv in _kvs(n):
        did = await bus.ensure_kv(
            kv.name, history=kv.history, description=kv.description, replicas=replicas
        )
        done.append(Done(f"KV {kv.name}", did))
    did = await bus.ensure_object_store(
        n.artifacts_bucket,
        description="harmony-agent release artifacts (.deb)",
        replicas=replicas,
    )
    done.append(Done(f"object store {n.artifacts_bucket}", did))
    did = await bus.ensure_stream(
        n.logs_stream,
        subjects=[f"{n.logs_subject_prefix}.>"],
        description="Journal lines of every device (harmony-agent LogBatch)",
        max_age_s=log_max_age_s,
        max_bytes=log_max_bytes,
        duplicate_window_s=_DUPLICATE_WINDOW_S,
        replicas=replicas,
    )
    done.append(Done(f"stream {n.logs_stream}", did))
    return done


async def ensure_layout(
    bus: Bus,
    n: NatsSection,
    *,
    replicas: int | None = None,
    log_max_age_s: int = LOG_MAX_AGE_S,
    log_max_bytes: int = LOG_MAX_BYTES,
) -> list[str]:
    """`provision_layout`, one line per item: created, exists, updated or refused (and why)."""
    done = await provision_layout(
        bus, n, replicas=replicas, log_max_age_s=log_max_age_s, log_max_bytes=log_max_bytes
    )
    return [str(d) for d in done]
