"""Each profile carries exactly the extensions iPXE needs and understands."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from trustboot.ca.store import CertificateAuthority

from .conftest import KEY_PASS


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


Ext = x509.Extension[Any]  # values are checked per extension type below


def ext_map(cert: x509.Certificate) -> dict[x509.ObjectIdentifier, Ext]:
    return {e.oid: e for e in cert.extensions}


COMMON = {ExtensionOID.SUBJECT_KEY_IDENTIFIER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
          ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE}


def test_root_and_issuing_ca_extensions(base_ca: Path) -> None:
    root, issuing = load(base_ca / "ca.crt"), load(base_ca / "issuing-ca.crt")
    for cert, pathlen in ((root, 1), (issuing, 0)):
        exts = ext_map(cert)
        assert set(exts) == COMMON
        bc = exts[ExtensionOID.BASIC_CONSTRAINTS]
        assert bc.critical and bc.value.ca is True and bc.value.path_length == pathlen
        ku = exts[ExtensionOID.KEY_USAGE]
        assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
        assert not ku.value.digital_signature
    root_key = root.public_key()
    assert isinstance(root_key, rsa.RSAPublicKey) and root_key.key_size == 4096  # default
    assert issuing.not_valid_after_utc < root.not_valid_after_utc
    aki = ext_map(issuing)[ExtensionOID.AUTHORITY_KEY_IDENTIFIER].value.key_identifier
    ski = ext_map(root)[ExtensionOID.SUBJECT_KEY_IDENTIFIER].value.digest
    assert aki == ski


@pytest.mark.parametrize(
    ("name", "eku", "extra"),
    [
        ("signer", ExtendedKeyUsageOID.CODE_SIGNING, set()),
        ("boot.example.net", ExtendedKeyUsageOID.SERVER_AUTH,
         {ExtensionOID.SUBJECT_ALTERNATIVE_NAME}),
        ("ipxe-client", ExtendedKeyUsageOID.CLIENT_AUTH, set()),
    ],
)
def test_leaf_extensions(base_ca: Path, name: str, eku: x509.ObjectIdentifier,
                         extra: set[x509.ObjectIdentifier]) -> None:
    cert = load(base_ca / "issued" / f"{name}.crt")
    exts = ext_map(cert)
    # Exactly these: no certificatePolicies, nameConstraints, AIA/OCSP or anything else.
    assert set(exts) == COMMON | {ExtensionOID.EXTENDED_KEY_USAGE} | extra
    assert exts[ExtensionOID.BASIC_CONSTRAINTS].value.ca is False
    ku = exts[ExtensionOID.KEY_USAGE]
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    ekus = list(exts[ExtensionOID.EXTENDED_KEY_USAGE].value)
    assert ekus == [eku]
    assert not exts[ExtensionOID.EXTENDED_KEY_USAGE].critical
    critical = {e.oid for e in cert.extensions if e.critical}
    assert critical == {ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE}
    if extra:
        sans = exts[ExtensionOID.SUBJECT_ALTERNATIVE_NAME].value
        assert sans.get_values_for_type(x509.DNSName) == ["boot.example.net"]
        assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["192.0.2.10"]


def test_serials_backdating_and_nesting(base_ca: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    certs = [load(p) for p in [base_ca / "ca.crt", base_ca / "issuing-ca.crt",
                               *sorted((base_ca / "issued").glob("*.crt"))]]
    assert len(certs) == 5
    serials = {c.serial_number for c in certs}
    assert len(serials) == 5
    issuing = certs[1]
    for c in certs:
        assert c.serial_number > 0 and c.serial_number.bit_length() >= 64
        # iPXE allows 12.5 h of clock skew; we backdate further than that.
        assert now - c.not_valid_before_utc > dt.timedelta(hours=13)
    for leaf in certs[2:]:
        assert leaf.not_valid_after_utc <= issuing.not_valid_after_utc


def test_openssl_verifies_every_certificate(base_ca: Path) -> None:
    leaves = sorted(str(p) for p in (base_ca / "issued").glob("*.crt"))
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", str(base_ca / "ca.crt"), "-untrusted",
         str(base_ca / "issuing-ca.crt"), str(base_ca / "issuing-ca.crt"), *leaves],
        capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(": OK") == 4


def test_openssl_cms_signature_with_codesign_cert(base_ca: Path, tmp_path: Path) -> None:
    image = tmp_path / "kernel"
    image.write_bytes(b"\x7fELF" + bytes(range(256)) * 64)
    sig = tmp_path / "kernel.sig"
    key = base_ca / "private" / "signer.key"
    env_pass = {"TB_KEY_PASS": KEY_PASS}
    sign = subprocess.run(
        ["openssl", "cms", "-sign", "-binary", "-noattr", "-in", str(image), "-signer",
         str(base_ca / "issued" / "signer.crt"), "-inkey", str(key), "-passin",
         "env:TB_KEY_PASS", "-certfile", str(base_ca / "chain.pem"), "-outform", "DER",
         "-out", str(sig)],
        capture_output=True, text=True, env=env_pass)
    assert sign.returncode == 0, sign.stderr
    verify = ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(sig),
              "-content", str(image), "-CAfile", str(base_ca / "ca.crt"), "-purpose", "any",
              "-out", "/dev/null"]
    ok = subprocess.run(verify, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    image.write_bytes(image.read_bytes()[:-1] + b"X")  # one byte changed
    bad = subprocess.run(verify, capture_output=True, text=True)
    assert bad.returncode != 0


def test_ocsp_and_crl_urls_only_when_configured(run, secrets_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from .conftest import init_ca, issue

    pki = tmp_path / "pki"
    r = init_ca(run, pki, secrets_dir, "--key-type", "ec-p256", "--ocsp-url",
                "http://ocsp.example.net", "--crl-url", "http://crl.example.net/crl.pem")
    assert "OCSP" in r.output and "iPXE before 2.0.0" in r.output  # both warnings shown
    assert issue(run, pki, secrets_dir, "codesign", "s1", "--key-type", "ec-p256").exit_code == 0
    exts = ext_map(load(pki / "issued" / "s1.crt"))
    aia = exts[ExtensionOID.AUTHORITY_INFORMATION_ACCESS]
    assert not aia.critical
    assert [d.access_location.value for d in aia.value] == ["http://ocsp.example.net"]
    assert ExtensionOID.CRL_DISTRIBUTION_POINTS in exts
    ca = CertificateAuthority.open(pki)
    assert ca.check() == []
