"""The signed release manifest: the operator signs only the artifact the operator published.

`publish-artifact --key` signs {name, version, arch, size, sha256, published_at} of
the file at hand; `upgrade` signs requests only from a manifest that verifies
against a trusted key, and only if the artifact in the store is still that file.
The pure checks are a table; the refusals are proven against a real nats-server.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harmony_core.bus import Bus
from harmony_core.contracts import ReleaseManifest
from harmony_core.envelope import keyid_of
from harmony_core.errors import UpgradeError
from harmony_fleet.cli import main as fleet
from harmony_fleet.keys import private_pem
from harmony_fleet.manifest import (
    MANIFEST_PAYLOAD_TYPE,
    MAX_MANIFEST_BYTES,
    check_artifact,
    manifest_name,
    sign_manifest,
    verify_manifest,
)
from tests.agentproc import run_bus
from tests.natsserver import NatsServer
from tests.upgrade.helpers import build_deb, make_request, signed, write_pub

NAME = "harmony-agent_0.3.0_amd64.deb"
PUBLISHED = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
KEYS = {keyid_of(KEY.public_key()): KEY.public_key()}


def _manifest(**over: object) -> ReleaseManifest:
    fields: dict[str, object] = {"name": NAME, "version": "0.3.0", "arch": "amd64",
                                 "size": 1000, "sha256": "a" * 64, "published_at": PUBLISHED}
    fields.update(over)
    return ReleaseManifest.model_validate(fields)


def _tampered(env: bytes, **over: object) -> bytes:
    """The envelope with its payload changed and its signature kept."""
    doc = json.loads(env)
    body = {**json.loads(base64.b64decode(doc["payload"])), **over}
    doc["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    return json.dumps(doc).encode()


# --- the pure checks ----------------------------------------------------------------

GOOD = sign_manifest(_manifest(), KEY)

REFUSED: list[tuple[str, Callable[[], bytes], str]] = [
    ("other-key", lambda: sign_manifest(_manifest(), OTHER), "no signature by a trusted key"),
    ("tampered", lambda: _tampered(GOOD, sha256="b" * 64), "no signature by a trusted key"),
    ("an-upgrade-request", lambda: signed(make_request(), KEY), "payload type"),
    ("another-release", lambda: sign_manifest(
        _manifest(name="harmony-agent_0.2.0_amd64.deb", version="0.2.0"), KEY), "0.2.0"),
    ("another-arch", lambda: sign_manifest(
        _manifest(name="harmony-agent_0.3.0_arm64.deb", arch="arm64"), KEY), "arm64"),
    ("not-json", lambda: b"{not json", "not a DSSE envelope"),
    ("too-large", lambda: b" " * (MAX_MANIFEST_BYTES + 1), "larger than"),
]


def test_a_good_manifest_verifies_to_what_was_signed() -> None:
    assert verify_manifest(GOOD, KEYS, version="0.3.0", arch="amd64") == _manifest()
    assert json.loads(GOOD)["payloadType"] == MANIFEST_PAYLOAD_TYPE
    assert manifest_name(NAME) == NAME + ".manifest"


@pytest.mark.parametrize(("make", "reason"), [(m, r) for _, m, r in REFUSED],
                         ids=[i for i, _, _ in REFUSED])
def test_a_manifest_is_refused(make: Callable[[], bytes], reason: str) -> None:
    with pytest.raises(UpgradeError, match=reason):
        verify_manifest(make(), KEYS, version="0.3.0", arch="amd64")


@pytest.mark.parametrize(("sha256", "size", "ok"), [
    ("a" * 64, 1000, True),
    ("b" * 64, 1000, False),
    ("a" * 64, 1001, False),
])
def test_the_artifact_must_be_the_one_the_manifest_names(sha256: str, size: int, ok: bool) -> None:
    if ok:
        check_artifact(_manifest(), sha256, size)
        return
    with pytest.raises(UpgradeError) as refused:
        check_artifact(_manifest(), sha256, size)
    said = str(refused.value)
    assert "is not the one published on 2026-11-26T12:00:00Z" in said, said
    assert "publish it again" in said and "--key" in said, said


# --- against a real nats-server ------------------------------------------------------


class Ops:
    """A published release 0.3.0 and the operator's key on disk; dev-a needs no DeviceInfo."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp, self.url = tmp, url
        self.key = tmp / "op.key"
        self.key.write_bytes(private_pem(KEY))
        (tmp / "debs").mkdir()
        self.deb, self.sha, self.size = build_deb(tmp / "debs", "0.3.0")

    def fleet(self, *argv: str) -> int:
        return fleet(["-s", self.url, *argv])

    def publish(self, key: Path | None = None) -> None:
        assert self.fleet("publish-artifact", str(self.deb), "--key", str(key or self.key)) == 0

    def upgrade(self, *extra: str) -> int:
        return self.fleet("upgrade", "dev-a", "--arch", "amd64", "--version", "0.3.0",
                          "--key", str(self.key), *extra)

    def put_object(self, name: str, data: bytes) -> None:
        run_bus(self.url, lambda bus: bus.object_upload("agent-artifacts", name, io.BytesIO(data)))

    def get_object(self, name: str) -> bytes:
        async def go(bus: Bus) -> bytes:
            buf = io.BytesIO()
            await bus.object_download("agent-artifacts", name, buf)
            return buf.getvalue()
        data: bytes = run_bus(self.url, go)
        return data

    def requested(self) -> bytes | None:
        async def go(bus: Bus) -> bytes | None:
            e = await bus.kv_get("agent-upgrade", "dev-a")
            return e.value if e else None
        got: bytes | None = run_bus(self.url, go)
        return got

    def evil_deb(self) -> bytes:
        """Another real .deb of the same package, version and arch: control checks pass."""
        (self.tmp / "evil").mkdir()
        deb, sha, _ = build_deb(self.tmp / "evil", "0.3.0",
                                extra_root={"etc/cron.d/evil": "* * * * * root id\n"})
        assert sha != self.sha
        return deb.read_bytes()


