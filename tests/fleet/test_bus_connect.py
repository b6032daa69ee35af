"""Building nats-py's options is part of a connect attempt: what fails there is ours too.

A TLS CA file that is not PEM (or a password file that vanished after
`check-config`) fails while the options are built, before any socket. The
daemon must keep retrying and say why, as for any refusal, and the CLI must get
a BusUnavailableError, never nats-py's or ssl's own error.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from harmony_core.bus import Bus
from harmony_core.errors import BusUnavailableError
from harmony_core.settings import NatsSection
from tests.natsserver import free_port


def _bad_ca(tmp_path: Path) -> NatsSection:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a PEM certificate\n")
    return NatsSection(
        servers=[f"tls://127.0.0.1:{free_port()}"], tls_ca_file=ca, reconnect_max_wait=1.0
    )


async def test_the_daemon_keeps_retrying_a_bad_tls_ca(tmp_path: Path) -> None:
    bus = Bus(_bad_ca(tmp_path), name="t")
    run = asyncio.ensure_future(bus.run())
    try:
        for _ in range(100):
            if run.done() or bus.state.last_error:
                break
            await asyncio.sleep(0.05)
        assert not run.done(), f"run() ended: {run.exception()!r}"
        assert bus.state.state == "disconnected"
        assert "certificate" in (bus.state.last_error or "").lower(), bus.state
        await asyncio.sleep(1.5)  # at least one more attempt, still running
        assert not run.done(), f"run() ended: {run.exception()!r}"
    finally:
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run


async def test_connect_once_with_a_bad_tls_ca_is_ours(tmp_path: Path) -> None:
    bus = Bus(_bad_ca(tmp_path), name="t")
    with pytest.raises(BusUnavailableError) as ei:
        await bus.connect_once()
    assert str(ei.value).startswith("cannot connect to NATS at tls://127.0.0.1:")
    assert isinstance(ei.value.__cause__, OSError)  # ssl.SSLError, kept as the cause
