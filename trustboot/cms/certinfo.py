"""A certificate as iPXE's x509.c sees it: the fields it parses, and why it would refuse one.

Pure: bytes in, a frozen record out (or a ``CertProblem`` naming iPXE's rule).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from dataclasses import dataclass

from asn1crypto import x509 as ax509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from trustboot.cms import _asn1
from trustboot.text import clean

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
    """A certificate as x509_parse() leaves it; times are iPXE's (epoch seconds)."""

    der: bytes
    sha256: bytes
    subject_raw: bytes  # the whole Name TLV, compared byte for byte
    issuer_raw: bytes
    serial_raw: bytes  # the whole INTEGER TLV, compared byte for byte
    serial: int
    common_name: bytes | None
    subject_text: str
    not_before_s: int
    not_after_s: int
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
    sig_family: str  # the signature algorithm's public-key algorithm: "rsa" | "ecdsa"
    signature: bytes  # the BIT STRING's bits
    key_family: str  # the subjectPublicKeyInfo algorithm's: "rsa" | "ec" | "rsa-pss"
    curve: str | None  # named curve of an EC key, if iPXE implements it
    spki: bytes
    # (rule, message) for what iPXE accepts but RFC 5280 or DER do not: warnings.
    oddities: tuple[tuple[str, str], ...] = ()

    @property
    def not_before(self) -> dt.datetime:
        return epoch_to_datetime(self.not_before_s)

    @property
    def not_after(self) -> dt.datetime:
        return epoch_to_datetime(self.not_after_s)

    @property
    def name(self) -> str:
        """iPXE's x509_name(): the common name, else the SHA-1 fingerprint."""
        if self.common_name:  # whoever made the certificate chose it: shown escaped
            return clean(self.common_name[:63].decode("utf-8", "replace"))
        return hashlib.sha1(self.der, usedforsecurity=False).hexdigest()

    @property
    def label(self) -> str:
        return f'"{self.name}" (serial {self.serial:#x}, sha256 {self.sha256.hex()[:16]})'

    @property
    def self_issued(self) -> bool:
        return self.subject_raw == self.issuer_raw


_MIN_S = int(dt.datetime(1, 1, 1, tzinfo=dt.UTC).timestamp())
_MAX_S = int(dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC).timestamp())


def epoch_to_datetime(seconds: int) -> dt.datetime:
    """A datetime for display and reports, clamped to what datetime can hold."""
    return dt.datetime.fromtimestamp(min(max(seconds, _MIN_S), _MAX_S), dt.UTC)


def _problem(label: str, what: str, remedy: str = "reissue the certificate") -> CertProblem:
    return CertProblem("certificate-unparseable",
                       f"certificate {label}: {what}; iPXE cannot parse it", remedy)


OID_CN_RAW = _asn1.oid_bytes(OID_CN)
OID_CODE_SIGNING_RAW = _asn1.oid_bytes(OID_CODE_SIGNING)
OID_AD_OCSP_RAW = _asn1.oid_bytes(OID_AD_OCSP)
_EXT_RAW = {_asn1.oid_bytes(oid): name for oid, name in _asn1.KNOWN_EXTENSIONS.items()}
X509_DIGITAL_SIGNATURE = 0x0080
X509_KEY_CERT_SIGN = 0x0004
PATH_LEN_UNLIMITED = 0xFFFFFFFE


def _common_name(raw: _asn1.Cursor) -> tuple[bool, bytes | None]:
    """x509_parse_common_name(): (parsed, the first RDN whose first attribute is a CN)."""
    cursor = raw.copy()
    cursor.enter(_asn1.SEQUENCE)
    while cursor.len:
        oid = cursor.copy()
        oid.enter(_asn1.SET)
        oid.enter(_asn1.SEQUENCE)
        name = oid.copy()
        oid.enter(_asn1.OID)
        if oid.value == OID_CN_RAW and oid.len == len(OID_CN_RAW):
            name.skip(_asn1.ANY)
            if not name.enter(_asn1.ANY):
                return False, None
            return True, name.value
        cursor.skip(_asn1.ANY)
    return True, None


