"""A release signed by a revoked certificate is never made live without saying so.

iPXE reads no CRL: a signature by a revoked (say key_compromise) signer keeps booting until
the firmware stops trusting its chain. publish, rollback and repair are the last gate: they
refuse (exit 4) to make such a release live, naming the signer, the reason and the date,
unless --unsafe-allow-revoked-signer (warned about); `publish list` marks it REVOKED.
Against a real file:// origin, with a copy of the session pki in which the signer was
revoked by `trustboot ca revoke` (the session pki itself stays as it was)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.publish.conftest import Pki, ReleaseFactory, revoke_as_compromised, rewind_resign
from trustboot.ca.store import CertificateAuthority, IssuedEntry
from trustboot.cli.main import cli
from trustboot.publish.pipeline import SWITCH_JOURNAL

ENTRY1 = b"#!ipxe\necho release one\n"
ENTRY2 = b"#!ipxe\necho release two\n"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def origin(pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> tuple[str, Path]:
    """file:// origin with r1 and then r2 published (r2 live) while the signer was good."""
    srv = tmp_path / "srv"
    url = f"file://{srv}"
    for rid, entry in (("r1", ENTRY1), ("r2", ENTRY2)):
        release = make_release({"boot.ipxe": entry, "vmlinuz": rid.encode() * 1000})
        r = run("publish", str(release), url, "--release-id", rid, "--pki", str(pki.dir))
        assert r.exit_code == 0, r.output
    assert (srv / "boot.ipxe").read_bytes() == ENTRY2
    return url, srv


def _names_the_revocation(output: str, pki2: Path) -> None:
    entry = next(e for e in CertificateAuthority.open(pki2).entries
                 if e.name == "boot-signer")
    assert entry.revoked_at
    assert "boot-signer" in output and "key_compromise" in output
    assert entry.revoked_at[:10] in output  # the date it was revoked
    assert "Traceback" not in output


def test_rollback_to_a_release_of_a_revoked_signer_is_refused(
        origin: tuple[str, Path], revoked_pki: Path) -> None:
    url, srv = origin
    r = run("publish", "rollback", url, "r1", "--pki", str(revoked_pki))
    assert r.exit_code == 4, r.output
    _names_the_revocation(r.output, revoked_pki)
    assert "rollback" in r.output and "publish them again" in r.output  # the ways out
    assert "resign" not in r.output  # it would refuse: fresh signatures for a revoked signer
    assert (srv / "boot.ipxe").read_bytes() == ENTRY2  # nothing switched

    # the unsafe flag lets it through, and says so
    r = run("publish", "rollback", url, "r1", "--pki", str(revoked_pki),
            "--unsafe-allow-revoked-signer")
    assert r.exit_code == 0, r.output
    assert (srv / "boot.ipxe").read_bytes() == ENTRY1
    assert "--unsafe-allow-revoked-signer" in r.stderr
    assert "revoked" in r.stderr and "key_compromise" in r.stderr


def test_publishing_a_release_of_a_revoked_signer_is_refused(
        pki: Pki, make_release: ReleaseFactory, origin: tuple[str, Path],
        revoked_pki: Path) -> None:
    url, srv = origin
    release = make_release({"boot.ipxe": b"#!ipxe\necho three\n"})
    r = run("publish", str(release), url, "--release-id", "r3", "--pki", str(revoked_pki))
    assert r.exit_code == 4, r.output
    _names_the_revocation(r.output, revoked_pki)
    assert not (srv / "releases" / "r3").exists()  # refused before any upload
    assert (srv / "boot.ipxe").read_bytes() == ENTRY2
    # with the pki that does not know of it (the firmware's view), it goes through
    r = run("publish", str(release), url, "--release-id", "r3", "--pki", str(pki.dir))
    assert r.exit_code == 0, r.output


