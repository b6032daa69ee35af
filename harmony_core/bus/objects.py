"""The object store: stream an object into a file, upload one."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import IO

from harmony_core.bus._errors import mapped
from harmony_core.bus.connection import Connection
from harmony_core.errors import BusError, ObjectMissingError

__all__ = ["ObjectOps"]

_OBJECTS = "object store"


def _b64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return b""


class ObjectOps(Connection):
    """The object store operations of the bus."""

    async def object_download(self, bucket: str, name: str, into: IO[bytes]) -> int:
        """Stream an object into a file; returns the size written.

        ObjectMissingError when the store lacks it, BucketMissingError without the store.
        Only direct gets on the store's stream (its meta, then each chunk in order): what a
        device's read-only permission allows (ADR-023 §5), no stream info, no consumer.
        """
        import nats.js.errors as je

        js = self._jet()
        stream = f"OBJ_{bucket}"
        meta_subject = f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
        with mapped(_OBJECTS, bucket, name):
            try:
                meta = await js.get_msg(stream, subject=meta_subject, direct=True)
            except je.NotFoundError as e:
                raise ObjectMissingError(bucket, name) from e
            info = json.loads(meta.data or b"{}")
            if info.get("deleted") or not info.get("nuid"):
                raise ObjectMissingError(bucket, name)
            chunks, size = int(info.get("chunks") or 0), int(info.get("size") or 0)
            chunk_subject = f"$O.{bucket}.C.{info['nuid']}"
            h = hashlib.sha256()
            seq, written = 0, 0
            for _ in range(chunks):
                msg = await js.get_msg(
                    stream, seq=seq + 1, subject=chunk_subject, next=True, direct=True
                )
                data = msg.data or b""
                h.update(data)
                into.write(data)
                written += len(data)
                seq = int(msg.seq or 0)
        want = str(info.get("digest") or "").partition("=")[2]
        if written != size or (want and _b64(want) != h.digest()):
            raise BusError(
                f"object {name!r} of object store {bucket!r} is corrupt (its digest does not "
                "match); upload it again"
            )
        return into.tell()

    async def object_upload(self, bucket: str, name: str, data: IO[bytes]) -> int:
        js = self._jet()
        with mapped(_OBJECTS, bucket, name):
            obs = await js.object_store(bucket)
            info = await obs.put(name, data)
        return int(info.size or 0)
