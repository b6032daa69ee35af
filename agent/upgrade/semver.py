"""Release version order, under its old name: it lives in `harmony_core.versions` now.

Releases are ordered as dpkg orders them (not by semver precedence), with the
same code on the operator side; this name stays only until the root side's
modules import `harmony_core.versions` themselves.
"""

from __future__ import annotations

from harmony_core.versions import Version, compare_versions, parse_version

__all__ = ["Version", "compare_versions", "parse_version"]
