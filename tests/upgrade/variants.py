"""Copies of the source tree patched into test builds: good, crashing, never-READY, no-NATS."""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["VARIANTS", "make_tree", "release_files"]

# file -> (anchor, text inserted after it); every anchor must be found exactly once.
_PATCHES: dict[str, tuple[str, str, str]] = {
    "crash": (
        "agent/cli.py",
        "def main(argv: list[str] | None = None) -> int:\n",
        "    raise SystemExit('harmony-agent test build: crashing at start on purpose')\n",
    ),
    "no-ready": (
        "agent/sdnotify.py",
        "    def ready(self, status: str) -> None:\n",
        "        return  # test build: never sends READY\n",
    ),
    "no-nats": (
        "harmony_core/bus/connection.py",
        '            "servers": list(c.servers),\n',
        '            "servers": ["nats://127.0.0.1:9"],  # test build: cannot reach NATS\n',
    ),
}
VARIANTS = ("good", *_PATCHES)


def make_tree(src: Path, dst: Path, version: str, variant: str = "good") -> Path:
    """A copy of agent/ and harmony_core/ (and the example config), version set, patched."""
    for pkg in ("agent", "harmony_core"):
        shutil.copytree(src / pkg, dst / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if (src / "agent.example.toml").exists():
        shutil.copy2(src / "agent.example.toml", dst / "agent.example.toml")
    vf = dst / "agent" / "version.py"
    text = vf.read_text()
    start = text.index('__version__ = "')
    end = text.index('"', start + len('__version__ = "'))
    vf.write_text(text[:start] + f'__version__ = "{version}"' + text[end + 1:])
    if variant != "good":
        rel, anchor, insert = _PATCHES[variant]
        f = dst / rel
        body = f.read_text()
        if body.count(anchor) != 1:
            raise AssertionError(f"variant {variant}: anchor not found once in {rel}; update "
                                 "tests/upgrade/variants.py")
        f.write_text(body.replace(anchor, anchor + insert))
    return dst


def release_files(tree: Path) -> dict[str, str]:
    """The tree's agent and core packages as {relative path: text}, for a test .deb's release."""
    return {
        str(p.relative_to(tree)): p.read_text()
        for pkg in ("agent", "harmony_core")
        for p in sorted((tree / pkg).rglob("*.py"))
    }
