"""The CA home (easy-rsa-like layout) and every operation on it.

Layout of a pki directory (index version 2)::

    index.json           every certificate ever issued, with status, which root and issuing
                         CA are active, and the state of a root rotation: the source of truth
    config.json          choices made at init (organization, CRL/OCSP URLs, key types)
    certs_by_serial/     SERIAL.pem: every certificate ever issued; the file the index names
    private/  (0700)     keys/SERIAL.key: every key (encrypted PKCS#8, 0600), named by the
                         serial of the first certificate issued for it (a renewal with the
                         same key shares the file)
    log.jsonl            append-only, hash-chained log of every CA operation (see oplog.py)
    crl.pem              current CRL, signed by the active issuing CA
    root-crl.pem         the active root's CRL (of the CA certificates it issued), signed by
                         it; only with `ca crl --root`: a TLS server that checks the CRL of
                         every CA of a client's chain (nginx ssl_crl) needs it besides crl.pem
    crls/SERIAL.pem      the CRL of a previous issuing CA (serial SERIAL), signed by it:
                         written when a rotation replaces it as the active one (empty when
                         it revoked nothing) and when a leaf it issued is revoked, while
                         its key is here (without it, only crl.pem's revocations are kept)
    index.txt            index.json in OpenSSL's `ca` index format, for familiar tools

and views that trustboot keeps current for people and other tools (derived from the index
after every change; trustboot itself reads the files the index names)::

    ca.crt               the active root;  issuing-ca.crt: the active issuing CA
    chain.pem            active issuing + root: the certificates every signature carries
    issued/NAME.crt      the current certificate of NAME (the newest valid one)
    private/NAME.key     its key (a copy of private/keys/SERIAL.key); private/ca.key and
                         private/issuing-ca.key: the keys of the active CA certificates

A view is never trusted: one whose content is not a certificate the index recorded under
that name (or is a link) makes the CA refuse to load; one left stale by a killed run is
refreshed by the next write. A CA home of index version 1 (ca.crt, issued/NAME.crt and
private/NAME.key were the index's own files) is migrated on its first write: keys are copied
to private/keys/, the index is repointed and becomes version 2 (the old files stay as views).

Crash safety: every file is written atomically and index.json is written last, so a
process killed at any moment leaves files that the index does not mention (ignored) but
never an index that points at nothing. Temp files of a killed run are removed by the next
operation (under the lock, nobody else writes). The log is appended after the index commit,
so index.json carries the entries its last change owes the log and the line the last one
gets ("log"): the next write appends what a killed run did not (marked "recovered"), and a
log that ends before that change, holds other entries there, or never mentions a
certificate of the index is refused as a loss, never papered over.

Trust: the pki and its directories must be owned by the user and not writable by group
or others (anyone who can write to a directory can replace its files); files inside are
never followed through symbolic links; and every certificate read back must have the
SHA-256 fingerprint that index.json recorded when it was issued.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization

from trustboot.ca import profiles
from trustboot.ca.profiles import CAOptions, PrivateKey
from trustboot.cms.revocation import crl_reason as _crl_reason
from trustboot.cms.verify import dns_match
from trustboot.errors import ConfigError, OperationalError, VerificationError
from trustboot.fsutil import (
    PRIVATE_DIR_MODE,
    atomic_write,
    check_lock_file,
    check_not_link,
    check_owned_dir,
    check_parents,
    check_private_file,
    ensure_private_dir,
    locked,
    make_dirs,
    others_can_write,
    read_capped,
    read_private_file,
    remove_stale_temps,
    write_private_file,
)
from trustboot.keys import keyfile
from trustboot.secrets import PassphraseSource, asked_once
from trustboot.text import not_utf8

if TYPE_CHECKING:
    from trustboot.ca import oplog

# The operation log (oplog), getpass and shutil are imported by the operations that write:
# reading the CA (`trustboot sign NAME`, the revocation check of every key) never needs
# them, and signing in a CI loop pays its imports on every call.

INDEX_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 is migrated on the first write
ROOT_NAME = "root-ca"
ISSUING_NAME = "issuing-ca"
RESERVED_NAMES = {ROOT_NAME, ISSUING_NAME, "ca", "chain", "crl"}

PUBLIC_DIRS = ("issued", "revoked", "certs_by_serial")
# The previous issuing CAs' CRLs (crl_path): made on the first such revocation, then held
# to the rules of PUBLIC_DIRS (never a link, ours, swept of killed runs' temps).
CRL_DIR = "crls"
# Directories of keys under private/ (private/.abandoned is only ever written to).
PRIVATE_SUBDIRS = ("private/keys", "private/revoked")
# The root's CRL (see the layout above). Rarely reissued, so valid for a year by default.
ROOT_CRL = "root-crl.pem"
ROOT_CRL_DAYS = 365
# Files trustboot reads back from the pki; none is ever a link or writable by others.
PUBLIC_FILES = ("index.json", "config.json", "ca.crt", "issuing-ca.crt", "chain.pem",
                "crl.pem", ROOT_CRL, "index.txt", "log.jsonl")
# Caps for reads from the pki: nothing trustboot writes there comes close.
MAX_CERT_FILE = 1 << 20
MAX_INDEX_FILE = 64 << 20
MAX_CRL_FILE = 64 << 20

# The longest text the CA appends to --name in its certificates' common names: the
# rotated issuing CA's (rotation.numbered_cn), with room for the 9999th rotation; an
# X.509 common name holds 64 characters at most (64 bytes of UTF-8, as the certificate
# builder counts). A longer name, from a CA made before this limit, is cut to fit there.
MAX_COMMON_NAME = 64
CA_NAME_SUFFIX = " Issuing CA 9999"
MAX_CA_NAME = MAX_COMMON_NAME - len(CA_NAME_SUFFIX)

DEFAULT_DAYS = {"root": 20 * 365, "issuing": 5 * 365, "codesign": 2 * 365,
                "server": 397, "client": 397}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def spki_sha256(public_key: object) -> str:
    """SHA-256 of a public key's SubjectPublicKeyInfo: which certificates share a key."""
    der = public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


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
    status: str = "valid"  # valid | revoked (leaves) | retired (CAs); expired is computed
    revoked_at: str | None = None
    revocation_reason: str | None = None
    sans: list[str] = field(default_factory=list)
    issuer_sha256: str | None = None  # the issuing certificate (a root: itself)
    key_sha256: str | None = None  # spki_sha256 of its public key
    retired_at: str | None = None
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
                "a backup",
            )
        return data

    def load_cert(self) -> x509.Certificate:
        """The certificate, checked against the index's fingerprint."""
        return _parse_cert(self.read_cert_pem(), self.cert_path)

    def not_after_dt(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.not_after)

    def effective_status(self, now: dt.datetime | None = None) -> str:
        if self.status in ("revoked", "retired"):
            return self.status
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
        """A row of index.json, each field checked for its type and form (ValueError
        naming the field): the index may have been edited by hand, and a wrong type
        would otherwise surface as an internal error far from it."""
        if not isinstance(data, dict):
            raise ValueError(f"an entry is {type(data).__name__}, not an object")
        for key, check in _RECORD_FIELDS.items():
            if key not in data:
                if key in _OPTIONAL_FIELDS:
                    continue
                raise ValueError(f"an entry has no {key}")
            value = data[key]
            if value is None and key in _NULLABLE_FIELDS:
                continue
            if not isinstance(value, str if key != "sans" else list) or not check(value):
                shown = repr(value) if len(repr(value)) <= 80 else f"{repr(value)[:80]}..."
                raise ValueError(f"{key} {shown} is not {_FIELD_FORMS[key]}")
        if unknown := sorted(set(data) - set(_RECORD_FIELDS)):
            raise ValueError(f"an entry has unknown fields {', '.join(unknown)}")
        return cls(**(data | {"serial": int(data["serial"], 16)}), pki=pki)


def _inside_pki(rel: str) -> bool:
    # paths in the index stay inside the pki, whoever wrote the index
    return bool(rel) and not rel.startswith("/") and ".." not in Path(rel).parts


def _utc_time(value: str) -> bool:
    try:
        return dt.datetime.fromisoformat(value).tzinfo is not None  # compared with aware ones
    except ValueError:
        return False


# The reasons `ca revoke` records (index.json's revocation_reason) and the CRLReason each
# becomes: one table for the CLI's choices, the index check and the CRL.
REVOCATION_REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key_compromise": x509.ReasonFlags.key_compromise,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
}

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SERIAL = re.compile(r"[0-9a-f]{1,40}")  # 159 random bits; 20 octets at most (RFC 5280)
_ENTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # profiles.check_name's rule
_CA_STATUSES = ("valid", "revoked", "retired")
# Each field of an index.json entry (IssuedEntry's), what it must look like and how that is
# said; sans is a list, every other field a string, those in _NULLABLE_FIELDS or null.
_RECORD_FIELDS: dict[str, Any] = {
    "name": lambda v: bool(_ENTRY_NAME.fullmatch(v)) and ".." not in v,
    "profile": lambda v: v in ("root", "issuing", *profiles.LEAF_PROFILES),
    "serial": lambda v: bool(_SERIAL.fullmatch(v)),
    "subject": lambda v: True,
    "not_before": _utc_time,
    "not_after": _utc_time,
    "sha256": lambda v: bool(_HEX64.fullmatch(v)),
    "cert_file": _inside_pki,
    "key_file": _inside_pki,
    "status": lambda v: v in _CA_STATUSES,
    "revoked_at": _utc_time,
    "revocation_reason": lambda v: v in REVOCATION_REASONS,
    "sans": lambda v: all(isinstance(n, str) for n in v),
    "issuer_sha256": lambda v: bool(_HEX64.fullmatch(v)),
    "key_sha256": lambda v: bool(_HEX64.fullmatch(v)),
    "retired_at": _utc_time,
}
_FIELD_FORMS = {
    "name": "a certificate name (A-Z a-z 0-9 . _ -)",
    "profile": f"one of root, issuing, {', '.join(profiles.LEAF_PROFILES)}",
    "serial": "a serial number in lowercase hex",
    "subject": "a string",
    "status": f"one of {', '.join(_CA_STATUSES)}",
    "revocation_reason": f"one of {', '.join(REVOCATION_REASONS)} (or null)",
    "sans": "a list of names",
} | dict.fromkeys(("sha256", "issuer_sha256", "key_sha256"),
                  "a SHA-256 fingerprint (64 lowercase hex digits)") | dict.fromkeys(
    ("cert_file", "key_file"), "a path inside the pki") | dict.fromkeys(
    ("not_before", "not_after", "revoked_at", "retired_at"),
    "an ISO 8601 time with its UTC offset")
_NULLABLE_FIELDS = {"key_file", "revoked_at", "revocation_reason", "issuer_sha256",
                    "key_sha256", "retired_at"}
# fields an index written by an older trustboot may lack (IssuedEntry has defaults)
_OPTIONAL_FIELDS = {"status", "revoked_at", "revocation_reason", "sans", "issuer_sha256",
                    "key_sha256", "retired_at"}


@dataclass(frozen=True)
class IssueResult:
    entry: IssuedEntry
    certificate: x509.Certificate
    warnings: list[str]


@dataclass
class IndexState:
    """index.json besides its entries: what is active, and where a root rotation stands."""

    version: int = INDEX_VERSION
    crl_number: int = 0
    active: dict[str, str] = field(default_factory=dict)  # "root"/"issuing" -> sha256
    rotation: dict[str, Any] | None = None  # a root rotation in progress (see rotation.py)
    last_rotation: dict[str, Any] | None = None
    log_chained_from: int | None = None  # line of log.jsonl where the hash chain starts
    # the log entries of the last change and the line of the last one (see _expect_log);
    # None in an index written before the log was tied to it
    log: dict[str, Any] | None = None
    # the last change when work it does after its index commit (CRLs, the log) is not
    # done yet: {"op": "rotate-issuing", "issuing": sha256}; every other commit clears it,
    # and so does the change itself once done (see :meth:`_commit`, :meth:`_done`)
    unfinished: dict[str, Any] | None = None


