"""A certificate as iPXE's x509.c sees it: the fields it parses, and why it would refuse one.

Pure: bytes in, a frozen record out (or a ``CertProblem`` naming iPXE's rule).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from asn1crypto import x509 as ax509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from trustboot.cms import _asn1

OID_CN = "2.5.4.3"
OID_CODE_SIGNING = "1.3.6.1.5.5.7.3.3"
OID_AD_OCSP = "1.3.6.1.5.5.7.48.1"

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class IpxeVersion:
    """What the target iPXE implements: ECDSA from 2.0.0, RSA-PSS only after it."""

    major: int
    minor: int
    patch: int
    post: bool = False  # a build from master after the release

    @classmethod
    def parse(cls, text: str) -> IpxeVersion:
        raw = text.strip().lower()
        if raw in {"master", "latest", "git"}:
            return cls(2, 0, 0, post=True)
        bad = f"not an iPXE version: {text!r} (e.g. 1.21.1, 2.0.0, master)"
        post = raw.endswith("+")
        parts = raw.rstrip("+").lstrip("v").split(".")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ValueError(bad) from None
        if not 1 <= len(nums) <= 3:
            raise ValueError(bad)
        nums += [0] * (3 - len(nums))
        return cls(nums[0], nums[1], nums[2], post=post)

    @property
    def key(self) -> tuple[int, int, int, bool]:
        return (self.major, self.minor, self.patch, self.post)

    @property
    def ecdsa(self) -> bool:
        return self.key >= (2, 0, 0, False)

    @property
    def rsa_pss(self) -> bool:
        return self.key > (2, 0, 0, False)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}" + ("+" if self.post else "")


DEFAULT_IPXE = IpxeVersion(2, 0, 0)


class CertProblem(Exception):
    """iPXE cannot parse this certificate; ``rule`` names why."""

    def __init__(self, rule: str, message: str, remedy: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.remedy = remedy


@dataclass(frozen=True)
class CertInfo:
    der: bytes
    sha256: bytes
    subject_raw: bytes
    issuer_raw: bytes
    serial_raw: bytes  # INTEGER contents, compared byte for byte
    serial: int
    common_name: bytes | None
    subject_text: str
    not_before: dt.datetime
    not_after: dt.datetime
    is_ca: bool
    path_len: int | None  # None: unlimited (only meaningful when is_ca)
    key_usage_present: bool
    digital_signature: bool
    key_cert_sign: bool
    code_signing: bool
    ocsp_uris: tuple[str, ...]
    san_dns: tuple[bytes, ...]
    san_ip: tuple[bytes, ...]
    tbs: bytes
    sig_hash: str
    sig_family: str  # "rsa" | "ecdsa"
    signature: bytes
    key_family: str  # "rsa" | "ec"
    curve: str | None
    public_key: PublicKey

    @property
    def name(self) -> str:
        """iPXE's x509_name(): the common name, else the SHA-1 fingerprint."""
        if self.common_name:
            return self.common_name[:63].decode("utf-8", "replace")
        return hashlib.sha1(self.der, usedforsecurity=False).hexdigest()

    @property
    def label(self) -> str:
        return f'"{self.name}" (serial {self.serial:#x}, sha256 {self.sha256.hex()[:16]})'

    @property
    def self_issued(self) -> bool:
        return self.subject_raw == self.issuer_raw


def _contents(der: bytes) -> bytes:
    _tag, start, length = _asn1._header(der, 0, len(der))
    return der[start : start + length]


def _common_name(name: ax509.Name) -> bytes | None:
    # Like x509_parse_common_name: the first RDN whose first attribute is a CN.
    for rdn in name.chosen:
        atv = rdn[0]
        if atv["type"].dotted == OID_CN:
            return _contents(atv["value"].dump())
    return None


def parse_certificate(der: bytes, version: IpxeVersion = DEFAULT_IPXE) -> CertInfo:
    """Parse as iPXE does; raise CertProblem where iPXE's x509_parse() fails."""
    try:
        return _parse_certificate(der, version)
    except _asn1.PARSE_ERRORS as exc:  # asn1crypto parses lazily: any access can fail
        raise CertProblem(
            "certificate-unparseable", f"a certificate is not valid DER X.509: {exc}",
            "replace it with a well-formed certificate") from None


