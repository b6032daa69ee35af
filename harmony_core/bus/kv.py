"""KV buckets: get with the server's timestamp, put, compare-and-set, delete, watch.

Every call is one a device's least-privilege permissions can allow (ADR-023 §5):
no stream info to open a bucket, a get by JetStream's direct get whose request
names the key in its subject, a watch by a consumer created with its filter in
the subject (`$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`). So the same
calls serve the operator and a device that may touch only its own keys.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from harmony_core.bus._errors import STREAM_NOT_FOUND, mapped
from harmony_core.bus._latest import latest_values
from harmony_core.bus._publish import new_msg_id, publish_acked
from harmony_core.bus.connection import Connection
from harmony_core.errors import (
    BucketMissingError,
    BusError,
    BusUnavailableError,
    RevisionMismatchError,
)

__all__ = ["KvEntry", "KvOps"]

_KV = "KV bucket"
# How often the server says an idle watch is alive; three missed: the watch is gone.
_WATCH_HEARTBEAT_S = 5.0
# An ephemeral watch consumer outlives a lost subscriber this long, then the server drops it.
_WATCH_INACTIVE_S = 30.0
_NS = 1_000_000_000
# A KV key as nats-py accepts one (no spaces, no wildcards, no leading or trailing dot).
_KEY = re.compile(r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")


@dataclass(frozen=True)
class KvEntry:
    key: str
    value: bytes
    revision: int
    # The server's timestamp of the write (None where nats-py does not tell it).
    created: datetime | None
    deleted: bool = False


def _wildcard(key: str) -> bool:
    return any(t in ("*", ">") for t in key.split("."))


class KvOps(Connection):
    """The KV operations of the bus."""

    def _kv(self, bucket: str) -> Any:
        """nats-py's KV handle, made without asking the server (stream info) for the bucket.

        A bucket that is missing shows at the first call as no responders, mapped to
        BucketMissingError (as is one that `harmony-fleet init` has not yet given direct
        gets: the same command fixes both).
        """
        from nats.js.kv import KeyValue

        return KeyValue(
            name=bucket, stream=f"KV_{bucket}", pre=f"$KV.{bucket}.", js=self._jet(), direct=True
        )

    async def kv_get(self, bucket: str, key: str) -> KvEntry | None:
        """The key's current value with the server's timestamp, or None."""
        import nats.js.errors as je

        js = self._jet()
        with mapped(_KV, bucket, key):
            try:
                msg = await js.get_msg(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}", direct=True)
            except je.NotFoundError as e:
                if e.err_code in (None, 10037):  # direct get's 404 has no code: no message
                    return None
                raise
        op = (msg.headers or {}).get("KV-Operation")
        if op in ("DEL", "PURGE"):
            return None
        return KvEntry(key, msg.data or b"", msg.seq or 0, msg.time)

    async def kv_put(self, bucket: str, key: str, value: bytes, *, timeout: float = 5.0) -> int:
        """Write the key's value; its revision. Retried within `timeout` (`_publish`)."""
        return await self._kv_write(bucket, key, value, None, timeout)

    async def kv_update(
        self, bucket: str, key: str, value: bytes, last: int | None, *, timeout: float = 5.0
    ) -> int:
        """Write only if the key is still at revision `last` (None: only if absent)."""
        try:
            return await self._kv_write(bucket, key, value, last or 0, timeout)
        except RevisionMismatchError:
            # A deleted or purged key keeps a marker: "absent" is "at the marker".
            latest = await self._kv_last(bucket, key) if last is None else None
            if latest is not None and latest[1].get("KV-Operation") in ("DEL", "PURGE"):
                return await self._kv_write(bucket, key, value, latest[0], timeout)
            raise

    async def _kv_write(
        self, bucket: str, key: str, value: bytes, last: int | None, timeout: float
    ) -> int:
        """One KV write with its own Nats-Msg-Id, so a retry across an election is stored once.

        JetStream checks the expected revision before the Nats-Msg-Id: a compare-and-set
        whose first attempt was stored (its ack lost) is refused on its retry; the key's
        last write carrying our Nats-Msg-Id says it was ours, at that revision.
        """
        if not _KEY.match(key):
            raise BusError(f"{key!r} is not a valid key of {_KV} {bucket!r}")
        msg_id = new_msg_id()
        headers = {"Nats-Msg-Id": msg_id}
        if last is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(last)
        try:
            ack = await publish_acked(
                self,
                f"$KV.{bucket}.{key}",
                value,
                headers=headers,
                timeout=timeout,
                kind=_KV,
                name=bucket,
                stream=f"KV_{bucket}",
                item=key,
            )
        except RevisionMismatchError:
            latest = await self._kv_last(bucket, key)
            if latest is not None and latest[1].get("Nats-Msg-Id") == msg_id:
                return latest[0]
            raise
        return int(ack.seq)

    async def _kv_last(self, bucket: str, key: str) -> tuple[int, dict[str, str]] | None:
        """Revision and headers of the key's last write (a value or a marker), None if none."""
        import nats.js.errors as je

        js = self._jet()
        with mapped(_KV, bucket, key):
            try:
                msg = await js.get_msg(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}", direct=True)
            except je.NotFoundError:
                return None
        return int(msg.seq or 0), dict(msg.headers or {})

    async def kv_delete(self, bucket: str, key: str, *, purge: bool = True) -> None:
        kv = self._kv(bucket)
        with mapped(_KV, bucket, key):
            if purge:
                await kv.purge(key)
            else:
                await kv.delete(key)

    async def _watch_consumer(
        self, bucket: str, key: str, deliver: str, *, include_history: bool
    ) -> int:
        """Create the watch's ephemeral push consumer; how many values it will replay first."""
        stream = f"KV_{bucket}"
        subject = f"$KV.{bucket}.{key}"
        name = "watch-" + secrets.token_hex(8)
        config: dict[str, Any] = {
            "name": name,
            "deliver_subject": deliver,
            "filter_subject": subject,
            "deliver_policy": "all" if include_history else "last_per_subject",
            "ack_policy": "none",
            "max_deliver": 1,
            "idle_heartbeat": int(_WATCH_HEARTBEAT_S * _NS),
            "inactive_threshold": int(_WATCH_INACTIVE_S * _NS),
            "mem_storage": True,
            "num_replicas": 1,
        }
        # The filter rides in the subject, where a device's permission checks it (a
        # wildcard cannot: the operator's fleet-wide watches name it in the body only).
        api = f"$JS.API.CONSUMER.CREATE.{stream}.{name}"
        if not _wildcard(key):
            api += f".{subject}"
        req = json.dumps({"stream_name": stream, "config": config}).encode()
        msg = await self._nc.request(api, req, timeout=self._cfg.connect_timeout)
        resp = json.loads(msg.data or b"{}")
        if err := resp.get("error"):
            if err.get("err_code") == STREAM_NOT_FOUND:
                raise BucketMissingError(_KV, bucket)
            raise BusError(f"JetStream refused a watch of {bucket}/{key}: {err.get('description')}")
        return int(resp.get("num_pending") or 0)

    async def kv_watch(
        self, bucket: str, key: str = ">", *, include_history: bool = False
    ) -> AsyncIterator[KvEntry | None]:
        """Current values, then None once they are all delivered, then every change.

        Ends with BusUnavailableError once its connection is closed for good, or when
        the server's heartbeats stop or a message went missing (the caller watches anew).
        """
        import nats.errors as ne

        self._jet()
        nc = self._nc
        deliver = nc.new_inbox()
        with mapped(_KV, bucket, key):
            sub = await nc.subscribe(deliver)
            try:
                pending = await self._watch_consumer(
                    bucket, key, deliver, include_history=include_history
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
                raise
        try:
            if pending == 0:
                yield None
            init_done = pending == 0
            last_dseq = 0
            while True:
                with mapped(_KV, bucket, key):
                    try:
                        msg = await sub.next_msg(timeout=3 * _WATCH_HEARTBEAT_S)
                    except ne.TimeoutError:
                        if self._gone(nc):
                            raise BusUnavailableError("the connection to NATS closed") from None
                        raise BusUnavailableError(
                            f"the watch of {bucket}/{key} stopped hearing from the server"
                        ) from None
                headers = msg.headers or {}
                status = headers.get("Status")
                if status == "100":  # the server's idle heartbeat: alive, and how far it sent
                    last = headers.get("Nats-Last-Consumer")
                    if last is not None and int(last) != last_dseq:
                        raise BusUnavailableError(f"the watch of {bucket}/{key} missed a change")
                    continue
                if status or not msg.reply:  # e.g. 409 consumer deleted
                    why = f"{status or ''} {headers.get('Description', '')}".strip()
                    raise BusUnavailableError(f"the watch of {bucket}/{key} ended ({why})")
                meta = msg.metadata
                if meta.sequence.consumer != last_dseq + 1:
                    raise BusUnavailableError(f"the watch of {bucket}/{key} missed a change")
                last_dseq = meta.sequence.consumer
                yield KvEntry(
                    msg.subject.removeprefix(f"$KV.{bucket}."),
                    msg.data or b"",
                    meta.sequence.stream,
                    meta.timestamp,
                    deleted=headers.get("KV-Operation") in ("DEL", "PURGE"),
                )
                if not init_done and meta.num_pending == 0:
                    init_done = True
                    yield None
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def kv_entries(self, bucket: str) -> list[KvEntry]:
        """Every live key of a bucket with its server timestamp, in one pass (`_latest`)."""

        def consumer(deliver: str) -> Awaitable[int]:
            return self._watch_consumer(bucket, ">", deliver, include_history=False)

        return [KvEntry(*v) for v in await latest_values(self, bucket, consumer)]