def _names(raw: bytes) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """SAN DNS names and IP addresses as x509_check_name() walks them (never fails)."""
    dns: list[bytes] = []
    ips: list[bytes] = []
    cursor = _asn1.Cursor(raw)
    while cursor.len:
        name = cursor.copy()
        kind = name.type()
        name.enter(_asn1.ANY)
        if kind == _asn1.implicit(2):
            dns.append(name.value)
        elif kind == _asn1.implicit(7):
            ips.append(name.value)
        cursor.skip(_asn1.ANY)
    return tuple(dns), tuple(ips)


def parse_certificate(der: bytes, version: IpxeVersion = DEFAULT_IPXE) -> CertInfo:
    """Parse as iPXE's x509_parse() does; raise CertProblem exactly where it fails."""
    whole = _asn1.Cursor(der)
    whole.shrink(_asn1.ANY)  # x509_certificate(): only the first object counts
    raw = whole.value
    label = _label_guess(raw)
    cursor = _asn1.Cursor(raw)
    cursor.enter(_asn1.SEQUENCE)
    # tbsCertificate
    tbs = cursor.tlv()
    t = _asn1.Cursor(tbs)
    t.enter(_asn1.SEQUENCE)
    cert_version = 0
    if t.type() == _asn1.explicit(0):
        v = t.copy()
        v.enter(_asn1.explicit(0))
        number = v.integer()
        if number is None:
            raise _problem(label, "its version is not an INTEGER that fits a C int")
        if number < 0:
            raise _problem(label, f"its version is negative ({number})")
        cert_version = number
        t.skip(_asn1.ANY)
    serial = t.copy()
    if not serial.shrink(_asn1.INTEGER):
        raise _problem(label, "its serialNumber is not an INTEGER")
    serial_raw = serial.value
    t.skip(_asn1.ANY)
    ecdsa, pss = version.ecdsa, version.rsa_pss
    tbs_algo, tbs_oid = _asn1.algorithm_at(t, ecdsa=ecdsa, rsa_pss=pss)
    _check_signature_algorithm(tbs_algo, tbs_oid, label, version)
    assert tbs_algo is not None and tbs_algo.digest is not None
    tbs_sig_alg = t.tlv()
    t.skip(_asn1.ANY)
    issuer = t.copy()
    if not issuer.shrink(_asn1.SEQUENCE):
        raise _problem(label, "its issuer is not a SEQUENCE")
    issuer_raw = issuer.value
    t.skip(_asn1.ANY)
    validity = t.copy()
    validity.enter(_asn1.SEQUENCE)
    not_before = _asn1.ipxe_time(validity)
    validity.skip(_asn1.ANY)
    not_after = _asn1.ipxe_time(validity)
    if not_before is None or not_after is None:
        raise _problem(
            label, "its validity is not a time iPXE reads (UTCTime YYMMDDHHMM[SS]Z or "
            "GeneralizedTime YYYYMMDDHHMM[SS]Z: no fractions of a second, no offsets)",
            "reissue it with plain UTC times (every common CA tool writes them)")
    t.skip(_asn1.ANY)
    subject_raw = t.tlv()
    ok, cn = _common_name(t)
    if not ok:
        raise _problem(label, "its subject commonName is malformed")
    t.skip(_asn1.ANY)
    spki = t.tlv()
    s = _asn1.Cursor(spki)
    s.enter(_asn1.SEQUENCE)
    key_algo, key_oid = _asn1.algorithm_at(s, ecdsa=ecdsa, rsa_pss=pss)
    if key_algo is None or key_algo.pubkey is None:
        raise CertProblem(
            "unsupported-algorithm",
            f"certificate {label} has a public key of type {key_oid}, which iPXE {version} "
            "does not implement",
            "use an RSA key" + (" or an ECDSA P-256/P-384 key" if version.ecdsa else
                                " (ECDSA needs iPXE >= 2.0.0: pass --ipxe-version)"))
    curve = _curve(s) if key_algo.pubkey == "ecdsa" else None
    s.skip(_asn1.ANY)
    if s.copy().enter_bits(allow_unused=False) is None:
        raise _problem(label, "its subjectPublicKey BIT STRING is malformed or has unused "
                       "bits")
    t.skip(_asn1.ANY)
    ext = _Extensions()
    _parse_extensions(t, ext, label)
    # signatureAlgorithm and signatureValue
    cursor.skip(_asn1.ANY)
    outer_algo, outer_oid = _asn1.algorithm_at(cursor, ecdsa=ecdsa, rsa_pss=pss)
    _check_signature_algorithm(outer_algo, outer_oid, label, version)
    outer_sig_alg = cursor.tlv()
    cursor.skip(_asn1.ANY)
    bits = cursor.copy()
    if bits.enter_bits(allow_unused=False) is None:
        raise _problem(
            label, "its signatureValue BIT STRING is malformed: iPXE requires 0 unused bits "
            "and zero padding (asn1_enter_bits)",
            "the certificate was altered or made by a broken tool: use the CA's original")
    if outer_algo is not tbs_algo:
        raise _problem(label, f"signatureAlgorithm {outer_oid} differs from "
                       f"tbsCertificate.signature {tbs_oid}")
    oddities: list[tuple[str, str]] = []
    if outer_sig_alg != tbs_sig_alg:
        oddities.append(("certificate-altered", (
            f"certificate {label}: signatureAlgorithm is not byte-identical to "
            "tbsCertificate.signature (RFC 5280 4.1.1.2); iPXE compares only the algorithm, "
            "so it accepts this, but no CA writes it: the certificate may have been altered")))
    if ext.present and cert_version != 2:
        oddities.append(("certificate-version", (
            f"certificate {label} has extensions but version {cert_version + 1} (RFC 5280 "
            "wants v3); iPXE reads the extensions anyway")))
    oddities.extend(_strict_der_oddities(raw, label))
    sig_family = tbs_algo.pubkey or ""
    san_dns, san_ip = _names(ext.alt_names)  # once: a hostile SAN list can be long
    return CertInfo(
        der=raw,
        sha256=hashlib.sha256(raw).digest(),
        subject_raw=subject_raw,
        issuer_raw=issuer_raw,
        serial_raw=serial_raw,
        serial=_integer_value(serial_raw),
        common_name=cn,
        subject_text=_subject_text(subject_raw, cn),
        not_before_s=not_before,
        not_after_s=not_after,
        is_ca=ext.ca,
        path_len=None if ext.path_len == PATH_LEN_UNLIMITED else ext.path_len,
        key_usage_present=ext.usage_present,
        digital_signature=bool(ext.usage_bits & X509_DIGITAL_SIGNATURE),
        key_cert_sign=bool(ext.usage_bits & X509_KEY_CERT_SIGN),
        code_signing=ext.code_signing,
        ocsp_uris=tuple(ext.ocsp),
        san_dns=san_dns,
        san_ip=san_ip,
        tbs=tbs,
        sig_hash=tbs_algo.digest,
        sig_family=sig_family,
        signature=bits.value,
        key_family={"rsa": "rsa", "ecdsa": "ec", "rsa-pss": "rsa-pss"}[key_algo.pubkey],
        curve=curve,
        spki=spki,
        oddities=tuple(oddities),
    )


