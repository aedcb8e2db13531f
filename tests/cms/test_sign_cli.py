"""`trustboot sign`: key references, manifests, refusals, one unlock for many files."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.cms.corpus import Key
from tests.cms.pki import PASSPHRASE, Material, ec_key, make_material, rsa_key
from tests.conftest import sweep_clock_between
from tests.procs import child_pids
from trustboot import secrets
from trustboot.cli.main import cli
from trustboot.cms.sign import CHUNK, hash_file, sign_files
from trustboot.errors import ConfigError
from trustboot.keys.ref import KeyRef, parse_ref
from trustboot.keys.signer import KeySigner, open_signer

ENV = {"TB_TEST_PASS": PASSPHRASE.decode()}
DAY = dt.timedelta(days=1)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(Path(tmp_path_factory.mktemp("pki")))


def _files(tmp_path: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        p = tmp_path / f"file{i}.bin"
        p.write_bytes(f"payload {i}\n".encode() * (i + 1))
        out.append(p)
    return out


def _digests(n: int) -> list[bytes]:
    """``n`` distinct SHA-256 digests, as hashing ``n`` files gives."""
    return [hashlib.sha256(str(i).encode()).digest() for i in range(n)]


def _rsa_signer(material: Material, name: str) -> KeySigner:
    """An unlocked RSA key signer for a fresh certificate ``name``."""
    return _signer(material, name, rsa_key())


def _signer(material: Material, name: str, private: Key) -> KeySigner:
    """An unlocked key signer for ``private`` and a fresh certificate ``name``."""
    key, cert, chain = material.issue(name, private)
    signer, _ = open_signer(parse_ref(f"file:{key}"), passphrases=secrets.constant(PASSPHRASE),
                            cert=cert, chain=chain)
    assert isinstance(signer, KeySigner)
    return signer


def _sign_args(key: Path, cert: Path, chain: Path) -> list[str]:
    return ["sign", "--key", f"file:{key}", "--cert", str(cert), "--chain", str(chain),
            "--passphrase-env", "TB_TEST_PASS"]


def test_sign_json_manifest_and_verify(material: Material, tmp_path: Path) -> None:
    key, cert, chain = material.issue("manifest-signer", rsa_key())
    files = _files(tmp_path, 3)
    out = tmp_path / "sigs"
    manifest = tmp_path / "manifest.json"
    result = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), *map(str, files),
                                      "--out", str(out), "--json", "--manifest",
                                      str(manifest)], env=ENV)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert json.loads(manifest.read_text()) == doc
    assert [Path(f["path"]) for f in doc["files"]] == files
    for entry, path in zip(doc["files"], files, strict=True):
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["size"] == path.stat().st_size
        assert Path(entry["signature"]) == out / f"{path.name}.sig"
        assert "CN=manifest-signer" in entry["signer_subject"]
        assert dt.datetime.fromisoformat(entry["signer_not_after"]) > dt.datetime.now(dt.UTC)
        verify = CliRunner().invoke(cli, ["verify", str(path), "--sig", entry["signature"],
                                          "--trust", str(material.directory / "root.pem"),
                                          "--signer", "manifest-signer"])
        assert verify.exit_code == 0, verify.output
        assert "OK" in verify.output


def test_many_files_unlock_the_key_once(material: Material, tmp_path: Path) -> None:
    key, cert, chain = material.issue("once-signer", ec_key())
    calls: list[str] = []

    def source(what: str) -> bytes:
        calls.append(what)
        return PASSPHRASE

    signer, _ = open_signer(parse_ref(f"file:{key}"), passphrases=source, cert=cert,
                            chain=chain)
    results = sign_files(_files(tmp_path, 20), signer, now=dt.datetime.now(dt.UTC))
    assert len(results) == 20 and all(r.signature_path.is_file() for r in results)
    assert len(calls) == 1


@pytest.mark.parametrize(("kw", "rule"), [
    ({"eku": [ExtendedKeyUsageOID.SERVER_AUTH]}, "code-signing"),
    ({"key_usage": {"key_encipherment"}}, "key-usage"),
    ({"key_usage": None}, "key-usage"),
    ({"not_before": dt.datetime.now(dt.UTC) - 400 * DAY,
      "not_after": dt.datetime.now(dt.UTC) - DAY}, "expired"),
    ({"not_before": dt.datetime.now(dt.UTC) + DAY}, "not-yet-valid"),
    # within iPXE's 12h30m margin, which a client would still accept: signing is stricter
    # (a signature made with a just-expired signer dies within hours everywhere)
    ({"not_before": dt.datetime.now(dt.UTC) - 400 * DAY,
      "not_after": dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)}, "expired"),
    ({"not_before": dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)}, "not-yet-valid"),
])
def test_refuses_signers_ipxe_would_reject(material: Material, tmp_path: Path,
                                           kw: dict[str, object], rule: str) -> None:
    key, cert, chain = material.issue(f"bogus-{rule}-{len(kw)}-{tmp_path.name[-8:]}",
                                      rsa_key(), **kw)  # type: ignore[arg-type]
    image = _files(tmp_path, 1)[0]
    result = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), str(image)], env=ENV)
    assert result.exit_code == 4, result.output
    assert "hint:" in result.output
    assert not image.with_name(image.name + ".sig").exists()
    assert f"[rule: {rule}]" in result.output


def test_a_refused_signer_is_reported_before_a_wrong_passphrase(material: Material,
                                                                tmp_path: Path) -> None:
    """The key is unlocked in the background from the start (file: keys, secret from the
    environment), but a doomed signer is still what the user hears about, exit 4."""
    now = dt.datetime.now(dt.UTC)
    key, cert, chain = material.issue("expired-pw", rsa_key(), not_before=now - 400 * DAY,
                                      not_after=now - DAY)
    image = _files(tmp_path, 1)[0]
    result = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), str(image)],
                                env={"TB_TEST_PASS": "not the passphrase"})
    assert result.exit_code == 4, result.output
    assert "[rule: expired]" in result.output and "passphrase" not in result.output


def test_warns_when_signer_expires_soon(material: Material, tmp_path: Path) -> None:
    key, cert, chain = material.issue("short-lived", ec_key(),
                                      not_after=dt.datetime.now(dt.UTC) + 10 * DAY)
    image = _files(tmp_path, 1)[0]
    result = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), str(image)], env=ENV)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "stop verifying" in result.stderr
    quiet = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), str(image),
                                     "--expiry-warning-days", "5"], env=ENV)
    assert quiet.exit_code == 0 and "stop verifying" not in quiet.stderr


def test_ecdsa_refused_for_old_ipxe(material: Material, tmp_path: Path) -> None:
    key, cert, chain = material.issue("ec-old", ec_key())
    image = _files(tmp_path, 1)[0]
    # no passphrase in the environment: the signer is refused before its secret is asked for
    result = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), str(image),
                                      "--ipxe-version", "1.21.1"], env={"TB_TEST_PASS": None})
    # a signer iPXE would reject: exit 4, like every other refused signer (README "CI signing")
    assert result.exit_code == 4, result.output
    assert "2.0.0" in result.output and "[rule: unsupported-algorithm]" in result.output
    assert not image.with_name(image.name + ".sig").exists()


def test_p521_signer_refused_with_exit_4(material: Material, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key, cert, chain = material.issue("p521-sign", ec.generate_private_key(ec.SECP521R1()))
    image = _files(tmp_path, 1)[0]
    result = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), str(image)], env=ENV)
    assert result.exit_code == 4, result.output
    assert not image.with_name(image.name + ".sig").exists()


def test_key_references() -> None:
    assert parse_ref("kernel-signer") == KeyRef("ca", "kernel-signer")
    assert parse_ref("ca:kernel-signer") == KeyRef("ca", "kernel-signer")
    assert parse_ref("file:keys/a.key").path == Path("keys/a.key")
    assert parse_ref("file:///abs/a.key").path == Path("/abs/a.key")
    assert parse_ref("pkcs11:token=hsm;object=sign").scheme == "pkcs11"
    for bad in ["", "ftp:x", "../etc/passwd", "ca:"]:
        with pytest.raises(ConfigError):
            parse_ref(bad)


def test_pkcs11_without_a_module_is_a_config_error(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRUSTBOOT_PKCS11_MODULE", raising=False)
    image = _files(tmp_path, 1)[0]
    result = CliRunner().invoke(cli, ["sign", str(image), "--key", "pkcs11:token=t;object=o"])
    assert result.exit_code == 3, result.output
    assert "no PKCS#11 module" in result.output and "--pkcs11-module" in result.output


@pytest.mark.parametrize("ref", ["pkcs:token=t;object=o;pin-value=S3cr3tPIN",
                                 "pkcs11;token=t;pin-value=S3cr3tPIN",
                                 "file:",
                                 "pkcs11:token=t;object=o?pin-value=S3cr3tPIN"])
def test_malformed_key_reference_never_echoes_a_pin(tmp_path: Path, ref: str) -> None:
    image = _files(tmp_path, 1)[0]
    result = CliRunner().invoke(cli, ["sign", str(image), "--key", ref, "--json"])
    assert result.exit_code == 3, result.output
    assert "S3cr3tPIN" not in result.output


def test_wrong_passphrase_and_mismatched_cert(material: Material, tmp_path: Path) -> None:
    key, cert, chain = material.issue("pw-signer", ec_key())
    _, other_cert, _ = material.issue("other-signer", ec_key())
    image = _files(tmp_path, 1)[0]
    wrong = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), str(image)],
                               env={"TB_TEST_PASS": "not the passphrase"})
    assert wrong.exit_code == 3 and "wrong passphrase" in wrong.output
    mismatch = CliRunner().invoke(cli, [*_sign_args(key, other_cert, chain), str(image)],
                                  env=ENV)
    assert mismatch.exit_code == 3 and "does not belong" in mismatch.output
    # the hint names sign's option (--cert is verify's CERT= option, and no option of resign)
    assert "(--signing-cert)" in mismatch.output and "(--cert)" not in mismatch.output


def test_ca_references(tmp_path: Path) -> None:
    """NAME resolves through the CA; revoked and non-codesign certificates are refused."""
    from trustboot.ca.store import CertificateAuthority

    pki = tmp_path / "pki"
    pw = secrets.constant(PASSPHRASE)
    ca, _ = CertificateAuthority.init(pki, pw, key_type="ec-p256")
    ca.issue("codesign", "kernel-signer", pw, pw, key_type="ec-p256")
    ca.issue("codesign", "old-signer", pw, pw, key_type="ec-p256")
    ca.issue("client", "a-client", pw, pw, key_type="ec-p256")
    ca = CertificateAuthority.open(pki)
    ca.revoke("old-signer", pw)
    image = _files(tmp_path, 1)[0]
    base = ["sign", str(image), "--pki", str(pki), "--passphrase-env", "TB_TEST_PASS"]
    ok = CliRunner().invoke(cli, [*base, "--key", "kernel-signer"], env=ENV)
    assert ok.exit_code == 0, ok.output
    verify = CliRunner().invoke(cli, ["verify", str(image), "--pki", str(pki)])
    assert verify.exit_code == 0, verify.output
    revoked = CliRunner().invoke(cli, [*base, "--key", "ca:old-signer"], env=ENV)
    assert revoked.exit_code == 4 and "revoked" in revoked.output, revoked.output
    client = CliRunner().invoke(cli, [*base, "--key", "a-client"], env=ENV)
    assert client.exit_code == 4 and "codesign" in client.output, client.output
    env_key = CliRunner().invoke(cli, base, env=ENV | {"TRUSTBOOT_SIGNING_KEY": "kernel-signer"})
    assert env_key.exit_code == 0, env_key.output


def test_hashing_memory_does_not_grow_with_file_size(tmp_path: Path) -> None:
    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(b"x" * (2 * CHUNK))
    with big.open("wb") as fh:  # sparse: 256 MiB of zeros without the disk
        fh.truncate(256 << 20)
    peaks = []
    for path in (small, big):
        tracemalloc.start()
        hash_file(path, ["sha256", "sha512"])
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 4 * CHUNK
    assert peaks[1] < peaks[0] + CHUNK // 4


@pytest.mark.parametrize("change", ["append", "truncate", "rewrite", "small"])
def test_a_file_that_changes_while_it_is_hashed_is_refused(tmp_path: Path,
                                                           change: str) -> None:
    """A file a build step or a copy still writes: its digest covers bytes that were never
    in the file together, and a signature over it verifies for no version of it. Grown,
    cut, or rewritten in place (same size, new mtime) during the read: refused (exit 1),
    naming the file."""
    path = tmp_path / "vmlinuz"
    path.write_bytes(os.urandom(4 * CHUNK if change != "small" else 100))
    os.utime(path, ns=(1, 1))  # an old stamp, so a rewrite moves it
    done: list[int] = []

    def meddle(_count: int) -> None:
        if done:
            return
        done.append(1)
        if change == "truncate":
            os.truncate(path, CHUNK)
        else:
            with path.open("r+b" if change == "rewrite" else "ab") as fh:
                fh.write(b"more")

    from trustboot.errors import OperationalError

    with pytest.raises(OperationalError, match="changed while it was read") as info:
        hash_file(path, ["sha256"], meddle)
    assert str(path) in info.value.message and info.value.exit_code == 1
    assert "has finished" in (info.value.hint or "")
    hash_file(path, ["sha256"])  # left alone, it hashes


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_output_is_canonical_der(material: Material, tmp_path: Path, kind: str) -> None:
    """Re-encoding every node from scratch gives the same bytes: DER, not just BER."""
    from asn1crypto import cms

    from trustboot.cms._asn1 import check_framing

    key, cert, chain = material.issue(f"der-{kind}", rsa_key() if kind == "rsa" else ec_key())
    signer, _ = open_signer(parse_ref(f"file:{key}"), passphrases=secrets.constant(PASSPHRASE),
                            cert=cert, chain=chain)
    (result,) = sign_files(_files(tmp_path, 1), signer, now=dt.datetime.now(dt.UTC),
                           hash_name="sha384")
    der = result.signature_path.read_bytes()
    check_framing(der)
    assert cms.ContentInfo.load(der).dump(force=True) == der
    info = cms.ContentInfo.load(der)
    (si,) = info["content"]["signer_infos"]
    assert si["sid"].name == "issuer_and_serial_number"
    assert si["signed_attrs"].native is None
    assert info["content"]["encap_content_info"]["content"].native is None  # detached
    assert len(info["content"]["certificates"]) == 3  # signer, issuing CA, root


def test_ocsp_signer_signs_with_a_warning(material: Material, tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import AuthorityInformationAccessOID

    aia = x509.AuthorityInformationAccess([x509.AccessDescription(
        AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier("http://ocsp.invalid/"))])
    key, cert, chain = material.issue("ocsp-cli", ec_key(), extra=[(aia, False)])
    result = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), str(_files(tmp_path, 1)[0])],
                                env=ENV)
    assert result.exit_code == 0, result.output
    assert "OCSP" in result.stderr and "warning:" in result.stderr


def test_revoked_certificate_refused_through_file_reference(tmp_path: Path) -> None:
    """Revocation is the pki's verdict on the certificate, whatever names the key."""
    from trustboot.ca.store import CertificateAuthority

    pki = tmp_path / "pki"
    pw = secrets.constant(PASSPHRASE)
    ca, _ = CertificateAuthority.init(pki, pw, key_type="ec-p256")
    entry = ca.issue("codesign", "gone-signer", pw, pw, key_type="ec-p256").entry
    cert = tmp_path / "gone.crt"
    cert.write_bytes(entry.cert_path.read_bytes())
    key = tmp_path / "gone.key"
    key.write_bytes(entry.key_path.read_bytes())
    key.chmod(0o600)
    image = _files(tmp_path, 1)[0]
    args = ["sign", str(image), "--key", f"file:{key}", "--cert", str(cert), "--pki", str(pki),
            "--passphrase-env", "TB_TEST_PASS"]
    ok = CliRunner().invoke(cli, args, env=ENV)  # chain taken from the pki
    assert ok.exit_code == 0, ok.output
    old_index = (pki / "index.json").read_bytes()
    old_log = (pki / "log.jsonl").read_bytes()
    CertificateAuthority.open(pki).revoke("gone-signer", pw)
    image.with_name(image.name + ".sig").unlink()
    refused = CliRunner().invoke(cli, args, env=ENV)
    assert refused.exit_code == 4, refused.output
    assert "[rule: revoked]" in refused.output and "hint:" in refused.output
    assert not image.with_name(image.name + ".sig").exists()
    # An index restored from an older backup: its log is ahead of it, refused.
    (pki / "index.json").write_bytes(old_index)
    behind = CliRunner().invoke(cli, args, env=ENV)
    assert behind.exit_code == 4 and "[rule: ca-rollback]" in behind.output, behind.output
    # The log restored with it: listed only in the CRL, still refused.
    (pki / "log.jsonl").write_bytes(old_log)
    crl_only = CliRunner().invoke(cli, args, env=ENV)
    assert crl_only.exit_code == 4 and "crl.pem" in crl_only.output, crl_only.output


