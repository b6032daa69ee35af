"""A saved cursor libsystemd refuses: a gap, then shipping from `start_at`, no restart loop.

Issue 9, finding 6: `{"cursor": "s=garbage"}` made libsystemd's seek raise
ValueError, which ended every generation of the service, for ever.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.logs.helpers import make_config, running_service, stream_records, wait_async
from tests.logs.journald import Journald, journalctl_json, send, seqnum
from tests.natsserver import NatsServer, wait_for

pytestmark = pytest.mark.journald


@pytest.mark.parametrize("bad", ["s=garbage", "x=1", "s=0123456789abcdef0123456789abcdef"])
async def test_an_invalid_saved_cursor_is_a_gap_then_start_at(
    journald: Journald,
    nats_js: NatsServer,
    tmp_path: Path,
    device_id: str,
    ident: str,
    bad: str,
    caplog: pytest.LogCaptureFixture,
    compression: str,
) -> None:
    state = tmp_path / "state"
    (state / "logs").mkdir(parents=True)
    cursor_file = state / "logs" / "cursor"
    cursor_file.write_text(json.dumps({"schema_version": 1, "cursor": bad, "realtime_us": 5}))
    cfg = make_config(
        state, nats_js.url, identifiers=[ident], start_at="now", compression=compression
    )
    caplog.set_level(logging.INFO)
    async with running_service(cfg, device_id) as run:
        pump = run.svc._pump
        for i in range(3):
            send(f"line {i}", ident)
        wait_for(lambda: len(journalctl_json("-t", ident)) == 3, 10, "the lines in the journal")
        want = [e["__CURSOR"] for e in journalctl_json("-t", ident)]

        async def arrived() -> list[dict[str, Any]] | None:
            recs = await stream_records(nats_js.url, device_id)
            return recs if set(want) <= {r["cursor"] for r in recs} else None

        recs: list[dict[str, Any]] = await wait_async(arrived, 20, "the new lines", 0.2)
        last = seqnum(want[-1])
        # At or past it: when idle, the pump checkpoints the tail of the whole journal.
        await wait_async(
            lambda: (w := run.svc.store.written) is not None and seqnum(w.cursor) >= last,
            10,
            "the bad cursor to be replaced",
        )
        summary = run.svc.summary()
        assert run.svc._pump is pump, "the service restarted its reader"
    assert summary.state == "shipping" and summary.gaps == 1 and summary.shipped == 3
    gap, *lines = recs
    assert gap["cursor"] == "harmony-gap:" + bad
    assert gap["gap"]["lost_cursor"] == bad and gap["gap"]["from_realtime_us"] == 5
    assert "not a valid journal position" in gap["message"]
    assert [r["message"] for r in lines] == ["line 0", "line 1", "line 2"]
    # `agent.service.retrying` logs every failed run of a service: there was none.
    assert not [r.getMessage() for r in caplog.records if r.name == "agent.service"]
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("logs-cursor-invalid") == 1
    assert seqnum(json.loads(cursor_file.read_text())["cursor"]) >= last


async def test_the_gap_alone_ships_and_a_checkpoint_replaces_the_bad_cursor(
    journald: Journald,
    nats_js: NatsServer,
    tmp_path: Path,
    device_id: str,
    ident: str,
    monkeypatch: pytest.MonkeyPatch,
    compression: str,
) -> None:
    """No line follows the gap: its batch commits nothing; the idle checkpoint saves a real one."""
    monkeypatch.setattr("agent.logs.pump.CHECKPOINT_EVERY_S", 0.2)
    state = tmp_path / "state"
    cursor_file = state / "logs" / "cursor"
    cursor_file.parent.mkdir(parents=True)
    cursor_file.write_text('{"schema_version": 1, "cursor": "s=garbage"}')
    cfg = make_config(state, nats_js.url, identifiers=[ident], compression=compression)
    async with running_service(cfg, device_id) as run:
        recs = await wait_async(
            lambda: stream_records(nats_js.url, device_id), 10, "the gap record", 0.2
        )
        await wait_async(
            lambda: (w := run.svc.store.written) is not None and w.cursor != "s=garbage",
            10,
            "a checkpoint to replace the bad cursor",
        )
        assert run.svc.summary().state == "shipping"
    assert [r["cursor"] for r in recs] == ["harmony-gap:s=garbage"]
    assert recs[0]["gap"] == {"lost_cursor": "s=garbage"}
    saved = json.loads(cursor_file.read_text())["cursor"]
    assert saved.startswith("s=") and saved != "s=garbage"
