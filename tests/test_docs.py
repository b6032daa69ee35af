"""The docs stay true: docs/contract.md names what the code has, and every link resolves."""

from __future__ import annotations

import argparse
import re
import typing
from pathlib import Path

import pytest

from agent import cli as agent_cli
from agent.config import NatsSection
from agent.config_doc import CONTRACT_BEGIN, render_config_table, splice
from harmony_core.contracts import UpgradePhase, render_schemas
from harmony_fleet import cli as fleet_cli

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "docs" / "contract.md"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    raise AssertionError("no subcommands")


def test_contract_config_table_is_generated_from_the_models() -> None:
    text = CONTRACT.read_text()
    assert CONTRACT_BEGIN in text
    assert splice(text, render_config_table()) == text, (
        "docs/contract.md's config table is stale: "
        "run `python -m agent.config_doc --contract docs/contract.md`"
    )


def test_splice_replaces_only_between_the_markers() -> None:
    from agent.config_doc import CONTRACT_END

    doc = f"head\n{CONTRACT_BEGIN}\nold\n{CONTRACT_END}\ntail\n"
    assert splice(doc, "new\n") == f"head\n{CONTRACT_BEGIN}\nnew\n{CONTRACT_END}\ntail\n"
    with pytest.raises(ValueError, match="markers"):
        splice("no markers", "x")


@pytest.mark.parametrize(
    ("prog", "parser"),
    [("harmony-agent", agent_cli._parser), ("harmony-fleet", fleet_cli._parser)],
)
def test_contract_names_every_command(prog: str, parser: typing.Any) -> None:
    text = CONTRACT.read_text()
    missing = [c for c in _commands(parser()) if not re.search(rf"\| `{re.escape(c)}[ `]", text)]
    assert not missing, f"docs/contract.md §4 does not describe {prog} {missing}"


def test_contract_names_every_phase_bucket_schema_and_exit_code() -> None:
    text = CONTRACT.read_text()
    for phase in typing.get_args(UpgradePhase):
        assert f"| `{phase}` |" in text, f"upgrade phase {phase} is not in the phase table"
    n = NatsSection()
    for name in (
        n.device_info_bucket,
        n.heartbeat_bucket,
        n.logs_stream,
        n.upgrade_bucket,
        n.upgrade_status_bucket,
        n.artifacts_bucket,
    ):
        assert f"`{name}`" in text, f"{name} is not in the NATS table"
    for schema in render_schemas():
        assert schema in text, f"contracts/{schema} is not named"
    for code in (agent_cli.EX_OK, agent_cli.EX_FAIL, agent_cli.EX_NOT_RUNNING, agent_cli.EX_CONFIG):
        assert f"\n| {code} |" in text, f"harmony-agent exit code {code} is not explained"


_LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_inside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    assert "shared/docs" not in text, f"{doc.name} points outside the repository"
    prose = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))
    for target in _LINK.findall(prose):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name}: {target} leaves the repository"
        assert path.exists(), f"{doc.name}: {target} does not exist"


def test_nothing_in_the_code_points_at_the_design_repository() -> None:
    hits = [
        str(p.relative_to(ROOT))
        for d in ("agent", "harmony_core", "harmony_fleet", "packaging")
        for p in (ROOT / d).rglob("*")
        if p.is_file() and p.suffix in {".py", ".md", ".sh", ".in", ".service", ".path", ""}
        and "shared/docs" in p.read_text(errors="replace")
    ]  # fmt: skip
    assert not hits, f"these name ../shared/docs, which a clone does not have: {hits}"
