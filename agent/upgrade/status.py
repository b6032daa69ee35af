"""UpgradeStatus on the wire: compact JSON, with the nullable-but-required fields kept."""

from __future__ import annotations

import json

from agent.contracts import UpgradeStatus

__all__ = ["status_bytes"]

# Required by the model yet nullable: dropping them (as dump_json drops every None)
# would make the payload unreadable by the model itself.
_KEEP_NULL = ("request_id", "from_version", "target_version")


def status_bytes(status: UpgradeStatus) -> bytes:
    data = status.model_dump(mode="json", exclude_none=True)
    for key in _KEEP_NULL:
        data.setdefault(key, None)
    return json.dumps(data, separators=(",", ":")).encode()
