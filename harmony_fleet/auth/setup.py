"""`harmony-fleet auth init DIR`: what a fleet needs once for device identity, and authd.toml.

Creates, in DIR (0700), each only when missing — a key that exists is never
regenerated (every device's JWT and every operator credential hangs on them):
- `issuer.nk`: the account key the callout signs user JWTs with (nats-server
  trusts it as the `auth_callout` issuer);
- `callout.nk`: the callout service's own NATS user;
- `operator.nk`: the operator's credential (`harmony-fleet --nkey DIR/operator.nk`);
- `system.nk`: a user of the system account, to find and kick a revoked
  device's connections on every server (`harmony-fleet revoke`);
- `placeholder.pub`: a public key with no seed anywhere: nats-server sends a
  nonce only when some nkey user is configured, and the devices' nkey
  signatures are over that nonce;
and writes `nats-auth.conf` (accounts, `auth_callout`, `system_account`: to
`include` from the nats-server config) from those keys, plus `authd.toml` (the
callout's config, kept once it exists: it is the operator's to edit).
Seeds are 0600. Nothing here talks to NATS.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, ValidationError, field_validator

from harmony_core import nkey
from harmony_core.errors import ConfigError, IdentityError
from harmony_core.settings import ConfigPath, Duration, NatsSection, Section
from harmony_fleet.auth.registry import REGISTRY_BUCKET

__all__ = [
    "ACCOUNT",
    "SYSTEM_ACCOUNT",
    "AuthdConfig",
    "CalloutSection",
    "InitResult",
    "init_auth_dir",
    "load_authd",
    "render_nats_conf",
    "with_credentials",
]

ACCOUNT = "DEVICES"
SYSTEM_ACCOUNT = "SYS"
_MIN_TTL_S = 2.0
_MAX_TTL_S = 7 * 24 * 3600.0


class CalloutSection(Section):
    issuer_seed_file: ConfigPath = Field(
        description="The account seed user JWTs are signed with (auth init's issuer.nk)."
    )
    account: str = Field(default=ACCOUNT, description="The account devices are placed in.")
    ttl: Duration = Field(default=3600.0, description="How long a device's user JWT lasts.")
    registry_bucket: str = Field(default=REGISTRY_BUCKET, description="The identity registry.")
    queue: str = Field(
        default="harmony-fleet-auth", description="Queue group the callout instances share."
    )
    max_concurrent: int = Field(
        default=64, ge=1, le=4096, description="Authorization requests decided at once."
    )

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, v: float) -> float:
        if not _MIN_TTL_S <= v <= _MAX_TTL_S:
            raise ValueError("ttl must be between 2s and 7d")
        return v


class AuthdConfig(Section):
    """authd.toml: how `harmony-fleet auth serve` reaches NATS, and what it issues."""

    nats: NatsSection
    callout: CalloutSection


def with_credentials(cfg: AuthdConfig, credentials: Path | None) -> AuthdConfig:
    """Under systemd (`LoadCredential=`), a credential of the same file name as a seed
    authd.toml names is used instead: the unit reads root's 0600 seeds for the service."""
    if credentials is None:
        return cfg

    def pick(path: Path | None) -> Path | None:
        if path is not None and (credentials / path.name).is_file():
            return credentials / path.name
        return path

    nats = cfg.nats.model_copy(update={"nkey_seed_file": pick(cfg.nats.nkey_seed_file)})
    issuer = pick(cfg.callout.issuer_seed_file)
    callout = cfg.callout.model_copy(update={"issuer_seed_file": issuer})
    return cfg.model_copy(update={"nats": nats, "callout": callout})


def load_authd(path: Path) -> AuthdConfig:
    """authd.toml, validated; ConfigError listing every problem."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(
            str(path), ["no such file; `harmony-fleet auth init DIR` writes it"]
        ) from e
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(str(path), [f"cannot be read: {e}"]) from e
    try:
        return AuthdConfig.model_validate(raw, context={"toml": True})
    except ValidationError as e:
        problems = [
            ".".join(str(x) for x in err["loc"]) + ": " + err["msg"].removeprefix("Value error, ")
            for err in e.errors()
        ]
        raise ConfigError(str(path), problems) from e


@dataclass(frozen=True)
class InitResult:
    lines: list[str]
    operator_nkey: Path


def _seed_file(path: Path, role: nkey.Role, lines: list[str]) -> str:
    """The seed in `path`, made (0600) when missing; IdentityError when it is not one."""
    if path.exists():
        text = path.read_text().strip()
        try:
            pub = nkey.public_key(text)
        except nkey.NkeyError as e:
            raise IdentityError(
                f"{path} is not an nkey seed; move it away and run init again"
            ) from e
        if not nkey.is_public_key(pub, role):
            raise IdentityError(f"{path} holds a seed of another kind than {role}")
        lines.append(f"{path.name}: exists ({pub})")
        return text
    seed = nkey.new_seed(role)
    _write(path, seed + "\n", 0o600)
    lines.append(f"{path.name}: created ({nkey.public_key(seed)})")
    return seed


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def render_nats_conf(
    *,
    issuer: str,
    callout: str,
    operator: str,
    system: str,
    placeholder: str,
    account: str = ACCOUNT,
    bucket: str = REGISTRY_BUCKET,
) -> str:
    """The nats-server config fragment for these public keys."""
    return f"""\