class CertificateAuthority:
    """A loaded CA home. Use :meth:`init` to create one and :meth:`open` to load one."""

    def __init__(self, path: Path, config: dict[str, Any], entries: list[IssuedEntry],
                 state: IndexState) -> None:
        self.path = path
        self.config = config
        self.entries = entries
        self.state = state
        self._load_active()

    def _load_active(self) -> None:
        self.root_cert = self.active_entry("root").load_cert()
        self.issuing_cert = self.active_entry("issuing").load_cert()

    @property
    def crl_number(self) -> int:
        return self.state.crl_number

    @crl_number.setter
    def crl_number(self, value: int) -> None:
        self.state.crl_number = value

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
        ca = cls(path, *_read_index(path))
        ca._check_views()
        return ca

    def active_entry(self, role: str) -> IssuedEntry:
        """The active root (``role="root"``) or issuing CA (``"issuing"``)."""
        sha = self.state.active.get(role)
        entry = next((e for e in self.entries if e.profile == role and e.sha256 == sha), None)
        if entry is None:
            raise ConfigError(f"the CA in {self.path} is damaged: index.json has no active "
                              f"{role} CA",
                              hint="run `trustboot ca check` and restore from backup")
        return entry

    def by_sha256(self, sha: str | None) -> IssuedEntry | None:
        return next((e for e in self.entries if e.sha256 == sha), None)

    def crl_pem(self) -> bytes:
        """crl.pem, refused unless the issuing CA signed it and it lists every revocation."""
        return self._checked_crl(self.path / "crl.pem", self.active_entry("issuing"))

    def has_root_crl(self) -> bool:
        """Whether ``ca crl --root`` made root-crl.pem (a link there counts: it is refused
        where the CRL is read, never taken as "none")."""
        path = self.path / ROOT_CRL
        return path.exists() or path.is_symlink()

    def root_crl_pem(self) -> bytes | None:
        """root-crl.pem (None when ``ca crl --root`` never made one), refused unless the
        active root signed it and it lists every revocation of the root's."""
        if not self.has_root_crl():
            return None
        return self._checked_crl(self.path / ROOT_CRL, self.active_entry("root"))

    def _previous_issuing(self) -> list[IssuedEntry]:
        """The issuing CAs that were active once and are not now: neither the active one
        nor the next one of a root rotation under way (made by `rotate root begin`, active
        from its finish: `ca check` took it for a previous CA without a CRL and told the
        operator to retire it, which would break the rotation)."""
        active = self.active_entry("issuing").sha256
        upcoming = (self.state.rotation or {}).get("new_issuing")
        return [e for e in self.entries if e.profile == "issuing"
                and e.sha256 not in (active, upcoming)]

    def previous_crls(self) -> list[tuple[Path, IssuedEntry | None]]:
        """The files in crls/ with the previous issuing CA each is the CRL of (crl_path's
        naming: its serial in hex); None for a file that names no previous issuing CA."""
        directory = self.path / CRL_DIR
        if not directory.is_dir():
            return []
        # every issuing CA but the active one, the next one of a root rotation included:
        # its CRL, which `ca crl` wrote there before it was told apart, is one of ours
        active = self.active_entry("issuing").sha256
        previous = {f"{e.serial:x}.pem": e for e in self.entries
                    if e.profile == "issuing" and e.sha256 != active}
        return [(directory / name, previous.get(name))
                for name in sorted(os.listdir(directory)) if not name.startswith(".")]

    def previous_issuers_owing_crl(self) -> list[IssuedEntry]:
        """The previous issuing CAs, not retired, that revoked a leaf: each one's CRL
        belongs in crls/ (crl_path), or its revocations are on no CRL at all."""
        return [e for e in self._previous_issuing()
                if e.status != "retired" and self._crl_entries(e)]

    def previous_issuers_without_crl(self, *, with_key: bool = True) -> list[IssuedEntry]:
        """The previous issuing CAs, not retired, whose key is in the CA home (any, with
        ``with_key=False``) but whose CRL (crls/SERIAL.pem) is not: a rotation killed
        before writing it, or one by a version that wrote it only for a CA that had
        revoked something."""
        return [e for e in self._previous_issuing()
                if e.status != "retired" and not self.crl_path(e).exists()
                and not self.crl_path(e).is_symlink()
                and (not with_key or (e.key_file is not None and e.key_path.exists()))]

    def _missing_previous_crls(self) -> list[tuple[Path, IssuedEntry]]:
        """(crl_path, issuer) of each previous issuing CA that owes a CRL and has none."""
        return [(self.crl_path(e), e) for e in self.previous_issuers_owing_crl()
                if not self.crl_path(e).exists() and not self.crl_path(e).is_symlink()]

    def previous_crl_pems(self) -> dict[str, bytes]:
        """Each CRL in crls/ by file name, refused (ConfigError) unless the previous issuing
        CA it is named for signed it and it lists that CA's every revocation; refused too
        when a previous issuing CA that revoked leaves has no CRL there (handing on crls/
        without it would hide those revocations)."""
        missing = self._missing_previous_crls()
        if missing:
            path, owing = missing[0]
            raise ConfigError(
                f"{path} is missing: previous issuing CA {owing.serial:x} revoked "
                f"{len(self._crl_entries(owing))} certificate(s) that no CRL of {self.path} "
                "lists",
                hint="write it: trustboot ca crl (it needs that CA's key in the CA home); or, "
                f"once nothing depends on that CA, retire it: trustboot ca rotate issuing "
                f"--retire {owing.serial:x}")
        out: dict[str, bytes] = {}
        for path, issuer in self.previous_crls():
            if issuer is None:
                raise ConfigError(f"{path} is not the CRL of a previous issuing CA of this CA",
                                  hint=f"move it out of {path.parent}")
            if issuer.status != "retired":  # a retired CA's chain leaves trust and exports
                out[path.name] = self._checked_crl(path, issuer)
        return out

    def _checked_crl(self, path: Path, issuer: IssuedEntry) -> bytes:
        conflicts = self._crl_conflicts(path, issuer)
        if conflicts:
            raise VerificationError(
                f"{self.path / 'index.json'} disagrees with the signed CRL: {conflicts[0]}",
                hint="restore the index.json that matches the CRL from a backup; see "
                f"`trustboot ca check --pki {self.path}`", rule="index-conflict")
        data, problems = self._crl_problems(path, issuer)
        if problems:
            hint = "regenerate it: trustboot ca crl" + (" --root" if issuer.profile == "root"
                                                        else "")
            if issuer.profile == "issuing" and path.parent == self.path / CRL_DIR and (
                    issuer.key_file is None or not issuer.key_path.exists()):
                # a previous issuing CA's key gone: `ca crl` cannot sign its CRL
                hint = ("restore that issuing CA's key to the CA home and run trustboot ca "
                        "crl; or, once nothing depends on it, retire it: trustboot ca "
                        f"rotate issuing --retire {issuer.serial:x}")
            raise ConfigError(f"{path} {problems[0]}", hint=hint)
        return data

    def _crl_problems(self, path: Path, issuer: IssuedEntry,
                      now: dt.datetime | None = None) -> tuple[bytes, list[str]]:
        """The CRL at ``path`` and what is wrong with it as ``issuer``'s CRL: not PEM, not
        signed by it, another issuer's name, past its nextUpdate (only with ``now``), a
        revocation of ``issuer``'s it does not list (a revoke killed between its index
        commit and its CRL: never hand that on)."""
        data = read_capped(path, MAX_CRL_FILE, "CRL", nofollow=True)
        try:
            crl = x509.load_pem_x509_crl(data)
        except ValueError:
            return data, ["is not a PEM CRL"]
        issuer_cert = self._issuer_cert(issuer)
        what = ("this CA's root" if issuer.profile == "root"
                else "this CA's issuing CA" if issuer.sha256 == self.active_entry("issuing").sha256
                else f"this CA's previous issuing CA {issuer.serial:x}")
        if not crl.is_signature_valid(issuer_cert.public_key()):  # type: ignore[arg-type]
            return data, [f"is not signed by {what}"]
        if crl.issuer != issuer_cert.subject:
            return data, [f"names issuer {crl.issuer.rfc4514_string()}, not {what}"]
        problems = []
        if now is not None and (crl.next_update_utc is None or crl.next_update_utc < now):
            problems.append(f"is out of date (nextUpdate {crl.next_update_utc}, before "
                            f"{now.isoformat(timespec='seconds')})")
        listed = {r.serial_number: _crl_reason(r) for r in crl}
        problems += [f"does not list revoked {e.name} (serial {e.serial:x}): a revocation "
                     "was not finished" for e in self._crl_entries(issuer)
                     if e.serial not in listed]
        problems += [f"lists {e.name} (serial {e.serial:x}) as revoked for "
                     f"{listed[e.serial]}, which the index has raised to key_compromise: that "
                     "revocation was not finished" for e in self._crl_entries(issuer)
                     if e.serial in listed and _raised_since(e, listed[e.serial])]
        return data, problems

    @property
    def options(self) -> CAOptions:
        return CAOptions(
            organization=self.config.get("organization"),
            crl_url=self.config.get("crl_url"),
            ocsp_url=self.config.get("ocsp_url"),
        )

    def chain(self) -> list[x509.Certificate]:
        """[issuing, root] of the active chain: what new signatures carry."""
        return [self.issuing_cert, self.root_cert]

    def issuer_entry(self, entry: IssuedEntry) -> IssuedEntry | None:
        """The CA certificate that issued ``entry`` (a root: itself)."""
        if entry.issuer_sha256 is not None:
            return self.by_sha256(entry.issuer_sha256)
        # An index of version 1 records no issuer: it had one root and one issuing CA.
        return self.active_entry("root" if entry.profile in ("root", "issuing")
                                 else "issuing")

    def chain_for(self, entry: IssuedEntry) -> list[x509.Certificate]:
        """The issuers of ``entry``, nearest first, root last (what its signatures carry)."""
        chain: list[x509.Certificate] = []
        current = entry
        for _ in range(2):
            issuer = self.issuer_entry(current)
            if issuer is None or issuer.sha256 == current.sha256:
                break
            chain.append(issuer.load_cert())
            current = issuer
        return chain

    def issuing_entry_of(self, cert: x509.Certificate) -> IssuedEntry | None:
        """The issuing CA of this CA that signed ``cert`` (None: not issued by this CA)."""
        for e in reversed(self.entries):
            if e.profile != "issuing" or e.subject != cert.issuer.rfc4514_string():
                continue
            try:
                cert.verify_directly_issued_by(e.load_cert())
            except (InvalidSignature, ValueError, TypeError):
                continue
            return e
        return None

    def trusted_roots(self) -> list[x509.Certificate]:
        """Roots that firmware built now must trust: the active one first, and during a
        root rotation the other root too (the next one, or the previous until retired)."""
        roots = [self.root_cert]
        rotation = self.state.rotation
        if rotation:
            for sha in (rotation.get("new_root"), rotation.get("old_root")):
                e = self.by_sha256(sha)
                if e is not None and e.status != "retired" and e.sha256 != self.active_entry(
                        "root").sha256:
                    roots.append(e.load_cert())
        return roots

    def trusted_issuing(self) -> list[x509.Certificate]:
        """Issuing CAs under the trusted roots that are not retired (for CERT=)."""
        roots = {fingerprint(c) for c in self.trusted_roots()}
        return [e.load_cert() for e in self.entries
                if e.profile == "issuing" and e.status != "retired"
                and (e.issuer_sha256 in roots or e.issuer_sha256 is None)]

    def chain_retired(self, entry: IssuedEntry) -> bool:
        """Whether a CA certificate above ``entry`` (or ``entry`` itself) is retired."""
        current: IssuedEntry | None = entry
        for _ in range(3):
            if current is None:
                return False
            if current.status == "retired":
                return True
            nxt = self.issuer_entry(current)
            if nxt is None or nxt.sha256 == current.sha256:
                return False
            current = nxt
        return False

    def status_of(self, entry: IssuedEntry, now: dt.datetime | None = None) -> str:
        """valid | expired | revoked | retired (its chain was retired)."""
        status = entry.effective_status(now)
        if status in ("valid", "expired") and self.chain_retired(entry):
            return "retired"
        return status

    def key_id(self, entry: IssuedEntry) -> str:
        if entry.key_sha256 is None:
            entry.key_sha256 = spki_sha256(entry.load_cert().public_key())
        return entry.key_sha256

    def compromised_keys(self) -> dict[str, IssuedEntry]:
        """The keys (SPKI sha256) revoked as compromised, each with a certificate that
        says so. Under any name: a compromised key is never trusted or certified again,
        whatever name it comes back under (a CSR or a token key is certified by name)."""
        return {self.key_id(e): e for e in self.entries
                if e.status == "revoked" and e.revocation_reason == "key_compromise"}

    def compromised_by(self, public_key: object) -> IssuedEntry | None:
        """A certificate that revoked ``public_key`` as compromised; None if none did."""
        return self.compromised_keys().get(spki_sha256(public_key))

    def refuse_compromised(self, public_key: object, what: str) -> None:
        """ConfigError if ``public_key`` was revoked as compromised (``what``: whose key
        it is, for the message)."""
        revoked = self.compromised_by(public_key)
        if revoked is not None:
            raise ConfigError(
                f"{what} was revoked as compromised (certificate {revoked.name!r}, serial "
                f"{revoked.serial:x}): it must not be certified again",
                hint="make a new key (a new CSR, or a new key in the token) and certify "
                     "that")

    def current(self, name: str, now: dt.datetime | None = None) -> IssuedEntry | None:
        """The certificate that signs as ``name``: the newest one that is valid now (not
        revoked, not expired, its chain not retired, its key not revoked as compromised);
        None when there is none."""
        now = now or utcnow()
        candidates = [e for e in self._named(name) if e.profile in profiles.LEAF_PROFILES]
        compromised = self.compromised_keys() if candidates else {}
        for e in reversed(candidates):  # the index is in issuance order
            if (e.status == "valid" and e.not_after_dt() > now
                    and dt.datetime.fromisoformat(e.not_before) <= now + profiles.BACKDATE
                    and not self.chain_retired(e) and self.key_id(e) not in compromised):
                return e
        return None

    def get(self, name: str, now: dt.datetime | None = None) -> IssuedEntry:
        """The certificate called ``name``: the current one (see :meth:`current`), else the
        newest (revoked or expired: the caller reports it). ``root-ca``/``issuing-ca``
        name the active CA certificates."""
        if name in (ROOT_NAME, ISSUING_NAME):
            return self.active_entry("root" if name == ROOT_NAME else "issuing")
        matches = self._named(name)
        if not matches:
            known = ", ".join(sorted({e.name for e in self.entries if e.profile in
                                      profiles.LEAF_PROFILES})) or "none"
            raise ConfigError(
                f"no certificate named {name!r} in {self.path}",
                hint=f"issued names: {known}; issue one with `trustboot ca issue`",
            )
        return self.current(name, now) or matches[-1]

    def _named(self, name: str) -> list[IssuedEntry]:
        """The certificates called ``name``, in issuance order; else those whose name
        differs only in case (iPXE's `--signer` does not tell them apart, and
        :meth:`_check_duplicate` keeps one valid at a time)."""
        exact = [e for e in self.entries if e.name == name]
        return exact or [e for e in self.entries if _same_name(e.name, name)]

    def find_serial(self, serial: int) -> IssuedEntry | None:
        return next((e for e in self.entries if e.serial == serial), None)

    def key_pem(self, entry: IssuedEntry) -> bytes:
        """The encrypted key file of ``entry`` (0600, ours, never through a link)."""
        return read_private_file(entry.key_path, f"key file of {entry.name!r}")

    def _token_refs(self) -> dict[str, str] | None:
        token = self.config.get("pkcs11")
        return token if isinstance(token, dict) else None

    def load_ca_key(self, entry: IssuedEntry, passphrases: PassphraseSource) -> PrivateKey:
        """The private key of a CA certificate, checked against it."""
        token = self._token_refs()
        if token:  # a key in a token: it signs there, asking ``passphrases`` for the PIN
            from trustboot.keys.pkcs11 import token_private_key

            role = "root" if entry.profile == "root" else "issuing"
            if entry.sha256 != self.active_entry(role).sha256:
                raise self.token_unsupported()
            # the token holds whatever is under the label now: the CA certificate says
            # which key it must be (as for a key file, below)
            key: PrivateKey = token_private_key(
                token[role], Path(token["module"]), passphrases,
                certificate=entry.load_cert(),
                what=f"the {entry.profile} CA certificate (serial {entry.serial:x})")
            return key
        what = "the root CA key" if entry.profile == "root" else "the issuing CA key"
        key = keyfile.load_key(entry.key_path, passphrases, what)
        if not _same_public_key(key, entry.load_cert()):
            raise ConfigError(f"{entry.key_file} does not match the {entry.profile} CA "
                              f"certificate (serial {entry.serial:x})",
                              hint="the CA is damaged; restore it from backup")
        return key

    def _check_still_active(self, unlocked: IssuedEntry, *, role: str = "active") -> None:
        """Under the lock, after _begin_write: the CA whose key was unlocked before it (an
        unlock or a prompt never holds the lock) is still the active one of its role (with
        ``role="next"``: still the next issuing CA of the root rotation under way). A
        rotation in between would have the old key sign what names its successor as issuer
        (a certificate or CRL that does not verify, with exit 0)."""
        kind = "root" if unlocked.profile == "root" else "issuing"
        if role == "next":
            current = (self.state.rotation or {}).get("new_issuing")
        else:
            current = self.active_entry(kind).sha256
        if current != unlocked.sha256:
            raise OperationalError(
                f"the {kind} CA of {self.path} was rotated while this command ran "
                "(after it unlocked the previous one's key); nothing was changed",
                hint="run the command again")

    def load_issuing_key(self, passphrases: PassphraseSource) -> PrivateKey:
        return self.load_ca_key(self.active_entry("issuing"), passphrases)

    def token_unsupported(self) -> ConfigError:
        return ConfigError(
            f"the CA keys of {self.path} live in a PKCS#11 token: rotating them is not "
            "supported yet",
            hint="create a new CA (`trustboot ca init --pkcs11 ...`) and build firmware that "
            "trusts both roots (`ipxe build --trust old.pem --trust new.pem`)")

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
        check_text(common_name, "--name")
        # counted in bytes of UTF-8, as the certificate builder counts a common name: 30
        # accented letters (60 bytes) made '<name> Root CA' too long, an exit 70
        size = len(common_name.encode())
        if not common_name.strip() or size > MAX_CA_NAME:
            length = (str(size) if size == len(common_name) else
                      f"{len(common_name)}, {size} bytes of UTF-8: a letter outside ASCII "
                      "counts as 2 to 4")
            raise ConfigError(
                f"--name must be 1-{MAX_CA_NAME} characters (it has {length})",
                hint="the CA's certificates are called '<name> Root CA', '<name> Issuing "
                "CA 2' ... (up to a 4-digit rotation number), and X.509 limits a common "
                "name to 64 bytes of UTF-8: shorten it")
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
        check_parents(path, "pki directory")  # before creating anything there
        # What this run made, undone if it fails before the CA exists (the index): never
        # a directory or file that was there before, nor one another process put there.
        made = _InitMade(path)
        make_dirs(path, created=made.dirs)
        try:
            return cls._init_in(path, passphrases, made, common_name=common_name,
                                root_spec=root_spec, issuing_spec=issuing_spec,
                                root_days=root_days, issuing_days=issuing_days,
                                options=options, now=now, pkcs11=pkcs11, warnings=warnings)
        except BaseException:
            if not cls.exists(path):
                made.remove_dirs()
            raise

    @classmethod
    def _init_in(cls, path: Path, passphrases: PassphraseSource, made: _InitMade, *,
                 common_name: str, root_spec: profiles.KeySpec,
                 issuing_spec: profiles.KeySpec, root_days: int, issuing_days: int,
                 options: CAOptions | None, now: dt.datetime,
                 pkcs11: tuple[str, Path] | None, warnings: list[str],
                 ) -> tuple[CertificateAuthority, list[str]]:
        """init, once ``path`` exists: its files are recorded in ``made`` as they are
        written and removed (under the lock) if the CA is not made."""
        if cls.exists(path):
            raise ConfigError(
                f"a CA already exists in {path}",
                hint="use another --pki directory; trustboot never overwrites a CA",
            )
        check_pki_permissions(path)
        token_refs: dict[str, str] = {}
        recorded: list[str] = []  # the token pairs recorded before generating them
        if pkcs11 is None:
            passphrase = passphrases("the new CA keys")
            keyfile.check_passphrase(passphrase, "the CA passphrase")
            root_key = root_spec.generate()
            issuing_key = issuing_spec.generate()
        lock_was_there = made.has(".lock")

        def make_again(directory: Path) -> None:
            # a failed run we waited for removed the directory it had made: this run
            # makes it now (and removes it, with its .lock, if it fails too)
            nonlocal lock_was_there
            make_dirs(directory, created=made.dirs)
            lock_was_there = False

        with locked(path / ".lock", make_parent=make_again):
            if cls.exists(path):
                raise ConfigError(f"a CA already exists in {path}")
            _remove_temps(path)
            if pkcs11 is not None:
                passphrases = asked_once(passphrases)  # the PIN, for the cleanup too
            try:
                if pkcs11 is not None:  # under the lock: the record of pending keys is ours
                    root_key, issuing_key = _token_ca_keys(path, pkcs11, passphrases,
                                                           root_spec, issuing_spec, token_refs,
                                                           recorded, made)
                    passphrase = b""
                return cls._init_locked(path, common_name, root_spec, issuing_spec,
                                        root_days, issuing_days, options, now, warnings,
                                        root_key, issuing_key, token_refs, passphrase, made)
            except BaseException:
                # not once the index is written: from then on the keys are the CA's
                if not cls.exists(path):
                    if pkcs11 is not None and recorded:
                        from trustboot.keys.pkcs11 import destroy_generated

                        # all recorded, made or not: a pair whose generation failed
                        # half-way may be in the token too
                        if destroy_generated(pkcs11[0], pkcs11[1], passphrases, recorded):
                            # else kept: the next run removes them by this record
                            _pending_token_keys(path).unlink(missing_ok=True)
                    made.remove_files()
                    if not lock_was_there:  # (a waiter then locks the path anew)
                        (path / ".lock").unlink(missing_ok=True)
                raise

    @classmethod
    def _init_locked(cls, path: Path, common_name: str, root_spec: profiles.KeySpec,
                     issuing_spec: profiles.KeySpec, root_days: int, issuing_days: int,
                     options: CAOptions | None, now: dt.datetime, warnings: list[str],
                     root_key: PrivateKey, issuing_key: PrivateKey,
                     token_refs: dict[str, str], passphrase: bytes, made: _InitMade,
                     ) -> tuple[CertificateAuthority, list[str]]:
        """The CA written into ``path``, its keys made: under the CA lock. ``made`` gets
        every directory and file it writes (the leftovers of a killed run set aside
        first: a file found under one of these names afterwards is this run's)."""
        _set_aside_leftovers(path, [*_INIT_FILES, ROOT_CRL, "log.jsonl"], now, made)
        for sub in PUBLIC_DIRS:
            make_dirs(path / sub, created=made.dirs)
        ensure_private_dir(path / "private", created=made.dirs)
        check_pki_permissions(path)
        made.files += _INIT_FILES
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
        key_rels: list[str | None] = [None, None]
        if not token_refs:
            for i, (cert, key) in enumerate(((root_cert, root_key),
                                             (issuing_cert, issuing_key))):
                key_rels[i] = _key_rel(cert.serial_number)
                ensure_private_dir(path / "private" / "keys", created=made.dirs)
                _set_aside_leftovers(path, [str(key_rels[i])], now, made)
                made.files.append(str(key_rels[i]))
                keyfile.write_key(path / str(key_rels[i]), key, passphrase)
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
        for cert in (root_cert, issuing_cert):
            made.files.append(_cert_rel(cert.serial_number))
            atomic_write(path / _cert_rel(cert.serial_number), pem(cert))
        entries = [
            _entry(ROOT_NAME, "root", root_cert, key_rels[0], path, fingerprint(root_cert)),
            _entry(ISSUING_NAME, "issuing", issuing_cert, key_rels[1], path,
                   fingerprint(root_cert)),
        ]
        state = IndexState(crl_number=1, active={"root": entries[0].sha256,
                                                 "issuing": entries[1].sha256},
                           log_chained_from=1)
        ca = cls(path, config, entries, state)
        ca._write_crl(issuing_key, now, days=30, number=1)
        ca._refresh_views(now)
        ca._expect_log(ca._record("init", now, root=fingerprint(root_cert),
                                  issuing=fingerprint(issuing_cert),
                                  key_type=root_spec.label))
        ca._write_index()  # last: from here on the CA exists
        if token_refs:  # its token keys are the CA's now, not a run's leftovers
            _pending_token_keys(path).unlink(missing_ok=True)
        ca._append_log()
        return ca, warnings

    # ---- issue / renew ---------------------------------------------------------------

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
        csr_origin: str = "the CSR",
    ) -> IssueResult:
        """Issue a leaf certificate; its new key is written encrypted to private/keys/.
        ``csr_origin`` names the CSR in messages (its file, say)."""
        now = now or utcnow()
        if profile not in profiles.LEAF_PROFILES:
            raise ConfigError(
                f"unknown profile {profile!r}",
                hint=f"use one of {', '.join(profiles.LEAF_PROFILES)}",
            )
        profiles.check_name(name)
        if name.lower() in RESERVED_NAMES:  # as iPXE's --signer would match them
            raise ConfigError(f"the name {name!r} is reserved for the CA itself",
                              hint="choose another name")
        san_names = [profiles.parse_san(s) for s in (sans or [])]
        if profile == "server" and not san_names:
            raise ConfigError("a server certificate needs at least one DNS name or IP address",
                              hint="trustboot ca issue server boot.example.net")
        days = days if days is not None else DEFAULT_DAYS[profile]
        _check_days(days, profile)
        try:
            self._check_duplicate(name)
        except ConfigError:
            # The name may exist because a run was killed right after committing it: its
            # views are finished now, as any write would (nothing else changes).
            with locked(self.path / ".lock"):
                self._begin_write(now)
            raise
        warnings: list[str] = []
        # A key held elsewhere (a CSR's, or a token's public key): nothing is generated.
        external = csr_pem is not None or public_key is not None
        if csr_pem is not None:
            public_key = _public_key_from_csr(csr_pem, csr_origin)
        if public_key is not None:
            spec = profiles.check_public_key(public_key, for_ca=False)
            self.refuse_compromised(public_key, f"the key for {name!r}")
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
        issuing = self.active_entry("issuing")
        issuing_key = self.load_ca_key(issuing, ca_passphrases)
        new_key_pem: bytes | None = None
        if not external:
            assert key_passphrases is not None
            new_key_pem, public_key = _new_key(spec, key_passphrases, name)
        assert public_key is not None  # from the CSR, the token, or the new key
        with locked(self.path / ".lock"):
            self._begin_write(now)
            self._check_still_active(issuing)
            self._check_duplicate(name)
            entry, cert = self._add_leaf(name, profile, public_key, issuing_key, now=now,
                                         days=days, sans=san_names, new_key_pem=new_key_pem,
                                         key_rel=None)
            self._commit(now, self._record(
                "issue", now, name=name, profile=profile, serial=f"{entry.serial:x}",
                sha256=entry.sha256, key_type=spec.label, from_csr=csr_pem is not None))
            self._append_log()
        if now + dt.timedelta(days=days) - cert.not_valid_after_utc > dt.timedelta(seconds=1):
            # A leaf never outlives its issuer: say so instead of quietly shortening it.
            warnings.append(
                f"--days {days} reaches past the issuing CA, which expires "
                f"{cert.not_valid_after_utc:%Y-%m-%d}: the certificate ends then too "
                "(`trustboot ca rotate issuing` gives a newer issuing CA)")
        return IssueResult(entry, cert, warnings)

    def renew(
        self,
        name: str,
        ca_passphrases: PassphraseSource,
        key_passphrases: PassphraseSource | None = None,
        *,
        days: int | None = None,
        rekey: bool = False,
        key_type: str | None = None,
        now: dt.datetime | None = None,
    ) -> IssueResult:
        """A new certificate for the leaf ``name`` from the active issuing CA: same key, or
        a new one (``rekey``). The previous certificates stay valid until they expire or
        are revoked; the new one becomes current (the one that signs)."""
        now = now or utcnow()
        base = self._renewal_base(name, rekey)
        days = days if days is not None else DEFAULT_DAYS[base.profile]
        _check_days(days, base.profile)
        base_cert = base.load_cert()
        warnings: list[str] = []
        new_key_pem: bytes | None = None
        if rekey:
            spec = profiles.parse_key_type(
                key_type or profiles.key_spec_of(base_cert.public_key()).label, for_ca=False)
            if key_passphrases is None:
                raise ConfigError("a passphrase for the new key is needed")
            if w := profiles.ecdsa_warning(spec):
                warnings.append(w)
        elif key_type is not None:
            raise ConfigError("--key-type only applies with --rekey",
                              hint=f"trustboot ca renew {name} --rekey --key-type {key_type}")
        issuing = self.active_entry("issuing")
        issuing_key = self.load_ca_key(issuing, ca_passphrases)
        public_key: profiles.PublicKey = base_cert.public_key()  # type: ignore[assignment]
        if rekey:
            assert key_passphrases is not None
            new_key_pem, public_key = _new_key(spec, key_passphrases, name)
        sans = [profiles.parse_san(s) for s in base.sans]
        with locked(self.path / ".lock"):
            self._begin_write(now)
            self._check_still_active(issuing)
            base = self._renewal_base(name, rekey)
            name = base.name  # its stored spelling, whatever case the caller typed
            entry, cert = self._add_leaf(
                name, base.profile, public_key, issuing_key, now=now, days=days, sans=sans,
                new_key_pem=new_key_pem, key_rel=None if rekey else base.key_file)
            self._commit(now, self._record(
                "renew", now, name=name, profile=base.profile, serial=f"{entry.serial:x}",
                previous=f"{base.serial:x}", sha256=entry.sha256, rekey=rekey))
            self._append_log()
        return IssueResult(entry, cert, warnings)

    def _renewal_base(self, name: str, rekey: bool) -> IssuedEntry:
        """The certificate a renewal copies: the newest unrevoked one of ``name``."""
        entry = self.get(name)
        if entry.profile not in profiles.LEAF_PROFILES:
            raise ConfigError(f"{name!r} is a CA certificate: renew leaves only",
                              hint="rotate CA certificates: trustboot ca rotate issuing")
        leaves = [e for e in self.entries if e.name == entry.name]
        unrevoked = [e for e in leaves if e.status != "revoked"]
        if not rekey:
            compromised = self.compromised_keys()
            unrevoked = [e for e in unrevoked if self.key_id(e) not in compromised]
            if not unrevoked:
                raise ConfigError(
                    f"every certificate of {name!r} is revoked: its key must not be "
                    "certified again",
                    hint=f"renew with a new key: trustboot ca renew {name} --rekey")
        return (unrevoked or leaves)[-1]

    def _add_leaf(self, name: str, profile: str, public_key: profiles.PublicKey,
                  issuing_key: PrivateKey, *, now: dt.datetime, days: int,
                  sans: list[x509.GeneralName], new_key_pem: bytes | None,
                  key_rel: str | None, issuing: IssuedEntry | None = None,
                  not_after: dt.datetime | None = None,
                  ) -> tuple[IssuedEntry, x509.Certificate]:
        """Sign and store one leaf certificate (under the lock; the index is not written)."""
        # again under the lock: a revocation may have come in since the caller looked
        self.refuse_compromised(public_key, f"the key for {name!r}")
        issuing = issuing or self.active_entry("issuing")
        serial = self._new_serial()
        cert = profiles.build_certificate(
            profile=profile, subject_cn=name, public_key=public_key,
            issuer_cert=issuing.load_cert(), issuer_key=issuing_key, serial=serial,
            now=now, days=days, opts=self.options, sans=sans or None, not_after=not_after)
        if new_key_pem is not None:
            key_rel = _key_rel(serial)
            ensure_private_dir(self.path / "private" / "keys")
            _set_aside_leftovers(self.path, [key_rel], now)
            write_private_file(self.path / key_rel, new_key_pem)
        atomic_write(self.path / _cert_rel(serial), pem(cert))
        entry = _entry(name, profile, cert, key_rel, self.path, issuing.sha256)
        entry.sans = [str(s.value) for s in sans]
        self.entries.append(entry)
        return entry, cert

    # ---- revoke / crl ------------------------------------------------------------------

    REASONS = tuple(REVOCATION_REASONS)

    def revoke(self, name: str, ca_passphrases: PassphraseSource, *,
               reason: str = "unspecified", now: dt.datetime | None = None,
               serial: int | None = None) -> IssuedEntry:
        """Mark the current certificate of NAME (or the one with ``serial``) revoked and
        publish a new CRL. With reason key_compromise every valid certificate that
        shares its key, under any name, is revoked too."""
        now = now or utcnow()
        if reason not in self.REASONS:
            raise ConfigError(f"unknown revocation reason {reason!r}",
                              hint=f"use one of {', '.join(self.REASONS)}")
        issuing = self.active_entry("issuing")
        issuing_key = self.load_ca_key(issuing, ca_passphrases)
        # (before the lock, as the issuing key: a prompt never holds it)
        previous_keys = self._previous_issuer_keys(
            [self.issuer_entry(e) for e in self._revoke_targets(name, serial, reason)],
            ca_passphrases)
        with locked(self.path / ".lock"):
            self._begin_write(now)
            self._check_still_active(issuing)  # (and so the previous issuers are too)
            targets = self._revoke_targets(name, serial, reason)
            entry = targets[0]
            # A revoked certificate's key found compromised later: its reason changes (RFC
            # 5280 lets a CRL entry's reason change), so its key is refused everywhere.
            upgrade = (entry.status == "revoked" and reason == "key_compromise"
                       and entry.revocation_reason != "key_compromise")
            if entry.status == "revoked" and not upgrade:
                if entry in self._unlisted_revocations() or self._unlisted_previous(
                        entry, previous_keys):
                    # A run killed after its index commit: finish it (the CRL), as a
                    # re-run of a rotation step does.
                    self.crl_number += 1
                    self._commit(now, self._record("crl", now, crl_number=self.crl_number))
                    self._write_crls(issuing_key, previous_keys, now)
                    self._append_log()
                    return entry
                listing = f"see: trustboot ca list --all --pki {self.path}"
                raise_to = (f"if its key has been compromised since, say so: trustboot ca "
                            f"revoke {name} --serial {entry.serial:x} --reason key_compromise")
                raise ConfigError(
                    f"{name!r} (serial {entry.serial:x}) is already revoked "
                    f"({entry.revocation_reason})",
                    hint=listing if entry.revocation_reason == "key_compromise" else raise_to)
            # The certificate is read through the index's fingerprint: a replaced or
            # linked file is refused before anything changes.
            entry.read_cert_pem()
            for e in targets:
                if e.status != "revoked":  # (an upgrade keeps the date it was revoked)
                    e.revoked_at = now.isoformat()
                e.status = "revoked"
                e.revocation_reason = reason
            self.crl_number += 1
            self._commit(now, *[self._record("revoke", now, name=e.name,
                                             serial=f"{e.serial:x}", reason=reason)
                                for e in targets])
            self._write_crls(issuing_key, previous_keys, now)
            self._append_log()
        return entry

    def _revoke_targets(self, name: str, serial: int | None,
                        reason: str) -> list[IssuedEntry]:
        """What ``revoke`` revokes: NAME's current certificate (or the one with
        ``serial``) first, with key_compromise every valid leaf certificate with its key,
        whatever its name (a CSR or a token key can be certified under several)."""
        entry = self.get(name)
        if serial is not None:
            found = self.find_serial(serial)
            if found is None or not _same_name(found.name, entry.name):
                raise ConfigError(f"{name!r} has no certificate with serial {serial:x}",
                                  hint=f"see: trustboot ca list --all --pki {self.path}")
            entry = found
        if entry.profile not in profiles.LEAF_PROFILES:
            raise ConfigError(f"{name!r} is a CA certificate; trustboot revokes leaves only",
                              hint="to retire the CA, rotate it: trustboot ca rotate")
        targets = [entry]
        if reason == "key_compromise" and entry.revocation_reason != "key_compromise":
            key = self.key_id(entry)
            targets += [e for e in self.entries if e is not entry and e.status == "valid"
                        and e.profile in profiles.LEAF_PROFILES and self.key_id(e) == key]
        return targets

    def _previous_issuer_keys(self, issuers: list[IssuedEntry | None],
                              passphrases: PassphraseSource) -> dict[str, PrivateKey]:
        """The keys of those of ``issuers`` that are previous issuing CAs (by certificate
        sha256) and whose key is still in the CA home: only they can sign the CRL of the
        leaves they issued (a CRL speaks for its issuer only). A CA whose key file is
        gone is left out."""
        active = self.active_entry("issuing").sha256
        keys: dict[str, PrivateKey] = {}
        for issuer in issuers:
            if issuer is None or issuer.sha256 in (active, *keys) or issuer.key_file is None \
                    or not issuer.key_path.exists():
                continue
            keys[issuer.sha256] = self.load_ca_key(issuer, passphrases)
        return keys

    def crl_path(self, issuer: IssuedEntry) -> Path:
        """Where the CRL of an issuing CA is: crl.pem for the active one, crls/SERIAL.pem
        for a previous one; the active root's: root-crl.pem."""
        if issuer.profile == "root":
            return self.path / ROOT_CRL
        if issuer.sha256 == self.active_entry("issuing").sha256:
            return self.path / "crl.pem"
        return self.path / CRL_DIR / f"{issuer.serial:x}.pem"

    def crl_listing(self, entry: IssuedEntry) -> Path | None:
        """The CRL in the CA home, signed by the issuer of ``entry``, that lists it; None
        when there is none (a previous issuing CA whose key is not here)."""
        issuer = self.issuer_entry(entry) or self.active_entry("issuing")
        path = self.crl_path(issuer)
        return path if entry.serial in self._listed(path, issuer) else None

    def _issuer_cert(self, issuer: IssuedEntry) -> x509.Certificate:
        # the active issuing CA's certificate was loaded (and checked) when the CA opened
        if issuer.sha256 == self.active_entry("issuing").sha256:
            return self.issuing_cert
        return issuer.load_cert()

    def _signed_crl(self, path: Path, issuer: IssuedEntry
                    ) -> x509.CertificateRevocationList | None:
        """The CRL at ``path`` if ``issuer`` signed it; None when it is missing, unreadable
        or signed by another key."""
        try:
            crl = x509.load_pem_x509_crl(read_capped(path, MAX_CRL_FILE, "CRL",
                                                     nofollow=True))
            if not crl.is_signature_valid(
                    self._issuer_cert(issuer).public_key()):  # type: ignore[arg-type]
                return None
        except (ConfigError, ValueError):
            return None
        return crl

    def _listed(self, path: Path, issuer: IssuedEntry) -> set[int]:
        """Serials the CRL at ``path`` lists, if ``issuer`` signed it (else none)."""
        return set(self._listed_reasons(path, issuer))

    def _listed_reasons(self, path: Path, issuer: IssuedEntry) -> dict[int, str]:
        """Serials the CRL at ``path`` lists, with their reasons, if ``issuer`` signed it
        (else none)."""
        crl = self._signed_crl(path, issuer)
        return {} if crl is None else {r.serial_number: _crl_reason(r) for r in crl}

    def _listed_as_indexed(self, path: Path, issuer: IssuedEntry, entry: IssuedEntry) -> bool:
        """Whether the CRL at ``path`` lists ``entry`` as the index has it: listed, and not
        with a reason the index has raised to key_compromise since (ca revoke killed
        between its index commit and its CRL: a revocation not finished)."""
        reason = self._listed_reasons(path, issuer).get(entry.serial)
        return reason is not None and not _raised_since(entry, reason)

    def _crl_conflicts(self, path: Path, issuer: IssuedEntry) -> list[str]:
        """Where ``issuer``'s signed CRL at ``path`` contradicts index.json: a serial it
        lists as revoked that the index holds as not revoked (or not at all), or with
        another reason. A signed CRL is evidence the index cannot outvote: an index edited
        back to "valid" must not be turned into a CRL that forgets the revocation."""
        crl = self._signed_crl(path, issuer)
        if crl is None:
            return []
        rel = path.relative_to(self.path)
        conflicts = []
        for revoked in crl:
            serial = revoked.serial_number
            entry = self.find_serial(serial)
            if entry is None:
                conflicts.append(f"{rel} lists serial {serial:x} as revoked; index.json has "
                                 "no certificate with that serial")
                continue
            if entry.status != "revoked":
                conflicts.append(f"{rel} lists {entry.name} (serial {serial:x}) as revoked; "
                                 f"index.json says it is {entry.status}")
                continue
            reason = _crl_reason(revoked)
            # raised to key_compromise after this CRL was signed: the CRL is behind (a run
            # killed before it was rewritten), not contradicted; a revoke or `ca crl`
            # finishes it (a forged raise could only make a key less trusted)
            if reason != (entry.revocation_reason or "unspecified") and not _raised_since(
                    entry, reason):
                conflicts.append(f"{rel} lists {entry.name} (serial {serial:x}) as revoked "
                                 f"for {reason}; index.json says "
                                 f"{entry.revocation_reason or 'unspecified'}")
        return conflicts

    def _log_findings(self) -> tuple[list[str], list[str]]:
        """(conflicts, problems) between index.json and log.jsonl, in one pass over the
        log. Conflicts: a revocation the log records that the index does not hold; a
        certificate of the index the log never mentions; a log that ends before the
        index's last change began, or that holds other entries where that change's
        are (see _expect_log). Problem: the entries of the last change are missing at the
        end of the log (a run was killed before appending them; the next write does)."""
        from trustboot.ca import oplog

        expected = self.state.log or {"seq": 0, "records": []}
        owed, last = expected["records"], expected["seq"]
        first = last - len(owed) + 1
        mentioned: set[str] = set()
        conflicts: list[str] = []
        lines = 0
        for rec in oplog.records(self.path / "log.jsonl"):
            lines += 1
            if first <= lines <= last and _unlinked(rec) != owed[lines - first]:
                conflicts.append(
                    f"log.jsonl line {lines} is not the {owed[lines - first].get('op')!r} "
                    "entry index.json records for it: the log was rewritten or replaced")
            if rec is None:
                continue
            _mentions(rec, mentioned, 3)
            serial = rec.get("serial")
            if rec.get("op") != "revoke" or not isinstance(serial, str):
                continue
            try:
                entry = self.find_serial(int(serial, 16))
            except ValueError:
                continue
            if entry is None or entry.status != "revoked":
                state = "has no certificate with that serial" if entry is None \
                    else f"says it is {entry.status}"
                conflicts.append(f"log.jsonl records the revocation of {rec.get('name')!r} "
                                 f"(serial {serial}) at {rec.get('time')}; index.json {state}")
        problems = []
        if self.state.log is not None and lines < first - 1:
            conflicts.append(f"log.jsonl {_lost_lines(lines, first, last)}")
        elif lines < last:
            missing = owed[lines - first + 1:]
            problems.append(
                f"log.jsonl lacks the last {len(missing)} entr"
                + ("y" if len(missing) == 1 else "ies")
                + f" ({', '.join(str(r.get('op')) for r in missing)}) of the change "
                "index.json holds: a run was killed before appending them; the next CA "
                "write appends them: run `trustboot ca crl`")
            for rec in missing:
                _mentions(rec, mentioned, 3)
        unlogged = [e for e in self.entries
                    if e.sha256 not in mentioned and f"{e.serial:x}" not in mentioned]
        if unlogged:
            conflicts.append(
                f"index.json holds {len(unlogged)} certificate(s) log.jsonl never records, "
                f"first {unlogged[0].name} (serial {unlogged[0].serial:x}): the log lost "
                "lines (truncated, deleted or replaced) or index.json gained entries")
        return conflicts, problems

    def index_conflicts(self) -> list[str]:
        """Where index.json contradicts the records it cannot outvote: the signed CRLs
        (crl.pem, crls/) and the operation log. Empty when they agree. Each is a sign that
        index.json was edited or restored from an old copy: nothing may be written from it
        (a CRL made from it would drop a revocation)."""
        return self._all_crl_conflicts() + self._log_findings()[0]

    def _all_crl_conflicts(self) -> list[str]:
        crls: list[tuple[Path, IssuedEntry | None]] = [
            (self.path / "crl.pem", self.active_entry("issuing")), *self.previous_crls()]
        conflicts = []
        for path, issuer in crls:
            if issuer is not None:
                conflicts += self._crl_conflicts(path, issuer)
        return conflicts

    def _refuse_conflicts(self) -> None:
        conflicts = self.index_conflicts()
        if conflicts:
            raise VerificationError(
                f"{self.path / 'index.json'} disagrees with the CA's signed CRLs or its "
                f"log.jsonl: {conflicts[0]}"
                + (f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""),
                hint="index.json or log.jsonl was edited, cut or restored from an old "
                "copy: restore the copies that match from a backup (never regenerate the "
                f"CRL from this index); see `trustboot ca check --pki {self.path}`",
                rule="index-conflict")

    def _unlisted_previous(self, entry: IssuedEntry, keys: dict[str, PrivateKey]) -> bool:
        """A revoked leaf of a previous issuing CA whose key is here, not on its CRL."""
        issuer = self.issuer_entry(entry)
        return issuer is not None and issuer.sha256 in keys \
            and not self._listed_as_indexed(self.crl_path(issuer), issuer, entry)

    def _write_crls(self, issuing_key: PrivateKey, previous_keys: dict[str, PrivateKey],
                    now: dt.datetime, *, days: int = 30) -> None:
        """crl.pem, and the CRL of each previous issuing CA in ``previous_keys``: all
        with this run's CRL number (one counter for the CA home, so each issuer's
        numbers increase too)."""
        self._write_crl(issuing_key, now, days=days, number=self.crl_number)
        for sha, key in previous_keys.items():
            issuer = self.by_sha256(sha)
            if issuer is not None:
                self._write_crl(key, now, days=days, number=self.crl_number, issuer=issuer)

    def generate_crl(self, ca_passphrases: PassphraseSource, *, days: int = 30,
                     now: dt.datetime | None = None) -> Path:
        now = now or utcnow()
        _check_days(days, "crl")
        issuing = self.active_entry("issuing")
        issuing_key = self.load_ca_key(issuing, ca_passphrases)
        # the CRLs of previous issuing CAs (see revoke) are refreshed too, and written for
        # one that has none: that revoked leaves (a rotation by an older version dropped
        # it), or whose key is here (an empty CRL, see keep_previous_crl)
        owing = self.previous_issuers_owing_crl() + self.previous_issuers_without_crl()
        previous_keys = self._previous_issuer_keys(
            [e for e in self.entries if e.profile == "issuing"
             and (self.crl_path(e).exists() or e in owing)], ca_passphrases)
        with locked(self.path / ".lock"):
            self._begin_write(now)
            self._check_still_active(issuing)
            self.crl_number += 1
            self._commit(now, self._record("crl", now, crl_number=self.crl_number))
            # one whose key is gone keeps the CRL it last signed (crl.pem after a rotation
            # killed before copying it), copied before crl.pem is rewritten
            for _path, e in self._missing_previous_crls():
                if e.sha256 not in previous_keys:
                    self.keep_previous_crl(e, None, now, number=self.crl_number)
            self._write_crls(issuing_key, previous_keys, now, days=days)
            self._append_log()
        return self.path / "crl.pem"

    def generate_root_crl(self, ca_passphrases: PassphraseSource, *,
                          days: int = ROOT_CRL_DAYS, now: dt.datetime | None = None) -> Path:
        """root-crl.pem: the active root's CRL, signed by the root key. trustboot revokes
        no CA certificate, so it lists none; it exists because a TLS server checking
        client certificates against CRLs (nginx ssl_crl) wants one for every CA of the
        chain and refuses every client without it."""
        now = now or utcnow()
        _check_days(days, "crl")
        root = self.active_entry("root")
        root_key = self.load_ca_key(root, ca_passphrases)
        with locked(self.path / ".lock"):
            self._begin_write(now)
            self._check_still_active(root)
            self.crl_number += 1
            self._commit(now, self._record("crl", now, crl_number=self.crl_number,
                                           issuer="root"))
            self._write_crl(root_key, now, days=days, number=self.crl_number, issuer=root)
            self._append_log()
        return self.path / ROOT_CRL

    def _write_crl(self, issuing_key: PrivateKey, now: dt.datetime, *, days: int,
                   number: int, issuer: IssuedEntry | None = None) -> None:
        """The CRL of ``issuer`` (default: the active issuing CA), signed by its key."""
        issuer = issuer or self.active_entry("issuing")
        issuer_cert = self._issuer_cert(issuer)
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer_cert.subject)
            .last_update(now - dt.timedelta(hours=1))
            .next_update(now + dt.timedelta(days=days))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    issuer_cert.public_key()  # type: ignore[arg-type]
                ),
                critical=False,
            )
        )
        entries = self._crl_entries(issuer)
        path = self.crl_path(issuer)
        # A revocation is forever: whatever the index says now, a serial the issuer's
        # current CRL lists stays on the next one (_begin_write refused such an index
        # already; this holds for every caller).
        dropped = self._listed(path, issuer) - {e.serial for e in entries}
        if dropped:
            raise VerificationError(
                f"refusing to write {path}: it would drop serial "
                f"{min(dropped):x} that the current CRL lists as revoked",
                hint=f"restore the index.json that matches {path.name} from a backup",
                rule="index-conflict")
        for e in entries:
            assert e.revoked_at is not None
            rc = (
                x509.RevokedCertificateBuilder()
                .serial_number(e.serial)
                .revocation_date(dt.datetime.fromisoformat(e.revoked_at))
                .add_extension(
                    # (index.json's reasons were checked when it was read)
                    x509.CRLReason(REVOCATION_REASONS[e.revocation_reason or "unspecified"]),
                    critical=False,
                )
                .build()
            )
            b = b.add_revoked_certificate(rc)
        crl = b.sign(issuing_key, profiles.hash_for(issuing_key))
        if path.parent != self.path:
            make_dirs(path.parent)
        atomic_write(path, crl.public_bytes(serialization.Encoding.PEM))

    def keep_previous_crl(self, previous: IssuedEntry, key: PrivateKey | None,
                          now: dt.datetime, *, number: int) -> None:
        """Under the lock, after the commit that made ``previous`` a previous issuing CA
        (rotate issuing, root promote) and before crl.pem is replaced: its revocations go
        on crls/SERIAL.pem, signed by its ``key``; an empty one when it revoked nothing, as
        a relying party that checks the CRL of every CA of a chain (nginx ssl_crl, openssl
        -crl_check_all) refuses the leaves it issued without one. Without the key, the CRL
        it last signed (crl.pem, still its own) is kept as it is when it lists something:
        stale one day, but not dropped."""
        if key is not None:
            self._write_crl(key, now, days=30, number=number, issuer=previous)
            return
        if not self._crl_entries(previous):
            return
        if self._signed_crl(self.path / "crl.pem", previous) is not None:
            path = self.crl_path(previous)
            make_dirs(path.parent)
            atomic_write(path, read_capped(self.path / "crl.pem", MAX_CRL_FILE, "CRL",
                                           nofollow=True))

    def _crl_entries(self, issuer: IssuedEntry | None = None) -> list[IssuedEntry]:
        """Revoked leaves of ``issuer`` (default: the active issuing CA): a CRL speaks for
        its issuer only."""
        active = self.active_entry("issuing")
        issuer = issuer or active
        return [e for e in self.entries if e.status == "revoked" and e.revoked_at
                and (self.issuer_entry(e) or active).sha256 == issuer.sha256]

    # ---- check -------------------------------------------------------------------------

    def check(self, now: dt.datetime | None = None) -> list[str]:
        """Consistency of the store: every index entry has its certificate, unchanged,
        issued by this CA; no two code-signing names are one signer to iPXE (see
        :meth:`_signer_clashes`); index.json agrees with the signed CRLs and the log (see
        :meth:`index_conflicts`, listed first); the views are current. Returns problems
        (empty when healthy)."""
        now = now or utcnow()
        problems: list[str] = []
        serials: set[int] = set()
        key_files_checked: set[str | None] = set()
        compromised = self.compromised_keys()
        for e in self.entries:
            if e.serial in serials:
                problems.append(f"duplicate serial {e.serial:x}")
            serials.add(e.serial)
            if e.key_file not in key_files_checked:  # (a renewal shares its key file)
                key_files_checked.add(e.key_file)
                if (loose := self._key_file_problem(e)) is not None:
                    problems.append(f"{e.name}: {loose}")
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
            issuer_entry = self.issuer_entry(e)
            if issuer_entry is None:
                problems.append(f"{e.name}: its issuer {e.issuer_sha256} is not in the index")
                continue
            try:
                cert.verify_directly_issued_by(issuer_entry.load_cert())
            except (ValueError, TypeError, InvalidSignature, ConfigError) as exc:
                problems.append(f"{e.name}: not issued by {issuer_entry.subject}: "
                                f"{exc or type(exc).__name__}")
            if e.status == "valid" and not self.chain_retired(e) and self._key_missing(e):
                problems.append(f"{e.name}: key file {e.key_file} is missing")
            revoked = compromised.get(self.key_id(e)) if e.status == "valid" else None
            if revoked is not None and e.profile in profiles.LEAF_PROFILES:
                problems.append(
                    f"{e.name} (serial {e.serial:x}) has the key revoked as compromised with "
                    f"{revoked.name} (serial {revoked.serial:x}); revoke it: trustboot ca "
                    f"revoke {e.name} --serial {e.serial:x} --reason key_compromise")
        problems += self._signer_clashes(now)
        log_conflicts, log_problems = self._log_findings()
        conflicts = self._all_crl_conflicts() + log_conflicts
        problems += log_problems + self._check_crls(now) + self._token_record_problems()
        # Views derive from the index: while it contradicts the CRL or the log, a view
        # that differs is no sign of a killed run, and refreshing it would be wrong.
        return conflicts + problems + ([] if conflicts else self._stale_views(now))

    def _signer_clashes(self, now: dt.datetime) -> list[str]:
        """Code-signing names that iPXE's `imgverify --signer` does not tell apart (the
        rule of :meth:`_check_duplicate`: names and SANs, ASCII case-insensitively,
        wildcards on the certificate's side) while each has a certificate iPXE would
        accept (valid, not expired, its chain and key not retired or revoked): issued
        before that rule existed, firmware pinned to one accepts the other's signatures.
        One problem per pair of names, with the revokes that end it (of the later name)."""
        compromised = self.compromised_keys()
        by_name: dict[str, list[IssuedEntry]] = {}  # in issuance order: the first name first
        for e in self.entries:
            if (e.profile == "codesign" and e.effective_status(now) == "valid"
                    and not self.chain_retired(e) and self.key_id(e) not in compromised):
                by_name.setdefault(e.name, []).append(e)
        # each name's certificates with every name iPXE matches them by (name and SANs)
        groups = [(certs, (certs[0].name, *{s for e in certs for s in e.sans}))
                  for certs in by_name.values()]
        problems = []
        for i, (first, first_names) in enumerate(groups):
            for later, later_names in groups[i + 1:]:
                if not any(_same_name(a, b) or _same_name(b, a)
                           for a in first_names for b in later_names):
                    continue
                revokes = "; ".join(f"trustboot ca revoke {e.name} --serial {e.serial:x} "
                                    f"--pki {self.path}" for e in later)
                problems.append(
                    f"the code-signing certificates {_serials(first)} and {_serials(later)} "
                    "are the same signer to iPXE: `imgverify --signer` matches names "
                    "case-insensitively, so firmware pinned to either name accepts "
                    "signatures made with the other's key; revoke the one firmware is not "
                    f"pinned to, e.g. the later {later[0].name!r}: {revokes}")
        return problems

    def _leftover_token_record(self) -> tuple[Path, list[str] | None, bool] | None:
        """private/pending-token-keys.json when a `ca init --pkcs11` left it (killed
        between the index commit that made this CA and removing it): (its path, the key
        pairs it names or None when it cannot be read, whether they are all this CA's
        own keys). None when there is none."""
        record = _pending_token_keys(self.path)
        if not (record.exists() or record.is_symlink()):
            return None
        try:
            data = json.loads(read_private_file(record, "record of pending token keys"))
            refs: list[str] | None = [str(r) for r in data["refs"]]
        except (ValueError, KeyError, TypeError, ConfigError):
            refs = None
        own = {v for k, v in (self._token_refs() or {}).items() if k in ("root", "issuing")}
        return record, refs, refs is not None and set(refs) <= own

    def _token_record_problems(self) -> list[str]:
        found = self._leftover_token_record()
        if found is None:
            return []
        record, refs, own = found
        rel = record.relative_to(self.path)
        if own:
            return [f"{rel} is left by a `ca init --pkcs11` killed after it made this CA: "
                    "it names this CA's own token keys as a killed run's, which a `ca "
                    "init` here (were index.json lost) would destroy; run `trustboot ca "
                    "crl` (any CA write removes it)"]
        named = "cannot be read" if refs is None else (
            f"names {len(refs)} key pair(s) that are not this CA's keys: {', '.join(refs)}")
        return [f"{rel} (left by an interrupted `ca init --pkcs11`) {named}; check the "
                "token for them, remove those no CA uses (pkcs11-tool --login "
                f"--delete-object --type privkey/pubkey --label L --id ID), then rm "
                f"{record}"]

    def _drop_own_token_record(self) -> None:
        """Under the lock: the record of pending token keys, once it names only this CA's
        own keys (a kill between init's index commit and its removal), is removed: left,
        a later `ca init` here would destroy the CA's keys as a killed run's."""
        found = self._leftover_token_record()
        if found is not None and found[2]:
            found[0].unlink()

    def index_behind_log(self, lines: int) -> tuple[int, int] | None:
        """(log entries, entries the index accounts for) when log.jsonl held more entries
        than index.json's last change accounts for: every run commits the index before it
        appends to the log, so that is an index restored from an older backup (say, from
        before a revocation). ``lines``: :func:`log_lines`, counted before this index was
        read, so a write meanwhile cannot make an honest index look behind. None
        otherwise, and for an index older than the log's tie to it."""
        if self.state.log is None:
            return None
        return (lines, self.state.log["seq"]) if lines > self.state.log["seq"] else None

    def check_log(self) -> oplog.LogCheck:
        """The hash chain of log.jsonl (see oplog.verify)."""
        from trustboot.ca import oplog

        return oplog.verify(self.path / "log.jsonl", chained_from=self.state.log_chained_from)

    def _unlisted_revocations(self) -> list[IssuedEntry]:
        """Revocations of the active issuing CA that crl.pem does not list (all of them
        when it cannot be read or is not the issuing CA's)."""
        listed = self._listed_reasons(self.path / "crl.pem", self.active_entry("issuing"))
        return [e for e in self._crl_entries()
                if e.serial not in listed or _raised_since(e, listed[e.serial])]

    def _check_crl(self) -> list[str]:
        """What is wrong with crl.pem, its date aside (a rotation step rewrites it then)."""
        try:
            return self._crl_problems(self.path / "crl.pem", self.active_entry("issuing"))[1]
        except ConfigError as exc:
            return [exc.message]

    def _check_crls(self, now: dt.datetime) -> list[str]:
        """crl.pem and each previous issuing CA's CRL in crls/ (see _crl_problems)."""
        crls: list[tuple[Path, IssuedEntry | None]] = [
            (self.path / "crl.pem", self.active_entry("issuing")), *self.previous_crls()]
        if self.has_root_crl():
            crls.append((self.path / ROOT_CRL, self.active_entry("root")))
        problems = []
        for path, issuer in crls:
            rel = path.relative_to(self.path)
            if issuer is None:
                problems.append(f"{rel} is not the CRL of a previous issuing CA of this CA; "
                                f"move it out of {path.parent}")
                continue
            retired = issuer.status == "retired"  # out of trust: its CRL may go stale
            try:
                found = self._crl_problems(path, issuer, None if retired else now)[1]
            except ConfigError as exc:
                found = [f"cannot be read: {exc.message}"]
            fix = "run `trustboot ca crl" + (" --root`" if issuer.profile == "root" else "`")
            if path.parent != self.path:
                fix += (f" (it needs that CA's key in the CA home), or retire the CA: "
                        f"`trustboot ca rotate issuing --retire {issuer.serial:x}`")
            problems += [f"{rel} {p}; {fix}" for p in found]
        owing = self._missing_previous_crls()
        for path, issuer in owing:
            problems.append(
                f"{path.relative_to(self.path)} is missing: previous issuing CA "
                f"{issuer.serial:x} revoked {len(self._crl_entries(issuer))} certificate(s) "
                "that no CRL lists; run `trustboot ca crl` (it needs that CA's key in the CA "
                f"home), or retire the CA: `trustboot ca rotate issuing --retire "
                f"{issuer.serial:x}`")
        # one that revoked nothing needs its (empty) CRL too: see keep_previous_crl
        for issuer in self.previous_issuers_without_crl(with_key=False):
            if any(issuer is e for _path, e in owing):
                continue
            fix = ("run `trustboot ca crl`" if issuer.key_file is not None
                   and issuer.key_path.exists() else "restore that CA's key to the CA "
                   "home and run `trustboot ca crl`")
            problems.append(
                f"{self.crl_path(issuer).relative_to(self.path)} is missing: relying parties "
                "that check the CRL of every CA of a chain (nginx ssl_crl, openssl "
                f"-crl_check_all) refuse the certificates previous issuing CA "
                f"{issuer.serial:x} issued; {fix}, or retire the CA: `trustboot ca rotate "
                f"issuing --retire {issuer.serial:x}`")
        return problems

    # ---- views -------------------------------------------------------------------------

    def _view_entries(self, now: dt.datetime) -> dict[str, IssuedEntry | None]:
        """Which entry each leaf name's views show: the current one, else the newest
        expired one (kept visible), else none (all revoked or retired)."""
        views: dict[str, IssuedEntry | None] = {}
        for name in dict.fromkeys(e.name for e in self.entries
                                  if e.profile in profiles.LEAF_PROFILES):
            views[name] = self.current(name, now) or next(
                (e for e in reversed(self.entries) if e.name == name
                 and self.status_of(e, now) == "expired"), None)
        return views

    def _views(self, now: dt.datetime, *, skip_unreadable: bool = False
               ) -> tuple[dict[str, bytes | None], dict[str, IssuedEntry | None]]:
        """What every view should hold: certificate views (relative path -> content, None
        for "absent") and key views (relative path -> the entry whose key it copies).
        ``skip_unreadable``: leave out the view of a certificate that cannot be read (for
        `ca check`, which reports that certificate itself) instead of raising."""
        root, issuing = self.active_entry("root"), self.active_entry("issuing")
        certs: dict[str, bytes | None] = {
            "ca.crt": pem(self.root_cert),
            "issuing-ca.crt": pem(self.issuing_cert),
            "chain.pem": pem(self.issuing_cert) + pem(self.root_cert),
        }
        keys: dict[str, IssuedEntry | None] = {"private/ca.key": root,
                                               "private/issuing-ca.key": issuing}
        for name, entry in self._view_entries(now).items():
            try:
                certs[f"issued/{name}.crt"] = entry.read_cert_pem() if entry else None
            except ConfigError:
                if not skip_unreadable:
                    raise
            keys[f"private/{name}.key"] = entry
        return certs, keys

    def _key_missing(self, entry: IssuedEntry) -> bool:
        """The entry names a key file and it is not there."""
        return bool(entry.key_file) and not (self.path / str(entry.key_file)).exists()

    def _key_file_problem(self, entry: IssuedEntry | None) -> str | None:
        """What check_private_file refuses in the key file ``entry`` names (a link, not
        ours, open to group or others), with its fix; None when it is fine or missing."""
        if entry is None or not entry.key_file:
            return None
        path = self.path / entry.key_file
        if not path.exists() and not path.is_symlink():
            return None
        try:
            check_private_file(path, f"key file of {entry.name!r}")
        except ConfigError as exc:
            return exc.message + (f"; {exc.hint}" if exc.hint else "")
        return None

    def _key_view_content(self, entry: IssuedEntry | None) -> bytes | None:
        if entry is None or entry.key_file is None:
            return None
        try:
            return self.key_pem(entry)
        except ConfigError:
            return None  # a missing or unsafe key file: `ca check` reports it

    def _refresh_views(self, now: dt.datetime) -> None:
        """Bring every view up to date (under the lock): after a change, and to finish the
        work of a run killed after its index commit."""
        certs, keys = self._views(now)
        for rel, content in certs.items():
            path = self.path / rel
            if content is None:
                _remove_view(path)
            elif _read_view(path) != content:
                atomic_write(path, content)
        for rel, entry in keys.items():
            path = self.path / rel
            if self._key_file_problem(entry) is not None:
                continue  # its view is the good copy: kept until the key file is fixed
            content = self._key_view_content(entry)
            if content is None:
                if path.exists() or path.is_symlink():
                    self._drop_key_view(rel, now)
            elif _read_view(path) != content:
                write_private_file(path, content, overwrite=True)

    def _drop_key_view(self, rel: str, now: dt.datetime) -> None:
        """Remove a key view whose key is kept in private/keys/; set it aside otherwise
        (a key file is never deleted unless another copy exists)."""
        data = _read_view(self.path / rel)
        copies = {self._key_view_content(e) for e in self.entries
                  if e.key_file and e.key_file != rel}
        if data is not None and data in copies:
            (self.path / rel).unlink()
        else:
            _set_aside_leftovers(self.path, [rel], now)

    def _stale_views(self, now: dt.datetime) -> list[str]:
        problems = []
        certs, keys = self._views(now, skip_unreadable=True)
        stale = [(rel, _read_view(self.path / rel), content) for rel, content in certs.items()]
        for rel, entry in keys.items():
            if entry is not None and (self._key_missing(entry)
                                      or self._key_file_problem(entry) is not None):
                continue  # check() reports the key file itself; its view is no clue
            stale.append((rel, _read_view(self.path / rel), self._key_view_content(entry)))
        for rel, have, want in stale:
            if have == want:
                continue
            state = "is missing" if have is None else "is not current"
            if want is None:
                state = "should not exist (its certificate was revoked or retired)"
            problems.append(f"view {rel} {state} (a run was killed before it refreshed it); "
                            "run `trustboot ca crl` to refresh the views")
        return problems

    def _check_views(self) -> None:
        """Refuse to load when a view holds something the index never recorded there (a
        link, or another certificate): other tools read these files. A view that is only
        stale (an earlier certificate of the same name) is tolerated until the next write."""
        allowed: dict[str, tuple[str, set[str]]] = {
            "ca.crt": (ROOT_NAME, {e.sha256 for e in self.entries if e.profile == "root"}),
            "issuing-ca.crt": (ISSUING_NAME, {e.sha256 for e in self.entries
                                              if e.profile == "issuing"}),
            "chain.pem": ("chain", {e.sha256 for e in self.entries
                                    if e.profile in ("root", "issuing")}),
        }
        for e in self.entries:
            if e.profile in profiles.LEAF_PROFILES:
                allowed.setdefault(f"issued/{e.name}.crt", (e.name, set()))[1].add(e.sha256)
        for rel, (name, shas) in allowed.items():
            path = self.path / rel
            if not path.exists() and not path.is_symlink():
                continue
            data = read_capped(path, MAX_CERT_FILE, "certificate", nofollow=True)
            try:
                certs = x509.load_pem_x509_certificates(data)
            except ValueError:
                certs = []
            bad = [fingerprint(c) for c in certs if fingerprint(c) not in shas] or (
                [] if certs else ["(no certificate)"])
            if bad:
                raise ConfigError(
                    f"{path} differs from the index: it holds "
                    + (f"a certificate with sha256 {bad[0]}" if len(bad[0]) == 64 else "none")
                    + f", not the certificate {name!r} the index recorded; it was replaced "
                    "or damaged, refusing to use this CA",
                    hint="restore the file from a backup (or delete it: the next CA write "
                    f"recreates it), then run `trustboot ca check --pki {self.path}` (which "
                    "refuses this CA too until then)")
            if rel.startswith("issued/"):
                key_view = self.path / "private" / f"{name}.key"
                if key_view.exists() or key_view.is_symlink():
                    check_private_file(key_view, f"key file of {name!r}")
        for rel in ("private/ca.key", "private/issuing-ca.key"):
            if (self.path / rel).exists() or (self.path / rel).is_symlink():
                check_private_file(self.path / rel, "CA key file")

    # ---- internals -----------------------------------------------------------------------

    def _reload(self) -> None:
        """Re-read the index under the lock; also removes the temp files of killed runs
        (under the lock nobody else writes)."""
        self.config, self.entries, self.state = _read_index(self.path)
        self._load_active()
        _remove_temps(self.path)

    def _begin_write(self, now: dt.datetime) -> None:
        """Under the lock, before any change: the index as it is now, migrated to the
        current layout, with the views a killed run left stale brought up to date."""
        self._reload()
        self._append_log(recovered_at=now)  # the records a killed run owes the log
        self._refuse_conflicts()
        self._migrate(now)
        self._refresh_views(now)
        self._drop_own_token_record()

    def _commit(self, now: dt.datetime, *records: dict[str, Any],
                unfinished: dict[str, Any] | None = None) -> None:
        """Write the index (the commit point) with the log ``records`` of this change
        (:meth:`_expect_log`), then the views derived from it. The caller appends the
        records with :meth:`_append_log` once the rest of its work (a CRL) is done.
        ``unfinished``: what tells a re-run that this change's run was killed before the
        end of that work (``state.unfinished``), cleared by :meth:`_done`; any other
        change clears it too (the CA's last change is then that one)."""
        if records:
            self._expect_log(*records)
        self.state.unfinished = unfinished
        self._write_index()
        self._load_active()
        self._refresh_views(now)

    def _done(self) -> None:
        """The last change's work after its commit is done: clear ``state.unfinished``.
        Only index.json is written (index.txt does not show it), as the run's last step,
        so a kill at any point before leaves the mark."""
        if self.state.unfinished is not None:
            self.state.unfinished = None
            atomic_write(self.path / "index.json", self._index_json())

    def _migrate(self, now: dt.datetime) -> None:
        """Index version 1 -> 2: each certificate's file becomes certs_by_serial/SERIAL.pem
        and each key is copied to private/keys/SERIAL.key; the index is repointed in one
        commit. The old files stay where they are, as views."""
        from trustboot.ca import oplog

        if self.state.version >= INDEX_VERSION:
            return
        for e in self.entries:
            data = e.read_cert_pem()  # through the index's fingerprint
            rel = _cert_rel(e.serial)
            if _read_view(self.path / rel) != data:
                atomic_write(self.path / rel, data)
            if e.key_file is not None and not e.key_file.startswith("private/revoked/"):
                src = self.path / e.key_file
                if src.exists() or src.is_symlink():
                    key = read_private_file(src, f"key file of {e.name!r}")
                    ensure_private_dir(self.path / "private" / "keys")
                    if _read_view(self.path / _key_rel(e.serial)) != key:
                        write_private_file(self.path / _key_rel(e.serial), key, overwrite=True)
                    e.key_file = _key_rel(e.serial)
            e.cert_file = rel
            e.issuer_sha256 = self.issuer_entry(e).sha256  # type: ignore[union-attr]
            e.key_sha256 = spki_sha256(_parse_cert(data, e.cert_path).public_key())
        self.state.version = INDEX_VERSION
        self.state.log_chained_from = oplog.count_lines(self.path / "log.jsonl") + 1
        self._expect_log(self._record("migrate", now, from_version=1,
                                      to_version=INDEX_VERSION))
        self._write_index()
        self._append_log()

    def _check_duplicate(self, name: str) -> None:
        """Refuse ``name`` while a valid certificate answers to it as iPXE matches
        `imgverify --signer` (and TLS server names): its name or a SAN, ASCII
        case-insensitively, wildcards on the certificate's side. Else firmware pinned to
        `release-signer` would accept the key of `RELEASE-SIGNER` too."""
        for e in self.entries:
            if e.status != "valid" or self.chain_retired(e):
                continue
            if e.name == name:
                raise ConfigError(
                    f"a valid certificate named {name!r} already exists (serial {e.serial:x})",
                    hint=f"renew it: trustboot ca renew {name} (or revoke it first: "
                    f"trustboot ca revoke {name})",
                )
            clash = next((n for n in (e.name, *e.sans) if _same_name(n, name)), None)
            if clash is not None:
                via = "" if clash == e.name else f", by its SAN {clash!r}"
                raise ConfigError(
                    f"{name!r} would be the same signer to iPXE as the valid certificate "
                    f"{e.name!r} (serial {e.serial:x}{via}): `--signer` matches names "
                    "case-insensitively (and SAN wildcards), so either key would be accepted",
                    hint=f"choose a name that differs from {e.name!r} in more than case, or "
                    f"revoke it first: trustboot ca revoke {e.name}",
                )

    def _new_serial(self) -> int:
        used = {e.serial for e in self.entries}
        while True:
            serial = x509.random_serial_number()  # 159 random bits, positive
            if serial not in used:
                return serial

    def _index_json(self) -> bytes:
        st = self.state
        data = {
            "version": st.version,
            "crl_number": st.crl_number,
            "active": st.active,
            "rotation": st.rotation,
            "last_rotation": st.last_rotation,
            "log_chained_from": st.log_chained_from,
            "log": st.log,
            "entries": [e.to_record() for e in self.entries],
        }
        if st.unfinished is not None:  # absent otherwise: an index as older versions wrote
            data["unfinished"] = st.unfinished
        if st.version < 2:
            data = {k: data[k] for k in ("version", "crl_number", "entries")}
        return json.dumps(data, indent=2).encode()

    def _write_index(self) -> None:
        atomic_write(self.path / "index.json", self._index_json())
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
            lines.append(f"{flag}\t{ts(e.not_after)}\t{rev}\t{e.serial:X}\tunknown\t"
                         f"{_oneline_subject(e.subject)}\n")
        return "".join(lines)

    def _record(self, op: str, now: dt.datetime, **fields: Any) -> dict[str, Any]:
        """One log entry (without its links) for a change made now."""
        record: dict[str, Any] = {"time": now.isoformat(), "op": op, "user": _user(),
                                  "pid": os.getpid()}
        record.update(fields)
        return record

    def _expect_log(self, *records: dict[str, Any]) -> None:
        """Record in the index (before it is written, under the lock) the log entries its
        change owes and the line the last of them gets: the index commit and the log
        append cannot be one atomic step, so whoever finds the log behind the index
        finishes it (:meth:`_append_log`) and `ca check` can tell a lost entry."""
        from trustboot.ca import oplog

        # line numbers, counted (not the last entry's seq, which is only as good as the
        # chain)
        first = oplog.count_lines(self.path / "log.jsonl") + 1
        self.state.log = {"seq": first + len(records) - 1, "records": list(records)}

    def _append_log(self, *, recovered_at: dt.datetime | None = None) -> None:
        """Append the entries the index's last change owes the log and it does not hold
        yet (all of them after a kill between the index commit and the append; a
        recovery by a later run, ``recovered_at``, is marked so). A log that ends before
        the change began lost lines: refused, never papered over."""
        from trustboot.ca import oplog

        expected = self.state.log
        if expected is None:  # an index written before the log was tied to it
            return
        path = self.path / "log.jsonl"
        records, last = expected["records"], expected["seq"]
        first = last - len(records) + 1
        have = oplog.count_lines(path)
        if have >= last:
            return
        if have < first - 1:
            raise self._log_lost(have, first, last)
        for record in records[have - first + 1:]:
            if recovered_at is not None:
                record = record | {"recovered": {"time": recovered_at.isoformat(),
                                                 "pid": os.getpid()}}
            oplog.append(path, record)

    def _log_lost(self, have: int, first: int, last: int) -> VerificationError:
        return VerificationError(
            f"{self.path / 'log.jsonl'} {_lost_lines(have, first, last)}",
            hint="restore log.jsonl from a backup (compare its head with the one `ca check` "
            "printed before); nothing is written to this CA until it matches index.json",
            rule="log-lost")


