"""`harmony-agent`: run | check-config | info | status | identity | version (contract §4)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

from agent.config import (
    AgentSection,
    Config,
    check_files,
    config_path_from_env,
    load_config,
)
from agent.version import __version__
from harmony_core.errors import ConfigError

__all__ = ["EX_CONFIG", "EX_FAIL", "EX_NOT_RUNNING", "EX_OK", "main"]

EX_OK = 0
EX_FAIL = 1
EX_NOT_RUNNING = 3
EX_CONFIG = 78


def _load(args: argparse.Namespace) -> tuple[Path, Config, str, str]:
    """Config, device id and machine id, or ConfigError with every problem."""
    from agent.deviceinfo.identity import device_id_of, read_machine_id

    path = config_path_from_env(args.config)
    cfg = load_config(path)
    problems = check_files(cfg)
    machine_id = read_machine_id()
    try:
        device_id = device_id_of(cfg, machine_id)
    except ConfigError as e:
        problems.extend(e.problems)
        device_id = ""
    if problems:
        raise ConfigError(str(path), problems)
    return path, cfg, device_id, machine_id or device_id


def _config_error(e: ConfigError) -> int:
    print(f"harmony-agent: {e}", file=sys.stderr)
    print("harmony-agent: fix the file and run `harmony-agent check-config`", file=sys.stderr)
    from agent.logsetup import journal_wanted

    if journal_wanted():
        # Under systemd, also as one structured journal line with the paths as fields.
        try:
            from systemd import journal

            journal.send(
                str(e),
                PRIORITY="3",
                SYSLOG_IDENTIFIER="harmony-agent",
                HARMONY_EVENT="config-invalid",
                CONFIG_PATH=e.source,
            )
        except ImportError:
            pass
    return EX_CONFIG


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        path, cfg, device_id, _ = _load(args)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EX_CONFIG
    print(f"{path}: OK (device_id {device_id}, {len(cfg.labels)} label(s))")
    return EX_OK


def _cmd_info(args: argparse.Namespace) -> int:
    from agent.deviceinfo import collect_device_info
    from harmony_core.contracts import utcnow

    try:
        _, cfg, device_id, machine_id = _load(args)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EX_CONFIG
    info = collect_device_info(cfg, device_id, machine_id, utcnow())
    print(json.dumps(info.model_dump(mode="json"), indent=2))
    return EX_OK


def _cmd_status(args: argparse.Namespace) -> int:
    from agent.deviceinfo.identity import device_id_of, read_machine_id
    from agent.health import read_health
    from agent.statusline import status_text
    from harmony_core.contracts import utcnow

    path = config_path_from_env(args.config)
    health_file = AgentSection().health_file
    device_id: str | None = None
    # status must work even when the config is broken: then the default path, any device
    with contextlib.suppress(ConfigError):
        cfg = load_config(path)
        health_file = cfg.agent.health_file
        device_id = device_id_of(cfg, read_machine_id())
    h = read_health(health_file)
    if h is None:
        return _not_running(args.json, f"no health file at {health_file}")
    if device_id is not None and h.device_id != device_id:
        # Another agent's file (a second agent, a test run): describing it would mislead.
        error = (
            f"{health_file} belongs to device {h.device_id!r}, not to {device_id!r} of "
            f"{path}: another agent writes it. Give each agent its own [agent] health_file, "
            "or pass -c with that agent's config"
        )
        if args.json:
            refusal = {
                "running": None,
                "error": error,
                "health_file": str(health_file),
                "device_id": device_id,
                "health_device_id": h.device_id,
            }
            print(json.dumps(refusal, indent=2))
        else:
            print(f"harmony-agent: {error}", file=sys.stderr)
        return EX_FAIL
    running = _pid_alive(h.pid)
    if args.json:
        out: dict[str, object] = {**h.model_dump(mode="json"), "running": running}
        if not running:
            out["reason"] = f"pid {h.pid} is gone; it stopped without removing {health_file}"
        print(json.dumps(out, indent=2))
    else:
        print(status_text(h, utcnow(), running=running))
    return EX_OK if running else EX_NOT_RUNNING


def _not_running(as_json: bool, reason: str) -> int:
    if as_json:
        print(json.dumps({"running": False, "reason": reason}, indent=2))
    else:
        print(f"harmony-agent is not running ({reason})", file=sys.stderr)
    return EX_NOT_RUNNING


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmd_run(args: argparse.Namespace) -> int:
    from agent.identity import KeyStore
    from agent.logsetup import setup_logging
    from harmony_core.errors import IdentityError

    try:
        path, cfg, device_id, machine_id = _load(args)
        if cfg.uses_own_key:  # made here, on the first start: never by the package
            try:
                KeyStore(cfg.key_dir).ensure()
            except IdentityError as e:
                raise ConfigError(str(path), [f"identity.key_dir: {e}"]) from e
    except ConfigError as e:
        return _config_error(e)
    setup_logging(device_id, cfg.agent.log_level)
    from agent.daemon import serve

    return asyncio.run(serve(path, cfg, device_id, machine_id))


def _cmd_identity(args: argparse.Namespace) -> int:
    from agent.identity import KeyStore
    from harmony_core import nkey
    from harmony_core.errors import IdentityError

    try:
        path, cfg, device_id, _ = _load(args)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EX_CONFIG
    store = KeyStore(cfg.key_dir)
    try:
        seed = store.seed()
        pending = store.next_seed()
    except IdentityError as e:
        print(f"harmony-agent: {e}", file=sys.stderr)
        return EX_FAIL
    if seed is None:
        print(
            f"harmony-agent: no key yet in {cfg.key_dir}: the agent makes it on its first "
            "start (systemctl start harmony-agent)",
            file=sys.stderr,
        )
        return EX_FAIL
    pub = nkey.public_key(seed)
    out: dict[str, object] = {
        "device_id": device_id,
        "public_key": pub,
        "fingerprint": nkey.fingerprint(pub),
        "key_dir": str(cfg.key_dir),
        "in_use": cfg.uses_own_key,
        "admitted": store.admitted() == pub,
        "rotating_to": nkey.public_key(pending) if pending else None,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return EX_OK
    print(f"device_id:   {device_id}")
    print(f"public_key:  {pub}")
    print(f"fingerprint: {out['fingerprint']}")
    if not cfg.uses_own_key:
        print(f"(not used: [nats] in {path} names another credential)")
    if pending:
        print(f"rotating to: {out['rotating_to']} (kept until the fleet takes it)")
    return EX_OK


def _cmd_version(args: argparse.Namespace) -> int:
    print(__version__)
    return EX_OK


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        default=argparse.SUPPRESS,
        help="config file (default: $HARMONY_AGENT_CONFIG or /etc/harmony-agent/agent.toml)",
    )
    p = argparse.ArgumentParser(
        prog="harmony-agent",
        parents=[common],
        description="Device agent of the harmony fleet: DeviceInfo, heartbeats, logs, upgrades.",
    )
    p.add_argument("--version", action="version", version=f"harmony-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "run", parents=[common], help="run the agent (what the systemd unit does)"
    ).set_defaults(func=_cmd_run)
    sub.add_parser(
        "check-config", parents=[common], help="validate the config; exit 0, or 78 with every error"
    ).set_defaults(func=_cmd_check_config)
    sub.add_parser(
        "info",
        parents=[common],
        help="print the DeviceInfo the agent would publish (JSON, no NATS needed)",
    ).set_defaults(func=_cmd_info)
    st = sub.add_parser(
        "status",
        parents=[common],
        help="what the local agent is doing (connection, heartbeat, logs, upgrade)",
    )
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=_cmd_status)
    ident = sub.add_parser(
        "identity",
        parents=[common],
        help="this device's key: device_id, public key, fingerprint (what the operator approves)",
    )
    ident.add_argument("--json", action="store_true", help="machine-readable output")
    ident.set_defaults(func=_cmd_identity)
    sub.add_parser("version", help="print the version that runs").set_defaults(func=_cmd_version)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