def _check_signature_algorithm(algo: _asn1.Algorithm | None, oid: str, label: str,
                               version: IpxeVersion) -> None:
    # asn1_signature_algorithm(): known, with both a public-key and a digest algorithm.
    if algo is not None and algo.pubkey is not None and algo.digest is not None:
        return
    raise CertProblem(
        "unsupported-algorithm",
        f"certificate {label} is signed with algorithm {oid}, which iPXE {version} "
        "does not implement",
        "reissue it with sha256WithRSAEncryption"
        + (" or ecdsa-with-SHA256/384" if version.ecdsa else "")
        + (" (ECDSA needs iPXE >= 2.0.0: pass --ipxe-version)"
           if oid in _asn1.ECDSA_SIG_OIDS and not version.ecdsa else ""))


def _curve(spki_inner: _asn1.Cursor) -> str | None:
    """asn1_curve_algorithm() with the ecPublicKey wrapper: the named curve, if known."""
    c = spki_inner.copy()
    c.enter(_asn1.SEQUENCE)
    params = c.copy()
    params.skip(_asn1.ANY)
    if not c.enter(_asn1.OID) or c.value != _asn1.oid_bytes(_asn1.OID_EC_PUBKEY):
        return None
    params.enter(_asn1.OID)
    algo = _asn1.find_algorithm(params.value, ecdsa=True, rsa_pss=False)
    if algo is None or algo.curve is None:
        return _asn1.oid_text(params.value)
    return algo.curve


