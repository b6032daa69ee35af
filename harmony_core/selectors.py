"""Kubernetes label selectors, parsed and matched as kubectl's `-l` does; heartbeat staleness. Pure.

The grammar (k8s.io/apimachinery `labels.Parse`, reimplemented here):

    selector    ::= requirement ("," requirement)*      (empty: every label set)
    requirement ::= ["!"] KEY [ ("in" | "notin") "(" VALUES ")" | ("=" | "==" | "!=") VALUE
                              | (">" | "<") INTEGER ]

`k` alone means the key exists, `!k` that it does not; `k!=v` and `k notin (...)`
also match a label set without `k`. Keys and values are Kubernetes label syntax.
A bad selector raises ValueError with the message kubectl prints for it (the
Kubernetes v1.30 wording), e.g. `unable to parse requirement: <nil>: Invalid
value: "a$b": name part must consist of ...`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DeviceStatus",
    "Operator",
    "Requirement",
    "Selector",
    "device_status",
    "match_labels",
    "parse_selector",
]

DeviceStatus = Literal["Ready", "Stale", "Offline", "Stopped", "Unknown"]

# --- label syntax, with the messages Kubernetes' validation gives ------------------------------

_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_NAME_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)
_VALUE_FMT = f"({_NAME_FMT})?"
_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
    "or '.', and must start and end with an alphanumeric character"
)
_DNS_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN_FMT = _DNS_LABEL_FMT + r"(\." + _DNS_LABEL_FMT + ")*"
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character"
)
_NAME_RE = re.compile(_NAME_FMT)
_VALUE_RE = re.compile(_VALUE_FMT)
_SUBDOMAIN_RE = re.compile(_SUBDOMAIN_FMT)
_INT64 = re.compile(r"[+-]?[0-9]+")


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    shown = "".join(("" if i == 0 else " or ") + f"'{e}', " for i, e in enumerate(examples))
    return f"{msg} (e.g. {shown}regex used for validation is '{fmt}')"


def _too_long(n: int) -> str:
    return f"must be no more than {n} characters"


def _blen(s: str) -> int:
    """Length in bytes, as Go counts (an undecodable argv byte is one byte)."""
    try:
        return len(s.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return len(s.encode("utf-8", "surrogatepass"))


def _key_problems(key: str) -> list[str]:
    """Kubernetes' IsQualifiedName: why `key` is not a label key."""
    parts = key.split("/")
    errs: list[str] = []
    if len(parts) > 2:
        return [
            "a qualified name "
            + _regex_error(_NAME_MSG, _NAME_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            if _blen(prefix) > 253:
                errs.append("prefix part " + _too_long(253))
            if not _SUBDOMAIN_RE.fullmatch(prefix):
                errs.append(
                    "prefix part " + _regex_error(_SUBDOMAIN_MSG, _SUBDOMAIN_FMT, "example.com")
                )
    if not name:
        errs.append("name part must be non-empty")
    elif _blen(name) > 63:
        errs.append("name part " + _too_long(63))
    if not _NAME_RE.fullmatch(name):
        errs.append(
            "name part " + _regex_error(_NAME_MSG, _NAME_FMT, "MyName", "my.name", "123-abc")
        )
    return errs


def _value_problems(value: str) -> list[str]:
    """Kubernetes' IsValidLabelValue."""
    errs: list[str] = []
    if _blen(value) > 63:
        errs.append(_too_long(63))
    if not _VALUE_RE.fullmatch(value):
        errs.append(_regex_error(_VALUE_MSG, _VALUE_FMT, "MyValue", "my_value", "12345"))
    return errs


_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
            "\v": "\\v", '"': '\\"', "\\": "\\\\"}  # fmt: skip


def _quote(s: str) -> str:
    """Go's %q: what kubectl shows a bad value as."""
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # a byte of argv that was not UTF-8
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _as_int64(text: str) -> int | None:
    if not _INT64.fullmatch(text):
        return None
    n = int(text)
    return n if -(2**63) <= n < 2**63 else None


# --- the model ------------------------------------------------------------------------------

Operator = Literal["=", "==", "!=", "in", "notin", "exists", "!", "gt", "lt"]
_SYMBOL: dict[str, str] = {"=": "=", "==": "==", "!=": "!=", "gt": ">", "lt": "<"}


@dataclass(frozen=True)
class Requirement:
    """One `key op values` of a selector; `values` sorted and distinct, as Kubernetes keeps them."""

    key: str
    op: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        if self.op in ("in", "=", "=="):
            return has and labels[self.key] in self.values
        if self.op in ("notin", "!="):
            return not has or labels[self.key] not in self.values
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        have = _as_int64(labels[self.key]) if has else None
        want = _as_int64(self.values[0]) if len(self.values) == 1 else None
        if have is None or want is None:
            return False
        return have > want if self.op == "gt" else have < want

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!":
            return "!" + self.key
        if self.op in ("in", "notin"):
            return f"{self.key} {self.op} ({','.join(self.values)})"
        return f"{self.key}{_SYMBOL[self.op]}{self.values[0]}"


@dataclass(frozen=True)
class Selector:
    """All requirements must match; no requirement matches every label set."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        """Kubernetes' canonical form: requirements sorted by key, values sorted."""
        return ",".join(str(r) for r in self.requirements)


def match_labels(selector: Selector | Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether `labels` match; a plain mapping is matchLabels (every pair present and equal)."""
    if isinstance(selector, Selector):
        return selector.matches(labels)
    return all(k in labels and labels[k] == v for k, v in selector.items())


# --- the lexer and the parser ---------------------------------------------------------------

_WHITESPACE = " \t\r\n"
_SPECIAL = "=!(),><"
_TOKENS = {
    ")": "close", ",": "comma", "!": "not", "==": "eqeq", "=": "eq", ">": "gt", "in": "in",
    "<": "lt", "!=": "ne", "notin": "notin", "(": "open",
}  # fmt: skip
_IDENT, _END = "ident", "end"


def _lex(text: str) -> list[tuple[str, str]]:
    """(token, literal) pairs, ending with the end token; the longest operator wins."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _WHITESPACE:
            i += 1
        if i >= n:
            out.append((_END, ""))
            return out
        if text[i] in _SPECIAL:
            j, best = i, None
            while j < n and text[j] in _SPECIAL:
                if text[i : j + 1] in _TOKENS:
                    best = j + 1
                elif best is not None:
                    break
                j += 1
            assert best is not None  # every single special character is a token
            out.append((_TOKENS[text[i:best]], text[i:best]))
            i = best
            continue
        j = i
        while j < n and text[j] not in _SPECIAL and text[j] not in _WHITESPACE:
            j += 1
        word = text[i:j]
        out.append((_TOKENS[word] if word in ("in", "notin") else _IDENT, word))
        i = j


class _Parser:
    def __init__(self, text: str) -> None:
        self.items = _lex(text)
        self.pos = 0

    def peek(self, values: bool = True) -> tuple[str, str]:
        return self._token(self.items[self.pos], values)

    def take(self, values: bool = True) -> tuple[str, str]:
        self.pos += 1
        return self._token(self.items[self.pos - 1], values)

    @staticmethod
    def _token(item: tuple[str, str], values: bool) -> tuple[str, str]:
        # Where values are read, `in` and `notin` are plain words (`in in (in)` is valid).
        tok, lit = item
        return (_IDENT, lit) if values and tok in ("in", "notin") else (tok, lit)

    def parse(self) -> Selector:
        reqs: list[Requirement] = []
        while True:
            tok, lit = self.peek()
            if tok == _END:
                break
            if tok not in (_IDENT, "not"):
                raise ValueError(f"found '{lit}', expected: !, identifier, or 'end of string'")
            try:
                reqs.append(self.requirement())
            except ValueError as e:
                raise ValueError(f"unable to parse requirement: {e}") from None
            tok, lit = self.take()
            if tok == _END:
                break
            if tok != "comma":
                raise ValueError(f"found '{lit}', expected: ',' or 'end of string'")
            tok, lit = self.peek()
            if tok not in (_IDENT, "not"):
                raise ValueError(f"found '{lit}', expected: identifier after ','")
        return Selector(tuple(sorted(reqs, key=lambda r: r.key)))

    def requirement(self) -> Requirement:
        op: Operator | None = None
        tok, lit = self.take()
        if tok == "not":
            op = "!"
            tok, lit = self.take()
        if tok != _IDENT:
            raise ValueError(f"found '{lit}', expected: identifier")
        key = lit
        if problems := _key_problems(key):
            raise ValueError(f"<nil>: Invalid value: {_quote(key)}: {'; '.join(problems)}")
        if op == "!":
            return Requirement(key, "!")
        if self.peek()[0] in (_END, "comma"):
            return Requirement(key, "exists")
        tok, lit = self.take(values=False)
        ops: dict[str, Operator] = {
            "in": "in", "notin": "notin", "eq": "=", "eqeq": "==", "ne": "!=", "gt": "gt",
            "lt": "lt",
        }  # fmt: skip
        if tok not in ops:
            raise ValueError(f"found '{lit}', expected: in, notin, =, ==, !=, gt, lt")
        op = ops[tok]
        values = self.value_set() if op in ("in", "notin") else self.exact_value()
        return _checked(key, op, tuple(sorted(values)))

    def value_set(self) -> set[str]:
        tok, lit = self.take()
        if tok != "open":
            raise ValueError(f"found '{lit}' expected: '('")
        tok, lit = self.peek()
        if tok == "close":
            self.take()
            return {""}
        if tok not in (_IDENT, "comma"):
            raise ValueError(f"found '{lit}', expected: ',', ')' or identifier")
        out: set[str] = set()
        while True:
            tok, lit = self.take()
            if tok == _IDENT:
                out.add(lit)
                nxt, nlit = self.peek()
                if nxt == "close":
                    self.take()
                    return out
                if nxt != "comma":
                    raise ValueError(f"found '{nlit}', expected: ',' or ')'")
            elif tok == "comma":
                if not out:
                    out.add("")  # "(,a)": an empty value first
                nxt, _ = self.peek()
                if nxt == "close":
                    out.add("")  # "(a,)"
                    self.take()
                    return out
                if nxt == "comma":
                    self.take()
                    out.add("")  # "(a,,b)"
            else:
                raise ValueError(f"found '{lit}', expected: ',', or identifier")

    def exact_value(self) -> set[str]:
        if self.peek()[0] in (_END, "comma"):
            return {""}
        tok, lit = self.take()
        if tok != _IDENT:
            raise ValueError(f"found '{lit}', expected: identifier")
        return {lit}


def _checked(key: str, op: Operator, values: tuple[str, ...]) -> Requirement:
    """Kubernetes' NewRequirement checks on the values, errors aggregated as it does."""
    errs: list[str] = []
    if op in ("gt", "lt"):
        errs += [
            f"values[{i}]: Invalid value: {_quote(v)}: "
            "for 'Gt', 'Lt' operators, the value must be an integer"
            for i, v in enumerate(values)
            if _as_int64(v) is None
        ]
    for i, v in enumerate(values):
        if problems := _value_problems(v):
            errs.append(f"values[{i}][{key}]: Invalid value: {_quote(v)}: {'; '.join(problems)}")
    distinct = list(dict.fromkeys(errs))
    if len(distinct) == 1:
        raise ValueError(distinct[0])
    if distinct:
        raise ValueError("[" + ", ".join(distinct) + "]")
    return Requirement(key, op, values)


def parse_selector(text: str) -> Selector:
    """The selector `text` says, as kubectl reads `-l`; ValueError with kubectl's message."""
    # Go reads a NUL byte as the end of the string.
    return _Parser(text.split("\x00", 1)[0]).parse()


# --- staleness ------------------------------------------------------------------------------


def device_status(age_s: float | None, interval_s: float | None, state: str | None) -> DeviceStatus:
    """Contract §3: Ready ≤ 4 x interval; Stale ≤ max(5 min, 20 x interval); Offline beyond;
    Stopped when the last heartbeat says `stopping`."""
    if age_s is None or interval_s is None:
        return "Unknown"
    if state == "stopping":
        return "Stopped"
    if age_s <= 4 * interval_s:
        return "Ready"
    if age_s <= max(300.0, 20 * interval_s):
        return "Stale"
    return "Offline"
