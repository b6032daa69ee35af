"""The .debs: control data, layout, completeness, architecture, lintian, reproducibility."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from tests.packaging.debbuild import (
    REPO,
    build_deb,
    build_deb_uncached,
    newer_version,
    source_snapshot,
    source_version,
)

# e_machine of the ELF header, per Debian architecture.
ELF_MACHINE = {"amd64": 62, "arm64": 183}


def field(deb: Path, name: str) -> str:
    out = subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True)
    return out.stdout.strip()


def members(deb: Path) -> dict[str, tarfile.TarInfo]:
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.removeprefix("./").rstrip("/"): m for m in tar.getmembers()}


def elf_machines(deb: Path) -> dict[str, int]:
    """path -> e_machine of every ELF file in the package (found by magic, not by name)."""
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True).stdout
    out: dict[str, int] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m) if m.isfile() else None
            if f is None:
                continue
            head = f.read(20)
            if head[:4] == b"\x7fELF":
                little = head[5] == 1  # EI_DATA: 1 = little-endian
                out[m.name] = int.from_bytes(head[18:20], "little" if little else "big")
    return out


def test_control_fields(amd64_deb: Path) -> None:
    version = source_version()
    assert amd64_deb.name == f"harmony-agent_{version}_amd64.deb"
    assert field(amd64_deb, "Package") == "harmony-agent"
    assert field(amd64_deb, "Version") == version
    assert field(amd64_deb, "Architecture") == "amd64"
    depends = [d.strip() for d in field(amd64_deb, "Depends").split(",")]
    for needed in (
        "python3 (>= 3.11)",
        "python3 (<< 3.12)",
        "python3-systemd",
        "python3-zstandard (>= 0.20)",
        "python3-nacl (>= 1.4)",
        "adduser",
    ):
        assert needed in depends


def test_layout(amd64_deb: Path) -> None:
    m = members(amd64_deb)
    rel = f"opt/harmony-agent/releases/{source_version()}"
    for path in (f"{rel}/.complete", f"{rel}/agent/cli.py", f"{rel}/agent/version.py",
                 f"{rel}/harmony_core/contracts.py", f"{rel}/harmony_core/envelope.py",
                 f"{rel}/nats", f"{rel}/pydantic_core", f"{rel}/cryptography", f"{rel}/psutil",
                 "etc/harmony-agent/keys", "lib/systemd/system/harmony-agent.service",
                 "usr/share/doc/harmony-agent/copyright"):
        assert path in m, path
    assert m["usr/bin/harmony-agent"].mode == 0o755
    assert m["etc/harmony-agent/agent.toml"].mode == 0o640
    assert {(i.uname, i.gname) for i in m.values()} == {("root", "root")}
    # systemd bindings come from Debian's python3-systemd, not from the release.
    assert f"{rel}/systemd" not in m
    assert not [p for p in m if p.endswith(".pyc") or "__pycache__" in p]
    assert "opt/harmony-agent/current" not in m  # made by postinst, not owned by dpkg


def test_no_operator_code_on_a_device(amd64_deb: Path) -> None:
    """kubectl does not ship with the kubelet: harmony-fleet and its modules stay off devices."""
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(amd64_deb)], capture_output=True, text=True, check=True
    ).stdout
    assert "harmony-fleet" not in listing
    assert "harmony_fleet" not in listing
    assert "/agent/fleet/" not in listing
    # The operator's signing side is not in the shared core either.
    assert "signing.py" not in listing and "keygen" not in listing


def test_conffile_and_scripts(amd64_deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-e", str(amd64_deb), str(tmp_path)], check=True)
    assert (tmp_path / "conffiles").read_text() == "/etc/harmony-agent/agent.toml\n"
    for script in ("postinst", "prerm", "postrm"):
        text = (tmp_path / script).read_text()
        assert not re.search(r"@[A-Z_]+@", text), f"unfilled template in {script}"
        subprocess.run(["sh", "-n", str(tmp_path / script)], check=True)
    assert "harmony-agent.service" in (tmp_path / "postinst").read_text()


def test_release_is_complete_for_python(amd64_deb: Path, tmp_path: Path) -> None:
    """The release alone (plus the stdlib) imports the agent and every dependency."""
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the release is built for CPython 3.11")
    subprocess.run(["dpkg-deb", "-x", str(amd64_deb), str(tmp_path)], check=True)
    rel = tmp_path / "opt/harmony-agent/releases" / source_version()
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import agent.cli, agent.daemon, nats, pydantic, cryptography.hazmat.primitives.asymmetric"
        ".ed25519, psutil; from agent.version import __version__; print(__version__)"
    )
    out = subprocess.run([sys.executable, "-I", "-B", "-c", code, str(rel)],
                         capture_output=True, text=True)
    assert (out.returncode, out.stdout.strip()) == (0, source_version()), out.stderr


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_every_elf_is_for_the_target(arch: str, request: pytest.FixtureRequest) -> None:
    deb: Path = request.getfixturevalue(f"{arch}_deb")
    assert field(deb, "Architecture") == arch
    machines = elf_machines(deb)
    assert any(p.endswith(".so") for p in machines), "no shared objects found"
    assert {p: e for p, e in machines.items() if e != ELF_MACHINE[arch]} == {}


def test_version_override_is_what_the_agent_reports(amd64_deb: Path) -> None:
    version = newer_version(source_version())  # the E2E's "newer build": built once for both
    deb = build_deb("amd64", version)
    assert deb.name == f"harmony-agent_{version}_amd64.deb"
    assert field(deb, "Version") == version
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        f = tar.extractfile(f"./opt/harmony-agent/releases/{version}/agent/version.py")
        assert f is not None and f'__version__ = "{version}"'.encode() in f.read()


def test_build_is_reproducible(amd64_deb: Path, tmp_path: Path) -> None:
    again = build_deb_uncached(tmp_path / "again", src=source_snapshot())
    assert again.read_bytes() == amd64_deb.read_bytes()


def test_lintian_is_clean(amd64_deb: Path, arm64_deb: Path) -> None:
    """No errors or warnings; every remaining tag is overridden with a reason."""
    if shutil.which("lintian") is None:
        pytest.skip("needs lintian (apt-get install lintian)")
    proc = subprocess.run(
        ["lintian", "--no-cfg", "--fail-on", "error,warning", str(amd64_deb), str(arm64_deb)],
        capture_output=True, text=True, timeout=300,
    )
    tags = [line for line in proc.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert (proc.returncode, tags) == (0, []), proc.stdout + proc.stderr


def test_lock_pins_every_runtime_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lock = (REPO / "packaging/deb/requirements.lock").read_text()
    pinned = dict(re.findall(r"^([a-z0-9-]+)==(\S+)", lock, re.M))
    # A dependency Debian provides (the .deb Depends on python3-<name>) is not shipped.
    control = (REPO / "packaging/deb/control.in").read_text()
    for dep in project["dependencies"]:
        if "python_version < '3.11'" in dep or 'python_version < "3.11"' in dep:
            continue
        name = re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0].lower().replace("_", "-")
        if re.search(rf"^Depends:.*\bpython3-{name}\b", control, re.M):
            assert name not in pinned, f"{name} comes from Debian: drop it from the lock"
            continue
        assert name in pinned, f"{name} not in requirements.lock: run `make deb-lock`"
    blocks = re.split(r"^(?=[a-z0-9-]+==)", lock, flags=re.M)[1:]
    assert blocks and all("--hash=sha256:" in b for b in blocks)
