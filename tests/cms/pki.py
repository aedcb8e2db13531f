"""A small CA made directly with cryptography, plus encrypted key files, for sign tests."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.cms.corpus import Key, make_cert, pem
from trustboot.keys.keyfile import write_key

PASSPHRASE = b"correct horse battery"
DAY = dt.timedelta(days=1)


@dataclass
class Material:
    root: x509.Certificate
    root_key: rsa.RSAPrivateKey
    inter: x509.Certificate
    inter_key: rsa.RSAPrivateKey
    directory: Path

    def issue(self, name: str, key: Key, *, direct: bool = False, **kw: object) -> tuple[
            Path, Path, Path]:
        """Write NAME.key (encrypted), NAME.crt and NAME.chain.pem; returns their paths."""
        now = dt.datetime.now(dt.UTC)
        issuer = (self.root, self.root_key) if direct else (self.inter, self.inter_key)
        opts: dict[str, object] = {
            "not_before": now - DAY, "not_after": now + 365 * DAY, "ca": False,
            "key_usage": {"digital_signature"}, "eku": [ExtendedKeyUsageOID.CODE_SIGNING],
            "extra": [(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)],
        }
        opts.update(kw)
        cert = make_cert(name, key, issuer, **opts)  # type: ignore[arg-type]
        key_path = self.directory / "keys" / f"{name}.key"
        write_key(key_path, key, PASSPHRASE)
        cert_path = self.directory / f"{name}.crt"
        cert_path.write_bytes(pem(cert))
        chain_path = self.directory / f"{name}.chain.pem"
        chain_path.write_bytes(pem(self.root) if direct else pem(self.inter) + pem(self.root))
        return key_path, cert_path, chain_path


def make_material(directory: Path) -> Material:
    now = dt.datetime.now(dt.UTC)
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    inter_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_ku = {"key_cert_sign", "crl_sign"}
    root = make_cert("Test Root", root_key, None, not_before=now - 10 * DAY,
                     not_after=now + 3650 * DAY, ca=True, key_usage=ca_ku)
    inter = make_cert("Test Issuing", inter_key, (root, root_key), not_before=now - 10 * DAY,
                      not_after=now + 3000 * DAY, ca=True, path_len=0, key_usage=ca_ku)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "root.pem").write_bytes(pem(root))
    return Material(root, root_key, inter, inter_key, directory)


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())
