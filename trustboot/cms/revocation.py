"""What a CRL says about the signers of a signature.

iPXE reads no CRL: a revoked signer's signatures keep verifying at boot until the firmware
stops trusting its chain. `trustboot verify --crl` reports a revocation as a warning, so a
pipeline without the CA home (only the CRL the CA published) still learns about it. The
CRL counts only when it is signed by the certificate that issued a signer (as found in
the signature's chain); any other CRL is named as saying nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from trustboot.cms.verify import SignerReport
from trustboot.errors import ConfigError, VerificationError

# RFC 5280 5.3.1: a CRL entry without a reasonCode is revoked for "unspecified" (as
# `ca revoke` defaults to); every report spells a revocation's reason with reason_name
UNSPECIFIED = "unspecified"


def reason_name(reason: str | None) -> str:
    """A revocation's reason as reports spell it (the CA index's and CRLReason's name)."""
    return reason or UNSPECIFIED


def crl_reason(entry: x509.RevokedCertificate) -> str:
    """A CRL entry's reason, by the CA index's name for it."""
    try:
        return str(entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.name)
    except x509.ExtensionNotFound:
        return UNSPECIFIED


@dataclass(frozen=True)
class CrlRevocation:
    """A signer the CRL lists (reported as publish.revocation.Revoked)."""

    common_name: str
    serial: int
    revoked_at: dt.datetime
    reason: str


@dataclass(frozen=True)
class CrlCheck:
    revoked: tuple[CrlRevocation, ...]
    notes: tuple[str, ...]  # why the CRL said less than it might have (stale, unrelated)


def load_crl(data: bytes, source: str) -> x509.CertificateRevocationList:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise ConfigError(f"{source} is not a CRL (PEM or DER)",
                          hint="pass the CRL the CA published (trustboot ca crl writes "
                               "crl.pem)") from None


def check_crl(data: bytes, signers: Sequence[SignerReport], *, source: str,
              now: dt.datetime) -> CrlCheck:
    """The signers ``data`` (a CRL read from ``source``) revokes.

    Refused (ConfigError) when the CRL names a signer's issuer but its signature does not
    verify with that issuer's key: an altered CRL is not evidence either way.
    """
    crl = load_crl(data, source)
    revoked: list[CrlRevocation] = []
    notes: list[str] = []
    used = False
    for signer in signers:
        if signer.issuer_der is None:
            continue
        try:
            # strict DER here, where iPXE's parser (which found the issuer) is lenient: a
            # length in long form, say, which no signature covers on a certificate's outside
            issuer = x509.load_der_x509_certificate(signer.issuer_der)
            issuer_key = issuer.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise VerificationError(
                f"{source} cannot be checked for {signer.common_name!r}: the certificate of "
                f"its issuer in the signature is not strict DER ({exc}), so whether the CRL "
                "revokes the signer is not known",
                hint="re-sign with the chain as the CA issued it (trustboot ca export), or "
                     "verify without --crl") from None
        if crl.issuer != issuer.subject:
            continue
        if not crl.is_signature_valid(issuer_key):  # type: ignore[arg-type]
            raise ConfigError(
                f"{source}: the CRL's signature does not verify with the key of "
                f"{issuer.subject.rfc4514_string()}, which it claims as its issuer",
                hint="use the CRL the CA published (trustboot ca crl), not an altered copy")
        if not used and crl.next_update_utc is not None and crl.next_update_utc < now:
            notes.append(f"{source} is stale: its next update was due "
                         f"{crl.next_update_utc.isoformat()}; a later revocation would not "
                         "be in it (fetch the current CRL)")
        used = True
        entry = crl.get_revoked_certificate_by_serial_number(signer.serial)
        if entry is None:
            continue
        revoked.append(CrlRevocation(signer.common_name, signer.serial,
                                     entry.revocation_date_utc, crl_reason(entry)))
    if not used:
        notes.append(f"{source} is issued by {crl.issuer.rfc4514_string()}, which issued "
                     "none of the signers: it says nothing about them")
    return CrlCheck(tuple(revoked), tuple(notes))
