"""The object store: stream an object into a file, upload one."""

from __future__ import annotations

from typing import IO

from harmony_core.bus._errors import mapped
from harmony_core.bus.connection import Connection

__all__ = ["ObjectOps"]

_OBJECTS = "object store"


class ObjectOps(Connection):
    """The object store operations of the bus."""

    async def object_download(self, bucket: str, name: str, into: IO[bytes]) -> int:
        """Stream an object into a file; returns the size written.

        ObjectMissingError when the store lacks it, BucketMissingError without the store.
        """
        js = self._jet()
        with mapped(_OBJECTS, bucket, name):
            obs = await js.object_store(bucket)
            await obs.get(name, writeinto=into)
        return into.tell()

    async def object_upload(self, bucket: str, name: str, data: IO[bytes]) -> int:
        js = self._jet()
        with mapped(_OBJECTS, bucket, name):
            obs = await js.object_store(bucket)
            info = await obs.put(name, data)
        return int(info.size or 0)
