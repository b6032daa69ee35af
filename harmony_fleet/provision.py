"""`harmony-fleet init`: the buckets and the stream of contract §3, created idempotently."""

from __future__ import annotations

from dataclasses import dataclass

from harmony_core.bus import Bus
from harmony_core.settings import NatsSection

__all__ = ["LOG_MAX_AGE_S", "LOG_MAX_BYTES", "ensure_layout"]

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
    ]


async def ensure_layout(
    bus: Bus,
    n: NatsSection,
    *,
    log_max_age_s: int = LOG_MAX_AGE_S,
    log_max_bytes: int = LOG_MAX_BYTES,
) -> list[str]:
    """Create what is missing, bring the logs stream's limits to these; one line per item.

    Each line says what happened: created, exists, or updated (and what changed).
    """
    done: list[str] = []
    for kv in _kvs(n):
        did = await bus.ensure_kv(kv.name, history=kv.history, description=kv.description)
        done.append(f"KV {kv.name}: {did}")
    did = await bus.ensure_object_store(
        n.artifacts_bucket, description="harmony-agent release artifacts (.deb)"
    )
    done.append(f"object store {n.artifacts_bucket}: {did}")
    did = await bus.ensure_stream(
        n.logs_stream,
        subjects=[f"{n.logs_subject_prefix}.>"],
        description="Journal lines of every device (harmony-agent LogBatch)",
        max_age_s=log_max_age_s,
        max_bytes=log_max_bytes,
        duplicate_window_s=_DUPLICATE_WINDOW_S,
    )
    done.append(f"stream {n.logs_stream}: {did}")
    return done
