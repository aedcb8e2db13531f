"""Would iPXE's ``imgverify`` accept this signature? iPXE's own rules, offline, no I/O.

Follows ``src/usr/imgtrust.c``, ``src/crypto/cms.c`` and ``src/crypto/x509.c`` in order:
parse the CMS message (every certificate in it must parse), find each signer by issuer and
serial, build its chain from the signature's certificates and then the store (``CERT=``),
validate every chain at the client's clock with TIMESTAMP_ERROR_MARGIN, then for each signer
(optionally filtered by ``--signer``) check keyUsage/extKeyUsage and the signature over the
image digest. The first failure is reported, as iPXE would, with the certificate it concerns
and what to do about it.

The bytes are read with a port of iPXE's own DER reader (``_asn1.Cursor``), so the verdict
is iPXE's where asn1crypto or cryptography would be stricter or more lenient. What iPXE
skips or tolerates but no honest tool writes is a warning (``SUSPICIONS``), a failure only
with ``strict=True``.

The caller hashes the image (``digest_algorithms()`` says with what) and passes the digests:
nothing here reads files or the clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from asn1crypto import cms as acms
from asn1crypto import core

from trustboot.cms import _asn1
from trustboot.cms._asn1 import FramingError
from trustboot.cms.certinfo import (
    DEFAULT_IPXE,
    CertInfo,
    CertProblem,
    IpxeVersion,
    name_text,
    parse_certificate,
    public_key,
    verify_raw,
)
from trustboot.ipxeparse import inet6_aton, inet_aton
from trustboot.text import clean

# config/crypto.h: 12 h for a non-UTC RTC plus 30 min of drift.
TIMESTAMP_ERROR_MARGIN = dt.timedelta(seconds=(12 * 60 + 30) * 60)
# iPXE copies the whole .sig into its 4 MiB heap.
MAX_SIGNATURE_SIZE = 4 << 20
WARN_SIGNATURE_SIZE = 1 << 20
# A real signature carries its chain (signer, issuing CA, root; during a CA rotation perhaps
# one more), and iPXE keeps every certificate of it in its 4 MiB heap (core/malloc.c), so
# real ones carry a handful. Parsing costs ~1 ms a certificate: without a cap a hostile
# 4 MiB .sig of ~12,000 small ones costs half a minute of CPU in `origin check` or a
# read-back. 64 is ten times any real chain.
MAX_CERTIFICATES = 64
CROSSCERT = "http://ca.ipxe.org/auto"
OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_DATA = "1.2.840.113549.1.7.1"
RESIGN = (
    "re-sign with `trustboot sign`, or `openssl cms -sign -binary -noattr -outform DER "
    "-nosmimecap -md sha256 -signer CERT -inkey KEY -certfile CHAIN`"
)


@dataclass(frozen=True)
class Finding:
    """One failed rule (or a warning): what, on which certificate, and what to do."""

    rule: str
    message: str
    remedy: str
    certificate: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "message": self.message, "remedy": self.remedy,
                "certificate": self.certificate}


@dataclass(frozen=True)
class TrustAnchor:
    """A fingerprint compiled in with TRUST=; the certificate only helps explain failures."""

    sha256: bytes
    certificate: bytes | None = None
    label: str = ""


@dataclass(frozen=True)
class SignerReport:
    subject: str
    common_name: str
    serial: int
    digest_algorithm: str
    signature_algorithm: str
    chain: tuple[str, ...]
    not_after: dt.datetime  # the signer certificate's
    chain_not_after: dt.datetime  # the earliest of the chain: the signature's end of life
    sha256: str = ""  # the signer certificate's fingerprint (hex)
    not_before: dt.datetime | None = None  # the signer certificate's
    issuer_der: bytes | None = None  # the certificate that issued it, as the chain found it
    # What stays when the certificate's bytes change but not what its CA signed (an ECDSA
    # signature's s made n-s, a length in a longer form): its tbsCertificate's sha256 (hex)
    # and its key (SubjectPublicKeyInfo as encoded). Revocation checks match on these.
    tbs_sha256: str = ""
    spki_der: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject, "common_name": self.common_name,
            "serial": f"{self.serial:x}", "digest_algorithm": self.digest_algorithm,
            "signature_algorithm": self.signature_algorithm, "chain": list(self.chain),
            "not_after": self.not_after.isoformat(),
            "chain_not_after": self.chain_not_after.isoformat(),
            "not_before": self.not_before.isoformat() if self.not_before else None,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class Verdict:
    failure: Finding | None
    warnings: tuple[Finding, ...] = ()
    signers: tuple[SignerReport, ...] = ()

    @property
    def ok(self) -> bool:
        return self.failure is None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failure": self.failure.to_json() if self.failure else None,
            "warnings": [w.to_json() for w in self.warnings],
            "signers": [s.to_json() for s in self.signers],
        }


class _Fail(Exception):
    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message)
        self.finding = finding


def _fail(rule: str, message: str, remedy: str, cert: CertInfo | None = None) -> _Fail:
    return _Fail(Finding(rule, message, remedy, cert.label if cert else None))


@dataclass(frozen=True)
class _Signer:
    info: CertInfo
    digest: str
    sig_name: str  # iPXE's name of the signatureAlgorithm
    sig_family: str  # its public-key algorithm: all iPXE uses of it
    signature: bytes
    sig_hash: str | None = None  # the hash signatureAlgorithm names, if any
    signed_attrs: bool = False
    chain: tuple[CertInfo, ...] = ()


@dataclass(frozen=True)
class _Message:
    """A parsed signature. Immutable: one parse serves digest_algorithms() and
    verify_signature() (see _parsed), and each verification builds its own chains."""

    certificates: tuple[CertInfo, ...]
    signers: tuple[_Signer, ...]
    warnings: tuple[Finding, ...]


# --- parsing (cms.c) ---------------------------------------------------------------------

OID_SIGNED_DATA_RAW = _asn1.oid_bytes(OID_SIGNED_DATA)

# Warnings about fields iPXE skips or tolerates: no iPXE rule fails on them, so they never
# change the verdict, except under --strict, which refuses them.
SUSPICIONS = frozenset({
    "signature-structure", "signature-encoding", "signature-algorithm-mismatch",
    "signed-attributes-ignored", "attached-content", "content-type",
    "certificate-altered", "certificate-version", "certificate-encoding",
})


def _unwrap(data: bytes) -> bytes:
    """What iPXE's DER or PEM image type hands to cms_message()."""
    if not data:
        raise _fail("signature-format", "the signature file is empty",
                    "sign the image again; the .sig was not written completely")
    if len(data) > MAX_SIGNATURE_SIZE:  # checked first: the caller may stop reading here
        raise _fail(
            "signature-too-large",
            "the signature is larger than 4 MiB; iPXE copies it into its 4 MiB heap",
            "use a detached signature (no -nodetach, no embedded content)",
        )
    try:
        pem = _asn1.decode_pem(data)
    except FramingError as exc:
        raise _fail("signature-format", f"the signature is broken PEM: {exc}", RESIGN) from None
    if pem is not None:
        cursor = _asn1.Cursor(pem)
        cursor.shrink(_asn1.ANY)  # cms_message(): only the first object counts
        return cursor.value
    # der_image_probe(): one SEQUENCE spanning the whole file, nothing after it.
    cursor = _asn1.Cursor(data)
    if cursor.skip(_asn1.SEQUENCE) and cursor.len == 0:
        return data
    if data[:1] != b"\x30":
        raise _fail("signature-format", "the signature is neither DER nor PEM CMS",
                    "pass the .sig made for this image (DER or PEM CMS SignedData)")
    try:
        _asn1.check_framing(data)
        text = "it is not one SEQUENCE spanning the file"
    except FramingError as exc:
        text = str(exc)
    remedy = RESIGN
    if len(data) > 1 and data[1] == 0x80:
        text = "BER indefinite length at offset 0"
        remedy = "iPXE reads only DER: " + RESIGN + " (without -stream)"
    raise _fail("signature-format", f"the signature is not one DER object: {text}", remedy)