def test_bad_options_fail_before_any_signature(material: Material, tmp_path: Path) -> None:
    key, cert, chain = material.issue("opts-signer", ec_key())
    files = _files(tmp_path, 2)
    blocker = tmp_path / "FILE"
    blocker.write_text("x")
    cases = [
        (["--out", str(blocker / "sub")], 1, "not a directory"),
        (["--expiry-warning-days", "99999999999"], 3, "out of range"),
        (["--expiry-warning-days", "-1"], 3, "out of range"),
        (["--manifest", str(blocker / "dir" / "m.json")], 1, "not a directory"),
        (["--out", str(tmp_path / "o1"), "--manifest", str(blocker / "m.json")], 1,
         "not a directory"),
    ]
    # with a passphrase option (hashing starts at once) and without one (the key would be
    # unlocked first: no secret is asked for when an option is wrong)
    for secret in (_sign_args(key, cert, chain), _sign_args(key, cert, chain)[:-2]):
        for extra, code, needle in cases:
            result = CliRunner().invoke(cli, [*secret, *map(str, files), *extra], env=ENV)
            assert result.exit_code == code, (extra, result.output)
            assert needle in result.output and "hint:" in result.output, result.output
            assert not list(tmp_path.rglob("*.sig")), extra


def test_out_dir_created_with_explicit_modes(material: Material, tmp_path: Path) -> None:
    import os
    import stat

    key, cert, chain = material.issue("umask-signer", ec_key())
    out = tmp_path / "a" / "b"
    old = os.umask(0)
    try:
        result = CliRunner().invoke(cli, [*_sign_args(key, cert, chain),
                                          str(_files(tmp_path, 1)[0]), "--out", str(out)],
                                    env=ENV)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    for d in (tmp_path / "a", out):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755
    (sig,) = out.iterdir()
    assert stat.S_IMODE(sig.stat().st_mode) == 0o644


