"""Releases in the artifacts object store: publish one with its signed manifest, fetch one checked.

The I/O edge around `manifest`: the artifact `harmony-agent_<v>_<arch>.deb` and,
beside it, object `<artifact>.manifest` (a DSSE envelope) in `agent-artifacts`.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harmony_core.bus import Bus
from harmony_core.contracts import ReleaseManifest, utcnow
from harmony_core.envelope import VerifyingKey
from harmony_core.errors import ObjectMissingError, UpgradeError
from harmony_core.settings import NatsSection
from harmony_fleet.artifacts import artifact_name, inspect_deb
from harmony_fleet.manifest import (
    MAX_MANIFEST_BYTES,
    artifact_replaced,
    check_artifact,
    manifest_name,
    new_manifest,
    sign_manifest,
    verify_manifest,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["Published", "fetch_release", "publish_release"]


@dataclass(frozen=True)
class Published:
    """What `publish_release` stored: the artifact's manifest and the manifest's object name."""

    manifest: ReleaseManifest
    manifest_object: str


class _TooLargeError(Exception):
    """An object holds more bytes than we read of it."""


class _Bounded(io.BytesIO):
    """A buffer that refuses to grow past `limit` bytes: an object is never read whole."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def write(self, data: bytes, /) -> int:  # type: ignore[override]
        if self.tell() + len(data) > self.limit:
            raise _TooLargeError
        return super().write(data)


async def publish_release(
    bus: Bus, n: NatsSection, path: Path, key: Ed25519PrivateKey
) -> Published:
    """Upload the .deb at `path` and its manifest, signed by `key` over the very bytes read.

    The file is read once: what is inspected, digested, signed and uploaded is one buffer.
    """
    data = path.read_bytes()
    info = inspect_deb(io.BytesIO(data))
    if info.package != "harmony-agent":
        raise UpgradeError(f"{path} is package {info.package!r}, not harmony-agent")
    manifest = new_manifest(info, utcnow())
    envelope = sign_manifest(manifest, key)
    size = await bus.object_upload(n.artifacts_bucket, info.name, io.BytesIO(data))
    if size != info.size:
        raise UpgradeError(f"uploaded {size} bytes of {info.size}; try again")
    # After the artifact: cut short between the two, the old manifest refuses the new bytes.
    name = manifest_name(info.name)
    await bus.object_upload(n.artifacts_bucket, name, io.BytesIO(envelope))
    return Published(manifest, name)


async def fetch_release(
    bus: Bus, n: NatsSection, version: str, arch: str, keys: Mapping[str, VerifyingKey]
) -> ReleaseManifest:
    """The verified manifest of `version` for `arch`, once the stored artifact matches it.

    UpgradeError saying what to do when the manifest is missing, does not verify
    against `keys` or names another release, or the artifact is not the published one.
    """
    name = artifact_name(version, arch)
    manifest = await _manifest(bus, n, name, version, arch, keys)
    buf = _Bounded(manifest.size)
    try:
        await bus.object_download(n.artifacts_bucket, name, buf)
    except ObjectMissingError as e:
        raise UpgradeError(
            f"artifact {n.artifacts_bucket}/{name} is missing (its manifest is there); "
            f"publish it again: harmony-fleet publish-artifact {name} --key KEY"
        ) from e
    except _TooLargeError as e:
        raise artifact_replaced(manifest, f"larger than its {manifest.size} bytes") from e
    data = buf.getvalue()
    check_artifact(manifest, hashlib.sha256(data).hexdigest(), len(data))
    info = inspect_deb(io.BytesIO(data))
    if (info.package, info.version, info.arch) != ("harmony-agent", version, arch):
        raise UpgradeError(f"{name} holds {info.package} {info.version} {info.arch}")
    return manifest


async def _manifest(
    bus: Bus,
    n: NatsSection,
    name: str,
    version: str,
    arch: str,
    keys: Mapping[str, VerifyingKey],
) -> ReleaseManifest:
    where = f"{n.artifacts_bucket}/{manifest_name(name)}"
    buf = _Bounded(MAX_MANIFEST_BYTES)
    try:
        await bus.object_download(n.artifacts_bucket, manifest_name(name), buf)
    except ObjectMissingError as e:
        raise UpgradeError(
            f"{name} is not published with a signed release manifest ({where} is missing); "
            f"publish it first: harmony-fleet publish-artifact {name} --key KEY"
        ) from e
    except _TooLargeError as e:
        raise UpgradeError(
            f"the release manifest {where} is larger than {MAX_MANIFEST_BYTES} bytes: not one "
            f"of ours; publish it again: harmony-fleet publish-artifact {name} --key KEY"
        ) from e
    try:
        return verify_manifest(buf.getvalue(), keys, version=version, arch=arch)
    except UpgradeError as e:
        raise UpgradeError(
            f"the release manifest {where} is refused: {e}; publish it again: "
            f"harmony-fleet publish-artifact {name} --key KEY, or trust its publisher's "
            "public key with --trusted-keys DIR"
        ) from e
