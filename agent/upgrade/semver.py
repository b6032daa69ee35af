"""Version order for releases: semantic versioning 2.0 precedence. Pure."""

from __future__ import annotations

import re
from functools import total_ordering

__all__ = ["Version", "compare_versions", "parse_version"]

_RE = re.compile(
    r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


@total_ordering
class Version:
    """MAJOR.MINOR.PATCH[-pre][+build]; build metadata does not count in order."""

    __slots__ = ("core", "pre", "text")

    def __init__(self, text: str, core: tuple[int, int, int], pre: tuple[str, ...]) -> None:
        self.text = text
        self.core = core
        self.pre = pre

    def _key(self) -> tuple[tuple[int, int, int], int, tuple[tuple[int, int, str], ...]]:
        # A release sorts after its pre-releases; numeric identifiers before alphanumeric.
        ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.pre)
        return self.core, 0 if self.pre else 1, ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key() == other._key()

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Version({self.text!r})"


def parse_version(text: str) -> Version:
    """ValueError unless `text` is a semantic version like 1.4.0 or 1.5.0-rc.1."""
    m = _RE.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a version like 1.4.0 or 1.5.0-rc.1")
    core = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    pre = tuple(m.group(4).split(".")) if m.group(4) else ()
    return Version(text, core, pre)


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as a is older than, the same as, or newer than b."""
    va, vb = parse_version(a), parse_version(b)
    return (va > vb) - (va < vb)
