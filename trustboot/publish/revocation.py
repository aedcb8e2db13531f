"""Never make live, silently, a release a revoked certificate signed.

iPXE reads no CRL: a signature by a revoked signer (its key stolen, say) keeps booting
until the firmware stops trusting the signer's chain. So publish, rollback and the repair
of an interrupted switch are the last gate: before a release goes live, every signer of
every signature in it (as the read-back judged them: ``Verdict.signers``) is looked up
- in the pki's CA index (``trustboot ca revoke`` writes it): the signer certificate, by its
  fingerprint, is revoked, or its key was revoked as compromised with another certificate
  (``CertificateAuthority.compromised_by``, the rule ``trustboot sign`` refuses by too);
- in a CRL given with ``--crl`` (``trustboot.cms.revocation.check_crl``: it counts only
  when signed by the certificate that issued the signer, found in the signature's own
  chain). That is the whole trust setup of a job that has the roots and the CRL the CA
  published but not the CA's home; with both, both are asked.
A revoked signer is a VerificationError (exit 4) naming the signer, the reason and the
date; ``allow`` (``--unsafe-allow-revoked-signer``) lets it through with a warning.

Which revocation counts: any reason. A routine renewal revokes nothing (``ca renew``), so
a revocation is always someone's decision that the certificate must not be trusted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trustboot.cms.revocation import reason_name
from trustboot.cms.verify import SignerReport
from trustboot.errors import VerificationError
from trustboot.text import clean, shown_names

if TYPE_CHECKING:
    from trustboot.ca.store import CertificateAuthority, IssuedEntry

UNSAFE_FLAG = "--unsafe-allow-revoked-signer"


@dataclass(frozen=True)
class Revoked:
    """A signer that must not be trusted, and who says so."""

    signer: str  # the certificate's common name
    serial: int
    reason: str | None
    revoked_at: str | None  # ISO 8601, as the index or the CRL has it
    source: str  # "the CA index in PKI", "CRL PATH"
    name: str | None = None  # the pki's name of the certificate
    via: str | None = None  # the certificate whose revocation named its key compromised
    by_crl: bool = False  # a --crl says so (else the CA index)

    def describe(self) -> str:
        who = f'"{clean(self.signer, limit=200)}" (serial {self.serial:x})'
        if self.via is not None:
            return (f"{who}: its key was revoked as compromised with certificate "
                    f"{clean(self.via, limit=200)}"
                    + (f" on {self.revoked_at}" if self.revoked_at else "")
                    + f" in {self.source}")
        return (f"{who} was revoked" + (f" on {self.revoked_at}" if self.revoked_at else "")
                + f" for {reason_name(self.reason)} in {self.source}")

    def to_json(self) -> dict[str, Any]:
        return {"signer": self.signer, "name": self.name, "serial": f"{self.serial:x}",
                "reason": reason_name(self.reason), "revoked_at": self.revoked_at,
                "source": self.source, "via": self.via}


def _key_id(spki_der: bytes) -> str | None:
    """The CA index's key id (store.spki_sha256) of a SubjectPublicKeyInfo as a
    certificate encodes it; None when it cannot be read."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    from trustboot.ca.store import spki_sha256

    if not spki_der:
        return None
    try:
        return spki_sha256(load_der_public_key(spki_der))
    except (ValueError, UnsupportedAlgorithm):
        return None


