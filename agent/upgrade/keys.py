"""The trusted upgrade keys on disk (PEM files); the edge around `envelope`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from harmony_core.envelope import keyid_of

if TYPE_CHECKING:
    # cryptography costs ~8 MB of RSS: imported where a key is read, not with the daemon.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PublicKey,
    )

__all__ = ["load_trusted_keys"]

_MAX_KEY_FILE = 16 * 1024


def load_trusted_keys(directory: Path) -> tuple[dict[str, Ed25519PublicKey], list[str]]:
    """Every Ed25519 public key in `directory`/*.pub by keyid, and one line per file skipped."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    keys: dict[str, Ed25519PublicKey] = {}
    problems: list[str] = []
    try:
        files = sorted(directory.glob("*.pub"))
    except OSError as e:
        return keys, [f"{directory}: {e}"]
    for path in files:
        try:
            with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as fh:
                data = fh.read(_MAX_KEY_FILE + 1)
            key = load_pem_public_key(data)
        except (OSError, ValueError) as e:
            problems.append(f"{path}: cannot be read as a PEM public key ({e})")
            continue
        if not isinstance(key, Ed25519PublicKey):
            problems.append(f"{path}: not an Ed25519 key")
            continue
        keys[keyid_of(key)] = key
    return keys, problems
