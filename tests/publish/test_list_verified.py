"""`publish list` shows who signed each release as its release.json.sig proves it.

release.json is written by whoever can write to the origin; so is its signer field. A
thief holding a revoked signer's key and write access to the origin names a current signer
there: the listing used to show that release clean, and the operator picked it to roll
back to. Now the listing judges release.json against release.json.sig with the trust
anchors and iPXE's rules the publish gates use, shows that signature's signer, and asks the
CA index (or --crl) about it; a manifest it cannot verify is UNVERIFIED, with the reason,
never shown with the signer it claims. Against a real file:// origin and the session pki;
the revocation in a copy of it made by `trustboot ca revoke`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from tests.publish.conftest import Pki, ReleaseFactory
from trustboot.cli.main import cli
from trustboot.cms.verify import MAX_SIGNATURE_SIZE
from trustboot.publish.fileorigin import FileOrigin


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def subject(pki: Pki, name: str) -> tuple[str, str]:
    cert = x509.load_pem_x509_certificate(pki.cert(name).read_bytes())
    return cert.subject.rfc4514_string(), f"{cert.serial_number:x}"


@pytest.fixture
def revoked_pki(pki: Pki, tmp_path: Path) -> Path:
    """A copy of the session pki in which boot-signer is revoked as compromised."""
    copy = tmp_path / "pki2"
    shutil.copytree(pki.dir, copy, symlinks=True)
    r = run("ca", "revoke", "boot-signer", "--reason", "key_compromise", "--pki", str(copy),
            "--passphrase-file", str(pki.secrets / "ca.pass"))
    assert r.exit_code == 0, r.output
    return copy


@pytest.fixture
def origin(pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> tuple[str, Path]:
    """file:// origin with r1 and r2 (r2 live), each release.json signed by boot-signer
    (release.json.sig beside it, as `trustboot release` and `resign` publish it)."""
    srv = tmp_path / "srv"
    url = f"file://{srv}"
    for rid in ("r1", "r2"):
        release = make_release({"boot.ipxe": f"#!ipxe\necho {rid}\n".encode()})
        r = run("publish", str(release), url, "--release-id", rid, "--pki", str(pki.dir))
        assert r.exit_code == 0, r.output
        manifest = srv / "releases" / rid / "release.json"
        pki.sign([manifest], manifest.parent)
    return url, srv


def listed(url: str, *args: str) -> dict[str, dict[str, Any]]:
    r = run("publish", "list", url, "--json", *args)
    assert r.exit_code == 0, r.output
    return {i["id"]: i for i in json.loads(r.stdout)}


def line_of(output: str, rid: str) -> str:
    return next(line for line in output.splitlines() if f" {rid} " in line)


def test_a_clean_release_shows_its_signer(pki: Pki, origin: tuple[str, Path]) -> None:
    url, _ = origin
    name, serial = subject(pki, "boot-signer")
    r = run("publish", "list", url, "--pki", str(pki.dir))
    assert r.exit_code == 0, r.output
    line = line_of(r.output, "r1")
    assert f"signer {name}" in line and "UNVERIFIED" not in line and "REVOKED" not in line
    assert f"(serial {serial})" in line
    infos = listed(url, "--pki", str(pki.dir))
    for rid in ("r1", "r2"):
        assert infos[rid]["verified"] is True and infos[rid]["unverified"] is None
        assert infos[rid]["signer"] == name and infos[rid]["signer_serial"] == serial
        assert infos[rid]["revoked"] is None and infos[rid]["expiry"]


def test_a_manifest_naming_a_current_signer_shows_the_revoked_one_who_signed_it(
        pki: Pki, origin: tuple[str, Path], revoked_pki: Path) -> None:
    """The thief rewrites r1's release.json to name other-signer (current) and signs it
    again with the stolen boot-signer key: the signature verifies (iPXE reads no CRL), and
    the listing names boot-signer, REVOKED, not the signer the manifest claims."""
    url, srv = origin
    other, other_serial = subject(pki, "other-signer")
    real, real_serial = subject(pki, "boot-signer")
    manifest = srv / "releases" / "r1" / "release.json"
    doc = json.loads(manifest.read_text())
    doc["signer"] = doc["signer"] | {"subject": other, "serial": other_serial}
    manifest.write_text(json.dumps(doc))
    pki.sign([manifest], manifest.parent)  # the stolen key
    r = run("publish", "list", url, "--pki", str(revoked_pki))
    assert r.exit_code == 0, r.output
    line = line_of(r.output, "r1")
    assert "REVOKED" in line and "key_compromise" in line and real in line
    assert other not in r.output
    infos = listed(url, "--pki", str(revoked_pki))
    r1 = infos["r1"]
    assert r1["verified"] is True
    assert r1["signer"] == real and r1["signer_serial"] == real_serial
    assert r1["revoked"]["name"] == "boot-signer"
    assert r1["revoked"]["reason"] == "key_compromise"


def test_a_crl_alone_marks_the_real_signer(origin: tuple[str, Path], revoked_pki: Path,
                                           tmp_path: Path) -> None:
    """The roots and the CA's published CRL, no CA home: --crl says the same."""
    url, _ = origin
    infos = listed(url, "--pki", str(tmp_path / "nopki"), "--trust",
                   str(revoked_pki / "ca.crt"), "--crl", str(revoked_pki / "crl.pem"))
    assert infos["r1"]["verified"] is True
    assert infos["r1"]["revoked"]["reason"] == "key_compromise"


