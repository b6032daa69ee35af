"""Release versions, in the order dpkg gives them. Pure.

A release is a Debian package, and apt decides what is newer by dpkg's order, so
that is the only order here: the operator's CLI, the agent's checks and the
root side's release pruning all use it, and none can disagree with apt.

A release version is a Debian *native* version (packaging/deb/build.sh builds
native packages): a digit first, then letters, digits, `.`, `+`, `~`; no epoch
(`:`) and no Debian revision (`-`). A pre-release is written with `~`, which
sorts before anything, even the end: 1.5.0~rc.1 < 1.5.0 < 1.5.0+hotfix1.
(Written the semver way, 1.5.0-rc.1 would be a revision, newer than 1.5.0 to
dpkg; it is refused rather than ordered two ways.)

`dpkg_compare` is dpkg's own algorithm (lib/dpkg/version.c, `verrevcmp` and
`dpkg_version_compare`) for any Debian version, epoch and revision included; a
table test checks it against `dpkg --compare-versions`.
"""

from __future__ import annotations

import re
from functools import total_ordering

__all__ = ["RELEASE_VERSION", "Version", "compare_versions", "dpkg_compare", "parse_version"]

# The same pattern is in packaging/deb/build.sh (a test compares them); use it with
# fullmatch (`$` alone would let a trailing newline through). At most 128 characters:
# the version names a directory and sits inside the artifact's name.
RELEASE_VERSION = re.compile(r"^[0-9][A-Za-z0-9.+~]{0,127}$")

_DEBIAN_VERSION = re.compile(
    r"^(?:(?P<epoch>[0-9]+):)?(?P<upstream>[0-9][A-Za-z0-9.+~:-]*?)"
    r"(?:-(?P<revision>[A-Za-z0-9.+~]+))?$"
)


def _digit(c: str) -> bool:
    return "0" <= c <= "9"


def _order(c: str) -> int:
    """dpkg's weight of one character: '~' lowest, then the end and digits, letters, others."""
    if c == "~":
        return -1
    if not c or _digit(c):
        return 0
    if c.isascii() and c.isalpha():
        return ord(c)
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    """dpkg's comparison of two upstream versions or two revisions (<0, 0, >0)."""
    i = j = 0
    while i < len(a) or j < len(b):
        # A run of non-digits, character by character; the end of a string weighs 0.
        while (i < len(a) and not _digit(a[i])) or (j < len(b) and not _digit(b[j])):
            ac = _order(a[i] if i < len(a) else "")
            bc = _order(b[j] if j < len(b) else "")
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        # Then a run of digits, as a number.
        si, sj = i, j
        while i < len(a) and _digit(a[i]):
            i += 1
        while j < len(b) and _digit(b[j]):
            j += 1
        na, nb = int(a[si:i] or 0), int(b[sj:j] or 0)
        if na != nb:
            return -1 if na < nb else 1
    return 0


def _split(text: str) -> tuple[int, str, str]:
    m = _DEBIAN_VERSION.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not a Debian version")
    upstream = m["upstream"]
    if ":" in upstream and m["epoch"] is None:
        raise ValueError(f"{text!r} is not a Debian version (':' without an epoch)")
    return int(m["epoch"] or 0), upstream, m["revision"] or ""


def dpkg_compare(a: str, b: str) -> int:
    """-1, 0 or 1 as Debian version `a` is older than, the same as, or newer than `b`.

    Any Debian version, [epoch:]upstream[-revision]; ValueError for what is none.
    """
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    order = (ea > eb) - (ea < eb) or _verrevcmp(ua, ub) or _verrevcmp(ra, rb)
    return (order > 0) - (order < 0)


def _canonical(text: str) -> tuple[tuple[int, ...] | int, ...]:
    """A key equal for exactly the versions dpkg calls equal (1.0 and 1.00): for hashing."""
    parts: list[tuple[int, ...] | int] = []
    for letters, digits in re.findall(r"([^0-9]*)([0-9]*)", text):
        parts += [tuple(_order(c) for c in letters), int(digits or 0)]
    while parts[-2:] == [(), 0]:  # trailing empty runs weigh nothing
        del parts[-2:]
    return tuple(parts)


@total_ordering
class Version:
    """A release version (see the module docstring), ordered as dpkg orders it."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and _verrevcmp(self.text, other.text) == 0

    def __lt__(self, other: Version) -> bool:
        return _verrevcmp(self.text, other.text) < 0

    def __hash__(self) -> int:
        return hash(_canonical(self.text))

    def __repr__(self) -> str:
        return f"Version({self.text!r})"


def parse_version(text: str) -> Version:
    """The release version `text`; ValueError, with how to write it, unless it is one."""
    if RELEASE_VERSION.fullmatch(text):
        return Version(text)
    if RELEASE_VERSION.fullmatch(text.replace("-", "~", 1)):
        raise ValueError(
            f"{text!r} has a '-': a release is a native Debian package, whose version has "
            f"no '-' (dpkg would read a Debian revision, newer than {text.split('-')[0]}); "
            f"write a pre-release as {text.replace('-', '~', 1)}"
        )
    if re.match(r"^[0-9]+:", text):
        raise ValueError(f"{text!r} has an epoch: a release version has no epoch (no ':')")
    raise ValueError(
        f"{text!r} is not a release version like 1.4.0 or 1.5.0~rc.1 "
        "(a digit first, then letters, digits, '.', '+' or '~'; at most 128 characters)"
    )


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as release version `a` is older than, the same as, or newer than `b`."""
    va, vb = parse_version(a), parse_version(b)
    return (va > vb) - (va < vb)