class _Extensions:
    def __init__(self) -> None:
        self.present = False
        self.ca = False
        self.path_len = 0
        self.usage_present = False
        self.usage_bits = 0
        self.code_signing = False
        self.ocsp: list[str] = []
        self.alt_names = b""


def _parse_extensions(tbs: _asn1.Cursor, ext: _Extensions, label: str) -> None:
    cursor = tbs.copy()
    ext.present = cursor.type() == _asn1.explicit(3)
    cursor.enter(_asn1.explicit(3))
    for item in cursor.elements(_asn1.SEQUENCE):
        _parse_extension(item, ext, label)


def _parse_extension(raw: _asn1.Cursor, ext: _Extensions, label: str) -> None:
    cursor = raw.copy()
    cursor.enter(_asn1.SEQUENCE)
    oid = cursor.copy()
    oid.enter(_asn1.OID)
    name = _EXT_RAW.get(oid.value)
    oid_label = _asn1.oid_text(oid.value)
    cursor.skip(_asn1.ANY)
    critical = 0
    if cursor.type() == _asn1.BOOLEAN:
        value = cursor.boolean()
        if value is None:
            raise _problem(label, f"extension {oid_label} has a malformed critical flag")
        critical = value
        cursor.skip(_asn1.ANY)
    if name is None:
        if critical:
            raise CertProblem(
                "critical-extension",
                f"certificate {label} has a critical extension {oid_label} that iPXE does "
                "not implement, so iPXE cannot parse it",
                "reissue the certificate without that extension, or with it non-critical "
                "(iPXE implements only basicConstraints, keyUsage, extKeyUsage, "
                "authorityInfoAccess, subjectAltName)")
        return
    if not cursor.enter(_asn1.OCTET_STRING):
        raise _problem(label, f"extension {name} has no OCTET STRING value")
    bad = _EXTENSION_PARSERS[name](cursor, ext)
    if bad:
        raise _problem(label, f"extension {name} is malformed: {bad}")


def _basic_constraints(raw: _asn1.Cursor, ext: _Extensions) -> str | None:
    cursor = raw.copy()
    cursor.enter(_asn1.SEQUENCE)
    ca = 0
    if cursor.type() == _asn1.BOOLEAN:
        value = cursor.boolean()
        if value is None:
            return "the cA flag is not a one-byte BOOLEAN"
        ca = value
        cursor.skip(_asn1.ANY)
    ext.ca = bool(ca)
    if not ca:
        return None
    ext.path_len = PATH_LEN_UNLIMITED
    if cursor.type() == _asn1.INTEGER:
        value = cursor.integer()
        if value is None:
            return "pathLenConstraint does not fit a C int"
        if value < 0:
            return f"pathLenConstraint is negative ({value})"
        ext.path_len = value
    return None


def _key_usage(raw: _asn1.Cursor, ext: _Extensions) -> str | None:
    ext.usage_present = True
    cursor = raw.copy()
    if cursor.enter_bits(allow_unused=True) is None:
        return "the BIT STRING is malformed (iPXE requires zero padding bits)"
    for i, byte in enumerate(cursor.value[:4]):
        ext.usage_bits |= byte << (8 * i)
    return None


