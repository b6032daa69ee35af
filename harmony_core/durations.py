"""Durations as people write them in config: "500ms", "15s", "5m", "1h", "1h30m"."""

from __future__ import annotations

import re
from datetime import datetime

__all__ = ["ago", "format_duration", "parse_duration"]

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in `text`; ValueError with an example when it is not a duration."""
    s = text.strip()
    pos = 0
    total = 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f'{text!r} is not a duration; write it like "15s", "5m" or "1h"')
    return total


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of `seconds`, e.g. 90 -> "90s", 300 -> "5m"."""
    if seconds and seconds == int(seconds):
        n = int(seconds)
        for unit, size in (("h", 3600), ("m", 60)):
            if n % size == 0:
                return f"{n // size}{unit}"
        return f"{n}s"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s"


def ago(t: datetime | None, now: datetime) -> str:
    """How long ago `t` was, the way a person says it: "12s ago", "5m ago", "never"."""
    if t is None:
        return "never"
    s = max(0.0, (now - t).total_seconds())
    if s < 90:
        return f"{s:.0f}s ago"
    if s < 5400:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"
