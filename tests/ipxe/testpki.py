"""A throwaway CA for the iPXE tests: root, issuing CA, code-signing leaf; openssl signing."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _builder(
    cn: str, issuer: x509.Name, key: rsa.RSAPrivateKey, days: int
) -> x509.CertificateBuilder:
    """Subject ``cn``, valid from yesterday for ``days`` days; extensions left to the caller."""
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn)).issuer_name(issuer)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=days))
    )


def _ca_cert(
    cn: str, key: rsa.RSAPrivateKey, issuer: x509.Name, signer: rsa.RSAPrivateKey
) -> x509.Certificate:
    return (
        _builder(cn, issuer, key, 3650)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(signer, hashes.SHA256())
    )


@dataclass
class TestPki:
    __test__ = False  # not a test class, despite the name
    dir: Path
    root: Path
    issuing: Path
    chain: Path
    leaf: Path
    leaf_key: Path
    signer_name: str
    issuing_key: rsa.RSAPrivateKey
    issuing_cert: x509.Certificate

    def client_credentials(self, cn: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        """A TLS client certificate (EKU clientAuth, RSA as iPXE's PRIVKEY= needs)."""
        key = _key()
        cert = (
            _builder(cn, self.issuing_cert.subject, key, 30)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(self.issuing_key, hashes.SHA256())
        )
        return cert, key

    def server_credentials(self, ip: str) -> tuple[bytes, bytes]:
        """A TLS server certificate for ``ip`` (chain PEM: leaf + issuing) and its key PEM."""
        import ipaddress

        key = _key()
        cert = (
            _builder(ip, self.issuing_cert.subject, key, 30)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(self.issuing_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        chain = cert.public_bytes(pem) + self.issuing_cert.public_bytes(pem)
        return chain, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())

    def sign(self, data_file: Path, sig_file: Path) -> bytes:
        subprocess.run(
            ["openssl", "cms", "-sign", "-binary", "-noattr", "-nosmimecap", "-outform", "DER",
             "-in", str(data_file), "-out", str(sig_file), "-signer", str(self.leaf),
             "-inkey", str(self.leaf_key), "-certfile", str(self.chain), "-md", "sha256"],
            check=True, capture_output=True,
        )
        return sig_file.read_bytes()

    def sign_bytes(self, data: bytes, name: str = "blob") -> bytes:
        # A private scratch dir: a cached pki may be shared by concurrent test runs.
        with tempfile.TemporaryDirectory(prefix="tb-sign-") as tmp:
            src = Path(tmp) / f"{name}.in"
            src.write_bytes(data)
            return self.sign(src, Path(tmp) / f"{name}.sig")


def make_pki(directory: Path, prefix: str = "Test", signer: str = "boot-signer") -> TestPki:
    directory.mkdir(parents=True, exist_ok=True)
    root_key, issuing_key, leaf_key = _key(), _key(), _key()
    root = _ca_cert(f"{prefix} Root CA", root_key, _name(f"{prefix} Root CA"), root_key)
    issuing = _ca_cert(f"{prefix} Issuing CA", issuing_key, root.subject, root_key)
    leaf = (
        _builder(signer, issuing.subject, leaf_key, 365)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(issuing_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = {n: directory / n for n in ("ca.crt", "issuing-ca.crt", "chain.pem", "leaf.crt",
                                          "leaf.key")}
    paths["ca.crt"].write_bytes(root.public_bytes(pem))
    paths["issuing-ca.crt"].write_bytes(issuing.public_bytes(pem))
    paths["chain.pem"].write_bytes(issuing.public_bytes(pem) + root.public_bytes(pem))
    paths["leaf.crt"].write_bytes(leaf.public_bytes(pem))
    paths["leaf.key"].write_bytes(leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    paths["leaf.key"].chmod(0o600)
    (directory / "issuing.key").write_bytes(issuing_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / "issuing.key").chmod(0o600)
    return TestPki(directory, paths["ca.crt"], paths["issuing-ca.crt"], paths["chain.pem"],
                   paths["leaf.crt"], paths["leaf.key"], signer, issuing_key, issuing)


def load_pki(directory: Path, signer: str = "boot-signer") -> TestPki:
    """A pki written by :func:`make_pki` earlier."""
    key = serialization.load_pem_private_key((directory / "issuing.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    issuing = x509.load_pem_x509_certificate((directory / "issuing-ca.crt").read_bytes())
    return TestPki(directory, directory / "ca.crt", directory / "issuing-ca.crt",
                   directory / "chain.pem", directory / "leaf.crt", directory / "leaf.key",
                   signer, key, issuing)


def cached_pki(root: Path, name: str, prefix: str = "Test") -> TestPki:
    """The same test pki across runs (so firmware built for it stays cached), made once.

    Kept outside the repository (the tests' cache); concurrent callers share it.
    """
    from trustboot.fsutil import locked

    root.mkdir(parents=True, exist_ok=True)
    directory = root / name
    with locked(root / f"{name}.lock", timeout=120):
        # Remade well before its leaf (365 days) or server certificates could expire.
        done = directory / ".complete"
        fresh = done.exists() and (
            dt.datetime.now(dt.UTC).timestamp() - done.stat().st_mtime < 180 * 86400)
        if not fresh:
            shutil.rmtree(directory, ignore_errors=True)
            make_pki(directory, prefix=prefix)
            done.write_text("")
    return load_pki(directory)


def ec_key_pem() -> bytes:
    """An EC private key (PEM) for the 'client key must be RSA' error path."""
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