def _raised_since(entry: IssuedEntry, crl_reason: str) -> bool:
    """The index has raised ``entry``'s revocation to key_compromise, and a CRL still gives
    the reason it had before (the one change of reason a revoke makes)."""
    return entry.revocation_reason == "key_compromise" and crl_reason != "key_compromise"


def _serials(entries: list[IssuedEntry]) -> str:
    """``'NAME' (serial S)`` or ``'NAME' (serials S1, S2)``: certificates of one name."""
    serials = ", ".join(f"{e.serial:x}" for e in entries)
    return f"{entries[0].name!r} (serial{'s' if len(entries) > 1 else ''} {serials})"


def _same_name(stored: str, name: str) -> bool:
    """Whether ``--signer name`` matches a certificate called (or with the SAN) ``stored``,
    by the --signer matcher itself (ASCII case-folded, wildcards on the stored side)."""
    return dns_match(stored.encode("utf-8", "surrogateescape"), name)


def _oneline_escape(value: str) -> str:
    """A value in OpenSSL's /-separated subject form: its separators escaped, control
    characters as \\xHH (an index.txt line must stay one line of tab-separated fields)."""
    out = []
    for c in value:
        if c in "\\/+":
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02X}")
        else:
            out.append(c)
    return "".join(out)


def _oneline_subject(subject: str) -> str:
    """An index entry's subject (RFC 4514, as recorded) as index.txt's /C=../O=../CN=..:
    RDNs in certificate order, a multi-valued RDN joined with +, values escaped."""
    try:
        name = x509.Name.from_rfc4514_string(subject)
    except ValueError:  # not what trustboot recorded: kept whole, still one field
        return "/" + _oneline_escape(subject)
    return "".join("/" + "+".join(f"{a.rfc4514_attribute_name}={_oneline_escape(str(a.value))}"
                                  for a in rdn) for rdn in name.rdns)


