"""The journal rotated and vacuumed under a saved cursor: a gap record, no stall, no re-read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.logs.records import cursor_realtime_us
from tests.logs.helpers import make_config, running_service, stream_records, wait_async
from tests.logs.journald import Journald, journal_cursors, send
from tests.natsserver import NatsServer, wait_for

pytestmark = pytest.mark.journald


def _gone(cursor: str) -> bool:
    """`journalctl --cursor C` starts at C, or at the next line when C was vacuumed."""
    return journal_cursors("--cursor", cursor)[:1] != [cursor]


async def test_vacuumed_cursor_gives_a_gap_and_continues(
    journald: Journald,
    nats_js: NatsServer,
    tmp_path: Path,
    device_id: str,
    ident: str,
    compression: str,
) -> None:
    if not journald.ours:
        pytest.skip("vacuums the journal: only with a journald this test session started")
    cfg = make_config(
        tmp_path / "state",
        nats_js.url,
        identifiers=[ident],
        start_at="all",
        compression=compression,
    )
    async with running_service(cfg, device_id) as run:
        for i in range(10):
            send(f"before {i}", ident)
        await wait_async(
            lambda: run.svc.summary().shipped == 10 and run.svc.store.written == run.svc.committed,
            10,
            "10 lines shipped and saved",
        )
        saved = run.svc.committed
    assert saved is not None
    for i in range(10):
        send(f"lost {i}", ident)
    wait_for(lambda: len(journal_cursors("-t", ident)) == 20, 10, "the lost lines")
    journald.rotate()
    for i in range(5):
        send(f"kept {i}", ident)
    wait_for(lambda: len(journal_cursors("-t", ident)) == 25, 10, "the kept lines")

    def vacuumed() -> bool:
        journald.vacuum_files(1)  # the active file is not counted: archived ones go
        return _gone(saved.cursor)

    wait_for(vacuumed, 20, "the saved cursor's file to be vacuumed", interval=0.5)
    kept = journal_cursors("-t", ident)
    assert len(kept) == 5

    async with running_service(cfg, device_id) as run:
        for i in range(5):
            send(f"after {i}", ident)
        journald.rotate()  # rotation while reading: no stall
        for i in range(5, 10):
            send(f"after {i}", ident)

        async def done() -> list[dict[str, Any]] | None:
            recs = await stream_records(nats_js.url, device_id)
            return recs if recs and recs[-1].get("message") == "after 9" else None

        recs: list[dict[str, Any]] = await wait_async(done, 20, "the lines after the gap")
        assert run.svc.summary().gaps == 1
    messages = [r["message"] for r in recs]
    assert messages[:10] == [f"before {i}" for i in range(10)]
    gap = recs[10]
    assert gap["cursor"] == "harmony-gap:" + saved.cursor
    assert gap["gap"]["lost_cursor"] == saved.cursor
    assert gap["gap"]["from_realtime_us"] == cursor_realtime_us(saved.cursor)
    assert gap["gap"]["to_realtime_us"] <= recs[11]["realtime_us"]
    assert messages[11:] == [f"kept {i}" for i in range(5)] + [f"after {i}" for i in range(10)]
