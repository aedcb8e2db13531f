"""The CA home (easy-rsa-like layout) and every operation on it.

Layout of a pki directory::

    ca.crt               root CA certificate (PEM)
    issuing-ca.crt       issuing (intermediate) CA certificate, signed by the root
    chain.pem            issuing + root: the certificates every signature carries
    crl.pem              current CRL, signed by the issuing CA
    config.json          choices made at init (organization, CRL/OCSP URLs, key types)
    index.json           every certificate ever issued, with status: the source of truth
    index.txt            the same in OpenSSL's `ca` index format, for familiar tools
    log.jsonl            append-only log of every CA operation (never a secret)
    private/  (0700)     ca.key, issuing-ca.key, NAME.key: encrypted PKCS#8, 0600
    issued/              NAME.crt for every valid leaf
    revoked/             certificates (and keys) of revoked leaves, by serial
    certs_by_serial/     SERIAL.pem for every certificate ever issued

Crash safety: every file is written atomically and index.json is written last, so a
process killed at any moment leaves files that the index does not mention (ignored, and
set aside by the next operation) but never an index that points at nothing. Temp files of
a killed run are removed by the next operation (under the lock, nobody else writes).

Trust: the pki and its directories must be owned by the user and not writable by group
or others (anyone who can write to a directory can replace its files); files inside are
never followed through symbolic links; and every certificate read back (ca.crt included)
must have the SHA-256 fingerprint that index.json recorded when it was issued.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import shutil
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from trustboot.ca import profiles
from trustboot.ca.profiles import CAOptions, PrivateKey
from trustboot.errors import ConfigError, VerificationError
from trustboot.fsutil import (
    PRIVATE_DIR_MODE,
    append_line,
    atomic_write,
    check_not_link,
    check_owned_dir,
    ensure_private_dir,
    fsync_dir,
    locked,
    make_dirs,
    read_capped,
    read_private_file,
    remove_stale_temps,
    write_private_file,
)
from trustboot.keys import keyfile
from trustboot.secrets import PassphraseSource

INDEX_VERSION = 1
ROOT_NAME = "root-ca"
ISSUING_NAME = "issuing-ca"
RESERVED_NAMES = {ROOT_NAME, ISSUING_NAME, "ca", "chain", "crl"}

PUBLIC_DIRS = ("issued", "revoked", "certs_by_serial")
# Files trustboot reads back from the pki; none is ever a link or writable by others.
PUBLIC_FILES = ("index.json", "config.json", "ca.crt", "issuing-ca.crt", "chain.pem",
                "crl.pem", "index.txt", "log.jsonl")
# Caps for reads from the pki: nothing trustboot writes there comes close.
MAX_CERT_FILE = 1 << 20
MAX_INDEX_FILE = 64 << 20
MAX_CRL_FILE = 64 << 20

DEFAULT_DAYS = {"root": 20 * 365, "issuing": 5 * 365, "codesign": 2 * 365,
                "server": 397, "client": 397}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class IssuedEntry:
    """One row of index.json."""

    name: str
    profile: str
    serial: int
    subject: str
    not_before: str
    not_after: str
    sha256: str
    cert_file: str  # relative to the pki dir
    key_file: str | None  # relative; None when the key came from a CSR
    status: str = "valid"  # valid | revoked (expired is computed)
    revoked_at: str | None = None
    revocation_reason: str | None = None
    sans: list[str] = field(default_factory=list)
    pki: Path | None = field(default=None, repr=False, compare=False)

    @property
    def cert_path(self) -> Path:
        assert self.pki is not None
        return self.pki / self.cert_file

    @property
    def key_path(self) -> Path:
        if self.key_file is None:
            raise ConfigError(
                f"certificate {self.name!r} was issued from a CSR; its key is not in the pki",
                hint="use the key reference of wherever the key lives (file: or pkcs11:)",
            )
        assert self.pki is not None
        return self.pki / self.key_file

    def read_cert_pem(self) -> bytes:
        """The certificate's PEM, refused unless it is the one the index recorded."""
        assert self.pki is not None
        data = read_capped(self.cert_path, MAX_CERT_FILE, "certificate", nofollow=True)
        cert = _parse_cert(data, self.cert_path)
        if fingerprint(cert) != self.sha256:
            raise ConfigError(
                f"{self.cert_path} is not the certificate {self.name!r} the index recorded "
                f"(sha256 {fingerprint(cert)}, index.json says {self.sha256}): "
                "it was replaced or damaged; refusing to use it",
                hint=f"run `trustboot ca check --pki {self.pki}`; restore the file from "
                f"{self.pki / 'certs_by_serial' / f'{self.serial:X}.pem'} or a backup",
            )
        return data

    def load_cert(self) -> x509.Certificate:
        """The certificate, checked against the index's fingerprint."""
        return _parse_cert(self.read_cert_pem(), self.cert_path)

    def not_after_dt(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.not_after)

    def effective_status(self, now: dt.datetime | None = None) -> str:
        if self.status == "revoked":
            return "revoked"
        return "expired" if self.not_after_dt() <= (now or utcnow()) else "valid"

    def to_record(self) -> dict[str, Any]:
        """The row as stored in index.json."""
        data = asdict(self)
        data.pop("pki")
        data["serial"] = f"{self.serial:x}"
        return data

    def to_json(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """The row as reported: status includes expiry, plus days left."""
        now = now or utcnow()
        return self.to_record() | {"status": self.effective_status(now),
                                   "days_left": (self.not_after_dt() - now).days}

    @classmethod
    def from_record(cls, data: dict[str, Any], pki: Path) -> IssuedEntry:
        for key in ("cert_file", "key_file"):
            rel = data.get(key)
            # Paths in the index stay inside the pki, whoever wrote the index.
            if rel is not None and (not isinstance(rel, str) or rel.startswith("/")
                                    or ".." in Path(rel).parts):
                raise ValueError(f"{key} {rel!r} is not a path inside the pki")
        return cls(**(data | {"serial": int(data["serial"], 16)}), pki=pki)


@dataclass(frozen=True)
class IssueResult:
    entry: IssuedEntry
    certificate: x509.Certificate
    warnings: list[str]


class CertificateAuthority:
    """A loaded CA home. Use :meth:`init` to create one and :meth:`open` to load one."""

    def __init__(self, path: Path, config: dict[str, Any], entries: list[IssuedEntry],
                 crl_number: int) -> None:
        self.path = path
        self.config = config
        self.entries = entries
        self.crl_number = crl_number
        self.root_cert = self._ca_entry(ROOT_NAME).load_cert()
        self.issuing_cert = self._ca_entry(ISSUING_NAME).load_cert()

    # ---- loading -------------------------------------------------------------------

    @classmethod
    def exists(cls, path: Path) -> bool:
        return (Path(path) / "index.json").is_file()

    @classmethod
    def open(cls, path: Path) -> CertificateAuthority:
        """Load the CA in ``path`` after checking that nobody else can have changed it."""
        path = Path(path)
        if not cls.exists(path):
            raise ConfigError(
                f"no CA in {path} (no index.json)",
                hint=f"create one with: trustboot ca init --pki {path}",
            )
        check_pki_permissions(path)
        return cls(path, *_read_index(path))

    def _ca_entry(self, name: str) -> IssuedEntry:
        entry = next((e for e in self.entries if e.name == name), None)
        if entry is None:
            raise ConfigError(f"the CA in {self.path} is damaged: index.json has no {name}",
                              hint="run `trustboot ca check` and restore from backup")
        return entry

    def crl_pem(self) -> bytes:
        """crl.pem, refused unless the issuing CA signed it."""
        path = self.path / "crl.pem"
        data = read_capped(path, MAX_CRL_FILE, "CRL", nofollow=True)
        try:
            crl = x509.load_pem_x509_crl(data)
        except ValueError:
            raise ConfigError(f"{path} is not a PEM CRL",
                              hint="regenerate it: trustboot ca crl") from None
        if not crl.is_signature_valid(self.issuing_cert.public_key()):  # type: ignore[arg-type]
            raise ConfigError(f"{path} is not signed by this CA's issuing CA",
                              hint="regenerate it: trustboot ca crl")
        return data

    @property
    def options(self) -> CAOptions:
        return CAOptions(
            organization=self.config.get("organization"),
            crl_url=self.config.get("crl_url"),
            ocsp_url=self.config.get("ocsp_url"),
        )

    def chain(self) -> list[x509.Certificate]:
        """[issuing, root]: what every signature must carry for iPXE."""
        return [self.issuing_cert, self.root_cert]

    def get(self, name: str) -> IssuedEntry:
        """The current certificate called ``name`` (the valid one if several were issued)."""
        matches = [e for e in self.entries if e.name == name]
        if not matches:
            known = ", ".join(sorted({e.name for e in self.entries if e.profile in
                                      profiles.LEAF_PROFILES})) or "none"
            raise ConfigError(
                f"no certificate named {name!r} in {self.path}",
                hint=f"issued names: {known}; issue one with `trustboot ca issue`",
            )
        valid = [e for e in matches if e.status == "valid"]
        return valid[-1] if valid else matches[-1]

    def find_serial(self, serial: int) -> IssuedEntry | None:
        return next((e for e in self.entries if e.serial == serial), None)

    def key_pem(self, entry: IssuedEntry) -> bytes:
        """The encrypted key file of ``entry`` (0600, ours, never through a link)."""
        return read_private_file(entry.key_path, f"key file of {entry.name!r}")

    def load_issuing_key(self, passphrases: PassphraseSource) -> PrivateKey:
        token = self.config.get("pkcs11")
        if token:  # a key in a token: it signs there, asking ``passphrases`` for the PIN
            from trustboot.keys.pkcs11 import token_private_key

            key: PrivateKey = token_private_key(token["issuing"], Path(token["module"]),
                                                passphrases)
            return key
        return keyfile.load_key(self.path / "private" / "issuing-ca.key", passphrases,
                                "the issuing CA key")

    # ---- init ------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: Path,
        passphrases: PassphraseSource,
        *,
        common_name: str = "trustboot",
        key_type: str = "rsa-4096",
        issuing_key_type: str | None = None,
        root_days: int = DEFAULT_DAYS["root"],
        issuing_days: int = DEFAULT_DAYS["issuing"],
        options: CAOptions | None = None,
        now: dt.datetime | None = None,
        pkcs11: tuple[str, Path] | None = None,
    ) -> tuple[CertificateAuthority, list[str]]:
        """Create root + issuing CA in ``path``; refuses if a CA is already there.

        ``pkcs11=(token URI, module)``: the two CA keys are generated in that token (never
        extractable) and ``passphrases`` answers its PIN; no key file is written.
        """
        now = now or utcnow()
        path = Path(path)
        root_spec = profiles.parse_key_type(key_type, for_ca=True)
        issuing_spec = profiles.parse_key_type(issuing_key_type or key_type, for_ca=True)
        _check_days(root_days, "root")
        _check_days(issuing_days, "issuing")
        if issuing_days >= root_days:
            raise ConfigError(
                f"the issuing CA ({issuing_days} days) must expire before the root "
                f"({root_days} days)",
                hint="shorten --issuing-days or lengthen --root-days",
            )
        if not common_name.strip() or len(common_name) > 64:
            raise ConfigError("--name must be 1-64 characters")
        check_text(common_name, "--name")
        if options is not None:
            for value, what in ((options.organization, "--org"), (options.crl_url, "--crl-url"),
                                (options.ocsp_url, "--ocsp-url")):
                if value is not None:
                    check_text(value, what)
        warnings = list(dict.fromkeys(w for w in (profiles.ecdsa_warning(root_spec),
                                                  profiles.ecdsa_warning(issuing_spec)) if w))
        if options is not None and options.ocsp_url:
            warnings.append(
                f"OCSP URL {options.ocsp_url} goes into every certificate: iPXE will demand an "
                "OCSP answer at boot and fail without one; the responder must be reachable by "
                "every booting client"
            )
        make_dirs(path)
        if cls.exists(path):
            raise ConfigError(
                f"a CA already exists in {path}",
                hint="use another --pki directory; trustboot never overwrites a CA",
            )
        check_pki_permissions(path)
        token_refs: dict[str, str] = {}
        if pkcs11 is not None:
            root_key, issuing_key, token_refs = _token_ca_keys(pkcs11, passphrases,
                                                               root_spec, issuing_spec)
            passphrase = b""
        else:
            passphrase = passphrases("the new CA keys")
            keyfile.check_passphrase(passphrase, "the CA passphrase")
            root_key = root_spec.generate()
            issuing_key = issuing_spec.generate()
        with locked(path / ".lock"):
            if cls.exists(path):
                raise ConfigError(f"a CA already exists in {path}")
            _remove_temps(path)
            _set_aside_leftovers(path, ["ca.crt", "issuing-ca.crt", "chain.pem", "crl.pem",
                                        "config.json", "private/ca.key",
                                        "private/issuing-ca.key"], now)
            for sub in PUBLIC_DIRS:
                make_dirs(path / sub)
            ensure_private_dir(path / "private")
            check_pki_permissions(path)
            opts = options or CAOptions()
            root_cert = profiles.build_certificate(
                profile="root", subject_cn=f"{common_name} Root CA",
                public_key=root_key.public_key(), issuer_cert=None, issuer_key=root_key,
                serial=x509.random_serial_number(), now=now, days=root_days, opts=opts)
            issuing_cert = profiles.build_certificate(
                profile="issuing", subject_cn=f"{common_name} Issuing CA",
                public_key=issuing_key.public_key(), issuer_cert=root_cert,
                issuer_key=root_key, serial=x509.random_serial_number(), now=now,
                days=issuing_days, opts=opts)
            if not token_refs:
                keyfile.write_key(path / "private" / "ca.key", root_key, passphrase)
                keyfile.write_key(path / "private" / "issuing-ca.key", issuing_key, passphrase)
            atomic_write(path / "ca.crt", pem(root_cert))
            atomic_write(path / "issuing-ca.crt", pem(issuing_cert))
            atomic_write(path / "chain.pem", pem(issuing_cert) + pem(root_cert))
            config = {
                "version": 1,
                "common_name": common_name,
                "organization": opts.organization,
                "crl_url": opts.crl_url,
                "ocsp_url": opts.ocsp_url,
                "root_key_type": root_spec.label,
                "issuing_key_type": issuing_spec.label,
                "created": now.isoformat(),
            }
            if token_refs:
                config["pkcs11"] = token_refs
            atomic_write(path / "config.json", json.dumps(config, indent=2).encode())
            entries = [
                _entry(ROOT_NAME, "root", root_cert, "ca.crt",
                       None if token_refs else "private/ca.key", path),
                _entry(ISSUING_NAME, "issuing", issuing_cert, "issuing-ca.crt",
                       None if token_refs else "private/issuing-ca.key", path),
            ]
            for cert in (root_cert, issuing_cert):
                atomic_write(path / "certs_by_serial" / f"{cert.serial_number:X}.pem", pem(cert))
            ca = cls(path, config, entries, 1)
            ca._write_crl(issuing_key, now, days=30, number=1)
            ca._write_index()  # last: from here on the CA exists
            ca._log("init", now, root=fingerprint(root_cert),
                    issuing=fingerprint(issuing_cert), key_type=root_spec.label)
        return ca, warnings

    # ---- issue -----------------------------------------------------------------------

    def issue(
        self,
        profile: str,
        name: str,
        ca_passphrases: PassphraseSource,
        key_passphrases: PassphraseSource | None,
        *,
        sans: list[str] | None = None,
        key_type: str = "rsa-3072",
        days: int | None = None,
        csr_pem: bytes | None = None,
        now: dt.datetime | None = None,
        public_key: profiles.PublicKey | None = None,
    ) -> IssueResult:
        """Issue a leaf certificate; its new key is written encrypted to private/NAME.key."""
        now = now or utcnow()
        if profile not in profiles.LEAF_PROFILES:
            raise ConfigError(
                f"unknown profile {profile!r}",
                hint=f"use one of {', '.join(profiles.LEAF_PROFILES)}",
            )
        profiles.check_name(name)
        if name in RESERVED_NAMES:
            raise ConfigError(f"the name {name!r} is reserved for the CA itself",
                              hint="choose another name")
        san_names = [profiles.parse_san(s) for s in (sans or [])]
        if profile == "server" and not san_names:
            raise ConfigError("a server certificate needs at least one DNS name or IP address",
                              hint="trustboot ca issue server boot.example.net")
        days = days if days is not None else DEFAULT_DAYS[profile]
        _check_days(days, profile)
        self._check_duplicate(name)
        warnings: list[str] = []
        key: PrivateKey | None = None
        # A key held elsewhere (a CSR's, or a token's public key): nothing is generated.
        external = csr_pem is not None or public_key is not None
        if csr_pem is not None:
            public_key = _public_key_from_csr(csr_pem)
        if public_key is not None:
            spec = profiles.check_public_key(public_key, for_ca=False)
        else:
            spec = profiles.parse_key_type(key_type, for_ca=False)
            if key_passphrases is None:
                raise ConfigError("a passphrase for the new key is needed")
        if w := profiles.ecdsa_warning(spec):
            warnings.append(w)
        if profile == "client" and spec.kind != "rsa":
            warnings.append("iPXE's PRIVKEY= takes RSA keys only: this client certificate "
                            "cannot be built into iPXE for TLS client authentication")
        # Expensive work (key generation, unlocking the CA key) happens outside the lock.
        issuing_key = self.load_issuing_key(ca_passphrases)
        if not _same_public_key(issuing_key, self.issuing_cert):
            raise ConfigError("private/issuing-ca.key does not match issuing-ca.crt",
                              hint="the CA is damaged; restore it from backup")
        new_key_pem: bytes | None = None
        if not external:
            assert key_passphrases is not None
            key_pass = key_passphrases(f"the new key {name!r}")
            keyfile.check_passphrase(key_pass, f"the passphrase for {name!r}")
            key = spec.generate()
            public_key = key.public_key()
            new_key_pem = keyfile.encrypt_pkcs8(key, key_pass)
        with locked(self.path / ".lock"):
            self._reload()
            self._tidy()
            self._check_duplicate(name)
            serial = self._new_serial()
            assert public_key is not None  # from the CSR, the token, or the new key
            cert = profiles.build_certificate(
                profile=profile, subject_cn=name, public_key=public_key,
                issuer_cert=self.issuing_cert, issuer_key=issuing_key, serial=serial,
                now=now, days=days, opts=self.options, sans=san_names or None)
            key_rel = f"private/{name}.key" if new_key_pem is not None else None
            cert_rel = f"issued/{name}.crt"
            _set_aside_leftovers(self.path, [cert_rel] + ([key_rel] if key_rel else []), now)
            if new_key_pem is not None and key_rel is not None:
                write_private_file(self.path / key_rel, new_key_pem)
            atomic_write(self.path / "certs_by_serial" / f"{serial:X}.pem", pem(cert))
            atomic_write(self.path / cert_rel, pem(cert))
            entry = _entry(name, profile, cert, cert_rel, key_rel, self.path)
            entry.sans = [str(s.value) for s in san_names]
            self.entries.append(entry)
            self._write_index()
            self._log("issue", now, name=name, profile=profile, serial=f"{serial:x}",
                      sha256=entry.sha256, key_type=spec.label,
                      from_csr=csr_pem is not None)
        return IssueResult(entry, cert, warnings)

    # ---- revoke / crl ------------------------------------------------------------------

    REASONS = ("unspecified", "key_compromise", "superseded", "cessation_of_operation",
               "affiliation_changed")

    def revoke(self, name: str, ca_passphrases: PassphraseSource, *,
               reason: str = "unspecified", now: dt.datetime | None = None) -> IssuedEntry:
        """Mark NAME revoked, move its files to revoked/, and publish a new CRL."""
        now = now or utcnow()
        if reason not in self.REASONS:
            raise ConfigError(f"unknown revocation reason {reason!r}",
                              hint=f"use one of {', '.join(self.REASONS)}")
        issuing_key = self.load_issuing_key(ca_passphrases)
        with locked(self.path / ".lock"):
            self._reload()
            self._tidy()
            entry = self.get(name)
            if entry.profile not in profiles.LEAF_PROFILES:
                raise ConfigError(f"{name!r} is a CA certificate; trustboot revokes leaves only",
                                  hint="to retire the CA, create a new one and rotate trust")
            if entry.status == "revoked":
                raise ConfigError(f"{name!r} (serial {entry.serial:x}) is already revoked")
            # Copy to revoked/ first, commit the index, then remove the originals: a kill
            # at any point leaves the index pointing at files that exist.
            make_dirs(self.path / "revoked")
            new_cert_rel = f"revoked/{entry.serial:X}.crt"
            # Read through the index's fingerprint, never through a link: revoked/ is
            # public, so what is copied there must be the certificate and nothing else.
            atomic_write(self.path / new_cert_rel, entry.read_cert_pem())
            old_files = [entry.cert_path]
            key_path = self.path / entry.key_file if entry.key_file is not None else None
            if key_path is not None and (key_path.exists() or key_path.is_symlink()):
                key_data = self.key_pem(entry)
                # Keys of revoked certificates stay private: a 0700 dir under private/.
                ensure_private_dir(self.path / "private" / "revoked")
                new_key_rel = f"private/revoked/{entry.serial:X}.key"
                write_private_file(self.path / new_key_rel, key_data, overwrite=True)
                old_files.append(key_path)
                entry.key_file = new_key_rel
            entry.cert_file = new_cert_rel
            entry.status = "revoked"
            entry.revoked_at = now.isoformat()
            entry.revocation_reason = reason
            self.crl_number += 1
            self._write_index()
            for old in old_files:
                old.unlink(missing_ok=True)
            fsync_dir(self.path / "issued")
            self._write_crl(issuing_key, now, days=30, number=self.crl_number)
            self._log("revoke", now, name=name, serial=f"{entry.serial:x}", reason=reason)
        return entry

    def generate_crl(self, ca_passphrases: PassphraseSource, *, days: int = 30,
                     now: dt.datetime | None = None) -> Path:
        now = now or utcnow()
        _check_days(days, "crl")
        issuing_key = self.load_issuing_key(ca_passphrases)
        with locked(self.path / ".lock"):
            self._reload()
            self.crl_number += 1
            self._write_index()
            self._write_crl(issuing_key, now, days=days, number=self.crl_number)
            self._log("crl", now, crl_number=self.crl_number)
        return self.path / "crl.pem"

    def _write_crl(self, issuing_key: PrivateKey, now: dt.datetime, *, days: int,
                   number: int) -> None:
        reasons = {
            "unspecified": x509.ReasonFlags.unspecified,
            "key_compromise": x509.ReasonFlags.key_compromise,
            "superseded": x509.ReasonFlags.superseded,
            "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
            "affiliation_changed": x509.ReasonFlags.affiliation_changed,
        }
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.issuing_cert.subject)
            .last_update(now - dt.timedelta(hours=1))
            .next_update(now + dt.timedelta(days=days))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.issuing_cert.public_key()  # type: ignore[arg-type]
                ),
                critical=False,
            )
        )
        for e in self.entries:
            if e.status == "revoked" and e.revoked_at:
                rc = (
                    x509.RevokedCertificateBuilder()
                    .serial_number(e.serial)
                    .revocation_date(dt.datetime.fromisoformat(e.revoked_at))
                    .add_extension(
                        x509.CRLReason(reasons[e.revocation_reason or "unspecified"]),
                        critical=False,
                    )
                    .build()
                )
                b = b.add_revoked_certificate(rc)
        crl = b.sign(issuing_key, profiles.hash_for(issuing_key))
        atomic_write(self.path / "crl.pem", crl.public_bytes(serialization.Encoding.PEM))

    # ---- check -------------------------------------------------------------------------

    def check(self, now: dt.datetime | None = None) -> list[str]:
        """Consistency of the store: every index entry has its certificate, unchanged,
        issued by this CA. Returns problems (empty when healthy)."""
        now = now or utcnow()
        problems: list[str] = []
        serials: set[int] = set()
        names: set[str] = set()
        for e in self.entries:
            if e.serial in serials:
                problems.append(f"duplicate serial {e.serial:x}")
            serials.add(e.serial)
            if e.status == "valid":
                if e.name in names:
                    problems.append(f"two valid certificates named {e.name!r}")
                names.add(e.name)
            try:
                data = read_capped(e.cert_path, MAX_CERT_FILE, "certificate", nofollow=True)
                cert = _parse_cert(data, e.cert_path)
            except ConfigError as exc:
                problems.append(f"{e.name}: {exc.message}")
                continue
            if fingerprint(cert) != e.sha256:
                problems.append(f"{e.name}: {e.cert_file} differs from the index")
            if cert.serial_number != e.serial:
                problems.append(f"{e.name}: serial mismatch")
            issuer = self.root_cert if e.profile in ("root", "issuing") else self.issuing_cert
            try:
                cert.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, Exception) as exc:  # InvalidSignature has no base
                problems.append(f"{e.name}: not issued by {issuer.subject.rfc4514_string()}: "
                                f"{exc or type(exc).__name__}")
            if e.key_file and e.status == "valid" and not (self.path / e.key_file).exists():
                problems.append(f"{e.name}: key file {e.key_file} is missing")
        problems += self._check_crl()
        return problems

    def _check_crl(self) -> list[str]:
        try:
            crl = x509.load_pem_x509_crl(read_capped(self.path / "crl.pem", MAX_CRL_FILE,
                                                     "CRL", nofollow=True))
        except ConfigError as exc:
            return [f"{exc.message}; run `trustboot ca crl`"]
        except ValueError as exc:
            return [f"crl.pem cannot be loaded: {exc}; run `trustboot ca crl`"]
        if not crl.is_signature_valid(self.issuing_cert.public_key()):  # type: ignore[arg-type]
            return ["crl.pem is not signed by the issuing CA; run `trustboot ca crl`"]
        listed = {r.serial_number for r in crl}
        missing = [e for e in self.entries if e.status == "revoked" and e.serial not in listed]
        if missing:
            # Possible after a kill between the index and the CRL: the index is the truth.
            return [f"crl.pem does not list revoked {e.name} ({e.serial:x}); run "
                    "`trustboot ca crl`" for e in missing]
        return []

    # ---- internals -----------------------------------------------------------------------

    def _reload(self) -> None:
        """Re-read the index under the lock; the CA certificates themselves never change.

        Also removes the temp files of killed runs: under the lock nobody else writes."""
        self.config, self.entries, self.crl_number = _read_index(self.path)
        _remove_temps(self.path)

    def _tidy(self) -> None:
        """Finish a revoke that was killed after its index commit: remove the originals
        of revoked certificates (and keys) that are byte-identical to their revoked copy."""
        valid = {e.name for e in self.entries if e.status == "valid"}
        for e in self.entries:
            if e.status != "revoked" or e.name in valid:
                continue
            pairs = [(self.path / "issued" / f"{e.name}.crt", self.path / e.cert_file)]
            if e.key_file:
                pairs.append((self.path / "private" / f"{e.name}.key", self.path / e.key_file))
            for original, copy in pairs:
                # Links are never ours: leave them for `ca check` (and a human) to judge.
                if (original.is_file() and not original.is_symlink() and copy.is_file()
                        and not copy.is_symlink()
                        and original.read_bytes() == copy.read_bytes()):
                    original.unlink()

    def _check_duplicate(self, name: str) -> None:
        for e in self.entries:
            if e.name == name and e.status == "valid":
                raise ConfigError(
                    f"a valid certificate named {name!r} already exists (serial {e.serial:x})",
                    hint=f"choose another name, or revoke it first: trustboot ca revoke {name}",
                )

    def _new_serial(self) -> int:
        used = {e.serial for e in self.entries}
        while True:
            serial = x509.random_serial_number()  # 159 random bits, positive
            if serial not in used:
                return serial

    def _write_index(self) -> None:
        data = {
            "version": INDEX_VERSION,
            "crl_number": self.crl_number,
            "entries": [e.to_record() for e in self.entries],
        }
        atomic_write(self.path / "index.json", json.dumps(data, indent=2).encode())
        # Derived view for OpenSSL-minded tools; index.json stays the source of truth.
        atomic_write(self.path / "index.txt", self._openssl_index().encode())

    def _openssl_index(self) -> str:
        def ts(iso: str) -> str:
            return dt.datetime.fromisoformat(iso).strftime("%y%m%d%H%M%SZ")

        lines = []
        for e in self.entries:
            flag = "R" if e.status == "revoked" else "V"
            rev = ts(e.revoked_at) if e.revoked_at else ""
            if rev and e.revocation_reason:
                rev += f",{e.revocation_reason.replace('_', '')}"
            subject = "/" + "/".join(reversed(e.subject.split(",")))
            lines.append(f"{flag}\t{ts(e.not_after)}\t{rev}\t{e.serial:X}\tunknown\t{subject}\n")
        return "".join(lines)

    def _log(self, op: str, now: dt.datetime, **fields: Any) -> None:
        record = {"time": now.isoformat(), "op": op, "user": _user(), "pid": os.getpid()}
        record.update(fields)
        append_line(self.path / "log.jsonl", (json.dumps(record, sort_keys=True) + "\n").encode())


