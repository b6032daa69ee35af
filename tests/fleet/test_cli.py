"""The newcomer's path through `harmony-fleet`, against a real nats-server.

An unknown device is an error (exit 1, one line); a connection error is printed
once; `watch` shows the current values first; LABELS tells the truth; nothing a
device wrote reaches the terminal with its control characters.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from harmony_core.contracts import (
    CpuInfo,
    DeviceInfo,
    DiskInfo,
    LogBatch,
    LogRecord,
    OsInfo,
    UpgradeStatus,
    utcnow,
)
from harmony_core.labels import RESERVED_LABEL_PREFIX
from harmony_fleet.cli import main as fleet
from harmony_fleet.terminal import escape_controls
from tests.agentproc import run_bus
from tests.natsserver import NatsServer, free_port

UNKNOWN = 'harmony-fleet: no device "nosuch" (see harmony-fleet devices)\n'
OSC52 = "\x1b]52;c;aGVsbG8=\x07"  # writes the operator's clipboard
OSC0 = "\x1b]0;pwned\x07"  # retitles the operator's window
AUTO = {
    RESERVED_LABEL_PREFIX + "arch": "amd64",
    RESERVED_LABEL_PREFIX + "os": "debian-12",
}


def _info(device: str, labels: dict[str, str], hostname: str | None = None) -> bytes:
    now = utcnow()
    return (
        DeviceInfo(
            device_id=device,
            machine_id="m" * 32,
            hostname=hostname or device,
            labels=labels,
            agent_version="0.1.0",
            os=OsInfo(id="debian", version_id="12", pretty_name="Debian"),
            kernel="6.1",
            arch="amd64",
            boot_id="b",
            booted_at=now,
            started_at=now,
            cpu=CpuInfo(model="x", count=2),
            memory_total_bytes=1,
            disk=DiskInfo(root_total_bytes=1),
            network=[],
            heartbeat_interval_s=15,
            updated_at=now,
        )
        .model_dump_json()
        .encode()
    )


def _put(url: str, bucket: str, key: str, value: bytes) -> None:
    run_bus(url, lambda bus: bus.kv_put(bucket, key, value))


def _run(url: str, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = fleet(["-s", url, *args])
    got = capsys.readouterr()
    return rc, got.out, got.err


def _process(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harmony_fleet.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- unknown devices -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["logs", "nosuch"],
        ["logs", "nosuch", "-f"],
        ["forget", "nosuch"],
        ["upgrade-status", "nosuch"],
        ["upgrade-status", "nosuch", "--wait"],
    ],
    ids=" ".join,
)
def test_an_unknown_device_is_an_error(nats_js: NatsServer, args: list[str]) -> None:
    _put(nats_js.url, "device-info", "other", _info("other", {}))
    # A process with a deadline: -f and --wait on an unknown device used to wait for ever.
    r = _process("-s", nats_js.url, *args, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", UNKNOWN)


def test_known_devices_with_keys_or_only_logs(
    nats_js: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = nats_js.url
    _put(url, "device-info", "dev-a", _info("dev-a", {}))
    _put(url, "device-heartbeat", "dev-a", b"{}")
    # Known, no log lines: journalctl's answer, not an error.
    assert _run(url, capsys, "logs", "dev-a") == (0, "-- No entries --\n", "")
    rc, out, err = _run(url, capsys, "forget", "dev-a")
    assert (rc, err) == (0, "")
    assert out == "forgot dev-a: purged its keys in device-info, device-heartbeat\n"
    assert _run(url, capsys, "forget", "dev-a") == (1, "", UNKNOWN.replace("nosuch", "dev-a"))
    # Only log lines (its keys forgotten, say): known to `logs`, nothing for `forget`.
    batch = LogBatch(
        device_id="dev-l",
        records=[
            LogRecord(cursor="c", realtime_us=1_795_000_000_000_000, priority=6, message="hi")
        ],
    )
    run_bus(
        url,
        lambda bus: bus.publish(
            "logs.dev-l", batch.model_dump_json().encode(), stream="DEVICE_LOGS"
        ),
    )
    rc, out, err = _run(url, capsys, "logs", "dev-l", "--utc")
    assert (rc, err) == (0, "") and out.endswith(" dev-l unknown: hi\n")
    rc, out, err = _run(url, capsys, "forget", "dev-l")
    assert (rc, out, err) == (
        0,
        "dev-l: no keys to purge (its log lines age out of DEVICE_LOGS)\n",
        "",
    )


# --- errors: once, one line, what to do ------------------------------------------------


def test_a_connection_error_is_printed_once() -> None:
    down = f"nats://127.0.0.1:{free_port()}"
    r = _process("-s", down, "devices")
    assert r.returncode == 69 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"harmony-fleet: cannot connect to NATS at {down}: ")
    assert lines[0].endswith(
        "; check that nats-server runs there, or name another with -s URL (or $NATS_URL)"
    )


def test_a_refused_login_is_printed_once_and_says_what_to_pass(tmp_path: Path) -> None:
    conf = tmp_path / "auth.conf"
    conf.write_text('authorization { token: "s3cret" }\n')
    srv = NatsServer(tmp_path / "nats", extra=["-c", str(conf)]).start()
    try:
        r = _process("-s", srv.url, "devices")
    finally:
        srv.stop()
    assert r.returncode == 69
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert "authorization" in lines[0].lower()
    assert lines[0].endswith("--user with --password-file, or --token-file")


def test_bad_options_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert fleet(["-s", "nats://127.0.0.1:1", "--user", "u", "devices"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harmony-fleet: --user and --password-file go together")
    assert err.count("\n") == 1 and err.endswith("; see harmony-fleet --help\n")
    with pytest.raises(SystemExit) as ei:
        fleet(["-s", "nats://127.0.0.1:1", "devices", "-l", "site=a b"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "found 'b', expected: ',' or 'end of string'; write it like 'site=berlin" in err


# --- devices: LABELS -------------------------------------------------------------------


def test_labels_column_shows_user_labels_else_the_automatic_ones(
    nats_js: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = nats_js.url
    _put(url, "device-info", "dev-user", _info("dev-user", {"site": "x", **AUTO}))
    _put(url, "device-info", "dev-auto", _info("dev-auto", dict(AUTO)))
    _put(url, "device-info", "dev-none", _info("dev-none", {}))
    rc, out, _ = _run(url, capsys, "devices")
    assert rc == 0
    head, *rows = out.splitlines()
    at = head.index("LABELS")
    assert {r.split()[0]: r[at:] for r in rows} == {
        "dev-auto": "auto: arch=amd64,os=debian-12",
        "dev-none": "-",
        "dev-user": "site=x",
    }
    # The selector and --json see every label, automatic ones in full.
    rc, out, _ = _run(
        url, capsys, "devices", "--json", "-l", RESERVED_LABEL_PREFIX + "os=debian-12"
    )
    assert rc == 0
    seen = {r["device_id"]: r["labels"] for r in json.loads(out)}
    assert seen == {"dev-auto": AUTO, "dev-user": {"site": "x", **AUTO}}


# --- watch: the current values first ----------------------------------------------------


class _Lines:
    """The lines of a running process, read in a thread; `get` waits with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.q: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.q.put(line)

    def get(self, timeout: float) -> str | None:
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            return None