def _parse_certificate(der: bytes, version: IpxeVersion) -> CertInfo:
    # Parse errors here become "certificate-unparseable" in parse_certificate().
    _asn1.check_framing(der)
    cert = ax509.Certificate.load(der)
    tbs = cert["tbs_certificate"]
    tbs_der = tbs.dump()
    sig_oid = cert["signature_algorithm"]["algorithm"].dotted
    subject = tbs["subject"]
    issuer = tbs["issuer"]
    serial_obj = tbs["serial_number"]
    validity = tbs["validity"]
    not_before = validity["not_before"].native
    not_after = validity["not_after"].native
    spki = tbs["subject_public_key_info"]
    key_oid = spki["algorithm"]["algorithm"].dotted
    extensions = tbs["extensions"]
    ext_list = list(extensions) if extensions.native is not None else []
    signature = cert["signature_value"].native
    subject_text = subject.human_friendly
    cn = _common_name(subject)

    label = cn.decode("utf-8", "replace") if cn else subject_text
    if cert["signature_algorithm"].dump() != tbs["signature"].dump():
        # iPXE compares only the OIDs, but RFC 5280 wants identical encodings and no
        # issuer writes anything else: different bytes mean the certificate was altered.
        raise CertProblem(
            "certificate-altered",
            f'certificate "{label}": signatureAlgorithm is not byte-identical to '
            "tbsCertificate.signature (RFC 5280 4.1.1.2)",
            "the certificate was altered after issuance: use the original from the CA",
        )
    if sig_oid in _asn1.RSA_SIG_OIDS:
        sig_family, sig_hash = "rsa", _asn1.RSA_SIG_OIDS[sig_oid]
    elif sig_oid in _asn1.ECDSA_SIG_OIDS and version.ecdsa:
        sig_family, sig_hash = "ecdsa", _asn1.ECDSA_SIG_OIDS[sig_oid]
    else:
        raise CertProblem(
            "unsupported-algorithm",
            f'certificate "{label}" is signed with algorithm {sig_oid}, which iPXE {version} '
            "does not implement",
            "reissue it with sha256WithRSAEncryption"
            + (" or ecdsa-with-SHA256/384" if version.ecdsa else "")
            + (" (ECDSA needs iPXE >= 2.0.0: pass --ipxe-version)"
               if sig_oid in _asn1.ECDSA_SIG_OIDS else ""),
        )
    curve: str | None = None
    if key_oid == _asn1.OID_RSA:
        key_family = "rsa"
    elif key_oid == _asn1.OID_EC_PUBKEY and version.ecdsa:
        key_family = "ec"
        try:
            curve = str(spki["algorithm"]["parameters"].chosen.native)
        except _asn1.PARSE_ERRORS as exc:
            raise CertProblem(
                "certificate-unparseable",
                f'certificate "{label}": EC parameters are malformed: {exc}',
                "reissue the certificate") from None
    else:
        raise CertProblem(
            "unsupported-algorithm",
            f'certificate "{label}" has a public key of type {key_oid}, which iPXE {version} '
            "does not implement",
            "use an RSA key" + (" or an ECDSA P-256/P-384 key" if version.ecdsa else
                                " (ECDSA needs iPXE >= 2.0.0: pass --ipxe-version)"),
        )

    is_ca = False
    path_len: int | None = None
    ku_present = digital_signature = key_cert_sign = code_signing = False
    ocsp: list[str] = []
    san_dns: list[bytes] = []
    san_ip: list[bytes] = []
    for ext in ext_list:
        oid = ext["extn_id"].dotted
        critical = bool(ext["critical"].native)
        if oid not in _asn1.KNOWN_EXTENSIONS:
            if critical:
                raise CertProblem(
                    "critical-extension",
                    f'certificate "{label}" has a critical extension {oid} '
                    f"({ext['extn_id'].native}) that iPXE does not implement, so iPXE cannot "
                    "parse it",
                    "reissue the certificate without that extension, or with it non-critical "
                    "(iPXE implements only basicConstraints, keyUsage, extKeyUsage, "
                    "authorityInfoAccess, subjectAltName)",
                )
            continue
        try:
            value = ext["extn_value"].parsed
            if oid == "2.5.29.19":
                is_ca = bool(value["ca"].native)
                plc = value["path_len_constraint"].native
                path_len = int(plc) if (is_ca and plc is not None) else None
            elif oid == "2.5.29.15":
                ku_present = True
                bits = set(value.native)
                digital_signature = "digital_signature" in bits
                key_cert_sign = "key_cert_sign" in bits
            elif oid == "2.5.29.37":
                code_signing = any(p.dotted == OID_CODE_SIGNING for p in value)
            elif oid == "1.3.6.1.5.5.7.1.1":
                for desc in value:
                    if desc["access_method"].dotted == OID_AD_OCSP:
                        loc = desc["access_location"]
                        ocsp.append(str(loc.native))
            elif oid == "2.5.29.17":
                for gn in value:
                    if gn.name == "dns_name":
                        san_dns.append(_contents(gn.chosen.dump()))
                    elif gn.name == "ip_address":
                        san_ip.append(_contents(gn.chosen.dump()))
        except _asn1.PARSE_ERRORS as exc:
            raise CertProblem(
                "certificate-unparseable",
                f'certificate "{label}": extension {oid} is malformed: {exc}',
                "reissue the certificate",
            ) from None

    try:
        public_key = serialization.load_der_public_key(spki.dump())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertProblem(
            "certificate-unparseable",
            f'certificate "{label}": public key cannot be loaded: {exc}',
            "reissue the certificate",
        ) from None
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise CertProblem("unsupported-algorithm", f'certificate "{label}": unsupported key',
                          "use an RSA or ECDSA key")

    return CertInfo(
        der=der,
        sha256=hashlib.sha256(der).digest(),
        subject_raw=subject.dump(),
        issuer_raw=issuer.dump(),
        serial_raw=serial_obj.contents,
        serial=int(serial_obj.native),
        common_name=cn,
        subject_text=subject_text,
        not_before=not_before.astimezone(dt.UTC),
        not_after=not_after.astimezone(dt.UTC),
        is_ca=is_ca,
        path_len=path_len,
        key_usage_present=ku_present,
        digital_signature=digital_signature,
        key_cert_sign=key_cert_sign,
        code_signing=code_signing,
        ocsp_uris=tuple(ocsp),
        san_dns=tuple(san_dns),
        san_ip=tuple(san_ip),
        tbs=tbs_der,
        sig_hash=sig_hash,
        sig_family=sig_family,
        signature=bytes(signature),
        key_family=key_family,
        curve=curve,
        public_key=public_key,
    )


HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def verify_raw(
    key: PublicKey, family: str, hash_name: str, signature: bytes, *, data: bytes | None = None,
    digest: bytes | None = None,
) -> bool:
    """Check a signature over ``data`` or a precomputed ``digest``; False on any mismatch.

    ``family``: "rsa" (PKCS#1 v1.5), "rsa-pss" (salt = hash length, as iPXE) or "ecdsa".
    """
    algo = HASHES[hash_name]()
    target: bytes
    chosen: hashes.HashAlgorithm | Prehashed
    if digest is not None:
        target, chosen = digest, Prehashed(algo)
    else:
        assert data is not None
        target, chosen = data, algo
    try:
        if family in {"rsa", "rsa-pss"}:
            if not isinstance(key, rsa.RSAPublicKey):
                return False
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15() if family == "rsa"
                else padding.PSS(mgf=padding.MGF1(algo), salt_length=algo.digest_size)
            )
            key.verify(signature, target, pad, chosen)
        elif family == "ecdsa":
            if not isinstance(key, ec.EllipticCurvePublicKey):
                return False
            key.verify(signature, target, ec.ECDSA(chosen))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True
