"""`python bench/journal_dir.py DIR ARGS...`: `python -m agent.logs ARGS...` reading the
journal files in DIR only.

The benchmark gives both shippers the same private journal (the lines it wrote,
exported and imported with systemd-journal-remote), so other jobs writing to the
system journal meanwhile change nothing. Every libsystemd handle the agent opens
is opened on DIR; nothing else of the agent changes. Run as a script (not `-m`),
so `agent` comes from PYTHONPATH: the same wrapper runs an older checkout.

At exit it writes the CPU seconds of the pump thread, of the main thread (the
event loop) and of all others together as JSON to $BENCH_THREADS (if set).
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import threading
import time
from typing import Any

_cpu: dict[str, float] = {}


def _main() -> None:
    # Run as a script, this directory comes first on sys.path, and bench/agent.py
    # would shadow the `agent` package.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    journal_dir = sys.argv[1]
    args = sys.argv[2:]

    from systemd import journal

    # Reader.__init__ itself (journal.py names the class in its super() call, so the
    # class must stay the same): every handle opens DIR, whatever flags it asks for.
    init = journal.Reader.__init__

    def on_dir(self: Any, *_a: Any, converters: Any = None, **_kw: Any) -> None:
        init(self, path=journal_dir, converters=converters)

    journal.Reader.__init__ = on_dir
    run = threading.Thread.run

    def counted(self: threading.Thread) -> None:
        try:
            run(self)
        finally:
            name = "pump" if self.name == "logs-pump" else "other"
            _cpu[name] = _cpu.get(name, 0.0) + time.thread_time()

    threading.Thread.run = counted  # type: ignore[method-assign]

    def report() -> None:
        _cpu["main"] = time.thread_time()
        out = os.environ.get("BENCH_THREADS")
        if out:
            with open(out, "w") as f:
                json.dump({k: round(v, 3) for k, v in _cpu.items()}, f)

    atexit.register(report)
    sys.argv = ["agent.logs", *args]
    runpy.run_module("agent.logs", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _main()
