"""Debian's names for CPU architectures (amd64, arm64, armhf, ...). Pure."""

from __future__ import annotations

import platform

__all__ = ["debian_arch"]

_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "armhf",
    "armv6l": "armel",
    "i686": "i386",
    "i386": "i386",
    "riscv64": "riscv64",
    "ppc64le": "ppc64el",
    "s390x": "s390x",
}


def debian_arch(machine: str | None = None) -> str:
    """Debian's name for `machine` (default: this CPU's `uname -m`)."""
    m = machine or platform.machine()
    return _ARCH.get(m, m.lower())
