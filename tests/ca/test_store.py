"""CA operations, bad input, key protection, concurrency and crash safety."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509

from trustboot.ca import profiles
from trustboot.ca.rotation import rotate_issuing
from trustboot.ca.store import CertificateAuthority
from trustboot.cli.main import cli
from trustboot.errors import ConfigError, VerificationError
from trustboot.keys import keyfile
from trustboot.secrets import constant

from .conftest import CA_PASS, KEY_PASS, Run, init_ca, issue, run_proc, spki, trustboot_cmd


def test_key_files_are_private_and_encrypted(pki: Path) -> None:
    private = pki / "private"
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    keys = sorted(private.glob("*.key"))
    assert {k.name for k in keys} >= {"ca.key", "issuing-ca.key", "signer.key"}
    for k in keys:
        assert stat.S_IMODE(k.stat().st_mode) == 0o600
        data = k.read_bytes()
        assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        # Without a passphrase openssl cannot read it; with it, it can (scrypt PBES2).
        no_pass = subprocess.run(["openssl", "pkey", "-in", str(k), "-passin", "pass:",
                                  "-noout"], capture_output=True)
        assert no_pass.returncode != 0
    asn1 = subprocess.run(["openssl", "asn1parse", "-in", str(private / "signer.key")],
                          capture_output=True, text=True).stdout
    assert ":scrypt" in asn1 and "aes-256-cbc" in asn1
    ok = subprocess.run(["openssl", "pkey", "-in", str(private / "signer.key"), "-passin",
                         f"pass:{KEY_PASS}", "-noout"], capture_output=True)
    assert ok.returncode == 0


def test_loose_key_permissions_refused_with_fix(pki: Path, run, secrets_dir: Path) -> None:  # type: ignore[no-untyped-def]
    key = pki / "private" / "issuing-ca.key"
    key.chmod(0o644)
    r = issue(run, pki, secrets_dir, "codesign", "another")
    assert r.exit_code == 3
    assert f"chmod 600 {key}" in r.output
    key.chmod(0o600)
    (pki / "private").chmod(0o755)
    with pytest.raises(ConfigError, match="accessible to other users") as exc:
        keyfile.write_key(pki / "private" / "x.key",
                          profiles.parse_key_type("ec-p256", for_ca=False).generate(),
                          b"passphrase!")
    assert exc.value.hint == f"chmod 700 {pki / 'private'}"
    assert not (pki / "private" / "x.key").exists()


def test_unencrypted_key_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    k = profiles.parse_key_type("ec-p256", for_ca=False).generate()
    p = tmp_path / "plain.key"
    p.write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    p.chmod(0o600)
    with pytest.raises(ConfigError, match="not encrypted"):
        keyfile.load_key(p, constant(b"whatever!"), "test key")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("codesign", "../../etc/passwd"), "invalid certificate name"),
        (("codesign", "root-ca"), "reserved"),
        (("codesign", "signer"), "already exists"),
        (("server", "bad_host!"), "invalid DNS name or IP address"),
        (("server", "exa mple.net"), "invalid DNS name or IP address"),
        (("server", "*.net"), "invalid DNS name or IP address"),
        (("server", "a.*.example.net"), "invalid DNS name or IP address"),
        (("server", "999.1.1.1"), "invalid DNS name or IP address"),
        (("server", "lead-.example.net"), "invalid DNS name or IP address"),
        # a scope id is no part of a certificate's address: refused, whatever its text
        (("server", "web.example.net", "fe80::1%eth0"), "has a scope id"),
        (("server", "web.example.net", "fe80::1%\x1b[2J\nx"), "has a scope id"),
        (("codesign", "x1", "--days", "0"), "out of range"),
        (("codesign", "x1", "--days", "14601"), "out of range"),  # 40 years and a day
    ],
)
def test_bad_issue_input(pki: Path, run, secrets_dir: Path, args: tuple[str, ...],  # type: ignore[no-untyped-def]
                         message: str) -> None:
    before = (pki / "index.json").read_bytes()
    r = issue(run, pki, secrets_dir, *args)
    assert r.exit_code == 3, r.output
    assert message in r.output
    assert "hint:" in r.output or "out of range" in r.output
    assert (pki / "index.json").read_bytes() == before  # nothing half-written


def test_pin_options_typed_win_over_the_other_ones_variable(
        pki: Path, secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ca issue --pkcs11-key shares sign's --pin-file/--pin-env and their variables: the
    one typed wins (the run goes on to the token: no module here); both variables set is
    an error that names them and the fix."""
    monkeypatch.delenv("TRUSTBOOT_PKCS11_MODULE", raising=False)
    monkeypatch.setenv("TRUSTBOOT_PIN_FILE", str(secrets_dir / "no-such-pin"))
    base = ["ca", "issue", "codesign", "hsm-signer", "--pki", str(pki), "--pkcs11-key",
            "pkcs11:token=t;object=o", "--passphrase-file", str(secrets_dir / "ca.pass")]
    r = CliRunner().invoke(cli, [*base, "--pin-env", "TB_PIN"])
    assert r.exit_code == 3, r.output
    assert "no PKCS#11 module" in r.output and "give only one" not in r.output
    monkeypatch.setenv("TRUSTBOOT_PIN_ENV", "TB_PIN")
    r = CliRunner().invoke(cli, [*base, "--json"])
    assert r.exit_code == 3, r.output
    doc = json.loads(r.stderr)
    assert "TRUSTBOOT_PIN_FILE and TRUSTBOOT_PIN_ENV" in doc["message"]
    assert "unset" in doc["hint"]


