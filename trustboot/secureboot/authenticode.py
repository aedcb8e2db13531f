"""Authenticode for EFI binaries: the image hash, signing with a db key, and verification.

Why here and not ``sbsign``: sbsign needs the db key unencrypted in a file, and trustboot
keeps every key encrypted at rest (and, later, in a token): the image is hashed here and
only the digest of the signed attributes goes to the key, as for every other signature
trustboot makes. ``sbverify`` and ``osslsigncode`` verify the result independently in
the tests, and OVMF with Secure Boot on runs it.

The hash follows edk2's HashPeImage (what the firmware checks): the headers without the
CheckSum field and the certificate-table directory entry, the sections in file order, then
any bytes after the last section that are not the certificate table.
"""

from __future__ import annotations

import array
import hashlib
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from asn1crypto import algos, cms, core, parser
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from trustboot.cms._asn1 import FramingError, object_end
from trustboot.cms.sign import der_tlv
from trustboot.errors import ConfigError, VerificationError

SPC_INDIRECT_DATA = "1.3.6.1.4.1.311.2.1.4"
SPC_PE_IMAGE_DATA = "1.3.6.1.4.1.311.2.1.15"
SPC_SP_OPUS_INFO = "1.3.6.1.4.1.311.2.1.12"
_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
WIN_CERT_REVISION = 0x0200
MAX_IMAGE = 256 << 20  # EFI applications are a few MiB; refuse anything absurd before reading
# WIN_CERTIFICATE entries read from one certificate table. A signed EFI binary carries one
# (sbsign, signtool), or one per CA it must boot under (sbattach --attach, a shim signed for
# both Microsoft UEFI CAs): 2 in practice. Each entry is parsed in turn, so without a cap
# 256 MiB of empty 8-byte entries took minutes of CPU to refuse.
MAX_SIGNATURES = 8


@dataclass(frozen=True)
class PeImage:
    """The offsets of a PE/COFF image that Authenticode needs."""

    data: bytes
    checksum_offset: int
    certdir_offset: int | None  # the IMAGE_DIRECTORY_ENTRY_SECURITY entry, if present
    size_of_headers: int
    sections: tuple[tuple[int, int], ...]  # (PointerToRawData, SizeOfRawData), file order
    cert_table: tuple[int, int]  # (file offset, size); (0, 0) when unsigned
    machine: int
    subsystem: int


def parse_pe(data: bytes, what: str) -> PeImage:
    """Parse just enough of ``data`` as PE/COFF; ConfigError naming ``what`` otherwise."""
    def bad(reason: str) -> ConfigError:
        return ConfigError(f"{what} is not a PE/COFF EFI binary: {reason}",
                           hint="pass an .efi file (e.g. bin-x86_64-efi/ipxe.efi)")

    if len(data) < 0x40 or data[:2] != b"MZ":
        raise bad("no MZ header")
    (pe,) = struct.unpack_from("<I", data, 0x3C)
    if pe + 24 > len(data) or data[pe:pe + 4] != b"PE\0\0":
        raise bad("no PE signature")
    machine, nsections = struct.unpack_from("<HH", data, pe + 4)
    (opt_size,) = struct.unpack_from("<H", data, pe + 20)
    opt = pe + 24
    if opt + opt_size > len(data) or opt_size < 96:
        raise bad("truncated optional header")
    (magic,) = struct.unpack_from("<H", data, opt)
    if magic == 0x20B:
        nrva_off, dd = opt + 108, opt + 112
    elif magic == 0x10B:
        nrva_off, dd = opt + 92, opt + 96
    else:
        raise bad(f"unknown optional header magic {magic:#x}")
    if nrva_off + 4 > opt + opt_size:
        raise bad("truncated optional header")
    (subsystem,) = struct.unpack_from("<H", data, opt + 68)
    (size_of_headers,) = struct.unpack_from("<I", data, opt + 60)
    (nrva,) = struct.unpack_from("<I", data, nrva_off)
    certdir: int | None = dd + 4 * 8 if nrva > 4 else None
    if certdir is not None and certdir + 8 > opt + opt_size:
        raise bad("data directories run past the optional header")
    cert_table = struct.unpack_from("<II", data, certdir) if certdir is not None else (0, 0)
    if size_of_headers > len(data) or size_of_headers < opt + opt_size:
        raise bad("SizeOfHeaders is out of range")
    sec_table = opt + opt_size
    if sec_table + 40 * nsections > size_of_headers:
        raise bad("the section table runs past the headers")
    sections = []
    for i in range(nsections):
        raw_size, raw_ptr = struct.unpack_from("<II", data, sec_table + 40 * i + 16)
        if raw_size == 0:
            continue
        if raw_ptr + raw_size > len(data) or raw_ptr < size_of_headers:
            raise bad(f"section {i} lies outside the file")
        sections.append((raw_ptr, raw_size))
    sections.sort()
    offset, size = cert_table
    if size and (offset + size != len(data) or offset % 8 or offset < size_of_headers):
        raise bad("the certificate table is not the 8-byte aligned end of the file")
    return PeImage(data, opt + 64, certdir, size_of_headers, tuple(sections),
                   (offset, size), machine, subsystem)