def test_files_from_list_and_stdin(material: Material, tmp_path: Path) -> None:
    key, cert, chain = material.issue("list-signer", ec_key())
    files = _files(tmp_path, 5)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(map(str, files[:3])) + "\n\n")
    result = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), str(files[3]),
                                      "--files-from", str(listing), "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    assert {Path(f["path"]) for f in json.loads(result.stdout)["files"]} == set(files[:4])
    piped = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), "--files-from", "-",
                                     "--out", str(tmp_path / "o")],
                               input=f"{files[4]}\n", env=ENV)
    assert piped.exit_code == 0, piped.output
    assert (tmp_path / "o" / f"{files[4].name}.sig").is_file()
    empty = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), "--files-from", "-"],
                               input="", env=ENV)
    assert empty.exit_code == 3 and "no files" in empty.output
    import os
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), "--files-from", str(fifo)],
                                 env=ENV)
    assert refused.exit_code == 3 and "not a regular file" in refused.output
    # FILES that are not regular files, a directory too, are I/O failures (1), as in verify
    for operand in (fifo, tmp_path):
        not_regular = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), str(operand)],
                                         env=ENV)
        assert not_regular.exit_code == 1 and "regular file" in not_regular.output


@pytest.mark.parametrize("separator", ["\x1c", "\x1d", "\x1e", "\v", "\f", "\x85",
                                       "\u2028", "\u2029"])
def test_files_from_splits_lines_at_newline_only(material: Material, tmp_path: Path,
                                                 separator: str) -> None:
    """A name holding a character str.splitlines() also splits at must not be cut into
    other names: `find dist -name '*.efi'` listing dist/payload<sep>vmlinuz.efi would
    otherwise get dist/payload (excluded by the filter) and ./vmlinuz.efi signed."""
    key, cert, chain = material.issue(f"split-signer-{ord(separator)}", ec_key())
    (tmp_path / "dist").mkdir()
    for name in ("dist/payload", "vmlinuz.efi", f"dist/payload{separator}vmlinuz.efi"):
        (tmp_path / name).write_bytes(b"data")
    listing = tmp_path / "list.txt"
    listing.write_bytes(f"dist/payload{separator}vmlinuz.efi\r\n".encode())
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), "--files-from",
                                          str(listing), "--json"], env=ENV)
    finally:
        os.chdir(old)
    assert result.exit_code == 0, result.output
    assert [f["path"] for f in json.loads(result.stdout)["files"]] == [
        f"dist/payload{separator}vmlinuz.efi"]
    assert sorted(p.name for p in tmp_path.rglob("*.sig")) == [
        f"payload{separator}vmlinuz.efi.sig"]


def test_no_output_may_replace_an_input_or_another_output(material: Material,
                                                          tmp_path: Path) -> None:
    """`sign m --manifest m` replaced the image by the manifest, `sign m --manifest m.sig`
    the signature by it, `sign m m.sig` hashed m.sig and then replaced it with m's
    signature: each exited 0. Now refused (exit 3) before anything is written, also when
    the two are spelled differently (relative and absolute, through a linked directory)."""
    key, cert, chain = material.issue("overwrite-signer", ec_key())
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to("d")
    m = tmp_path / "d" / "m"
    m.write_bytes(b"image")
    (tmp_path / "d" / "m.sig").write_bytes(b"old signature")
    cases = [
        ([str(m), "--manifest", str(tmp_path / "link" / "m")], "one of the files to sign"),
        ([str(m), "--manifest", str(m) + ".sig"], "is where the signature of"),
        ([str(m), str(tmp_path / "link" / "m.sig")], "would be replaced by the signature"),
        ([str(m), "--out", str(tmp_path / "d"), "--manifest", "m.sig"],
         "is where the signature of"),
        ([str(m), str(tmp_path / "link" / "m")], "would both be signed into"),
    ]
    old = os.getcwd()
    os.chdir(tmp_path / "d")
    try:
        for args, message in cases:
            result = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), *args], env=ENV)
            assert result.exit_code == 3, (args, result.output)
            assert message in result.output, (args, result.output)
            assert m.read_bytes() == b"image"
            assert (tmp_path / "d" / "m.sig").read_bytes() == b"old signature"
            assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["m", "m.sig"]
    finally:
        os.chdir(old)


def test_no_output_may_replace_a_file_the_run_reads(material: Material,
                                                   tmp_path: Path) -> None:
    """`--manifest sign.key` replaced the key with JSON, `--manifest pw` the passphrase
    file, `--manifest list` the --files-from list, and a key file named FILE.sig was
    replaced by FILE's signature: each exited 0. Now each is refused (exit 3) before
    anything is written, also through a link to the key."""
    key, cert, chain = material.issue("reads-signer", ec_key())
    work = tmp_path / "w"
    work.mkdir()
    kept = {}
    for name, source in (("sign.key", key), ("sign.crt", cert), ("chain.pem", chain)):
        kept[name] = work / name
        kept[name].write_bytes(source.read_bytes())
        kept[name].chmod(0o600)
    (work / "f").write_bytes(b"image")
    (work / "pw").write_bytes(PASSPHRASE + b"\n")
    (work / "pw").chmod(0o600)
    (work / "list").write_text("f\n")
    (work / "pin").write_text("1234\n")
    (work / "pin").chmod(0o600)
    (work / "f.sig").write_bytes(key.read_bytes())  # a key file that is named FILE.sig
    (work / "f.sig").chmod(0o600)
    (work / "lk").symlink_to("sign.key")
    base = ["sign", "--signing-cert", "sign.crt", "--signing-chain", "chain.pem",
            "--passphrase-file", "pw", "--pin-file", "pin"]
    cases = [
        (["--key", "file:sign.key", "f", "--manifest", "sign.key"], "the key file sign.key"),
        (["--key", "file:lk", "f", "--manifest", "sign.key"], "the key file lk"),
        (["--key", "file:sign.key", "f", "--manifest", "sign.crt"], "--signing-cert"),
        (["--key", "file:sign.key", "f", "--manifest", "chain.pem"], "--signing-chain"),
        (["--key", "file:sign.key", "f", "--manifest", "pw"], "--passphrase-file pw"),
        (["--key", "file:sign.key", "f", "--manifest", "pin"], "--pin-file pin"),
        (["--key", "file:sign.key", "--files-from", "list", "--manifest", "list"],
         "--files-from list"),
        (["--key", "file:f.sig", "f"], "the signature f.sig would replace the key file"),
    ]
    before = {p.name: p.read_bytes() for p in work.iterdir() if not p.is_symlink()}
    old = os.getcwd()
    os.chdir(work)
    try:
        for args, message in cases:
            result = CliRunner().invoke(cli, [*base, *args])
            assert result.exit_code == 3, (args, result.output)
            assert message in result.output and "which this run reads" in result.output, (
                args, result.output)
            assert {p.name: p.read_bytes() for p in work.iterdir()
                    if not p.is_symlink()} == before, args
        ok = CliRunner().invoke(cli, [*base, "--key", "file:sign.key", "f", "--manifest",
                                      "m.json"])
        assert ok.exit_code == 0, ok.output
    finally:
        os.chdir(old)


