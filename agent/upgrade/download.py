"""Streaming download of an artifact with a running sha256, a size bound and progress."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, cast

from harmony_core.bus import Bus
from harmony_core.errors import UpgradeError

__all__ = ["download_artifact"]


class _Writer(io.RawIOBase):
    """What nats-py writes the object into: hashes, counts, refuses more than `limit` bytes."""

    def __init__(self, f: IO[bytes], limit: int) -> None:
        self._f = f
        self.limit = limit
        self.count = 0
        self.sha = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.count += len(b)
        if self.count > self.limit:
            raise UpgradeError(f"the artifact is larger than the signed size ({self.limit} bytes)")
        self.sha.update(b)
        return self._f.write(b)

    def tell(self) -> int:
        return self.count


async def download_artifact(
    bus: Bus,
    bucket: str,
    name: str,
    into: Path,
    *,
    size: int,
    sha256: str,
    progress: Callable[[int], Awaitable[None]],
    every_s: float = 0.5,
) -> None:
    """Stream `bucket/name` into `into`; UpgradeError unless it is exactly `size` and `sha256`.

    `progress(percent)` is awaited at most every `every_s` while bytes arrive.
    """
    into.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        into.unlink()
    with open(into, "xb") as f:
        w = _Writer(f, size)
        stop = asyncio.Event()

        async def report() -> None:
            # Ends on `stop` too, not only on cancel: nats-py may swallow a cancellation
            # that lands inside one of its requests, and the download must never hang on it.
            last = -1
            while not stop.is_set():
                pct = min(100, w.count * 100 // size)
                if pct != last:
                    last = pct
                    with contextlib.suppress(Exception):
                        await progress(pct)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every_s)

        try:
            async with asyncio.TaskGroup() as tg:
                reporter = tg.create_task(report(), name="download-progress")
                try:
                    await bus.object_download(bucket, name, cast(IO[bytes], w))
                finally:
                    stop.set()
                    reporter.cancel()
        except BaseExceptionGroup as eg:
            # The TaskGroup wraps the download's own error; callers want that error.
            raise eg.exceptions[0] from None
        f.flush()
        os.fsync(f.fileno())
    if w.count != size:
        raise UpgradeError(f"the artifact has {w.count} bytes, the signed request says {size}")
    if w.sha.hexdigest() != sha256:
        raise UpgradeError("the artifact's sha256 does not match the signed request")
    await progress(100)
