"""LogBatch payloads on the wire: compressed, readable elsewhere, and refused when hostile."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from agent.logs.records import Encoder, batch_json
from harmony_core import logcodec
from harmony_core.contracts import LogBatch
from harmony_core.errors import PayloadError
from harmony_core.logcodec import (
    CONTENT_ENCODING,
    DICTIONARY_HEADER,
    DICTIONARY_ID,
    DICTIONARY_NAME,
    Compressor,
    decode_batch,
)

ROOT = Path(__file__).resolve().parents[2]
CONTRACT_DICT = ROOT / "contracts" / f"{DICTIONARY_NAME}.zdict"
ZSTD = {CONTENT_ENCODING: "zstd", DICTIONARY_HEADER: DICTIONARY_NAME}


def _batch(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    enc = Encoder(16 * 1024)
    records = []
    for i in range(n):
        cursor = f"s={rng.randbytes(16).hex()};i={i:x};b=0123;m={i:x};t=5f0a1b2c3d4e5;x={i:x}"
        fields = {
            "MESSAGE": f"Started unit-{rng.randint(1, 50)}.service - Some daemon.".encode(),
            "SYSLOG_IDENTIFIER": b"systemd",
            "_PID": b"1",
            "_BOOT_ID": b"0123456789abcdef0123456789abcdef",
            "_SYSTEMD_UNIT": b"init.scope",
        }
        records.append(enc.line(cursor, 1_795_000_000_000_000 + i, fields))
    return batch_json("dev-1", records)


def _bomb(size: int, *, content_size: bool) -> bytes:
    """`size` zero bytes, compressed: a few KB that would decompress to `size`."""
    c = zstandard.ZstdCompressor(level=19, write_content_size=content_size)
    if content_size:
        return c.compress(b"\0" * size)
    chunk = b"\0" * (1 << 20)
    obj = c.compressobj()
    return b"".join([*(obj.compress(chunk) for _ in range(size >> 20)), obj.flush()])


@pytest.mark.parametrize("n", [1, 5, 1000])
def test_a_batch_compresses_and_reads_back(n: int) -> None:
    plain = _batch(n)
    wire, headers = Compressor().compress(plain)
    assert headers == ZSTD
    assert len(wire) < len(plain) // (2 if n < 5 else 5)
    assert decode_batch(wire, headers) == plain
    assert zstandard.get_frame_parameters(wire).dict_id == DICTIONARY_ID
    LogBatch.model_validate_json(decode_batch(wire, headers))


def test_what_does_not_compress_goes_as_it_is() -> None:
    plain = b'{"x":1}'
    assert Compressor().compress(plain) == (plain, None)


@pytest.mark.parametrize("headers", [None, {}, {CONTENT_ENCODING: "identity"}, {"X": "y"}])
def test_an_uncompressed_batch_reads_as_it_is(headers: dict[str, str] | None) -> None:
    """What every agent before compression sent, and `compression = "none"` still sends."""
    plain = _batch(3)
    assert decode_batch(plain, headers) == plain


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({CONTENT_ENCODING: "br"}, "Content-Encoding 'br'"),
        ({CONTENT_ENCODING: "zstd", DICTIONARY_HEADER: "log-batch-9"}, "dictionary 'log-batch-9'"),
    ],
)
def test_an_unknown_encoding_or_dictionary_is_refused(headers: dict[str, str], says: str) -> None:
    wire, _ = Compressor().compress(_batch(3))
    with pytest.raises(PayloadError, match=says) as ei:
        decode_batch(wire, headers)
    assert "upgrade harmony-fleet" in str(ei.value)


@pytest.mark.parametrize("content_size", [True, False])
def test_a_zip_bomb_is_refused_without_inflating_it(content_size: bool) -> None:
    """256 MiB of zeros in a few KB: refused, and never more than the limit in memory."""
    bomb = _bomb(256 << 20, content_size=content_size)
    assert len(bomb) < 64 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(PayloadError, match="refused"):
            decode_batch(bomb, ZSTD, limit=1 << 20)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak
    # The default limit holds every batch an agent can send (batch_max_bytes <= 900 KiB).
    with pytest.raises(PayloadError):
        decode_batch(bomb, ZSTD)


def test_a_window_larger_than_a_batch_needs_is_refused() -> None:
    """A 128 MiB window would make the reader allocate it: a small frame asks for one."""
    params = zstandard.ZstdCompressionParameters.from_level(
        3, window_log=27, write_content_size=False
    )
    obj = zstandard.ZstdCompressor(compression_params=params).compressobj()
    frame = obj.compress(b'{"records":[]}') + obj.flush()
    assert zstandard.get_frame_parameters(frame).window_size == 1 << 27
    with pytest.raises(PayloadError, match="does not decompress"):
        decode_batch(frame, ZSTD)


@pytest.mark.parametrize("data", [b"", b"not zstd at all", b"\x28\xb5\x2f\xfd\x00garbage"])
def test_corrupt_data_is_refused(data: bytes) -> None:
    with pytest.raises(PayloadError):
        decode_batch(data, ZSTD)


def test_the_contract_holds_the_dictionary_the_code_uses() -> None:
    """Readers in other languages take it from contracts/; the code ships it in a module."""
    assert CONTRACT_DICT.read_bytes() == logcodec.dictionary(), (
        f"contracts/{CONTRACT_DICT.name} is stale: run `python -m bench.logdict`"
    )
    assert zstandard.ZstdCompressionDict(CONTRACT_DICT.read_bytes()).dict_id() == DICTIONARY_ID


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd command (Debian zstd)")
def test_the_zstd_command_reads_a_batch_with_the_contract_dictionary(tmp_path: Path) -> None:
    """How another language reads one: any zstd with contracts/log-batch-1.zdict."""
    plain = _batch(20)
    wire, _ = Compressor().compress(plain)
    (tmp_path / "batch.zst").write_bytes(wire)
    out = subprocess.run(
        ["zstd", "-q", "-d", "-c", "-D", str(CONTRACT_DICT), str(tmp_path / "batch.zst")],
        capture_output=True,
        check=True,
    ).stdout
    assert out == plain and json.loads(out)["device_id"] == "dev-1"


def test_debians_python3_zstandard_reads_and_writes_it(tmp_path: Path) -> None:
    """Devices import Debian's python3-zstandard (0.20 on bookworm), not the venv's."""
    debian = Path("/usr/bin/python3")
    probe = subprocess.run([str(debian), "-I", "-c", "import zstandard"], capture_output=True)
    if not debian.exists() or probe.returncode != 0:
        pytest.skip("needs Debian's python3 with python3-zstandard")
    plain = _batch(50)
    wire, _ = Compressor().compress(plain)
    (tmp_path / "in.zst").write_bytes(wire)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from harmony_core.logcodec import Compressor, decode_batch, ZSTD;"
        "data = open(sys.argv[2], 'rb').read();"
        "h = {'Content-Encoding': ZSTD, 'Zstd-Dictionary': 'log-batch-1'};"
        "plain = decode_batch(data, h);"
        "sys.stdout.buffer.write(Compressor().compress(plain)[0])"
    )
    proc = subprocess.run(
        [str(debian), "-I", "-B", "-c", code, str(ROOT), str(tmp_path / "in.zst")],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert decode_batch(proc.stdout, ZSTD) == plain
    assert sys.modules["zstandard"] is zstandard


def test_the_schema_says_how_to_read_a_batch() -> None:
    """The JSON Schema's description names the header, the dictionary file and the limit."""
    schema = json.loads((ROOT / "contracts" / "log-batch.schema.json").read_text())
    for needed in (
        "Content-Encoding: zstd",
        DICTIONARY_HEADER,
        f"contracts/{DICTIONARY_NAME}.zdict",
        f"{logcodec.MAX_DECODED_BYTES >> 20} MiB",
    ):
        assert needed in schema["description"], needed
