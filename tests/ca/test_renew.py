"""`ca renew`: several certificates per name, the newest valid one signs."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from cryptography import x509

from trustboot.ca.store import CertificateAuthority
from trustboot.errors import ConfigError, VerificationError
from trustboot.keys.ref import parse_ref
from trustboot.keys.signer import resolve_signer
from trustboot.secrets import constant

from .conftest import CA_PASS, Run, issue, make_ec_ca, spki


@pytest.fixture(scope="module")
def ec_ca(tmp_path_factory: pytest.TempPathFactory, secrets_dir: Path) -> Path:
    return make_ec_ca(tmp_path_factory.mktemp("renew") / "pki", secrets_dir,
                      [["codesign", "signer"], ["server", "boot.example.net", "192.0.2.1"]])


@pytest.fixture
def ca_home(ec_ca: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "pki"
    shutil.copytree(ec_ca, dest)
    return dest


def renew(run: Run, pki: Path, secrets: Path, name: str, *extra: str) -> dict:  # type: ignore[type-arg]
    r = run("ca", "renew", name, "--pki", str(pki), "--passphrase-file",
            str(secrets / "ca.pass"), "--key-passphrase-file", str(secrets / "key.pass"),
            "--json", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.output[r.output.index("{"):])  # type: ignore[no-any-return]


def _sign_serial(run: Run, pki: Path, secrets: Path, tmp_path: Path) -> int:
    image = tmp_path / "img.bin"
    image.write_bytes(b"kernel")
    out = tmp_path / "sigs"
    shutil.rmtree(out, ignore_errors=True)
    r = run("sign", str(image), "--key", "signer", "--pki", str(pki), "--passphrase-file",
            str(secrets / "key.pass"), "--out", str(out))
    assert r.exit_code == 0, r.output
    asn1 = subprocess.run(["openssl", "cms", "-cmsout", "-print", "-inform", "DER", "-in",
                           str(out / "img.bin.sig")], capture_output=True, text=True).stdout
    # the signer is identified by issuer and serial number (iPXE's rule)
    line = asn1[asn1.index("issuerAndSerialNumber"):].split("serialNumber:")[1].split()[0]
    return int(line, 16) if line.startswith("0x") else int(line)


def test_renew_same_key_keeps_the_old_certificate(ca_home: Path, run: Run, secrets_dir: Path,
                                                  tmp_path: Path) -> None:
    old = CertificateAuthority.open(ca_home).get("signer")
    data = renew(run, ca_home, secrets_dir, "signer", "--days", "30")
    ca = CertificateAuthority.open(ca_home)
    new = ca.get("signer")
    assert int(data["serial"], 16) == new.serial != old.serial
    assert new.key_file == old.key_file  # same key, one file
    assert spki(new.load_cert()) == spki(old.load_cert())
    assert 29 <= data["days_left"] <= 30
    assert ca.find_serial(old.serial).status == "valid"  # type: ignore[union-attr]
    # the view is the new certificate; sign picks it
    assert (ca_home / "issued" / "signer.crt").read_bytes() == new.read_cert_pem()
    assert _sign_serial(run, ca_home, secrets_dir, tmp_path) == new.serial
    # `ca list` shows both, the current one marked
    rows = json.loads(run("ca", "list", "--json", "--pki", str(ca_home)).output)
    signer_rows = [r for r in rows if r["name"] == "signer"]
    assert [int(r["serial"], 16) for r in signer_rows] == [old.serial, new.serial]
    assert [r["current"] for r in signer_rows] == [False, True]
    table = run("ca", "list", "--pki", str(ca_home)).output
    assert "* signer" in table and "  signer" in table
    assert ca.check() == []
    # openssl agrees on the new certificate's chain
    ok = subprocess.run(["openssl", "verify", "-CAfile", str(ca_home / "ca.crt"), "-untrusted",
                         str(ca_home / "issuing-ca.crt"), str(ca_home / "issued/signer.crt")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_renew_rekey_writes_a_new_encrypted_key(ca_home: Path, run: Run, secrets_dir: Path,
                                                tmp_path: Path) -> None:
    old = CertificateAuthority.open(ca_home).get("signer")
    renew(run, ca_home, secrets_dir, "signer", "--rekey")
    new = CertificateAuthority.open(ca_home).get("signer")
    assert new.key_file != old.key_file
    assert spki(new.load_cert()) != spki(old.load_cert())
    assert (new.key_path.stat().st_mode & 0o777) == 0o600
    assert new.key_path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    # the key view follows the current certificate
    assert (ca_home / "private" / "signer.key").read_bytes() == new.key_path.read_bytes()
    assert _sign_serial(run, ca_home, secrets_dir, tmp_path) == new.serial
    # a rekey without a key passphrase source and no terminal: a clear error, nothing written
    r = run("ca", "renew", "signer", "--rekey", "--pki", str(ca_home), "--passphrase-file",
            str(secrets_dir / "ca.pass"))
    assert r.exit_code == 3 and "--key-passphrase-file" in r.output


def test_newest_valid_is_selected_by_time(ca_home: Path, secrets_dir: Path) -> None:
    ca = CertificateAuthority.open(ca_home)
    old = ca.get("signer")
    short = ca.renew("signer", constant(CA_PASS.encode()), days=2).entry
    ca = CertificateAuthority.open(ca_home)
    now = dt.datetime.now(dt.UTC)
    assert ca.current("signer", now) is not None
    assert ca.current("signer", now).serial == short.serial  # type: ignore[union-attr]
    # after the short one expires, the older (longer) one is current again
    later = now + dt.timedelta(days=3)
    assert ca.current("signer", later).serial == old.serial  # type: ignore[union-attr]
    source = resolve_signer(parse_ref("signer"), pki=ca_home, now=later)
    assert source.certificate.serial_number == old.serial and source.ca_status == "valid"
    # when every certificate has expired, the newest is reported as expired
    much_later = now + dt.timedelta(days=3650)
    source = resolve_signer(parse_ref("signer"), pki=ca_home, now=much_later)
    assert source.ca_status == "expired"


def test_revoked_newest_falls_back_to_an_older_key(ca_home: Path, run: Run, secrets_dir: Path,
                                                   tmp_path: Path) -> None:
    old = CertificateAuthority.open(ca_home).get("signer")
    renew(run, ca_home, secrets_dir, "signer", "--rekey")
    r = run("ca", "revoke", "signer", "--reason", "key_compromise", "--pki", str(ca_home),
            "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.exit_code == 0, r.output
    ca = CertificateAuthority.open(ca_home)
    assert ca.get("signer").serial == old.serial  # the other key is not compromised
    assert _sign_serial(run, ca_home, secrets_dir, tmp_path) == old.serial
    assert (ca_home / "issued" / "signer.crt").read_bytes() == old.read_cert_pem()


def test_compromised_key_revokes_every_certificate_of_it(ca_home: Path, run: Run,
                                                         secrets_dir: Path,
                                                         tmp_path: Path) -> None:
    renew(run, ca_home, secrets_dir, "signer")  # same key
    r = run("ca", "revoke", "signer", "--reason", "key_compromise", "--pki", str(ca_home),
            "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.exit_code == 0, r.output
    ca = CertificateAuthority.open(ca_home)
    assert [e.status for e in ca.entries if e.name == "signer"] == ["revoked", "revoked"]
    assert ca.current("signer") is None
    assert not (ca_home / "issued" / "signer.crt").exists()
    image = tmp_path / "img.bin"
    image.write_bytes(b"kernel")
    r = run("sign", str(image), "--key", "signer", "--pki", str(ca_home), "--passphrase-file",
            str(secrets_dir / "key.pass"), "--out", str(tmp_path / "s"))
    assert r.exit_code == 4 and "revoked" in r.output and "--rekey" in r.output
    # the compromised key is never certified again; a new key is
    r = run("ca", "renew", "signer", "--pki", str(ca_home), "--passphrase-file",
            str(secrets_dir / "ca.pass"))
    assert r.exit_code == 3 and "--rekey" in r.output
    renew(run, ca_home, secrets_dir, "signer", "--rekey")
    assert CertificateAuthority.open(ca_home).current("signer") is not None


def test_revoked_newest_with_superseded_falls_back_to_the_same_key(
        ca_home: Path, run: Run, secrets_dir: Path) -> None:
    old = CertificateAuthority.open(ca_home).get("signer")
    renew(run, ca_home, secrets_dir, "signer")
    new = CertificateAuthority.open(ca_home).get("signer")
    r = run("ca", "revoke", "signer", "--serial", f"{new.serial:x}", "--reason", "superseded",
            "--pki", str(ca_home), "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.exit_code == 0, r.output
    assert CertificateAuthority.open(ca_home).get("signer").serial == old.serial
    r = run("ca", "revoke", "signer", "--serial", "abc", "--pki", str(ca_home),
            "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.exit_code == 3 and "no certificate with serial abc" in r.output


def test_renew_refusals(ca_home: Path, run: Run, secrets_dir: Path) -> None:
    for args, message in ((["nope"], "no certificate named 'nope'"),
                          (["root-ca"], "CA certificate"),
                          (["signer", "--key-type", "ec-p384"], "only applies with --rekey"),
                          (["signer", "--days", "0"], "out of range")):
        r = run("ca", "renew", *args, "--pki", str(ca_home), "--passphrase-file",
                str(secrets_dir / "ca.pass"))
        assert r.exit_code == 3 and message in r.output, (args, r.output)
    r = run("ca", "renew", "signer", "--pki", str(ca_home), "--passphrase-file",
            str(secrets_dir / "wrong.pass"))
    assert r.exit_code == 3 and "wrong passphrase" in r.output
    assert len([e for e in CertificateAuthority.open(ca_home).entries
                if e.name == "signer"]) == 1


def test_issue_of_an_existing_name_points_at_renew(ca_home: Path, run: Run,
                                                   secrets_dir: Path) -> None:
    r = issue(run, ca_home, secrets_dir, "codesign", "signer", "--key-type", "ec-p256")
    assert r.exit_code == 3 and "trustboot ca renew signer" in r.output


@pytest.mark.parametrize(("name", "clash"), [
    ("SIGNER", "'signer'"), ("Signer", "'signer'"),
    # a SAN answers to --signer too (and the server's name is its SAN)
    ("Boot.Example.NET", "'boot.example.net'"), ("192.0.2.1", "SAN '192.0.2.1'")])
def test_a_name_iPXE_cannot_tell_from_a_valid_one_is_refused(
        ca_home: Path, run: Run, secrets_dir: Path, name: str, clash: str) -> None:
    """iPXE's `imgverify --signer signer` matches names case-insensitively: a second
    certificate `SIGNER` with its own key would be accepted by firmware pinned to
    `signer`. Refused, naming both; nothing is issued."""
    before = CertificateAuthority.open(ca_home).entries
    r = issue(run, ca_home, secrets_dir, "codesign", name, "--key-type", "ec-p256")
    assert r.exit_code == 3, r.output
    assert repr(name) in r.output and clash in r.output, r.output
    assert len(CertificateAuthority.open(ca_home).entries) == len(before)
    assert not (ca_home / "issued" / f"{name}.crt").exists()


def test_a_name_differing_in_case_is_free_once_the_other_is_revoked(
        ca_home: Path, run: Run, secrets_dir: Path) -> None:
    r = run("ca", "revoke", "signer", "--pki", str(ca_home), "--passphrase-file",
            str(secrets_dir / "ca.pass"))
    assert r.exit_code == 0, r.output
    r = issue(run, ca_home, secrets_dir, "codesign", "SIGNER", "--key-type", "ec-p256")
    assert r.exit_code == 0, r.output


def test_renew_by_a_name_in_another_case_renews_the_stored_one(
        ca_home: Path, run: Run, secrets_dir: Path) -> None:
    out = renew(run, ca_home, secrets_dir, "SIGNER")
    assert out["name"] == "signer" and out["cert_path"].endswith("issued/signer.crt")
    ca = CertificateAuthority.open(ca_home)
    assert [e.name for e in ca.entries if e.name.lower() == "signer"] == ["signer", "signer"]
    assert ca.current("SIGNER") is ca.current("signer") is ca.entries[-1]
    renew(run, ca_home, secrets_dir, "signer")  # the same name, renewed again


def test_server_renewal_keeps_its_names(ca_home: Path, run: Run, secrets_dir: Path) -> None:
    renew(run, ca_home, secrets_dir, "boot.example.net")
    entry = CertificateAuthority.open(ca_home).get("boot.example.net")
    assert entry.sans == ["boot.example.net", "192.0.2.1"]
    assert entry.profile == "server"


# --- an existing CA home of index version 1 ------------------------------------------------

V1_HOME = Path(__file__).with_name("data") / "v1-home.tar.gz"
V1_NOW = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)  # the home was made a day before
V1_CA_PASS, V1_KEY_PASS = b"ca pass phrase 1", b"key pass phrase 1"


def _v1_home(tmp_path: Path) -> Path:
    """A CA home written by trustboot before the layout change (index version 1): root,
    issuing CA, codesign `signer`, codesign `victim` revoked."""
    pki = tmp_path / "v1"
    pki.mkdir(mode=0o755, parents=True)
    with tarfile.open(V1_HOME) as tar:
        tar.extractall(pki, filter="data")
    for path in [pki, *pki.rglob("*")]:
        private = "private" in path.relative_to(pki).parts or path.name == ".lock"
        path.chmod((0o700 if path.is_dir() else 0o600) if private
                   else (0o755 if path.is_dir() else 0o644))
    return pki


def test_v1_home_loads_and_migrates_on_first_write(tmp_path: Path) -> None:
    pki = _v1_home(tmp_path)
    assert json.loads((pki / "index.json").read_text())["version"] == 1
    ca = CertificateAuthority.open(pki)  # reading does not migrate
    assert ca.get("signer").cert_file == "issued/signer.crt"
    assert ca.get("victim").status == "revoked"
    old_signer = ca.get("signer")
    before = {p: p.read_bytes() for p in pki.rglob("*") if p.is_file()}
    result = ca.renew("signer", constant(V1_CA_PASS), now=V1_NOW)
    index = json.loads((pki / "index.json").read_text())
    assert index["version"] == 2 and index["log_chained_from"] == 5
    ca = CertificateAuthority.open(pki)
    for e in ca.entries:
        assert e.cert_file == f"certs_by_serial/{e.serial:X}.pem"
        assert e.issuer_sha256 is not None and e.key_sha256 is not None
    migrated = ca.find_serial(old_signer.serial)
    assert migrated is not None and migrated.key_file == f"private/keys/{old_signer.serial:X}.key"
    # no file of the old home was lost: keys were copied, the old files are views now
    for path, data in before.items():
        if path.name not in ("index.json", "index.txt", "log.jsonl", "crl.pem", "signer.crt",
                             "signer.key", ".lock"):
            assert path.read_bytes() == data, path
    assert (pki / "private" / "keys" / f"{old_signer.serial:X}.key").read_bytes() == \
        before[pki / "private" / "signer.key"]
    assert ca.get("signer", V1_NOW).serial == result.entry.serial
    assert ca.get("victim").status == "revoked"
    assert ca.check(V1_NOW) == []
    log = ca.check_log()
    assert log.problem is None and log.legacy == 4
    ops = [json.loads(line)["op"] for line in (pki / "log.jsonl").read_text().splitlines()]
    assert ops[-2:] == ["migrate", "renew"]
    # keys of the migrated CA still open with the old passphrases
    signer = resolve_signer(parse_ref("signer"), pki=pki, now=V1_NOW)
    assert signer.certificate.serial_number == result.entry.serial
    with signer.open(constant(V1_KEY_PASS)) as s:
        assert s.sign_digest(b"\0" * 32, "sha256")


def test_v1_home_with_a_replaced_certificate_is_not_migrated(tmp_path: Path) -> None:
    pki = _v1_home(tmp_path)
    (pki / "issued" / "signer.crt").write_bytes((pki / "ca.crt").read_bytes())
    with pytest.raises(ConfigError, match="index recorded"):
        CertificateAuthority.open(pki).renew("signer", constant(V1_CA_PASS), now=V1_NOW)
    assert json.loads((pki / "index.json").read_text())["version"] == 1


def test_resolving_a_revoked_only_name_is_a_verification_error(ca_home: Path, run: Run,
                                                                secrets_dir: Path) -> None:
    assert run("ca", "revoke", "signer", "--pki", str(ca_home), "--passphrase-file",
               str(secrets_dir / "ca.pass")).exit_code == 0
    with pytest.raises(VerificationError, match="revoked"):
        resolve_signer(parse_ref("signer"), pki=ca_home)


def _csr_of_signer_key(ca_home: Path, tmp_path: Path, cn: str) -> Path:
    """A CSR made with the key of ca_home's 'signer' (as its holder could make)."""
    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from trustboot.keys.keyfile import load_key

    from .conftest import KEY_PASS

    entry = CertificateAuthority.open(ca_home).get("signer")
    key = load_key(entry.key_path, constant(KEY_PASS.encode()), "signer key")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    csr = (cx509.CertificateSigningRequestBuilder()
           .subject_name(cx509.Name([cx509.NameAttribute(cx509.NameOID.COMMON_NAME, cn)]))
           .sign(key, hashes.SHA256()))
    path = tmp_path / f"{cn}.csr"
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


