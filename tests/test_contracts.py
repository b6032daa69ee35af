"""The wire models: schemas kept current, timestamps as the contract says, public surfaces."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from harmony_core.contracts import Heartbeat, Load, format_ts, render_schemas

ROOT = Path(__file__).resolve().parent.parent


def test_schemas_are_current() -> None:
    want = render_schemas()
    have = {p.name: p.read_text() for p in (ROOT / "contracts").glob("*.schema.json")}
    assert have == want, "contracts/*.schema.json are stale: run `make schemas`"


def test_timestamps_are_rfc3339_utc_with_z() -> None:
    assert format_ts(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == "2026-01-02T03:04:05.000006Z"
    hb = Heartbeat(
        device_id="d",
        agent_version="1",
        seq=1,
        sent_at=datetime(2026, 1, 1, tzinfo=UTC),
        interval_s=15,
        boot_id="b",
        uptime_s=1,
        agent_uptime_s=1,
        state="running",
        load=Load(cpu_percent=0, memory_used_percent=0, disk_used_percent=0),
    )
    raw = hb.model_dump(mode="json")
    assert raw["sent_at"] == "2026-01-01T00:00:00.000000Z"
    assert raw["schema_version"] == 1


def test_readers_ignore_unknown_fields() -> None:
    hb = Heartbeat.model_validate_json(
        '{"schema_version":1,"device_id":"d","agent_version":"1","seq":1,'
        '"sent_at":"2026-01-01T00:00:00Z","interval_s":15,"boot_id":"b","uptime_s":1,'
        '"agent_uptime_s":1,"state":"running","load":{"cpu_percent":0,'
        '"memory_used_percent":0,"disk_used_percent":0},"new_field":true}'
    )
    assert hb.seq == 1