def _parse(data: bytes, version: IpxeVersion) -> _Message:
    """cms_message() and cms_parse_signed(), field for field."""
    der = _unwrap(data)
    warnings: list[Finding] = []
    if len(data) > WARN_SIGNATURE_SIZE:
        warnings.append(Finding(
            "signature-size",
            f"the signature is {len(data)} bytes; iPXE copies it into its 4 MiB heap",
            "use a detached signature"))
    cursor = _asn1.Cursor(der)
    cursor.enter(_asn1.SEQUENCE)
    ctype = cursor.copy()
    ctype.enter(_asn1.OID)
    if ctype.value != OID_SIGNED_DATA_RAW:
        raise _fail("not-signed-data",
                    f"the CMS message is of type {_asn1.oid_text(ctype.value)}, not signedData",
                    "pass a CMS SignedData signature: " + RESIGN)
    cursor.skip(_asn1.ANY)
    cursor.enter(_asn1.explicit(0))
    sd = cursor.copy()
    sd.enter(_asn1.SEQUENCE)
    sd.skip(_asn1.INTEGER)  # version
    sd.skip(_asn1.SET)  # digestAlgorithms
    sd.skip(_asn1.SEQUENCE)  # encapContentInfo
    if sd.type() != _asn1.explicit(0):
        raise _fail(
            "certificates-missing",
            "the signature has no certificates field (or SignedData is malformed before "
            "it); iPXE then finds no signers at all",
            "sign with the certificate chain included: " + RESIGN)
    certs_cursor = sd.copy()
    certs_cursor.enter(_asn1.explicit(0))
    count = _count(certs_cursor)
    if count > MAX_CERTIFICATES:
        raise _fail(
            "too-many-certificates",
            f"the signature carries {count} certificates; trustboot reads at most "
            f"{MAX_CERTIFICATES} (a real signature carries its chain, a handful, which "
            "iPXE keeps in its 4 MiB heap): this .sig is broken or hostile",
            "sign with the signer's chain only: " + RESIGN)
    certificates: list[CertInfo] = []
    while certs_cursor.len:
        try:
            certificates.append(parse_certificate(certs_cursor.value, version))
        except CertProblem as exc:
            raise _fail(exc.rule, exc.message + " (iPXE rejects the whole signature)",
                        exc.remedy) from None
        certs_cursor.skip(_asn1.ANY)
    sd.skip(_asn1.ANY)
    sd.skip_if_exists(_asn1.explicit(1))  # crls
    participants = sd.copy()
    participants.enter(_asn1.SET)
    signers: list[_Signer] = []
    while participants.len:
        signers.append(_parse_signer_info(participants, certificates, version))
        participants.skip(_asn1.ANY)
    warnings.extend(_oddities(der, signers))
    return _Message(tuple(certificates), tuple(signers), tuple(warnings))


