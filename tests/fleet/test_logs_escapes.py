"""`harmony-fleet logs` never sends a device's control characters to the operator's terminal.

A real journal line carrying `ESC ]52` (write the clipboard) and `ESC ]0`
(retitle the window) goes journald → the logs service → JetStream → the CLI,
which prints it with the escapes shown, as text.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.logs.helpers import make_config, running_service, stream_records, wait_async
from tests.logs.journald import Journald, send, unique
from tests.natsserver import NatsServer

OSC52 = "\x1b]52;c;aGVsbG8=\x07"
OSC0 = "\x1b]0;pwned\x07"


@pytest.mark.journald
async def test_logs_prints_escapes_not_control_characters(
    journald: Journald, nats_js: NatsServer, tmp_path: Path
) -> None:
    device_id, ident = unique("dev"), unique("id")
    cfg = make_config(tmp_path / "state", nats_js.url, identifiers=[ident])
    async with running_service(cfg, device_id):
        send(f"clip {OSC52} title {OSC0} end", ident, 4)

        async def shipped() -> bool:
            recs = await stream_records(nats_js.url, device_id)
            return any("\x1b]52" in (r.get("message") or "") for r in recs)

        await wait_async(shipped, 15, "the line with the escapes in the stream")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "harmony_fleet.cli",
        "-s",
        nats_js.url,
        "logs",
        device_id,
        "--utc",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TZ": "UTC"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    text = out.decode()
    assert "\x1b" not in text and "\x07" not in text, repr(text)
    assert "clip \\x1b]52;c;aGVsbG8=\\x07 title \\x1b]0;pwned\\x07 end" in text, text
