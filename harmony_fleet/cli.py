"""`harmony-fleet`: the operator's side of the contract (§4).

Exit codes: 0 done; 1 failed or not found (an unknown device, an unpublished
artifact, an upgrade that did not commit with --wait); 2 usage (bad options or
selector); 69 NATS unavailable or refusing (EX_UNAVAILABLE); 130 interrupted.
Every error is one line on stderr that ends saying what to do.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import re
import sys

from pydantic import ValidationError

from harmony_core.bus import Bus
from harmony_core.errors import AgentError, BusError, BusUnavailableError
from harmony_core.settings import NatsSection
from harmony_fleet.options import OPTION_OF_KEY, add_nats_options, nats_section

__all__ = ["main"]

# Each module exposes register(subparsers, parents); a command's func is
# `async (args, bus, nats_section) -> exit code`.
_COMMANDS = [
    "harmony_fleet.devices",
    "harmony_fleet.logs",
    "harmony_fleet.upgrade",
    "harmony_fleet.auth.cli",
    "harmony_fleet.rollout.commands",
]

_EX_USAGE = 2
_EX_UNAVAILABLE = 69


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_nats_options(common, suppress=True)
    p = argparse.ArgumentParser(
        prog="harmony-fleet",
        description="Operate a fleet of harmony agents over NATS.",
        epilog="exit codes: 0 done, 1 failed or not found, 2 usage, 69 NATS unavailable",
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


def _options_problem(e: ValidationError) -> str:
    """The NATS options' problems in their option names (not the config file's keys)."""
    out = []
    for err in e.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        for key, opt in OPTION_OF_KEY.items():
            msg = re.sub(rf"\b{key}\b", opt, msg)
        where = OPTION_OF_KEY.get(str(err["loc"][0])) if err["loc"] else None
        out.append(f"{where}: {msg}" if where else msg)
    return "; ".join(out)


def _what_to_do(e: AgentError) -> str | None:
    """The advice a bare bus error lacks (ours that carry their own return None)."""
    text = str(e).lower()
    if isinstance(e, BusUnavailableError):
        if not text.startswith("cannot connect"):
            return "check that the NATS server runs, then run the command again"
        why = text.partition(": ")[2]  # after "cannot connect to NATS at URL"
        cause = e.__cause__
        if "ssl" in why or "certificate" in why or "tls" in why:
            return "check --tls-ca, --tls-cert and --tls-key against the server's TLS setup"
        if isinstance(cause, OSError) and not isinstance(cause, ConnectionError):
            return "check the files the options name (--creds, --nkey, --password-file, ...)"
        if "authoriz" in why or "authentication" in why:
            return (
                "pass the credentials the server expects: --creds, --nkey, "
                "--user with --password-file, or --token-file"
            )
        return "check that nats-server runs there, or name another with -s URL (or $NATS_URL)"
    if type(e) is BusError and "; " not in text:  # a refusal the server explains in its log
        return "see the nats-server log for why, then run the command again"
    return None


def _fail(message: str, hint: str | None = None) -> None:
    line = " ".join(message.split())  # one line, whatever the message held
    print(f"harmony-fleet: {line}{'; ' + hint if hint else ''}", file=sys.stderr)


async def _run(args: argparse.Namespace, n: NatsSection | None) -> int:
    if n is None:  # e.g. keygen: nothing to connect to
        rc0: int = await args.func(args, None, None)
        return rc0
    bus = Bus(n, name="harmony-fleet")
    await bus.connect_once()
    try:
        rc: int = await args.func(args, bus, n)
        return rc
    finally:
        await bus.close()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    n = None
    if getattr(args, "needs_bus", True):
        try:
            n = nats_section(args)
        except ValidationError as e:
            _fail(_options_problem(e), "see harmony-fleet --help")
            return _EX_USAGE
    try:
        return asyncio.run(_run(args, n))
    except KeyboardInterrupt:
        return 130
    except BusError as e:
        _fail(str(e), _what_to_do(e))
        return _EX_UNAVAILABLE
    except AgentError as e:
        _fail(str(e))
        return 1
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        _fail(f"{where}{e.strerror or e}", "check the path and its permissions")
        return 1
    except Exception as e:
        _fail(
            f"{type(e).__name__}: {e}",
            "this is a bug in harmony-fleet: please report it with the command you ran",
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
