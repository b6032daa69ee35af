"""`harmony-fleet init`: the buckets and the stream of contract §3, created idempotently."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    """Create what is missing, update the logs stream's limits; returns one line per item."""
    import nats.js.errors as je
    from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType, StreamConfig

    js: Any = bus.js
    done: list[str] = []
    for kv in _kvs(n):
        try:
            await js.key_value(kv.name)
            done.append(f"KV {kv.name}: exists")
        except je.BucketNotFoundError:
            await js.create_key_value(
                KeyValueConfig(
                    bucket=kv.name,
                    history=kv.history,
                    description=kv.description,
                    storage=StorageType.FILE,
                )
            )
            done.append(f"KV {kv.name}: created")
    try:
        await js.object_store(n.artifacts_bucket)
        done.append(f"object store {n.artifacts_bucket}: exists")
    except (je.BucketNotFoundError, je.NotFoundError):
        await js.create_object_store(
            n.artifacts_bucket,
            config=ObjectStoreConfig(
                description="harmony-agent release artifacts (.deb)",
                storage=StorageType.FILE,
            ),
        )
        done.append(f"object store {n.artifacts_bucket}: created")
    cfg = StreamConfig(
        name=n.logs_stream,
        subjects=[f"{n.logs_subject_prefix}.>"],
        description="Journal lines of every device (harmony-agent LogBatch)",
        max_age=float(log_max_age_s),
        max_bytes=log_max_bytes,
        storage=StorageType.FILE,
        duplicate_window=float(_DUPLICATE_WINDOW_S),
    )
    try:
        await js.stream_info(n.logs_stream)
        await js.update_stream(cfg)
        done.append(f"stream {n.logs_stream}: exists (limits updated)")
    except je.NotFoundError:
        await js.add_stream(cfg)
        done.append(f"stream {n.logs_stream}: created")
    return done
