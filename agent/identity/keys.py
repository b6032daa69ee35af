"""The device's key on disk: `key.nk`, a rotation's `next.nk`, and which key was last let in.

Files in `key_dir` (0700, the agent's user), each written atomically (temp file,
fsync, rename, fsync of the directory) and read without following a link:
- `key.nk`: the current seed (0600), made on the agent's first start — never
  by the package, so an image cloned before its first boot shares no key;
- `next.nk`: a rotation's new seed, kept beside the old one until the fleet
  accepts it, then renamed over `key.nk` (a crash between any two steps leaves
  a key that still gets in: the old one until the switch, the new one after);
- `admitted`: the public key the fleet last let in (so the agent can tell
  "never let in: pending" from "refused after being let in: revoked").
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.durable import UnsafeFileError, atomic_write, fsync_dir, read_bounded
from harmony_core import nkey
from harmony_core.errors import IdentityError

__all__ = ["KeyStore"]

_MAX_SEED = 256


class KeyStore:
    """The device's keys in `key_dir`."""

    def __init__(self, key_dir: Path) -> None:
        self.dir = key_dir
        self.key = key_dir / "key.nk"
        self.next = key_dir / "next.nk"
        self._admitted = key_dir / "admitted"

    def _read_seed(self, path: Path) -> str | None:
        try:
            text = read_bounded(path, _MAX_SEED).decode("ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise IdentityError(f"cannot read the device key {path}: {e}") from e
        try:
            nkey.public_key(text)
        except nkey.NkeyError as e:
            raise IdentityError(
                f"{path} is not an nkey seed; move it away and the agent makes a new key "
                "(which the operator must approve again)"
            ) from e
        return text

    def seed(self) -> str | None:
        """The current seed, None before the first start made one."""
        return self._read_seed(self.key)

    def next_seed(self) -> str | None:
        """A rotation's new seed, while the fleet has not accepted it."""
        try:
            return self._read_seed(self.next)
        except IdentityError:
            self.next.unlink(missing_ok=True)  # a torn or foreign file: the rotation restarts
            return None

    def ensure(self) -> str:
        """The current seed, made (with its directory, 0700) when there is none."""
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(self.dir)
            if not stat.S_ISDIR(st.st_mode):
                raise IdentityError(f"{self.dir} is not a directory")
            if st.st_mode & 0o077:
                os.chmod(self.dir, 0o700)
            seed = self.seed()
            if seed is None:
                seed = nkey.new_seed("user")
                atomic_write(self.key, seed.encode() + b"\n", 0o600)
            return seed
        except (OSError, UnsafeFileError) as e:
            raise IdentityError(f"cannot make the device key in {self.dir}: {e}") from e

    def begin_rotation(self) -> str:
        """The new seed of a rotation (made once; asked again, the same one)."""
        seed = self.next_seed()
        if seed is None:
            seed = nkey.new_seed("user")
            atomic_write(self.next, seed.encode() + b"\n", 0o600)
        return seed

    def finish_rotation(self) -> None:
        """The fleet accepted the new key: it becomes the key (the old one is gone)."""
        if self.next.exists():
            os.replace(self.next, self.key)
            fsync_dir(self.dir)

    def abandon_rotation(self) -> None:
        """The fleet did not take the new key (no rotation asked, or its window passed)."""
        if self.next.exists():
            self.next.unlink()
            fsync_dir(self.dir)

    def admitted(self) -> str | None:
        """The public key the fleet last let in, if any."""
        try:
            text = read_bounded(self._admitted, 128).decode("ascii", "replace").strip()
        except OSError:
            return None
        return text or None

    def mark_admitted(self, public_key: str) -> None:
        if self.admitted() != public_key:
            atomic_write(self._admitted, public_key.encode() + b"\n", 0o600)