def test_a_tampered_manifest_is_unverified(pki: Pki, origin: tuple[str, Path]) -> None:
    """release.json changed after it was signed: its claimed signer is not shown."""
    url, srv = origin
    other, _ = subject(pki, "other-signer")
    manifest = srv / "releases" / "r1" / "release.json"
    doc = json.loads(manifest.read_text())
    doc["signer"] = doc["signer"] | {"subject": other}
    manifest.write_text(json.dumps(doc))
    r = run("publish", "list", url, "--pki", str(pki.dir))
    assert r.exit_code == 0, r.output
    line = line_of(r.output, "r1")
    assert other not in line and "UNVERIFIED" in line and "does not verify" in line
    assert "UNVERIFIED" not in line_of(r.output, "r2")
    infos = listed(url, "--pki", str(pki.dir))
    r1 = infos["r1"]
    assert r1["verified"] is False and r1["signer"] is None and r1["expiry"] is None
    assert "does not verify" in r1["unverified"]["reason"]
    assert infos["r2"]["verified"] is True  # the others are judged on their own


def test_a_missing_signature_is_unverified(pki: Pki, origin: tuple[str, Path]) -> None:
    url, srv = origin
    name, _ = subject(pki, "boot-signer")
    (srv / "releases" / "r1" / "release.json.sig").unlink()
    r = run("publish", "list", url, "--pki", str(pki.dir))
    assert r.exit_code == 0, r.output
    line = line_of(r.output, "r1")
    assert name not in line and "UNVERIFIED" in line and "has no signature" in line
    infos = listed(url, "--pki", str(pki.dir))
    assert infos["r1"]["verified"] is False and infos["r1"]["signer"] is None
    assert infos["r1"]["unverified"]["rule"] == "manifest-unsigned"


@pytest.mark.parametrize("sig", ["huge", "garbage", "empty", "truncated", "directory"])
def test_a_hostile_signature_is_unverified_not_a_crash(
        pki: Pki, origin: tuple[str, Path], sig: str) -> None:
    """Whatever the origin has as release.json.sig, the listing goes on: that release is
    UNVERIFIED with the reason, the other one verified."""
    url, srv = origin
    path = srv / "releases" / "r1" / "release.json.sig"
    real = path.read_bytes()
    if sig == "directory":
        path.unlink()
        path.mkdir()
        (path / "x").write_bytes(real)
    else:
        path.write_bytes({"huge": b"\x30" * (MAX_SIGNATURE_SIZE + 1), "garbage": b"\x30\x82junk",
                          "empty": b"", "truncated": real[: len(real) // 2]}[sig])
    r = run("publish", "list", url, "--pki", str(pki.dir), "--json")
    assert r.exit_code == 0, r.output
    infos = {i["id"]: i for i in json.loads(r.stdout)}
    assert infos["r1"]["verified"] is False and infos["r1"]["signer"] is None
    assert infos["r1"]["unverified"]["reason"], infos["r1"]
    assert infos["r2"]["verified"] is True
    if sig == "huge":
        assert str(MAX_SIGNATURE_SIZE) in infos["r1"]["unverified"]["reason"]


def test_no_trust_anchors_lists_every_release_unverified(
        origin: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No --trust and no CA home: nothing to judge with. The listing still lists (exit 0),
    every release UNVERIFIED, saying what to pass."""
    url, _ = origin
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRUSTBOOT_PKI", raising=False)
    r = run("publish", "list", url, "--json")
    assert r.exit_code == 0, r.output
    infos = json.loads(r.stdout)
    assert {i["id"] for i in infos} == {"r1", "r2"}
    assert all(i["unverified"]["rule"] == "no-trust-anchors" and i["signer"] is None
               for i in infos)
    assert "--trust" in infos[0]["unverified"]["reason"]


def test_one_read_more_per_release(pki: Pki, origin: tuple[str, Path],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Each release's manifest and its .sig, read once each; nothing else is read (the
    .sig's presence comes from the listing of releases/ the command makes anyway)."""
    url, srv = origin
    (srv / "releases" / "r2" / "release.json.sig").unlink()  # none: no read at all
    reads: list[str] = []
    real = FileOrigin.read

    def counted(self: FileOrigin, key: str, *, max_size: int) -> Any:
        reads.append(key)
        return real(self, key, max_size=max_size)

    monkeypatch.setattr(FileOrigin, "read", counted)
    listed(url, "--pki", str(pki.dir))
    release_reads = sorted(k for k in reads if k.startswith("releases/"))
    assert release_reads == ["releases/r1/release.json", "releases/r1/release.json.sig",
                             "releases/r2/release.json"], reads