@pytest.fixture
def watch(nats_js: NatsServer) -> Iterator[list[_Lines]]:
    started: list[_Lines] = []
    yield started
    for w in started:
        w.proc.kill()
        w.proc.wait()
        assert w.proc.stdout is not None
        w.proc.stdout.close()


def _watch(url: str, started: list[_Lines], *args: str) -> _Lines:
    proc = subprocess.Popen(
        [sys.executable, "-m", "harmony_fleet.cli", "-s", url, "watch", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    started.append(_Lines(proc))
    return started[-1]


def test_watch_prints_the_current_values_first(nats_js: NatsServer, watch: list[_Lines]) -> None:
    url = nats_js.url
    _put(url, "device-info", "dev-w", _info("dev-w", {"site": "x"}, hostname="h" + OSC0))
    w = _watch(url, watch, "--json")
    line = w.get(15)
    assert line is not None, "nothing printed: the current values must come first"
    assert json.loads(line)["device"] == "dev-w" and json.loads(line)["bucket"] == "device-info"
    # The table form: the device's text with its escapes shown, not sent to the terminal.
    t = _watch(url, watch)
    line = t.get(15)
    assert line is not None and "dev-w" in line and "labels site=x" in line
    assert "\x1b" not in line and "\x07" not in line and "h\\x1b]0;pwned\\x07" in line
    # --watch-only: only what changes from now on.
    only = _watch(url, watch, "--watch-only", "--json")
    assert only.get(2) is None
    _put(url, "device-heartbeat", "dev-w", b"{}")
    line = only.get(15)
    assert line is not None and json.loads(line)["bucket"] == "device-heartbeat"


# --- upgrade-status: escapes --------------------------------------------------------------


def test_upgrade_status_escapes_what_the_device_wrote(
    nats_js: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    st = UpgradeStatus(
        device_id="dev-e",
        from_version="0.1.0",
        target_version="0.2.0" + OSC0,
        phase="failed",
        reason="boom " + OSC52,
        updated_at=utcnow(),
    )
    _put(nats_js.url, "agent-upgrade-status", "dev-e", st.model_dump_json().encode())
    for args in (["upgrade-status"], ["upgrade-status", "dev-e"]):
        rc, out, err = _run(nats_js.url, capsys, *args)
        assert (rc, err) == (0, "")
        assert "\x1b" not in out and "\x07" not in out
        assert "0.2.0\\x1b]0;pwned\\x07" in out and "boom \\x1b]52;c;aGVsbG8=\\x07" in out


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, ünïcode ✓", "plain text, ünïcode ✓"),
        ("tab\tstays", "tab\tstays"),
        ("one\nline", "one\\x0aline"),
        ("cr\rhides", "cr\\x0dhides"),
        (OSC52, "\\x1b]52;c;aGVsbG8=\\x07"),
        (OSC0, "\\x1b]0;pwned\\x07"),
        ("del\x7f c1\x9b[2J", "del\\x7f c1\\x9b[2J"),
        ("nul\x00", "nul\\x00"),
        ("bidi \u202egnp.exe", "bidi \\u202egnp.exe"),
        ("sep\u2028", "sep\\u2028"),
    ],
)
def test_escape_controls(text: str, shown: str) -> None:
    assert escape_controls(text) == shown