def _unlinked(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A log entry as the index recorded it: without its links and recovery mark."""
    if record is None:
        return None
    return {k: v for k, v in record.items() if k not in ("seq", "prev", "recovered")}


def _mentions(value: object, into: set[str], depth: int) -> None:
    """Every string in a log entry (and the SERIAL of NAME:SERIAL): the fingerprints and
    serials it names."""
    if isinstance(value, str):
        into.add(value)
        into.add(value.rpartition(":")[2])
    elif depth > 0 and isinstance(value, dict):
        for v in value.values():
            _mentions(v, into, depth - 1)
    elif depth > 0 and isinstance(value, list):
        for v in value:
            _mentions(v, into, depth - 1)


def _lost_lines(have: int, first: int, last: int) -> str:
    return (f"has {have} lines, but index.json records its last change at line "
            f"{first}" + (f"-{last}" if last > first else "") + ": lines were removed, or "
            "the log was truncated, deleted or replaced")


def _check_expected_log(value: object) -> dict[str, Any] | None:
    """index.json's "log": {"seq": line of the last change's last entry, "records": the
    entries of that change}."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("seq"), int) \
            or isinstance(value["seq"], bool) or not isinstance(value.get("records"), list) \
            or not value["records"] or not all(isinstance(r, dict) for r in value["records"]) \
            or not len(value["records"]) <= value["seq"]:
        raise ValueError("log is not {seq, records} of the last change")
    return value


