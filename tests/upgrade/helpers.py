"""Builders shared by the upgrade tests: keys, signed requests, small real .deb files."""

from __future__ import annotations

import hashlib
import subprocess
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harmony_core.contracts import Artifact, UpgradeRequest
from harmony_fleet.keys import public_pem
from harmony_fleet.signing import sign_request

__all__ = ["NOW", "build_deb", "make_request", "signed", "write_pub"]

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def write_pub(key: Ed25519PrivateKey, directory: Path, name: str = "operator") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.pub"
    path.write_bytes(public_pem(key.public_key()))
    return path


def make_request(**over: Any) -> UpgradeRequest:
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "device_id": "dev-1",
        "target_version": "0.2.0",
        "arch": "amd64",
        "artifact": Artifact(bucket="agent-artifacts", name="harmony-agent_0.2.0_amd64.deb",
                             sha256="a" * 64, size=1000),
        "issued_at": NOW - timedelta(minutes=1),
        "expires_at": NOW + timedelta(hours=1),
    }
    fields.update(over)
    return UpgradeRequest(**fields)


def signed(req: UpgradeRequest, key: Ed25519PrivateKey) -> bytes:
    return sign_request(req, key).model_dump_json().encode()


def build_deb(
    out_dir: Path,
    version: str,
    *,
    arch: str = "amd64",
    files: dict[str, str] | None = None,
    extra_root: dict[str, str] | None = None,
) -> tuple[Path, str, int]:
    """A real .deb (dpkg-deb --build) with a release dir; returns path, sha256, size."""
    root = out_dir / f"root-{version}"
    rel = root / "opt" / "harmony-agent" / "releases" / version
    rel.mkdir(parents=True)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(textwrap.dedent(f"""\
        Package: harmony-agent
        Version: {version}
        Architecture: {arch}
        Maintainer: test <test@example.invalid>
        Description: test build
        """))
    for name, text in (files or {"VERSION": version + "\n"}).items():
        p = rel / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for name, text in (extra_root or {}).items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    deb = out_dir / f"harmony-agent_{version}_{arch}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    data = deb.read_bytes()
    return deb, hashlib.sha256(data).hexdigest(), len(data)
