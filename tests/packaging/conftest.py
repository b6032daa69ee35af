"""Fixtures of the packaging tests: the two .debs, built once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.packaging.debbuild import build_deb


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install dpkg-dev)")


@pytest.fixture(scope="session")
def amd64_deb() -> Path:
    _need("dpkg-deb")
    return build_deb("amd64")


@pytest.fixture(scope="session")
def arm64_deb() -> Path:
    _need("dpkg-deb")
    return build_deb("arm64")
