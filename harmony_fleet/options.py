"""NATS options of `harmony-fleet`, named like the agent's `[nats]` keys."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from harmony_core.selectors import Selector, parse_selector
from harmony_core.settings import NatsSection

__all__ = ["OPTION_OF_KEY", "add_nats_options", "nats_section", "selector_arg"]

# The agent's [nats] key each option sets, for errors in the operator's words.
OPTION_OF_KEY = {
    "servers": "--server",
    "creds_file": "--creds",
    "nkey_seed_file": "--nkey",
    "user": "--user",
    "password_file": "--password-file",
    "token_file": "--token-file",
    "tls_ca_file": "--tls-ca",
    "tls_cert_file": "--tls-cert",
    "tls_key_file": "--tls-key",
}


def selector_arg(text: str) -> Selector:
    """`-l SELECTOR` as kubectl reads it: a bad one is a usage error (exit 2) with kubectl's
    message, then an example."""
    try:
        return parse_selector(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"{e}; write it like 'site=berlin,ring in (canary,beta),!retired'"
        ) from e


def add_nats_options(p: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """The options; with `suppress`, unset ones leave the namespace alone (for subcommands,
    so `harmony-fleet -s URL devices` and `harmony-fleet devices -s URL` both work)."""
    dflt = argparse.SUPPRESS if suppress else None
    g = p.add_argument_group("NATS connection (like the agent's [nats])")
    g.add_argument(
        "-s",
        "--server",
        action="append",
        default=dflt,
        metavar="URL",
        help="NATS server URL; repeatable (default: $NATS_URL or nats://127.0.0.1:4222)",
    )
    g.add_argument("--creds", type=Path, default=dflt, help="NATS .creds file (or $NATS_CREDS)")
    g.add_argument("--nkey", type=Path, default=dflt, help="file with an nkey seed")
    g.add_argument("--user", default=dflt, help="user name (with --password-file)")
    g.add_argument("--password-file", type=Path, default=dflt, help="file holding the password")
    g.add_argument("--token-file", type=Path, default=dflt, help="file holding a token")
    g.add_argument("--tls-ca", type=Path, default=dflt, help="PEM CA bundle")
    g.add_argument("--tls-cert", type=Path, default=dflt, help="PEM client certificate")
    g.add_argument("--tls-key", type=Path, default=dflt, help="PEM client key")


def nats_section(args: argparse.Namespace) -> NatsSection:
    servers = args.server or [
        s.strip() for s in os.environ.get("NATS_URL", "nats://127.0.0.1:4222").split(",")
    ]
    creds = args.creds or (Path(os.environ["NATS_CREDS"]) if os.environ.get("NATS_CREDS") else None)
    return NatsSection(
        servers=servers,
        creds_file=creds,
        nkey_seed_file=args.nkey,
        user=args.user,
        password_file=args.password_file,
        token_file=args.token_file,
        tls_ca_file=args.tls_ca,
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
        connect_timeout=5.0,
    )