def _count(cursor: _asn1.Cursor) -> int:
    """How many objects ``cursor`` holds, without parsing them."""
    walk = cursor.copy()
    count = 0
    while walk.len:
        walk.skip(_asn1.ANY)
        count += 1
    return count


@functools.lru_cache(maxsize=8)
def _parsed(data: bytes, version: IpxeVersion) -> _Message | Finding:
    """_parse(), remembered: callers ask digest_algorithms() and then verify_signature()
    about the same bytes, and a publish judges each .sig twice. A few entries: the
    signatures of one release."""
    try:
        return _parse(data, version)
    except _Fail as exc:
        return exc.finding


def _message(data: bytes, version: IpxeVersion) -> _Message:
    parsed = _parsed(data, version)
    if isinstance(parsed, Finding):
        raise _Fail(parsed)
    return parsed


_NULL = b"\x05\x00"


def _odd(what: str) -> Finding:
    return Finding(
        "signature-structure",
        f"{what}; iPXE skips this field, so it accepts the signature, but no signing tool "
        "writes it: the signature may have been altered or made by a broken tool",
        "use the .sig exactly as it was signed, or sign again: " + RESIGN)


def _oddities(der: bytes, signers: list[_Signer]) -> list[Finding]:
    """Fields iPXE skips, held to RFC 5652 and DER: warnings (failures under --strict)."""
    try:
        _asn1.check_framing(der)
        info = acms.ContentInfo.load(der, strict=True)
        sd = info["content"]
        signer_infos = list(sd["signer_infos"])
        found = _structure_oddities(sd, signer_infos)
    except FramingError as exc:
        return [Finding("signature-encoding",
                        f"the signature is not strict DER ({exc}); iPXE reads it anyway",
                        "sign again: " + RESIGN)]
    except Exception as exc:  # any refusal by the strict reader is the answer
        return [Finding("signature-encoding",
                        f"the signature is not a strictly valid CMS message ({exc}); iPXE "
                        "reads it anyway", "sign again: " + RESIGN)]
    for signer in signers:
        named = signer.sig_hash
        if named is not None and named != signer.digest:
            found.append(Finding(
                "signature-algorithm-mismatch",
                f"the signer {signer.info.label} names signature algorithm "
                f"{signer.sig_name} ({named}) but digest algorithm {signer.digest}; iPXE uses "
                "only the public-key part of signatureAlgorithm, so it accepts this",
                "sign again so that both name the same hash: " + RESIGN, signer.info.label))
        if signer.signed_attrs:
            found.append(Finding(
                "signed-attributes-ignored",
                f"the signer {signer.info.label} has signed attributes, which iPXE skips; "
                "its signature is over the image digest itself, so iPXE accepts it",
                "re-sign without signed attributes (openssl cms -sign -binary -noattr)",
                signer.info.label))
    return found


def _structure_oddities(sd: Any, signer_infos: list[Any]) -> list[Finding]:
    found: list[Finding] = []
    encap = sd["encap_content_info"]
    if encap["content"].native is not None:
        found.append(Finding(
            "attached-content",
            "the signature carries the signed content; iPXE ignores it and checks the "
            "image loaded separately",
            "sign detached (no -nodetach) to keep the .sig small"))
    if encap["content_type"].dotted != OID_DATA:
        found.append(Finding(
            "content-type", f"eContentType is {encap['content_type'].dotted}, not id-data; "
            "iPXE skips it", "sign with `trustboot sign`"))
    # RFC 5652 5.1: v1 unless some signer is named by key identifier (then v3).
    want = "v3" if any(si["sid"].name != "issuer_and_serial_number" for si in signer_infos) \
        else "v1"
    if sd["version"].native != want:
        found.append(_odd(f"SignedData.version is {sd['version'].native}, not {want}"))
    listed = {a["algorithm"].dotted for a in sd["digest_algorithms"]}
    if any(a["parameters"].dump() not in {b"", _NULL} for a in sd["digest_algorithms"]):
        found.append(_odd("a digestAlgorithms entry has parameters other than NULL"))
    for si in signer_infos:
        expected = "v1" if si["sid"].name == "issuer_and_serial_number" else "v3"
        if si["version"].native != expected:
            found.append(_odd(f"SignerInfo.version is {si['version'].native}, not {expected}"))
        if si["digest_algorithm"]["algorithm"].dotted not in listed:
            found.append(_odd("the signer's digest algorithm is missing from "
                              "digestAlgorithms"))
        if si["digest_algorithm"]["parameters"].dump() not in {b"", _NULL}:
            found.append(_odd("the signer's digestAlgorithm has parameters other than NULL"))
        sig_oid = si["signature_algorithm"]["algorithm"].dotted
        params = si["signature_algorithm"]["parameters"].dump()
        if sig_oid != _asn1.OID_RSA_PSS and params not in (
                {b""} if sig_oid in _asn1.ECDSA_SIG_OIDS or sig_oid == _asn1.OID_EC_PUBKEY
                else {b"", _NULL}):
            found.append(_odd(f"signatureAlgorithm {sig_oid} has unexpected parameters"))
        if not isinstance(si["unsigned_attrs"], core.Void):
            found.append(_odd("the signer has unsigned attributes"))
    if not isinstance(sd["crls"], core.Void):
        found.append(_odd("the signature carries CRLs"))
    return found


