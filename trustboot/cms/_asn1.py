"""The small pieces of ASN.1 that iPXE's parser cares about: framing, PEM, OID tables.

Pure functions over bytes. The OID tables mirror iPXE's ``src/crypto/mishmash/*.c``
(algorithms compiled into a default build, ``config/crypto.h``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# Digest algorithms a default iPXE build knows (MD4/MD5 are off in config/crypto.h).
DIGEST_OIDS: dict[str, str] = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.4": "sha224",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}

OID_RSA = "1.2.840.113549.1.1.1"
OID_RSA_PSS = "1.2.840.113549.1.1.10"
OID_EC_PUBKEY = "1.2.840.10045.2.1"

# Certificate signature algorithms (need both a digest and a public-key algorithm).
RSA_SIG_OIDS: dict[str, str] = {
    "1.2.840.113549.1.1.5": "sha1",
    "1.2.840.113549.1.1.14": "sha224",
    "1.2.840.113549.1.1.11": "sha256",
    "1.2.840.113549.1.1.12": "sha384",
    "1.2.840.113549.1.1.13": "sha512",
}
ECDSA_SIG_OIDS: dict[str, str] = {
    "1.2.840.10045.4.3.1": "sha224",
    "1.2.840.10045.4.3.2": "sha256",
    "1.2.840.10045.4.3.3": "sha384",
    "1.2.840.10045.4.3.4": "sha512",
}

# Curves iPXE implements for ECDSA (P-256, P-384).
EC_CURVES = {"secp256r1", "secp384r1"}

# Extensions iPXE parses (x509.c x509_extensions[]); any other critical one fails the cert.
KNOWN_EXTENSIONS: dict[str, str] = {
    "2.5.29.19": "basicConstraints",
    "2.5.29.15": "keyUsage",
    "2.5.29.37": "extKeyUsage",
    "1.3.6.1.5.5.7.1.1": "authorityInfoAccess",
    "2.5.29.17": "subjectAltName",
}


class FramingError(ValueError):
    """The bytes are not one definite-length DER object."""


def _header(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Return (tag byte, content start, content length) of the TLV at ``pos``."""
    if end - pos < 2:
        raise FramingError(f"truncated object at offset {pos}")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise FramingError(f"multi-byte tag at offset {pos}")
    first = data[pos + 1]
    pos += 2
    if first == 0x80:
        raise FramingError(f"BER indefinite length at offset {pos - 2}")
    if first & 0x80:
        count = first & 0x7F
        if count > 4 or end - pos < count:
            raise FramingError(f"bad length field at offset {pos - 2}")
        length = int.from_bytes(data[pos : pos + count], "big")
        if data[pos] == 0 or length < 0x80:  # DER: the shortest form (iPXE reads any)
            raise FramingError(f"length in a longer form than needed at offset {pos - 2}")
        pos += count
    else:
        length = first
    if end - pos < length:
        raise FramingError(
            f"object at offset {pos} claims {length} bytes but only {end - pos} remain "
            "(truncated?)"
        )
    return tag, pos, length


def object_end(data: bytes, pos: int = 0) -> int:
    """Where the DER object at ``pos`` ends, its header alone read (FramingError if it
    does not fit in ``data``): for framing a blob before anything parses it."""
    _tag, start, length = _header(data, pos, len(data))
    return start + length


def check_framing(data: bytes) -> None:
    """One object spanning all of ``data``, definite lengths all the way down.

    iPXE's DER image probe wants exactly one object and reads an indefinite length
    (``openssl cms -stream``) as an empty object.
    """
    _tag, start, length = _header(data, 0, len(data))
    if start + length != len(data):
        raise FramingError(f"{len(data) - start - length} bytes after the end of the object")
    _walk(data, 0, len(data), depth=0)


def _walk(data: bytes, pos: int, end: int, *, depth: int) -> None:
    if depth > 64:
        raise FramingError("nesting too deep")
    while pos < end:
        tag, start, length = _header(data, pos, end)
        if tag & 0x20:  # constructed: its contents are TLVs too
            _walk(data, start, start + length, depth=depth + 1)
        pos = start + length


def _pem_marker(data: bytes, offset: int, marker: bytes) -> int:
    """pem_marker(): the offset of ``marker`` at the start of a line, or -1."""
    while offset < len(data):
        if len(data) - offset < len(marker):
            break
        if data.startswith(marker, offset):
            return offset
        newline = data.find(b"\n", offset)
        offset = len(data) if newline < 0 else newline + 1
    return -1