def test_no_output_goes_into_the_ca_home(tmp_path: Path) -> None:
    """`--manifest pki/index.json` replaced the CA's index (`ca list`: damaged), and
    signatures could be written among its files. The CA home takes no output."""
    from trustboot.ca.store import CertificateAuthority

    pki = tmp_path / "pki"
    pw = secrets.constant(PASSPHRASE)
    CertificateAuthority.init(pki, pw, key_type="ec-p256")[0].issue(
        "codesign", "home-signer", pw, pw, key_type="ec-p256")
    image = _files(tmp_path, 1)[0]
    index = (pki / "index.json").read_bytes()
    base = ["sign", str(image), "--pki", str(pki), "--key", "home-signer",
            "--passphrase-env", "TB_TEST_PASS"]
    for extra in (["--manifest", str(pki / "index.json")], ["--out", str(pki / "sigs")],
                  ["--manifest", str(tmp_path / "." / "pki" / "private" / "m.json")]):
        result = CliRunner().invoke(cli, [*base, *extra], env=ENV)
        assert result.exit_code == 3, (extra, result.output)
        assert "is inside the CA home" in result.output, (extra, result.output)
        assert (pki / "index.json").read_bytes() == index
        assert not (pki / "sigs").exists() and not (pki / "private" / "m.json").exists()
    assert not image.with_name(image.name + ".sig").exists()
    ok = CliRunner().invoke(cli, [*base, "--manifest", str(tmp_path / "m.json")], env=ENV)
    assert ok.exit_code == 0, ok.output
    assert CertificateAuthority.open(pki).check() == []


def test_sign_paths_is_the_cli_workflow(material: Material, tmp_path: Path) -> None:
    from trustboot.cms.workflow import sign_paths

    key, cert, chain = material.issue("lib-signer", rsa_key(),
                                      not_after=dt.datetime.now(dt.UTC) + 5 * DAY)
    seen: list[str] = []
    run = sign_paths(_files(tmp_path, 3), f"file:{key}", secrets=secrets.constant(PASSPHRASE),
                     cert=cert, chain=chain, out_dir=tmp_path / "sigs",
                     manifest=tmp_path / "m.json", on_warning=seen.append)
    assert len(run.results) == 3 and run.warnings == seen
    assert any("stop verifying" in w for w in seen)
    assert json.loads((tmp_path / "m.json").read_text()) == run.manifest()


def test_large_rsa_batches_are_signed_in_parallel_and_correctly(material: Material) -> None:
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
    from cryptography.hazmat.primitives.hashes import SHA256

    from trustboot.cms.sign import PARALLEL_SIGN_MIN, sign_many

    signer = _rsa_signer(material, "batch-signer")
    digests = _digests(PARALLEL_SIGN_MIN + 9)
    signatures = sign_many(signer, digests, "sha256")
    assert len(signatures) == len(digests)
    public = signer.certificate.public_key()
    for digest, sig in zip(digests, signatures, strict=True):  # in order, each one valid
        public.verify(sig, digest, padding.PKCS1v15(), Prehashed(SHA256()))  # type: ignore