def test_repair_does_not_finish_a_switch_to_a_revoked_signers_release(
        pki: Pki, origin: tuple[str, Path], revoked_pki: Path) -> None:
    """A switch to r1 recorded and cut between the two replacements: r1's signature
    beside r2's script. Finishing it would make r1 live: refused with the revoked pki."""
    url, srv = origin
    (srv / "boot.ipxe.sig").write_bytes((srv / "releases/r1/boot.ipxe.sig").read_bytes())
    (srv / SWITCH_JOURNAL).write_text(json.dumps({"version": 1, "release": "r1",
                                                  "entry_path": "boot.ipxe"}))
    r = run("publish", "repair", url, "--pki", str(revoked_pki))
    assert r.exit_code == 4, r.output
    _names_the_revocation(r.output, revoked_pki)
    assert (srv / "boot.ipxe").read_bytes() == ENTRY2
    # r1 is older than r2, the live one: a repair does not roll back (a writer of the
    # origin can plant the record); a rollback, asked for, does
    r = run("publish", "repair", url, "--pki", str(pki.dir))
    assert r.exit_code == 4 and "release r1 is older than r2" in r.output, r.output
    assert (srv / "boot.ipxe").read_bytes() == ENTRY2
    r = run("publish", "rollback", url, "r1", "--pki", str(pki.dir))
    assert r.exit_code == 0, r.output
    assert (srv / "boot.ipxe").read_bytes() == ENTRY1


def test_list_marks_releases_of_a_revoked_signer(origin: tuple[str, Path],
                                                 revoked_pki: Path, pki: Pki) -> None:
    """The listing names the signer of each release.json.sig (an unsigned manifest says
    nothing it could judge: tests/publish/test_list_verified.py), so the manifests are
    signed here, as `trustboot release` publishes them."""
    url, srv = origin
    for rid in ("r1", "r2"):
        manifest = srv / "releases" / rid / "release.json"
        pki.sign([manifest], manifest.parent)
    r = run("publish", "list", url, "--pki", str(revoked_pki))
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if " r1 " in line or " r2 " in line]
    assert len(lines) == 2 and all("REVOKED" in line for line in lines), r.output
    _names_the_revocation(r.output, revoked_pki)
    r = run("publish", "list", url, "--pki", str(revoked_pki), "--json")
    assert r.exit_code == 0, r.output
    infos = {i["id"]: i for i in json.loads(r.output)}
    assert [(x["name"], x["reason"]) for x in infos["r1"]["revoked"]] == [
        ("boot-signer", "key_compromise")]
    clean = json.loads(run("publish", "list", url, "--pki", str(pki.dir), "--json").output)
    assert all(i["revoked"] == [] for i in clean)


def test_a_crl_alone_is_enough(origin: tuple[str, Path], revoked_pki: Path,
                               tmp_path: Path) -> None:
    """No CA index at hand (a CI job with only the roots and the CRL the CA published):
    --crl says the signer is revoked, and that is refused the same way."""
    url, srv = origin
    crl = revoked_pki / "crl.pem"
    assert crl.is_file()
    nopki = tmp_path / "nopki"
    r = run("publish", "rollback", url, "r1", "--pki", str(nopki), "--trust",
            str(revoked_pki / "ca.crt"), "--crl", str(crl))
    assert r.exit_code == 4, r.output
    assert "boot-signer" in r.output and "key_compromise" in r.output
    assert (srv / "boot.ipxe").read_bytes() == ENTRY2



