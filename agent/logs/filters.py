"""`[logs] units / identifiers / max_priority` as libsystemd match expressions.

Pure: it builds the same expression `journalctl -u UNIT... -t ID... -p PRIO`
builds (systemd v252 `add_units`, `add_syslog_identifier`, `add_priorities`),
so the reader selects exactly the lines journalctl shows. The expression is a
list of conjunction groups; each group is a list of alternatives (ORed); each
alternative is a list of `FIELD=value` matches (ANDed).
"""

from __future__ import annotations

from dataclasses import dataclass

from harmony_core.journal_names import mangle_unit

__all__ = ["Filters", "Matches", "build_matches", "mangle_unit"]

_COREDUMP_MESSAGE_ID = "fc2e22bc6ee647b6b90729ab34a250b1"

Matches = list[list[list[str]]]


@dataclass(frozen=True)
class Filters:
    units: tuple[str, ...] = ()
    identifiers: tuple[str, ...] = ()
    max_priority: int = 6


def _unit_alternatives(unit: str) -> list[list[str]]:
    return [
        [f"_SYSTEMD_UNIT={unit}"],
        # coredumps of the unit
        [f"MESSAGE_ID={_COREDUMP_MESSAGE_ID}", "_UID=0", f"COREDUMP_UNIT={unit}"],
        # PID 1 about the unit
        ["_PID=1", f"UNIT={unit}"],
        # authorised daemons about the unit
        ["_UID=0", f"OBJECT_SYSTEMD_UNIT={unit}"],
        *([[f"_SYSTEMD_SLICE={unit}"]] if unit.endswith(".slice") else []),
    ]


def build_matches(f: Filters) -> Matches:
    """The match expression for `f`; [] selects everything."""
    groups: Matches = []
    if f.units:
        alts: list[list[str]] = []
        for u in dict.fromkeys(mangle_unit(u) for u in f.units):
            alts.extend(_unit_alternatives(u))
        groups.append(alts)
    if f.identifiers:
        groups.append([[f"SYSLOG_IDENTIFIER={i}"] for i in dict.fromkeys(f.identifiers)])
    if f.max_priority < 7:
        # Like journalctl: `-p debug` adds no match, so lines without PRIORITY stay in.
        groups.append([[f"PRIORITY={p}" for p in range(f.max_priority + 1)]])
    return groups
