"""Stopping the pump is prompt: a reader waiting for new journal lines wakes at once.

A generation ends (SIGTERM, SIGHUP with new filters, a failure) by stopping the
pump and joining its thread. The pump spends its idle time in a wait on the
journal; it used to notice the stop only when that wait timed out (0.5 s), which
every shutdown and reconfigure paid.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import LogsSection
from agent.logs.pump import Batch, Pump
from tests.logs.journald import Journald, journal_cursors, send
from tests.natsserver import wait_for

pytestmark = pytest.mark.journald

REMOTE = Path("/lib/systemd/systemd-journal-remote")


@pytest.fixture
def quiet_journal(
    journald: Journald, ident: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A journal directory of its own holding 3 lines, which nothing writes to.

    The machine's journal changes all the time (other tests write to it), and any
    change ends a wait: only a journal that stays still shows who woke the pump.
    """
    if not REMOTE.exists():
        pytest.skip("needs systemd-journal-remote")
    for i in range(3):
        send(f"line {i}", ident)
    wait_for(lambda: len(journal_cursors("-t", ident)) == 3, 10, "the lines")
    export = subprocess.run(
        ["journalctl", "-q", "--no-pager", "-o", "export", "-t", ident],
        capture_output=True,
        check=True,
    ).stdout
    directory = tmp_path / "journal"
    directory.mkdir()
    subprocess.run(
        [str(REMOTE), f"--output={directory}/quiet.journal", "--split-mode=none", "-"],
        input=export,
        check=True,
        capture_output=True,
    )
    from systemd import journal

    init = journal.Reader.__init__

    def on_dir(self: Any, *_a: Any, converters: Any = None, **_kw: Any) -> None:
        init(self, path=str(directory), converters=converters)

    monkeypatch.setattr(journal.Reader, "__init__", on_dir)
    return directory


def test_request_stop_wakes_an_idle_pump_at_once(
    quiet_journal: Path, ident: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An idle wait far longer than the test may take: only a wake-up ends it in time.
    monkeypatch.setattr("agent.logs.pump._IDLE_WAIT_S", 30.0)
    got: list[Batch] = []
    stop = threading.Event()
    cfg = LogsSection(identifiers=[ident], start_at="all", batch_max_wait=0.01)

    def handoff(batch: Batch) -> bool:
        got.append(batch)
        return True

    pump = Pump(cfg, "dev", None, handoff, stop)
    thread = threading.Thread(target=pump.run, daemon=True)
    thread.start()
    # (A batch of no lines is an idle checkpoint of the journal's tail.)
    wait_for(lambda: pump.at_tail and sum(b.lines for b in got) == 3, 10, "the 3 lines")
    time.sleep(0.2)  # into its idle wait
    t0 = time.monotonic()
    pump.request_stop()
    thread.join(5)
    took = time.monotonic() - t0
    assert not thread.is_alive() and stop.is_set()
    assert took < 0.25, took
