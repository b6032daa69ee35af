"""The admin calls `harmony-fleet init` needs: ensure a KV bucket, an object store, a stream.

Each says what it did: `created`, `exists` (already as wanted), or `updated`
with what changed. The agent never calls these: it never creates what it uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from harmony_core.bus._errors import STREAM_NOT_FOUND, mapped
from harmony_core.bus.connection import Connection
from harmony_core.durations import format_duration

__all__ = ["Ensured", "Outcome", "ProvisionOps"]

Outcome = Literal["created", "exists", "updated"]


@dataclass(frozen=True)
class Ensured:
    """What an `ensure_*` call did; `changes` says what an update changed ("max_age 7d→1d")."""

    outcome: Outcome
    changes: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.outcome + (f" ({', '.join(self.changes)})" if self.changes else "")


def _size(n: int | None) -> str:
    if n is None or n < 0:
        return "unlimited"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


def _age(s: float | None) -> str:
    return format_duration(s) if s else "unlimited"


def _stream_changes(cur: Any, want: dict[str, Any]) -> list[str]:
    """What differs between the stream config `cur` and the fields `want`, one phrase each."""
    out: list[str] = []
    if sorted(cur.subjects or []) != sorted(want["subjects"]):
        out.append(f"subjects {','.join(cur.subjects or [])}→{','.join(want['subjects'])}")
    if round(cur.max_age or 0, 3) != round(want["max_age"], 3):
        out.append(f"max_age {_age(cur.max_age)}→{_age(want['max_age'])}")
    if (cur.max_bytes if cur.max_bytes is not None else -1) != want["max_bytes"]:
        out.append(f"max_bytes {_size(cur.max_bytes)}→{_size(want['max_bytes'])}")
    if round(cur.duplicate_window or 0, 3) != round(want["duplicate_window"], 3):
        out.append(
            f"duplicate_window {_age(cur.duplicate_window)}→{_age(want['duplicate_window'])}"
        )
    if (cur.description or "") != want["description"]:
        out.append("description")
    return out


class ProvisionOps(Connection):
    """Creating what the contract needs, for the operator (`harmony-fleet init`)."""

    async def ensure_kv(self, bucket: str, *, history: int, description: str) -> Ensured:
        """The KV bucket, created (file storage, `history` values per key) when missing."""
        import nats.js.errors as je
        from nats.js.api import KeyValueConfig, StorageType

        js = self._jet()
        with mapped("KV bucket", bucket):
            try:
                await js.key_value(bucket)
                return Ensured("exists")
            except je.BucketNotFoundError:
                pass
            await js.create_key_value(
                KeyValueConfig(
                    bucket=bucket,
                    history=history,
                    description=description,
                    storage=StorageType.FILE,
                )
            )
        return Ensured("created")

    async def ensure_object_store(self, bucket: str, *, description: str) -> Ensured:
        """The object store, created (file storage) when missing."""
        import nats.js.errors as je
        from nats.js.api import ObjectStoreConfig, StorageType

        js = self._jet()
        with mapped("object store", bucket):
            try:
                await js.object_store(bucket)
                return Ensured("exists")
            except je.BucketNotFoundError:
                pass
            await js.create_object_store(
                bucket,
                config=ObjectStoreConfig(description=description, storage=StorageType.FILE),
            )
        return Ensured("created")

    async def ensure_stream(
        self,
        name: str,
        *,
        subjects: list[str],
        description: str,
        max_age_s: float,
        max_bytes: int,
        duplicate_window_s: float,
    ) -> Ensured:
        """The stream with these subjects and limits: created, left alone, or updated to them.

        An update keeps every other setting of the existing stream.
        """
        import nats.js.errors as je
        from nats.js.api import StorageType, StreamConfig

        want: dict[str, Any] = {
            "subjects": list(subjects),
            "description": description,
            "max_age": float(max_age_s),
            "max_bytes": max_bytes,
            "duplicate_window": float(duplicate_window_s),
        }
        js = self._jet()
        with mapped("stream", name):
            try:
                info = await js.stream_info(name)
            except je.NotFoundError as e:
                if e.err_code != STREAM_NOT_FOUND:
                    raise
                await js.add_stream(StreamConfig(name=name, storage=StorageType.FILE, **want))
                return Ensured("created")
            changes = _stream_changes(info.config, want)
            if not changes:
                return Ensured("exists")
            await js.update_stream(info.config.evolve(**want))
        return Ensured("updated", tuple(changes))
