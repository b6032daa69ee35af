"""Kubernetes label syntax and the device-id form (agent config and selectors share it). Pure."""

from __future__ import annotations

import re

__all__ = ["DNS1123_LABEL", "RESERVED_LABEL_PREFIX", "label_problems"]

RESERVED_LABEL_PREFIX = "harmony.nationtech.io/"

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def label_problems(key: str, value: str, *, allow_reserved: bool = False) -> list[str]:
    """Why `key = value` is not a Kubernetes label (empty when it is one)."""
    problems: list[str] = []
    prefix, sep, name = key.rpartition("/")
    if sep and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        problems.append(
            "the prefix before '/' must be a DNS subdomain (lowercase a-z, 0-9, '-', '.')"
        )
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        problems.append(
            "a label name is 1-63 characters of A-Z a-z 0-9 - _ . "
            "and starts and ends with a letter or digit"
        )
    if sep and not allow_reserved and (prefix + "/") == RESERVED_LABEL_PREFIX:
        problems.append(
            f"the prefix {RESERVED_LABEL_PREFIX!r} is reserved for automatic labels; "
            "use another prefix or none"
        )
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        problems.append(
            "a label value is empty or 1-63 characters of A-Z a-z 0-9 - _ . "
            "starting and ending with a letter or digit"
        )
    return problems