_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_SPACE = frozenset(b" \t\n\v\f\r")


def _base64(encoded: bytes) -> bytes:
    """base64_decode() as iPXE does it: whitespace ignored, at most two '=' at the end."""
    out = bytearray()
    acc = bits = pad = 0
    for char in encoded:
        if char in _SPACE:
            continue
        if char == 0x3D:  # '='
            if pad >= 2:
                raise FramingError("PEM body has too many '=' pad characters")
            pad += 1
            bits -= 2
            continue
        if pad:
            raise FramingError("PEM body has characters after its '=' padding")
        index = _B64.find(bytes([char]))
        if index < 0:
            raise FramingError(f"PEM body has a character that is not base64: {chr(char)!r}")
        acc = (acc << 6) | index
        bits += 6
        while bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
        acc &= (1 << bits) - 1 if bits > 0 else 0
    if bits % 8:
        raise FramingError("PEM body does not decode to a whole number of bytes")
    return bytes(out)


def decode_pem(data: bytes) -> bytes | None:
    """The first PEM block's bytes as iPXE's pem.c takes them, or None if not PEM.

    Markers count only at the start of a line; the body is everything between the
    BEGIN line and the END marker (up to a NUL byte, as iPXE copies it into a C string).
    """
    begin = _pem_marker(data, 0, b"-----BEGIN")
    if begin < 0:
        return None
    newline = data.find(b"\n", begin)
    begin = len(data) if newline < 0 else newline + 1
    end = _pem_marker(data, begin, b"-----END")
    if end < 0:
        raise FramingError("PEM BEGIN marker without a matching END marker")
    return _base64(data[begin:end].split(b"\0", 1)[0])


# What asn1crypto raises on malformed input (it parses lazily, so any field access can).
PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
)


# --- iPXE's own DER reader (src/crypto/asn1.c), ported rule for rule ----------------------
#
# asn1crypto and cryptography are both stricter and more lenient than iPXE in places
# (time formats, BIT STRING padding, lengths, trailing fields), and verify's verdict must be
# iPXE's. So certificates and the CMS message are read with this port of iPXE's cursor:
# the same tag checks, the same length arithmetic, the same "an error empties the cursor".

SEQUENCE, SET, INTEGER, BOOLEAN, BIT_STRING, OCTET_STRING, OID = (
    0x30, 0x31, 0x02, 0x01, 0x03, 0x04, 0x06)
UTC_TIME, GENERALIZED_TIME = 0x17, 0x18
ANY = -1


def explicit(number: int) -> int:
    return 0xA0 | number


def implicit(number: int) -> int:
    return 0x80 | number