class Revocations:
    """What the pki's CA index and the given CRLs say about signers (see the module doc).

    ``allow``: let revoked signers through, each reported once to ``warn``, which also
    receives what a CRL could not say (stale, issued by another CA)."""

    def __init__(self, *, ca: CertificateAuthority | None = None,
                 crls: Sequence[tuple[bytes, str]] = (), allow: bool = False,
                 warn: Callable[[str], None] | None = None) -> None:
        self._ca = ca
        self._crls = tuple(crls)
        self.allow = allow
        self._warn = warn
        self._said: set[str] = set()
        self._mutex = threading.Lock()
        self._compromised_keys: dict[str, IssuedEntry] | None = None

    @classmethod
    def load(cls, *, ca: CertificateAuthority | None = None, crl: Path | None = None,
             allow: bool = False, warn: Callable[[str], None] | None = None
             ) -> Revocations:
        """From a CA home the caller opened (it also gave the trust anchors: one open per
        command) and a CRL file (when given)."""
        from trustboot.ca.store import MAX_CRL_FILE
        from trustboot.fsutil import read_capped

        crls = [(read_capped(crl, MAX_CRL_FILE, "CRL"), f"CRL {crl}")] if crl else []
        return cls(ca=ca, crls=crls, allow=allow, warn=warn)

    def _say(self, message: str) -> None:
        with self._mutex:
            if message in self._said:
                return
            self._said.add(message)
        if self._warn is not None:
            self._warn(message)

    def _compromised(self, ca: CertificateAuthority) -> dict[str, IssuedEntry]:
        """``ca.compromised_keys()``, built once: every signer of every object is looked
        up, and the index does not change under this view."""
        with self._mutex:
            if self._compromised_keys is None:
                self._compromised_keys = ca.compromised_keys()
            return self._compromised_keys

    def _entry_of(self, ca: CertificateAuthority, signer: SignerReport
                  ) -> IssuedEntry | None:
        """The index's entry of a signer certificate as a signature carries it."""
        # by fingerprint, or by what the CA signed: the same certificate with other bytes
        # outside its tbsCertificate (an ECDSA signature's s made n-s, a longer length
        # form) verifies as well and has another fingerprint. An unrelated pki never speaks
        # about a foreign signer (its serial may be anything, its tbsCertificate is not).
        entry = ca.by_sha256(signer.sha256.lower())
        if entry is None and signer.tbs_sha256:
            candidate = ca.find_serial(signer.serial)
            if candidate is not None and hashlib.sha256(
                    candidate.load_cert().tbs_certificate_bytes).hexdigest() \
                    == signer.tbs_sha256:
                entry = candidate
        return entry

    def _judge(self, ca: CertificateAuthority, entry: IssuedEntry | None, key: str | None,
               *, who: str, serial: int) -> Revoked | None:
        """What the index says about a certificate (``entry``, None when the index does
        not know it) whose key has the index's key id ``key``."""
        where = f"the CA index in {ca.path}"
        if entry is not None and entry.status == "revoked":
            return Revoked(who, serial, entry.revocation_reason, entry.revoked_at, where,
                           name=entry.name)
        # a compromised key is refused under any certificate, one the index knows or not
        compromised = self._compromised(ca).get(key) if key else None
        if compromised is not None:
            return Revoked(who, serial, "key_compromise", compromised.revoked_at, where,
                           name=entry.name if entry is not None else None,
                           via=f"{compromised.name} (serial {compromised.serial:x})")
        return None

    def _by_index(self, signer: SignerReport) -> Revoked | None:
        ca = self._ca
        if ca is None or not signer.sha256:
            return None
        entry = self._entry_of(ca, signer)
        key = ca.key_id(entry) if entry is not None else _key_id(signer.spki_der)
        return self._judge(ca, entry, key, who=signer.common_name, serial=signer.serial)

    def of(self, signers: Iterable[SignerReport], now: dt.datetime) -> list[Revoked]:
        """The revoked ones among ``signers`` (each once)."""
        from trustboot.cms.revocation import check_crl

        signers = list({s.sha256 or f"{s.serial:x}": s for s in signers}.values())
        found: dict[int, Revoked] = {}
        for s in signers:
            hit = self._by_index(s)
            if hit is not None:
                found.setdefault(s.serial, hit)
        for data, source in self._crls:
            check = check_crl(data, signers, source=source, now=now)
            for note in check.notes:
                self._say(note)
            for r in check.revoked:
                found.setdefault(r.serial, Revoked(r.common_name, r.serial, r.reason,
                                                   r.revoked_at.isoformat(), source,
                                                   by_crl=True))
        return sorted(found.values(), key=lambda r: (r.signer, r.serial))

    def enforce(self, signed: Mapping[str, Sequence[SignerReport]], *, doing: str,
                now: dt.datetime, hint: str) -> None:
        """Refuse (VerificationError, exit 4) to go on ``doing`` ("make release r1 live")
        when a signer of one of ``signed`` (object name -> its signers) is revoked; with
        ``allow``, warn (once per signer and action)."""
        by_signer: dict[Revoked, list[str]] = {}
        # the objects of a release share their signers: each set of them is looked up
        # (the CRL parsed and its signature checked) once, not once per object
        looked_up: dict[frozenset[str], list[Revoked]] = {}
        for name in sorted(signed):
            signers = frozenset(s.sha256 or f"{s.serial:x}" for s in signed[name])
            if signers not in looked_up:
                looked_up[signers] = self.of(signed[name], now)
            for r in looked_up[signers]:
                by_signer.setdefault(r, []).append(name)
        if not by_signer:
            return
        parts = [f"{r.describe()}; it signed {shown_names(names, 5)}"
                 for r, names in by_signer.items()]
        if self.allow:
            for part in parts:
                self._say(f"{UNSAFE_FLAG}: going on to {doing} although the signer "
                          f"{part}; iPXE does not check revocation and will boot it")
            return
        first = next(iter(by_signer))
        raise VerificationError(
            f"refusing to {doing}: the signer {'; the signer '.join(parts)}. "
            "iPXE does not check revocation: it would boot this release",
            hint=f"{hint}; only if you must: {UNSAFE_FLAG}", rule="revoked-signer",
            subject=first.name or first.signer)