# Generated by `harmony-fleet auth init` from the keys beside this file. Include it
# from the nats-server config, beside its `jetstream {{ }}` block, as `include <path>`:
# the path relative to that config's directory (nats-server's rule for includes).
# Every client but the three users below is decided by the auth callout
# (`harmony-fleet auth serve`), which places devices in account {account}.
accounts {{
  {account} {{
    jetstream: enabled
    users: [
      # the callout service: answers $SYS.REQ.USER.AUTH, keeps the registry ({bucket})
      {{
        nkey: {callout}
        permissions: {{
          publish: {{ allow: ["$JS.API.>", "$KV.{bucket}.>", "_INBOX.>"] }}
          subscribe: {{ allow: ["$SYS.REQ.USER.AUTH", "_INBOX.>"] }}
          allow_responses: true
        }}
      }}
      # the operator (harmony-fleet --nkey operator.nk)
      {{ nkey: {operator} }}
      # no one holds its seed: it makes nats-server send the nonce devices sign
      {{
        nkey: {placeholder}
        permissions: {{ publish: {{ deny: ">" }}, subscribe: {{ deny: ">" }} }}
      }}
    ]
  }}
  {SYSTEM_ACCOUNT} {{
    users: [
      # finds and kicks a revoked device's connections (harmony-fleet revoke)
      {{ nkey: {system} }}
    ]
  }}
}}
system_account: {SYSTEM_ACCOUNT}
authorization {{
  # The callout answers within nats-server's authentication timeout (2 s): keep that
  # default. Past 2 s the server PINGs the new client first, and nats-py then takes a
  # connect that was never confirmed for a good one; a refused device just retries.
  auth_callout {{
    issuer: {issuer}
    account: {account}
    auth_users: [ {callout}, {operator}, {system} ]
  }}
}}
"""


def _authd_toml(d: Path, servers: list[str]) -> str:
    listed = ", ".join(f'"{s}"' for s in servers)
    return f"""\
# harmony-fleet auth serve -c {d / "authd.toml"}
# Written once by `harmony-fleet auth init`; yours to edit (init keeps it).

[nats]
servers = [{listed}]
nkey_seed_file = "{d / "callout.nk"}"
# The fleet's bucket and stream names, if not the defaults (they shape each
# device's permissions): device_info_bucket, heartbeat_bucket, logs_stream,
# logs_subject_prefix, upgrade_bucket, upgrade_status_bucket, artifacts_bucket.

[callout]
issuer_seed_file = "{d / "issuer.nk"}"
account = "{ACCOUNT}"
# How long a device's user JWT lasts; it logs in again by itself when it runs out.
ttl = "1h"
"""


def init_auth_dir(d: Path, servers: list[str]) -> InitResult:
    """Create what is missing in `d`; one line per item saying what happened."""
    d = d.absolute()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    lines: list[str] = []
    issuer = _seed_file(d / "issuer.nk", "account", lines)
    callout = _seed_file(d / "callout.nk", "user", lines)
    operator = _seed_file(d / "operator.nk", "user", lines)
    system = _seed_file(d / "system.nk", "user", lines)
    ph_file = d / "placeholder.pub"
    if ph_file.exists() and nkey.is_public_key(ph_file.read_text().strip()):
        placeholder = ph_file.read_text().strip()
        lines.append(f"{ph_file.name}: exists ({placeholder})")
    else:
        # Only its public half is kept: no one can ever log in as it.
        placeholder = nkey.public_key(nkey.new_seed("user"))
        _write(ph_file, placeholder + "\n", 0o644)
        lines.append(f"{ph_file.name}: created ({placeholder})")
    conf = render_nats_conf(
        issuer=nkey.public_key(issuer),
        callout=nkey.public_key(callout),
        operator=nkey.public_key(operator),
        system=nkey.public_key(system),
        placeholder=placeholder,
    )
    conf_file = d / "nats-auth.conf"
    same = conf_file.exists() and conf_file.read_text() == conf
    if not same:
        _write(conf_file, conf, 0o644)
    lines.append(f"{conf_file.name}: {'exists' if same else 'written'}")
    authd = d / "authd.toml"
    if authd.exists():
        lines.append(f"{authd.name}: exists (kept)")
    else:
        _write(authd, _authd_toml(d, servers), 0o644)
        lines.append(f"{authd.name}: created")
    return InitResult(lines, d / "operator.nk")
