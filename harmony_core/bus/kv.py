"""KV buckets: get with the server's timestamp, put, compare-and-set, delete, watch."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from harmony_core.bus._errors import mapped
from harmony_core.bus.connection import Connection
from harmony_core.errors import BusUnavailableError

__all__ = ["KvEntry", "KvOps"]

_KV = "KV bucket"
# JetStream's "no message found": the key has no value.
_NO_MESSAGE = 10037
# How often an idle watch looks whether its connection is gone for good.
_IDLE_CHECK_S = 2.0


@dataclass(frozen=True)
class KvEntry:
    key: str
    value: bytes
    revision: int
    # The server's timestamp of the write (None where nats-py does not tell it).
    created: datetime | None
    deleted: bool = False


class KvOps(Connection):
    """The KV operations of the bus."""

    async def _kv(self, bucket: str) -> Any:
        js = self._jet()
        with mapped(_KV, bucket):
            return await js.key_value(bucket)

    async def kv_get(self, bucket: str, key: str) -> KvEntry | None:
        """The key's current value with the server's timestamp, or None."""
        import nats.js.errors as je

        js = self._jet()
        with mapped(_KV, bucket, key):
            try:
                msg = await js.get_msg(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}", direct=False)
            except je.NotFoundError as e:
                if e.err_code == _NO_MESSAGE:
                    return None
                raise
        op = (msg.headers or {}).get("KV-Operation")
        if op in ("DEL", "PURGE"):
            return None
        return KvEntry(key, msg.data or b"", msg.seq or 0, msg.time)

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        kv = await self._kv(bucket)
        with mapped(_KV, bucket, key):
            return int(await kv.put(key, value))

    async def kv_update(self, bucket: str, key: str, value: bytes, last: int | None) -> int:
        """Write only if the key is still at revision `last` (None: only if absent)."""
        kv = await self._kv(bucket)
        with mapped(_KV, bucket, key):
            if last is None:
                return int(await kv.create(key, value))
            return int(await kv.update(key, value, last))

    async def kv_delete(self, bucket: str, key: str, *, purge: bool = True) -> None:
        kv = await self._kv(bucket)
        with mapped(_KV, bucket, key):
            if purge:
                await kv.purge(key)
            else:
                await kv.delete(key)

    async def kv_watch(
        self, bucket: str, key: str = ">", *, include_history: bool = False
    ) -> AsyncIterator[KvEntry | None]:
        """Current values, then None once they are all delivered, then every change.

        Ends with BusUnavailableError once its connection is closed for good.
        """
        import nats.errors as ne

        kv = await self._kv(bucket)
        nc = self._nc
        with mapped(_KV, bucket, key):
            watcher = await kv.watch(key, include_history=include_history)
        try:
            while True:
                with mapped(_KV, bucket, key):
                    try:
                        e = await watcher.updates(timeout=_IDLE_CHECK_S)
                    except ne.TimeoutError:  # idle
                        if self._gone(nc):
                            raise BusUnavailableError("the connection to NATS closed") from None
                        continue
                if e is None:
                    yield None
                    continue
                yield KvEntry(
                    e.key,
                    e.value or b"",
                    e.revision or 0,
                    getattr(e, "created", None),
                    deleted=e.operation in ("DEL", "PURGE"),
                )
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def kv_entries(self, bucket: str) -> list[KvEntry]:
        """Every live key of a bucket with its server timestamp."""
        out: list[KvEntry] = []
        async for e in self.kv_watch(bucket):
            if e is None:
                break
            if not e.deleted:
                out.append(e)
        return out