def image_hash(pe: PeImage, hash_name: str = "sha256") -> bytes:
    h = hashlib.new(hash_name)
    d = memoryview(pe.data)
    if pe.certdir_offset is None:
        h.update(d[:pe.checksum_offset])
        h.update(d[pe.checksum_offset + 4:pe.size_of_headers])
    else:
        h.update(d[:pe.checksum_offset])
        h.update(d[pe.checksum_offset + 4:pe.certdir_offset])
        h.update(d[pe.certdir_offset + 8:pe.size_of_headers])
    hashed = pe.size_of_headers
    for ptr, size in pe.sections:
        h.update(d[ptr:ptr + size])
        hashed += size
    end = len(pe.data) - pe.cert_table[1]
    if end > hashed:
        h.update(d[hashed:end])
    return h.digest()


def pe_checksum(data: bytes, checksum_offset: int) -> int:
    """The PE CheckSum (IMAGEHLP's algorithm), computed with the field itself as zero.
    Firmware does not check it; tools that do (and diffing tools) expect it to be right."""
    buf = bytearray(data)
    buf[checksum_offset:checksum_offset + 4] = b"\0\0\0\0"
    if len(buf) % 2:
        buf.append(0)
    words = array.array("H", bytes(buf))
    if sys.byteorder != "little":
        words.byteswap()
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total + len(data)


# --- ASN.1 -----------------------------------------------------------------------------------

