"""A rollback target whose signer has expired is refused with a hint that fits.

Its objects are exactly as published: "find out who changed the origin, then delete the
release and publish again" sends the operator after an intruder that does not exist and
destroys a rollback target. The hint names re-signing with a current signer and rolling
back to a newer release instead. Against a real file:// origin; the clock is moved past
the signer's one-day certificate as the CLI sees it (``utc_now``)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.publish.conftest import Pki, ReleaseFactory
from trustboot.cli.main import cli
from trustboot.cli.verify import load_trust
from trustboot.publish.pipeline import Trust, build_manifest, scan_directory

ENTRY1 = b"#!ipxe\necho old release\n"
ENTRY2 = b"#!ipxe\necho new release\n"
SHORT = "expiring-signer"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def short_signer(pki: Pki) -> str:
    """A code-signing certificate valid for one day (iPXE's margin is 12 h 30 min)."""
    pki.issue("codesign", SHORT, "--days", "1")
    return SHORT


def later(monkeypatch: pytest.MonkeyPatch) -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    monkeypatch.setattr("trustboot.cli.publish.utc_now", lambda: when)


def _says_resign_or_newer(err: dict[str, str]) -> None:
    assert "expired" in err["message"], err
    hint = err["hint"]
    assert "delete" not in hint and "who changed" not in hint, hint
    assert "trustboot resign" in hint and "trustboot sign --key" in hint, hint
    assert "trustboot publish rollback" in hint and "newer release" in hint, hint


def _rollback_once_expired(pki: Pki, url: str, old: Path, new: Path,
                           monkeypatch: pytest.MonkeyPatch) -> Result:
    """``old`` published as r1 and ``new`` as r2 (live), then, once the short signer has
    expired, the refused rollback to r1."""
    for rid, release in (("r1", old), ("r2", new)):
        r = run("publish", str(release), url, "--release-id", rid, "--pki", str(pki.dir))
        assert r.exit_code == 0, r.output
    later(monkeypatch)
    r = run("publish", "rollback", url, "r1", "--pki", str(pki.dir), "--json")
    assert r.exit_code == 4, r.output
    return r


def test_rollback_to_a_release_whose_signer_expired(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, short_signer: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    srv = tmp_path / "srv"
    url = f"file://{srv}"
    old = make_release({"boot.ipxe": ENTRY1, "vmlinuz": b"k" * 5000}, signer=short_signer)
    new = make_release({"boot.ipxe": ENTRY2, "vmlinuz": b"n" * 5000})
    r = _rollback_once_expired(pki, url, old, new, monkeypatch)
    _says_resign_or_newer(json.loads(r.stderr))
    assert (srv / "boot.ipxe").read_bytes() == ENTRY2
    assert (srv / "releases" / "r1" / "vmlinuz").exists()


def test_rollback_to_a_release_whose_manifest_signer_expired(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, short_signer: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The objects' signer is current, the signed release.json's has expired: the same
    hint, not "the manifest was changed on the origin"."""
    srv = tmp_path / "srv"
    url = f"file://{srv}"
    old = make_release({"boot.ipxe": ENTRY1, "vmlinuz": b"k" * 5000})
    manifest = build_manifest("r1", scan_directory(old), entry="boot.ipxe",
                              now=dt.datetime.now(dt.UTC), origin=None,
                              trust=Trust(tuple(load_trust((), pki.dir))))
    (old / "release.json").write_bytes(manifest.to_bytes())
    pki.sign([old / "release.json"], old, signer=short_signer)
    new = make_release({"boot.ipxe": ENTRY2})
    r = _rollback_once_expired(pki, url, old, new, monkeypatch)
    err = json.loads(r.stderr)
    assert "release.json" in err["message"], err
    _says_resign_or_newer(err)
    assert (srv / "boot.ipxe").read_bytes() == ENTRY2
