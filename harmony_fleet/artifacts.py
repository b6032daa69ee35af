"""Release artifacts on the operator side: read a .deb's control fields, name and digest it.

A .deb is an `ar` archive whose `control.tar.*` holds `./control`; reading it
here needs neither dpkg nor a Debian machine.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from typing import IO

from harmony_core.errors import UpgradeError
from harmony_core.versions import parse_version

__all__ = ["ArtifactInfo", "artifact_name", "inspect_deb"]


@dataclass(frozen=True)
class ArtifactInfo:
    package: str
    version: str
    arch: str
    sha256: str
    size: int

    @property
    def name(self) -> str:
        return artifact_name(self.version, self.arch)


def artifact_name(version: str, arch: str) -> str:
    """The object name of contract §3: harmony-agent_<version>_<arch>.deb."""
    return f"harmony-agent_{version}_{arch}.deb"


def _ar_members(data: bytes) -> dict[str, bytes]:
    if not data.startswith(b"!<arch>\n"):
        raise UpgradeError("not a .deb (no ar header)")
    out: dict[str, bytes] = {}
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode(errors="replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode().strip())
        except ValueError as e:
            raise UpgradeError("not a .deb (bad ar member header)") from e
        out[name] = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
    return out


def _control_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line[:1].isspace() or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def inspect_deb(f: IO[bytes]) -> ArtifactInfo:
    """Package, version, architecture, sha256 and size of the .deb in `f`.

    UpgradeError unless its version is a release version (harmony_core.versions):
    what devices would refuse, or order differently from dpkg, is never published.
    """
    data = f.read()
    members = _ar_members(data)
    control = next((v for k, v in members.items() if k.startswith("control.tar")), None)
    if control is None:
        raise UpgradeError("not a .deb (no control.tar member)")
    try:
        with tarfile.open(fileobj=io.BytesIO(control), mode="r:*") as t:
            m = next((m for m in t if m.name in ("./control", "control")), None)
            raw = t.extractfile(m) if m is not None else None
            text = raw.read().decode() if raw is not None else ""
    except (tarfile.TarError, UnicodeDecodeError) as e:
        raise UpgradeError(f"cannot read the .deb's control file: {e}") from e
    fields = _control_fields(text)
    missing = [k for k in ("Package", "Version", "Architecture") if not fields.get(k)]
    if missing:
        raise UpgradeError(f"the .deb's control file lacks {', '.join(missing)}")
    try:
        parse_version(fields["Version"])
    except ValueError as e:
        raise UpgradeError(f"the .deb's Version: {e}; rebuild it (make deb VERSION=...)") from e
    return ArtifactInfo(
        fields["Package"],
        fields["Version"],
        fields["Architecture"],
        hashlib.sha256(data).hexdigest(),
        len(data),
    )
