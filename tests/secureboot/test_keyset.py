"""Secure Boot key set and enrollment material, checked by independent tools."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.conftest import give_group_to_another_user
from trustboot.errors import ConfigError
from trustboot.secrets import constant
from trustboot.secureboot import efi, keyset

from .conftest import PASS, Run


def test_init_layout_modes_and_profiles(keyset_pki: Path) -> None:
    d = keyset_pki / "secureboot"
    assert stat.S_IMODE(d.stat().st_mode) == 0o755
    assert stat.S_IMODE((d / "private").stat().st_mode) == 0o700
    meta = json.loads((d / "secureboot.json").read_text())
    for role in keyset.ROLES:
        key = d / "private" / f"{role}.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
        cert = x509.load_pem_x509_certificate((d / f"{role}.crt").read_bytes())
        assert stat.S_IMODE((d / f"{role}.crt").stat().st_mode) == 0o644
        pub = cert.public_key()
        assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 2048
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
        assert cert.subject == cert.issuer
        assert cert.not_valid_before_utc < dt.datetime.now(dt.UTC) - dt.timedelta(hours=12)
        assert meta["keys"][role]["sha256"] == cert.fingerprint(hashes.SHA256()).hex()
    assert str(keyset.load_keyset(keyset_pki).owner) == meta["owner_guid"]


def test_init_under_umask_000(tmp_path: Path, pw: Path, run: Run) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    old = os.umask(0)
    try:
        r = run("secureboot", "init", "--pki", str(pki), "--name", "U",
                "--passphrase-file", str(pw))
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    for p in (pki / "secureboot").rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert not mode & 0o022, (p, oct(mode))
        if "private" in p.parts:
            assert not mode & 0o077, (p, oct(mode))


@pytest.mark.parametrize(("passphrase", "days", "message"), [
    (PASS.encode(), 0, "--days 0 is out of range"),
    (PASS.encode(), 36501, "--days 36501 is out of range"),
    (b"short", 365, "the passphrase for the Secure Boot keys is shorter than"),  # (not PK.key)
])
def test_init_refuses_bad_days_and_a_weak_passphrase(tmp_path: Path, passphrase: bytes,
                                                     days: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        keyset.init_keyset(tmp_path, constant(passphrase), name="X",
                           now=dt.datetime.now(dt.UTC), days=days)
    assert not (tmp_path / "secureboot").exists()


@pytest.mark.parametrize("sub", ["secureboot", "secureboot/private"])
def test_a_key_set_reached_through_a_link_is_refused(pki_copy: Path, tmp_path: Path,
                                                     sub: str) -> None:
    # the recorded fingerprints are trusted only where they were written: a link (to a
    # directory whoever made the link controls) is refused, whatever it points at
    real = tmp_path / "elsewhere"
    (pki_copy / sub).rename(real)
    (pki_copy / sub).symlink_to(real)
    with pytest.raises(ConfigError, match="link"):
        keyset.load_keyset(pki_copy)


def test_a_key_set_in_a_pki_others_can_write_is_refused(pki_copy: Path) -> None:
    # whoever can write the CA home can swap the whole key set directory for another
    pki_copy.chmod(0o775)
    give_group_to_another_user(pki_copy)
    with pytest.raises(ConfigError, match="writable"):
        keyset.load_keyset(pki_copy)


@pytest.mark.parametrize("where", ["pki", "above"])
def test_init_in_a_pki_others_can_write_creates_nothing(tmp_path: Path, pw: Path, run: Run,
                                                        where: str) -> None:
    # the same rule load_keyset holds the home to, checked before any key is made
    pki = tmp_path / "shared" / "pki"
    pki.mkdir(parents=True, mode=0o755)
    (pki if where == "pki" else pki.parent).chmod(0o777)
    r = run("secureboot", "init", "--pki", str(pki), "--name", "S",
            "--passphrase-file", str(pw))
    assert r.exit_code == 3 and "writable" in r.output, r.output
    assert os.listdir(pki) == []


def test_damaged_token_metadata_is_refused(pki_copy: Path) -> None:
    meta = pki_copy / "secureboot" / "secureboot.json"
    doc = json.loads(meta.read_text())
    doc["pkcs11"] = {"module": 5, "PK": "pkcs11:object=x"}
    meta.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="damaged or incomplete"):
        keyset.load_keyset(pki_copy)


def test_second_init_refused(keyset_pki: Path, pw: Path, run: Run) -> None:
    before = (keyset_pki / "secureboot" / "secureboot.json").read_bytes()
    r = run("secureboot", "init", "--pki", str(keyset_pki), "--name", "X",
            "--passphrase-file", str(pw))
    assert r.exit_code == 3 and "already holds" in r.output
    assert (keyset_pki / "secureboot" / "secureboot.json").read_bytes() == before


def test_swapped_certificate_refused(pki_copy: Path, other_pki: Path, run: Run,
                                     tmp_path: Path, pw: Path) -> None:
    shutil.copyfile(other_pki / "secureboot" / "db.crt", pki_copy / "secureboot" / "db.crt")
    r = run("secureboot", "export", "--pki", str(pki_copy), "--out", str(tmp_path / "o"),
            "--passphrase-file", str(pw))
    assert r.exit_code == 3 and "not the db certificate recorded" in r.output
    assert not (tmp_path / "o").exists()


def test_wrong_passphrase(keyset_pki: Path, tmp_path: Path, run: Run) -> None:
    bad = tmp_path / "bad"
    bad.write_text("wrong wrong wrong\n")
    bad.chmod(0o600)
    r = run("secureboot", "export", "--pki", str(keyset_pki), "--out", str(tmp_path / "o"),
            "--passphrase-file", str(bad))
    assert r.exit_code == 3 and "wrong passphrase" in r.output
    assert PASS not in r.output


def test_export_into_a_directory_others_can_write_is_refused(
        keyset_pki: Path, pw: Path, run: Run, tmp_path: Path) -> None:
    """Whoever can write the export directory can swap PK.auth/db.esl for their own before
    they are enrolled (and move noPK.auth aside): refused, nothing written, no key used."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    r = run("secureboot", "export", "--pki", str(keyset_pki), "--out", str(shared),
            "--passphrase-file", str(pw))
    assert r.exit_code == 3 and "writable by other users" in r.output, r.output
    assert list(shared.iterdir()) == []
    # a link to such a directory is judged by where it leads
    link = tmp_path / "link"
    link.symlink_to(shared)
    r = run("secureboot", "export", "--pki", str(keyset_pki), "--out", str(link),
            "--passphrase-file", str(pw))
    assert r.exit_code == 3 and list(shared.iterdir()) == [], r.output