class _SpcAttributeValue(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[list[Any]] = [("type", core.ObjectIdentifier),
                                     ("value", core.Any, {"optional": True})]


class SpcIndirectDataContent(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[list[Any]] = [("data", _SpcAttributeValue),
                                     ("message_digest", algos.DigestInfo)]


class _AuthenticodeContent(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[list[Any]] = [("content_type", core.ObjectIdentifier),
               ("content", core.Any, {"explicit": 0, "optional": True})]


class _AuthenticodeSignedData(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[list[Any]] = [
        ("version", cms.CMSVersion),
        ("digest_algorithms", cms.DigestAlgorithms),
        ("encap_content_info", _AuthenticodeContent),
        ("certificates", cms.CertificateSet, {"implicit": 0, "optional": True}),
        ("crls", cms.RevocationInfoChoices, {"implicit": 1, "optional": True}),
        ("signer_infos", cms.SignerInfos),
    ]


class _AuthenticodeContentInfo(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[list[Any]] = [("content_type", core.ObjectIdentifier),
               ("content", _AuthenticodeSignedData, {"explicit": 0})]


# SpcPeImageData as sbsign and signtool write it: no flags, file = "<<<Obsolete>>>"
# (SpcLink file [2] EXPLICIT SpcString unicode [0] IMPLICIT BMPString).
_PE_IMAGE_DATA = der_tlv(0x30, bytes.fromhex("030100") + der_tlv(0xA0, der_tlv(0xA2, der_tlv(
    0x80, "<<<Obsolete>>>".encode("utf-16-be")))))


def _attribute(oid: str, value_der: bytes) -> bytes:
    return der_tlv(0x30, core.ObjectIdentifier(oid).dump() + der_tlv(0x31, value_der))


def build_signature(digest: bytes, certificate: x509.Certificate,
                    chain: Sequence[x509.Certificate],
                    sign_sha256: Callable[[bytes], bytes], algorithm: str) -> bytes:
    """The Authenticode ContentInfo(SignedData) for an image whose SHA-256 hash is
    ``digest``; ``sign_sha256`` signs the SHA-256 of the signed attributes."""
    indirect = SpcIndirectDataContent({
        "data": {"type": SPC_PE_IMAGE_DATA, "value": core.Any.load(_PE_IMAGE_DATA)},
        "message_digest": {"digest_algorithm": {"algorithm": "sha256"}, "digest": digest},
    })
    indirect_der = indirect.dump()
    # The messageDigest covers the content octets of SpcIndirectDataContent (no tag/length).
    content_octets = indirect.contents
    attrs = sorted([
        _attribute("1.2.840.113549.1.9.3", core.ObjectIdentifier(SPC_INDIRECT_DATA).dump()),
        _attribute(SPC_SP_OPUS_INFO, der_tlv(0x30, b"")),
        _attribute(_MESSAGE_DIGEST,
                   core.OctetString(hashlib.sha256(content_octets).digest()).dump()),
    ])
    signed_attrs = b"".join(attrs)
    signature = sign_sha256(hashlib.sha256(der_tlv(0x31, signed_attrs)).digest())
    der = certificate.public_bytes(serialization.Encoding.DER)
    tbs = ax509.Certificate.load(der)["tbs_certificate"]
    sig_alg = ("rsassa_pkcs1v15" if algorithm == "rsa" else "sha256_ecdsa")
    signer_info = der_tlv(0x30, b"".join([
        core.Integer(1).dump(),
        cms.IssuerAndSerialNumber({"issuer": tbs["issuer"],
                                   "serial_number": tbs["serial_number"]}).dump(),
        algos.DigestAlgorithm({"algorithm": "sha256"}).dump(),
        der_tlv(0xA0, signed_attrs),
        algos.SignedDigestAlgorithm({"algorithm": sig_alg}).dump(),
        core.OctetString(signature).dump(),
    ]))
    certs = b"".join(c.public_bytes(serialization.Encoding.DER) for c in (certificate, *chain))
    signed_data = der_tlv(0x30, b"".join([
        core.Integer(1).dump(),
        der_tlv(0x31, algos.DigestAlgorithm({"algorithm": "sha256"}).dump()),
        der_tlv(0x30, core.ObjectIdentifier(SPC_INDIRECT_DATA).dump()
                + der_tlv(0xA0, indirect_der)),
        der_tlv(0xA0, certs),
        der_tlv(0x31, signer_info),
    ]))
    return der_tlv(0x30, core.ObjectIdentifier("1.2.840.113549.1.7.2").dump()
                + der_tlv(0xA0, signed_data))


def embed_signature(data: bytes, signature: bytes) -> bytes:
    """``data`` (an unsigned image, 8-byte aligned) with ``signature`` as its only
    WIN_CERTIFICATE, the security directory and the CheckSum updated."""
    pe = parse_pe(data, "the image")
    if pe.certdir_offset is None:
        raise ConfigError("the image has no certificate-table directory entry")
    entry = struct.pack("<IHH", 8 + len(signature), WIN_CERT_REVISION,
                        WIN_CERT_TYPE_PKCS_SIGNED_DATA) + signature
    entry += b"\0" * (-len(entry) % 8)
    out = bytearray(data + entry)
    struct.pack_into("<II", out, pe.certdir_offset, len(data), len(entry))
    struct.pack_into("<I", out, pe.checksum_offset, 0)
    struct.pack_into("<I", out, pe.checksum_offset, pe_checksum(bytes(out), pe.checksum_offset))
    return bytes(out)


def prepare_unsigned(data: bytes, what: str) -> bytes:
    """The image padded to 8 bytes (the certificate table must start 8-byte aligned; the
    padding is hashed, as edk2 hashes any bytes between the sections and the table)."""
    pe = parse_pe(data, what)
    if pe.cert_table[1]:
        raise ConfigError(f"{what} is already signed",
                          hint="sign the unsigned build output; trustboot does not stack "
                               "signatures")
    return data + b"\0" * (-len(data) % 8)


def sign_image(data: bytes, what: str, certificate: x509.Certificate,
               chain: Sequence[x509.Certificate], sign_sha256: Callable[[bytes], bytes],
               algorithm: str = "rsa") -> bytes:
    unsigned = prepare_unsigned(data, what)
    digest = image_hash(parse_pe(unsigned, what))
    return embed_signature(unsigned,
                           build_signature(digest, certificate, chain, sign_sha256, algorithm))


# --- verification ----------------------------------------------------------------------------

@dataclass(frozen=True)
class AuthenticodeReport:
    signer_subject: str
    signer_sha256: str
    image_sha256: str  # the Authenticode hash (what db hash entries list)


# The smallest ContentInfo(SignedData) there can be: no algorithms, no certificates, no
# signers. A PKCS#7 entry shorter than this holds no signature to try.
_MIN_SIGNED_DATA = len(der_tlv(0x30, core.ObjectIdentifier("1.2.840.113549.1.7.2").dump()
                               + der_tlv(0xA0, der_tlv(0x30, b"".join([
                                   core.Integer(1).dump(), der_tlv(0x31, b""),
                                   der_tlv(0x30, core.ObjectIdentifier(SPC_INDIRECT_DATA).dump()),
                                   der_tlv(0x31, b"")])))))


def _signatures(pe: PeImage, what: str) -> list[bytes]:
    """The PKCS#7 blobs of the certificate table. A table that is not a short list of
    well-framed entries is refused whole (malformed): what follows a broken frame cannot
    be located, and a table of millions of entries is nothing a signer writes."""
    offset, size = pe.cert_table
    if not size:
        raise VerificationError(f"{what} is not signed", rule="unsigned",
                                hint="sign it with `trustboot secureboot sign`")

    def malformed(reason: str) -> VerificationError:
        return VerificationError(f"{what}: malformed WIN_CERTIFICATE {reason}",
                                 rule="malformed",
                                 hint="sign the unsigned build output again with "
                                      "`trustboot secureboot sign`")

    out = []
    pos = offset
    entries = 0
    while pos + 8 <= offset + size:
        entries += 1
        if entries > MAX_SIGNATURES:
            raise malformed(f"table: more than {MAX_SIGNATURES} entries (a signed binary "
                            "carries one per signature, one or two)")
        length, revision, ctype = struct.unpack_from("<IHH", pe.data, pos)
        if length < 8 or pos + length > offset + size:
            raise malformed(f"at byte {pos}")
        if revision == WIN_CERT_REVISION and ctype == WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            blob = pe.data[pos + 8:pos + length]
            if len(blob) < _MIN_SIGNED_DATA or not _one_der_object(blob):
                raise malformed(f"at byte {pos}: its {len(blob)} bytes are not one DER "
                                "SignedData followed by at most 7 zero bytes of padding")
            out.append(blob)
        pos += length + (-length % 8)
    if not out:
        raise VerificationError(f"{what} holds no PKCS#7 Authenticode signature",
                                rule="unsigned")
    return out


def _one_der_object(blob: bytes) -> bool:
    """Whether ``blob`` is one DER SEQUENCE, then at most the 7 zero bytes that pad a
    WIN_CERTIFICATE to 8 (signtool and osslsigncode count them in dwLength). Only the
    header is read: the contents are parsed later, if at all."""
    try:
        end = object_end(blob)
    except FramingError:
        return False
    rest = blob[end:]
    return blob[:1] == b"\x30" and len(rest) < 8 and not rest.strip(b"\0")


# What a hostile signature can make asn1crypto or cryptography raise while it is read:
# asn1crypto parses lazily, so a broken field fails only where it is first used, and
# cryptography refuses what asn1crypto accepted (an unknown key type, a point that is not on
# its curve, a bad version). Each is a malformed signature (exit 4), never a crash.
# RecursionError: asn1crypto decodes nested values recursively (a backstop: only the
# attributes verification uses are decoded, see _check_parsed).
_MALFORMED = (ValueError, TypeError, KeyError, IndexError, AttributeError,
              UnsupportedAlgorithm, x509.InvalidVersion, RecursionError)


def _check_one(blob: bytes, digest: bytes, trusted: Sequence[x509.Certificate],
               what: str) -> AuthenticodeReport:
    def fail(reason: str, rule: str) -> VerificationError:
        return VerificationError(f"{what}: {reason}", rule=rule,
                                 hint="sign the image with the db key the firmware trusts")

    # Everything below reads the attacker's bytes, so all of it is under one handler; the
    # checks raise their own VerificationError, which passes through.
    try:
        return _check_parsed(blob, digest, trusted, fail)
    except _MALFORMED as exc:
        raise fail(f"cannot parse the Authenticode signature ({type(exc).__name__}: {exc})",
                   "malformed") from None


def _check_parsed(blob: bytes, digest: bytes, trusted: Sequence[x509.Certificate],
                  fail: Callable[[str, str], VerificationError]) -> AuthenticodeReport:
    info = _AuthenticodeContentInfo.load(blob)
    sd = info["content"]
    if info["content_type"].dotted != "1.2.840.113549.1.7.2":
        raise fail("the signature is not PKCS#7 SignedData", "malformed")
    encap = sd["encap_content_info"]
    if encap["content_type"].dotted != SPC_INDIRECT_DATA:
        raise fail("the signed content is not SpcIndirectDataContent", "malformed")
    # The content is [0] EXPLICIT SpcIndirectDataContent: drop the [0] wrapper.
    inner = parser.parse(encap["content"].dump())[4]
    indirect = SpcIndirectDataContent.load(inner)
    signed_digest = bytes(indirect["message_digest"]["digest"].native)
    digest_algorithm = indirect["message_digest"]["digest_algorithm"]["algorithm"].native
    (si,) = list(sd["signer_infos"])
    certs = [c.chosen for c in sd["certificates"]] if sd["certificates"] else []
    # Each signed attribute holds exactly one value, each type once (RFC 5652 11.1);
    # an empty SET or a second messageDigest is not a signature to pick a value from.
    # Only the values verification reads are decoded: decoding any other (an unknown
    # OID holding thousands of nested SEQUENCEs) would recurse as deep as it is nested.
    attrs: dict[str, object] = {}
    for a in si["signed_attrs"]:
        kind, values = a["type"].dotted, list(a["values"])
        if len(values) != 1 or kind in attrs:
            raise fail(f"the signed attribute {kind} is not one attribute with one "
                       "value", "malformed")
        attrs[kind] = values[0].native if kind == _MESSAGE_DIGEST else None
    # As sbverify and firmware: the signer is named by issuer and serial number (a
    # subjectKeyIdentifier names no certificate we could check against the db).
    sid = si["sid"]
    if sid.name != "issuer_and_serial_number":
        raise fail(f"the signer is identified by {sid.name}, not by issuer and serial "
                   "number", "malformed")
    issuer, serial = sid.chosen["issuer"], sid.chosen["serial_number"].native
    signer_der = next((c.dump() for c in certs
                       if c.issuer == issuer and c.serial_number == serial), None)
    attrs_der = b"\x31" + si["signed_attrs"].untag().dump(force=False)[1:]
    signature = bytes(si["signature"].native)
    if digest_algorithm != "sha256" or signed_digest != digest:
        raise fail("the image does not match its signature (changed after signing)",
                   "image-digest")
    content_octets = indirect.contents
    md = attrs.get(_MESSAGE_DIGEST)
    if not isinstance(md, bytes) or md != hashlib.sha256(content_octets).digest():
        raise fail("the messageDigest attribute does not match the signed content",
                   "message-digest")
    if signer_der is None:
        raise fail("the signer's certificate is not in the signature", "signer-missing")
    cert = x509.load_der_x509_certificate(signer_der)
    subject = cert.subject.rfc4514_string()
    try:
        _verify_sig(cert.public_key(), signature, attrs_der)
    except InvalidSignature:
        raise fail("the signature does not verify with the signer's key", "bad-signature") \
            from None
    trusted_by = _trusted(cert, trusted)
    if trusted_by is None:
        raise fail(f"the signer {subject} is not, and is not issued by, "
                   "the given db certificate", "untrusted-signer")
    return AuthenticodeReport(subject, cert.fingerprint(hashes.SHA256()).hex(), digest.hex())


def _verify_sig(key: object, signature: bytes, data: bytes) -> None:
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    else:
        raise InvalidSignature


def _trusted(cert: x509.Certificate,
             trusted: Sequence[x509.Certificate]) -> x509.Certificate | None:
    for anchor in trusted:
        if cert == anchor:
            return anchor
        if cert.issuer == anchor.subject:
            try:
                cert.verify_directly_issued_by(anchor)
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                continue
            return anchor
    return None


def verify_image(data: bytes, trusted: Sequence[x509.Certificate],
                 what: str) -> AuthenticodeReport:
    """Check ``data``'s Authenticode signature as UEFI firmware would against the db
    certificates ``trusted``: the image hash, the signed attributes, the signature and
    the signer's link to a db certificate (firmware ignores validity dates here)."""
    pe = parse_pe(data, what)
    blobs = _signatures(pe, what)
    digest = image_hash(pe)
    error: VerificationError | None = None
    for blob in blobs:  # firmware accepts the image if any signature is trusted
        try:
            return _check_one(blob, digest, trusted, what)
        except VerificationError as exc:
            error = error or exc
    assert error is not None
    raise error