# A CRL number is a non-negative INTEGER of at most 20 octets (RFC 5280, 5.2.3): below
# 2**159. The index's is refused well below that, so the increments of the next writes
# still fit; no CA counts anywhere near it.
MAX_CRL_NUMBER = 2**158


def _check_crl_number(value: object) -> int:
    """index.json's crl_number: an integer in [0, MAX_CRL_NUMBER) (ValueError otherwise:
    CRLNumber refuses a negative one, and a longer one breaks RFC 5280)."""
    if not isinstance(value, int) or isinstance(value, bool) \
            or not 0 <= value < MAX_CRL_NUMBER:
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
        raise ValueError(f"crl_number {shown} is not an integer from 0 to 2**158 (a CRL "
                         "number of at most 20 octets, RFC 5280)")
    return value


def _read_index(path: Path) -> tuple[dict[str, Any], list[IssuedEntry], IndexState]:
    try:
        data = json.loads(read_capped(path / "index.json", MAX_INDEX_FILE, "CA index",
                                      nofollow=True))
        config = json.loads(read_capped(path / "config.json", MAX_CERT_FILE, "CA config",
                                        nofollow=True))
        version = data.get("version")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"index version {version!r}")
        if not isinstance(data.get("entries"), list):
            raise ValueError("index.json has no list of entries")
        entries = []
        for i, record in enumerate(data["entries"], 1):
            try:
                entries.append(IssuedEntry.from_record(record, path))
            except ValueError as exc:
                name = record.get("name") if isinstance(record, dict) else None
                which = f" ({name!r})" if isinstance(name, str) else ""
                raise ValueError(f"index.json entry {i}{which}: {exc}") from None
        state = IndexState(version=version, crl_number=_check_crl_number(
            data.get("crl_number", 0)))
        if version == 1:
            # One root and one issuing CA, the first of each.
            state.active = {role: next(e.sha256 for e in entries if e.profile == role)
                            for role in ("root", "issuing")}
        else:
            state.active = {"root": str(data["active"]["root"]),
                            "issuing": str(data["active"]["issuing"])}
            for key in ("rotation", "last_rotation", "unfinished"):
                value = data.get(key)
                if value is not None and not isinstance(value, dict):
                    raise ValueError(f"{key} is not an object")
                setattr(state, key, value)
            chained = data.get("log_chained_from")
            state.log_chained_from = int(chained) if chained is not None else None
            state.log = _check_expected_log(data.get("log"))
        return config, entries, state
    except (OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration) as exc:
        raise ConfigError(
            f"the CA in {path} is damaged: {exc}",
            hint="run `trustboot ca check` and restore from backup if it fails",
        ) from None