def test_killed_init_leaves_no_key_set(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    calls = 0

    def dying(_what: str) -> bytes:
        nonlocal calls
        calls += 1
        return PASS.encode()

    # A staging dir from a killed run is cleaned up, and a failure mid-way leaves nothing.
    (pki / ".secureboot.abc.tmp").mkdir()
    with pytest.raises(ConfigError):
        keyset.init_keyset(pki, dying, name="bad\nname", now=dt.datetime.now(dt.UTC))
    keyset.init_keyset(pki, dying, name="ok", now=dt.datetime.now(dt.UTC))
    assert sorted(p.name for p in pki.iterdir()) == [".lock", "secureboot"]  # (the CA's lock)


@pytest.fixture(scope="module")
def exported(keyset_pki: Path, pw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "out"
    ks = keyset.load_keyset(keyset_pki)
    keyset.export(ks, out, constant(PASS.encode()), now=dt.datetime.now(dt.UTC))
    return out


def test_esl_round_trip(exported: Path, keyset_pki: Path) -> None:
    ks = keyset.load_keyset(keyset_pki)
    for role in keyset.ROLES:
        entries = efi.parse_signature_lists((exported / f"{role}.esl").read_bytes())
        assert len(entries) == 1
        assert entries[0].type == efi.EFI_CERT_X509 and entries[0].owner == ks.owner
        assert entries[0].data == (exported / f"{role}.cer").read_bytes()


@pytest.mark.parametrize("cut", [1, 20, 27])
def test_truncated_esl_refused(exported: Path, cut: int) -> None:
    data = (exported / "db.esl").read_bytes()
    with pytest.raises(ConfigError):
        efi.parse_signature_lists(data[:-cut])


def _tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        pytest.skip(f"needs {name} (pip install virt-firmware)")
    return found


@pytest.mark.parametrize("role", keyset.ROLES)
def test_esl_identical_to_virt_firmware(exported: Path, keyset_pki: Path, tmp_path: Path,
                                        role: str) -> None:
    """virt-firmware builds the same signature list from the certificate and owner GUID,
    and reads ours back."""
    sigdb = _tool("virt-fw-sigdb")
    owner = str(keyset.load_keyset(keyset_pki).owner)
    ref = tmp_path / "ref.esl"
    subprocess.run([sigdb, "--add-cert", owner, str(exported / f"{role}.crt"), "--output",
                    str(ref)], capture_output=True, check=True)
    assert ref.read_bytes() == (exported / f"{role}.esl").read_bytes()
    out = subprocess.run([sigdb, "--input", str(exported / f"{role}.esl"), "--print"],
                         capture_output=True, text=True, check=True)
    assert f"Test Boot Secure Boot {role}" in out.stdout + out.stderr


def _verify_auth(exported: Path, role: str, signer_role: str, *, file: str | None = None,
                 data: bytes | None = None) -> None:
    upd = efi.parse_auth_update((exported / (file or f"{role}.auth")).read_bytes())
    assert upd.data == ((exported / f"{role}.esl").read_bytes() if data is None else data)
    signer = x509.load_pem_x509_certificate((exported / f"{signer_role}.crt").read_bytes())
    # The bare SignedData: its last element is the signer info ending in the signature.
    from asn1crypto import cms

    sd = cms.SignedData.load(upd.cms)
    si = sd["signer_infos"][0]
    assert not si["signed_attrs"]
    payload = efi.signed_payload(role, upd.timestamp, upd.data)
    pub = signer.public_key()
    assert isinstance(pub, rsa.RSAPublicKey)
    pub.verify(si["signature"].native, payload, padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize("role", keyset.ROLES)
def test_auth_signed_by_the_level_above(exported: Path, role: str) -> None:
    _verify_auth(exported, role, keyset.UPDATE_SIGNER[role])


def test_auth_byte_identical_to_efitools(exported: Path, keyset_pki: Path,
                                         tmp_path: Path) -> None:
    """efitools' sign-efi-sig-list, given the same key, cert and timestamp, writes the
    same bytes (RSA PKCS#1 v1.5 is deterministic)."""
    if not shutil.which("sign-efi-sig-list") or not shutil.which("openssl"):
        pytest.skip("needs efitools and openssl: apt-get install efitools openssl")
    upd = efi.parse_auth_update((exported / "db.auth").read_bytes())
    y, mo, d, h, mi, s = struct.unpack_from("<HBBBBB", upd.timestamp)
    plain = tmp_path / "KEK.key"
    secret = tmp_path / "pw"
    secret.write_text(PASS)
    subprocess.run(["openssl", "pkey", "-in", str(keyset_pki / "secureboot/private/KEK.key"),
                    "-passin", f"file:{secret}", "-out", str(plain)], check=True)
    out = tmp_path / "db.auth"
    subprocess.run(["sign-efi-sig-list", "-t", f"{y}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}",
                    "-c", str(exported / "KEK.crt"), "-k", str(plain), "db",
                    str(exported / "db.esl"), str(out)], check=True, capture_output=True)
    assert out.read_bytes() == (exported / "db.auth").read_bytes()


def test_tampered_auth_fails_signature(exported: Path) -> None:
    blob = bytearray((exported / "db.auth").read_bytes())
    blob[-5] ^= 1  # inside the ESL (the certificate's signature bytes)
    upd = efi.parse_auth_update(bytes(blob))
    from asn1crypto import cms

    si = cms.SignedData.load(upd.cms)["signer_infos"][0]
    kek = x509.load_pem_x509_certificate((exported / "KEK.crt").read_bytes()).public_key()
    assert isinstance(kek, rsa.RSAPublicKey)
    from cryptography.exceptions import InvalidSignature

    with pytest.raises(InvalidSignature):
        kek.verify(si["signature"].native, efi.signed_payload("db", upd.timestamp, upd.data),
                   padding.PKCS1v15(), hashes.SHA256())


def test_ovmf_vars_enrolled(keyset_pki: Path, pw: Path, run: Run, tmp_path: Path) -> None:
    template = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
    if not template.is_file():
        pytest.skip("needs OVMF's VARS template: apt-get install ovmf")
    try:
        keyset._virt_fw_vars()
    except ConfigError:
        pytest.skip("needs virt-firmware (pip install virt-firmware)")
    out = tmp_path / "o"
    r = run("secureboot", "export", "--pki", str(keyset_pki), "--out", str(out),
            "--ovmf-vars", str(template), "--passphrase-file", str(pw))
    assert r.exit_code == 0, r.output
    dump = subprocess.run([keyset._virt_fw_vars(), "--input",
                           str(out / "OVMF_VARS.secboot.fd"), "--print", "--verbose"],
                          capture_output=True, text=True, check=True)
    text = dump.stdout + dump.stderr
    for role in keyset.ROLES:
        assert f"Test Boot Secure Boot {role}" in text, text
    assert "Microsoft" not in text


def test_ovmf_template_not_a_store(keyset_pki: Path, pw: Path, run: Run,
                                   tmp_path: Path) -> None:
    try:
        keyset._virt_fw_vars()
    except ConfigError:
        pytest.skip("needs virt-firmware (pip install virt-firmware)")
    junk = tmp_path / "junk.fd"
    junk.write_bytes(os.urandom(4096))
    r = run("secureboot", "export", "--pki", str(keyset_pki), "--out", str(tmp_path / "o"),
            "--ovmf-vars", str(junk), "--passphrase-file", str(pw))
    assert r.exit_code == 3 and "not an OVMF variable store" in r.output
    assert not (tmp_path / "o" / "OVMF_VARS.secboot.fd").exists()
    # refused with nothing written (README): not even the .auth files beside it
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_export_digest_stable(exported: Path) -> None:
    # .cer is the DER of .crt; the ESL embeds exactly that DER.
    for role in keyset.ROLES:
        der = (exported / f"{role}.cer").read_bytes()
        pem = x509.load_pem_x509_certificate((exported / f"{role}.crt").read_bytes())
        assert hashlib.sha256(der).hexdigest() == pem.fingerprint(hashes.SHA256()).hex()


@pytest.mark.parametrize(("sub", "mode", "fix"), [
    # Whoever can write there can replace a certificate and its recorded fingerprint.
    ("", 0o775, "chmod go-w"),
    # The keys' directory is closed to group and others entirely, as the CA's private/.
    ("private", 0o750, "chmod 700"),
])
def test_key_set_others_can_write_refused(pki_copy: Path, run: Run, tmp_path: Path,
                                          pw: Path, sub: str, mode: int, fix: str) -> None:
    (pki_copy / "secureboot" / sub).chmod(mode)
    if not sub:
        give_group_to_another_user(pki_copy / "secureboot")
    r = run("secureboot", "export", "--pki", str(pki_copy), "--out", str(tmp_path / "o"),
            "--passphrase-file", str(pw))
    assert r.exit_code == 3 and fix in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_no_pk_auth_deletes_pk(exported: Path) -> None:
    """noPK.auth: an empty PK update signed by the PK, dated after PK.auth (firmware takes
    a PK update only with a later timestamp) and private (it switches enforcement off)."""
    nopk = exported / "noPK.auth"
    assert nopk.stat().st_mode & 0o777 == 0o600
    upd = efi.parse_auth_update(nopk.read_bytes())
    assert upd.data == b""
    enrolled = efi.parse_auth_update((exported / "PK.auth").read_bytes())
    assert struct.unpack_from("<HBBBBB", upd.timestamp) > \
        struct.unpack_from("<HBBBBB", enrolled.timestamp)
    _verify_auth(exported, "PK", "PK", file="noPK.auth", data=b"")


def test_ca_secureboot_is_the_same_command(tmp_path: Path, pw: Path, run: Run) -> None:
    """`trustboot ca secureboot ...` (the issue's spelling) makes the same key set."""
    pki = tmp_path / "pki"
    pki.mkdir(mode=0o755)
    r = run("ca", "secureboot", "init", "--pki", str(pki), "--name", "Via CA",
            "--passphrase-file", str(pw), "--json")
    assert r.exit_code == 0, r.output
    meta = json.loads((pki / "secureboot" / "secureboot.json").read_text())
    assert "Via CA" in json.dumps(meta)
    r = run("ca", "secureboot", "init", "--pki", str(pki), "--name", "Via CA",
            "--passphrase-file", str(pw))
    assert r.exit_code == 3, r.output  # a second key set is refused, as by `secureboot init`
    assert "secureboot" in run("ca", "--help").output


def test_ovmf_vars_in_a_tmpdir_others_can_write_is_refused(
        keyset_pki: Path, pw: Path, run: Run, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """virt-fw-vars writes the enrolled store into a temporary directory and the export
    reads it back from there: in a TMPDIR others can write without the sticky bit they
    could swap that directory for theirs, and OVMF_VARS.secboot.fd would enroll their PK.
    Refused (exit 3) before anything is created there or exported."""
    import tempfile

    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    template = tmp_path / "vars.fd"
    template.write_bytes(os.urandom(4096))
    r = run("secureboot", "export", "--pki", str(keyset_pki), "--out", str(tmp_path / "o"),
            "--ovmf-vars", str(template), "--passphrase-file", str(pw))
    assert r.exit_code == 3, r.output
    assert f"{shared} above it is writable by other users" in r.output, r.output
    assert list(shared.iterdir()) == []
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


@pytest.mark.parametrize(("name", "message"), [
    ("A" * 49, "is 49 characters long; at most 48 fit"),
    ("A" * 64, "is 64 characters long; at most 48 fit"),
    ("Boot\n", "holds control characters"),
    ("x\udcff", "is not valid UTF-8 text"),  # what argv's byte 0xff becomes
])
def test_init_refuses_a_name_no_certificate_can_hold(tmp_path: Path, pw: Path, run: Run,
                                                     name: str, message: str) -> None:
    """'<name> Secure Boot KEK' must fit a 64-character common name: longer names were
    let through and failed in the certificate builder (exit 70), as did surrogates."""
    pki = tmp_path / "pki"
    pki.mkdir(mode=0o755)
    r = run("secureboot", "init", "--pki", str(pki), "--name", name,
            "--passphrase-file", str(pw))
    assert r.exit_code == 3, r.output
    assert message in r.output and "Example Boot" in r.output
    assert os.listdir(pki) == []


def test_a_name_that_is_not_utf8_in_argv_is_refused(tmp_path: Path, pw: Path) -> None:
    """The same from a real command line, whose bytes Python decodes with surrogates."""
    pki = tmp_path / "pki"
    pki.mkdir(mode=0o755)
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "trustboot", "secureboot", "init", "--pki",
                          str(pki), "--name", b"x\xff", "--passphrase-file", str(pw)],
                         capture_output=True, text=True, errors="replace", cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 3, out.stdout + out.stderr
    assert "is not valid UTF-8 text" in out.stderr
    assert os.listdir(pki) == []


def test_the_longest_name_fits(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir(mode=0o755)
    ks = keyset.init_keyset(tmp_path / "pki", constant(PASS.encode()),
                            name="N" * 48, now=dt.datetime.now(dt.UTC))
    cn = ks.certificates["KEK"].subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0]
    assert cn.value == "N" * 48 + " Secure Boot KEK" and len(cn.value) == 64
