"""The operator's signing key on disk (PEM), and the PEM forms `keygen` writes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harmony_core.errors import UpgradeError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = ["load_signing_key", "private_pem", "public_pem"]


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
