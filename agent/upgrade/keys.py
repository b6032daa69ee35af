"""The trusted upgrade keys on disk (PEM files); the edge around `envelope`.

Whoever can write the keys directory can sign upgrades that root installs, so
keys count only from places no one else can write (`agent.permissions`, ssh's
StrictModes): a directory that is unsafe, or below an unsafe one, yields no key
at all; an unsafe key file is skipped. Each refusal is one problem line.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from agent.durable import read_bounded
from agent.permissions import unsafe_ancestor, unsafe_file
from harmony_core.envelope import keyid_of

if TYPE_CHECKING:
    # cryptography costs ~8 MB of RSS: imported where a key is read, not with the daemon.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PublicKey,
    )

__all__ = ["load_trusted_keys"]

_MAX_KEY_FILE = 16 * 1024


def _unsafe_dirs(real: Path, dir_fd: int) -> list[str]:
    """Why the keys directory `real` (open as `dir_fd`) or a directory above it is unsafe."""
    if problem := unsafe_file(str(real), os.fstat(dir_fd)):
        return [f"trusted keys refused: {problem}"]
    for parent in real.parents:
        try:
            st = os.stat(parent)
        except OSError as e:
            return [f"trusted keys refused: {parent}: {e.strerror}"]
        if problem := unsafe_ancestor(str(parent), st):
            return [f"trusted keys refused: {problem} (it holds {real})"]
    return []


def load_trusted_keys(directory: Path) -> tuple[dict[str, Ed25519PublicKey], list[str]]:
    """Every Ed25519 public key in `directory`/*.pub by keyid, and one line per problem."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    keys: dict[str, Ed25519PublicKey] = {}
    real = Path(os.path.realpath(directory))  # a symlinked directory is judged where it points
    try:
        dir_fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        return keys, [
            f"{directory}: cannot be opened as a directory ({e.strerror}); "
            "put the operator's Ed25519 public key (*.pub) there (upgrade.trusted_keys_dir)"
        ]
    try:
        if problems := _unsafe_dirs(real, dir_fd):
            return keys, problems
        for name in sorted(n for n in os.listdir(dir_fd) if n.endswith(".pub")):
            path = directory / name
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    problems.append(f"{path}: a symlink, not followed; put the key file here")
                    continue
                if problem := unsafe_file(str(path), st):
                    problems.append(f"key skipped: {problem}")
                    continue
                # No one else can write the directory, so what was checked is what is read.
                key = load_pem_public_key(read_bounded(name, _MAX_KEY_FILE, dir_fd=dir_fd))
            except (OSError, ValueError) as e:
                problems.append(f"{path}: cannot be read as a PEM public key ({e})")
                continue
            if not isinstance(key, Ed25519PublicKey):
                problems.append(f"{path}: not an Ed25519 key")
                continue
            keys[keyid_of(key)] = key
    finally:
        os.close(dir_fd)
    return keys, problems
