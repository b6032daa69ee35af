"""`harmony-fleet logs DEVICE [-u UNIT] [-t ID] [-p PRIO] [--since T] [-f]`: a device's journal.

Reads the device's LogBatches from the logs stream and prints them the way
`journalctl` does (`Nov 26 23:40:01 device identifier[pid]: message`), or one
JSON record per line with `-o json`. Filters apply to the records: `-u` to the
unit the line came from, `-p` to its priority (and more severe).

Batches compressed by the device (`Content-Encoding: zstd`) are decompressed
here, never to more than `harmony_core.logcodec.MAX_DECODED_BYTES`: a batch
that would be bigger (or is not what its headers say) is skipped with a
warning, and the lines around it still print.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import TextIO

from pydantic import ValidationError

from harmony_core.bus import Bus
from harmony_core.contracts import LogBatch, LogRecord
from harmony_core.durations import parse_duration
from harmony_core.errors import PayloadError
from harmony_core.journal_names import mangle_unit, priority_of
from harmony_core.logcodec import decode_batch
from harmony_core.settings import NatsSection
from harmony_fleet.devices import require_device
from harmony_fleet.terminal import escape_controls

__all__ = ["format_record", "parse_priority", "parse_since", "record_matches", "register"]


def parse_priority(text: str) -> int:
    """A priority name (emerg ... debug) or 0-7, like `journalctl -p`."""
    prio = priority_of(text)
    if prio is not None:
        return prio
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a priority: use emerg, alert, crit, err, warning, notice, info, "
        "debug or 0-7"
    )


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`--since`: a duration ago ("10m", "2h") or an RFC 3339 / ISO time (UTC if no zone)."""
    now = now or datetime.now(UTC)
    t = text.strip()
    try:
        return now - timedelta(seconds=parse_duration(t))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f'{text!r} is neither a duration ("10m") nor a time ("2026-11-26T23:40:00Z")'
        ) from e
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _unit(name: str) -> str:
    return mangle_unit(name)


def record_matches(
    rec: LogRecord, units: set[str], identifiers: set[str], max_priority: int | None
) -> bool:
    if max_priority is not None and rec.priority > max_priority:
        return False
    if rec.gap is not None or rec.dropped is not None:
        return True  # the stream's own notices always show
    if units and rec.unit not in units:
        return False
    return not identifiers or rec.identifier in identifiers


def format_record(rec: LogRecord, host: str, *, utc: bool = False) -> str:
    """One line like journalctl's short output; control characters shown as escapes.

    What a device sent never reaches the terminal raw (see `terminal`).
    """
    when = datetime.fromtimestamp(rec.realtime_us / 1e6, UTC)
    if not utc:
        when = when.astimezone()
    ident = rec.identifier or "unknown"
    pid = f"[{rec.pid}]" if rec.pid is not None else ""
    if rec.message is not None:
        msg = rec.message
    elif rec.message_b64 is not None:
        msg = f"[{len(rec.message_b64) * 3 // 4} B blob data]"
    else:
        msg = ""
    if rec.truncated:
        msg += " [truncated]"
    line = f"{when.strftime('%b %d %H:%M:%S')} {host} {ident}{pid}: {msg}"
    return escape_controls(line)


async def _cmd_logs(args: argparse.Namespace, bus: Bus, n: NatsSection) -> int:
    out: TextIO = sys.stdout
    units = {_unit(u) for u in args.unit or []}
    identifiers = set(args.identifier or [])
    start = args.since
    if start is None and args.follow:
        start = datetime.now(UTC)
    await require_device(bus, n, args.device)
    subject = f"{n.logs_subject_prefix}.{args.device}"
    shown = 0
    async for data, _ts, headers in bus.fetch_stream(
        n.logs_stream, subject, start_time=start, follow=args.follow
    ):
        try:
            batch = LogBatch.model_validate_json(decode_batch(data, headers))
        except PayloadError as e:
            print(f"harmony-fleet: skipped {e}", file=sys.stderr)
            continue
        except ValidationError:
            print("harmony-fleet: skipped a malformed LogBatch", file=sys.stderr)
            continue
        for rec in batch.records:
            if not record_matches(rec, units, identifiers, args.priority):
                continue
            if args.output == "json":
                line = json.dumps(rec.model_dump(mode="json", exclude_none=True))
            else:
                line = format_record(rec, batch.device_id, utc=args.utc)
            out.write(line + "\n")
            shown += 1
        out.flush()
    if shown == 0 and args.output != "json":
        out.write("-- No entries --\n")
    return 0


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]
) -> None:
    p = sub.add_parser(
        "logs",
        parents=parents,
        help="print a device's journal lines like journalctl (-f to follow)",
    )
    p.add_argument("device", help="the device id")
    p.add_argument("-u", "--unit", action="append", help="only this systemd unit; repeatable")
    p.add_argument(
        "-t", "--identifier", action="append", help="only this syslog identifier; repeatable"
    )
    p.add_argument(
        "-p", "--priority", type=parse_priority, help="this priority and more severe (name or 0-7)"
    )
    p.add_argument(
        "--since",
        type=parse_since,
        help='from this long ago ("10m", "2h") or this time (RFC 3339); default: all, '
        "or from now with -f",
    )
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("-o", "--output", choices=["short", "json"], default="short")
    p.add_argument("--utc", action="store_true", help="times in UTC instead of local time")
    p.set_defaults(func=_cmd_logs)