def test_compromised_key_is_refused_under_any_name(ca_home: Path, run: Run,
                                                   secrets_dir: Path, tmp_path: Path) -> None:
    ca_pass = ["--pki", str(ca_home), "--passphrase-file", str(secrets_dir / "ca.pass")]
    # the holder of signer's key had it certified under a second name too
    r = run("ca", "issue", "codesign", "again", "--csr",
            str(_csr_of_signer_key(ca_home, tmp_path, "again")), *ca_pass)
    assert r.exit_code == 0, r.output
    r = run("ca", "revoke", "signer", "--reason", "key_compromise", *ca_pass)
    assert r.exit_code == 0, r.output
    ca = CertificateAuthority.open(ca_home)
    # the key's every certificate is revoked, whatever its name
    assert {e.name: e.status for e in ca.entries if e.name in ("signer", "again")} == {
        "signer": "revoked", "again": "revoked"}
    assert ca.check() == []
    # and it is never certified again, under a new name or its own
    for name in ("third", "signer"):
        csr = _csr_of_signer_key(ca_home, tmp_path, name)
        r = run("ca", "issue", "codesign", name, "--csr", str(csr), *ca_pass)
        assert r.exit_code == 3 and "revoked as compromised" in r.output, r.output
        assert "make a new key" in r.output
    assert [e.name for e in CertificateAuthority.open(ca_home).entries].count("third") == 0


