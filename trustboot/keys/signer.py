"""Signers: a certificate, its chain, and one operation, ``sign_digest``.

CMS signing needs the key only to sign the image digest, so a signer is anything that can
do that: an in-memory key unlocked once per run, or a PKCS#11 token session.

Key references resolve through a registry by URI scheme (as securesystemslib's
``Signer.from_priv_key_uri``): ``resolve_signer`` returns a :class:`KeySource` whose
certificate and chain are known but whose key is not in use yet, so policy checks and
hashing can run before a passphrase or PIN is asked for. ``KeySource.open`` then yields the
:class:`Signer` as a context manager (a token session is always closed).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from trustboot.errors import ConfigError, VerificationError
from trustboot.fsutil import read_capped
from trustboot.keys.algorithms import HashAlgorithm, KeyAlgorithm
from trustboot.keys.keyfile import sign_with_key, warm_up
from trustboot.keys.ref import KeyRef
from trustboot.secrets import PassphraseSource

if TYPE_CHECKING:
    from trustboot.ca.store import CertificateAuthority
    from trustboot.keys import keyfile

# Kept for callers that look a hash up by name.
HASHES = {h.value: type(h.crypto()) for h in HashAlgorithm}


@runtime_checkable
class Signer(Protocol):
    @property
    def certificate(self) -> x509.Certificate: ...

    @property
    def chain(self) -> Sequence[x509.Certificate]:
        """Issuers of ``certificate``, nearest first, root last."""
        ...

    @property
    def algorithm(self) -> KeyAlgorithm:
        """KeyAlgorithm.RSA (PKCS#1 v1.5) or KeyAlgorithm.ECDSA."""
        ...

    def sign_digest(self, digest: bytes, hash_name: str) -> bytes:
        """Sign a precomputed digest; ECDSA signatures are DER Ecdsa-Sig-Value."""
        ...


@dataclass(frozen=True)
class SignerInfo:
    """Where a signer came from, for manifests and policy (the CA index status)."""

    ref: KeyRef
    ca_status: str | None = None  # "valid" | "revoked" | "expired" when the pki knows it


def key_algorithm(public_key: object) -> KeyAlgorithm:
    if isinstance(public_key, rsa.RSAPublicKey):
        return KeyAlgorithm.RSA
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return KeyAlgorithm.ECDSA
    raise ConfigError(f"unsupported key type {type(public_key).__name__}",
                      hint="iPXE verifies RSA and ECDSA (P-256, P-384) signatures only")


class CertifiedSigner:
    """The certificate half every signer shares: certificate, chain, key algorithm."""

    def __init__(self, certificate: x509.Certificate,
                 chain: Sequence[x509.Certificate]) -> None:
        self._certificate = certificate
        self._chain = tuple(chain)
        self._algorithm = key_algorithm(certificate.public_key())

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    @property
    def chain(self) -> Sequence[x509.Certificate]:
        return self._chain

    @property
    def algorithm(self) -> KeyAlgorithm:
        return self._algorithm

    def mismatch(self, key: str, hint: str) -> ConfigError:
        return ConfigError(
            f"the key {key} does not belong to certificate "
            f"{self._certificate.subject.rfc4514_string()}", hint=hint)


class KeySigner(CertifiedSigner):
    """A private key held in memory for one run (unlocked once, used for every file)."""

    def __init__(
        self, key: keyfile.PrivateKey, certificate: x509.Certificate,
        chain: Sequence[x509.Certificate],
    ) -> None:
        super().__init__(certificate, chain)
        if key.public_key() != certificate.public_key():
            raise self.mismatch("file", "pass the certificate issued for this key "
                                "(--signing-cert), or the right key")
        self._key: keyfile.PrivateKey | None = key
        warm_up(key, HashAlgorithm.SHA256)

    def holds(self, key: object) -> bool:
        """Whether this signer signs with this very key object (cms.forked.SignAhead)."""
        return self._key is not None and self._key is key

    @property
    def checks_each_signature(self) -> bool:
        """Whether sign_digest returns only signatures it verified with the certificate's
        key (RSA: see sign_digest), so a caller need not verify them again."""
        return self.algorithm == KeyAlgorithm.RSA

    def __enter__(self) -> KeySigner:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._key = None  # drop our reference: the key object is not used after the run

    def sign_digest(self, digest: bytes, hash_name: str) -> bytes:
        if self._key is None:
            raise ValueError("this signer was closed")
        algo = HashAlgorithm.parse(hash_name)
        algo.check_digest(digest)
        signature = sign_with_key(self._key, digest, algo)
        if isinstance(self._key, rsa.RSAPrivateKey):
            # Keys are loaded without OpenSSL's slow consistency check (keyfile.load_key):
            # an RSA signature is checked against the certificate instead (~25 us).
            public = self._certificate.public_key()
            assert isinstance(public, rsa.RSAPublicKey)
            try:
                public.verify(signature, digest, padding.PKCS1v15(), Prehashed(algo.crypto()))
            except InvalidSignature:
                raise VerificationError(
                    f"the key of {self._certificate.subject.rfc4514_string()} made a "
                    "signature that does not verify [rule: self-check]",
                    hint="the key file is damaged: restore it from a backup or reissue",
                    rule="self-check") from None
        return signature


# A certificate bundle (leaf and chain) is a few KiB; the same cap as `ipxe build --trust`.
MAX_CERT_FILE = 4 << 20


def load_certificates(path: Path, what: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, or the one DER certificate, in ``path``: a
    regular file of at most MAX_CERT_FILE bytes (a FIFO would hang the run, /dev/zero
    exhaust its memory; ConfigError naming ``what``)."""
    data = read_capped(path, MAX_CERT_FILE, what)
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


SecretKind = Literal["passphrase", "pin", "none"]


class KeySource(ABC):
    """A resolved reference whose key is not in use yet.

    The certificate and chain are known, so policy checks (and hashing) can run before
    the secret is asked for; ``open`` then unlocks the key (or logs in to the token) once.
    """

    ref: KeyRef
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    ca_status: str | None
    # Which secret ``open`` asks its callback for, so a front end offers the right options.
    secret_kind: SecretKind = "passphrase"  # noqa: S105 - a kind, not a secret

    @property
    def info(self) -> SignerInfo:
        return SignerInfo(self.ref, self.ca_status)

    @property
    def algorithm(self) -> KeyAlgorithm:
        return key_algorithm(self.certificate.public_key())

    @abstractmethod
    def open(self, secrets: PassphraseSource) -> contextlib.AbstractContextManager[Signer]:
        """The ready signer, valid inside the ``with`` block only."""


@dataclass
class PendingSigner(KeySource):
    """An encrypted key file (``ca:NAME`` and ``file:PATH`` references)."""

    ref: KeyRef
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key_path: Path
    ca_status: str | None = None
    ahead: keyfile.KeyLoad | None = field(default=None, repr=False, compare=False)

    def unlock(self, passphrases: PassphraseSource) -> KeySigner:
        from trustboot.keys import keyfile

        ahead, self.ahead = self.ahead, None
        if ahead is not None and ahead.passphrases is passphrases:
            key = ahead.result()  # begun earlier with this very secret source
        else:
            if ahead is not None:
                ahead.wait()  # no stray thread once unlocked (sign_many forks)
            # KeySigner compares the key with the certificate and checks every RSA
            # signature.
            key = keyfile.load_key(self.key_path, passphrases,
                                   keyfile.signing_key_what(self.key_path),
                                   checked_by_caller=True)
        return KeySigner(key, self.certificate, self.chain)

    def adopt(self, ahead: keyfile.KeyLoad) -> bool:
        """Take the load of this key file begun before the reference was resolved
        (keyfile.start_signing_key_load): unlock() with the same passphrase source then
        waits for it instead of loading the key again. False, and not kept, when it is
        another file's."""
        if ahead.path != self.key_path or not ahead.checked_by_caller:
            return False
        self.ahead = ahead
        return True

    @contextlib.contextmanager
    def open(self, secrets: PassphraseSource) -> Iterator[Signer]:
        with self.unlock(secrets) as signer:
            yield signer


FileKeySource = PendingSigner


@dataclass(frozen=True)
class OpenedCa:
    """A CA home its caller opened already (for the trusted roots and the revocation
    view, say), with the lines its log held before its index was read (``log_lines``, as
    ``CertificateAuthority.index_behind_log`` needs them): resolving a key in that pki
    uses it instead of opening the home again."""

    ca: CertificateAuthority
    log_lines: int


@dataclass(frozen=True)
class ResolveOptions:
    """What a resolver may need besides the reference itself."""

    pki: Path | None = None
    cert: Path | None = None
    chain: Path | None = None
    now: dt.datetime | None = None
    pkcs11_module: Path | None = None
    opened: OpenedCa | None = None

    def open_ca(self, pki: Path) -> tuple[CertificateAuthority, int]:
        """The CA in ``pki`` and its log's line count (counted before the index is read):
        the one the caller opened, when it is that pki's."""
        from trustboot.ca.store import CertificateAuthority, log_lines  # optional for file:

        if self.opened is not None and self.opened.ca.path == Path(pki):
            return self.opened.ca, self.opened.log_lines
        lines = log_lines(pki)  # before the index is read (see index_behind_log)
        return CertificateAuthority.open(pki), lines


Resolver = Callable[[KeyRef, ResolveOptions], KeySource]
# scheme -> resolver, or "module:function" imported on first use (python-pkcs11 is optional
# and only loaded for pkcs11: references).
_REGISTRY: dict[str, Resolver | str] = {}


def register_scheme(scheme: str, resolver: Resolver | str) -> None:
    """Make ``scheme:`` references resolve through ``resolver``."""
    _REGISTRY[scheme] = resolver


def _resolver(scheme: str) -> Resolver:
    entry = _REGISTRY.get(scheme)
    if entry is None:
        raise ConfigError(f"no signer is registered for {scheme}: key references",
                          hint="use NAME, ca:NAME, file:PATH or a pkcs11: URI")
    if isinstance(entry, str):
        module, _, name = entry.partition(":")
        resolver: Resolver = getattr(importlib.import_module(module), name)
        _REGISTRY[scheme] = resolver
        return resolver
    return entry


def open_signer(
    ref: KeyRef,
    *,
    passphrases: PassphraseSource,
    pki: Path | None = None,
    cert: Path | None = None,
    chain: Path | None = None,
    now: dt.datetime | None = None,
) -> tuple[Signer, SignerInfo]:
    """Resolve a file or CA reference to a ready in-memory signer, unlocked here, once.

    For tokens use ``resolve_signer(...).open(...)`` in a ``with`` block.
    """
    source = resolve_signer(ref, pki=pki, cert=cert, chain=chain, now=now)
    if not isinstance(source, PendingSigner):
        raise ConfigError(f"{ref} needs a session: use resolve_signer(...).open() in a with "
                          "block", hint="or sign through trustboot.cms.workflow.sign_paths")
    return source.unlock(passphrases), source.info


def resolve_signer(
    ref: KeyRef,
    *,
    pki: Path | None = None,
    cert: Path | None = None,
    chain: Path | None = None,
    now: dt.datetime | None = None,
    pkcs11_module: Path | None = None,
    opened: OpenedCa | None = None,
) -> KeySource:
    """Find the certificate, chain and key of a reference without touching the key.

    Whatever the scheme, a certificate that the pki's index or CRL lists as revoked is
    refused (when ``pki`` holds the CA that issued it); without ``--chain`` that CA's chain
    is used. ``opened``: the CA home the caller opened already (OpenedCa).
    """
    opts = ResolveOptions(pki=pki, cert=cert, chain=chain,
                          now=now or dt.datetime.now(dt.UTC), pkcs11_module=pkcs11_module,
                          opened=opened)
    source = _resolver(ref.scheme)(ref, opts)
    if ref.scheme != "ca" and pki is not None:
        found = pki_status(source.certificate, pki, opts.now, opts)
        if found is not None:
            source.ca_status, ca_chain = found
            if chain is None:
                source.chain = tuple(order_chain(source.certificate, ca_chain))
    return source


def pki_status(cert: x509.Certificate, pki: Path, now: dt.datetime | None,
               opts: ResolveOptions | None = None,
               ) -> tuple[str | None, list[x509.Certificate]] | None:
    """What the CA in ``pki`` says about ``cert``: (index status or None, the CA's chain);
    None when no CA there issued it. VerificationError if its index or CRL lists it as
    revoked."""
    if not (pki / "index.json").is_file():  # CertificateAuthority.exists, without its import
        return None
    ca, lines = (opts or ResolveOptions()).open_ca(pki)
    issuing = ca.issuing_entry_of(cert)  # any issuing CA of this CA, rotated ones too
    if issuing is None:
        return None
    entry = ca.find_serial(cert.serial_number)
    name = entry.name if entry is not None else cert.subject.rfc4514_string()
    _refuse_by_ca(ca, cert, name, lines)
    if entry is not None and entry.status == "revoked":
        raise revoked_error(name, cert.serial_number, f"the CA index in {pki}")
    if _crl_lists(ca.path / "crl.pem", ca.issuing_cert, cert.serial_number):
        raise revoked_error(name, cert.serial_number, f"{ca.path / 'crl.pem'}")
    status = ca.status_of(entry, now) if entry is not None else None
    return status, [issuing.load_cert(), *ca.chain_for(issuing)]


def _refuse_by_ca(ca: CertificateAuthority, cert: x509.Certificate, name: str,
                  log_lines: int) -> None:
    """What the CA knows beyond the certificate's own entry that forbids signing with it:
    an index older than the CA's log (restored from a backup, it may predate a
    revocation), or its key revoked as compromised with another certificate (another
    name, a CSR)."""
    if (behind := ca.index_behind_log(log_lines)) is not None:
        raise VerificationError(
            f"the CA index in {ca.path} is older than its log (log.jsonl holds {behind[0]} "
            f"entries, index.json accounts for {behind[1]}): restored from a backup? "
            "refusing to sign [rule: ca-rollback]",
            hint=f"see what the log holds that the index lacks: trustboot ca check --pki "
                 f"{ca.path}", rule="ca-rollback", subject=name)
    if (revoked := ca.compromised_by(cert.public_key())) is not None:
        raise VerificationError(
            f"the key of certificate {name} (serial {cert.serial_number:#x}) was revoked as "
            f"compromised with certificate {revoked.name} (serial {revoked.serial:#x}) in the "
            f"CA index in {ca.path}; refusing to sign [rule: revoked]",
            hint=f"renew it with a new key and sign with that: trustboot ca renew {name} "
                 "--rekey", rule="revoked", subject=name)


def revoked_error(name: str, serial: int, where: str) -> VerificationError:
    return VerificationError(
        f"certificate {name} (serial {serial:#x}) is revoked in {where}; refusing to sign "
        "[rule: revoked]",
        hint=f"renew it with a new key and sign with that: trustboot ca renew {name} --rekey",
        rule="revoked", subject=name)


MAX_CRL_BYTES = 64 << 20


def _crl_lists(path: Path, issuer: x509.Certificate, serial: int) -> bool:
    try:
        # capped and regular files only: a FIFO or /dev/zero planted there must not hang
        crl = x509.load_pem_x509_crl(read_capped(path, MAX_CRL_BYTES, "CRL", nofollow=True))
    except (OSError, ValueError, ConfigError):
        return False  # no CRL yet (or unreadable: `ca check` reports it); the index decides
    if crl.issuer != issuer.subject or not crl.is_signature_valid(
            issuer.public_key()):  # type: ignore[arg-type]
        return False
    return crl.get_revoked_certificate_by_serial_number(serial) is not None


def _resolve_file(ref: KeyRef, opts: ResolveOptions) -> KeySource:
    if opts.cert is None:
        # the option names of both commands that get here (sign, resign); in resign
        # --cert means a CERT= certificate, and a recipe checks signer.cert itself
        raise ConfigError(f"--key {ref} needs --signing-cert (the signing certificate)",
                          hint="pass --signing-cert FILE and --signing-chain FILE (its "
                               "issuers, root included)")
    leaf = load_certificates(opts.cert, "certificate")[0]
    pool = load_certificates(opts.chain, "chain") if opts.chain is not None else []
    return PendingSigner(ref, leaf, tuple(order_chain(leaf, pool)), ref.path)


def _resolve_ca(ref: KeyRef, opts: ResolveOptions) -> KeySource:
    now = opts.now or dt.datetime.now(dt.UTC)
    ca, lines = opts.open_ca(opts.pki or Path("pki"))
    # The newest certificate of the name that is valid now (after `ca renew` there are
    # several); when none is, the newest one, whose status is reported below.
    entry = ca.get(ref.value, now)
    if entry.profile != "codesign":
        raise VerificationError(
            f"certificate {entry.name} was issued with profile {entry.profile!r}, not "
            "codesign; iPXE requires extendedKeyUsage codeSigning [rule: code-signing]",
            hint="issue one: trustboot ca issue codesign NAME",
            rule="code-signing", subject=entry.name,
        )
    status = ca.status_of(entry, now)
    if status == "revoked":
        raise revoked_error(entry.name, entry.serial, f"the CA index in {ca.path}")
    if status == "retired":
        raise VerificationError(
            f"certificate {entry.name} (serial {entry.serial:#x}) was issued under a retired "
            f"CA certificate of {ca.path}; firmware no longer trusts its chain "
            "[rule: retired-chain]",
            hint=f"renew it under the active chain: trustboot ca renew {entry.name}",
            rule="retired-chain", subject=entry.name)
    leaf = entry.load_cert()
    if _crl_lists(ca.path / "crl.pem", ca.issuing_cert, leaf.serial_number):
        raise revoked_error(entry.name, entry.serial, f"{ca.path / 'crl.pem'}")
    _refuse_by_ca(ca, leaf, entry.name, lines)
    # The chain of the issuing CA that signed this certificate (after `ca rotate` it
    # need not be the active one).
    pool = ca.chain_for(entry)
    if opts.chain is not None:
        pool += load_certificates(opts.chain, "chain")
    return PendingSigner(ref, leaf, tuple(order_chain(leaf, pool)), entry.key_path, status)


register_scheme("ca", _resolve_ca)
register_scheme("file", _resolve_file)
register_scheme("pkcs11", "trustboot.keys.pkcs11:resolve")