def _parse_signer_info(
    raw: _asn1.Cursor, certificates: list[CertInfo], version: IpxeVersion,
) -> _Signer:
    """cms_parse_participant() for a signerInfo."""
    cursor = raw.copy()
    cursor.enter(_asn1.SEQUENCE)
    cursor.skip(_asn1.INTEGER)  # version
    if cursor.type() == _asn1.implicit(0):
        raise _fail(
            "signer-identifier",
            "the signer is identified by subject key identifier; iPXE only finds signers by "
            "issuer and serial number",
            "re-sign without -keyid: " + RESIGN)
    ias = cursor.copy()
    ias.enter(_asn1.SEQUENCE)
    issuer = ias.copy()
    ok = issuer.shrink(_asn1.SEQUENCE)
    ias.skip(_asn1.ANY)
    serial = ias.copy()
    if not ok or not serial.shrink(_asn1.INTEGER):
        raise _fail("signature-format",
                    "a SignerInfo has no issuerAndSerialNumber iPXE can read", RESIGN)
    signer = next((c for c in certificates
                   if c.issuer_raw == issuer.value and c.serial_raw == serial.value), None)
    if signer is None:
        raise _fail(
            "signer-certificate-missing",
            f"the signer (serial {_serial_text(serial.value)}, issuer "
            f"{_name_text(issuer.value)}) is not among the signature's certificates",
            "re-sign with the signer certificate included (openssl: no -nocerts)")
    cursor.skip(_asn1.ANY)
    ecdsa, pss = version.ecdsa, version.rsa_pss
    digest_algo, digest_oid = _asn1.algorithm_at(cursor, ecdsa=ecdsa, rsa_pss=pss)
    if digest_algo is None or digest_algo.digest is None:
        raise _fail("unsupported-algorithm",
                    f"digest algorithm {digest_oid} is not in iPXE {version}",
                    "sign with SHA-256, SHA-384 or SHA-512", signer)
    cursor.skip(_asn1.ANY)
    signed_attrs = cursor.type() == _asn1.explicit(0)
    cursor.skip_if_exists(_asn1.explicit(0))
    sig_algo, sig_oid = _asn1.algorithm_at(cursor, ecdsa=ecdsa, rsa_pss=pss)
    if sig_algo is None or sig_algo.pubkey is None:
        oid = sig_oid
        note = (" (ECDSA needs iPXE >= 2.0.0)"
                if oid in _asn1.ECDSA_SIG_OIDS or oid == _asn1.OID_EC_PUBKEY
                else " (RSA-PSS needs iPXE newer than 2.0.0)" if oid == _asn1.OID_RSA_PSS
                else "")
        raise _fail("unsupported-algorithm",
                    f"signature algorithm {oid} is not in iPXE {version}{note}",
                    "sign with an RSA key (PKCS#1 v1.5), or target a newer iPXE with "
                    "--ipxe-version", signer)
    cursor.skip(_asn1.ANY)
    value = cursor.copy()
    if not value.enter(_asn1.OCTET_STRING):
        raise _fail("signature-format", "a SignerInfo's signature is not an OCTET STRING",
                    RESIGN, signer)
    return _Signer(signer, digest_algo.digest, sig_algo.name, sig_algo.pubkey, value.value,
                   sig_hash=sig_algo.digest, signed_attrs=signed_attrs)


def _serial_text(tlv: bytes) -> str:
    c = _asn1.Cursor(tlv)
    c.enter(_asn1.INTEGER)
    return f"{int.from_bytes(c.value, 'big', signed=True):#x}" if c.len else "?"


def _name_text(tlv: bytes) -> str:
    try:
        return clean(name_text(tlv))
    except _asn1.PARSE_ERRORS:
        return tlv.hex()


def oversized() -> Verdict:
    """The verdict on a signature larger than iPXE's heap, without reading it."""
    return Verdict(Finding(
        "signature-too-large",
        "the signature is larger than 4 MiB; iPXE copies it into its 4 MiB heap",
        "use a detached signature (no -nodetach, no embedded content)"))


def digest_algorithms(signature: bytes, version: IpxeVersion = DEFAULT_IPXE) -> set[str]:
    """The hashes the image must be digested with to check this signature (empty if broken)."""
    try:
        return {s.digest for s in _message(signature, version).signers}
    except _Fail:
        return set()


# --- chains (x509.c) ---------------------------------------------------------------------

_MARGIN_S = int(TIMESTAMP_ERROR_MARGIN.total_seconds())


