"""No nats-py error leaks out of the bus: a caller only ever sees ours, raised `from` nats-py's.

Against a real nats-server: buckets, streams and objects that are missing, a
revision that moved, a key nats-py refuses, a payload over the server's limit,
and a server that went away (also under a watch and a follow, which must end).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from harmony_core.bus import Bus
from harmony_core.errors import (
    BucketMissingError,
    BusError,
    BusUnavailableError,
    ObjectMissingError,
    RevisionMismatchError,
)
from harmony_core.settings import NatsSection
from tests.natsserver import NatsServer

Op = Callable[[Bus], Awaitable[object]]


async def _first(it: AsyncIterator[object]) -> object:
    async for x in it:
        return x
    return None


def _ours(e: BaseException, want: type[BusError]) -> None:
    """`e` is exactly our error `want`, raised from a nats-py one (or ours, from none)."""
    assert type(e) is want, f"{type(e).__module__}.{type(e).__name__}: {e}"
    assert type(e).__module__ == "harmony_core.errors"
    cause = e.__cause__
    assert cause is None or type(cause).__module__.startswith(("nats.", "builtins")), cause


async def _connected(url: str) -> Bus:
    bus = Bus(NatsSection(servers=[url]), name="bus-errors-test")
    await bus.connect_once()
    return bus


# Against a server with JetStream but none of the contract's buckets or streams.
MISSING: list[tuple[str, Op, type[BusError]]] = [
    ("kv_get", lambda b: b.kv_get("nope", "k"), BucketMissingError),
    ("kv_put", lambda b: b.kv_put("nope", "k", b"v"), BucketMissingError),
    ("kv_update", lambda b: b.kv_update("nope", "k", b"v", 3), BucketMissingError),
    ("kv_create", lambda b: b.kv_update("nope", "k", b"v", None), BucketMissingError),
    ("kv_delete", lambda b: b.kv_delete("nope", "k"), BucketMissingError),
    ("kv_entries", lambda b: b.kv_entries("nope"), BucketMissingError),
    ("kv_watch", lambda b: _first(b.kv_watch("nope")), BucketMissingError),
    ("publish", lambda b: b.publish("nowhere.x", b"1", stream="S", timeout=2), BucketMissingError),
    ("has_messages", lambda b: b.has_messages("S", "x"), BucketMissingError),
    ("fetch_stream", lambda b: _first(b.fetch_stream("S", "x")), BucketMissingError),
    (
        "object_download",
        lambda b: b.object_download("nope", "a.deb", io.BytesIO()),
        BucketMissingError,
    ),
    (
        "object_upload",
        lambda b: b.object_upload("nope", "a.deb", io.BytesIO(b"x")),
        BucketMissingError,
    ),
]


@pytest.mark.parametrize(("name", "op", "want"), MISSING, ids=[m[0] for m in MISSING])
async def test_missing_buckets_and_streams(
    nats_server: NatsServer, name: str, op: Op, want: type[BusError]
) -> None:
    bus = await _connected(nats_server.url)
    try:
        with pytest.raises(BusError) as ei:
            await asyncio.wait_for(op(bus), 15)
        _ours(ei.value, want)
    finally:
        await bus.close()


async def test_publish_nowait_fails_with_ours(nats_server: NatsServer) -> None:
    bus = await _connected(nats_server.url)
    try:
        fut = await bus.publish_nowait("nowhere.x", b"1", stream="S")
        with pytest.raises(BusError) as ei:
            await asyncio.wait_for(fut, 10)
        _ours(ei.value, BucketMissingError)
    finally:
        await bus.close()


# Against the contract's layout (`harmony-fleet init`).
REFUSED: list[tuple[str, Op, type[BusError]]] = [
    (
        "stale revision",
        lambda b: b.kv_update("device-info", "k", b"v", 999),
        RevisionMismatchError,
    ),
    ("key nats-py refuses", lambda b: b.kv_put("device-info", "a b", b"v"), BusError),
    (
        "missing object",
        lambda b: b.object_download("agent-artifacts", "none.deb", io.BytesIO()),
        ObjectMissingError,
    ),
]


@pytest.mark.parametrize(("name", "op", "want"), REFUSED, ids=[r[0] for r in REFUSED])
async def test_refusals(nats_js: NatsServer, name: str, op: Op, want: type[BusError]) -> None:
    bus = await _connected(nats_js.url)
    try:
        await bus.kv_put("device-info", "k", b"v")
        with pytest.raises(BusError) as ei:
            await asyncio.wait_for(op(bus), 15)
        _ours(ei.value, want)
    finally:
        await bus.close()


async def test_create_of_an_existing_key_is_a_revision_mismatch(nats_js: NatsServer) -> None:
    bus = await _connected(nats_js.url)
    try:
        await bus.kv_update("device-info", "k", b"1", None)
        with pytest.raises(BusError) as ei:
            await bus.kv_update("device-info", "k", b"2", None)
        _ours(ei.value, RevisionMismatchError)
        assert (e := await bus.kv_get("device-info", "k")) is not None and e.value == b"1"
    finally:
        await bus.close()


@pytest.fixture
def small_payload(tmp_path: Path) -> NatsServer:
    conf = tmp_path / "nats.conf"
    conf.write_text("max_payload: 4096\n")
    return NatsServer(tmp_path / "nats", extra=["-c", str(conf)])


async def test_a_payload_over_max_payload(small_payload: NatsServer) -> None:
    from tests.conftest import init_layout

    small_payload.start()
    try:
        await asyncio.to_thread(init_layout, small_payload.url)
        bus = await _connected(small_payload.url)
        try:
            assert bus.max_payload == 4096
            with pytest.raises(BusError) as ei:
                await bus.publish("logs.dev", b"x" * 8192, stream="DEVICE_LOGS")
            _ours(ei.value, BusError)
            assert "max_payload" in str(ei.value)
            with pytest.raises(BusError) as ei:
                await bus.publish_nowait("logs.dev", b"x" * 8192, stream="DEVICE_LOGS")
            _ours(ei.value, BusError)
        finally:
            await bus.close()
    finally:
        small_payload.stop()


async def _closed(bus: Bus) -> None:
    for _ in range(200):
        if bus.state.state == "closed":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the bus never saw the connection close: {bus.state}")


STOPPED: list[tuple[str, Op]] = [
    ("kv_get", lambda b: b.kv_get("device-info", "k")),
    ("kv_put", lambda b: b.kv_put("device-info", "k", b"v")),
    ("kv_entries", lambda b: b.kv_entries("device-info")),
    ("publish", lambda b: b.publish("logs.dev", b"1", stream="DEVICE_LOGS")),
    ("object_download", lambda b: b.object_download("agent-artifacts", "a", io.BytesIO())),
    ("ensure_kv", lambda b: b.ensure_kv("x", history=1, description="x")),
]


@pytest.mark.parametrize(("name", "op"), STOPPED, ids=[s[0] for s in STOPPED])
async def test_a_stopped_server(nats_js: NatsServer, name: str, op: Op) -> None:
    bus = await _connected(nats_js.url)
    try:
        await asyncio.to_thread(nats_js.stop)
        await _closed(bus)
        with pytest.raises(BusError) as ei:
            await asyncio.wait_for(op(bus), 15)
        _ours(ei.value, BusUnavailableError)
    finally:
        await bus.close()


async def test_a_watch_and_a_follow_end_when_the_server_goes(nats_js: NatsServer) -> None:
    """They used to wait for ever (an hour per idle turn) on a closed connection."""
    bus = await _connected(nats_js.url)
    try:
        await bus.publish("logs.dev", b"1", stream="DEVICE_LOGS")
        watch = bus.kv_watch("device-info")
        assert await anext(watch) is None  # no values yet: the "all delivered" marker
        follow = bus.fetch_stream("DEVICE_LOGS", "logs.dev", follow=True)
        assert (await anext(follow))[0] == b"1"
        await asyncio.to_thread(nats_js.stop)
        for it in (watch, follow):
            with pytest.raises(BusError) as ei:
                await asyncio.wait_for(anext(it), 15)
            _ours(ei.value, BusUnavailableError)
    finally:
        await bus.close()


async def test_connect_once_failure_is_ours_and_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.natsserver import free_port

    bus = Bus(NatsSection(servers=[f"nats://127.0.0.1:{free_port()}"]), name="t")
    with pytest.raises(BusError) as ei:
        await bus.connect_once()
    _ours(ei.value, BusUnavailableError)
    said = str(ei.value)
    assert said.startswith("cannot connect to NATS") and "connect call failed" in said.lower()
    # The CLI prints the error; the bus must not log it a second time.
    assert [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")] == []