def _cert_rel(serial: int) -> str:
    return f"certs_by_serial/{serial:X}.pem"


def stored_cert_path(pki: Path, serial: int) -> Path:
    """Where the CA home ``pki`` keeps the certificate with ``serial``."""
    return pki / _cert_rel(serial)


def _key_rel(serial: int) -> str:
    return f"private/keys/{serial:X}.key"


def _new_key(spec: profiles.KeySpec, passphrases: PassphraseSource, name: str,
             ) -> tuple[bytes, profiles.PublicKey]:
    """A new key for ``name``, encrypted with the passphrase ``passphrases`` gives."""
    key_pass = passphrases(f"the new key {name!r}")
    keyfile.check_passphrase(key_pass, f"the passphrase for {name!r}")
    key = spec.generate()
    return keyfile.encrypt_pkcs8(key, key_pass), key.public_key()


def _read_view(path: Path) -> bytes | None:
    """A view's bytes; None when it is missing, a link or not a regular file."""
    try:
        return read_capped(path, MAX_CERT_FILE, "view", nofollow=True)
    except ConfigError:
        return None


def _remove_view(path: Path) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _check_days(days: int, what: str) -> None:
    if days < 1 or days > 40 * 365:
        raise ConfigError(f"validity of {days} days for {what} is out of range",
                          hint="give a number of days between 1 and 14600")


