"""`rollout run`: drive a rollout wave by wave until it completes, halts or is aborted.

The controller keeps what NATS says of the devices current with watches
(heartbeats, requests, upgrade statuses, and the rollout itself), takes one
`state.advance` step whenever something changed or a bake or deadline is due,
saves the result with compare-and-set, and only then writes the requests of
the devices the step left `asking` — each with compare-and-set on the device's
key too, so a request another writer put there first is never overwritten.

Its lease in the record says who drives: it writes at least every third of the
lease; another controller takes over only after the lease passed in silence. A
controller that finds its write refused by someone else's reads again and, if
the lease is no longer its own, stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

from harmony_core.bus import Bus
from harmony_core.contracts import (
    ReleaseManifest,
    Rollout,
    RolloutDevice,
    RolloutLease,
    utcnow,
)
from harmony_core.durations import format_duration
from harmony_core.envelope import VerifyingKey, keyid_of
from harmony_core.errors import RevisionMismatchError, RolloutError
from harmony_core.settings import NatsSection
from harmony_fleet.releases import fetch_release
from harmony_fleet.rollout import store
from harmony_fleet.rollout.state import (
    FINAL_STATES,
    advance,
    devices,
    request_id,
)
from harmony_fleet.rollout.view import View, request_id_of, watching
from harmony_fleet.terminal import escape_controls
from harmony_fleet.upgrade import sign_upgrade

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["EXIT_ABORTED", "EXIT_HALTED", "drive", "exit_code"]

EXIT_HALTED = 3
EXIT_ABORTED = 4
_WRITERS = 32  # requests written at once
_BATCH = 256  # requests between two saves of the record
_DEBOUNCE_S = 0.05  # gather the changes that arrive together into one step
_MAX_SLEEP_S = 1.0
# Outcomes that are facts of the moment (a bake that began, one that ended well) are saved
# at most this often; a failure, a conflict, a new wave or state is saved before going on.
_SAVE_EVERY_S = 0.5


def exit_code(state: str) -> int:
    """0 completed, 3 halted, 4 aborted."""
    return {"halted": EXIT_HALTED, "aborted": EXIT_ABORTED}.get(state, 0)


class _LostLeaseError(Exception):
    """Our write was refused: someone else wrote the record (read it again)."""


@dataclass
class _Run:
    bus: Bus
    n: NatsSection
    name: str
    key: Ed25519PrivateKey
    ttl: float
    out: TextIO
    holder: str = field(default_factory=lambda: _holder())
    releases: dict[str, ReleaseManifest] = field(default_factory=dict)
    saved_at: float = 0.0
    dirty: bool = False  # changes not saved yet (only facts of the moment)
    last_state: str = ""

    def say(self, line: str) -> None:
        self.out.write(escape_controls(line) + "\n")
        self.out.flush()

    async def save(self, s: store.Stored) -> store.Stored:
        r = s.rollout
        r.lease = RolloutLease(holder=self.holder, renewed_at=utcnow(), ttl_s=self.ttl)
        try:
            rev = await store.save(self.bus, r, s.revision)
        except RevisionMismatchError as e:
            raise _LostLeaseError from e
        self.saved_at = time.monotonic()
        self.dirty = False
        return store.Stored(r, rev, None)

    async def reload(self) -> store.Stored:
        s = await store.get(self.bus, self.name)
        lease = s.rollout.lease
        if s.rollout.state not in FINAL_STATES and (lease is None or lease.holder != self.holder):
            raise RolloutError(
                f"rollout {self.name} was taken over by "
                f"{lease.holder if lease else 'nobody (its lease was released)'}; "
                "this controller stops (see harmony-fleet rollout status)"
            )
        return s

    async def ask(self, s: store.Stored, asking: list[RolloutDevice]) -> store.Stored:
        """Write the requests of `asking`, saving the record after each batch."""
        r = s.rollout
        sem = asyncio.Semaphore(_WRITERS)

        async def one(d: RolloutDevice) -> None:
            async with sem:
                await self._write(r, d)

        for i in range(0, len(asking), _BATCH):
            batch = asking[i : i + _BATCH]
            await asyncio.gather(*(one(d) for d in batch))
            s = await self.save(s)
            for d in batch:
                said = f"request {request_id(r, d.id)}" if d.outcome == "asked" else d.reason
                self.say(f"{d.id}: {d.outcome} ({said})")
        return s

    async def _write(self, r: Rollout, d: RolloutDevice) -> None:
        rid = request_id(r, d.id)
        now = utcnow()
        _, env = sign_upgrade(
            self.releases[d.arch],
            d.id,
            self.key,
            bucket=self.n.artifacts_bucket,
            request_id=rid,
            issued_at=now,
            expires_s=r.deadline_s,
            confirm_window_s=r.confirm_window_s,
            allow_downgrade=r.allow_downgrade,
        )
        try:
            rev = await self.bus.kv_update(self.n.upgrade_bucket, d.id, env, d.revision)
        except RevisionMismatchError:
            e = await self.bus.kv_get(self.n.upgrade_bucket, d.id)
            theirs = request_id_of(e.value) if e is not None else None
            if theirs == rid and e is not None:  # ours, written before a crash
                rev = e.revision
            else:
                d.outcome, d.since = "conflict", now
                d.reason = (
                    f"request {theirs} was written to it as its wave started "
                    "(another rollout or a manual upgrade); ours was not"
                )
                return
        d.outcome, d.revision, d.asked_at, d.since, d.reason = "asked", rev, now, now, None


def _holder() -> str:
    return f"{os.environ.get('USER', 'operator')}@{socket.gethostname()}:{os.getpid()}:" + (
        uuid.uuid4().hex[:6]
    )


def _report(run: _Run, before: Mapping[str, str], r: Rollout, was_wave: int) -> None:
    """One line per change a step made (and per state change, whoever made it)."""
    for i, w in enumerate(r.waves):
        if was_wave < i <= r.wave:
            run.say(
                f"wave {i + 1}/{len(r.waves)} ({w.percent:g}%) started: {len(w.devices)} device"
                f"{'s' if len(w.devices) != 1 else ''}"
            )
    for _, d in devices(r, started_only=True):
        if before.get(d.id) == d.outcome or d.outcome in ("asking", "pending"):
            continue
        if d.outcome == "baking":
            bake = format_duration(r.bake_s)
            run.say(f"{d.id}: committed and Ready on {r.version}; baking {bake}")
        elif d.outcome == "asked":
            run.say(f"{d.id}: asked (request {request_id(r, d.id)})")
        else:
            run.say(f"{d.id}: {d.outcome}" + (f" ({d.reason})" if d.reason else ""))
    if r.state != run.last_state:
        run.last_state = r.state
        if r.state == "paused":
            run.say(f"rollout {r.name} paused: waiting for `harmony-fleet rollout resume "
                    f"{r.name}` (or abort)")  # fmt: skip
        else:
            run.say(f"rollout {r.name} {r.state}" + (f": {r.reason}" if r.reason else ""))


def _next_due(r: Rollout, now: datetime) -> float:
    """Seconds until a bake or a deadline ends (at most _MAX_SLEEP_S)."""
    due = _MAX_SLEEP_S
    for _, d in devices(r, started_only=True):
        if d.outcome == "baking" and d.since is not None:
            due = min(due, r.bake_s - (now - d.since).total_seconds())
        elif d.outcome == "asked" and d.asked_at is not None:
            due = min(due, r.deadline_s - (now - d.asked_at).total_seconds())
    return max(due, 0.01)


async def _claim(run: _Run) -> store.Stored:
    """The rollout with our lease on it; RolloutError while another controller drives it."""
    while True:
        s = await store.get(run.bus, run.name)
        r, lease = s.rollout, s.rollout.lease
        if r.state in FINAL_STATES:
            return s
        if lease is not None and lease.holder != run.holder:
            silent = (utcnow() - s.written_at).total_seconds() if s.written_at else 0.0
            if silent < lease.ttl_s:
                run.say(
                    f"rollout {run.name} was driven by {lease.holder}; taking over if it stays "
                    f"silent for {format_duration(round(lease.ttl_s - silent, 1))}"
                )
                await _wait_silence(run, lease, lease.ttl_s - silent)
        try:
            return await run.save(s)
        except _LostLeaseError:
            continue


async def _wait_silence(run: _Run, lease: RolloutLease, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(min(0.2, max(0.0, end - time.monotonic())))
        r = (await store.get(run.bus, run.name)).rollout
        now = r.lease
        if now is None or r.state in FINAL_STATES:  # given up, or ended: nothing to wait for
            return
        if (now.holder, now.renewed_at) != (lease.holder, lease.renewed_at):
            raise RolloutError(
                f"rollout {run.name} is driven by {now.holder}; two controllers never drive "
                f"one rollout: follow it with harmony-fleet rollout status {run.name}, or stop "
                "that controller first"
            )


async def _check_releases(run: _Run, s: store.Stored, trusted: Mapping[str, VerifyingKey]) -> str:
    """Fetch each release again; the reason to halt if one is not what `create` checked."""
    r = s.rollout
    for arch, pinned in sorted(r.releases.items()):
        m = await fetch_release(run.bus, run.n, r.version, arch, trusted)
        if (m.sha256, m.size) != (pinned.sha256, pinned.size):
            return (
                f"the {arch} release in {run.n.artifacts_bucket} is not the one create checked "
                f"(sha256 {m.sha256[:12]}…, {m.size} bytes; planned: {pinned.sha256[:12]}…, "
                f"{pinned.size} bytes): no request is signed for it; create a new rollout"
            )
        run.releases[arch] = m
    return ""


def _urgent(r: Rollout, before: Mapping[str, str], was: tuple[str, int]) -> bool:
    """A step that must be saved before the controller goes on."""
    if (r.state, r.wave) != was:
        return True
    return any(
        d.outcome in ("failed", "conflict", "asking", "asked") and before.get(d.id) != d.outcome
        for _, d in devices(r, started_only=True)
    )


async def _step(run: _Run, s: store.Stored, view: View) -> store.Stored:
    """One step: judge, save, then write the requests it asks for."""
    now = utcnow()
    r = s.rollout
    before = {d.id: d.outcome for _, d in devices(r, started_only=True)}
    was = (r.state, r.wave)
    run.dirty |= advance(r, view.observe(r, now), now)
    since = time.monotonic() - run.saved_at
    if (
        (run.dirty and (since > _SAVE_EVERY_S or _urgent(r, before, was)))
        or since > run.ttl / 3
    ):
        s = await run.save(s)
    _report(run, before, r, was[1])
    asking = [d for _, d in devices(r, started_only=True) if d.outcome == "asking"]
    if asking and r.state == "running":
        s = await run.ask(s, asking)
    return s


async def _drive(run: _Run, s: store.Stored, view: View) -> int:
    while True:
        if view.record_revision > s.revision:
            s = await run.reload()
        r = s.rollout
        if r.state in FINAL_STATES:  # ended by someone else (abort)
            _report(run, {d.id: d.outcome for _, d in devices(r, started_only=True)}, r, r.wave)
            return exit_code(r.state)
        view.changed.clear()
        try:
            s = await _step(run, s, view)
        except _LostLeaseError:
            s = await run.reload()
            continue
        if s.rollout.state in FINAL_STATES:
            return exit_code(s.rollout.state)
        timeout = min(_next_due(s.rollout, utcnow()), run.ttl / 3)
        if run.dirty:
            timeout = min(timeout, _SAVE_EVERY_S)
        try:
            await asyncio.wait_for(view.changed.wait(), timeout)
            await asyncio.sleep(_DEBOUNCE_S)
        except TimeoutError:
            pass


async def drive(
    bus: Bus,
    n: NatsSection,
    name: str,
    key: Ed25519PrivateKey,
    *,
    trusted: Mapping[str, VerifyingKey],
    lease_ttl: float = 30.0,
    out: TextIO = sys.stdout,
) -> int:
    """Drive rollout `name` to its end: 0 completed, 3 halted, 4 aborted.

    RolloutError when it is another key's, or another controller drives it.
    """
    run = _Run(bus, n, name, key, lease_ttl, out)
    s = await store.get(bus, name)
    mine = keyid_of(key.public_key())
    if s.rollout.keyid != mine:
        raise RolloutError(
            f"rollout {name} was created with key {s.rollout.keyid[:16]}…, not "
            f"{mine[:16]}…; run it with the key it was created with (--key)"
        )
    if s.rollout.state not in FINAL_STATES:
        s = await _claim(run)
    if s.rollout.state in FINAL_STATES:
        run.say(f"rollout {name} is {s.rollout.state}: {s.rollout.reason or ''}".rstrip(": "))
        return exit_code(s.rollout.state)
    run.last_state = s.rollout.state
    run.say(f"rollout {name} ({s.rollout.state}): driving it as {run.holder}")
    try:
        return await _watching(run, s, trusted)
    finally:  # ended, failed or interrupted: the next controller need not wait the lease out
        await asyncio.shield(_release(run))


async def _watching(
    run: _Run, s: store.Stored, trusted: Mapping[str, VerifyingKey]
) -> int:
    if why := await _check_releases(run, s, trusted):
        def halt(r: Rollout) -> None:
            if r.state not in FINAL_STATES:
                r.state, r.reason = "halted", why

        r = await store.update(run.bus, run.name, halt)
        run.say(f"rollout {run.name} {r.state}: {r.reason}")
        return exit_code(r.state)
    async with watching(run.bus, run.n, run.name) as view:
        return await _drive(run, s, view)


async def _release(run: _Run) -> None:
    """Give the lease up (if it is still ours)."""

    def drop(r: Rollout) -> None:
        if r.lease is None or r.lease.holder != run.holder:
            raise _LostLeaseError  # not ours (any more): leave the record alone
        r.lease = None

    with contextlib.suppress(Exception):  # best effort: the lease runs out by itself
        await asyncio.wait_for(store.update(run.bus, run.name, drop), 2)
