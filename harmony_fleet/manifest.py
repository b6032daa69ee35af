"""The signed release manifest: what the operator built, as the operator saw it. Pure: no I/O.

Whoever can write the object store can replace an artifact; only the operator's
key can sign a manifest. So `publish-artifact` signs the size and sha256 of the
file at hand (as TUF's targets metadata does), and `upgrade` signs a request only
from a manifest that verifies against a trusted key, for the release asked for,
and only once the artifact in the store is that file again.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import ValidationError

from harmony_core.contracts import ReleaseManifest, format_ts
from harmony_core.envelope import MAX_ENVELOPE_BYTES, VerifyingKey, verify_payload
from harmony_core.errors import UpgradeError, UpgradeRejectedError
from harmony_fleet.artifacts import ArtifactInfo, artifact_name
from harmony_fleet.signing import sign_payload

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "MANIFEST_PAYLOAD_TYPE",
    "MAX_MANIFEST_BYTES",
    "artifact_replaced",
    "check_artifact",
    "manifest_name",
    "new_manifest",
    "published_on",
    "sign_manifest",
    "verify_manifest",
]

# Its own type: a signed upgrade request is never read as a manifest, nor the reverse.
MANIFEST_PAYLOAD_TYPE = "application/vnd.harmony.release-manifest.v1+json"
# A manifest is a few hundred bytes; a larger object is not ours and is not read whole.
MAX_MANIFEST_BYTES = MAX_ENVELOPE_BYTES


def manifest_name(artifact: str) -> str:
    """The object holding the manifest of `artifact`, beside it in the same store."""
    return f"{artifact}.manifest"


def published_on(manifest: ReleaseManifest) -> str:
    """When it was published, to the second: 2026-11-26T12:00:03Z."""
    return format_ts(manifest.published_at)[:19] + "Z"


def new_manifest(info: ArtifactInfo, published_at: datetime) -> ReleaseManifest:
    """The manifest of the built file `info` describes."""
    return ReleaseManifest(
        name=info.name,
        version=info.version,
        arch=info.arch,
        size=info.size,
        sha256=info.sha256,
        published_at=published_at,
    )


def sign_manifest(manifest: ReleaseManifest, key: Ed25519PrivateKey) -> bytes:
    """The DSSE envelope (JSON) of `manifest` signed by `key`, as stored."""
    body = manifest.model_dump_json(exclude_none=True).encode()
    return sign_payload(body, MANIFEST_PAYLOAD_TYPE, key).model_dump_json().encode()


def verify_manifest(
    data: bytes, keys: Mapping[str, VerifyingKey], *, version: str, arch: str
) -> ReleaseManifest:
    """The manifest in `data` if a key in `keys` signed it and it is of `version` for `arch`.

    UpgradeError saying why otherwise. A genuine manifest of another release, put
    in this one's place, is refused like a forged one.
    """
    try:
        body, _ = verify_payload(data, keys, MANIFEST_PAYLOAD_TYPE, what="manifest")
    except UpgradeRejectedError as e:
        raise UpgradeError(str(e)) from e
    try:
        m = ReleaseManifest.model_validate_json(body)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'payload'}: {err['msg']}" for err in e.errors()[:3]
        )
        raise UpgradeError(f"the signed payload is not a release manifest: {problems}") from e
    want = artifact_name(version, arch)
    if (m.name, m.version, m.arch) != (want, version, arch):
        raise UpgradeError(f"it is the manifest of {m.name} ({m.version}, {m.arch}), not of {want}")
    return m


def artifact_replaced(manifest: ReleaseManifest, detail: str) -> UpgradeError:
    """The error for an artifact in the store that is not the one `manifest` signed."""
    return UpgradeError(
        f"the artifact in the store is not the one published on {published_on(manifest)} "
        f"({detail}); publish it again: harmony-fleet publish-artifact {manifest.name} --key KEY"
    )


def check_artifact(manifest: ReleaseManifest, sha256: str, size: int) -> None:
    """UpgradeError unless the artifact's digest and size are those the manifest signed."""
    if (sha256, size) != (manifest.sha256, manifest.size):
        raise artifact_replaced(
            manifest,
            f"sha256 {sha256[:12]}…, {size} bytes; "
            f"published: {manifest.sha256[:12]}…, {manifest.size} bytes",
        )