def test_sign_help_does_not_import_the_signing_stack() -> None:
    import subprocess
    import sys

    from trustboot.cli import sign as cli_sign
    from trustboot.cms.certinfo import DEFAULT_IPXE

    assert cli_sign.DEFAULT_IPXE == str(DEFAULT_IPXE)
    code = ("import sys, trustboot.cli.sign; "
            "print(sorted(m for m in sys.modules if m.startswith(('cryptography', 'asn1crypto', "
            "'trustboot.cms', 'trustboot.ca', 'httpx', 'certifi', 'yaml'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]", out


def test_manifest_may_go_into_the_out_directory(material: Material, tmp_path: Path) -> None:
    """--manifest creates its missing directories as --out does (0755, whatever the umask),
    inside --out's or anywhere else."""
    import os
    import stat

    key, cert, chain = material.issue("manifest-in-out", ec_key())
    out = tmp_path / "sigs" / "v1"
    old = os.umask(0)
    try:
        elsewhere = CliRunner().invoke(cli, [*_sign_args(key, cert, chain),
                                             str(_files(tmp_path, 1)[0]), "--manifest",
                                             str(tmp_path / "m" / "n" / "m.json")], env=ENV)
    finally:
        os.umask(old)
    assert elsewhere.exit_code == 0, elsewhere.output
    for made in (tmp_path / "m", tmp_path / "m" / "n"):
        assert stat.S_IMODE(made.stat().st_mode) == 0o755
    assert json.loads((tmp_path / "m" / "n" / "m.json").read_text())["files"]
    for manifest in (out / "m.json", tmp_path / "sigs" / "m.json"):
        result = CliRunner().invoke(cli, [*_sign_args(key, cert, chain),
                                          str(_files(tmp_path, 1)[0]), "--out", str(out),
                                          "--manifest", str(manifest)], env=ENV)
        assert result.exit_code == 0, result.output
        assert json.loads(manifest.read_text())["files"]


@pytest.fixture
def no_other_threads() -> None:
    """sign_many forks its signers only in a process without other threads (forking those
    is unsafe), so a test of the forked path waits for threads an earlier test of the
    session left finishing (a test server's handler, a read-back watchdog) and names any
    that stay, instead of failing on a serial run it did not ask for."""
    deadline = time.monotonic() + 10
    while others := [t.name for t in threading.enumerate()
                     if t is not threading.current_thread()]:
        if time.monotonic() > deadline:
            pytest.fail(f"threads an earlier test left running: {others}")
        time.sleep(0.02)


@pytest.mark.usefixtures("no_other_threads")
def test_hash_job_in_processes_matches_hashlib_and_reports_errors(tmp_path: Path) -> None:
    import os

    from trustboot.cms.digest import PROCESS_MIN_BYTES, HashJob
    from trustboot.errors import TrustbootError

    files = []
    for i in range(3):
        p = tmp_path / f"big{i}"
        p.write_bytes(os.urandom(PROCESS_MIN_BYTES // 2 + i))
        files.append(p)
    job = HashJob(files, "sha384")
    assert job.processes >= 1  # forked: no progress display, enough data
    for path, hashed in zip(files, job.result(), strict=True):
        data = path.read_bytes()
        assert hashed.path == path and hashed.size == len(data)
        assert hashed.digests["sha384"] == hashlib.sha384(data).digest()
        assert hashed.digests["sha256"] == hashlib.sha256(data).digest()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(TrustbootError) as err:  # refused in the child, re-raised here
        HashJob([*files, fifo], "sha256").result()
    assert "not a regular file" in err.value.message
    HashJob(files, "sha256").cancel()  # killing the workers leaves nothing behind


def test_hash_job_of_many_small_files_runs_in_one_process(tmp_path: Path) -> None:
    import os

    from trustboot.cms.digest import PROCESS_MIN_FILES, HashJob
    from trustboot.errors import TrustbootError

    files = []
    for i in range(PROCESS_MIN_FILES):
        p = tmp_path / f"s{i}.ipxe"
        p.write_bytes(os.urandom(i))  # the empty file included
        files.append(p)
    job = HashJob(files, "sha512")
    assert job.processes == 1  # many files, little data: one process beside this one
    for path, hashed in zip(files, job.result(), strict=True):
        data = path.read_bytes()
        assert hashed.path == path and hashed.size == len(data)
        assert hashed.digests["sha512"] == hashlib.sha512(data).digest()
        assert hashed.digests["sha256"] == hashlib.sha256(data).digest()
    assert HashJob(files[:-1], "sha256").processes == 0  # fewer: a thread
    (tmp_path / "dir").mkdir()
    with pytest.raises(TrustbootError) as err:  # refused in the child, re-raised here
        HashJob([*files, tmp_path / "dir"], "sha256").result()
    assert "is a directory" in err.value.message


@pytest.mark.usefixtures("no_other_threads")
def test_batch_signatures_stream_to_the_caller_and_a_failure_stops_the_workers(
        material: Material) -> None:
    from trustboot.cms.sign import PARALLEL_SIGN_MIN, sign_many

    signer = _rsa_signer(material, "stream-signer")
    digests = _digests(PARALLEL_SIGN_MIN + 5)
    seen: dict[int, bytes] = {}
    signatures = sign_many(signer, digests, "sha256", on_signed=seen.__setitem__)
    assert [seen[i] for i in range(len(digests))] == signatures  # each once, all of them

    class Stop(Exception):
        pass

    def stop(index: int, _sig: bytes) -> None:
        raise Stop(index)

    before = child_pids()
    with pytest.raises(Stop):
        sign_many(signer, digests, "sha256", on_signed=stop)
    assert child_pids() == before  # every forked worker was stopped and reaped


def test_staged_writes_replace_nothing_unless_all_were_written(tmp_path: Path) -> None:
    from trustboot.cms.sign import StagedWrites, write_all
    from trustboot.errors import OperationalError

    old = tmp_path / "a.sig"
    old.write_bytes(b"old")
    with StagedWrites() as staged:  # left without commit: the temp files go away
        staged.add(old, b"new")
        staged.add(tmp_path / "b.sig", b"new")
    assert old.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.sig"]
    with pytest.raises(OperationalError) as err:  # one target cannot be written: none is
        write_all([(old, b"new"), (tmp_path / "missing" / "c.sig", b"new")])
    assert "missing" in err.value.message and "nothing was replaced" in (err.value.hint or "")
    assert old.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.sig"]
    write_all([(old, b"new"), (tmp_path / "b.sig", b"b")])
    assert old.read_bytes() == b"new" and (tmp_path / "b.sig").read_bytes() == b"b"
    assert old.stat().st_mode & 0o777 == 0o644


def test_serial_signer_overlaps_the_handling_and_stops_at_its_first_error(
        material: Material) -> None:
    """A signer that is not an in-memory key (a token) signs in this thread while another
    handles the previous signature; every signature arrives once, in order, and an error
    in the handling stops the signing at once."""
    from trustboot.cms.sign import sign_many

    inner = _rsa_signer(material, "serial-signer")
    calls: list[int] = []

    class Counting:  # the Signer protocol, not a KeySigner: the token code path
        certificate, chain, algorithm = inner.certificate, inner.chain, inner.algorithm

        def sign_digest(self, digest: bytes, hash_name: str) -> bytes:
            calls.append(1)
            return inner.sign_digest(digest, hash_name)

    digests = _digests(12)
    order: list[int] = []
    signatures = sign_many(Counting(), digests, "sha256",
                           on_signed=lambda i, _sig: order.append(i))
    assert order == list(range(12)) and len(signatures) == 12 and len(calls) == 12
    assert signatures == [inner.sign_digest(d, "sha256") for d in digests]

    def fail_at_three(index: int, _sig: bytes) -> None:
        if index == 3:
            raise ValueError("stop")

    calls.clear()
    with pytest.raises(ValueError, match="stop"):
        sign_many(Counting(), digests, "sha256", on_signed=fail_at_three)
    assert len(calls) <= 5  # signature 4 may be under way when 3 fails, not more


def test_a_damaged_rsa_key_never_yields_a_signature(material: Material) -> None:
    """Keys load without OpenSSL's consistency check (speed); every RSA signature is
    checked against the certificate instead, so a key whose private values are damaged
    (public half intact) makes no signature at all."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from trustboot.errors import VerificationError
    from trustboot.keys.signer import KeySigner

    good = rsa_key()
    key_path, cert, chain = material.issue("damaged-signer", good)
    signer, _ = open_signer(parse_ref(f"file:{key_path}"),
                            passphrases=secrets.constant(PASSPHRASE), cert=cert, chain=chain)
    n = good.private_numbers()
    bad = rsa.RSAPrivateNumbers(n.p, n.q, n.d ^ 2, n.dmp1 ^ 2, n.dmq1, n.iqmp,
                                n.public_numbers).private_key(
        unsafe_skip_rsa_key_validation=True)
    damaged = KeySigner(bad, signer.certificate, signer.chain)  # the public half matches
    digest = hashlib.sha256(b"x").digest()
    with pytest.raises(VerificationError) as err:
        damaged.sign_digest(digest, "sha256")
    assert err.value.rule == "self-check" and "damaged" in (err.value.hint or "")
    assert len(signer.sign_digest(digest, "sha256")) == good.key_size // 8


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_a_bad_signature_from_a_signer_that_does_not_check_its_own_is_never_written(
        material: Material, tmp_path: Path, kind: str) -> None:
    """Only a KeySigner with an RSA key verifies what it signs (checks_each_signature); any
    other signer's signatures, after the first file's, are verified one by one: a wrong
    one stops the run and no .sig is written."""
    from trustboot.errors import VerificationError

    inner = _signer(material, f"liar-{kind}", rsa_key() if kind == "rsa" else ec_key())
    assert inner.checks_each_signature == (kind == "rsa")

    class Liar:  # a Signer, as a token's is: not a KeySigner
        certificate, chain, algorithm = inner.certificate, inner.chain, inner.algorithm
        calls = 0

        def sign_digest(self, digest: bytes, hash_name: str) -> bytes:
            Liar.calls += 1
            other = hashlib.sha256(digest).digest() if Liar.calls == 4 else digest
            return inner.sign_digest(other, hash_name)  # file 3: a valid signature of other

    files = _files(tmp_path, 6)
    with pytest.raises(VerificationError) as err:
        sign_files(files, Liar(), now=dt.datetime.now(dt.UTC))
    assert err.value.rule == "self-check" and "file3.bin" in err.value.message
    assert not [p for p in tmp_path.iterdir() if not p.name.endswith(".bin")]


@pytest.mark.usefixtures("no_other_threads")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="forked signers need 2 cores")
def test_worker_step_runs_in_the_forked_signers_and_a_failed_share_is_signed_here(
        material: Material) -> None:
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
    from cryptography.hazmat.primitives.hashes import SHA256

    from trustboot.cms.sign import PARALLEL_SIGN_MIN, WorkerStep, sign_many

    signer = _rsa_signer(material, "step-signer")
    digests = _digests(PARALLEL_SIGN_MIN + 9)

    def run(index: int, _sig: bytes) -> bytes:
        if index == 5:
            raise RuntimeError("this worker stops here")
        time.sleep(0.005)  # the first child cannot take the whole batch before the next forks
        return os.getpid().to_bytes(4, "big")

    taken: dict[int, tuple[bytes, bytes]] = {}
    here: dict[int, bytes] = {}
    signatures = sign_many(signer, digests, "sha256", on_signed=here.__setitem__,
                           worker_step=WorkerStep(run, lambda i, s, x: taken.__setitem__(
                               i, (s, x))))
    assert not set(taken) & set(here) and set(taken) | set(here) == set(range(len(digests)))
    assert 5 in here  # the failed worker's index, and the rest of its share, signed here
    workers = {int.from_bytes(x, "big") for _, x in taken.values()}
    assert len(workers) >= 2 and os.getpid() not in workers  # run() ran in the children
    public = signer.certificate.public_key()
    for i, (digest, sig) in enumerate(zip(digests, signatures, strict=True)):
        assert sig == (taken[i][0] if i in taken else here[i])
        public.verify(sig, digest, padding.PKCS1v15(), Prehashed(SHA256()))  # type: ignore


@pytest.mark.usefixtures("no_other_threads")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="forked signers need 2 cores")
def test_forked_signers_share_the_work_as_it_is_done(material: Material) -> None:
    """A forked signer the scheduler runs less (here: one that sleeps after each file) does
    not hold a fixed share back: the others take the rest of the batch."""
    from trustboot.cms.sign import PARALLEL_SIGN_MIN, WorkerStep, sign_many

    signer = _rsa_signer(material, "shared-work")
    digests = _digests(PARALLEL_SIGN_MIN + 9)
    slow: list[bool] = []  # set in the child that signs digest 0: its own copy

    def run(index: int, _sig: bytes) -> bytes:
        if index == 0:
            slow.append(True)
        if slow:
            time.sleep(0.2)
        return os.getpid().to_bytes(4, "big")

    by_pid: dict[int, list[int]] = {}
    sign_many(signer, digests, "sha256", on_signed=lambda i, s: None,
              worker_step=WorkerStep(run, lambda i, s, x: by_pid.setdefault(
                  int.from_bytes(x, "big"), []).append(i)))
    assert sorted(i for done in by_pid.values() for i in done) == list(range(len(digests)))
    sleeper = next(pid for pid, done in by_pid.items() if 0 in done)
    # a fixed share would be len(digests) / workers (18 or more): it took one chunk or two
    assert len(by_pid[sleeper]) <= 4, {pid: len(done) for pid, done in by_pid.items()}


@pytest.mark.usefixtures("no_other_threads")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="forked signers need 2 cores")
def test_large_ecdsa_batches_are_signed_in_forked_signers_as_serially(
        material: Material) -> None:
    """An ECDSA batch is split over forked signers like an RSA one (the check, encoding
    and writing of each file cost more than its signature); RFC 6979 signatures come out
    byte for byte as one process signing them in turn makes them."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
    from cryptography.hazmat.primitives.hashes import SHA256

    from trustboot.cms.sign import PARALLEL_SIGN_MIN, WorkerStep, sign_many

    signer = _signer(material, "ec-batch-signer", ec_key())
    assert signer.algorithm == "ecdsa"
    digests = _digests(PARALLEL_SIGN_MIN + 9)
    taken: dict[int, int] = {}

    def run(_index: int, _sig: bytes) -> bytes:
        time.sleep(0.005)  # the first child cannot take the whole batch before the next forks
        return os.getpid().to_bytes(4, "big")

    signatures = sign_many(signer, digests, "sha256", on_signed=lambda i, s: None,
                           worker_step=WorkerStep(run, lambda i, s, x: taken.__setitem__(
                               i, int.from_bytes(x, "big"))))
    assert set(taken) == set(range(len(digests)))  # every one signed in a child
    assert len(set(taken.values())) >= 2 and os.getpid() not in taken.values()
    assert signatures == [signer.sign_digest(d, "sha256") for d in digests]
    public = signer.certificate.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    for digest, sig in zip(digests, signatures, strict=True):
        public.verify(sig, digest, ec.ECDSA(Prehashed(SHA256())))


@pytest.mark.usefixtures("no_other_threads")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="forked signers need 2 cores")
def test_forked_signers_write_the_files_and_leave_no_temp_behind(
        material: Material, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forked signers write the .sig temp files themselves; a worker that dies after
    writing one (before telling) has its share signed here, and its temp file goes; a
    failure of the whole run replaces nothing and leaves no temp file either."""
    import trustboot.cms.sign as cms_sign
    from trustboot.cms.sign import PARALLEL_SIGN_MIN
    from trustboot.cms.verify import TrustAnchor, fingerprint, verify_signature
    from trustboot.errors import OperationalError

    signer = _rsa_signer(material, "fork-writer")
    files = _files(tmp_path, PARALLEL_SIGN_MIN + 6)
    from trustboot.fsutil import write_temp as real_write  # what sign.py calls

    parent = os.getpid()

    def dies_after_writing_7(target: Path, data: bytes, **kw: object) -> Path:
        written = real_write(target, data, **kw)  # type: ignore[arg-type]
        if os.getpid() != parent and str(kw.get("name", "")).endswith(".7.tmp"):
            raise OSError("worker gone")
        return written

    monkeypatch.setattr(cms_sign, "write_temp", dies_after_writing_7)
    now = dt.datetime.now(dt.UTC)
    results = sign_files(files, signer, now=now)
    assert len(results) == len(files)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    root = signer.chain[-1].public_bytes(serialization.Encoding.DER)
    for path in files:
        sig = path.with_name(path.name + ".sig").read_bytes()
        digests = {"sha256": hashlib.sha256(path.read_bytes()).digest()}
        check = verify_signature(sig, digests, trust=[TrustAnchor(fingerprint(root), root)],
                                 now=now)
        assert check.failure is None, (path, check.failure)
        assert path.with_name(path.name + ".sig").stat().st_mode & 0o777 == 0o644

    for path in files:  # the old signatures must survive a failed run
        path.with_name(path.name + ".sig").write_bytes(b"old")

    def here_fails(target: Path, data: bytes, **kw: object) -> Path:
        if os.getpid() == parent:
            raise OSError(28, "No space left on device")
        written = real_write(target, data, **kw)  # type: ignore[arg-type]
        if str(kw.get("name", "")).endswith(".3.tmp"):
            raise OSError("worker gone")  # after writing: its share comes back here
        return written

    monkeypatch.setattr(cms_sign, "write_temp", here_fails)
    with pytest.raises(OperationalError) as err:
        sign_files(files, signer, now=now)
    assert "No space left" in err.value.message
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert {path.with_name(path.name + ".sig").read_bytes() for path in files} == {b"old"}


def test_a_killed_runs_old_temp_files_go_and_nothing_else(
        material: Material, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Temp files a killed `trustboot sign` left beside its targets go once an hour old;
    a younger one (a concurrent run's) and files that are not ours stay."""
    signer = _rsa_signer(material, "sweeper")
    files = _files(tmp_path, 2)
    old = [tmp_path / ".file0.bin.sig.0123456789ab.0.tmp", tmp_path / ".file1.bin.sig.x.tmp"]
    young = tmp_path / ".file0.bin.sig.ba9876543210.0.tmp"
    theirs = [tmp_path / ".notes.tmp", tmp_path / ".file9.bin.sig.0123.tmp"]
    for path in [*old, young, *theirs]:
        path.write_bytes(b"partial")
    sweep_clock_between(monkeypatch, [*old, *theirs], [young])
    sign_files(files, signer, now=dt.datetime.now(dt.UTC))
    assert not any(p.exists() for p in old)
    assert young.exists() and all(p.exists() for p in theirs)


def test_names_near_the_filesystem_limit_sign_and_their_temps_are_swept(
        material: Material, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A FILE of 238-251 bytes has a legal FILE.sig, but its temp name
    (.FILE.sig.TAG.N.tmp) was too long: signing failed, and with 64 files or more
    (forked signers) from 232 bytes on. Temp names now stand for long names by a cut
    and a digest, and the sweep of a killed run's temps knows them."""
    from trustboot.fsutil import temp_stem

    signer = _rsa_signer(material, "long-names")
    files = []
    for i in range(70):  # enough for the forked signers
        path = tmp_path / (f"{i:03d}" + "é" * 60 + "n" * (248 - 3 - 120))  # 248 bytes
        assert len(path.name.encode()) == 248
        path.write_bytes(b"image %d" % i)
        files.append(path)
    killed = tmp_path / f".{temp_stem(files[0].name + '.sig')}.0123456789ab.0.tmp"
    killed.write_bytes(b"partial")
    sweep_clock_between(monkeypatch, [killed])
    signed = sign_files(files, signer, now=dt.datetime.now(dt.UTC))
    monkeypatch.undo()
    assert [s.signature_path for s in signed] == [f.with_name(f.name + ".sig") for f in files]
    assert not killed.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f.name for f in files] + [f.name + ".sig" for f in files])
    one = CliRunner().invoke(cli, [*_sign_args(*material.issue("long-cli", ec_key())),
                                   str(files[1]), "--manifest",
                                   str(tmp_path / ("m" * 250))], env=ENV)
    assert one.exit_code == 0, one.output
    # the stems: short names as they are; long ones cut whole characters, digest added
    assert temp_stem("vmlinuz.sig") == "vmlinuz.sig"
    stems = {temp_stem(f.name + ".sig") for f in files}
    assert len(stems) == len(files)
    assert all(len(s.encode()) <= 200 and s.startswith(s[:3]) for s in stems)


def test_a_path_too_long_for_the_system_is_bad_input(material: Material,
                                                     tmp_path: Path) -> None:
    """A name over 255 bytes met a pathlib check first and ended as "internal error"
    (exit 70) in sign, verify and the ca commands: it is bad input (exit 3)."""
    long = "x" * 300
    key, cert, chain = material.issue("too-long", ec_key())
    image = _files(tmp_path, 1)[0]
    for args in ([*_sign_args(key, cert, chain), long],
                 [*_sign_args(key, cert, chain), str(image), "--out", str(tmp_path / long)],
                 ["verify", str(image), "--pki", str(tmp_path / long)],
                 ["ca", "list", "--pki", str(tmp_path / long)]):
        result = CliRunner().invoke(cli, args, env=ENV)
        assert result.exit_code == 3, (args, result.output)
        assert "is longer than the filesystem allows" in result.output, result.output
        assert "internal error" not in result.output


def _stale(path: Path, data: bytes = b"partial") -> Path:
    path.write_bytes(data)
    os.utime(path, (time.time() - 7200,) * 2, follow_symlinks=False)
    return path


def test_the_sweep_never_follows_a_link_nor_removes_another_users_file(
        material: Material, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a shared output directory, a name like one of our temps may be a link or
    another user's file: neither goes (nor what the link points at)."""
    signer = _rsa_signer(material, "sweep-safety")
    files = _files(tmp_path, 2)
    elsewhere = _stale(tmp_path / "elsewhere.tmp")
    link = tmp_path / ".file0.bin.sig.abcdefgh.tmp"
    link.symlink_to(elsewhere)
    os.utime(link, (time.time() - 7200,) * 2, follow_symlinks=False)
    untagged = _stale(tmp_path / ".file0.bin.sig.tmp")  # not a name write_temp makes
    theirs = _stale(tmp_path / ".file1.bin.sig.0123456789ab.0.tmp")
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)
    else:
        theirs.unlink()
    sweep_clock_between(monkeypatch, [elsewhere, link, untagged])
    sign_files(files, signer, now=dt.datetime.now(dt.UTC))
    assert link.is_symlink() and elsewhere.read_bytes() == b"partial"
    assert untagged.exists()
    if os.geteuid() == 0:
        assert theirs.exists(), "another user's file was removed"


def test_a_directory_is_swept_once_per_run(material: Material, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Several signing steps of one run (a release signs kernels, then scripts) look for
    stale temps in a directory once: what a killed run left is an hour old already."""
    from trustboot.run import run_scope

    signer = _rsa_signer(material, "sweep-once")
    files = _files(tmp_path, 2)
    with run_scope():
        sign_files(files[:1], signer, now=dt.datetime.now(dt.UTC))
        left = _stale(tmp_path / ".file1.bin.sig.0123456789ab.0.tmp")
        sweep_clock_between(monkeypatch, [left])  # stale from now on
        sign_files(files[1:], signer, now=dt.datetime.now(dt.UTC))
        assert left.exists()  # the directory was swept earlier in this run
    sign_files(files[1:], signer, now=dt.datetime.now(dt.UTC))  # a new run
    assert not left.exists()


@pytest.mark.usefixtures("no_other_threads")
def test_a_temp_name_planted_by_another_user_does_not_crash_the_run(
        material: Material, tmp_path: Path) -> None:
    """In a shared output directory (a sticky /tmp) another user sees the first temp file
    a forked signer writes, so the run's temp names: they plant one of a later file first.
    That signer's share is signed here instead, and the run must not then fail (exit 70,
    after every .sig was already replaced) trying to remove a temp that is not its own
    (in a sticky directory: EPERM; here, as root: a directory in its place)."""
    import re
    import subprocess
    import threading

    from trustboot.cms.sign import PARALLEL_SIGN_MIN

    if (os.cpu_count() or 1) < 2:
        pytest.skip("forked signing needs two cores")
    key, cert, chain = material.issue("shared-dir", rsa_key())
    files = _files(tmp_path, max(PARALLEL_SIGN_MIN, 400))
    last = len(files) - 1
    planted: list[Path] = []
    stop = threading.Event()

    def plant() -> None:
        first = re.compile(r"\.file\d+\.bin\.sig\.([0-9a-f]{12})\.\d+\.tmp")
        while not stop.is_set():
            for name in os.listdir(tmp_path):
                m = first.fullmatch(name)
                if m:
                    target = tmp_path / f".file{last}.bin.sig.{m.group(1)}.{last}.tmp"
                    with contextlib.suppress(FileExistsError):
                        target.mkdir()
                        planted.append(target)
                    return
            time.sleep(0.0005)

    watcher = threading.Thread(target=plant, daemon=True)
    watcher.start()
    proc = subprocess.run(
        [sys.executable, "-m", "trustboot", *_sign_args(key, cert, chain), "--json",
         *map(str, files)], capture_output=True, text=True, timeout=300,
        env={**os.environ, **ENV})
    stop.set()
    watcher.join()
    if not planted:
        pytest.skip("the run finished before a temp name could be planted")
    assert proc.returncode == 0, proc.stderr
    assert planted[0].is_dir()  # not ours: left alone
    assert all(p.with_name(p.name + ".sig").stat().st_size > 0 for p in files)


def test_signing_cert_names_are_those_of_resign_and_old_ones_still_work(
        material: Material, tmp_path: Path) -> None:
    """sign and resign both name the signing certificate --signing-cert/--signing-chain;
    sign's first names, --cert/--chain, keep working but are not shown."""
    key, cert, chain = material.issue("names-signer", ec_key())
    files = _files(tmp_path, 2)
    new = ["sign", "--key", f"file:{key}", "--signing-cert", str(cert), "--signing-chain",
           str(chain), "--passphrase-env", "TB_TEST_PASS"]
    for args, image in ((new, files[0]), (_sign_args(key, cert, chain), files[1])):
        result = CliRunner().invoke(cli, [*args, str(image)], env=ENV)
        assert result.exit_code == 0, result.output
        assert image.with_name(image.name + ".sig").is_file()
    for command in ("sign", "resign"):
        shown = CliRunner().invoke(cli, [command, "--help"]).stdout
        assert "--signing-cert FILE" in shown and "--signing-chain FILE" in shown, command
    sign_help = CliRunner().invoke(cli, ["sign", "--help"]).stdout
    assert "--cert" not in sign_help.replace("--signing-cert", "")
    assert "--chain" not in sign_help.replace("--signing-chain", "")


@pytest.mark.parametrize("option", ["--out", "--manifest"])
@pytest.mark.parametrize("how", ["another-owner", "world-writable"])
def test_out_and_manifest_directories_must_be_ours(material: Material, tmp_path: Path,
                                                   option: str, how: str) -> None:
    """As every other command's --out (fsutil.make_output_dir): a directory another user
    owns or can write is refused (exit 3) before anything is signed or written, since
    they could swap the signatures or the manifest before they are used."""
    key, cert, chain = material.issue(f"own-{option[2:]}-{how}", ec_key())
    files = _files(tmp_path, 1)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    if how == "another-owner":
        if os.geteuid() != 0:
            pytest.skip("giving a directory to another uid needs root (CI runs as root)")
        os.chown(shared, 65534, 65534)
        needle = "is owned by uid 65534"
    else:
        shared.chmod(0o777)
        needle = "is writable by other users (mode 0777)"
    extra = ["--out", str(shared)] if option == "--out" else \
        ["--manifest", str(shared / "m.json")]
    for secret in (_sign_args(key, cert, chain), _sign_args(key, cert, chain)[:-2]):
        result = CliRunner().invoke(cli, [*secret, *map(str, files), *extra], env=ENV)
        assert result.exit_code == 3, result.output
        assert needle in result.output and "hint:" in result.output, result.output
        assert not list(tmp_path.rglob("*.sig")) and not list(shared.iterdir())


def test_hostile_file_names_reach_the_terminal_escaped(material: Material,
                                                       tmp_path: Path) -> None:
    """`trustboot sign dir/*` over a directory someone else wrote: a name holding escape
    sequences, a bidi override or a newline is shown escaped by sign and verify; --json
    keeps the name exact (JSON escapes it)."""
    key, cert, chain = material.issue("name-signer", rsa_key())
    name = "k\x1b]0;pwned\x07\u202egnp.exe\nsigned fake"
    path = tmp_path / name
    path.write_bytes(b"kernel")
    res = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), str(path)], env=ENV)
    assert res.exit_code == 0, res.output
    verify = CliRunner().invoke(cli, ["verify", str(path), "--trust",
                                      str(material.directory / "root.pem")])
    assert verify.exit_code == 0, verify.output
    for out in (res.stdout, verify.stdout):
        assert "\x1b" not in out and "\u202e" not in out and "\nsigned fake" not in out, out
        assert "\\x1b]0;pwned" in out
    as_json = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), str(path), "--json"],
                                 env=ENV)
    assert json.loads(as_json.stdout)["files"][0]["path"] == str(path)