def _in_time(cert: CertInfo, now_s: int) -> bool:
    # x509_check_time(), in iPXE's own seconds (dates past year 9999 included).
    return cert.not_before_s <= now_s + _MARGIN_S and cert.not_after_s >= now_s - _MARGIN_S


def _seconds(now: dt.datetime) -> int:
    return int(now.timestamp()) if now > _EPOCH else -int((_EPOCH - now).total_seconds())


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _time_failure(cert: CertInfo, now: dt.datetime, what: str) -> _Fail:
    if cert.not_before_s > _seconds(now) + _MARGIN_S:
        return _fail(
            "not-yet-valid",
            f"{what} {cert.label} is not valid until {cert.not_before.isoformat()}, later than "
            f"{now.isoformat()} plus iPXE's 12h30m margin",
            "reissue it with an earlier notBefore (backdate by a day), or check the client "
            "clock", cert)
    return _fail(
        "expired",
        f"{what} {cert.label} expired at {cert.not_after.isoformat()}, before "
        f"{now.isoformat()} minus iPXE's 12h30m margin",
        "renew the certificate and re-sign; a signature dies with its chain", cert)


def _auto_append(chain: list[CertInfo], store: Sequence[CertInfo]) -> None:
    # x509_auto_append: follow issuer -> first certificate with that subject, until none
    # is found or the one found is the one just looked at (self-issued). It stops at
    # nothing else: two certificates naming each other as issuer (a cross-certificate
    # each way) are appended in turn until iPXE runs out of memory.
    cert = chain[-1]
    while True:
        previous = cert
        found = next((c for c in store if c.subject_raw == cert.issuer_raw), None)
        if found is None or found.der == previous.der:
            return
        if any(found.der == c.der for c in chain):
            raise _fail(
                "chain-loop",
                f"following issuers from {chain[0].label} comes back to {found.label}: "
                "iPXE appends the same certificates again and again until it runs out of "
                "memory (\"Not enough space\")",
                "leave the cross-certificate that points back out of the signature "
                "(trustboot sign --signing-chain) and of the CERT= set", found)
        chain.append(found)
        cert = found


def _path_len(cert: CertInfo) -> float:
    if not cert.is_ca:
        return 1  # path_len 0 + 1
    return float("inf") if cert.path_len is None else cert.path_len + 1


def _validate_chain(
    chain: Sequence[CertInfo], now: dt.datetime, trusted: set[bytes],
    anchors: Sequence[TrustAnchor], warnings: list[Finding], *, ocsp_reachable: bool,
) -> None:
    now_s = _seconds(now)
    for top, cert in enumerate(chain):
        if not (_in_time(cert, now_s) and cert.sha256 in trusted):
            continue
        remaining = {top: _path_len(cert)}
        for i in range(top - 1, -1, -1):
            child, issuer = chain[i], chain[i + 1]
            what = "the signer" if i == 0 else "issuing certificate"
            if not _in_time(child, now_s):
                raise _time_failure(child, now, what)
            if child.sha256 in trusted:
                remaining[i] = _path_len(child)
                continue
            _check_issuer(child, issuer, trusted)
            if remaining[i + 1] == 0:
                raise _fail(
                    "path-length",
                    f"{child.label} is below {issuer.label}, whose chain allows no further "
                    "CA levels (pathLenConstraint)",
                    "reissue the CA with a larger pathLenConstraint, or sign from a shallower "
                    "CA", issuer)
            if child.ocsp_uris:
                _ocsp(child, warnings, ocsp_reachable)
            remaining[i] = min(_path_len(child), remaining[i + 1] - 1)
        return
    _explain_untrusted(chain, now, trusted, anchors)


def _ocsp(cert: CertInfo, warnings: list[Finding], reachable: bool) -> None:
    url = cert.ocsp_uris[0]
    if not reachable:
        raise _fail(
            "ocsp-required",
            f"{cert.label} names an OCSP responder ({url}); iPXE must get a 'good' answer "
            "from it at boot and rejects the signature when it cannot reach it (x509.c: "
            "OCSP check required), so this predicts a rejection",
            "issue the certificate without an OCSP URL, or, if the responder is reachable "
            "from the boot network and answers for this CA, pass --assume-ocsp-reachable",
            cert)
    warnings.append(Finding(
        "ocsp",
        f"{cert.label} names an OCSP responder ({url}); iPXE queries it at boot and fails "
        "verification if it is unreachable or says anything but good (assumed reachable)",
        "make sure the responder is reachable from the boot network, or issue without "
        "an OCSP URL", cert.label))


