"""The admin calls `harmony-fleet init` needs: ensure a KV bucket, an object store, a stream.

Each says what it did: `created`, `exists` (already as wanted), `updated` with
what changed, or `refused` with what the server would not do (e.g. 3 replicas
on a server that is not in a cluster). `replicas` None means "as it is" (1 for
what is created); a number brings the item to that many replicas — JetStream
moves a stream between R1 and R3 in place, keeping its messages. The agent
never calls these: it never creates what it uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from harmony_core.bus._errors import STREAM_NOT_FOUND, mapped
from harmony_core.bus.connection import Connection
from harmony_core.durations import format_duration

__all__ = ["Ensured", "Outcome", "ProvisionOps"]

Outcome = Literal["created", "exists", "updated", "refused"]


@dataclass(frozen=True)
class Ensured:
    """What an `ensure_*` call did; `changes` says what an update changed ("max_age 7d→1d")
    or, when `refused`, what could not be done and why."""

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


def _replicas(cur: Any, replicas: int | None) -> tuple[list[str], dict[str, Any]]:
    """The phrase and the field of a change of replicas (none when `replicas` is None)."""
    have = cur.num_replicas or 1
    if replicas is None or have == replicas:
        return [], {}
    return [f"replicas {have}→{replicas}"], {"num_replicas": replicas}


def _refusal(e: Any) -> str:
    """The server's reason for refusing a create or update, with what to do about it."""
    why = str(getattr(e, "description", None) or e)
    if "non-clustered" in why:
        return f"{why}: run NATS as a cluster, or pass --replicas 1"
    if "no suitable peers" in why or "insufficient resources" in why:
        return f"{why}: the cluster has fewer servers than replicas asked for"
    return why


class ProvisionOps(Connection):
    """Creating what the contract needs, for the operator (`harmony-fleet init`)."""

    async def _info(self, stream: str) -> Any:
        """The stream's info, or None when it does not exist."""
        import nats.js.errors as je

        try:
            return await self._jet().stream_info(stream)
        except je.NotFoundError as e:
            if e.err_code != STREAM_NOT_FOUND:
                raise
        return None

    async def _update(self, info: Any, changes: list[str], fields: dict[str, Any]) -> Ensured:
        """Update the stream of `info` with `fields`; `refused` (with why) if the server won't."""
        import nats.js.errors as je

        if not changes:
            return Ensured("exists")
        try:
            await self._jet().update_stream(info.config.evolve(**fields))
        except je.APIError as e:
            if e.code not in (400, 500):
                raise
            return Ensured("refused", (f"cannot change {', '.join(changes)}: {_refusal(e)}",))
        return Ensured("updated", tuple(changes))

    @staticmethod
    async def _create(create: Any, replicas: int) -> Ensured:
        import nats.js.errors as je

        try:
            await create()
        except je.APIError as e:
            if replicas == 1 or e.code not in (400, 500):
                raise
            return Ensured("refused", (f"cannot create with {replicas} replicas: {_refusal(e)}",))
        return Ensured("created", (f"replicas {replicas}",) if replicas > 1 else ())

    async def ensure_kv(
        self, bucket: str, *, history: int, description: str, replicas: int | None = None
    ) -> Ensured:
        """The KV bucket, created (file storage, `history` values per key) when missing.

        With direct gets allowed: the only get a device's permissions let through
        (ADR-023 §5); a bucket made before that gets them turned on (`updated`).
        """
        from nats.js.api import KeyValueConfig, StorageType

        js = self._jet()
        with mapped("KV bucket", bucket):
            info = await self._info(f"KV_{bucket}")
            if info is not None:
                changes, fields = _replicas(info.config, replicas)
                if not info.config.allow_direct:
                    changes.append("allow_direct off→on")
                    fields["allow_direct"] = True
                return await self._update(info, changes, fields)
            config = KeyValueConfig(
                bucket=bucket,
                history=history,
                description=description,
                storage=StorageType.FILE,
                direct=True,
                replicas=replicas or 1,
            )
            return await self._create(lambda: js.create_key_value(config), replicas or 1)

    async def ensure_object_store(
        self, bucket: str, *, description: str, replicas: int | None = None
    ) -> Ensured:
        """The object store, created (file storage) when missing."""
        from nats.js.api import ObjectStoreConfig, StorageType

        js = self._jet()
        with mapped("object store", bucket):
            info = await self._info(f"OBJ_{bucket}")
            if info is not None:
                return await self._update(info, *_replicas(info.config, replicas))
            config = ObjectStoreConfig(
                description=description, storage=StorageType.FILE, replicas=replicas or 1
            )
            return await self._create(
                lambda: js.create_object_store(bucket, config=config), replicas or 1
            )

    async def ensure_stream(
        self,
        name: str,
        *,
        subjects: list[str],
        description: str,
        max_age_s: float,
        max_bytes: int,
        duplicate_window_s: float,
        replicas: int | None = None,
    ) -> Ensured:
        """The stream with these subjects and limits: created, left alone, or updated to them.

        An update keeps every other setting of the existing stream.
        """
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
            info = await self._info(name)
            if info is None:
                config = StreamConfig(
                    name=name, storage=StorageType.FILE, num_replicas=replicas or 1, **want
                )
                return await self._create(lambda: js.add_stream(config), replicas or 1)
            changes, fields = _replicas(info.config, replicas)
            return await self._update(
                info, _stream_changes(info.config, want) + changes, {**want, **fields}
            )
