"""The documented server configuration works as written: three servers, then `init --replicas 3`.

The `conf` block of docs/cluster.md, and the short one in the README's "Cluster"
section, are taken from the doc, made local (the three host names become
127.0.0.1, each server gets its own ports and store), and run by nats-server;
`harmony-fleet init --replicas 3` against them makes every item R3.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harmony_fleet.cli import main as fleet
from tests.natsserver import free_port, monitor_json, nats_server_binary, stop_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
DOCS = {"docs/cluster.md": "# Running NATS as a cluster", "README.md": "## Cluster"}


def _doc_conf(doc: str) -> str:
    """The first ```conf block after the section heading of `doc`."""
    text = ROOT.joinpath(doc).read_text()
    m = re.search(r"```conf\n(.*?)```", text[text.index(DOCS[doc]) :], re.S)
    assert m, f"{doc} has no ```conf block"
    return m.group(1)


def _local(
    conf: str, i: int, client: list[int], route: list[int], http: list[int], store: Path
) -> str:
    """The doc's config for server i, on this machine."""
    out = conf.replace("server_name: nats-1", f"server_name: nats-{i + 1}")
    out = out.replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{client[i]}")
    if "http: 127.0.0.1:8222" in out:
        out = out.replace("http: 127.0.0.1:8222", f"http: 127.0.0.1:{http[i]}")
    else:  # the test's own window into the servers
        out += f"\nhttp: 127.0.0.1:{http[i]}\n"
    out = out.replace("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{route[i]}")
    out = out.replace("/var/lib/nats/jetstream", str(store))
    for k in range(3):
        out = out.replace(f"nats-route://nats-{k + 1}:6222", f"nats-route://127.0.0.1:{route[k]}")
    assert "nats-1:" not in out and "0.0.0.0" not in out, out
    return out


@pytest.fixture(params=sorted(DOCS))
def doc_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    doc: str = request.param
    client, route, http = ([free_port() for _ in range(3)] for _ in range(3))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(3):
            d = tmp_path / f"nats-{i + 1}"
            d.mkdir()
            conf = d / "nats-server.conf"
            conf.write_text(_local(_doc_conf(doc), i, client, route, http, d / "jetstream"))
            with open(d / "log", "ab") as log:
                procs.append(
                    subprocess.Popen(
                        [nats_server_binary(), "-c", str(conf)],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )

        def meta() -> bool:
            try:
                leaders = {
                    monitor_json(p, "jsz").get("meta_cluster", {}).get("leader") for p in http
                }
            except OSError:
                return False
            return len(leaders) == 1 and None not in leaders

        wait_for(meta, 30, "a meta leader all three servers agree on")
        yield [f"nats://127.0.0.1:{p}" for p in client]
    finally:
        for p in procs:
            stop_process(p)


def test_the_documented_cluster_takes_the_r3_layout(
    doc_cluster: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    for doc in DOCS:
        assert "sync_interval: always" in _doc_conf(doc), doc
    capsys.readouterr()
    assert fleet([*(a for u in doc_cluster for a in ("-s", u)), "init", "--replicas", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out and all(line.endswith(": created (replicas 3)") for line in out), out
