"""The audit's TLS verdict does not depend on the Python version (follow._verifying_context)."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trustboot.audit.follow import _verifying_context

HOST = "boot.example"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _lax_pki(base: Path) -> tuple[Path, Path, Path]:
    """A root without a subject key identifier and a server certificate without an
    authority key identifier: iPXE and OpenSSL's default checks accept them, X509_STRICT
    (Python 3.13's create_default_context) does not. (root, cert, key) PEM files."""
    now = dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = (x509.CertificateBuilder().subject_name(_name("lax root"))
            .issuer_name(_name("lax root")).public_key(root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(root_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name(HOST)).issuer_name(root.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
            .sign(root_key, hashes.SHA256()))
    paths = base / "root.pem", base / "cert.pem", base / "key.pem"
    paths[0].write_bytes(root.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def _handshake(client: ssl.SSLContext, cert: Path, key: Path) -> str | None:
    """None if ``client`` accepts the server's chain, else the verification message."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True):
                pass
        except (OSError, ssl.SSLError):
            pass  # the client refused us

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(b, server_hostname=HOST):
            return None
    except ssl.SSLCertVerificationError as exc:
        return str(exc.verify_message)
    finally:
        thread.join(10)
        a.close()


def test_the_audit_checks_an_origin_as_ipxe_would_on_every_python(tmp_path: Path) -> None:
    root, cert, key = _lax_pki(tmp_path)
    strict = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    strict.load_verify_locations(cafile=str(root))
    strict.verify_flags |= ssl.VERIFY_X509_STRICT
    refusal = _handshake(strict, cert, key)
    if refusal is None:
        pytest.skip("this OpenSSL's X509_STRICT accepts a chain without key identifiers")
    assert "key identifier" in refusal.lower(), refusal  # what 3.13's default would say
    assert _handshake(_verifying_context(root), cert, key) is None
    # still a verification: another CA's root is refused
    (tmp_path / "other").mkdir()
    other, _, _ = _lax_pki(tmp_path / "other")
    assert _handshake(_verifying_context(other), cert, key) is not None