def _ext_key_usage(raw: _asn1.Cursor, ext: _Extensions) -> str | None:
    for purpose in raw.elements(_asn1.SEQUENCE):
        if not purpose.enter(_asn1.OID):
            return "a key purpose is not an OBJECT IDENTIFIER"
        if purpose.value == OID_CODE_SIGNING_RAW:
            ext.code_signing = True
    return None


def _authority_info_access(raw: _asn1.Cursor, ext: _Extensions) -> str | None:
    for desc in raw.elements(_asn1.SEQUENCE):
        desc.enter(_asn1.SEQUENCE)
        method = desc.copy()
        method.enter(_asn1.OID)
        desc.skip(_asn1.ANY)
        if method.value == OID_AD_OCSP_RAW and method.len:
            if not desc.enter(_asn1.implicit(6)):
                return "the OCSP accessLocation is not a URI"
            ext.ocsp.append(desc.value.decode("utf-8", "replace"))
    return None


def _subject_alt_name(raw: _asn1.Cursor, ext: _Extensions) -> str | None:
    cursor = raw.copy()
    if not cursor.enter(_asn1.SEQUENCE):
        return "it is not a SEQUENCE"
    ext.alt_names = cursor.value
    return None


_EXTENSION_PARSERS = {
    "basicConstraints": _basic_constraints,
    "keyUsage": _key_usage,
    "extKeyUsage": _ext_key_usage,
    "authorityInfoAccess": _authority_info_access,
    "subjectAltName": _subject_alt_name,
}


def _integer_value(tlv: bytes) -> int:
    c = _asn1.Cursor(tlv)
    c.enter(_asn1.INTEGER)
    return int.from_bytes(c.value, "big", signed=True) if c.len else 0


def _label_guess(raw: bytes) -> str:
    """A name for messages before parsing succeeds: the CN if asn1crypto finds one."""
    try:
        cert = ax509.Certificate.load(raw)
        cn = _common_name(_asn1.Cursor(cert["tbs_certificate"]["subject"].dump()))[1]
        if cn:
            return f'"{clean(cn[:63].decode("utf-8", "replace"))}"'
    except _asn1.PARSE_ERRORS:
        pass
    return f"(sha256 {hashlib.sha256(raw).hexdigest()[:16]})"


def name_text(raw: bytes) -> str:
    """A DER Name as RFC 4514 text (``CN=x,O=y``), as every other trustboot output writes
    names; asn1crypto's wording for what cryptography will not represent. Raises
    asn1crypto's parse errors for what is no Name at all."""
    from cryptography import x509
    from cryptography.x509.oid import ObjectIdentifier

    name = ax509.Name.load(raw)
    try:
        rdns = [x509.RelativeDistinguishedName(
            [x509.NameAttribute(ObjectIdentifier(atv["type"].dotted), atv["value"].native)
             for atv in rdn]) for rdn in name.chosen]
        return x509.Name(rdns).rfc4514_string()
    except (ValueError, TypeError, AttributeError):
        return str(name.human_friendly)


def _subject_text(subject_raw: bytes, cn: bytes | None) -> str:
    try:
        return clean(name_text(subject_raw))
    except _asn1.PARSE_ERRORS:
        return clean(cn.decode("utf-8", "replace")) if cn else subject_raw.hex()


def _strict_der_oddities(raw: bytes, label: str) -> list[tuple[str, str]]:
    """What a strict RFC 5280 / DER reader refuses but iPXE reads: worth a warning."""
    return list(_strict_der_check(raw, label))


@functools.lru_cache(maxsize=64)
def _strict_der_check(raw: bytes, label: str) -> tuple[tuple[str, str], ...]:
    """_strict_der_oddities, remembered: parsing every field with asn1crypto costs ~15 ms a
    certificate, and signing checks the same chain several times (preflight, self-check)."""
    try:
        _asn1.check_framing(raw)
        cert = ax509.Certificate.load(raw, strict=True)
        cert.native  # noqa: B018  (parse every field)
    except Exception as exc:  # any refusal by the strict reader is the answer
        return (("certificate-encoding", (
            f"certificate {label} is not strict DER X.509 ({exc}); iPXE reads it anyway, "
            "but other tools may not")),)
    return ()


