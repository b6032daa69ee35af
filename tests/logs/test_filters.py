"""The match expression is journalctl's (v252 add_units, add_syslog_identifier, add_priorities)."""

from __future__ import annotations

import pytest

from agent.logs.filters import Filters, build_matches, mangle_unit


@pytest.mark.parametrize(
    ("name", "unit"),
    [("nginx", "nginx.service"), ("a.socket", "a.socket"), ("x.y", "x.y.service")],
)
def test_mangle_unit(name: str, unit: str) -> None:
    assert mangle_unit(name) == unit


def test_no_filters_select_everything() -> None:
    assert build_matches(Filters(max_priority=7)) == []


def test_priority_alone() -> None:
    assert build_matches(Filters(max_priority=3)) == [
        [["PRIORITY=0", "PRIORITY=1", "PRIORITY=2", "PRIORITY=3"]]
    ]


def test_units_identifiers_priority() -> None:
    m = build_matches(Filters(units=("a", "a.service"), identifiers=("x", "y"), max_priority=0))
    assert m == [
        [
            ["_SYSTEMD_UNIT=a.service"],
            ["MESSAGE_ID=fc2e22bc6ee647b6b90729ab34a250b1", "_UID=0", "COREDUMP_UNIT=a.service"],
            ["_PID=1", "UNIT=a.service"],
            ["_UID=0", "OBJECT_SYSTEMD_UNIT=a.service"],
        ],
        [["SYSLOG_IDENTIFIER=x"], ["SYSLOG_IDENTIFIER=y"]],
        [["PRIORITY=0"]],
    ]


def test_slice_also_matches_its_members() -> None:
    (units,) = build_matches(Filters(units=("system.slice",), max_priority=7))
    assert ["_SYSTEMD_SLICE=system.slice"] in units
