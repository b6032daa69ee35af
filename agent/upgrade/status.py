"""UpgradeStatus on the wire: compact JSON, the contract's nullable fields kept as null."""

from __future__ import annotations

import json

from harmony_core.contracts import UpgradeStatus

__all__ = ["status_bytes"]

# The contract names these fields for every status; dump_json would drop them when
# None, so they are kept, as null, for readers that look them up directly.
_KEEP_NULL = ("request_id", "from_version", "target_version")


def status_bytes(status: UpgradeStatus) -> bytes:
    data = status.model_dump(mode="json", exclude_none=True)
    for key in _KEEP_NULL:
        data.setdefault(key, None)
    return json.dumps(data, separators=(",", ":")).encode()