@pytest.mark.parametrize("days", ["0", "-1", "14601"])
@pytest.mark.parametrize("root", [[], ["--root"]])
def test_crl_days_out_of_range_is_refused_not_defaulted(
        pki: Path, run: Run, secrets_dir: Path, days: str, root: list[str]) -> None:
    """`ca crl --days 0` once meant the default (30, or 365 with --root) without a word:
    it is refused as `ca issue --days 0` is, and nothing is written."""
    before = {p.name: p.read_bytes() for p in pki.iterdir() if p.is_file()}
    r = run("ca", "crl", *root, "--days", days, "--pki", str(pki), "--passphrase-file",
            str(secrets_dir / "ca.pass"))
    assert r.exit_code == 3, r.output
    assert "out of range" in r.output and "between 1 and 14600" in r.output
    assert {p.name: p.read_bytes() for p in pki.iterdir() if p.is_file()} == before
    r = run("ca", "crl", *root, "--days", "1", "--pki", str(pki), "--passphrase-file",
            str(secrets_dir / "ca.pass"), "--json")
    assert r.exit_code == 0, r.output
    crl = x509.load_pem_x509_crl(Path(json.loads(r.output)["crl"]).read_bytes())
    assert crl.next_update_utc is not None and crl.last_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc <= dt.timedelta(days=1, hours=1)


def test_a_server_certificate_without_a_name_to_serve_is_refused(pki: Path) -> None:
    # the library call (the CLI makes the name a SAN): a TLS server certificate with no
    # DNS name or IP address matches no host iPXE connects to
    before = (pki / "index.json").read_bytes()
    with pytest.raises(ConfigError, match="needs at least one DNS name or IP address"):
        CertificateAuthority.open(pki).issue("server", "web", constant(CA_PASS.encode()),
                                             constant(KEY_PASS.encode()), sans=[])
    assert (pki / "index.json").read_bytes() == before


def test_unknown_profile_and_weak_key(pki: Path, run, secrets_dir: Path) -> None:  # type: ignore[no-untyped-def]
    r = issue(run, pki, secrets_dir, "webserver", "x")
    assert r.exit_code == 2 and "No such command 'webserver'" in r.output
    r = issue(run, pki, secrets_dir, "codesign", "weak", "--key-type", "rsa-1024")
    assert r.exit_code == 2 and "rsa-3072" in r.output
    with pytest.raises(ConfigError, match="too weak"):
        profiles.parse_key_type("rsa-2048", for_ca=True)
    with pytest.raises(ConfigError, match="too weak"):
        profiles.parse_key_type("rsa-1024", for_ca=False)
    ca = CertificateAuthority.open(pki)
    with pytest.raises(ConfigError, match="unknown profile"):
        ca.issue("timestamping", "x", constant(CA_PASS.encode()), constant(b"12345678"))


def test_weak_key_in_csr_refused(pki: Path) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "hsm")]))
           .sign(weak, hashes.SHA256()))
    ca = CertificateAuthority.open(pki)
    with pytest.raises(ConfigError, match="too weak"):
        ca.issue("codesign", "hsm", constant(CA_PASS.encode()), None,
                 csr_pem=csr.public_bytes(serialization.Encoding.PEM))


