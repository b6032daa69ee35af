"""The operator's signing key on disk (PEM), and the PEM forms `keygen` writes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harmony_core.envelope import keyid_of
from harmony_core.errors import UpgradeError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = ["load_public_keys", "load_signing_key", "private_pem", "public_pem"]

_MAX_KEY_FILE = 16 * 1024


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


def load_public_keys(directory: Path) -> dict[str, Ed25519PublicKey]:
    """Every Ed25519 public key in `directory`/*.pub (PEM) by keyid; UpgradeError on any other."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        paths = sorted(directory.glob("*.pub")) if directory.is_dir() else None
    except OSError as e:
        raise UpgradeError(f"{directory}: cannot be listed ({e.strerror})") from e
    if not paths:
        raise UpgradeError(f"{directory}: no *.pub key there; copy the publisher's public key in")
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                key = load_pem_public_key(f.read(_MAX_KEY_FILE))
        except (OSError, ValueError) as e:
            raise UpgradeError(f"{path}: cannot read a PEM public key ({e})") from e
        if not isinstance(key, Ed25519PublicKey):
            raise UpgradeError(f"{path}: not an Ed25519 key; see `harmony-fleet keygen`")
        keys[keyid_of(key)] = key
    return keys


def private_pem(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def public_pem(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
