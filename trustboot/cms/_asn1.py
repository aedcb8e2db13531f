"""The small pieces of ASN.1 that iPXE's parser cares about: framing, PEM, OID tables.

Pure functions over bytes. The OID tables mirror iPXE's ``src/crypto/mishmash/*.c``
(algorithms compiled into a default build, ``config/crypto.h``).
"""

from __future__ import annotations

import base64
import binascii

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
        pos += count
    else:
        length = first
    if end - pos < length:
        raise FramingError(
            f"object at offset {pos} claims {length} bytes but only {end - pos} remain "
            "(truncated?)"
        )
    return tag, pos, length


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


def decode_pem(data: bytes) -> bytes | None:
    """The first PEM block's bytes (as iPXE's pem.c takes it), or None if not PEM."""
    begin = data.find(b"-----BEGIN")
    if begin < 0:
        return None
    body_start = data.find(b"\n", begin)
    end = data.find(b"-----END", begin)
    if body_start < 0 or end < 0 or end < body_start:
        raise FramingError("PEM BEGIN marker without a matching END marker")
    lines = [
        line.strip()
        for line in data[body_start:end].splitlines()
        if line.strip() and b":" not in line
    ]
    try:
        return base64.b64decode(b"".join(lines), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FramingError(f"PEM body is not valid base64: {exc}") from None


# What asn1crypto raises on malformed input (it parses lazily, so any field access can).
PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
)