@pytest.mark.parametrize("which", ["--signing-cert", "--signing-chain"])
@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_certificate_file_that_is_not_a_file_is_refused_unread(
        material: Material, tmp_path: Path, which: str, kind: str) -> None:
    """A FIFO named as the certificate or chain hung `sign` forever (no writer ever
    comes), /dev/zero read until memory ran out (exit 70): both are exit 3 naming the
    option's file, before the key is unlocked, and no .sig is written."""
    key, cert, chain = material.issue(f"fifo-{which[2:]}-{kind}", ec_key())
    image = _files(tmp_path, 1)[0]
    if kind == "fifo":
        bad = tmp_path / "cert.fifo"
        os.mkfifo(bad)
    else:
        bad = Path("/dev/zero")
    args = {"--signing-cert": str(cert), "--signing-chain": str(chain), which: str(bad)}
    proc = subprocess.run(
        [sys.executable, "-m", "trustboot", "sign", "--key", f"file:{key}",
         *(x for pair in args.items() for x in pair), "--passphrase-env", "TB_TEST_PASS",
         str(image)], capture_output=True, text=True, timeout=60,
        env={**os.environ, **ENV},
        # 2 GiB of address space: a regression reads /dev/zero into MemoryError, not OOM
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)))
    assert proc.returncode == 3, proc.stderr
    assert f"{bad} is not a regular file" in proc.stderr
    assert not image.with_name(image.name + ".sig").exists()


