"""journalctl's names: priorities and unit-name mangling. Pure; shared by config, logs and fleet."""

from __future__ import annotations

__all__ = ["PRIORITIES", "mangle_unit", "priority_of"]

PRIORITIES = {
    "emerg": 0,
    "alert": 1,
    "crit": 2,
    "err": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}

# What systemd's unit_name_mangle() recognises as a unit type suffix.
_UNIT_SUFFIXES = (
    ".service",
    ".socket",
    ".target",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".timer",
    ".path",
    ".slice",
    ".scope",
)


def priority_of(text: str) -> int | None:
    """0-7 for a priority name or digit (like `journalctl -p`), None when it is neither."""
    t = text.strip().lower()
    if t in PRIORITIES:
        return PRIORITIES[t]
    if t.isdigit() and 0 <= int(t) <= 7:
        return int(t)
    return None


def mangle_unit(name: str) -> str:
    """`foo` -> `foo.service`, like `journalctl -u foo`."""
    return name if name.endswith(_UNIT_SUFFIXES) else f"{name}.service"
