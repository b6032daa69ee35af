"""Renders `agent.example.toml` from the config models: every key, its default and meaning.

`python -m agent.config_doc > agent.example.toml`; a test keeps the file current,
so the documentation is written once, in `agent/config.py`.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from agent.config import Config
from harmony_core.durations import format_duration

__all__ = ["render_example"]

_HEADER = """\
# harmony-agent configuration (/etc/harmony-agent/agent.toml).
#
# Every key is shown with its default, commented out: uncomment to change it.
# Unknown keys are errors. Durations are strings such as "15s", "5m", "1h".
# Check a change with `harmony-agent check-config`; apply it with
# `systemctl reload harmony-agent` ([labels], [heartbeat], [logs], [upgrade])
# or a restart ([agent] device_id, [nats]).
# Generated from agent/config.py by `python -m agent.config_doc`: edit there.
"""

_SECTION_DOC = {
    "agent": "Who this device is and where the agent keeps its state.",
    "labels": (
        'Free key = "value" labels the operator selects devices on (matchLabels). '
        "Kubernetes syntax: an optional DNS-subdomain prefix and '/', a name of at most 63 "
        "characters [A-Za-z0-9-_.]; values the same or empty. The prefix "
        "harmony.nationtech.io/ is reserved for the automatic labels (arch, os, hostname, "
        "agent-version)."
    ),
    "nats": (
        "How to reach NATS. Set at most one of creds_file, nkey_seed_file, "
        "user + password_file, token_file. Bucket and stream names must match what "
        "`harmony-fleet init` created."
    ),
    "heartbeat": "Heartbeats to KV device-heartbeat/<device_id>.",
    "logs": "Journal lines shipped to the DEVICE_LOGS stream (subject logs.<device_id>).",
    "upgrade": "Operator-triggered self-upgrade with rollback (ADR-022).",
}


def _is_duration(f: FieldInfo) -> bool:
    return any(getattr(getattr(m, "func", None), "__name__", "") == "_duration" for m in f.metadata)


def _toml(f: FieldInfo, value: Any) -> str:
    extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
    if "toml_default" in extra:
        return str(extra["toml_default"])
    if _is_duration(f):
        return json.dumps(format_duration(float(value)))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, int | float | str | list):
        return json.dumps(value)
    raise TypeError(f"no TOML spelling for {value!r}")


def _comment(text: str) -> list[str]:
    return [f"# {line}" for line in textwrap.wrap(text, 76, break_on_hyphens=False)]


def _section(name: str, model: type[BaseModel]) -> list[str]:
    out = ["", *_comment(_SECTION_DOC[name]), f"[{name}]"]
    for i, (key, f) in enumerate(model.model_fields.items()):
        if i:
            out.append("#")
        out.extend(_comment(f.description or ""))
        default = f.get_default(call_default_factory=True)
        if default is None:
            extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
            example = extra.get("example")
            shown = json.dumps(example) if example is not None else '"..."'
            out.append(f"# {key} = {shown}   (no default)")
        else:
            out.append(f"# {key} = {_toml(f, default)}")
    return out


def render_example() -> str:
    lines = [_HEADER.rstrip("\n")]
    for name, f in Config.model_fields.items():
        if name == "labels":
            lines += ["", *_comment(_SECTION_DOC[name]), "[labels]"]
            lines += ['# site = "berlin-2"', '# example.com/role = "gateway"']
            continue
        ann = f.annotation
        assert isinstance(ann, type) and issubclass(ann, BaseModel)
        lines += _section(name, ann)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_example())