def _check_issuer(cert: CertInfo, issuer: CertInfo, trusted: AbstractSet[bytes]) -> None:
    # x509_check_issuer(): names (checked by the chain builder), CA, keyCertSign, signature.
    if not issuer.is_ca:
        raise _fail(
            "issuer-not-ca",
            f"{issuer.label} issued {cert.label} but is not a CA (basicConstraints CA:FALSE "
            "or absent)",
            "issue from a certificate with basicConstraints CA:TRUE", issuer)
    if issuer.key_usage_present and not issuer.key_cert_sign:
        raise _fail(
            "issuer-key-usage",
            f"{issuer.label} issued {cert.label} but its keyUsage lacks keyCertSign",
            "reissue the CA with keyUsage keyCertSign", issuer)
    expected = {"rsa": "rsa", "ec": "ecdsa"}.get(issuer.key_family)
    try:
        key = public_key(issuer)
    except CertProblem as exc:
        raise _fail(exc.rule, exc.message, exc.remedy, issuer) from None
    if cert.sig_family == expected and verify_raw(
            key, cert.sig_family, cert.sig_hash, cert.signature, data=cert.tbs):
        return
    if cert.self_issued and cert.sha256 not in trusted:
        # A root with the trusted root's names but not its key (or bytes): a look-alike.
        raise _fail(
            "untrusted-root",
            f"the chain ends at {cert.label}, a root that has the names of the trusted root "
            f"{issuer.label} but not its key (sha256 {cert.sha256.hex()} is not in the trust "
            "set): a look-alike root",
            "sign with a certificate issued under a trusted root, or rebuild iPXE with "
            "TRUST=<that root>", cert)
    raise _fail(
        "certificate-signature",
        f"the signature on {cert.label} does not verify with the key of {issuer.label}",
        "the certificate was not issued by that CA, or was altered: reissue it", cert)


def _check_curve(cert: CertInfo) -> None:
    if cert.key_family == "ec" and cert.curve not in _asn1.EC_CURVES:
        raise _fail(
            "unsupported-algorithm",
            f"{cert.label} has an ECDSA key on {cert.curve}; iPXE implements only P-256 and "
            "P-384, so nothing signed with this key verifies",
            "reissue with a P-256/P-384 (or RSA) key", cert)


def _explain_untrusted(
    chain: Sequence[CertInfo], now: dt.datetime, trusted: set[bytes],
    anchors: Sequence[TrustAnchor],
) -> None:
    for cert in chain:
        if cert.sha256 in trusted:  # trusted but outside its validity
            raise _time_failure(cert, now, "the trusted root")
    last = chain[-1]
    if not last.self_issued:
        anchor = next((a for a in anchors if a.certificate is not None
                       and _subject_of(a.certificate) == last.issuer_raw), None)
        if anchor is not None:
            raise _fail(
                "root-missing",
                f"the trusted root {anchor.label or 'certificate'} that issued {last.label} "
                "is not in the signature; iPXE's TRUST= holds only its fingerprint, not its "
                "bytes",
                "re-sign with the root certificate included (`trustboot sign` includes the "
                "whole chain; openssl: -certfile chain.pem), or build iPXE with CERT=root.crt",
                last)
        raise _fail(
            "chain-incomplete",
            f"the issuer of {last.label} is not in the signature (nor built in with CERT=); "
            f"iPXE would try to download it from {CROSSCERT} at boot",
            "re-sign with every certificate of the chain, root included (`trustboot sign "
            "--signing-chain chain.pem`; openssl: -certfile chain.pem), or build iPXE with CERT= "
            "for the missing one", last)
    raise _fail(
        "untrusted-root",
        f"the chain ends at {last.label} (sha256 {last.sha256.hex()}), whose fingerprint is not "
        "in the trust set",
        "sign with a certificate issued under a trusted root, or rebuild iPXE with "
        "TRUST=<that root>", last)


def _subject_of(der: bytes) -> bytes | None:
    try:
        return parse_certificate(der, IpxeVersion(99, 0, 0)).subject_raw
    except CertProblem:
        return None


# --- names (x509_check_name) -------------------------------------------------------------

def dns_match(pattern: bytes, name: str) -> bool:
    """Whether ``imgverify --signer name`` matches a certificate's CN or SAN DNS name
    ``pattern`` (x509_check_dnsname): ASCII case-insensitive, a wildcard only on the
    certificate's side. The CA uses it to keep signer names apart as iPXE sees them."""
    candidate = name
    if len(pattern) >= 2 and pattern[:2] == b"*.":
        pattern = pattern[2:]
        dot = candidate.find(".")
        if dot < 0:
            return False
        candidate = candidate[dot + 1 :]
    raw = candidate.encode("utf-8", "surrogateescape")
    return len(raw) == len(pattern) and raw.lower() == pattern.lower()


def name_match(cert: CertInfo, name: str) -> str | None:
    """How ``imgverify --signer NAME`` matches ``cert``: "name" (CN, then SAN DNS names,
    case-insensitive), "ipv4" or "ipv6" (a SAN IP address), or None."""
    if dns_match(cert.common_name or b"", name):
        return "name"
    if any(dns_match(d, name) for d in cert.san_dns):
        return "name"
    packed = inet_aton(name)
    kind = "ipv4"
    if packed is None:
        packed, kind = _sock_aton6(name), "ipv6"
    if packed is None or not any(ip == packed for ip in cert.san_ip):
        return None
    return kind


def _sock_aton6(name: str) -> bytes | None:
    """iPXE's ipv6_sock_aton(): "[...]" stripped, then inet6_aton(). A scope ("%net0")
    names a network device of the client, unknown here: such a name never matches (the
    cautious side: iPXE might accept it)."""
    if name[:1] == "[" and name[-1:] == "]":
        name = name[1:-1]
    if "%" in name:
        return None
    return inet6_aton(name)