@pytest.fixture
def ops(tmp_path: Path, nats_js: NatsServer) -> Ops:
    return Ops(tmp_path, nats_js.url)


def test_publish_stores_a_manifest_signed_over_the_built_file(
    ops: Ops, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert ops.fleet("publish-artifact", str(ops.deb), "--key", str(ops.key), "--json") == 0
    said = json.loads(capsys.readouterr().out)
    assert (said["manifest"], said["keyid"]) == (manifest_name(NAME), keyid_of(KEY.public_key()))
    m = verify_manifest(ops.get_object(manifest_name(NAME)), KEYS, version="0.3.0", arch="amd64")
    assert (m.name, m.sha256, m.size) == (NAME, ops.sha, ops.size)
    assert said["published_at"].startswith(m.published_at.strftime("%Y-%m-%dT%H:%M:%S"))


SWAPS: dict[str, Callable[[Ops], bytes]] = {
    "another-deb": lambda o: o.evil_deb(),  # same package, version, arch: control checks pass
    "same-size": lambda o: b"y" * o.size,  # the size signed, other bytes
    "padded": lambda o: o.deb.read_bytes() + b"\0" * 4096,  # the published file, and more
}


@pytest.mark.parametrize("swap", SWAPS)
def test_an_artifact_replaced_in_the_store_is_never_signed(
    ops: Ops, capsys: pytest.CaptureFixture[str], swap: str
) -> None:
    ops.publish()
    ops.put_object(NAME, SWAPS[swap](ops))  # whoever can write the store, after publish
    capsys.readouterr()
    assert ops.upgrade() == 1
    err = capsys.readouterr().err
    assert "is not the one published on" in err and "publish it again" in err, err
    assert ops.requested() is None, "nothing was signed"


def test_a_manifest_signed_by_another_key_is_refused_unless_trusted(
    ops: Ops, capsys: pytest.CaptureFixture[str]
) -> None:
    other = ops.tmp / "other.key"
    other.write_bytes(private_pem(OTHER))
    ops.publish(key=other)
    capsys.readouterr()
    assert ops.upgrade() == 1
    err = capsys.readouterr().err
    assert "no signature by a trusted key" in err and "--trusted-keys" in err, err
    assert ops.requested() is None
    # The publisher's public key, trusted on purpose: then it verifies.
    write_pub(OTHER, ops.tmp / "trusted", "publisher")
    assert ops.upgrade("--trusted-keys", str(ops.tmp / "trusted")) == 0
    assert ops.requested() is not None


def test_a_tampered_manifest_is_refused(ops: Ops, capsys: pytest.CaptureFixture[str]) -> None:
    ops.publish()
    evil = ops.evil_deb()
    real = ops.get_object(manifest_name(NAME))
    ops.put_object(NAME, evil)
    ops.put_object(manifest_name(NAME), _tampered(
        real, sha256=hashlib.sha256(evil).hexdigest(), size=len(evil)))
    capsys.readouterr()
    assert ops.upgrade() == 1
    err = capsys.readouterr().err
    assert "no signature by a trusted key" in err, err
    assert ops.requested() is None


def test_another_releases_manifest_in_its_place_is_refused(
    ops: Ops, capsys: pytest.CaptureFixture[str]
) -> None:
    (ops.tmp / "old").mkdir()
    old, _, _ = build_deb(ops.tmp / "old", "0.2.0")
    assert ops.fleet("publish-artifact", str(old), "--key", str(ops.key)) == 0
    ops.publish()
    # A genuine, validly signed manifest - of 0.2.0 - with 0.2.0's bytes, under 0.3.0's names.
    ops.put_object(NAME, old.read_bytes())
    ops.put_object(manifest_name(NAME), ops.get_object(manifest_name(old.name)))
    capsys.readouterr()
    assert ops.upgrade() == 1
    err = capsys.readouterr().err
    assert "0.2.0" in err, err
    assert ops.requested() is None


def test_no_manifest_is_refused_with_what_to_do(
    ops: Ops, capsys: pytest.CaptureFixture[str]
) -> None:
    ops.put_object(NAME, ops.deb.read_bytes())  # as an older harmony-fleet published it
    capsys.readouterr()
    assert ops.upgrade() == 1
    err = capsys.readouterr().err
    assert f"harmony-fleet publish-artifact {NAME} --key" in err, err
    assert ops.requested() is None


def test_publish_needs_the_key(ops: Ops, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        ops.fleet("publish-artifact", str(ops.deb))
    assert exited.value.code == 2
    assert "--key" in capsys.readouterr().err