def test_certificate_of_a_compromised_key_does_not_sign(
        ca_home: Path, run: Run, secrets_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A CA home where a key revoked as compromised still has a valid certificate under
    another name (revoked before that revocation reached every name): `ca check` names
    it, it is not current, and it does not sign."""
    ca_pass = ["--pki", str(ca_home), "--passphrase-file", str(secrets_dir / "ca.pass")]
    r = run("ca", "issue", "codesign", "again", "--csr",
            str(_csr_of_signer_key(ca_home, tmp_path, "again")), *ca_pass)
    assert r.exit_code == 0, r.output
    monkeypatch.setattr(CertificateAuthority, "_revoke_targets",
                        lambda self, name, serial, reason: [self.get(name)])
    r = run("ca", "revoke", "signer", "--reason", "key_compromise", *ca_pass)
    assert r.exit_code == 0, r.output
    monkeypatch.undo()
    ca = CertificateAuthority.open(ca_home)
    again = next(e for e in ca.entries if e.name == "again")
    assert again.status == "valid" and ca.current("again") is None
    problems = ca.check()
    assert any(f"again (serial {again.serial:x}) has the key revoked as compromised" in p
               and "--reason key_compromise" in p for p in problems), problems
    image = tmp_path / "img.bin"
    image.write_bytes(b"kernel")
    signer_key = CertificateAuthority.open(ca_home).entries[-2].key_path  # signer's
    r = run("sign", str(image), "--key", f"file:{signer_key}", "--signing-cert",
            str(again.cert_path), "--pki", str(ca_home), "--passphrase-file",
            str(secrets_dir / "key.pass"), "--out", str(tmp_path / "s"))
    assert r.exit_code == 4 and "revoked as compromised" in r.output, r.output
    assert not (tmp_path / "s").exists()
    r = run("sign", str(image), "--key", "again", "--pki", str(ca_home), "--out",
            str(tmp_path / "s"))  # by name: refused before any secret is asked for
    assert r.exit_code == 4 and "revoked as compromised" in r.output, r.output
    assert not (tmp_path / "s").exists()


def test_an_index_restored_from_before_a_revocation_does_not_sign(
        ca_home: Path, run: Run, secrets_dir: Path, tmp_path: Path) -> None:
    """index.json, index.txt and crl.pem put back from a backup taken before `ca revoke`:
    ca check and every CA write refuse it, and sign signed with the revoked key (exit 0).
    The log, appended after each index commit, is ahead of such an index: sign refuses."""
    saved = {n: (ca_home / n).read_bytes() for n in ("index.json", "index.txt", "crl.pem")}
    r = run("ca", "revoke", "signer", "--reason", "key_compromise", "--pki", str(ca_home),
            "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.exit_code == 0, r.output
    key = CertificateAuthority.open(ca_home).entries[-1].key_path
    for name, data in saved.items():
        (ca_home / name).write_bytes(data)
    image = tmp_path / "img.bin"
    image.write_bytes(b"kernel")
    signer = CertificateAuthority.open(ca_home).get("signer")
    for ref in (["--key", "signer"], ["--key", f"file:{key}", "--signing-cert",
                                      str(signer.cert_path)]):
        r = run("sign", str(image), *ref, "--pki", str(ca_home), "--passphrase-file",
                str(secrets_dir / "key.pass"), "--out", str(tmp_path / "s"))
        assert r.exit_code == 4, (ref, r.output)
        assert "is older than its log" in r.output and "[rule: ca-rollback]" in r.output
        assert not (tmp_path / "s").exists()


def test_a_revoked_certificates_key_can_be_marked_compromised_later(
        ca_home: Path, run: Run, secrets_dir: Path) -> None:
    """Revoked first with the default reason, then its key found compromised: `ca revoke
    --reason key_compromise` said "already revoked" (exit 3), so the key was never
    refused elsewhere. The reason now changes (the CRL says so, the date stays) and the
    key's other certificates are revoked with it."""
    ca_pass = ["--pki", str(ca_home), "--passphrase-file", str(secrets_dir / "ca.pass")]
    first = CertificateAuthority.open(ca_home).get("signer")
    renew(run, ca_home, secrets_dir, "signer")  # same key, now current
    second = CertificateAuthority.open(ca_home).get("signer")
    r = run("ca", "revoke", "signer", "--serial", f"{first.serial:x}", *ca_pass)
    assert r.exit_code == 0, r.output
    found = CertificateAuthority.open(ca_home).find_serial(first.serial)
    assert found is not None
    revoked_at = found.revoked_at
    r = run("ca", "revoke", "signer", "--serial", f"{first.serial:x}", *ca_pass)
    assert r.exit_code == 3 and "already revoked (unspecified)" in r.output, r.output
    assert "--reason key_compromise" in r.output
    r = run("ca", "revoke", "signer", "--serial", f"{first.serial:x}", "--reason",
            "key_compromise", *ca_pass)
    assert r.exit_code == 0, r.output
    ca = CertificateAuthority.open(ca_home)
    old, new = ca.find_serial(first.serial), ca.find_serial(second.serial)
    assert old is not None and new is not None
    assert (old.status, old.revocation_reason, old.revoked_at) == (
        "revoked", "key_compromise", revoked_at)
    assert (new.status, new.revocation_reason) == ("revoked", "key_compromise")
    assert ca.current("signer") is None and ca.check() == []
    crl = x509.load_pem_x509_crl((ca_home / "crl.pem").read_bytes())
    for serial in (first.serial, second.serial):
        listed = crl.get_revoked_certificate_by_serial_number(serial)
        assert listed is not None
        reason = listed.extensions.get_extension_for_class(x509.CRLReason).value.reason
        assert reason == x509.ReasonFlags.key_compromise
    r = run("ca", "revoke", "signer", "--serial", f"{first.serial:x}", "--reason",
            "key_compromise", *ca_pass)
    assert r.exit_code == 3 and "already revoked (key_compromise)" in r.output, r.output


def test_a_ca_write_while_sign_reads_the_ca_is_no_rollback(
        ca_home: Path, run: Run, secrets_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The log is counted before the index is read: a `ca issue` that commits its index
    and appends its log entry in between must not make the index look restored."""
    from trustboot.ca import store

    opened = store.CertificateAuthority.open.__func__  # type: ignore[attr-defined]
    writes: list[int] = []

    def open_after_a_write(cls: type[store.CertificateAuthority], path: Path,
                           ) -> store.CertificateAuthority:
        if writes:
            return opened(cls, path)  # type: ignore[no-any-return]
        # sign's open (after it counted the log): it reads the index, then another run
        # commits its index and appends to the log
        writes.append(1)
        read = opened(cls, path)
        opened(cls, path).issue("codesign", "meanwhile", constant(CA_PASS.encode()),
                                constant(b"meanwhile passphrase"), key_type="ec-p256")
        return read  # type: ignore[no-any-return]

    monkeypatch.setattr(store.CertificateAuthority, "open", classmethod(open_after_a_write))
    image = tmp_path / "img.bin"
    image.write_bytes(b"kernel")
    r = run("sign", str(image), "--key", "signer", "--pki", str(ca_home), "--passphrase-file",
            str(secrets_dir / "key.pass"), "--out", str(tmp_path / "s"))
    assert writes and r.exit_code == 0, r.output
    assert (tmp_path / "s" / "img.bin.sig").exists()


def test_a_raise_to_key_compromise_killed_before_its_crl_is_finished_by_a_rerun(
        ca_home: Path, run: Run, secrets_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between the index commit and the CRL of a raise to key_compromise: the CRL
    still gave the old reason, which the CA took for an edited index and refused every
    write, with a hint (restore the old index) that would have lost the compromise. It is
    an unfinished revocation: `ca check` says so, and the same revoke finishes it."""
    ca_pass = ["--pki", str(ca_home), "--passphrase-file", str(secrets_dir / "ca.pass")]
    serial = CertificateAuthority.open(ca_home).get("signer").serial
    r = run("ca", "revoke", "signer", "--reason", "superseded", *ca_pass)
    assert r.exit_code == 0, r.output

    def killed(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt  # stands for the SIGKILL after the index commit

    monkeypatch.setattr(CertificateAuthority, "_write_crls", killed)
    with pytest.raises(KeyboardInterrupt):
        CertificateAuthority.open(ca_home).revoke(
            "signer", constant(CA_PASS.encode()), reason="key_compromise", serial=serial)
    monkeypatch.undo()
    ca = CertificateAuthority.open(ca_home)
    assert ca.index_conflicts() == []
    problems = ca.check()
    assert any("raised to key_compromise" in p and "not finished" in p for p in problems), \
        problems
    r = run("ca", "revoke", "signer", "--serial", f"{serial:x}", "--reason",
            "key_compromise", *ca_pass)
    assert r.exit_code == 0, r.output
    ca = CertificateAuthority.open(ca_home)
    assert ca.check() == []
    listed = x509.load_pem_x509_crl((ca_home / "crl.pem").read_bytes()) \
        .get_revoked_certificate_by_serial_number(serial)
    assert listed is not None and listed.extensions.get_extension_for_class(
        x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    # any other write finishes it as well; an index edited to another reason still is a
    # conflict (only a raise to key_compromise is taken for an unfinished run)
    index = json.loads((ca_home / "index.json").read_text())
    for e in index["entries"]:
        if int(e["serial"], 16) == serial:
            e["revocation_reason"] = "superseded"
    (ca_home / "index.json").write_text(json.dumps(index))
    assert any("index.json says superseded" in c
               for c in CertificateAuthority.open(ca_home).index_conflicts())
