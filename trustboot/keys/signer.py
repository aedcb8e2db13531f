"""Signers: a certificate, its chain, and one operation, ``sign_digest``.

CMS signing needs the key only to sign the image digest, so a signer is anything that can
do that: an in-memory key unlocked once per run (here), or later a PKCS#11 token.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from trustboot.errors import ConfigError, OperationalError, VerificationError
from trustboot.keys import keyfile
from trustboot.keys.ref import KeyRef
from trustboot.secrets import PassphraseSource

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


@runtime_checkable
class Signer(Protocol):
    @property
    def certificate(self) -> x509.Certificate: ...

    @property
    def chain(self) -> Sequence[x509.Certificate]:
        """Issuers of ``certificate``, nearest first, root last."""
        ...

    @property
    def algorithm(self) -> str:
        """"rsa" (PKCS#1 v1.5) or "ecdsa"."""
        ...

    def sign_digest(self, digest: bytes, hash_name: str) -> bytes:
        """Sign a precomputed digest; ECDSA signatures are DER Ecdsa-Sig-Value."""
        ...


@dataclass(frozen=True)
class SignerInfo:
    """Where a signer came from, for manifests and policy (the CA index status)."""

    ref: KeyRef
    ca_status: str | None = None  # "valid" | "revoked" | "expired" for ca: references


class KeySigner:
    """A private key held in memory for one run (unlocked once, used for every file)."""

    def __init__(
        self, key: keyfile.PrivateKey, certificate: x509.Certificate,
        chain: Sequence[x509.Certificate],
    ) -> None:
        if key.public_key() != certificate.public_key():
            raise ConfigError(
                f"the key does not belong to certificate {certificate.subject.rfc4514_string()}",
                hint="pass the certificate issued for this key (--cert), or the right key",
            )
        self._key = key
        self._certificate = certificate
        self._chain = tuple(chain)

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    @property
    def chain(self) -> Sequence[x509.Certificate]:
        return self._chain

    @property
    def algorithm(self) -> str:
        return "rsa" if isinstance(self._key, rsa.RSAPrivateKey) else "ecdsa"

    def sign_digest(self, digest: bytes, hash_name: str) -> bytes:
        algo = HASHES[hash_name]()
        if len(digest) != algo.digest_size:
            raise ValueError(f"{hash_name} digest must be {algo.digest_size} bytes")
        if isinstance(self._key, rsa.RSAPrivateKey):
            return self._key.sign(digest, padding.PKCS1v15(), Prehashed(algo))
        return self._key.sign(digest, ec.ECDSA(Prehashed(algo)))


def load_certificates(path: Path, what: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, or the one DER certificate, in ``path``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OperationalError(f"cannot read {what} {path}: {exc.strerror}",
                               hint=f"check the path given for the {what}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise ConfigError(f"{what} {path} holds no readable certificate",
                          hint="pass PEM (one or more certificates) or DER") from None


def order_chain(leaf: x509.Certificate,
                pool: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """Issuers of ``leaf`` from ``pool``, nearest first; the rest are kept at the end."""
    ordered: list[x509.Certificate] = []
    current = leaf
    remaining = list(pool)
    while True:
        nxt = next((c for c in remaining if c.subject == current.issuer and c != current), None)
        if nxt is None:
            break
        ordered.append(nxt)
        remaining.remove(nxt)
        current = nxt
    return ordered + [c for c in remaining if c != leaf]


@dataclass(frozen=True)
class PendingSigner:
    """A resolved reference whose key is not unlocked yet.

    The certificate and chain are known, so policy checks (and hashing) can run before
    the passphrase is asked for; ``unlock`` then opens the key, once.
    """

    ref: KeyRef
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key_path: Path
    ca_status: str | None = None

    @property
    def info(self) -> SignerInfo:
        return SignerInfo(self.ref, self.ca_status)

    def unlock(self, passphrases: PassphraseSource) -> Signer:
        key = keyfile.load_key(self.key_path, passphrases, f"signing key {self.key_path.stem}")
        return KeySigner(key, self.certificate, self.chain)


def open_signer(
    ref: KeyRef,
    *,
    passphrases: PassphraseSource,
    pki: Path | None = None,
    cert: Path | None = None,
    chain: Path | None = None,
    now: dt.datetime | None = None,
) -> tuple[Signer, SignerInfo]:
    """Resolve a reference to a ready signer; the key is unlocked here, once."""
    pending = resolve_signer(ref, pki=pki, cert=cert, chain=chain, now=now)
    return pending.unlock(passphrases), pending.info


def resolve_signer(
    ref: KeyRef,
    *,
    pki: Path | None = None,
    cert: Path | None = None,
    chain: Path | None = None,
    now: dt.datetime | None = None,
) -> PendingSigner:
    """Find the certificate, chain and key of a reference without touching the key."""
    if ref.scheme == "pkcs11":
        raise ConfigError(
            f"PKCS#11 keys are not supported yet ({ref})",
            hint="use a CA certificate name (--key NAME) or an encrypted key file "
                 "(--key file:PATH --cert CERT --chain CHAIN)",
        )
    if ref.scheme == "file":
        if cert is None:
            raise ConfigError(f"--key {ref} needs --cert (the signing certificate)",
                              hint="pass --cert FILE and --chain FILE (issuers, root included)")
        leaf = load_certificates(cert, "certificate")[0]
        pool = load_certificates(chain, "chain") if chain is not None else []
        return PendingSigner(ref, leaf, tuple(order_chain(leaf, pool)), ref.path)
    return _resolve_ca(ref, pki=pki or Path("pki"), chain=chain,
                       now=now or dt.datetime.now(dt.UTC))


def _resolve_ca(ref: KeyRef, *, pki: Path, chain: Path | None,
                now: dt.datetime) -> PendingSigner:
    from trustboot.ca.store import CertificateAuthority  # the CA is optional for file: keys

    ca = CertificateAuthority.open(pki)
    entry = ca.get(ref.value)
    if entry.profile != "codesign":
        raise VerificationError(
            f"certificate {entry.name} was issued with profile {entry.profile!r}, not "
            "codesign; iPXE requires extendedKeyUsage codeSigning [rule: code-signing]",
            hint="issue one: trustboot ca issue codesign NAME",
            rule="code-signing", subject=entry.name,
        )
    status = entry.effective_status(now)
    if status == "revoked":
        raise VerificationError(
            f"certificate {entry.name} (serial {entry.serial:#x}) is revoked in the CA index; "
            "refusing to sign [rule: revoked]",
            hint="issue a new code-signing certificate and sign with it",
            rule="revoked", subject=entry.name,
        )
    leaf = entry.load_cert()
    pool = list(ca.chain())
    if chain is not None:
        pool += load_certificates(chain, "chain")
    return PendingSigner(ref, leaf, tuple(order_chain(leaf, pool)), entry.key_path, status)
