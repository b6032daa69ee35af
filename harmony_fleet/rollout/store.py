"""Rollouts in KV `agent-rollouts`: read, create, and change with compare-and-set only.

Every write names the revision it read; a write that finds another revision
fails (RevisionMismatchError) and the writer reads again. So the CLI's pause,
resume and abort and the controller's steps never overwrite each other, and
two controllers never both drive one rollout (`controller` holds the lease).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from harmony_core.bus import Bus, KvEntry
from harmony_core.contracts import Rollout, dump_json, utcnow
from harmony_core.errors import RevisionMismatchError, RolloutError
from harmony_fleet.provision import ROLLOUTS_BUCKET

__all__ = ["Stored", "create", "get", "list_all", "load", "save", "update"]

_ATTEMPTS = 20


@dataclass(frozen=True)
class Stored:
    """A rollout as read, with the revision a compare-and-set write must name."""

    rollout: Rollout
    revision: int
    # The server's time of the last write (None where NATS does not tell it).
    written_at: datetime | None


def _parse(e: KvEntry) -> Stored:
    try:
        r = Rollout.model_validate_json(e.value)
    except ValidationError as err:
        raise RolloutError(
            f"rollout {e.key!r} in {ROLLOUTS_BUCKET} is not one this harmony-fleet reads "
            f"({err.errors()[0]['msg']}); a newer harmony-fleet wrote it: use that one"
        ) from err
    return Stored(r, e.revision, e.created)


def load(e: KvEntry) -> Stored:
    """The rollout in a KV entry (from a get or a watch); RolloutError if it is not one."""
    return _parse(e)


async def get(bus: Bus, name: str) -> Stored:
    """The rollout `name`; RolloutError saying what exists when there is none."""
    e = await bus.kv_get(ROLLOUTS_BUCKET, name)
    if e is None:
        raise RolloutError(f'no rollout "{name}" (see harmony-fleet rollout list)')
    return _parse(e)


async def list_all(bus: Bus) -> list[Stored]:
    out = []
    for e in await bus.kv_entries(ROLLOUTS_BUCKET):
        try:
            out.append(_parse(e))
        except RolloutError:
            continue
    return sorted(out, key=lambda s: s.rollout.created_at)


async def create(bus: Bus, r: Rollout) -> int:
    """Store a new rollout; RolloutError when the name is taken."""
    try:
        return await bus.kv_update(ROLLOUTS_BUCKET, r.name, dump_json(r), None)
    except RevisionMismatchError as e:
        raise RolloutError(
            f'rollout "{r.name}" exists (harmony-fleet rollout status {r.name}); '
            "choose another name"
        ) from e


async def save(bus: Bus, r: Rollout, revision: int) -> int:
    """Write `r` over `revision`: RevisionMismatchError if someone wrote meanwhile."""
    r.updated_at = utcnow()
    return await bus.kv_update(ROLLOUTS_BUCKET, r.name, dump_json(r), revision)


async def update(bus: Bus, name: str, change: Callable[[Rollout], None]) -> Rollout:
    """Read, `change` (in place; it raises RolloutError to refuse), write; again on a race."""
    for _ in range(_ATTEMPTS):
        s = await get(bus, name)
        change(s.rollout)
        try:
            await save(bus, s.rollout, s.revision)
        except RevisionMismatchError:
            continue
        return s.rollout
    raise RolloutError(
        f'rollout "{name}" changed {_ATTEMPTS} times while this command tried to write it; '
        "run the command again"
    )
