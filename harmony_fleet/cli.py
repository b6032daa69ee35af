"""`harmony-fleet`: the operator's side of the contract (§4)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys

from harmony_core.bus import Bus
from harmony_core.errors import AgentError, BusError
from harmony_fleet.options import add_nats_options, nats_section

__all__ = ["main"]

# Each module exposes register(subparsers, parents); a command's func is
# `async (args, bus, nats_section) -> exit code`.
_COMMANDS = ["harmony_fleet.devices", "harmony_fleet.logs", "harmony_fleet.upgrade"]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_nats_options(common, suppress=True)
    p = argparse.ArgumentParser(
        prog="harmony-fleet", description="Operate a fleet of harmony agents over NATS."
    )
    add_nats_options(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        mod.register(sub, [common])
    return p


async def _run(args: argparse.Namespace) -> int:
    if not getattr(args, "needs_bus", True):  # e.g. keygen: nothing to connect to
        rc0: int = await args.func(args, None, None)
        return rc0
    n = nats_section(args)
    bus = Bus(n, name="harmony-fleet")
    await bus.connect_once()
    try:
        rc: int = await args.func(args, bus, n)
        return rc
    finally:
        await bus.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130
    except BusError as e:
        print(f"harmony-fleet: {e}", file=sys.stderr)
        return 69  # EX_UNAVAILABLE
    except AgentError as e:
        print(f"harmony-fleet: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        print(f"harmony-fleet: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