@pytest.mark.parametrize("option", ["--out", "--manifest"])
def test_out_and_manifest_below_a_directory_others_can_write_are_refused(
        material: Material, tmp_path: Path, option: str) -> None:
    """Whoever can write a directory above --out (or the manifest's directory) can move
    it away with the signatures and put their own in its place: refused (exit 3) before
    anything is signed, as every --out (fsutil.make_output_dir)."""
    key, cert, chain = material.issue(f"parents-{option[2:]}", ec_key())
    files = _files(tmp_path, 1)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    target = shared / "dist"
    extra = ["--out", str(target)] if option == "--out" else \
        ["--manifest", str(target / "m.json")]
    result = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), *map(str, files),
                                      *extra], env=ENV)
    assert result.exit_code == 3, result.output
    assert f"{shared} above it is writable by other users" in result.output, result.output
    assert not list(tmp_path.rglob("*.sig")) and not list(shared.iterdir())


@pytest.mark.parametrize(("env", "typed"), [
    # the pipeline's variable names a file that does not exist: it must not even be read
    ({"TRUSTBOOT_SIGN_PASSPHRASE_FILE": "/nonexistent/key.pass"},
     ["--passphrase-env", "TB_TEST_PASS"]),
    ({"TRUSTBOOT_SIGN_PASSPHRASE_ENV": "TB_NO_SUCH_VARIABLE"}, ["--passphrase-file", "{pw}"]),
])
def test_a_typed_secret_option_wins_over_the_other_ones_variable(
        material: Material, tmp_path: Path, env: dict[str, str], typed: list[str]) -> None:
    """TRUSTBOOT_SIGN_PASSPHRASE_FILE/_ENV are a pipeline's defaults: a run that names its
    passphrase on the command line the other way uses that, as click does for one option."""
    key, cert, chain = material.issue(f"typed-wins{typed[0]}", rsa_key())
    pw = tmp_path / "key.pass"
    pw.write_bytes(PASSPHRASE + b"\n")
    pw.chmod(0o600)
    image = _files(tmp_path, 1)[0]
    args = ["sign", "--key", f"file:{key}", "--signing-cert", str(cert), "--signing-chain",
            str(chain), *(a.format(pw=pw) for a in typed), str(image)]
    result = CliRunner().invoke(cli, args, env={**ENV, **env})
    assert result.exit_code == 0, result.output
    assert image.with_name(image.name + ".sig").is_file()


