"""Text a device wrote, made safe to print on the operator's terminal.

A journal line, a hostname or an upgrade reason comes from the device: printed
raw, `ESC ]52;c;…` would write the operator's clipboard and `ESC ]0;…` retitle
the window. Every control character (C0 but the tab, DEL, C1) and the Unicode
line separators and bidi overrides are shown as escapes instead: `\\x1b`,
`\\x9b`, `\\u202e`. A newline is escaped too, so one record is one line and no
device can print a line that looks like another device's.
"""

from __future__ import annotations

import re

__all__ = ["escape_controls"]

_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c <= 0xFF else f"\\u{c:04x}"


def escape_controls(text: str) -> str:
    """`text` with each unsafe character replaced by its `\\xNN` / `\\uNNNN` escape."""
    return _UNSAFE.sub(_escape, text)
