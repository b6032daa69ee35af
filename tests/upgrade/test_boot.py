"""The boot-time decision (pure, a table) and its I/O edge `recover_on_boot` on real dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.upgrade.boot import BootFacts, BootPlan, JournalFacts, newest, plan_boot
from agent.upgrade.journal import JournalRecord, save_journal
from agent.upgrade.layout import MARKER, Layout
from agent.upgrade.release import current_version, flip_current
from agent.upgrade.root import recover_on_boot
from agent.upgrade.states import MAX_RESUMES

OLD, NEW = "0.1.0", "0.2.0"
BOTH = frozenset({OLD, NEW})


def _j(state: str, *, resumes: int = 0, published: bool = False) -> JournalFacts:
    return JournalFacts(state=state, from_version=OLD, to_version=NEW, resumes=resumes,
                        published=published)


# (journal, current, complete releases) -> plan
TABLE: list[tuple[str, JournalFacts | None, str | None, frozenset[str], BootPlan]] = [
    ("no journal, current fine", None, OLD, BOTH, BootPlan()),
    ("no journal, current dangles", None, "0.9.9", BOTH, BootPlan(flip_to=NEW)),
    ("no journal, current missing", None, None, frozenset({OLD}), BootPlan(flip_to=OLD)),
    ("no journal, nothing complete", None, None, frozenset(), BootPlan()),
    ("verifying: abandon", _j("verifying"), OLD, frozenset({OLD}),
     BootPlan(remove=(NEW,), start_switch=True)),
    ("extracting, new half made", _j("extracting"), OLD, frozenset({OLD}),
     BootPlan(remove=(NEW,), start_switch=True)),
    ("extracting, new complete: kept", _j("extracting"), OLD, BOTH,
     BootPlan(start_switch=True)),
    ("switching: boot into new", _j("switching"), OLD, BOTH,
     BootPlan(flip_to=NEW, start_switch=True)),
    ("switching, new gone: old", _j("switching"), NEW, frozenset({OLD}),
     BootPlan(flip_to=OLD, start_switch=True)),
    ("watching: stay on new", _j("watching"), NEW, BOTH, BootPlan(start_switch=True)),
    ("watching too often: old", _j("watching", resumes=MAX_RESUMES), NEW, BOTH,
     BootPlan(flip_to=OLD, start_switch=True)),
    ("committing: new", _j("committing"), OLD, BOTH, BootPlan(flip_to=NEW, start_switch=True)),
    ("rolling-back: old", _j("rolling-back"), NEW, BOTH,
     BootPlan(flip_to=OLD, start_switch=True)),
    ("corrupt journal: old", JournalFacts(state="corrupt"), "0.9.9", BOTH,
     BootPlan(flip_to=NEW, start_switch=True)),
    ("committed and reported", _j("committed", published=True), NEW, BOTH, BootPlan()),
    ("committed, unreported", _j("committed"), NEW, BOTH, BootPlan(start_switch=True)),
    ("rolled back, current dangles", _j("rolled-back", published=True), "0.9.9", BOTH,
     BootPlan(flip_to=OLD)),
]


@pytest.mark.parametrize(("journal", "current", "complete", "plan"),
                         [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_boot_decision_table(journal: JournalFacts | None, current: str | None,
                             complete: frozenset[str], plan: BootPlan) -> None:
    assert plan_boot(BootFacts(journal, current, complete)) == plan


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["1.9.0", "1.10.0"], "1.10.0"),
        (["0.10.0", "0.9.9", "0.2.0"], "0.10.0"),
        (["1.2.0", "1.2.0+hotfix1", "1.1.99"], "1.2.0+hotfix1"),
        (["1.5.0", "1.5.0~rc.1"], "1.5.0"),  # dpkg: '~' sorts before the release
        (["odd-name", "0.1.0"], "0.1.0"),
        ([], None),
    ],
)
def test_newest_is_in_version_order_not_string_order(
    names: list[str], expected: str | None
) -> None:
    assert newest(names) == expected


def _release(layout: Layout, version: str, complete: bool = True) -> None:
    d = layout.releases / version
    d.mkdir(parents=True)
    if complete:
        (d / MARKER).write_text("{}\n")


def test_a_dangling_current_falls_back_to_the_newest_release(tmp_path: Path) -> None:
    """Finding 11: string order would take 1.9.0 over 1.10.0; no journal needed to repair."""
    layout = Layout(root=tmp_path / "opt", journal_dir=tmp_path / "journal")
    for v in ("1.9.0", "1.10.0"):
        _release(layout, v)
    _release(layout, "1.11.0", complete=False)
    flip_current(layout.root, "2.0.0")  # gone
    assert recover_on_boot(layout) is False
    assert current_version(layout.root) == "1.10.0"


def test_a_finished_journal_with_its_release_gone_takes_the_newest(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path / "opt", journal_dir=tmp_path / "journal")
    for v in ("1.9.0", "1.10.0"):
        _release(layout, v)
    flip_current(layout.root, "1.12.0")
    layout.journal_dir.mkdir()
    save_journal(layout.journal, JournalRecord(
        state="committed", device_id="dev-1", from_version="1.11.0", to_version="1.12.0",
        published=True))
    assert recover_on_boot(layout) is False
    assert current_version(layout.root) == "1.10.0"


def test_recovery_removes_the_half_made_release_of_an_abandoned_switch(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path / "opt", journal_dir=tmp_path / "journal")
    _release(layout, OLD)
    _release(layout, NEW, complete=False)
    (layout.releases / "0.3.0.tmp").mkdir()
    flip_current(layout.root, OLD)
    layout.journal_dir.mkdir()
    save_journal(layout.journal, JournalRecord(
        state="extracting", device_id="dev-1", from_version=OLD, to_version=NEW))
    assert recover_on_boot(layout) is True
    assert sorted(p.name for p in layout.releases.iterdir()) == [OLD]
    assert current_version(layout.root) == OLD