def _check_signer_usage(cert: CertInfo) -> None:
    if not cert.digital_signature:
        raise _fail(
            "key-usage",
            f"the signer {cert.label} "
            + ("has no keyUsage extension" if not cert.key_usage_present
               else "has keyUsage without digitalSignature")
            + "; iPXE requires digitalSignature",
            "reissue the signing certificate with keyUsage digitalSignature "
            "(`trustboot ca issue codesign NAME`)", cert)
    if not cert.code_signing:
        raise _fail(
            "code-signing",
            f"the signer {cert.label} has no extendedKeyUsage codeSigning "
            "(anyExtendedKeyUsage does not count)",
            "reissue the signing certificate with extendedKeyUsage codeSigning "
            "(`trustboot ca issue codesign NAME`)", cert)


def _report(signer: _Signer) -> SignerReport:
    cert = signer.info
    return SignerReport(
        subject=cert.subject_text, common_name=cert.name, serial=cert.serial,
        digest_algorithm=signer.digest,
        signature_algorithm=signer.sig_family, chain=tuple(c.label for c in signer.chain),
        not_after=cert.not_after,
        chain_not_after=min(c.not_after for c in signer.chain),
        sha256=cert.sha256.hex(), not_before=cert.not_before,
        issuer_der=signer.chain[1].der if len(signer.chain) > 1 else None,
        tbs_sha256=hashlib.sha256(cert.tbs).hexdigest(), spki_der=cert.spki,
    )


def _prepare(
    message: _Message, extra: Sequence[bytes], version: IpxeVersion,
) -> list[_Signer]:
    """The message's signers, each with its chain as iPXE builds it (new objects: the
    message is shared by every verification of the same bytes)."""
    store: list[CertInfo] = []
    for der in extra:
        try:
            store.append(parse_certificate(der, version))
        except CertProblem as exc:
            raise _fail(exc.rule, exc.message + " (a --cert certificate)", exc.remedy) from None
    # iPXE's certificate store is a LIFO (certstore_add() uses list_add): the signature's
    # own certificates, parsed last, are found before the CERT= ones; a certificate
    # already in the store is not added again.
    certstore: list[CertInfo] = []
    for cert in [*store, *message.certificates]:
        if not any(c.der == cert.der for c in certstore):
            certstore.insert(0, cert)
    signers = []
    for signer in message.signers:
        chain = [signer.info]
        _auto_append(chain, message.certificates)  # cms_parse_identifier()
        _auto_append(chain, certstore)  # x509_validate_chain()
        signers.append(dataclasses.replace(signer, chain=tuple(chain)))
    return signers


def _certificate_oddities(message: _Message) -> list[Finding]:
    found: list[Finding] = []
    for cert in message.certificates:
        for rule, text in cert.oddities:
            found.append(Finding(rule, text, "reissue the certificate from the CA", cert.label))
    return found


