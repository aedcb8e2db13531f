"""A release whose signer's chain has expired is never made live.

iPXE accepts a certificate until its notAfter + 12 h 30 min by the client's clock: a margin
for clients whose clock is off, not for the server. publish, rollback and repair judged
the release with iPXE's rules and so made live, with exit 0 and no word, a release whose
signer had expired (an hour ago here): an old release replayed past the bound short-lived
signers give, by trustboot itself (`trustboot sign` refuses an expired certificate). Now
exit 4, rule expired, naming the signer and when its chain ended. Against a real file://
origin, with the clock moved to one hour after the signer's notAfter."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from tests.publish.conftest import Pki, ReleaseFactory
from trustboot.cli.main import cli
from trustboot.publish.pipeline import SWITCH_JOURNAL

ENTRY1 = b"#!ipxe\necho release one\n"
ENTRY2 = b"#!ipxe\necho release two\n"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def origin(pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> tuple[str, Path]:
    """r1 (boot-signer) and then r2 (other-signer, live) published while both were good."""
    srv = tmp_path / "srv"
    url = f"file://{srv}"
    for rid, entry, signer in (("r1", ENTRY1, "boot-signer"), ("r2", ENTRY2, "other-signer")):
        release = make_release({"boot.ipxe": entry, "vmlinuz": rid.encode() * 1000},
                               signer=signer)
        r = run("publish", str(release), url, "--release-id", rid, "--pki", str(pki.dir))
        assert r.exit_code == 0, r.output
    return url, srv


@pytest.fixture
def after_expiry(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> dt.datetime:
    """The CLI's clock one hour after boot-signer's notAfter (within iPXE's margin)."""
    cert = x509.load_pem_x509_certificate(pki.cert("boot-signer").read_bytes())
    later = cert.not_valid_after_utc + dt.timedelta(hours=1)
    monkeypatch.setattr("trustboot.cli.publish.utc_now", lambda: later)
    return cert.not_valid_after_utc


def _names_the_expiry(output: str, not_after: dt.datetime) -> None:
    assert "boot-signer" in output and "expired" in output, output
    assert not_after.isoformat()[:16] in output, output
    assert "Traceback" not in output


def test_rollback_to_a_release_whose_signer_expired_is_refused(
        pki: Pki, origin: tuple[str, Path], after_expiry: dt.datetime) -> None:
    url, srv = origin
    r = run("publish", "rollback", url, "r1", "--pki", str(pki.dir))
    assert r.exit_code == 4, r.output
    _names_the_expiry(r.output, after_expiry)
    assert (srv / "boot.ipxe").read_bytes() == ENTRY2


def test_repair_does_not_finish_a_switch_to_a_release_whose_signer_expired(
        pki: Pki, origin: tuple[str, Path], after_expiry: dt.datetime) -> None:
    url, srv = origin
    (srv / "boot.ipxe.sig").write_bytes((srv / "releases/r1/boot.ipxe.sig").read_bytes())
    (srv / SWITCH_JOURNAL).write_text(json.dumps({"version": 1, "release": "r1",
                                                  "entry_path": "boot.ipxe"}))
    r = run("publish", "repair", url, "--pki", str(pki.dir))
    assert r.exit_code == 4, r.output
    _names_the_expiry(r.output, after_expiry)
    assert (srv / "boot.ipxe").read_bytes() == ENTRY2


def test_publishing_files_an_expired_signer_signed_is_refused(
        pki: Pki, make_release: ReleaseFactory, origin: tuple[str, Path],
        after_expiry: dt.datetime) -> None:
    url, srv = origin
    release = make_release({"boot.ipxe": b"#!ipxe\necho three\n"})
    r = run("publish", str(release), url, "--release-id", "r3", "--pki", str(pki.dir))
    assert r.exit_code == 4, r.output
    _names_the_expiry(r.output, after_expiry)
    assert not (srv / "releases" / "r3").exists()  # refused before any upload
