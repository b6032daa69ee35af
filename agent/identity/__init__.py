"""The device's own identity (ADR-023): its key, how it logs in with it, rotation.

`keys` keeps the Ed25519 nkey under `[identity] key_dir` (made on the first
start, 0600, never leaving the device), with a rotation's new key beside it
until the fleet accepts it; `login` is what the bus asks before each connect
(which key, the login claim), and hears whether it was let in; `service` is the
daemon part that answers `harmony-fleet rotate`.
"""

from __future__ import annotations

from agent.identity.keys import KeyStore
from agent.identity.login import AuthState, DeviceLogin
from agent.identity.service import IdentityService

__all__ = ["AuthState", "DeviceLogin", "IdentityService", "KeyStore"]