def _read_index(path: Path) -> tuple[dict[str, Any], list[IssuedEntry], int]:
    try:
        data = json.loads(read_capped(path / "index.json", MAX_INDEX_FILE, "CA index",
                                      nofollow=True))
        config = json.loads(read_capped(path / "config.json", MAX_CERT_FILE, "CA config",
                                        nofollow=True))
        if data.get("version") != INDEX_VERSION:
            raise ValueError(f"index version {data.get('version')!r}")
        entries = [IssuedEntry.from_record(e, path) for e in data["entries"]]
        return config, entries, int(data.get("crl_number", 0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"the CA in {path} is damaged: {exc}",
            hint="run `trustboot ca check` and restore from backup if it fails",
        ) from None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _check_days(days: int, what: str) -> None:
    if days < 1 or days > 40 * 365:
        raise ConfigError(f"validity of {days} days for {what} is out of range",
                          hint="give a number of days between 1 and 14600")


def _parse_cert(data: bytes, path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise ConfigError(f"cannot load certificate {path}: {exc}",
                          hint="run `trustboot ca check`; restore the pki from backup") from None


def check_text(value: str, what: str) -> None:
    """Values that end up in subjects, index.txt and logs: printable, one line."""
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in value):
        raise ConfigError(f"{what} {value!r} contains control characters (a newline, tab ...)",
                          hint="use printable characters only")


def check_pki_permissions(path: Path) -> None:
    """Refuse a pki that someone else can have changed: its directories must be ours and
    not writable by group or others (private/ not accessible at all), and the files
    trustboot reads back must not be links or writable by others."""
    path = Path(path)
    check_owned_dir(path, "pki directory")
    for sub in PUBLIC_DIRS:
        if (path / sub).exists() or (path / sub).is_symlink():
            check_not_link(path / sub, "pki directory")
            check_owned_dir(path / sub, "pki directory")
    if (path / "private").exists() or (path / "private").is_symlink():
        check_not_link(path / "private", "private directory")
        check_owned_dir(path / "private", "private directory", private=True)
    for name in PUBLIC_FILES:
        file = path / name
        try:
            st = os.lstat(file)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise ConfigError(
                f"{file} is a symbolic link, where a link is never expected",
                hint=f"replace the link with the file itself (or restore it from backup): "
                f"rm {file}",
            )
        if st.st_uid != os.geteuid():
            raise ConfigError(
                f"{file} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})",
                hint=f"chown {os.geteuid()} {file}  (after checking its contents)",
            )
        if stat.S_IMODE(st.st_mode) & 0o022:
            raise ConfigError(
                f"{file} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})",
                hint=f"chmod go-w {file}",
            )


def load_trusted_root(pki: Path) -> x509.Certificate:
    """The root certificate of ``pki`` that may be trusted (``verify --pki``, builds).

    A CA home (with index.json) is opened as :meth:`CertificateAuthority.open` does: its
    directories must be safe and ca.crt must have the fingerprint the index recorded. A
    directory with only trust material (``ca export`` output) is checked for ownership,
    permissions and links. Raises ConfigError naming the fix otherwise.
    """
    pki = Path(pki)
    if CertificateAuthority.exists(pki):
        return CertificateAuthority.open(pki).root_cert
    root = pki / "ca.crt"
    if not root.exists() and not root.is_symlink():
        raise ConfigError(
            f"{pki} holds no CA ({root} is missing)",
            hint="create one with `trustboot ca init --pki DIR`, or pass the root with "
            "--trust FILE",
        )
    check_pki_permissions(pki)
    return _parse_cert(read_capped(root, MAX_CERT_FILE, "root certificate", nofollow=True), root)


def _remove_temps(pki: Path) -> None:
    """Temp files (.NAME.XXXX.tmp) of killed runs; call only under the CA lock."""
    for sub in ("", *PUBLIC_DIRS, "private", "private/revoked"):
        remove_stale_temps(pki / sub, older_than=0.0)


def _entry(name: str, profile: str, cert: x509.Certificate, cert_rel: str,
           key_rel: str | None, pki: Path) -> IssuedEntry:
    return IssuedEntry(
        name=name, profile=profile, serial=cert.serial_number,
        subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
        sha256=fingerprint(cert), cert_file=cert_rel, key_file=key_rel, pki=pki,
    )


def _set_aside_leftovers(pki: Path, rels: list[str], now: dt.datetime) -> None:
    """Files an interrupted run left behind (not in the index) move to .abandoned/,
    never deleted: they may hold the only copy of a key someone wants back."""
    leftovers = [r for r in rels if (pki / r).exists() or (pki / r).is_symlink()]
    if not leftovers:
        return
    dest = pki / "private" / ".abandoned" / f"{now:%Y%m%dT%H%M%S}-{os.getpid()}"
    ensure_private_dir(pki / "private")
    make_dirs(dest, PRIVATE_DIR_MODE)
    for rel in leftovers:
        target = dest / rel.replace("/", "_")
        shutil.move(str(pki / rel), str(target))


def _public_key_from_csr(csr_pem: bytes) -> profiles.PublicKey:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        try:
            csr = x509.load_der_x509_csr(csr_pem)
        except ValueError:
            raise ConfigError("the CSR is neither PEM nor DER",
                              hint="create one with openssl req -new") from None
    if not csr.is_signature_valid:
        raise VerificationError("the CSR's self-signature does not verify",
                                rule="csr-signature", hint="recreate the CSR with its key")
    key = csr.public_key()
    profiles.key_spec_of(key)
    return key  # type: ignore[return-value]


def _same_public_key(key: PrivateKey, cert: x509.Certificate) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt))


def _token_ca_keys(pkcs11: tuple[str, Path], passphrases: PassphraseSource,
                   root_spec: profiles.KeySpec, issuing_spec: profiles.KeySpec,
                   ) -> tuple[PrivateKey, PrivateKey, dict[str, str]]:
    """Generate the root and issuing keys in a token (see keys/pkcs11.py)."""
    from trustboot.keys.pkcs11 import generate_key_pair, token_private_key

    token, module = pkcs11
    pin: list[bytes] = []

    def once(what: str) -> bytes:  # one PIN request for the two keys and their first uses
        if not pin:
            pin.append(passphrases(what))
        return pin[0]

    refs = {"module": str(module)}
    keys: list[PrivateKey] = []
    for role, spec in (("root", root_spec), ("issuing", issuing_spec)):
        refs[role] = generate_key_pair(token, module, once, label=f"trustboot-{role}-ca",
                                       kind=spec.kind, size=spec.size)
        keys.append(token_private_key(refs[role], module, once))
    return keys[0], keys[1], refs
