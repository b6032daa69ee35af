"""Self-upgrade on a booted Debian (ADR-022): real .debs, real systemd, a real nats-server.

One container for the module; the scenarios run in file order and each leaves
a working agent behind. Bad builds are copies of the source tree patched to
crash at start, never send READY, or never reach NATS (tests/upgrade/variants).
Every scenario asserts the end state in NATS: the status, and heartbeats of
the version that must be running.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harmony_core.contracts import Artifact, UpgradeRequest, utcnow
from harmony_fleet.cli import main as fleet
from harmony_fleet.keys import private_pem, public_pem
from harmony_fleet.signing import sign_request
from tests.agentproc import kv_get_json, run_bus
from tests.e2e.conftest import AGENT, agent_toml, stays
from tests.e2e.harness import Container
from tests.natsserver import NatsServer, wait_for
from tests.packaging.debbuild import REPO, build_deb, source_version
from tests.upgrade.variants import make_tree

pytestmark = pytest.mark.e2e

SWITCH = "harmony-agent-upgrade.service"
JOURNAL = "/var/lib/harmony-agent-upgrade/journal.json"
# The root side's latest UpgradeStatus, which the agent relays to NATS.
STATUS = "/var/lib/harmony-agent-upgrade/status.json"
WINDOW = "6s"
# version -> variant of every build the scenarios use.
BUILDS = {
    "0.2.0": "good", "0.3.0": "crash", "0.3.1": "no-ready", "0.3.2": "no-nats",
    "0.4.0": "good", "0.5.0": "good", "0.6.0": "good", "0.7.0": "good", "0.8.0": "good",
}


class Fleet:
    """The operator's side, through `harmony-fleet` (in-process) and direct KV reads."""

    def __init__(self, url: str, key: Path, device: str) -> None:
        self.url = url
        self.key = key
        self.device = device
        self.debs: dict[str, Path] = {}

    def cli(self, *args: str) -> int:
        return fleet(["-s", self.url, *args])

    def upgrade(self, version: str, *extra: str, window: str = WINDOW) -> str:
        before = self.status()
        assert self.cli("upgrade", self.device, "--version", version, "--key", str(self.key),
                        "--confirm-window", window, *extra) == 0
        # The request id is in the KV value the CLI wrote.
        got = kv_get_json(self.url, "agent-upgrade", self.device)
        assert got is not None
        import base64
        rid = str(json.loads(base64.b64decode(got[0]["payload"]))["request_id"])
        assert before is None or before.get("request_id") != rid
        return rid

    def status(self) -> dict[str, Any] | None:
        got = kv_get_json(self.url, "agent-upgrade-status", self.device)
        return got[0] if got else None

    def wait_final(self, rid: str, timeout: float = 180) -> dict[str, Any]:
        final = {"committed", "rejected", "rolled_back", "failed"}

        def done() -> dict[str, Any] | None:
            st = self.status()
            return st if st and st.get("request_id") == rid and st["phase"] in final else None
        wait_for(done, timeout, f"a final status of {rid}", interval=0.5)
        st = done()
        assert st is not None
        return st

    def heartbeat_from(self, version: str, after: datetime, timeout: float = 60) -> None:
        """A heartbeat of `version` written by the server after `after`."""
        def ok() -> bool:
            got = kv_get_json(self.url, "device-heartbeat", self.device)
            return bool(got and got[0]["agent_version"] == version and got[2] > after
                        and got[0]["state"] == "running")
        wait_for(ok, timeout, f"a heartbeat of {version}", interval=0.5)


_CACHE = Path("/var/tmp/harmony-upgrade-e2e-debs")


def _cached_build(tree: Path, version: str) -> Path:
    """build_deb, cached on disk by the tree's content (builds take ~20 s each)."""
    import hashlib

    h = hashlib.sha256(version.encode())
    for f in sorted(tree.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(tree)).encode() + b"\0" + f.read_bytes())
    for f in sorted((REPO / "packaging").rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    cached = _CACHE / h.hexdigest()[:16] / f"harmony-agent_{version}_amd64.deb"
    if not cached.exists():
        built = build_deb("amd64", version, src=tree)
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, cached.with_suffix(".tmp"))
        cached.with_suffix(".tmp").rename(cached)
    return cached


