"""The reader selects exactly what `journalctl -u ... -t ... -p ...` shows (the oracle)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.logs.filters import Filters
from agent.logs.reader import JournalReader, StartAt
from tests.logs.journald import (
    Journald,
    UnitWriter,
    cgroup_root,
    journal_cursors,
    send,
    systemd_cat,
    unique,
)
from tests.natsserver import wait_for

pytestmark = pytest.mark.journald


def _read_after(cursor: str, f: Filters) -> list[str]:
    r = JournalReader(f, 4096)
    r.open()
    try:
        r.seek_after(cursor)
        out = []
        while (e := r.next()) is not None:
            out.append(e[0])
        return out
    finally:
        r.close()


@pytest.fixture(scope="module")
def corpus(journald: Journald) -> Iterator[tuple[str, str, list[str], list[str]]]:
    """Lines of two units, three identifiers and every priority, after cursor `start`."""
    if cgroup_root() is None:
        pytest.skip("no cgroup2 hierarchy to place unit processes in")
    tag = unique("f")
    # journalctl --after-cursor with matches skips one line too many when the cursor's
    # own line does not match (it assumes it does); so the oracle uses --cursor from a
    # debug-priority marker no filter below selects.
    marker = unique("start")
    send("start marker", marker, 7)
    wait_for(lambda: len(journal_cursors("-t", marker)) == 1, 10, "the start marker")
    (start,) = journal_cursors("-t", marker)
    units = [f"{tag}-a.service", f"{tag}-b.service"]
    idents = [f"{tag}-x", f"{tag}-y", f"{tag}-z"]
    writers = [UnitWriter(u) for u in units]
    try:
        n = 0
        for prio in range(8):
            for i, ident in enumerate(idents):
                writers[(prio + i) % 2].send(f"unit line {prio} {ident}", ident, prio)
                send(f"plain line {prio} {ident}", ident, prio)
                n += 2
        systemd_cat(["from a pipe 1", "from a pipe 2"], idents[0], "warning")
        n += 2
        wait_for(
            lambda: (
                len(
                    journal_cursors(
                        "--cursor", start, "-t", idents[0], "-t", idents[1], "-t", idents[2]
                    )
                )
                == n
            ),
            10,
            "the corpus in the journal",
        )
        for u in units:  # the unit must have been recorded before the writers go
            wait_for(
                lambda u=u: len(journal_cursors("--cursor", start, "-u", u)) == 12,
                10,
                f"lines of {u}",
            )
    finally:
        for w in writers:
            w.close()
    yield start, tag, units, idents


CASES = [
    ([], ["x"], 7),
    ([], ["x", "z"], 3),
    (["a"], [], 7),
    (["a", "b"], [], 4),
    (["b"], ["y"], 7),
    (["a"], ["x", "y"], 5),
    ([], [], 0),
]


@pytest.mark.parametrize(("units", "idents", "prio"), CASES)
def test_same_lines_as_journalctl(
    corpus: tuple[str, str, list[str], list[str]],
    units: list[str],
    idents: list[str],
    prio: int,
) -> None:
    start, tag, _all_units, _all_idents = corpus
    u = [f"{tag}-{x}" for x in units]  # without .service: mangled like journalctl -u
    t = [f"{tag}-{x}" for x in idents]
    args = ["--cursor", start]
    for x in u:
        args += ["-u", x]
    for x in t:
        args += ["-t", x]
    if prio < 7:
        args += ["-p", str(prio)]
    want = journal_cursors(*args)
    got = _read_after(start, Filters(tuple(u), tuple(t), prio))
    if prio == 0 and not u and not t:
        # everything at emerg after `start`, whoever wrote it: only compare ours
        assert [c for c in got if c in set(want)] == want
    else:
        assert got == want
    assert want or prio == 0


def test_seek_after_skips_the_saved_line(journald: Journald) -> None:
    ident = unique("seek")
    for i in range(3):
        send(f"line {i}", ident)
    wait_for(lambda: len(journal_cursors("-t", ident)) == 3, 10, "three lines")
    cursors = journal_cursors("-t", ident)
    assert _read_after(cursors[0], Filters(identifiers=(ident,), max_priority=7)) == cursors[1:]
    # A saved position on a line the filters do not want (a tail checkpoint) is also fine.
    other = unique("other")
    send("not wanted", other)
    send("wanted", ident)
    wait_for(lambda: len(journal_cursors("-t", ident)) == 4, 10, "the fourth line")
    (skip,) = journal_cursors("-t", other)
    got = _read_after(skip, Filters(identifiers=(ident,), max_priority=7))
    assert got == journal_cursors("-t", ident)[3:]


@pytest.mark.parametrize("start_at", ["now", "boot", "all"])
def test_start_at(journald: Journald, start_at: StartAt) -> None:
    ident = unique("start")
    send("old", ident)
    wait_for(lambda: len(journal_cursors("-t", ident)) == 1, 10, "the old line")
    r = JournalReader(Filters(identifiers=(ident,), max_priority=7), 4096)
    r.open()
    try:
        r.seek_start(start_at)
        send("new", ident)
        wait_for(lambda: len(journal_cursors("-t", ident)) == 2, 10, "the new line")
        got = []
        while (e := r.next()) is not None:
            got.append(e[2]["MESSAGE"])
    finally:
        r.close()
    assert got == ([b"new"] if start_at == "now" else [b"old", b"new"])
