"""The root side's one process entry, run as the units run it: a real interpreter, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.upgrade.journal import JournalRecord, save_journal
from agent.upgrade.layout import MARKER
from agent.upgrade.release import current_version, flip_current

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "packaging" / "systemd"


def _exec_start(unit: str) -> list[str]:
    (line,) = [x for x in (UNITS / unit).read_text().splitlines() if x.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=").lstrip("-").split()


def _device(tmp: Path) -> dict[str, str]:
    """releases/0.1.0 complete, `current` dangling, an interrupted switch to a 0.2.0 never made."""
    root = tmp / "opt"
    (root / "releases" / "0.1.0").mkdir(parents=True)
    (root / "releases" / "0.1.0" / MARKER).write_text("{}\n")
    (root / "releases" / "0.2.0.tmp").mkdir()
    flip_current(root, "0.9.9")
    journal = tmp / "journal"
    journal.mkdir()
    save_journal(journal / "journal.json", JournalRecord(
        state="switching", device_id="dev-1", request_id="req-1",
        from_version="0.1.0", to_version="0.2.0",
    ))
    systemctl = tmp / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$@" >> "{tmp / "systemctl.calls"}"\n')
    systemctl.chmod(0o755)
    return {
        **os.environ,
        "HARMONY_UPGRADE_ROOT": str(root),
        "HARMONY_UPGRADE_JOURNAL_DIR": str(journal),
        "HARMONY_UPGRADE_SYSTEMCTL": str(systemctl),
        "HARMONY_AGENT_CONFIG": str(tmp / "absent.toml"),
    }


@pytest.mark.parametrize(
    "module",
    ["agent.upgrade.root", "agent.upgrade.switch"],
    ids=["entry", "entry-of-units-from-an-older-package"],
)
def test_recover_repairs_current_and_starts_the_switch(tmp_path: Path, module: str) -> None:
    env = _device(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-s", "-B", "-m", module, "--recover"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "opt"
    assert current_version(root) == "0.1.0"
    assert not (root / "releases" / "0.2.0.tmp").exists()
    calls = (tmp_path / "systemctl.calls").read_text().splitlines()
    assert calls == ["start --no-block harmony-agent-upgrade.service"]


def test_the_units_entry_runs_the_switch_module_once(tmp_path: Path) -> None:
    """`-m agent.upgrade.switch` used to run switch.py as __main__ and import it again."""
    module = _exec_start("harmony-agent-upgrade-recover.service")[-2]
    code = textwrap.dedent(f"""
        import runpy, sys
        runs = []
        def count(event, args):
            if event == "exec" and getattr(args[0], "co_filename", "").endswith(
                    "/agent/upgrade/switch.py"):
                runs.append(1)
        sys.addaudithook(count)
        sys.argv = ["entry", "--recover"]
        try:
            runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
        except SystemExit:
            pass
        print(len(runs))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_device(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "1"
    assert current_version(tmp_path / "opt") == "0.1.0"


def test_the_switch_never_loads_its_entry() -> None:
    code = "import sys, agent.upgrade.switch; print('agent.upgrade.root' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "False"


def test_a_resumed_switch_runs_the_old_releases_code(tmp_path: Path) -> None:
    """The journal says `watching` 0.1.0 -> 0.2.0: the code of 0.1.0 (known good) resumes it."""
    env = _device(tmp_path)
    rec = JournalRecord(state="watching", device_id="dev-1", request_id="req-1",
                        from_version="0.1.0", to_version="0.2.0")
    save_journal(tmp_path / "journal" / "journal.json", rec)
    old = tmp_path / "opt" / "releases" / "0.1.0" / "agent" / "upgrade"
    old.mkdir(parents=True)
    (old.parent / "__init__.py").write_text("")
    (old / "__init__.py").write_text("")
    seen = tmp_path / "old-release-ran.json"
    # An older release's entry: only `main(argv)`, no `__main__` block in root.py.
    (old / "root.py").write_text(textwrap.dedent(f"""
        import json, os, sys
        def main(argv):
            with open({str(seen)!r}, "w") as f:
                json.dump({{"argv": argv, "file": __file__,
                           "reexec": os.environ.get("HARMONY_UPGRADE_REEXEC"),
                           "flags": [sys.flags.no_user_site, sys.flags.dont_write_bytecode]}}, f)
            return 0
    """))
    proc = subprocess.run(
        [sys.executable, "-s", "-B", "-m", "agent.upgrade.root"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    ran = json.loads(seen.read_text())
    assert ran["file"] == str((old / "root.py").resolve())
    assert (ran["argv"], ran["reexec"], ran["flags"]) == ([], "1", [1, 1])


def test_an_invalid_config_fails_the_staged_request_once(tmp_path: Path) -> None:
    """Finding 2: the switch used to die on the config and leave `ready` to fire again."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.upgrade.handover import stage
    from agent.upgrade.layout import Staging
    from harmony_core.contracts import UpgradeStatus
    from tests.upgrade.helpers import make_request, signed, write_pub

    env = _device(tmp_path)
    key = Ed25519PrivateKey.generate()
    write_pub(key, tmp_path / "keys")
    state = tmp_path / "state"
    config = tmp_path / "agent.toml"
    # [agent] and [upgrade] still read; [heartbeat] has a key the agent does not know.
    config.write_text(f'[agent]\ndevice_id = "dev-1"\nstate_dir = "{state}"\n'
                      f'[upgrade]\ntrusted_keys_dir = "{tmp_path / "keys"}"\n'
                      '[heartbeat]\nno_such_key = 1\n')
    (tmp_path / "artifact.part").write_bytes(b"deb")
    stage(Staging(state), signed(make_request(request_id="req-9"), key), tmp_path / "artifact.part")
    (tmp_path / "journal" / "journal.json").unlink()
    env |= {"HARMONY_AGENT_CONFIG": str(config), "HARMONY_UPGRADE_STATE_DIR": str(state)}
    proc = subprocess.run([sys.executable, "-s", "-B", "-m", "agent.upgrade.root"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not (Staging(state).staged / Staging.READY).exists()
    st = UpgradeStatus.model_validate_json((tmp_path / "journal" / "status.json").read_bytes())
    assert (st.phase, st.device_id, st.request_id) == ("failed", "dev-1", "req-9")
    assert st.reason and "heartbeat.no_such_key" in st.reason and "fix the config" in st.reason
    assert not (tmp_path / "systemctl.calls").exists(), "the agent was never restarted"
    assert current_version(tmp_path / "opt") == "0.9.9"  # untouched (recovery is not run here)


def test_salvage_keeps_the_sections_that_still_read(tmp_path: Path) -> None:
    from agent.upgrade.root import salvage_config

    path = tmp_path / "agent.toml"
    path.write_text('[agent]\ndevice_id = "edge-1"\n[nats]\nservers = "not a list"\n')
    cfg = salvage_config(path)
    assert cfg.agent.device_id == "edge-1"
    assert cfg.nats.servers == salvage_config(tmp_path / "absent.toml").nats.servers
    path.write_text("not toml [")
    assert salvage_config(path).agent.device_id is None
