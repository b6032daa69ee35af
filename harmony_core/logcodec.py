"""LogBatch payloads on the wire: zstd with a versioned dictionary, or plain JSON.

A device compresses each LogBatch (contract §3) with zstd and a dictionary
trained on journal records, and says so in the message's NATS headers:

    Content-Encoding: zstd
    Zstd-Dictionary: log-batch-1

A message without `Content-Encoding` is the plain UTF-8 JSON of a LogBatch, as
every agent before compression sent it and as `[logs] compression = "none"`
still sends it: readers take both. The dictionary is part of the contract:
`contracts/log-batch-1.zdict` holds the same bytes for readers in other
languages (`zstd -D contracts/log-batch-1.zdict -d`). A new dictionary gets a
new name; a name is never reused for other bytes.

Reading what a device sent trusts nothing: a payload that would decompress to
more than `MAX_DECODED_BYTES` (a zip bomb) is refused without decompressing
it, as are a window larger than the batch could need, an unknown encoding or
dictionary, and corrupt data; each is a `PayloadError` saying which.

`zstandard` is imported on first use, so a process that never compresses never
loads it.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from harmony_core._logdict import DICTIONARY_B64, DICTIONARY_ID, DICTIONARY_NAME
from harmony_core.errors import PayloadError

if TYPE_CHECKING:
    import zstandard

__all__ = [
    "CONTENT_ENCODING",
    "DICTIONARY_HEADER",
    "DICTIONARY_ID",
    "DICTIONARY_NAME",
    "LEVEL",
    "MAX_DECODED_BYTES",
    "ZSTD",
    "Compressor",
    "decode_batch",
    "dictionary",
]

CONTENT_ENCODING = "Content-Encoding"
DICTIONARY_HEADER = "Zstd-Dictionary"
ZSTD = "zstd"
# zstd level 1: on journal batches it compresses within ~10 % of level 9 at a
# tenth of the CPU (docs/benchmarks.md); the dictionary does the rest for small ones.
LEVEL = 1
# No LogBatch is near this big (an agent keeps a batch under batch_max_bytes,
# at most 900 KiB); what decompresses to more is refused, not read.
MAX_DECODED_BYTES = 4 * 1024 * 1024
# The largest back-reference window a reader accepts: a batch never needs more.
_MAX_WINDOW = 8 * 1024 * 1024
_CHUNK = 64 * 1024


def _require_zstd() -> None:
    try:
        import zstandard  # noqa: F401
    except ImportError as e:
        raise PayloadError(
            "LogBatch compression needs zstandard: install python3-zstandard (Debian) "
            "or `pip install zstandard`"
        ) from e


def dictionary() -> bytes:
    """The bytes of dictionary `DICTIONARY_NAME` (as in contracts/)."""
    return base64.b64decode(DICTIONARY_B64)


@functools.cache
def _dict() -> zstandard.ZstdCompressionDict:
    _require_zstd()
    import zstandard

    return zstandard.ZstdCompressionDict(dictionary())


@functools.cache
def _decompressor() -> zstandard.ZstdDecompressor:
    import zstandard

    return zstandard.ZstdDecompressor(dict_data=_dict(), max_window_size=_MAX_WINDOW)


class Compressor:
    """Compresses LogBatch payloads; one per thread (a zstd context is not thread-safe)."""

    def __init__(self, level: int = LEVEL) -> None:
        d = _dict()
        import zstandard

        self._c = zstandard.ZstdCompressor(
            level=level, dict_data=d, write_checksum=False, write_content_size=True
        )
        self.headers: Mapping[str, str] = MappingProxyType(
            {CONTENT_ENCODING: ZSTD, DICTIONARY_HEADER: DICTIONARY_NAME}
        )

    def compress(self, payload: bytes) -> tuple[bytes, Mapping[str, str] | None]:
        """(wire bytes, headers): compressed, or `payload` itself and None if that is smaller."""
        out = self._c.compress(payload)
        if len(out) >= len(payload):
            return payload, None
        return out, self.headers


def decode_batch(
    data: bytes, headers: Mapping[str, str] | None, *, limit: int = MAX_DECODED_BYTES
) -> bytes:
    """The LogBatch JSON of a message from the logs stream, whichever way it was sent.

    PayloadError if it is compressed in a way this reader does not know, or would
    decompress to more than `limit` bytes, or is corrupt.
    """
    h = headers or {}
    encoding = h.get(CONTENT_ENCODING)
    if encoding is None or encoding == "identity":
        return data
    if encoding != ZSTD:
        raise PayloadError(
            f"a LogBatch with Content-Encoding {encoding[:40]!r}, which this reader does not "
            "know; upgrade harmony-fleet"
        )
    name = h.get(DICTIONARY_HEADER)
    if name not in (None, DICTIONARY_NAME):
        raise PayloadError(
            f"a LogBatch compressed with dictionary {name[:40]!r}, which this reader does not "
            "have; upgrade harmony-fleet"
        )
    return _inflate(data, limit)


def _inflate(data: bytes, limit: int) -> bytes:
    dctx = _decompressor()
    import zstandard as z

    try:
        params = z.get_frame_parameters(data)
    except z.ZstdError as e:
        raise PayloadError(f"a LogBatch that is not zstd data: {e}") from e
    if params.content_size not in (z.CONTENTSIZE_UNKNOWN, z.CONTENTSIZE_ERROR) and (
        params.content_size > limit
    ):
        raise PayloadError(
            f"a LogBatch that would decompress to {params.content_size} bytes, over the "
            f"limit of {limit}: refused"
        )
    # Streamed in chunks and counted, so even a frame that lies about its size (or
    # gives none) never makes more than `limit` bytes.
    out = io.BytesIO()
    try:
        with dctx.stream_reader(data, read_across_frames=True) as r:
            while chunk := r.read(_CHUNK):
                if out.tell() + len(chunk) > limit:
                    raise PayloadError(
                        f"a LogBatch that decompresses to more than {limit} bytes: refused"
                    )
                out.write(chunk)
    except z.ZstdError as e:
        raise PayloadError(f"a LogBatch that does not decompress: {e}") from e
    return out.getvalue()
