"""Strict extraction of a release from the artifact, the flip and pruning (root side)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.upgrade.layout import MARKER
from agent.upgrade.release import (
    current_version,
    extract_release,
    flip_current,
    packaged_versions,
    prune_releases,
    remove_partials,
)
from harmony_core.errors import UpgradeError
from tests.upgrade.helpers import build_deb

P = "./opt/harmony-agent/releases/0.2.0/"


def _tar(tmp: Path, add: Callable[[tarfile.TarFile], None]) -> tuple[Path, str]:
    """A data tarball and a stand-in `dpkg-deb` that prints it (to feed untrusted members)."""
    data = tmp / "data.tar"
    with tarfile.open(data, "w") as t:
        add(t)
    tool = tmp / "fake-dpkg-deb"
    tool.write_text(f'#!/bin/sh\nexec cat "{data}"\n')
    tool.chmod(0o755)
    return data, str(tool)


def _both(*_: object) -> None:
    """Lets a table lambda add two members."""


def _file(t: tarfile.TarFile, name: str, body: bytes = b"x", mode: int = 0o644) -> object:
    info = tarfile.TarInfo(name)
    info.size = len(body)
    info.mode = mode
    t.addfile(info, io.BytesIO(body))
    return None


def _link(t: tarfile.TarFile, name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> object:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    t.addfile(info)
    return None


def test_extracts_only_the_release_and_writes_the_marker_last(tmp_path: Path) -> None:
    deb, _, _ = build_deb(tmp_path, "0.2.0", files={"agent/x.py": "print(1)\n"},
                          extra_root={"usr/bin/harmony-agent": "#!/bin/sh\n"})
    rel = extract_release(deb, tmp_path / "releases", "0.2.0", marker_text="{}\n")
    assert (rel / "agent" / "x.py").read_text() == "print(1)\n"
    assert (rel / MARKER).read_text() == "{}\n"
    assert not (tmp_path / "releases" / "0.2.0.tmp").exists()
    assert not (tmp_path / "releases" / "usr").exists()


def test_the_release_gets_bytecode_named_for_its_final_path(tmp_path: Path) -> None:
    """Bytecode is compiled before the marker, as if the files had always been at `<v>/`."""
    import importlib.util
    import marshal

    deb, _, _ = build_deb(tmp_path, "0.2.0", files={"agent/x.py": "def f():\n    return 1\n"})
    rel = extract_release(deb, tmp_path / "releases", "0.2.0", marker_text="{}\n")
    tag = importlib.util.cache_from_source(str(rel / "agent" / "x.py"))
    data = Path(tag).read_bytes()
    assert int.from_bytes(data[4:8], "little") & 0b11 == 0b11  # hash-based, checked
    code = marshal.loads(data[16:])
    assert code.co_filename == str(rel / "agent" / "x.py")


@pytest.mark.parametrize(
    ("add", "reason"),
    [
        (lambda t: _file(t, P + "../../../../etc/x"), "unsafe path"),
        (lambda t: _file(t, "/opt/harmony-agent/releases/0.2.0/abs"), "unsafe path"),
        (lambda t: _both(_link(t, P + "lib", "/etc"), _file(t, P + "lib/passwd")),
         "has a symlink"),
        (lambda t: _link(t, P + "agent", "/var/lib/harmony-agent/agent"), "has a symlink"),
        (lambda t: _link(t, P + "agent/x.py", "../y.py"), "has a symlink"),
        (lambda t: _both(_file(t, P + "agent/x.py", b"X = 1\n"),
                         _link(t, P + "agent/__pycache__", "/tmp")), "has a symlink"),
        (lambda t: _link(t, P + "hard", "./etc/shadow", tarfile.LNKTYPE), "hard-links outside"),
        (lambda t: _link(t, P + "dev", "", tarfile.CHRTYPE), "special file"),
        (lambda t: _both(_file(t, P + "a"), _file(t, P + "a")), "twice"),
        (lambda t: _file(t, "./usr/bin/other"), "no files under"),
    ],
    ids=["dotdot", "absolute", "write-through-symlink", "absolute-symlink", "relative-symlink",
         "pycache-symlink", "hardlink-out", "device", "duplicate", "empty-release"],
)
def test_unsafe_archives_are_refused(tmp_path: Path, add: Callable[[tarfile.TarFile], None],
                                     reason: str) -> None:
    _, tool = _tar(tmp_path, add)
    with pytest.raises(UpgradeError, match=reason):
        extract_release(tmp_path / "x.deb", tmp_path / "releases", "0.2.0",
                        marker_text="{}", dpkg_deb=tool)
    assert not (tmp_path / "releases" / "0.2.0").exists()
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize(
    ("mode", "kept"),
    [(0o4755, 0o755), (0o777, 0o755), (0o666, 0o644), (0o600, 0o644), (0o700, 0o755),
     (0o2711, 0o755), (0o644, 0o644)],
)
def test_modes_are_clamped_so_only_root_can_write_its_code(
    tmp_path: Path, mode: int, kept: int
) -> None:
    """0777/0666 would let the agent's user edit code root runs (switch.py) — never kept."""
    def add(t: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(P + "agent")
        info.type = tarfile.DIRTYPE
        info.mode = 0o777
        t.addfile(info)
        _file(t, P + "agent/switch.py", b"X = 1\n", mode)
    _, tool = _tar(tmp_path, add)
    rel = extract_release(tmp_path / "x.deb", tmp_path / "releases", "0.2.0",
                          marker_text="{}", dpkg_deb=tool)
    assert stat.S_IMODE(os.stat(rel / "agent" / "switch.py").st_mode) == kept
    for d in (rel, rel / "agent", rel / "agent" / "__pycache__"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o755, d
    for pyc in (rel / "agent" / "__pycache__").iterdir():
        assert stat.S_IMODE(pyc.stat().st_mode) == 0o644


def test_a_release_with_a_symlink_writes_nothing_outside(tmp_path: Path) -> None:
    """A `__pycache__` link would have made the byte-compile write root's files elsewhere."""
    outside = tmp_path / "outside"
    outside.mkdir()

    def add(t: tarfile.TarFile) -> None:
        _file(t, P + "agent/x.py", b"X = 1\n")
        _link(t, P + "agent/__pycache__", str(outside))
    _, tool = _tar(tmp_path, add)
    with pytest.raises(UpgradeError, match="has a symlink"):
        extract_release(tmp_path / "x.deb", tmp_path / "releases", "0.2.0",
                        marker_text="{}", dpkg_deb=tool)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "releases" / "0.2.0").exists()


def test_flip_is_a_symlink_rename(tmp_path: Path) -> None:
    (tmp_path / "releases" / "0.1.0").mkdir(parents=True)
    (tmp_path / "releases" / "0.2.0").mkdir()
    flip_current(tmp_path, "0.1.0")
    flip_current(tmp_path, "0.2.0")
    assert os.readlink(tmp_path / "current") == "releases/0.2.0"
    assert current_version(tmp_path) == "0.2.0"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".current")] == []


def test_prune_keeps_running_previous_and_packaged(tmp_path: Path) -> None:
    rels = tmp_path / "releases"
    for v in ("0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0.tmp"):
        (rels / v).mkdir(parents=True)
    removed = prune_releases(rels, 2, "0.4.0", "0.2.0", protect={"0.1.0"})
    assert sorted(removed) == ["0.3.0"]
    assert sorted(p.name for p in rels.iterdir()) == ["0.1.0", "0.2.0", "0.4.0", "0.5.0.tmp"]
    assert remove_partials(rels) == ["0.5.0.tmp"]


def test_packaged_versions_come_from_dpkgs_list(tmp_path: Path) -> None:
    lst = tmp_path / "harmony-agent.list"
    lst.write_text("/opt/harmony-agent\n/opt/harmony-agent/releases\n"
                   "/opt/harmony-agent/releases/0.1.0\n/opt/harmony-agent/releases/0.1.0/agent\n")
    assert packaged_versions(lst, Path("/opt/harmony-agent/releases")) == {"0.1.0"}
