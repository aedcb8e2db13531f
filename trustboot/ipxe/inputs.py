"""Collecting build inputs from a pki/ directory and loose files.

The pki layout (see trustboot.ca): ``ca.crt`` (root), ``issuing-ca.crt`` (intermediate),
``issued/NAME.crt`` and ``private/NAME.key`` (encrypted PKCS#8). The root becomes TRUST=;
root and intermediate become CERT= so a signature that lacks a chain certificate still
verifies without any network fetch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustboot.ca.store import (
    MAX_CERT_FILE,
    CertificateAuthority,
    check_pki_permissions,
    load_trusted_root,
    stored_cert_path,
)
from trustboot.errors import ConfigError
from trustboot.fsutil import read_capped
from trustboot.ipxe.config import (
    Certificate,
    ClientIdentity,
    client_identity,
    load_certificates,
    load_single_certificate,
)
from trustboot.keys.keyfile import load_key
from trustboot.secrets import PassphraseSource


@dataclass(frozen=True)
class TrustInputs:
    trust: tuple[Certificate, ...]
    certs: tuple[Certificate, ...]


def collect_trust(
    pki: Path | None, trust_files: Sequence[Path | Certificate], cert_files: Sequence[Path]
) -> TrustInputs:
    """Roots for TRUST= (pki root first, then each ``--trust``) and chain certs for CERT=.
    A trust anchor may be given loaded already (a recipe's, checked at its line): it is
    then what the firmware trusts, not the file read again."""
    trust: list[Certificate] = []
    certs: list[Certificate] = []
    if pki is not None:
        # Only a root whose pki nobody else can have changed, checked against the index.
        if CertificateAuthority.exists(pki):
            # During a root rotation the firmware must trust both roots (see `ca status`).
            ca = CertificateAuthority.open(pki)
            for root in ca.trusted_roots():
                trust.append(_as_build_cert(root, _stored(pki, root)))
            for issuing in ca.trusted_issuing():
                certs.append(_as_build_cert(issuing, _stored(pki, issuing)))
        else:
            trust.append(_as_build_cert(load_trusted_root(pki), pki / "ca.crt"))
            if (pki / "issuing-ca.crt").is_file():
                certs.extend(load_certificates(pki / "issuing-ca.crt"))
    for item in trust_files:
        cert = item if isinstance(item, Certificate) else load_single_certificate(item)
        if cert.fingerprint not in {c.fingerprint for c in trust}:
            trust.append(cert)
    for path in cert_files:
        certs.extend(load_certificates(path))
    if not trust:
        raise ConfigError(
            "no trust anchor given",
            hint="pass --pki DIR (uses DIR/ca.crt) or --trust ROOT.crt",
        )
    return TrustInputs(tuple(trust), tuple(certs))


def load_client_identity(
    pki: Path | None, name: str, passphrases: PassphraseSource
) -> ClientIdentity:
    """``issued/NAME.crt`` and ``private/NAME.key`` from the pki, as PRIVKEY= needs them."""
    if pki is None:
        raise ConfigError("--client-cert needs --pki DIR", hint="pass --pki")
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"client certificate name {name!r} is not a plain name")
    cert_path = pki / "issued" / f"{name}.crt"
    key_path = pki / "private" / f"{name}.key"
    if CertificateAuthority.exists(pki):
        # A CA home: the certificate must be the one the index recorded, and valid.
        ca = CertificateAuthority.open(pki)
        if not any(e.name == name for e in ca.entries):
            raise ConfigError(f"no client certificate {name!r} in {pki}",
                              hint="issue one with `trustboot ca issue client NAME`")
        entry = ca.get(name)
        if entry.profile != "client" or entry.status != "valid":
            raise ConfigError(
                f"{name!r} is not a valid client certificate in {pki} "
                f"(profile {entry.profile}, {entry.status})",
                hint="issue one with `trustboot ca issue client NAME`",
            )
        cert = _as_build_cert(entry.load_cert(), entry.cert_path)
        key_path = entry.key_path
    else:
        # Loose files laid out like a pki: at least nobody else can have swapped them.
        check_pki_permissions(pki)
        if not cert_path.is_file():
            raise ConfigError(
                f"no client certificate {cert_path}",
                hint="issue one with `trustboot ca issue client NAME`",
            )
        data = read_capped(cert_path, MAX_CERT_FILE, "client certificate", nofollow=True)
        try:
            parsed = x509.load_pem_x509_certificate(data)
        except ValueError:
            raise ConfigError(f"{cert_path} is not a PEM certificate") from None
        cert = _as_build_cert(parsed, cert_path)
    # load_key refuses a link, a key open to others, and an unencrypted key.
    key = load_key(key_path, passphrases, f"the client key {name}")
    return client_identity(cert, key)


def _stored(pki: Path, cert: x509.Certificate) -> Path:
    """Where the CA keeps ``cert`` (manifests name the file a certificate came from)."""
    return stored_cert_path(pki, cert.serial_number)


def _as_build_cert(cert: x509.Certificate, origin: Path) -> Certificate:
    return Certificate(origin=str(origin), pem=cert.public_bytes(serialization.Encoding.PEM),
                       der=cert.public_bytes(serialization.Encoding.DER))