def test_csr_issue_keeps_no_key(pki: Path, tmp_path: Path, run, secrets_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    k = ec.generate_private_key(ec.SECP384R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "hsm")]))
           .sign(k, hashes.SHA384()))
    p = tmp_path / "hsm.csr"
    p.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    r = run("ca", "issue", "codesign", "hsm-signer", "--csr", str(p), "--pki", str(pki),
            "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.exit_code == 0, r.output
    assert not (pki / "private" / "hsm-signer.key").exists()
    cert = x509.load_pem_x509_certificate((pki / "issued" / "hsm-signer.crt").read_bytes())
    assert spki(cert) == spki(k)


def test_wrong_passphrase_no_ca_and_existing_ca(pki: Path, run, secrets_dir: Path,  # type: ignore[no-untyped-def]
                                                tmp_path: Path) -> None:
    before = (pki / "index.json").read_bytes()
    r = run("ca", "issue", "codesign", "x2", "--pki", str(pki), "--passphrase-file",
            str(secrets_dir / "wrong.pass"), "--key-passphrase-file",
            str(secrets_dir / "key.pass"))
    assert r.exit_code == 3 and "wrong passphrase" in r.output
    assert (pki / "index.json").read_bytes() == before
    assert not (pki / "private" / "x2.key").exists()
    r = run("ca", "list", "--pki", str(tmp_path / "nothing"))
    assert r.exit_code == 3 and "trustboot ca init" in r.output
    r = run("ca", "init", "--pki", str(pki), "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.exit_code == 3 and "already exists" in r.output
    assert (pki / "index.json").read_bytes() == before


def test_passphrases_never_printed_or_logged(tmp_path: Path, secrets_dir: Path) -> None:
    pki = tmp_path / "pki"
    env = {"TB_CA": "env-ca-passphrase-xyz", "TB_KEY": "env-key-passphrase-xyz"}
    outs = [
        run_proc("--debug", "ca", "init", "--pki", str(pki), "--key-type", "ec-p256",
                 "--passphrase-env", "TB_CA", env=env),
        run_proc("--debug", "ca", "issue", "codesign", "s", "--key-type", "ec-p256", "--pki",
                 str(pki), "--passphrase-env", "TB_CA", "--key-passphrase-env", "TB_KEY",
                 "--json", env=env),
        run_proc("--debug", "ca", "issue", "codesign", "s2", "--pki", str(pki),
                 "--passphrase-env", "TB_KEY", "--key-passphrase-env", "TB_KEY", env=env),
    ]
    assert outs[0].returncode == 0 and outs[1].returncode == 0 and outs[2].returncode == 3
    json.loads(outs[1].stdout)
    blob = "".join(o.stdout + o.stderr for o in outs)
    for f in pki.rglob("*"):
        if f.is_file() and not f.name.endswith(".key"):
            blob += f.read_text(errors="replace")
    for secret in env.values():
        assert secret not in blob


def test_no_terminal_for_prompt_is_a_clear_error(tmp_path: Path) -> None:
    r = subprocess.run([*trustboot_cmd(), "ca", "init", "--pki", str(tmp_path / "p")],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 3
    assert "--passphrase-file" in r.stderr
    assert not (tmp_path / "p" / "index.json").exists()


def test_revoke_crl_and_reissue(pki: Path, run, secrets_dir: Path) -> None:  # type: ignore[no-untyped-def]
    serial = CertificateAuthority.open(pki).get("signer").serial
    r = run("ca", "revoke", "signer", "--reason", "key_compromise", "--pki", str(pki),
            "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.exit_code == 0, r.output
    assert not (pki / "issued" / "signer.crt").exists()
    assert not (pki / "private" / "signer.key").exists()  # the view goes, the key stays
    key_file = CertificateAuthority.open(pki).find_serial(serial).key_path  # type: ignore[union-attr]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    crl_text = subprocess.run(
        ["openssl", "crl", "-in", str(pki / "crl.pem"), "-CAfile", str(pki / "issuing-ca.crt"),
         "-noout", "-text"], capture_output=True, text=True)
    assert crl_text.returncode == 0 and "verify OK" in crl_text.stderr + crl_text.stdout
    assert f"{serial:X}" in crl_text.stdout and "Key Compromise" in crl_text.stdout
    r = run("ca", "revoke", "signer", "--pki", str(pki), "--passphrase-file",
            str(secrets_dir / "ca.pass"))
    assert r.exit_code == 3 and "already revoked" in r.output
    r = run("ca", "list", "--all", "--json", "--pki", str(pki))
    rows = json.loads(r.output)
    assert [x["status"] for x in rows if x["name"] == "signer"] == ["revoked"]
    assert issue(run, pki, secrets_dir, "codesign", "signer").exit_code == 0
    ca = CertificateAuthority.open(pki)
    assert ca.get("signer").status == "valid" and ca.get("signer").serial != serial
    assert ca.check() == []
    index_txt = (pki / "index.txt").read_text().splitlines()
    assert sum(1 for line in index_txt if line.startswith("R\t")) == 1


def test_list_show_export(pki: Path, run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = json.loads(run("ca", "list", "--json", "--pki", str(pki)).output)
    names = {r["name"]: r for r in rows}
    assert set(names) == {"root-ca", "issuing-ca", "signer", "boot.example.net",
                          "ipxe-client"}
    assert 720 <= names["signer"]["days_left"] <= 730
    table = run("ca", "list", "--pki", str(pki)).output
    assert "signer" in table and "codesign" in table
    shown = json.loads(run("ca", "show", "signer", "--json", "--pki", str(pki)).output)
    assert "extendedKeyUsage: codeSigning" in shown["extensions"]
    assert run("ca", "show", "nope", "--pki", str(pki)).exit_code == 3
    pem = run("ca", "show", "signer", "--pem", "--pki", str(pki)).output
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    # --pem and --json are alternatives: with --json stdout carries one JSON document
    # or nothing, so both is a usage error (JSON on stderr), never PEM on stdout
    both = run("ca", "show", "signer", "--pem", "--json", "--pki", str(pki))
    assert both.exit_code == 2 and both.stdout == "", both.output
    doc = json.loads(both.stderr)
    assert doc["error"] == "UsageError" and "--pem and --json" in doc["message"]
    out = tmp_path / "export"
    data = json.loads(run("ca", "export", "--out", str(out), "--json", "--pki",
                          str(pki)).output)
    assert (out / "root.pem").read_text().count("BEGIN CERTIFICATE") == 1  # one per TRUST= file
    assert (out / "chain.pem").read_text().count("BEGIN CERTIFICATE") == 2
    root = x509.load_pem_x509_certificate((out / "root.pem").read_bytes())
    from cryptography.hazmat.primitives import hashes
    assert data["root_sha256"] == root.fingerprint(hashes.SHA256()).hex()
    assert not list(out.glob("*.key"))


def test_check_detects_tampering(pki: Path, run) -> None:  # type: ignore[no-untyped-def]
    assert run("ca", "check", "--pki", str(pki)).exit_code == 0
    other = (pki / "issued" / "ipxe-client.crt").read_bytes()
    (pki / "issued" / "signer.crt").write_bytes(other)
    r = run("ca", "check", "--pki", str(pki))
    assert r.exit_code == 3 and "differs from the index" in r.output
    # the hint is not circular: ca check refuses this CA too, so the fix comes first
    hint = r.output.split("hint:", 1)[1]
    assert hint.index("restore the file") < hint.index("ca check"), r.output


def test_a_certificate_not_yet_valid_is_not_current(pki: Path) -> None:
    # (a clock that was ahead when it was issued): it does not sign until its notBefore,
    # give or take the backdating every certificate gets
    ca = CertificateAuthority.open(pki)
    now = dt.datetime.now(dt.UTC)
    entry = ca.current("signer", now)
    assert entry is not None
    not_before = dt.datetime.fromisoformat(entry.not_before)
    assert ca.current("signer", not_before - profiles.BACKDATE + dt.timedelta(minutes=1)) \
        is entry
    assert ca.current("signer", not_before - profiles.BACKDATE - dt.timedelta(minutes=1)) \
        is None


def test_ca_key_and_revocation_refusals(pki: Path, tmp_path: Path, run: Run) -> None:
    """An unknown revocation reason; an issuing key file swapped for another key (same
    passphrase); a file in crls/ that is no previous issuing CA's CRL. Each refused."""
    from cryptography.hazmat.primitives.asymmetric import ec

    ca = CertificateAuthority.open(pki)
    with pytest.raises(ConfigError, match="unknown revocation reason 'bogus'"):
        ca.revoke("signer", constant(CA_PASS.encode()), reason="bogus")
    stray = pki / "crls"
    stray.mkdir(mode=0o755, exist_ok=True)
    (stray / "abc.pem").write_bytes((pki / "crl.pem").read_bytes())
    r = run("ca", "export", "--pki", str(pki), "--out", str(tmp_path / "out"))
    assert r.exit_code == 3 and "is not the CRL of a previous issuing CA" in r.output, r.output
    (stray / "abc.pem").unlink()
    key_path = ca.active_entry("issuing").key_path
    other = keyfile.encrypt_pkcs8(ec.generate_private_key(ec.SECP384R1()), CA_PASS.encode())
    key_path.chmod(0o600)
    key_path.write_bytes(other)
    with pytest.raises(ConfigError, match="does not match the issuing CA certificate"):
        CertificateAuthority.open(pki).load_issuing_key(constant(CA_PASS.encode()))


def test_revoke_refuses_a_replaced_certificate_and_an_unknown_index_version(
        pki: Path) -> None:
    ca = CertificateAuthority.open(pki)
    signer, client = ca.current("signer"), ca.current("ipxe-client")
    assert signer is not None and client is not None
    index = pki / "index.json"
    before = index.read_bytes()
    # the stored certificate swapped for another one: refused before anything changes
    signer.cert_path.write_bytes(client.cert_path.read_bytes())
    with pytest.raises(ConfigError, match="is not the certificate 'signer' the index recorded"):
        ca.revoke("signer", constant(CA_PASS.encode()))
    assert index.read_bytes() == before
    doc = json.loads(before)
    doc["version"] = 99
    index.write_bytes(json.dumps(doc).encode())
    with pytest.raises(ConfigError, match="damaged: index version 99"):
        CertificateAuthority.open(pki)


def test_check_reports_a_crl_past_its_next_update(pki: Path) -> None:
    ca = CertificateAuthority.open(pki)
    assert ca.check() == []
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=31)  # crl.pem is good for 30 days
    problems = ca.check(now=later)
    assert any(p.startswith("crl.pem is out of date") for p in problems), problems


def test_a_crl_from_before_a_revocation_is_refused(pki: Path, tmp_path: Path,
                                                   run: Run) -> None:
    """crl.pem put back as it was before a revoke (validly signed, current): it does not
    list the revoked certificate, so it is never handed on as this CA's CRL."""
    before = (pki / "crl.pem").read_bytes()
    CertificateAuthority.open(pki).revoke("ipxe-client", constant(CA_PASS.encode()))
    (pki / "crl.pem").write_bytes(before)
    problems = CertificateAuthority.open(pki).check()
    assert any("does not list revoked ipxe-client" in p for p in problems), problems
    r = run("ca", "export", "--pki", str(pki), "--out", str(tmp_path / "out"))
    assert r.exit_code == 3 and "does not list revoked ipxe-client" in r.output, r.output


def _unrevoke(by_name, entries) -> None:  # type: ignore[no-untyped-def]
    by_name["ipxe-client"].update(status="valid", revoked_at=None, revocation_reason=None)


def test_an_index_edited_back_to_valid_is_refused_by_check_and_every_write(
        pki: Path, tmp_path: Path, secrets_dir: Path, run: Run) -> None:
    """index.json edited after a revoke so that the certificate is valid again: the signed
    crl.pem and log.jsonl still record the revocation. `ca check` says so (exit 4, naming
    index.json, no advice to run `ca crl`) and `ca crl`, `ca issue` and `ca export` refuse:
    a CRL made from that index would forget the revocation."""
    CertificateAuthority.open(pki).revoke("ipxe-client", constant(CA_PASS.encode()),
                                          reason="key_compromise")
    crl = (pki / "crl.pem").read_bytes()
    _edit_index(pki, _unrevoke)
    problems = CertificateAuthority.open(pki).check()
    assert any(p.startswith("crl.pem lists ipxe-client") and "index.json says it is valid"
               in p for p in problems), problems
    assert any(p.startswith("log.jsonl records the revocation of 'ipxe-client'")
               for p in problems), problems
    r = run("ca", "check", "--pki", str(pki))
    assert r.exit_code == 4 and "index.json disagrees" in r.output, r.output
    assert "to refresh the views" not in r.output and "killed" not in r.output, r.output
    ca_pass = ("--passphrase-file", str(secrets_dir / "ca.pass"))
    r = run("ca", "crl", "--pki", str(pki), *ca_pass)
    assert r.exit_code == 4 and "index.json disagrees" in r.output, r.output
    assert (pki / "crl.pem").read_bytes() == crl
    assert issue(run, pki, secrets_dir, "codesign", "other").exit_code == 4
    r = run("ca", "export", "--pki", str(pki), "--out", str(tmp_path / "out"))
    assert r.exit_code == 4 and "index.json disagrees" in r.output, r.output


def test_the_log_alone_keeps_a_revocation_an_edited_index_and_old_crl_undo(
        pki: Path, secrets_dir: Path, run: Run) -> None:
    """crl.pem put back as it was before the revoke and index.json edited to match: the
    hash-chained log still records the revocation, and the CRL is not regenerated."""
    before = (pki / "crl.pem").read_bytes()
    CertificateAuthority.open(pki).revoke("ipxe-client", constant(CA_PASS.encode()))
    (pki / "crl.pem").write_bytes(before)
    _edit_index(pki, _unrevoke)
    r = run("ca", "crl", "--pki", str(pki), "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.exit_code == 4 and "log.jsonl records the revocation of 'ipxe-client'" in \
        r.output, r.output
    assert (pki / "crl.pem").read_bytes() == before


def test_an_index_that_weakens_a_revocation_reason_is_refused(pki: Path) -> None:
    """key_compromise edited to superseded: the next CRL would tell relying parties the
    key is safe."""
    CertificateAuthority.open(pki).revoke("ipxe-client", constant(CA_PASS.encode()),
                                          reason="key_compromise")
    _edit_index(pki, lambda by_name, entries: by_name["ipxe-client"].update(
        revocation_reason="superseded"))
    ca = CertificateAuthority.open(pki)
    assert any("for key_compromise; index.json says superseded" in p
               for p in ca.check()), ca.check()
    with pytest.raises(VerificationError, match=r"index\.json disagrees"):
        ca.generate_crl(constant(CA_PASS.encode()))


def test_index_txt_subjects_keep_commas_slashes_and_plus_signs(tmp_path: Path,
                                                              secrets_dir: Path,
                                                              run: Run) -> None:
    """index.txt's subject is OpenSSL's /O=../CN=.. form built from the name's RDNs: a
    comma inside a value is no separator there, and / + and \\ are escaped."""
    pki = tmp_path / "pki"
    init_ca(run, pki, secrets_dir, "--key-type", "ec-p256", "--name", "Ex/Lab+1",
            "--org", "Example, Inc.")
    lines = (pki / "index.txt").read_text().splitlines()
    subjects = [line.split("\t")[5] for line in lines]
    assert subjects == ["/O=Example, Inc./CN=Ex\\/Lab\\+1 Root CA",
                        "/O=Example, Inc./CN=Ex\\/Lab\\+1 Issuing CA"], lines
    assert all(len(line.split("\t")) == 6 for line in lines), lines


@pytest.mark.slow
def test_twenty_concurrent_issues(tmp_path: Path, secrets_dir: Path, run: Run) -> None:
    pki = tmp_path / "pki"
    init_ca(run, pki, secrets_dir, "--key-type", "ec-p256")

    def one(i: int) -> subprocess.CompletedProcess[str]:
        return run_proc("ca", "issue", "codesign", f"c{i}", "--key-type", "ec-p256", "--pki",
                        str(pki), "--passphrase-file", str(secrets_dir / "ca.pass"),
                        "--key-passphrase-file", str(secrets_dir / "key.pass"), "--json")

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    serials = {json.loads(r.stdout)["serial"] for r in results}
    assert len(serials) == 20
    ca = CertificateAuthority.open(pki)
    assert ca.check() == []
    assert {e.name for e in ca.entries} >= {f"c{i}" for i in range(20)}
    assert len(ca.entries) == 22
    log = (pki / "log.jsonl").read_text().splitlines()
    assert sum(1 for line in log if json.loads(line)["op"] == "issue") == 20


@pytest.mark.slow
def test_killed_runs_leave_a_loadable_consistent_store(tmp_path: Path, secrets_dir: Path,  # type: ignore[no-untyped-def]
                                                      run) -> None:
    pki = tmp_path / "pki"
    init_ca(run, pki, secrets_dir, "--key-type", "ec-p256")
    rng = random.Random(1234)
    for i in range(16):
        proc = subprocess.Popen(
            [*trustboot_cmd(), "ca", "issue", "codesign", f"k{i % 4}", "--key-type",
             "ec-p256", "--pki", str(pki), "--passphrase-file",
             str(secrets_dir / "ca.pass"), "--key-passphrase-file",
             str(secrets_dir / "key.pass")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.9))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ca = CertificateAuthority.open(pki)  # still loads
        # killed after its index commit: the views, and the log entries the index owes
        # (killed before appending them), are made good by the next write
        left = ca.check()
        assert all("refresh the views" in p or "the next CA write appends them" in p
                   for p in left), f"after kill {i}: {left}"
    # Whatever the kills left behind, issuing each name now works (or says it exists, and
    # finishes the views a run killed after its commit left: no write may follow).
    for n in range(4):
        r = issue(run, pki, secrets_dir, "codesign", f"k{n}", "--key-type", "ec-p256")
        assert r.exit_code == 0 or "already exists" in r.output, r.output
    ca = CertificateAuthority.open(pki)
    assert ca.check() == []
    assert {f"k{n}" for n in range(4)} <= {e.name for e in ca.entries}
    for e in ca.entries:
        if e.key_file:
            assert stat.S_IMODE((pki / e.key_file).stat().st_mode) == 0o600
    assert os.access(pki / "index.json", os.R_OK)


def test_a_refused_duplicate_finishes_the_views_a_killed_run_left(
        tmp_path: Path, secrets_dir: Path, run: Run) -> None:
    """Killed after its index commit, an issue leaves stale views; when the next command
    is that same issue (refused: the name exists), the views are finished all the same."""
    pki = tmp_path / "pki"
    init_ca(run, pki, secrets_dir, "--key-type", "ec-p256")
    r = issue(run, pki, secrets_dir, "codesign", "k0", "--key-type", "ec-p256")
    assert r.exit_code == 0, r.output
    view = next(p for p in (pki / "issued").iterdir() if p.name.startswith("k0"))
    view.unlink()  # what a kill between the index commit and the view refresh leaves
    assert any("refresh the views" in p for p in CertificateAuthority.open(pki).check())
    r = issue(run, pki, secrets_dir, "codesign", "k0", "--key-type", "ec-p256")
    assert r.exit_code == 3 and "already exists" in r.output, r.output
    assert view.exists() and CertificateAuthority.open(pki).check() == []


def test_days_beyond_the_issuing_ca_are_cut_with_a_warning(pki: Path, run,  # type: ignore[no-untyped-def]
                                                           secrets_dir: Path) -> None:
    # A leaf never outlives its issuer; asking for more is not silently shortened.
    from tests.ca.conftest import issue

    r = issue(run, pki, secrets_dir, "codesign", "too-long", "--days", "4000")
    assert r.exit_code == 0, r.output
    issuing = x509.load_pem_x509_certificate((pki / "issuing-ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((pki / "issued" / "too-long.crt").read_bytes())
    assert cert.not_valid_after_utc == issuing.not_valid_after_utc
    assert "--days 4000" in r.output and "issuing CA" in r.output, r.output
    r = issue(run, pki, secrets_dir, "codesign", "short-enough", "--days", "30")
    assert r.exit_code == 0 and "warning" not in r.output, r.output


@pytest.mark.parametrize("late", [dt.timedelta(0), dt.timedelta(hours=12),
                                  dt.timedelta(days=3)])
def test_an_expired_issuing_ca_issues_nothing(tmp_path: Path, late: dt.timedelta) -> None:
    """From the moment the issuing CA expires, issue and renew refuse (exit 3) and the index
    is unchanged: a leaf clamped to its issuer would be born expired, and past a day its end
    came before its start (cryptography raised ValueError: exit 70)."""
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    pw = constant(CA_PASS.encode())
    ca, _ = CertificateAuthority.init(tmp_path / "pki", pw, key_type="ec-p256", root_days=10,
                                      issuing_days=2, now=now)
    ca.issue("codesign", "signer", pw, pw, key_type="ec-p256", now=now)
    expiry = ca.issuing_cert.not_valid_after_utc
    before = (tmp_path / "pki" / "index.json").read_bytes()
    with pytest.raises(ConfigError, match=r"expired on .* it cannot issue") as exc:
        ca.issue("codesign", "late", pw, pw, key_type="ec-p256", now=expiry + late)
    assert "rotate issuing" in (exc.value.hint or "")
    with pytest.raises(ConfigError, match="it cannot issue"):
        ca.renew("signer", pw, now=expiry + late)
    assert (tmp_path / "pki" / "index.json").read_bytes() == before
    # One second before, the CA still issues (its leaf ends with it, with a warning).
    result = ca.issue("codesign", "early", pw, pw, key_type="ec-p256",
                      now=expiry - dt.timedelta(seconds=1))
    assert result.certificate.not_valid_after_utc == expiry
    # A new issuing CA issues again.
    rotate_issuing(ca, pw, key_type="ec-p256", now=expiry + late)
    assert ca.issue("codesign", "late", pw, pw, key_type="ec-p256", now=expiry + late)


def _edit_index(pki: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Change index.json as damage or a hand edit would (the file is the CA's record)."""
    path = pki / "index.json"
    data = json.loads(path.read_text())
    edit({e["name"]: e for e in data["entries"]}, data["entries"])
    path.write_text(json.dumps(data, indent=2))


def test_check_reports_each_inconsistency_of_the_index(pki: Path) -> None:
    """`ca check` names what is wrong with each entry: a serial that differs from the
    certificate's, a serial listed twice (one revocation would name two certificates), a
    certificate file that cannot be read, an issuer the index does not hold, an issuer
    that did not sign the certificate, a missing key file of a valid certificate."""
    ca = CertificateAuthority.open(pki)
    assert ca.check() == []
    root_sha = ca.active_entry("root").sha256
    client_serial = f"{ca.get('ipxe-client').serial:x}"

    def edit(by_name, entries) -> None:  # type: ignore[no-untyped-def]
        by_name["signer"]["serial"] = "abc123"
        entries.append({**by_name["ipxe-client"], "name": "ipxe-client-again"})
        by_name["boot.example.net"]["issuer_sha256"] = "0" * 64
        by_name["ipxe-client"]["issuer_sha256"] = root_sha  # the root did not sign it

    _edit_index(pki, edit)
    problems = CertificateAuthority.open(pki).check()
    assert "signer: serial mismatch" in problems, problems
    assert f"duplicate serial {client_serial}" in problems, problems
    assert f"boot.example.net: its issuer {'0' * 64} is not in the index" in problems, problems
    assert any(p.startswith("ipxe-client: not issued by CN=") for p in problems), problems


def test_check_reports_unreadable_certificates_and_missing_keys(pki: Path, run: Run) -> None:
    """A certificate file gone is reported as such among the other problems (the check
    went on: it did not stop at the first unreadable file)."""
    ca = CertificateAuthority.open(pki)
    cert_file = ca.get("boot.example.net").cert_file
    (pki / cert_file).unlink()
    key_file = ca.get("signer").key_file
    (pki / str(key_file)).unlink()
    problems = CertificateAuthority.open(pki).check()
    assert any(p.startswith("boot.example.net: certificate ") and p.endswith(
        f"{cert_file} does not exist") for p in problems), problems
    assert f"signer: key file {key_file} is missing" in problems, problems
    # and its view is not misread as that of a revoked or retired certificate
    assert not any("signer.key" in p and "should not exist" in p for p in problems), problems
    r = run("ca", "check", "--pki", str(pki))
    assert r.exit_code == 3 and "key file" in r.output, r.output


def test_check_reports_a_replaced_certificate_file(pki: Path) -> None:
    """The certificate file an entry names (not its view in issued/) swapped for another
    certificate of the CA: reported as differing from the index."""
    ca = CertificateAuthority.open(pki)
    signer, client = ca.get("signer"), ca.get("ipxe-client")
    (pki / signer.cert_file).write_bytes((pki / client.cert_file).read_bytes())
    problems = CertificateAuthority.open(pki).check()
    assert f"signer: {signer.cert_file} differs from the index" in problems, problems


def test_check_does_not_ask_for_the_key_of_a_revoked_certificate(pki: Path) -> None:
    ca = CertificateAuthority.open(pki)
    key_file = ca.get("ipxe-client").key_file
    ca.revoke("ipxe-client", constant(CA_PASS.encode()))
    (pki / str(key_file)).unlink()
    problems = CertificateAuthority.open(pki).check()
    assert not [p for p in problems if "key file" in p], problems


def test_refusals_name_the_input_and_the_fix(pki: Path, tmp_path: Path, run: Run,
                                             secrets_dir: Path) -> None:
    """Messages a reviewer found wanting: each names what was wrong and what to do."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ca_pass = ["--pki", str(pki), "--passphrase-file", str(secrets_dir / "ca.pass")]
    cert = str(pki / "issued" / "signer.crt")
    image = tmp_path / "img"
    image.write_bytes(b"kernel")
    # a key file that is no key says so (it said "not encrypted", with an openssl hint)
    for name, data in (("empty.key", b""), ("junk.key", bytes(range(256)) * 8)):
        key = tmp_path / name
        key.write_bytes(data)
        key.chmod(0o600)
        r = run("sign", str(image), "--key", f"file:{key}", "--signing-cert", cert,
                "--passphrase-file", str(secrets_dir / "key.pass"), "--pki", str(pki))
        assert r.exit_code == 3, r.output
        assert f"key file {key} is not a private key" in r.output, r.output
    # an empty passphrase file: where the secret goes
    empty = tmp_path / "empty.pass"
    empty.write_bytes(b"")
    empty.chmod(0o600)
    r = run("ca", "crl", "--pki", str(pki), "--passphrase-file", str(empty))
    assert r.exit_code == 3 and "is empty" in r.output and "first line" in r.output
    # an IPv6 address first: it cannot be the name, --name can
    r = issue(run, pki, secrets_dir, "server", "2001:db8::1", "boot.example.net")
    assert r.exit_code == 3 and "--name" in r.output, r.output
    r = issue(run, pki, secrets_dir, "server", "2001:db8::1", "--name", "v6-server")
    assert r.exit_code == 0, r.output
    # a CSR of a key iPXE cannot verify, and one that is no CSR: the file is named
    ed = ed25519.Ed25519PrivateKey.generate()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ed")]))
           .sign(ed, None))
    for name, data, message in (
            ("ed.csr", csr.public_bytes(serialization.Encoding.PEM),
             "Ed25519 keys cannot be certified for iPXE"),
            ("junk.csr", b"\x00" * 300, "is neither a PEM nor a DER certificate request")):
        path = tmp_path / name
        path.write_bytes(data)
        r = run("ca", "issue", "codesign", "x", "--csr", str(path), *ca_pass)
        assert r.exit_code == 3, r.output
        assert f"CSR {path}" in r.output and message in r.output, r.output


@pytest.mark.parametrize("url", ["http://ocsp.example/a b", "ftp://pki.example/c.crl",
                                 "http:///c.crl", "http://[x/c.crl", "http://pki.example/é"])
def test_distribution_urls_are_checked_before_they_enter_every_certificate(
        tmp_path: Path, run: Run, secrets_dir: Path, url: str) -> None:
    for option in ("--crl-url", "--ocsp-url"):
        r = run("ca", "init", "--pki", str(tmp_path / "pki"), "--passphrase-file",
                str(secrets_dir / "ca.pass"), "--key-type", "ec-p256", option, url)
        assert r.exit_code == 3, (option, r.output)
        assert "is not an http(s) URL with a host" in r.output, r.output
        assert not (tmp_path / "pki").exists()