class Cursor:
    """``struct asn1_cursor``: a window on ``data``; errors set its length to 0."""

    __slots__ = ("data", "len", "pos")

    def __init__(self, data: bytes, pos: int = 0, length: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.len = len(data) - pos if length is None else length

    def copy(self) -> Cursor:
        return Cursor(self.data, self.pos, self.len)

    @property
    def value(self) -> bytes:
        return self.data[self.pos : self.pos + self.len]

    def invalidate(self) -> None:
        self.len = 0

    def type(self) -> int:
        return self.data[self.pos] if self.len >= 1 else 0  # ASN1_END

    def _start(self, want: int) -> int:
        """asn1_start(): the object's length, or -1 (sometimes emptying the cursor)."""
        if self.len < 2:
            self.invalidate()
            return -1
        if want != ANY and want != self.data[self.pos]:
            return -1  # a type mismatch leaves the cursor as it was
        self.pos += 1
        self.len -= 1
        len_len = self.data[self.pos]
        if len_len & 0x80:
            len_len &= 0x7F
            self.pos += 1
            self.len -= 1
        else:
            len_len = 1
        if self.len < len_len:
            self.invalidate()
            return -1
        length = 0
        for _ in range(len_len):  # an unsigned int: long length fields wrap, as in C
            length = ((length << 8) | self.data[self.pos]) & 0xFFFFFFFF
            self.pos += 1
            self.len -= 1
        if self.len < length:
            self.invalidate()
            return -1
        return length

    def enter(self, want: int = ANY) -> bool:
        length = self._start(want)
        if length < 0:
            self.invalidate()
            return False
        self.len = length
        return True

    def skip_if_exists(self, want: int = ANY) -> bool:
        length = self._start(want)
        if length < 0:
            return False
        self.pos += length
        self.len -= length
        return True

    def skip(self, want: int = ANY) -> bool:
        if not self.skip_if_exists(want):
            self.invalidate()
            return False
        return True

    def shrink(self, want: int = ANY) -> bool:
        temp = self.copy()
        length = temp._start(want)
        if length < 0:
            self.invalidate()
            return False
        self.len = temp.pos + length - self.pos
        return True

    def enter_bits(self, *, allow_unused: bool) -> int | None:
        """asn1_enter_bits(): the number of unused bits, or None where iPXE fails.

        Fails on an unused-bits count of 8 or more, unused bits in an empty string,
        non-zero padding bits, and (unless ``allow_unused``) any unused bits at all.
        """
        if not self.enter(BIT_STRING):
            return None
        if self.len < 1:
            self.invalidate()
            return None
        unused = self.data[self.pos]
        last = self.data[self.pos + self.len - 1]
        self.pos += 1
        self.len -= 1
        if unused >= 8 or (unused and self.len == 0) or last & (0xFF >> (8 - unused)):
            self.invalidate()
            return None
        if unused and not allow_unused:
            self.invalidate()
            return None
        return unused

    def enter_unsigned(self) -> bool:
        if not self.enter(INTEGER):
            return False
        if self.len > 1 and self.data[self.pos] == 0:
            self.pos += 1
            self.len -= 1
        return True

    def boolean(self) -> int | None:
        """asn1_boolean(): the value byte (any non-zero is true), None if not one byte."""
        c = self.copy()
        c.enter(BOOLEAN)
        return c.data[c.pos] if c.len == 1 else None

    def integer(self) -> int | None:
        """asn1_integer(): a C int, None if it does not fit."""
        c = self.copy()
        if not c.enter(INTEGER) or c.len < 1:
            return None
        raw = c.value
        value = raw[0] - 256 if raw[0] & 0x80 else raw[0]
        for byte in raw[1:]:
            high = (value >> 24) & 0xFF
            if high not in (0x00, 0xFF):
                return None
            value = ((value << 8) | byte) & 0xFFFFFFFF
            if value & 0x80000000:
                value -= 1 << 32
        return value

    def elements(self, container: int) -> Iterator[Cursor]:
        """Enter ``container`` (a copy) and yield a cursor at each object in it, in turn:
        iPXE's ``for ( ; cursor.len ; asn1_skip_any ( &cursor ) )`` loops."""
        cursor = self.copy()
        cursor.enter(container)
        while cursor.len:
            yield cursor.copy()
            cursor.skip(ANY)

    def tlv(self) -> bytes:
        """The bytes of the first object (header included), as asn1_shrink_any() sees it."""
        c = self.copy()
        c.shrink(ANY)
        return c.value


def _cdiv(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _cmod(a: int, b: int) -> int:
    return a - b * _cdiv(a, b)


_DAYS_TO_MONTH = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)


def _leap(tm_year: int) -> bool:
    leap = _cmod(tm_year, 4) == 0
    if _cmod(tm_year, 100) == 0:
        leap = False
    if _cmod(tm_year, 400) == 100:
        leap = True
    return leap


def _leaps_to_end(tm_year: int) -> int:
    return _cdiv(tm_year, 4) - _cdiv(tm_year, 100) + _cdiv(tm_year + 300, 400)


def ipxe_mktime(year: int, mon: int, mday: int, hour: int, minute: int, sec: int) -> int:
    """iPXE's mktime() (core/time.c): no range checks, so month 13 or day 0 still count."""
    tm_year = year + _cdiv(mon, 12)
    tm_mon = _cmod(mon, 12)
    if tm_mon < 0:
        tm_year -= 1
        tm_mon += 12
    yday = (mday - 1) + _DAYS_TO_MONTH[tm_mon]
    if tm_mon >= 2 and _leap(tm_year):
        yday += 1
    days = yday + 365 * tm_year - 25567 + _leaps_to_end(tm_year - 1)
    return days * 86400 + ((hour * 60) + minute) * 60 + sec


def ipxe_time(cursor: Cursor) -> int | None:
    """asn1_generalized_time(): seconds since the epoch, None where iPXE fails.

    UTCTime YYMMDDHHMM[SS]Z or GeneralizedTime YYYYMMDDHHMM[SS]Z: digits only, exactly
    one trailing Z (no fractions, no offsets), no range checks on the fields.
    """
    c = cursor.copy()
    kind = c.type()
    if kind not in (UTC_TIME, GENERALIZED_TIME):
        return None
    if not c.enter(kind):
        return None
    have_century = kind == GENERALIZED_TIME
    pairs = [0] * 7
    data = c.value
    i = 0 if have_century else 1
    while i < 7:
        if len(data) < 2:
            if i == 6:  # seconds may be missing
                break
            return None
        tens, units = data[0], data[1]
        if not (0x30 <= tens <= 0x39 and 0x30 <= units <= 0x39):
            return None
        pairs[i] = 10 * (tens - 0x30) + (units - 0x30)
        data = data[2:]
        i += 1
    if not have_century:
        pairs[0] = 19 if pairs[1] >= 50 else 20
    if data != b"Z":
        return None
    century, year, month, day, hour, minute, second = pairs
    return ipxe_mktime((century - 19) * 100 + year, month - 1, day, hour, minute, second)


def oid_bytes(dotted: str) -> bytes:
    """The contents octets of an OBJECT IDENTIFIER (what iPXE compares)."""
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for i, arc in enumerate([arcs[0] * 40 + arcs[1], *arcs[2:]]):
        del i
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return bytes(out)


def oid_text(raw: bytes) -> str:
    """Dotted form of OID contents octets, for messages (best effort)."""
    arcs: list[int] = []
    value = 0
    for byte in raw:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if not arcs:
        return raw.hex() or "(empty)"
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


@dataclass(frozen=True)
class Algorithm:
    """An entry of iPXE's ASN1_ALGORITHMS table."""

    name: str
    oid: str
    pubkey: str | None = None  # "rsa" | "ecdsa" | "rsa-pss"
    digest: str | None = None
    curve: str | None = None
    since: str = "any"  # "any" | "ecdsa" (>= 2.0.0) | "rsa-pss" (after 2.0.0)


ALGORITHMS: tuple[Algorithm, ...] = (
    Algorithm("rsaEncryption", OID_RSA, pubkey="rsa"),
    *(Algorithm(f"{h}WithRSAEncryption", oid, pubkey="rsa", digest=h)
      for oid, h in RSA_SIG_OIDS.items()),
    *(Algorithm(h, oid, digest=h) for oid, h in DIGEST_OIDS.items()),
    Algorithm("ecPublicKey", OID_EC_PUBKEY, pubkey="ecdsa", since="ecdsa"),
    *(Algorithm(f"ecdsaWith{h.upper()}", oid, pubkey="ecdsa", digest=h, since="ecdsa")
      for oid, h in ECDSA_SIG_OIDS.items()),
    Algorithm("prime256v1", "1.2.840.10045.3.1.7", curve="secp256r1", since="ecdsa"),
    Algorithm("secp384r1", "1.3.132.0.34", curve="secp384r1", since="ecdsa"),
    Algorithm("rsassa-pss", OID_RSA_PSS, pubkey="rsa-pss", since="rsa-pss"),
)
_BY_OID = {oid_bytes(a.oid): a for a in ALGORITHMS}


def find_algorithm(raw_oid: bytes, *, ecdsa: bool, rsa_pss: bool) -> Algorithm | None:
    """asn1_find_algorithm() in a build of that iPXE version."""
    algo = _BY_OID.get(raw_oid)
    if algo is None or (algo.since == "ecdsa" and not ecdsa) or (
            algo.since == "rsa-pss" and not rsa_pss):
        return None
    return algo


def algorithm_at(cursor: Cursor, *, ecdsa: bool, rsa_pss: bool) -> tuple[Algorithm | None, str]:
    """asn1_algorithm(): (the algorithm or None, the OID as text for messages).

    Parameters are never looked at (iPXE skips them for every algorithm verify meets).
    """
    c = cursor.copy()
    c.enter(SEQUENCE)
    if not c.enter(OID):
        return None, "(not an AlgorithmIdentifier)"
    return find_algorithm(c.value, ecdsa=ecdsa, rsa_pss=rsa_pss), oid_text(c.value)