@pytest.fixture(scope="module")
def builds() -> Iterator[dict[str, Path]]:
    """Real .debs of every version in BUILDS (two at a time: ~20 s each)."""
    work = Path(tempfile.mkdtemp(prefix="harmony-upgrade-e2e-", dir="/var/tmp"))
    try:
        def one(item: tuple[str, str]) -> tuple[str, Path]:
            version, variant = item
            tree = make_tree(REPO, work / f"{version}-{variant}", version, variant)
            return version, _cached_build(tree, version)
        with ThreadPoolExecutor(2) as pool:
            yield dict(pool.map(one, BUILDS.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def device(base: Path, nats: NatsServer) -> Iterator[Container]:
    old = build_deb("amd64")
    with Container.create(base, "e2e-upgrade") as c:
        c.boot()
        c.write_file("/etc/harmony-agent/agent.toml", agent_toml(nats.url, interval="1s"), 0o640)
        c.write_file("/etc/harmony-agent/keys/operator.pub", public_pem(_KEY.public_key()))
        c.install_deb(old)
        c.wait_active(AGENT)
        yield c


_KEY = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def ops(device: Container, nats: NatsServer, builds: dict[str, Path],
        tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    key = tmp_path_factory.mktemp("keys") / "operator.key"
    key.write_bytes(private_pem(_KEY))
    f = Fleet(nats.url, key, device.machine_id)
    for version, deb in {source_version(): build_deb("amd64"), **builds}.items():
        assert f.cli("publish-artifact", str(deb), "--key", str(key)) == 0, version
        f.debs[version] = deb
    f.heartbeat_from(source_version(), utcnow() - timedelta(days=1))
    return f


def _current(c: Container) -> str:
    return c.run(["readlink", "/opt/harmony-agent/current"], check=True).stdout.strip()


def _intact(c: Container, version: str) -> None:
    """`current` names a complete release of `version`; no half-written release is left."""
    assert _current(c) == f"releases/{version}"
    assert c.exists(f"/opt/harmony-agent/releases/{version}/.complete")
    assert c.run(["sh", "-c", "ls -d /opt/harmony-agent/releases/*.tmp"]).returncode != 0
    assert c.run([AGENT, "version"], check=True).stdout.strip() == version
    c.wait_active(AGENT)


def _journal(c: Container) -> dict[str, Any] | None:
    r = c.run(["cat", JOURNAL])
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None


def _sigkill(c: Container, unit: str) -> None:
    """SIGKILL the unit's main process (`systemctl kill` cannot walk cgroups under nspawn here)."""
    pid = c.show(unit, "MainPID")["MainPID"]
    assert pid != "0", f"{unit} has no main process"
    c.run(["kill", "-KILL", pid], check=True)


def _running(ops: Fleet) -> str:
    got = kv_get_json(ops.url, "device-heartbeat", ops.device)
    assert got is not None
    return str(got[0]["agent_version"])


# --- rejections: nothing changes ------------------------------------------------


def _put(ops: Fleet, env: bytes) -> None:
    run_bus(ops.url, lambda bus: bus.kv_put("agent-upgrade", ops.device, env))


def _req(ops: Fleet, version: str, **over: Any) -> UpgradeRequest:
    import hashlib

    data = ops.debs[version].read_bytes()
    now = utcnow()
    fields: dict[str, Any] = {
        "request_id": f"e2e-{now.timestamp()}", "device_id": ops.device,
        "target_version": version, "arch": "amd64",
        "artifact": Artifact(bucket="agent-artifacts", name=ops.debs[version].name,
                             sha256=hashlib.sha256(data).hexdigest(), size=len(data)),
        "issued_at": now - timedelta(seconds=5), "expires_at": now + timedelta(hours=1),
        "confirm_window_s": 6.0,
    }
    fields.update(over)
    return UpgradeRequest.model_validate(fields)


def test_refused_requests_change_nothing(device: Container, ops: Fleet) -> None:
    pid = device.show(AGENT, "MainPID")["MainPID"]
    old = source_version()
    now = utcnow()
    good = sign_request(_req(ops, "0.2.0", request_id="e2e-replayed"), _KEY)
    cases: list[tuple[bytes, str]] = [
        (sign_request(_req(ops, "0.2.0", issued_at=now - timedelta(hours=2),
                           expires_at=now - timedelta(hours=1)), _KEY).model_dump_json().encode(),
         "expired"),
        (sign_request(_req(ops, "0.2.0", device_id="someone-else"), _KEY)
         .model_dump_json().encode(), "is for device 'someone-else'"),
        (sign_request(_req(ops, "0.2.0", arch="arm64"), _KEY).model_dump_json().encode(),
         "built for arm64"),
        (sign_request(_req(ops, "0.2.0", target_version="0.0.1"), _KEY)
         .model_dump_json().encode(), "older than the running"),
        (sign_request(_req(ops, "0.2.0"), Ed25519PrivateKey.generate())
         .model_dump_json().encode(), "no signature by a trusted key"),
    ]
    # A tampered envelope: the payload changed after signing.
    tampered = json.loads(good.model_dump_json())
    import base64
    body = json.loads(base64.b64decode(tampered["payload"]))
    body["target_version"] = "0.8.0"
    tampered["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    cases.append((json.dumps(tampered).encode(), "no signature by a trusted key"))
    for env, reason in cases:
        since = utcnow()
        _put(ops, env)

        def rejected(reason: str = reason, since: datetime = since) -> bool:
            st = ops.status()
            return bool(st and st["phase"] == "rejected" and reason in (st.get("reason") or "")
                        and datetime.fromisoformat(st["updated_at"]) > since)
        wait_for(rejected, 30, f"rejected: {reason}", interval=0.3)
    # Replay: a request id the device already acted on (here: refused, then sent again).
    _put(ops, good.model_dump_json().encode())
    wait_for(lambda: (ops.status() or {}).get("request_id") == "e2e-replayed", 30, "first try")
    first = ops.wait_final("e2e-replayed")
    assert first["phase"] == "committed"
    ops.heartbeat_from("0.2.0", utcnow())
    _put(ops, good.model_dump_json().encode())
    wait_for(lambda: "replay" in ((ops.status() or {}).get("reason") or ""), 30, "replay refused")
    assert _running(ops) == "0.2.0"
    # Only the accepted request restarted the agent.
    assert device.show(AGENT, "MainPID")["MainPID"] != pid
    assert old != "0.2.0"


# --- a good build commits; bad builds roll back ---------------------------------


def test_good_upgrade_commits_and_reports_the_new_version(device: Container, ops: Fleet) -> None:
    _intact(device, "0.2.0")
    info = kv_get_json(ops.url, "device-info", ops.device)
    assert info is not None and info[0]["agent_version"] == "0.2.0"
    st = ops.status()
    assert st is not None and st["phase"] == "rejected"  # the replay above, nothing since
    status = device.run([AGENT, "status"]).stdout
    assert "harmony-agent 0.2.0" in status and "upgrade:" in status, status


MAX_EXPOSURE = 3.0


@pytest.mark.parametrize("unit", [SWITCH, "harmony-agent-upgrade-recover.service"])
def test_the_root_units_are_sandboxed(device: Container, unit: str) -> None:
    """`systemd-analyze security` of the running manager, and the upgrades above passed in it."""
    out = device.run(["systemd-analyze", "security", "--no-pager", unit], check=True).stdout
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert found and float(found.group(1)) <= MAX_EXPOSURE, out


def test_the_agent_reads_the_root_status_but_not_the_journal(device: Container) -> None:
    mode = device.run(["stat", "-c", "%a %U", "/var/lib/harmony-agent-upgrade",
                       JOURNAL, STATUS], check=True).stdout.splitlines()
    assert mode == ["711 root", "600 root", "644 root"]
    assert device.run(["runuser", "-u", AGENT, "--", "cat", JOURNAL]).returncode != 0
    st = json.loads(device.run(["runuser", "-u", AGENT, "--", "cat", STATUS],
                               check=True).stdout)
    assert st["device_id"] == device.machine_id


@pytest.mark.parametrize(
    ("version", "reason"),
    [("0.3.0", "crashed|exited"), ("0.3.1", "never sent READY"), ("0.3.2", "acknowledged")],
    ids=["crash", "no-ready", "no-nats"],
)
def test_bad_build_rolls_back_and_old_version_heartbeats(
    device: Container, ops: Fleet, version: str, reason: str
) -> None:
    rid = ops.upgrade(version)
    st = ops.wait_final(rid)
    assert st["phase"] == "rolled_back", st
    assert re.search(reason, st["reason"]), st
    assert st["from_version"] == "0.2.0" and st["target_version"] == version
    if version == "0.3.0":
        assert any("crashing at start on purpose" in line for line in st.get("log_tail", [])), st
    ops.heartbeat_from("0.2.0", datetime.fromisoformat(st["updated_at"]))
    _intact(device, "0.2.0")
    assert not device.exists(f"/opt/harmony-agent/releases/{version}")


def test_a_digest_that_rolled_back_is_refused(ops: Fleet) -> None:
    rid = ops.upgrade("0.3.0")
    st = ops.wait_final(rid, 60)
    assert st["phase"] == "rejected" and "already rolled back" in st["reason"], st


# --- the root switch never loops (issue 9, finding 2) -------------------------------

STAGED = "/var/lib/harmony-agent/upgrade/staged"
# systemd's catalog id of "Starting <unit>..." (sd-messages.h SD_MESSAGE_UNIT_STARTING).
_UNIT_STARTING = "7d4958e842da4a758f6c1cdc7b36dcc5"


def _switch_starts(c: Container, since: datetime) -> int:
    """How often systemd started the switch since `since` (path trigger and restarts alike)."""
    return sum(1 for r in c.journal(SWITCH, "--since", f"@{since.timestamp():.3f}")
               if r.get("MESSAGE_ID") == _UNIT_STARTING)


def _as_agent(c: Container, script: str) -> None:
    """Run `script` as the agent's user: what a compromised agent could do."""
    c.run(["runuser", "-u", AGENT, "--", "sh", "-c", script], check=True)


def _ends_once(c: Container, ops: Fleet, since: datetime, phase: str, reason: str) -> None:
    """The switch reports `phase` with `reason`, ran exactly once, and stays stopped."""
    def reported() -> bool:
        st = ops.status()
        return bool(st and st["phase"] == phase and re.search(reason, st.get("reason") or "")
                    and datetime.fromisoformat(st["updated_at"]) > since)
    wait_for(reported, 60, f"{phase}: {reason}", interval=0.3)
    c.wait_state(SWITCH, ["inactive"], 30)
    # A loop restarts every RestartSec (2 s) or re-fires the path unit at once.
    stays(lambda: _switch_starts(c, since) == 1 and c.show(SWITCH, "ActiveState")[
        "ActiveState"] == "inactive", 8, f"{SWITCH} started once and stopped")
    assert not c.exists(f"{STAGED}/ready")


@contextlib.contextmanager
def _no_loop_left(c: Container) -> Iterator[None]:
    """Whatever the test did, leave no trigger and no looping unit behind."""
    try:
        yield
    finally:
        c.sh(f"rm -rf {STAGED}/ready; [ -L {STAGED} ] && rm -f {STAGED}; true")
        c.run(["systemctl", "stop", SWITCH])
        c.run(["systemctl", "reset-failed", SWITCH, "harmony-agent-upgrade.path"])
        c.run(["systemctl", "start", "harmony-agent-upgrade.path"])


def test_a_trigger_that_is_a_directory_is_refused_once(device: Container, ops: Fleet) -> None:
    before, since = _running(ops), utcnow()
    with _no_loop_left(device):
        _as_agent(device, f"mkdir -p {STAGED}/ready/sub && touch {STAGED}/ready/sub/x")
        _ends_once(device, ops, since, "rejected", "ready.*not a regular file")
    _intact(device, before)


def test_a_staging_dir_that_is_a_symlink_is_refused_once(device: Container, ops: Fleet) -> None:
    before, since = _running(ops), utcnow()
    decoy = "/var/lib/harmony-agent/decoy"
    with _no_loop_left(device):
        _as_agent(device, f"mkdir -p {decoy} && touch {decoy}/ready && "
                          f"rm -rf {STAGED} && ln -s {decoy} {STAGED}")
        _ends_once(device, ops, since, "rejected", "staged.*symlink")
        assert device.run(["test", "-L", STAGED]).returncode != 0
        assert device.exists(f"{decoy}/ready"), "nothing is done through the link"
    device.run(["rm", "-rf", decoy])
    _intact(device, before)


def test_an_invalid_config_fails_the_upgrade_once(device: Container, ops: Fleet) -> None:
    """agent.toml broken after the agent loaded it: the agent keeps its config, root refuses."""
    before, conf = _running(ops), "/etc/harmony-agent/agent.toml"
    good = device.read_file(conf)
    device.write_file(conf, good + "\n[heartbeat]\nno_such_key = 1\n", 0o640)
    device.run(["systemctl", "reload", AGENT], check=True)
    since = utcnow()
    try:
        with _no_loop_left(device):
            rid = ops.upgrade("0.4.0")
            st = ops.wait_final(rid, 90)
            assert st["phase"] == "failed" and "agent.toml" in st["reason"], st
            _ends_once(device, ops, since, "failed", "agent.toml")
    finally:
        device.write_file(conf, good, 0o640)
        device.run(["systemctl", "reload", AGENT], check=True)
    _intact(device, before)
    assert _running(ops) == before


# --- killed mid-upgrade: the journal resumes ---------------------------------------


@pytest.mark.parametrize(
    ("phase", "version", "outcome"),
    [
        ("verifying", "0.4.0", "failed"),
        ("extracting", "0.4.0", "failed"),
        ("switching", "0.4.0", "committed"),
        ("watching", "0.5.0", "committed"),
        ("committing", "0.6.0", "committed"),
    ],
)
def test_switch_killed_at_each_phase(
    device: Container, ops: Fleet, phase: str, version: str, outcome: str
) -> None:
    before = _running(ops)
    dropin = f"/etc/systemd/system/{SWITCH}.d/pause.conf"
    device.write_file(dropin, f"[Service]\nEnvironment=HARMONY_UPGRADE_PAUSE_AT={phase}:4\n")
    device.run(["systemctl", "daemon-reload"], check=True)
    try:
        rid = ops.upgrade(version)

        def at_phase() -> bool:
            j = _journal(device)
            return bool(j and j.get("request_id") == rid and j["state"] == phase)
        wait_for(at_phase, 90, f"the journal at {phase}", interval=0.2)
        _sigkill(device, SWITCH)
        st = ops.wait_final(rid)
    finally:
        device.run(["rm", "-f", dropin])
        device.run(["systemctl", "daemon-reload"])
    assert st["phase"] == outcome, st
    runs = version if outcome == "committed" else before
    ops.heartbeat_from(runs, datetime.fromisoformat(st["updated_at"]))
    _intact(device, runs)
    j = _journal(device)
    assert j is not None and j["published"] and j["resumes"] >= (1 if outcome == "committed" else 0)


def test_agent_killed_while_watched_rolls_back(device: Container, ops: Fleet) -> None:
    rid = ops.upgrade("0.7.0", window="30s")

    def new_runs() -> bool:
        r = device.run(["cat", "/run/harmony-agent/health.json"])
        return r.returncode == 0 and json.loads(r.stdout).get("version") == "0.7.0"
    wait_for(new_runs, 90, "0.7.0 running under watch", interval=0.3)
    _sigkill(device, AGENT)
    st = ops.wait_final(rid)
    assert st["phase"] == "rolled_back" and re.search("crashed|exited|stopped", st["reason"]), st
    ops.heartbeat_from("0.6.0", datetime.fromisoformat(st["updated_at"]))
    _intact(device, "0.6.0")


def test_power_loss_while_watching_resumes_at_boot(device: Container, ops: Fleet) -> None:
    rid = ops.upgrade("0.8.0", window="10s")

    def watching() -> bool:
        j = _journal(device)
        return bool(j and j.get("request_id") == rid and j["state"] == "watching")
    wait_for(watching, 90, "the journal at watching", interval=0.2)
    device.kill()
    device.boot()
    st = ops.wait_final(rid)
    assert st["phase"] == "committed", st
    ops.heartbeat_from("0.8.0", datetime.fromisoformat(st["updated_at"]))
    _intact(device, "0.8.0")
    assert device.show("harmony-agent-upgrade-recover.service", "ActiveState")[
        "ActiveState"] == "active"


def test_downgrade_to_the_packaged_release_when_allowed(device: Container, ops: Fleet) -> None:
    old = source_version()
    rid = ops.upgrade(old)
    assert ops.wait_final(rid, 60)["phase"] == "rejected"
    rid = ops.upgrade(old, "--allow-downgrade")
    st = ops.wait_final(rid)
    assert st["phase"] == "committed", st
    ops.heartbeat_from(old, datetime.fromisoformat(st["updated_at"]))
    _intact(device, old)