def public_key(cert: CertInfo) -> PublicKey:
    """The key as iPXE's rsa_init()/ecdsa_parse_key() reads it; CertProblem where it fails.

    iPXE parses a key only when it verifies with it, so a certificate whose key is
    unusable still parses; this is called at that moment.
    """
    cursor = _asn1.Cursor(cert.spki)
    cursor.enter(_asn1.SEQUENCE)
    if cert.key_family in {"rsa", "rsa-pss"}:
        cursor.skip(_asn1.SEQUENCE)
        cursor.enter_bits(allow_unused=False)
        cursor.enter(_asn1.SEQUENCE)
        modulus = cursor.copy()
        if modulus.enter_unsigned():
            cursor.skip(_asn1.ANY)
            exponent = cursor.copy()
            if exponent.enter_unsigned() and modulus.value[:1] not in {b"", b"\0"}:
                n = int.from_bytes(modulus.value, "big")
                e = int.from_bytes(exponent.value, "big")
                try:
                    return rsa.RSAPublicNumbers(e, n).public_key()
                except ValueError as exc:
                    raise _key_problem(cert, f"RSA key rejected ({exc})") from None
        raise _key_problem(cert, "its RSA key is malformed (iPXE's rsa_init fails)")
    cursor.skip(_asn1.ANY)
    if cursor.enter_bits(allow_unused=False) is None:
        raise _key_problem(cert, "its EC key BIT STRING is malformed")
    curve = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}.get(cert.curve or "")
    if curve is None:
        raise CertProblem(
            "unsupported-algorithm",
            f"{cert.label} has an ECDSA key on {cert.curve}; iPXE implements only P-256 and "
            "P-384, so nothing signed with this key verifies",
            "reissue with a P-256/P-384 (or RSA) key")
    point = cursor.value
    size = (curve.key_size + 7) // 8
    if len(point) != 1 + 2 * size or point[0] != 4 or not any(point[1:]):
        raise _key_problem(cert, "its EC point is not an uncompressed point of the right "
                           "size (iPXE reads no compressed points)")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except ValueError as exc:
        raise _key_problem(cert, f"its EC point is invalid ({exc})") from None


def _key_problem(cert: CertInfo, what: str) -> CertProblem:
    return CertProblem("certificate-key", f"{cert.label}: {what}",
                       "reissue the certificate with a well-formed key")


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
    The signature bytes are read as iPXE reads them: an RSA signature must be exactly as
    long as the modulus; ECDSA's r and s are unsigned integers however they are encoded.
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
            if len(signature) != (key.key_size + 7) // 8:
                return False  # rsa_verify(): "signature->len != context.max_len"
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15() if family == "rsa"
                else padding.PSS(mgf=padding.MGF1(algo), salt_length=algo.digest_size)
            )
            key.verify(signature, target, pad, chosen)
        elif family == "ecdsa":
            if not isinstance(key, ec.EllipticCurvePublicKey):
                return False
            rs = _ecdsa_rs(signature, (key.curve.key_size + 7) // 8)
            if rs is None:
                return False
            key.verify(encode_dss_signature(*rs), target, ec.ECDSA(chosen))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def _ecdsa_rs(signature: bytes, keysize: int) -> tuple[int, int] | None:
    """ecdsa_verify()'s reading of Ecdsa-Sig-Value: r and s, each at most keysize bytes."""
    cursor = _asn1.Cursor(signature)
    cursor.enter(_asn1.SEQUENCE)
    values: list[int] = []
    for _ in range(2):
        item = cursor.copy()
        if not item.enter_unsigned() or item.len > keysize:
            return None
        value = int.from_bytes(item.value, "big")
        if value == 0:
            return None
        values.append(value)
        cursor.skip(_asn1.ANY)
    return values[0], values[1]
