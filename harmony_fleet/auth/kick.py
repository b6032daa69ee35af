"""A device's live connections on every server, and kicking them (system account).

The callout names each device's connection `device-<device_id>` (the user JWT's
name, which the server reports as the connection's authorized user). Asking
`$SYS.REQ.SERVER.PING.CONNZ` gets one answer per server; each connection is
kicked on its own server with `$SYS.REQ.SERVER.<server id>.KICK`. Only a user
of the system account may ask either: `auth init`'s `system.nk`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from harmony_core.bus import Bus
from harmony_core.errors import IdentityError

__all__ = ["Connection", "device_connections", "kick", "system_nkey_path"]

# How long to wait for every server's answer to a PING: at most, and after the last one
# (servers of one cluster answer within milliseconds of each other).
_GATHER_S = 2.0
_GATHER_IDLE_S = 0.25


@dataclass(frozen=True)
class Connection:
    server_id: str
    cid: int
    start: datetime | None
    host: str | None


def system_nkey_path(explicit: Path | None, operator_nkey: Path | None) -> Path:
    """--system-nkey, else `system.nk` beside the operator's --nkey (as `auth init` made them)."""
    if explicit is not None:
        return explicit
    if operator_nkey is not None and (operator_nkey.parent / "system.nk").exists():
        return operator_nkey.parent / "system.nk"
    raise IdentityError(
        "need the system account's key to find and kick connections: pass "
        "--system-nkey DIR/system.nk (auth init wrote it)"
    )


def _when(text: object) -> datetime | None:
    """A server timestamp (RFC 3339, nanoseconds) as a datetime, or None."""
    if not isinstance(text, str):
        return None
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text)
    if not m:
        return None
    frac = (m.group(2) or ".0")[:7]
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(m.group(1) + frac + zone)


async def device_connections(sysbus: Bus, device_id: str, *, account: str) -> list[Connection]:
    """Every open connection admitted as `device-<device_id>`, on every server that answers."""
    query = {"acc": account, "user": f"device-{device_id}", "auth": True, "limit": 10000}
    out: list[Connection] = []
    for raw in await sysbus.gather(
        "$SYS.REQ.SERVER.PING.CONNZ",
        json.dumps(query).encode(),
        wait=_GATHER_S,
        idle=_GATHER_IDLE_S,
    ):
        try:
            doc = json.loads(raw)
        except ValueError:
            continue
        server = (doc.get("server") or {}).get("id")
        data = doc.get("data") or {}
        for c in data.get("connections") or []:
            if c.get("authorized_user") != f"device-{device_id}" or not server:
                continue
            out.append(Connection(server, int(c["cid"]), _when(c.get("start")), c.get("ip")))
    return out


async def kick(sysbus: Bus, conn: Connection) -> None:
    """Close one connection on its server (the client may reconnect: the callout decides)."""
    raw = await sysbus.request(
        f"$SYS.REQ.SERVER.{conn.server_id}.KICK",
        json.dumps({"cid": conn.cid}).encode(),
        timeout=2.0,
    )
    try:
        err = json.loads(raw).get("error")
    except ValueError:
        err = None
    if err:
        raise IdentityError(
            f"server {conn.server_id} would not kick connection {conn.cid}: "
            f"{err.get('description') if isinstance(err, dict) else err}"
        )