# What trustboot writes for a certificate: one PEM block, nothing else but whitespace.
_ONE_PEM_CERT = re.compile(rb"\s*-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]*"
                           rb"-----END CERTIFICATE-----\s*")


def _parse_cert(data: bytes, path: Path) -> x509.Certificate:
    """A certificate file of the pki: exactly one PEM block (the loader reads the first
    and ignores the rest, which a fingerprint check of it would let through into the
    views other tools read)."""
    if b"-----BEGIN CERTIFICATE-----" in data and not _ONE_PEM_CERT.fullmatch(data):
        raise ConfigError(
            f"{path} holds more than one PEM certificate block, or something besides it: "
            "trustboot writes exactly one; it was changed or damaged",
            hint="run `trustboot ca check`; restore the file from a backup")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise ConfigError(f"cannot load certificate {path}: {exc}",
                          hint="run `trustboot ca check`; restore the pki from backup") from None


def check_text(value: str, what: str) -> None:
    """Values that end up in subjects, index.txt and logs: printable, one line, text."""
    if (raw := not_utf8(value)) is not None:
        raise ConfigError(f"{what} {raw!r} is not valid UTF-8 text",
                          hint="give it as UTF-8 (check the terminal's or script's encoding)")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in value):
        raise ConfigError(f"{what} {value!r} contains control characters (a newline, tab ...)",
                          hint="use printable characters only")