def test_list_passes_over_a_default_pki_that_is_no_ca(
        origin: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory called pki in the working directory that does not open as a CA says
    nothing to a listing (which never needed it) unless it is named with --pki."""
    url, _ = origin
    work = tmp_path / "work"
    (work / "pki").mkdir(parents=True, mode=0o700)
    (work / "pki" / "index.json").write_text("not json")
    monkeypatch.chdir(work)
    monkeypatch.delenv("TRUSTBOOT_PKI", raising=False)
    r = run("publish", "list", url, "--json")
    assert r.exit_code == 0, r.output
    assert {i["id"] for i in json.loads(r.output)} == {"r1", "r2"}
    r = run("publish", "list", url, "--pki", str(work / "pki"))
    assert r.exit_code == 3, r.output


def _restretch_signer(sig: bytes, name: str) -> bytes:
    """``sig`` with the certificate of ``name`` in a longer length form than DER's: the
    same certificate to iPXE (and to the signature over it), another fingerprint."""
    from cryptography import x509

    from tests.cms.corpus import children, seq, tlv

    info, wrapped = children(sig)
    fields = children(children(wrapped)[0])
    certs = []
    for cert in children(fields[3]):
        cn = x509.load_der_x509_certificate(cert).subject.get_attributes_for_oid(
            x509.NameOID.COMMON_NAME)[0].value
        if cn == name:
            count = cert[1] & 0x7F
            assert cert[1] & 0x80 and count, "a certificate longer than 127 bytes"
            cert = bytes([0x30, 0x80 | (count + 1), 0]) + cert[2:]
        certs.append(cert)
    fields[3] = tlv(0xA0, b"".join(certs))
    return seq(info, tlv(0xA0, seq(*fields)))


def test_a_revoked_signer_in_other_bytes_is_still_revoked(
        pki: Pki, make_release: ReleaseFactory, origin: tuple[str, Path],
        revoked_pki: Path) -> None:
    """The index was asked by the certificate's fingerprint only: the same certificate
    written with other bytes outside what its CA signed (a longer length form here; an
    ECDSA signature's s made n-s does the same) verifies as before, iPXE boots it, and
    the revoked signer went live unnoticed. Found by the tbsCertificate now; and a key
    revoked as compromised is refused under any certificate."""
    url, srv = origin
    release = make_release({"boot.ipxe": b"#!ipxe\necho three\n"})
    for sig in release.rglob("*.sig"):
        sig.write_bytes(_restretch_signer(sig.read_bytes(), "boot-signer"))
    r = run("publish", str(release), url, "--release-id", "r3", "--pki", str(revoked_pki))
    assert r.exit_code == 4, r.output
    _names_the_revocation(r.output, revoked_pki)
    assert not (srv / "releases" / "r3").exists()


def test_resign_gives_no_fresh_signatures_to_a_revoked_signers_release(
        pki: Pki, origin: tuple[str, Path], revoked_pki: Path) -> None:
    """The live release's signer revoked (its key stolen: whoever holds it can sign and
    switch a release live): re-signing it with a fresh signer every night would keep it
    booting past the revoked certificate's expiry, the bound short-lived signers give.
    resign refuses, naming the revocation, and writes nothing; --crl alone says the same."""
    url, srv = origin
    before = sorted(p.relative_to(srv).as_posix() for p in srv.rglob("*"))
    common = ["--key", "other-signer", "--passphrase-file", str(pki.key_pass)]
    r = run("resign", url, *common, "--pki", str(revoked_pki))
    assert r.exit_code == 4, r.output
    _names_the_revocation(r.output, revoked_pki)
    assert "re-sign release r2" in r.output and "rollback" in r.output
    assert sorted(p.relative_to(srv).as_posix() for p in srv.rglob("*")) == before
    assert (srv / "boot.ipxe").read_bytes() == ENTRY2
    crl = revoked_pki / "crl.pem"
    r = run("resign", url, *common, "--pki", str(pki.dir), "--crl", str(crl))
    assert r.exit_code == 4 and "revoked" in r.output, r.output
    # knowingly: the unsafe flag lets it through, and says so
    r = run("resign", url, *common, "--pki", str(revoked_pki), "--unsafe-allow-revoked-signer")
    assert r.exit_code == 0, r.output
    assert "--unsafe-allow-revoked-signer" in r.stderr
    assert (srv / "boot.ipxe").read_bytes() != ENTRY2 or (srv / "boot.ipxe.sig").read_bytes() \
        != (srv / "releases/r2/boot.ipxe.sig").read_bytes()


@pytest.fixture
def fresh_pki(pki: Pki, tmp_path: Path) -> Path:
    """A copy of the pki with a third code-signing certificate, fresh-signer (resign's
    new signer here)."""
    copy = tmp_path / "pki3"
    shutil.copytree(pki.dir, copy, symlinks=True)
    run_ok = run("ca", "issue", "codesign", "fresh-signer", "--pki", str(copy), "--key-type",
                 "rsa-2048", "--passphrase-file", str(pki.secrets / "ca.pass"),
                 "--key-passphrase-file", str(pki.key_pass))
    assert run_ok.exit_code == 0, run_ok.output
    return copy


def test_a_resumed_resign_does_not_make_a_revoked_signers_release_live(
        pki: Pki, make_release: ReleaseFactory, fresh_pki: Path, tmp_path: Path) -> None:
    """resign's new id is predictable (the signer's certificate is public), and an id
    whose manifest exists is resumed: verified and switched to. Whoever holds a stolen
    (since revoked) key and can write to the origin plants that id: the live release's
    files, a manifest naming the new signer, and .sig files the stolen key made. Each
    verifies (iPXE reads no CRL); resign made it live with exit 0. The resumed release's
    signatures must be the new signer's, and no revoked signer's."""
    files = {"boot.ipxe": ENTRY1, "vmlinuz": b"k" * 5000}
    good = make_release(files, signer="other-signer")
    stolen = make_release(files, signer="boot-signer")  # signed before the revocation
    srv = tmp_path / "srv"
    url = f"file://{srv}"
    r = run("publish", str(good), url, "--release-id", "r1", "--pki", str(fresh_pki))
    assert r.exit_code == 0, r.output
    revoke_as_compromised(pki, fresh_pki, "boot-signer")
    common = ["--key", "fresh-signer", "--passphrase-file", str(pki.key_pass), "--pki",
              str(fresh_pki)]
    record = (srv / ".trustboot-live.json").read_bytes()
    r = run("resign", url, *common, "--json")
    assert r.exit_code == 0, r.output
    # r1 live again, and the new id as the thief plants it: the stolen key's signatures
    new_dir, doc = rewind_resign(srv, record, json.loads(r.stdout)["release"])
    for f in doc["files"]:
        if f["name"].endswith(".sig"):
            data = (stolen / f["name"]).read_bytes()
            (new_dir / f["name"]).write_bytes(data)
            f["size"], f["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (new_dir / "release.json").write_text(json.dumps(doc))
    r = run("resign", url, *common)
    assert r.exit_code == 4, r.output
    assert "Traceback" not in r.output
    assert "boot-signer" in r.output, r.output
    assert not (new_dir / "release.json.sig").exists()  # the planted manifest not signed
    assert (srv / "boot.ipxe.sig").read_bytes() == (srv / "releases/r1/boot.ipxe.sig") \
        .read_bytes()  # r1 still live


def test_resign_refuses_a_new_signer_a_crl_revokes(
        pki: Pki, make_release: ReleaseFactory, fresh_pki: Path, tmp_path: Path) -> None:
    """A signing job with a file: key, the roots and the CA's published CRL (no CA
    index): the CRL revokes the new signer itself. resign looked up only the live
    release's signers in --crl, signed with the revoked certificate and made it live."""
    files = {"boot.ipxe": ENTRY1, "vmlinuz": b"k" * 5000}
    srv = tmp_path / "srv"
    url = f"file://{srv}"
    r = run("publish", str(make_release(files)), url, "--release-id", "r1", "--pki",
            str(fresh_pki))
    assert r.exit_code == 0, r.output
    revoked = tmp_path / "pki4"
    shutil.copytree(fresh_pki, revoked, symlinks=True)
    revoke_as_compromised(pki, revoked, "fresh-signer")
    before = sorted(p.relative_to(srv).as_posix() for p in srv.rglob("*"))
    r = run("resign", url, "--key", f"file:{fresh_pki / 'private' / 'fresh-signer.key'}",
            "--signing-cert", str(fresh_pki / "issued" / "fresh-signer.crt"),
            "--signing-chain", str(fresh_pki / "chain.pem"),
            "--passphrase-file", str(pki.key_pass), "--pki", str(tmp_path / "nopki"),
            "--trust", str(fresh_pki / "ca.crt"), "--crl", str(revoked / "crl.pem"))
    assert r.exit_code == 4, r.output
    assert "fresh-signer" in r.output and "key_compromise" in r.output
    assert "Traceback" not in r.output
    assert sorted(p.relative_to(srv).as_posix() for p in srv.rglob("*")) == before


