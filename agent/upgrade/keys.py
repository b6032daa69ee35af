"""Trusted and signing keys on disk (PEM files); the edge around `envelope`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import UpgradeError
from agent.upgrade.envelope import keyid_of

if TYPE_CHECKING:
    # cryptography costs ~8 MB of RSS: imported where a key is read, not with the daemon.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "load_signing_key",
    "load_trusted_keys",
    "private_pem",
    "public_pem",
]

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


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The operator's Ed25519 private key (PEM, unencrypted) from `path`."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise UpgradeError(f"{path}: cannot read an unencrypted PEM private key ({e})") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise UpgradeError(f"{path}: not an Ed25519 key; make one with `harmony-fleet keygen`")
    return key


def private_pem(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def public_pem(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