def check_pki_permissions(path: Path) -> None:
    """Refuse a pki that someone else can have changed: its directories must be ours and
    not writable by group or others (private/ not accessible at all), the files
    trustboot reads back (PUBLIC_FILES and every file of the public directories) must be
    ours, not links and not writable by others, and .lock must be ours and open to no one
    else (fsutil.check_lock_file); nor may a directory
    above it be (fsutil.check_parents), or the whole pki could be swapped mid-run."""
    path = Path(path)
    check_parents(path, "pki directory")
    check_owned_dir(path, "pki directory")
    for sub in (*PUBLIC_DIRS, CRL_DIR):
        if (path / sub).exists() or (path / sub).is_symlink():
            check_not_link(path / sub, "pki directory")
            check_owned_dir(path / sub, "pki directory")
    # and the directories of keys in it: one linked out (to a directory others can
    # write) would let them swap or remove keys that private/'s mode protects
    for sub in ("private", *PRIVATE_SUBDIRS):
        if (path / sub).exists() or (path / sub).is_symlink():
            check_not_link(path / sub, "private directory")
            check_owned_dir(path / sub, "private directory", private=True)
    for name in PUBLIC_FILES:
        _check_public_file(path / name)
    # every file of the public directories too: the certificates the index names (another
    # user could rewrite one in place, breaking the CA) and whatever else lies there
    for sub in (*PUBLIC_DIRS, CRL_DIR):
        try:
            names = sorted(os.listdir(path / sub))
        except FileNotFoundError:
            continue
        for name in names:
            _check_public_file(path / sub / name)
    try:
        lock = os.lstat(path / ".lock")
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISLNK(lock.st_mode):
            check_not_link(path / ".lock", "lock file")
        check_lock_file(path / ".lock", lock)


def _check_public_file(file: Path) -> None:
    """A file trustboot reads back from the pki: never a link, ours, and not writable by
    other users (absent is fine: the callers say which files must exist)."""
    try:
        st = os.lstat(file)
    except FileNotFoundError:
        return
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
    if stat.S_IMODE(st.st_mode) & 0o022 and others_can_write(file, st):
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


def log_lines(pki: Path) -> int:
    """The entries in a CA home's log now (see CertificateAuthority.index_behind_log)."""
    from trustboot.ca import oplog

    return oplog.count_lines(Path(pki) / "log.jsonl")


def load_trusted_roots(pki: Path) -> list[x509.Certificate]:
    """Every root of ``pki`` that may be trusted now: the active one first and, during a
    root rotation, the other one (see :meth:`CertificateAuthority.trusted_roots`)."""
    pki = Path(pki)
    if CertificateAuthority.exists(pki):
        return CertificateAuthority.open(pki).trusted_roots()
    return [load_trusted_root(pki)]


def _remove_temps(pki: Path) -> None:
    """Temp files (.NAME.XXXX.tmp) of killed runs; call only under the CA lock."""
    for sub in ("", *PUBLIC_DIRS, CRL_DIR, "private", *PRIVATE_SUBDIRS):
        remove_stale_temps(pki / sub, older_than=0.0)


def _entry(name: str, profile: str, cert: x509.Certificate, key_rel: str | None, pki: Path,
           issuer_sha256: str) -> IssuedEntry:
    return IssuedEntry(
        name=name, profile=profile, serial=cert.serial_number,
        subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
        sha256=fingerprint(cert), cert_file=_cert_rel(cert.serial_number), key_file=key_rel,
        pki=pki, issuer_sha256=issuer_sha256, key_sha256=spki_sha256(cert.public_key()),
    )


def _set_aside_leftovers(pki: Path, rels: list[str], now: dt.datetime,
                         made: _InitMade | None = None) -> None:
    """Files an interrupted run left behind (not in the index) move to .abandoned/,
    never deleted: they may hold the only copy of a key someone wants back. ``made``
    (init) records the moves and the directories made for them, to undo if it fails."""
    import shutil

    leftovers = [r for r in rels if (pki / r).exists() or (pki / r).is_symlink()]
    if not leftovers:
        return
    dest = pki / "private" / ".abandoned" / f"{now:%Y%m%dT%H%M%S}-{os.getpid()}"
    created = made.dirs if made is not None else None
    ensure_private_dir(pki / "private", created=created)
    make_dirs(dest, PRIVATE_DIR_MODE, created=created)
    for rel in leftovers:
        target = dest / rel.replace("/", "_")
        shutil.move(str(pki / rel), str(target))
        if made is not None:
            made.set_aside.append((rel, target))


# The files `ca init` writes under fixed names (besides index.json, its commit point, and
# what follows it); the leftovers of a killed run under these names are set aside first.
_INIT_FILES = ("config.json", "crl.pem", "ca.crt", "issuing-ca.crt", "chain.pem",
               "private/ca.key", "private/issuing-ca.key")


class _InitMade:
    """What one `ca init` made in its pki, to undo when it fails before the CA exists
    (its index): the directories it created, parents first, and the files it wrote
    (relative to the pki). Nothing else is touched: a directory is removed only when it
    is empty (what another process put there keeps it, and its parents)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dirs: list[Path] = []
        self.files: list[str] = []
        self.set_aside: list[tuple[str, Path]] = []  # (rel, where it went)

    def has(self, rel: str) -> bool:
        return (self.path / rel).exists() or (self.path / rel).is_symlink()

    def remove_files(self) -> None:
        """Under the CA lock (nobody else writes these names meanwhile)."""
        for rel in reversed(self.files):
            (self.path / rel).unlink(missing_ok=True)
        # the leftovers of a killed run it set aside go back where they were (their names
        # are free now): a failed run changes nothing; the next one sets them aside again
        for rel, target in reversed(self.set_aside):
            if not (self.path / rel).exists() and not (self.path / rel).is_symlink():
                os.rename(target, self.path / rel)

    def remove_dirs(self) -> None:
        for directory in reversed(self.dirs):
            try:
                directory.rmdir()
            except OSError:  # not empty (or gone): not ours alone
                continue


def _public_key_from_csr(csr_pem: bytes, origin: str) -> profiles.PublicKey:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        try:
            csr = x509.load_der_x509_csr(csr_pem)
        except ValueError:
            raise ConfigError(f"{origin} is neither a PEM nor a DER certificate request",
                              hint="create one with openssl req -new") from None
    if not csr.is_signature_valid:
        raise VerificationError(f"{origin}: its self-signature does not verify",
                                rule="csr-signature", hint="recreate the CSR with its key")
    key = csr.public_key()
    try:
        profiles.key_spec_of(key)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc.message}", hint=exc.hint) from None
    return key  # type: ignore[return-value]


def _same_public_key(key: PrivateKey, cert: x509.Certificate) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt))


def _pending_token_keys(pki: Path) -> Path:
    """Where ``ca init --pkcs11`` records each key pair before generating it (its token,
    label and random CKA_ID): a run killed before the CA exists leaves its pairs in the
    token, and this record is what proves they are that run's and no one else's."""
    return pki / "private" / "pending-token-keys.json"


def _token_ca_keys(pki: Path, pkcs11: tuple[str, Path], passphrases: PassphraseSource,
                   root_spec: profiles.KeySpec, issuing_spec: profiles.KeySpec,
                   refs: dict[str, str], recorded: list[str],
                   made: _InitMade) -> tuple[PrivateKey, PrivateKey]:
    """Generate the root and issuing keys in a token (see keys/pkcs11.py); ``refs`` gets
    each pair's URI as it is made, and "module"; ``recorded`` each pair's URI as it is
    recorded, before it is made (the caller removes those if the CA is not made); ``made``
    the private directory if this makes it. Call under the CA lock, ``passphrases`` asked
    once."""
    from trustboot.keys.pkcs11 import (
        generate_key_pair,
        generated_ref,
        module_path,
        parse_uri,
        token_private_key,
        token_session,
    )

    token, module = pkcs11
    _remove_killed_runs_keys(pki, token, module, passphrases)
    # the token is there and the PIN opens it before anything is recorded: a typo in the
    # token or a wrong PIN generated nothing, and leaves no record that would hold the
    # pki (and refuse the corrected run as "pairs in another token")
    uri = parse_uri(token, require_key=False)
    with token_session(uri, module_path(uri, module), passphrases, rw=True):
        pass
    keys: list[PrivateKey] = []
    for role, spec in (("root", root_spec), ("issuing", issuing_spec)):
        label, key_id = f"trustboot-{role}-ca", os.urandom(8)
        ref = generated_ref(token, label, key_id)
        # recorded before the pair exists: a SIGKILL from here on leaves a record of it
        ensure_private_dir(pki / "private", created=made.dirs)
        write_private_file(_pending_token_keys(pki), json.dumps(
            {"token": token, "module": str(module), "refs": [*recorded, ref]}).encode(),
            overwrite=True)
        recorded.append(ref)
        refs[role] = generate_key_pair(token, module, passphrases, label=label,
                                       kind=spec.kind, size=spec.size, key_id=key_id)
        keys.append(token_private_key(refs[role], module, passphrases))
    refs["module"] = str(module)
    return keys[0], keys[1]


def _remove_killed_runs_keys(pki: Path, token: str, module: Path,
                             passphrases: PassphraseSource) -> None:
    """The key pairs a killed ``ca init --pkcs11`` of this CA home recorded (no CA was
    made: their keys certify nothing) are removed, each by its label and the random
    CKA_ID recorded for it, never anything else of the token. A record naming another
    token is refused: its PIN may not be this one's."""
    from trustboot.keys.pkcs11 import destroy_generated, parse_uri

    record = _pending_token_keys(pki)
    if not (record.exists() or record.is_symlink()):
        return
    try:
        data = json.loads(read_private_file(record, "record of pending token keys"))
        refs = [str(r) for r in data["refs"]]
        for ref in refs:
            uri = parse_uri(ref)
            if (uri.get("object") not in ("trustboot-root-ca", "trustboot-issuing-ca")
                    or uri.id is None or len(uri.id) != 8):
                raise ValueError(ref)
        same = data["token"] == token and Path(data["module"]) == module
    except (ValueError, KeyError, TypeError, ConfigError):
        raise ConfigError(f"{record} (left by an interrupted `trustboot ca init`) is not "
                          "readable as its record of token keys",
                          hint="check the token for objects labelled trustboot-root-ca / "
                               f"trustboot-issuing-ca, then remove {record}") from None
    if not same:
        shown = ", ".join(refs)
        raise ConfigError(
            f"an interrupted `trustboot ca init` of {pki} generated key pairs in another "
            f"token: {shown} (module {data['module']})",
            hint="run `trustboot ca init` again with that token (--pkcs11, --pkcs11-module) "
                 "to remove them, or remove them yourself (pkcs11-tool --login "
                 f"--delete-object --type privkey/pubkey --label L --id ID), then {record}")
    destroy_generated(token, module, passphrases, refs, best_effort=False)
    record.unlink()