def test_the_compromised_keys_are_gathered_once_per_gate(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate looked up each signer set of a release and rebuilt the index's map of
    compromised keys (a pass over every certificate, loading those whose key id is not
    recorded) for every signer of every set. A release of two signers, three objects
    each, and the map is built once; the verdict is unchanged (both signers are good)."""
    release = make_release({f"file{i}": bytes([i]) * 100 for i in range(6)})
    for i in range(3):  # half the files signed by the other signer
        pki.sign([release / f"file{i}"], release, signer="other-signer")
    calls: list[int] = []
    real = CertificateAuthority.compromised_keys

    def counted(self: CertificateAuthority) -> dict[str, IssuedEntry]:
        calls.append(1)
        return real(self)

    monkeypatch.setattr(CertificateAuthority, "compromised_keys", counted)
    r = run("publish", str(release), f"file://{tmp_path / 'srv'}", "--release-id", "r1",
            "--pki", str(pki.dir), "--json")
    assert r.exit_code == 0, r.output
    assert len(calls) == 1, calls


def _count_ca_opens(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths CertificateAuthority.open is called with from now on, in order."""
    opened: list[Path] = []
    real = CertificateAuthority.open.__func__  # type: ignore[attr-defined]

    def counted(cls: type[CertificateAuthority], path: Path) -> CertificateAuthority:
        opened.append(Path(path))
        result: CertificateAuthority = real(cls, path)
        return result

    monkeypatch.setattr(CertificateAuthority, "open", classmethod(counted))
    return opened


def test_the_ca_home_is_opened_once_per_command(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """publish opened the --pki CA home for its roots (load_trust) and again for the
    revocation gate (Revocations.load): two snapshots of one index (a `ca revoke` in
    between: roots of one, revocations of the other) and every check twice; resign a
    third time to resolve its new signer's key. Once now, for publish, rollback, list
    and resign alike."""
    release = make_release({"boot.ipxe": ENTRY1})
    url = f"file://{tmp_path / 'srv'}"
    opened = _count_ca_opens(monkeypatch)
    for args in (("publish", str(release), url, "--release-id", "r1"),
                 ("publish", "rollback", url, "r1"), ("publish", "list", url),
                 ("resign", url, "--key", "other-signer", "--passphrase-file",
                  str(pki.key_pass))):
        opened.clear()
        r = run(*args, "--pki", str(pki.dir))
        assert r.exit_code == 0, r.output
        assert opened == [pki.dir], (args, opened)


def test_list_with_trust_beside_a_default_pki_that_does_not_open_opens_it_once(
        pki: Pki, origin: tuple[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`publish list --trust ROOT` with a ./pki that does not open (world-writable: any
    directory called pki is passed over when nothing depends on it): list's own open
    gave None, and build_trust took that None for "not opened yet" and opened it again.
    Once now; the listing still judges with --trust."""
    url, _ = origin
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRUSTBOOT_PKI", raising=False)
    shutil.copytree(pki.dir, tmp_path / "pki", symlinks=True)
    (tmp_path / "pki").chmod(0o777)
    opened = _count_ca_opens(monkeypatch)
    r = run("publish", "list", url, "--trust", str(pki.ca), "--json")
    assert r.exit_code == 0, r.output
    assert opened == [Path("pki")], opened
    assert all(i["verified"] for i in json.loads(r.stdout))


def test_a_manifest_naming_another_signer_does_not_get_past_rollback(
        pki: Pki, origin: tuple[str, Path], revoked_pki: Path) -> None:
    """A thief holding the revoked key rewrites r1's manifest to name a current signer:
    rollback judges the signatures themselves, not the manifest's claim (nor does
    `publish list` any more: tests/publish/test_list_verified.py)."""
    from cryptography import x509

    url, srv = origin
    other = x509.load_pem_x509_certificate(pki.cert("other-signer").read_bytes())
    manifest = srv / "releases" / "r1" / "release.json"
    doc = json.loads(manifest.read_text())
    doc["signer"] = doc["signer"] | {"subject": other.subject.rfc4514_string(),
                                     "serial": f"{other.serial_number:x}"}
    manifest.write_text(json.dumps(doc))
    r = run("publish", "rollback", url, "r1", "--pki", str(revoked_pki))
    assert r.exit_code == 4, r.output
    _names_the_revocation(r.output, revoked_pki)
    assert (srv / "boot.ipxe").read_bytes() == ENTRY2


def test_resign_still_refuses_a_ca_index_older_than_its_log(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """resign now resolves its new signer in the CA home it opened for the roots and the
    gate (keys.signer.OpenedCa): the log's lines, counted before that index was read,
    still show an index put back from a backup taken before a revocation."""
    home = tmp_path / "pki5"
    shutil.copytree(pki.dir, home, symlinks=True)
    url = f"file://{tmp_path / 'srv'}"
    r = run("publish", str(make_release({"boot.ipxe": ENTRY1})), url, "--release-id", "r1",
            "--pki", str(home))
    assert r.exit_code == 0, r.output
    saved = {n: (home / n).read_bytes() for n in ("index.json", "index.txt", "crl.pem")}
    revoke_as_compromised(pki, home, "boot-signer")
    for name, data in saved.items():
        (home / name).write_bytes(data)
    r = run("resign", url, "--key", "other-signer", "--passphrase-file", str(pki.key_pass),
            "--pki", str(home))
    assert r.exit_code == 4, r.output
    assert "[rule: ca-rollback]" in r.output and "is older than its log" in r.output


def _release_with_signed_manifest(pki: Pki, make_release: ReleaseFactory, rid: str,
                                  entry: bytes, signer: str) -> Path:
    """A release directory whose files and release.json ``signer`` signed."""
    import datetime as dt

    from trustboot.cli.verify import load_trust
    from trustboot.publish.pipeline import Trust, build_manifest, scan_directory

    r = make_release({"boot.ipxe": entry, "vmlinuz": rid.encode() * 1000}, signer=signer)
    manifest = build_manifest(rid, scan_directory(r), entry="boot.ipxe",
                              now=dt.datetime.now(dt.UTC), origin=None,
                              trust=Trust(tuple(load_trust((), pki.dir))))
    (r / "release.json").write_bytes(manifest.to_bytes())
    pki.sign([r / "release.json"], r, signer=signer)
    return r


def test_a_revoked_signers_manifest_proves_no_date(
        pki: Pki, make_release: ReleaseFactory, revoked_pki: Path, tmp_path: Path) -> None:
    """The check against a switch back dates releases by their signed manifests. A
    revoked signer's signature proves no date: its key may be in anyone's hands and
    signs any. r2 (other-signer) is live; r3's files and manifest, the newest, are
    boot-signer's, now revoked; its pair is in place and a switch to it recorded (a
    thief with the key and write access, or a run killed before removing the record).
    resign took r3's date for proof, recorded r3 as trustboot's own switch and only then
    refused it for the revoked signer. Now r3 cannot be shown newer: resign, unattended,
    changes nothing (rule unrecorded-rollback)."""
    srv = tmp_path / "srv"
    url = f"file://{srv}"
    for rid, entry, signer, extra in (("r2", ENTRY2, "other-signer", ()),
                                      ("r3", ENTRY1, "boot-signer", ("--no-switch",))):
        release = _release_with_signed_manifest(pki, make_release, rid, entry, signer)
        r = run("publish", str(release), url, "--release-id", rid, "--pki", str(pki.dir),
                *extra)
        assert r.exit_code == 0, r.output
    for name in ("boot.ipxe", "boot.ipxe.sig"):
        (srv / name).write_bytes((srv / "releases/r3" / name).read_bytes())
    (srv / SWITCH_JOURNAL).write_text(json.dumps({"version": 1, "release": "r3",
                                                  "entry_path": "boot.ipxe"}))
    before = {p.name: p.read_bytes() for p in srv.iterdir() if p.is_file()}
    r = run("resign", url, "--key", "other-signer", "--pki", str(revoked_pki),
            "--passphrase-file", str(pki.key_pass), "--json")
    assert r.exit_code == 4, r.output
    err = json.loads(r.stderr)
    assert err["rule"] == "unrecorded-rollback", err
    assert "release r3 cannot be shown to be newer than r2" in err["message"], err
    assert {p.name: p.read_bytes() for p in srv.iterdir() if p.is_file()} == before