@pytest.mark.parametrize(("env", "typed", "named"), [
    ({"TRUSTBOOT_SIGN_PASSPHRASE_FILE": "k.pass", "TRUSTBOOT_SIGN_PASSPHRASE_ENV": "TB_PW"},
     [], ["TRUSTBOOT_SIGN_PASSPHRASE_FILE", "TRUSTBOOT_SIGN_PASSPHRASE_ENV", "unset"]),
    ({"TRUSTBOOT_PIN_FILE": "pin.txt", "TRUSTBOOT_PIN_ENV": "TB_PIN"},
     [], ["TRUSTBOOT_PIN_FILE", "TRUSTBOOT_PIN_ENV", "unset"]),
    ({}, ["--passphrase-file", "k.pass", "--passphrase-env", "TB_PW"],
     ["--passphrase-file and --passphrase-env", "command line"]),
    ({}, ["--pin-file", "pin.txt", "--pin-env", "TB_PIN"],
     ["--pin-file and --pin-env", "command line"]),
])
def test_two_secret_sources_from_one_place_name_where_each_came_from(
        tmp_path: Path, env: dict[str, str], typed: list[str], named: list[str]) -> None:
    image = _files(tmp_path, 1)[0]
    result = CliRunner().invoke(cli, ["sign", str(image), "--key", "file:k.key", *typed,
                                      "--json"], env=env)
    assert result.exit_code == 3, result.output
    doc = json.loads(result.stderr)
    assert doc["hint"], doc
    for word in named:
        assert word in doc["message"] + doc["hint"], doc


def test_a_typed_pin_option_wins_over_the_other_ones_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rule for the token PIN: no conflict, the run goes on to the token (and
    stops there: no module here)."""
    monkeypatch.delenv("TRUSTBOOT_PKCS11_MODULE", raising=False)
    image = _files(tmp_path, 1)[0]
    result = CliRunner().invoke(cli, ["sign", str(image), "--key", "pkcs11:token=t;object=o",
                                      "--pin-env", "TB_TEST_PASS"],
                                env={**ENV, "TRUSTBOOT_PIN_FILE": "/nonexistent/pin"})
    assert result.exit_code == 3, result.output
    assert "no PKCS#11 module" in result.output and "give only one" not in result.output


def test_a_file_key_without_its_certificate_names_the_options_to_pass(
        material: Material, tmp_path: Path) -> None:
    """The error names --signing-cert/--signing-chain (resign has no --chain, and its
    --cert is a CERT= certificate), and doing what the hint says signs."""
    key, cert, chain = material.issue("hint-signer", rsa_key())
    image = _files(tmp_path, 1)[0]
    base = ["sign", "--key", f"file:{key}", "--passphrase-env", "TB_TEST_PASS", str(image)]
    result = CliRunner().invoke(cli, [*base, "--json"], env=ENV)
    assert result.exit_code == 3, result.output
    doc = json.loads(result.stderr)
    assert "needs --signing-cert" in doc["message"]
    assert "--signing-cert FILE and --signing-chain FILE" in doc["hint"]
    result = CliRunner().invoke(cli, [*base, "--signing-cert", str(cert), "--signing-chain",
                                      str(chain)], env=ENV)
    assert result.exit_code == 0, result.output


def test_an_input_that_leads_to_another_inputs_signature_is_refused(
        material: Material, tmp_path: Path) -> None:
    """`lnk -> a.sig`, then `sign a lnk`: lnk's entry is not a.sig's, so the check by
    directory entry passed; lnk was hashed (the old a.sig), a.sig replaced, and lnk.sig
    matched no file, exit 0. Compared by the file each input leads to as well: exit 3
    naming both, nothing written. The same for a link to the --manifest."""
    key, cert, chain = material.issue("leads-to-signer", ec_key())
    a = tmp_path / "a"
    a.write_bytes(b"kernel v2")
    (tmp_path / "a.sig").write_bytes(b"old signature")
    (tmp_path / "lnk").symlink_to("a.sig")
    (tmp_path / "m.json").write_bytes(b"{}")
    (tmp_path / "mlink").symlink_to("m.json")
    cases = [
        ([str(a), str(tmp_path / "lnk")],
         f"{tmp_path / 'lnk'} is one of the files to sign and leads to {tmp_path / 'a.sig'}"),
        ([str(tmp_path / "lnk"), str(a)],  # in either order
         f"{tmp_path / 'lnk'} is one of the files to sign and leads to {tmp_path / 'a.sig'}"),
        ([str(tmp_path / "mlink"), "--manifest", str(tmp_path / "m.json")],
         f"leads to --manifest {tmp_path / 'm.json'}"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), *args], env=ENV)
        assert result.exit_code == 3, (args, result.output)
        assert message in result.output and "hint:" in result.output, result.output
        assert (tmp_path / "a.sig").read_bytes() == b"old signature"
        assert (tmp_path / "m.json").read_bytes() == b"{}"
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "a", "a.sig", "lnk", "m.json", "mlink"]
    # ... and through a chain of links: `chain -> a.sig -> old`, where the rename
    # replaces the link a.sig and chain then leads to the new signature
    (tmp_path / "a.sig").unlink()
    (tmp_path / "old").write_bytes(b"old signature")
    (tmp_path / "a.sig").symlink_to("old")
    (tmp_path / "hop").symlink_to(tmp_path / "lnk")  # absolute, then relative hops
    for args in ([str(a), str(tmp_path / "lnk")], [str(tmp_path / "hop"), str(a)]):
        result = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), *args], env=ENV)
        assert result.exit_code == 3, (args, result.output)
        assert f"leads to {tmp_path / 'a.sig'}" in result.output, result.output
        assert (tmp_path / "a.sig").is_symlink() and os.readlink(tmp_path / "a.sig") == "old"
        assert not list(tmp_path.glob("*.sig.*")) and not (tmp_path / "hop.sig").exists()
    for name in ("hop", "a.sig", "old"):
        (tmp_path / name).unlink()
    # a link to an input itself still signs (its .sig goes beside the link)
    (tmp_path / "alias").symlink_to("a")
    result = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), str(tmp_path / "alias")],
                                env=ENV)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "alias.sig").is_file()


def test_a_target_that_cannot_be_replaced_fails_the_run_before_any_rename(
        material: Material, tmp_path: Path) -> None:
    """A directory where b.sig should go: the renames went in order, a.sig was already
    the new release's when b.sig failed, and the run exited 1 with the two .sig files of
    different releases. Now refused before any rename: exit 1 naming b.sig, a.sig as it
    was, no temp file left."""
    key, cert, chain = material.issue("unreplaceable", ec_key())
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    a, b = tmp_path / "in" / "a", tmp_path / "in" / "b"
    a.write_bytes(b"kernel v2")
    b.write_bytes(b"initrd v2")
    (out / "a.sig").write_bytes(b"release 1")
    (out / "b.sig").mkdir()
    result = CliRunner().invoke(cli, [*_sign_args(key, cert, chain), "--out", str(out),
                                      str(a), str(b)], env=ENV)
    assert result.exit_code == 1, result.output
    assert (out / "a.sig").read_bytes() == b"release 1"
    assert f"cannot replace {out / 'b.sig'}: it is a directory" in result.output
    assert "nothing was replaced" in result.output, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a.sig", "b.sig"]


def test_a_rename_that_fails_part_way_puts_back_those_already_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A target that turns into a directory after the check, while the others are being
    renamed: the ones already replaced get their old contents back (from hard links made
    just before each rename), one that was new goes, and no temp or backup is left."""
    from trustboot.cms.sign import write_all
    from trustboot.errors import OperationalError
    from trustboot.fsutil import remove_stale_temps

    for name in ("a.sig", "b.sig", "c.sig"):
        (tmp_path / name).write_bytes(b"old " + name.encode())
    real = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        if Path(dst).name == "c.sig":  # changed since the check: a rename fails
            os.unlink(dst, dir_fd=dst_dir_fd)
            os.mkdir(dst, dir_fd=dst_dir_fd)
        real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OperationalError) as err:
        write_all([(tmp_path / n, b"new") for n in ("a.sig", "b.sig", "d.sig", "c.sig")])
    monkeypatch.undo()
    assert (tmp_path / "a.sig").read_bytes() == b"old a.sig"
    assert (tmp_path / "b.sig").read_bytes() == b"old b.sig"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sig", "b.sig", "c.sig"]
    assert f"cannot write {tmp_path / 'c.sig'}" in err.value.message
    assert "nothing was replaced" in (err.value.hint or "")
    # a run killed between a backup and its removal leaves a temp the sweep knows
    left = tmp_path / ".a.sig.0123456789ab.0.old.tmp"
    os.link(tmp_path / "a.sig", left)
    sweep_clock_between(monkeypatch, [left])
    assert remove_stale_temps(tmp_path, targets={"a.sig"}) == [left]
    assert (tmp_path / "a.sig").read_bytes() == b"old a.sig"
