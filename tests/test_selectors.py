"""Staleness and label selectors: pure, table-driven."""

from __future__ import annotations

import pytest

from agent.heartbeat import jittered
from harmony_core.selectors import device_status, match_labels, parse_selector


@pytest.mark.parametrize(
    ("age", "interval", "state", "want"),
    [
        (0, 15, "running", "Ready"),
        (60, 15, "running", "Ready"),
        (60.1, 15, "running", "Stale"),
        (300, 15, "running", "Stale"),
        (300.1, 15, "running", "Offline"),
        (4, 1, "running", "Ready"),
        (5, 1, "running", "Stale"),
        (300, 1, "running", "Stale"),
        (301, 1, "running", "Offline"),
        (1200, 60, "running", "Stale"),
        (1201, 60, "running", "Offline"),
        (1, 15, "stopping", "Stopped"),
        (None, None, None, "Unknown"),
    ],
)
def test_device_status(
    age: float | None, interval: float | None, state: str | None, want: str
) -> None:
    assert device_status(age, interval, state) == want


def test_selectors() -> None:
    sel = parse_selector("site=berlin, example.com/role=gw")
    assert sel == {"site": "berlin", "example.com/role": "gw"}
    assert match_labels(sel, {"site": "berlin", "example.com/role": "gw", "x": "y"})
    assert not match_labels(sel, {"site": "berlin"})
    assert match_labels({}, {})
    assert match_labels(parse_selector("empty="), {"empty": ""})
    for bad in ("site", "=x", "a b=c"):
        with pytest.raises(ValueError):
            parse_selector(bad)


def test_jitter_is_within_ten_percent() -> None:
    assert jittered(10, 0.0) == 9.0
    assert jittered(10, 0.999999) == pytest.approx(11.0, rel=1e-5)
    assert all(9.0 <= jittered(10) <= 11.0 for _ in range(1000))