def verify_signature(
    signature: bytes,
    digests: Mapping[str, bytes],
    *,
    trust: Sequence[TrustAnchor],
    now: dt.datetime,
    signer_name: str | None = None,
    extra_certs: Sequence[bytes] = (),
    ipxe_version: IpxeVersion = DEFAULT_IPXE,
    assume_ocsp_reachable: bool = True,
    strict: bool = False,
    ipv6: bool | None = None,
) -> Verdict:
    """Judge ``signature`` over an image whose digests (by hash name) are ``digests``.

    ``ipv6``: whether the client's iPXE parses IPv6 addresses (a ``signer_name`` that is
    one matches only then): True for EFI builds, False for BIOS builds (NET_PROTO_IPV6 is
    off there), None when unknown (it matches, with a warning).

    ``assume_ocsp_reachable=False`` is iPXE's verdict on a network where the OCSP
    responder named in a chain certificate cannot be reached (the `verify` command's
    default); True turns that rejection into a warning. ``strict`` refuses what iPXE
    accepts but no honest signing tool writes (the ``SUSPICIONS`` warnings).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    trusted = {a.sha256 for a in trust}
    warnings: list[Finding] = []
    reports: list[SignerReport] = []
    try:
        message = _message(signature, ipxe_version)
        warnings.extend(message.warnings)
        warnings.extend(_certificate_oddities(message))
        signers = _prepare(message, extra_certs, ipxe_version)
        if not signers:
            raise _fail("no-signatures", "the signature has no SignerInfo",
                        "sign the image: " + RESIGN)
        # imgverify completes (validates) every signer's chain before --signer filtering.
        for signer in signers:
            _validate_chain(signer.chain, now, trusted, trust, warnings,
                            ocsp_reachable=assume_ocsp_reachable)
            reports.append(_report(signer))
        checked = 0
        for signer in signers:
            if signer_name is not None:
                match = name_match(signer.info, signer_name)
                if match is None or (match == "ipv6" and ipv6 is False):
                    continue
                if match == "ipv6" and ipv6 is None:
                    warnings.append(Finding(
                        "signer-name-ipv6",
                        f"--signer {signer_name!r} matches {signer.info.label} as an IPv6 "
                        "address, which iPXE parses only in builds with IPv6: EFI builds "
                        "have it, BIOS builds (undionly.kpxe, ipxe.lkrn...) do not, and "
                        "there imgverify refuses this signature",
                        "name the signer by its common name, or check with --platform "
                        "bios/efi", signer.info.label))
            _check_signer_usage(signer.info)
            if signer.digest not in digests:
                raise ValueError(f"digest {signer.digest} of the image was not provided")
            try:
                key = public_key(signer.info)
            except CertProblem as exc:
                raise _fail(exc.rule, exc.message, exc.remedy, signer.info) from None
            if not verify_raw(key, signer.sig_family, signer.digest,
                              signer.signature, digest=digests[signer.digest]):
                if signer.signed_attrs:
                    # The warning that iPXE accepts signed attributes assumed a signature
                    # over the image digest; this one is not, so it would contradict this.
                    warnings[:] = [w for w in warnings
                                   if not (w.rule == "signed-attributes-ignored"
                                           and w.certificate == signer.info.label)]
                    raise _fail(
                        "signed-attributes",
                        "the signature has signed attributes; iPXE skips them and checks "
                        "the signature against the image digest itself, so it can never "
                        "verify",
                        "re-sign without signed attributes (openssl cms -sign -binary "
                        "-noattr ...; `trustboot sign` never adds them)", signer.info)
                raise _fail(
                    "signature-mismatch",
                    f"the signature by {signer.info.label} does not match the image "
                    f"({signer.digest}): the image or the signature was changed, or they do "
                    "not belong together",
                    "publish the image and the .sig made for it together, or sign again",
                    signer.info)
            checked += 1
        if checked == 0:
            assert signer_name is not None
            names = ", ".join(s.info.name for s in signers)
            raise _fail(
                "signer-name",
                f"no signer matches --signer {signer_name!r} (signed by: {names}); iPXE "
                "compares the common name, then SAN DNS names and IP addresses, "
                "case-insensitively, with wildcards only in the certificate"
                + (" (IPv6 addresses only in builds with IPv6, not BIOS ones)"
                   if ipv6 is False else ""),
                "pass the signing certificate's common name to --signer, or sign with the "
                "expected certificate")
        if strict:
            suspicious = next((w for w in warnings if w.rule in SUSPICIONS), None)
            if suspicious is not None:
                raise _Fail(Finding(
                    suspicious.rule,
                    "--strict: " + suspicious.message
                    + " (iPXE itself would accept this signature)",
                    suspicious.remedy, suspicious.certificate))
    except _Fail as exc:
        return Verdict(exc.finding, tuple(warnings), tuple(reports))
    return Verdict(None, tuple(warnings), tuple(reports))


def in_time_moment(
    signature: bytes,
    *,
    trust: Sequence[TrustAnchor],
    extra_certs: Sequence[bytes] = (),
    ipxe_version: IpxeVersion = DEFAULT_IPXE,
) -> dt.datetime | None:
    """A moment at which every certificate iPXE checks the time of, in each signer's chain
    as it builds it (up to the first trusted one), is within its validity; None when there
    is none, a chain reaches no trusted certificate or the signature does not parse.

    For telling who signed a signature whose only failure at the clock is the clock (rule
    expired or not-yet-valid): judged again at this moment, everything else iPXE checks
    (the signature over the image, the chain, key usages) still has to hold."""
    trusted = {a.sha256 for a in trust}
    try:
        signers = _prepare(_message(signature, ipxe_version), extra_certs, ipxe_version)
    except _Fail:
        return None
    starts, ends = [], []
    for signer in signers:
        for cert in signer.chain:
            starts.append(cert.not_before_s)
            ends.append(cert.not_after_s)
            if cert.sha256 in trusted:
                break
        else:  # untrusted whatever the time
            return None
    if not signers or max(starts) > min(ends):
        return None
    try:
        return dt.datetime.fromtimestamp(max(starts), dt.UTC)
    except (OverflowError, OSError, ValueError):  # a date datetime cannot hold
        return None


def check_signer(
    signer: bytes,
    chain: Sequence[bytes],
    *,
    trust: Sequence[TrustAnchor],
    now: dt.datetime,
    ipxe_version: IpxeVersion = DEFAULT_IPXE,
    assume_ocsp_reachable: bool = True,
) -> Verdict:
    """Would iPXE accept signatures made with this certificate and chain at ``now``?

    Used before signing, so a doomed signature is never made; same rules as
    verify_signature() minus the signature itself.
    """
    warnings: list[Finding] = []
    try:
        try:
            info = parse_certificate(signer, ipxe_version)
            others = [parse_certificate(der, ipxe_version) for der in chain]
            full = [info]
            _auto_append(full, others)
            _validate_chain(full, now, {a.sha256 for a in trust}, trust, warnings,
                            ocsp_reachable=assume_ocsp_reachable)
            _check_signer_usage(info)
            _check_curve(info)
            public_key(info)
        except CertProblem as exc:
            raise _fail(exc.rule, exc.message, exc.remedy) from None
        sig_family = "rsa" if info.key_family == "rsa" else "ecdsa"
        report = _report(_Signer(info, "", "", sig_family, b"", chain=tuple(full)))
    except _Fail as exc:
        return Verdict(exc.finding, tuple(warnings))
    return Verdict(None, tuple(warnings), (report,))


def fingerprint(der: bytes) -> bytes:
    return hashlib.sha256(der).digest()
