"""Authenticode against hostile PE files: each header bound, the section and certificate
tables, and the WIN_CERTIFICATE walk, one crafted image each.

The images start from the minimal EFI application of mkpe (PE32+, one .text section at
0x200, SizeOfHeaders 0x200, 16 data directories); the offsets below are that layout's.
Whatever is refused must be refused as the malformation it is (not by a later check that
happens to trip), and what is legitimate (a .bss section, bytes after the last section, an
unaligned end) must sign so that an independent verifier agrees.
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID

from trustboot.cms.sign import der_tlv
from trustboot.errors import ConfigError, VerificationError
from trustboot.secrets import constant
from trustboot.secureboot import authenticode, keyset

from .conftest import PASS, Run
from .mkpe import make_efi_app

PE = 0x40  # e_lfanew
NSECTIONS = PE + 6
OPT_SIZE = PE + 20
OPT = PE + 24
SIZE_OF_HEADERS = OPT + 60
NRVA = OPT + 108
CERTDIR = OPT + 112 + 4 * 8  # IMAGE_DIRECTORY_ENTRY_SECURITY
SECTIONS = OPT + 240
TEXT_RAW_SIZE = SECTIONS + 16
TEXT_RAW_PTR = SECTIONS + 20


def put(data: bytes, offset: int, fmt: str, *values: int | bytes) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


Sign = Callable[[bytes], bytes]


@pytest.fixture(scope="module")
def signer_and_db(keyset_pki: Path) -> tuple[Sign, x509.Certificate]:
    ks = keyset.load_keyset(keyset_pki)
    signer = keyset.open_signer(ks, "db", constant(PASS.encode()), now=dt.datetime.now(dt.UTC))
    return (lambda data: keyset.sign_efi(data, "app", signer)), ks.certificates["db"]


@pytest.fixture(scope="module")
def signed(signer_and_db: tuple[Sign, x509.Certificate]) -> bytes:
    return signer_and_db[0](make_efi_app())


def refused(data: bytes, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        authenticode.parse_pe(data, "img")
    assert message in info.value.message, info.value.message


# -- headers: each bound refuses with its own reason -------------------------------------------

APP = make_efi_app()


@pytest.mark.parametrize("image, message", [
    pytest.param(b"ZM" + APP[2:], "no MZ header", id="no-mz"),
    pytest.param(put(APP, PE, "<4s", b"PX\0\0"), "no PE signature", id="no-pe"),
    # PE32+ keeps NumberOfRvaAndSizes at 108: an optional header of 100 bytes ends first
    pytest.param(put(APP, OPT_SIZE, "<H", 100), "truncated optional header", id="opt-100"),
    # 16 directories announced, but the header ends inside the security entry
    pytest.param(put(APP, OPT_SIZE, "<H", 148), "data directories run past", id="dirs"),
    pytest.param(put(APP, SIZE_OF_HEADERS, "<I", 0x100), "SizeOfHeaders is out of range",
                 id="soh-inside-optional-header"),
    pytest.param(put(APP, SIZE_OF_HEADERS, "<I", 0x10000), "SizeOfHeaders is out of range",
                 id="soh-past-eof"),
    pytest.param(put(APP, NSECTIONS, "<H", 20), "section table runs past the headers",
                 id="section-table"),
    pytest.param(put(APP, TEXT_RAW_SIZE, "<I", 0x10000), "section 0 lies outside the file",
                 id="section-past-eof"),
    pytest.param(put(APP, TEXT_RAW_PTR, "<I", 0x100), "section 0 lies outside the file",
                 id="section-in-headers"),
])
def test_malformed_headers_are_refused_as_such(image: bytes, message: str) -> None:
    refused(image, message)


def test_a_directory_count_without_the_security_entry(
        signer_and_db: tuple[Sign, x509.Certificate]) -> None:
    """NumberOfRvaAndSizes 4 stops before the security directory (index 4): the image has
    no certificate-table entry, and signing says so instead of writing into bytes that are
    not a directory; with 5 the entry is there and signing works."""
    sign, db = signer_and_db
    short = put(APP, NRVA, "<I", 4)
    assert authenticode.parse_pe(short, "img").certdir_offset is None
    with pytest.raises(ConfigError, match="no certificate-table directory entry"):
        sign(short)
    five = put(APP, NRVA, "<I", 5)
    assert authenticode.parse_pe(five, "img").certdir_offset == CERTDIR
    authenticode.verify_image(sign(five), [db], "img")


# -- the certificate table ---------------------------------------------------------------------


def _cli_refuses(run: Run, tmp_path: Path, image: bytes, db: x509.Certificate,
                 says: str) -> None:
    """`secureboot verify` of ``image`` against ``db``: exit 4, saying ``says``."""
    app, db_file = tmp_path / "app.efi", tmp_path / "db.crt"
    app.write_bytes(image)
    db_file.write_bytes(db.public_bytes(serialization.Encoding.PEM))
    r = run("secureboot", "verify", "--db", str(db_file), str(app))
    assert r.exit_code == 4, r.output
    assert says in r.output


def _table(image: bytes) -> tuple[int, int]:
    offset, size = struct.unpack_from("<II", image, CERTDIR)
    return offset, size


def test_certificate_table_not_at_the_aligned_end_is_refused(signed: bytes) -> None:
    offset, size = _table(signed)
    refused(signed + b"\0" * 8, "not the 8-byte aligned end of the file")  # bytes after it
    refused(put(signed, CERTDIR, "<II", offset + 4, size - 4),  # unaligned start
            "not the 8-byte aligned end of the file")
    whole = len(signed) - 0x100  # starts inside the headers
    refused(put(signed, CERTDIR, "<II", 0x100, whole), "not the 8-byte aligned end of the file")


def test_win_certificate_lengths_are_bounded(signed: bytes,
                                             signer_and_db: tuple[Sign, x509.Certificate]
                                             ) -> None:
    """A dwLength running past the table, or shorter than its own header (0 would loop
    forever), is malformed; an entry of another type is no signature."""
    _sign, db = signer_and_db
    offset, size = _table(signed)
    for length in (size + 8, 4):
        with pytest.raises(VerificationError, match=f"malformed WIN_CERTIFICATE at byte {offset}"):
            authenticode.verify_image(put(signed, offset, "<I", length), [db], "img")
    x509_type = put(signed, offset + 6, "<H", 0x0001)  # WIN_CERT_TYPE_X509
    with pytest.raises(VerificationError, match="holds no PKCS#7 Authenticode signature"):
        authenticode.verify_image(x509_type, [db], "img")


def test_zero_length_win_certificate_does_not_hang() -> None:
    """In a subprocess with a timeout: a walk that does not advance would never return."""
    code = (
        "import struct, sys\n"
        "from tests.secureboot.mkpe import make_efi_app\n"
        "from trustboot.secureboot import authenticode\n"
        "from trustboot.errors import VerificationError\n"
        "app = bytearray(make_efi_app())\n"
        f"struct.pack_into('<II', app, {CERTDIR}, len(app), 16)\n"
        "app += struct.pack('<IHH', 0, 0x200, 2) + bytes(8)\n"
        "try:\n"
        "    authenticode.verify_image(bytes(app), [], 'img')\n"
        "except VerificationError as exc:\n"
        "    print(exc.message)\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, cwd=root, env={"PYTHONPATH": str(root)})
    assert "malformed WIN_CERTIFICATE" in out.stdout, out.stdout + out.stderr


def test_the_signature_after_an_unaligned_foreign_entry_is_found(
        signer_and_db: tuple[Sign, x509.Certificate]) -> None:
    """WIN_CERTIFICATE entries start 8-byte aligned: after a 13-byte entry of another type
    the next one is 3 bytes of padding further on."""
    sign, db = signer_and_db
    unsigned = make_efi_app()
    real = sign(unsigned)
    offset, size = _table(real)
    foreign = struct.pack("<IHH", 13, 0x0200, 0x0001) + b"hello" + b"\0" * 3
    table = foreign + real[offset:offset + size]
    image = put(unsigned + table, CERTDIR, "<II", len(unsigned), len(table))
    report = authenticode.verify_image(image, [db], "img")
    assert report.signer_subject == db.subject.rfc4514_string()


# -- what is hashed: legitimate layouts, checked by independent verifiers too ------------------


def _independent(tmp_path: Path, image: bytes, db_path: Path) -> None:
    if not (shutil.which("sbverify") and shutil.which("osslsigncode")):
        return
    f = tmp_path / "img.efi"
    f.write_bytes(image)
    out = subprocess.run(["sbverify", "--cert", str(db_path), str(f)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run(["osslsigncode", "verify", "-in", str(f), "-CAfile", str(db_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "Signature verification: ok" in out.stdout, out.stdout


def _two_sections(data_first: bool) -> bytes:
    """.text (0x200) and .data (0x400), listed in the section table in file order or not."""
    app = bytearray(make_efi_app() + b"\x11" * 0x200)
    struct.pack_into("<H", app, NSECTIONS, 2)
    text = bytes(app[SECTIONS:SECTIONS + 40])
    data = struct.pack("<8sIIIIIIHHI", b".data", 0x200, 0x2000, 0x200, 0x400, 0, 0, 0, 0,
                       0xC0000040)
    app[SECTIONS:SECTIONS + 80] = (data + text) if data_first else (text + data)
    return bytes(app)


def test_sections_are_hashed_in_file_order(signer_and_db: tuple[Sign, x509.Certificate],
                                           keyset_pki: Path, tmp_path: Path) -> None:
    sign, db = signer_and_db
    listed, ordered = _two_sections(True), _two_sections(False)
    pe_listed = authenticode.parse_pe(listed, "img")
    assert pe_listed.sections == ((0x200, 0x200), (0x400, 0x200))
    image = sign(listed)
    authenticode.verify_image(image, [db], "img")
    _independent(tmp_path, image, keyset_pki / "secureboot" / "db.crt")
    assert authenticode.parse_pe(ordered, "img").sections == pe_listed.sections


def test_a_bss_section_without_file_data_is_skipped(
        signer_and_db: tuple[Sign, x509.Certificate], keyset_pki: Path,
        tmp_path: Path) -> None:
    """SizeOfRawData 0 and PointerToRawData 0, as linkers write .bss: nothing to hash,
    and no reason to refuse the image."""
    sign, db = signer_and_db
    app = bytearray(make_efi_app())
    struct.pack_into("<H", app, NSECTIONS, 2)
    app[SECTIONS + 40:SECTIONS + 80] = struct.pack("<8sIIIIIIHHI", b".bss", 0x100, 0x2000, 0,
                                                   0, 0, 0, 0, 0, 0xC0000080)
    image = sign(bytes(app))
    authenticode.verify_image(image, [db], "img")
    _independent(tmp_path, image, keyset_pki / "secureboot" / "db.crt")


def test_bytes_after_the_last_section_are_signed(
        signer_and_db: tuple[Sign, x509.Certificate], keyset_pki: Path,
        tmp_path: Path) -> None:
    """Data past the sections (debug data, an appended payload) is part of the image
    hash: changing it after signing breaks the signature. The unaligned end is padded,
    so the certificate table starts 8-byte aligned."""
    sign, db = signer_and_db
    image = sign(make_efi_app() + b"TRAILING PAYLOAD!")  # 17 bytes: the end is unaligned
    offset, _size = _table(image)
    assert offset % 8 == 0 and offset == 0x400 + 24
    authenticode.verify_image(image, [db], "img")
    _independent(tmp_path, image, keyset_pki / "secureboot" / "db.crt")
    changed = bytearray(image)
    changed[0x400 + 3] ^= 0x20
    with pytest.raises(VerificationError, match="changed after signing"):
        authenticode.verify_image(bytes(changed), [db], "img")


def make_efi_app32() -> bytes:
    """The mkpe application as PE32 (i386 EFI, e.g. iPXE's bin-i386-efi): BaseOfData and
    4-byte ImageBase/stack/heap fields put the data directories at 96, not 112."""
    file_align, sect_align, opt_size = 0x200, 0x1000, 96 + 16 * 8
    size_of_headers = 0x200
    raw = b"\x31\xc0\xc3" + b"\xcc" * (0x200 - 3)
    dos = b"MZ" + b"\0" * 0x3A + struct.pack("<I", PE)
    coff = struct.pack("<HHIIIHH", 0x014C, 1, 0, 0, 0, opt_size, 0x0102)
    opt = struct.pack(
        "<HBBIIIIIIIIIHHHHHHIIIIHHIIIIII",
        0x10B, 14, 0, len(raw), 0, 0, sect_align, sect_align, 0, 0x400000,
        sect_align, file_align, 0, 0, 0, 0, 0, 0, 0, 2 * sect_align, size_of_headers, 0,
        10, 0, 0x100000, 0x1000, 0x100000, 0x1000, 0, 16)
    opt += b"\0" * (16 * 8)
    section = struct.pack("<8sIIIIIIHHI", b".text", 3, sect_align, len(raw), size_of_headers,
                          0, 0, 0, 0, 0x60000020)
    head = dos + b"PE\0\0" + coff + opt + section
    return head + b"\0" * (size_of_headers - len(head)) + raw


def test_a_pe32_image_signs_where_its_directories_are(
        signer_and_db: tuple[Sign, x509.Certificate], keyset_pki: Path,
        tmp_path: Path) -> None:
    sign, db = signer_and_db
    app = make_efi_app32()
    pe = authenticode.parse_pe(app, "img")
    assert pe.certdir_offset == OPT + 96 + 4 * 8 and pe.checksum_offset == OPT + 64
    image = sign(app)
    offset, size = struct.unpack_from("<II", image, OPT + 96 + 4 * 8)
    assert offset == len(app) and offset + size == len(image)
    authenticode.verify_image(image, [db], "img")
    _independent(tmp_path, image, keyset_pki / "secureboot" / "db.crt")


# -- the SignerInfo: what firmware would not accept is malformed, never a crash ----------------


def _entry(blob: bytes) -> bytes:
    entry = struct.pack("<IHH", 8 + len(blob), 0x0200, 0x0002) + blob
    return entry + b"\0" * (-len(entry) % 8)


def _with_table(signed: bytes, *blobs: bytes) -> bytes:
    """``signed``'s image with a certificate table of one PKCS#7 entry per blob."""
    offset, _size = _table(signed)
    table = b"".join(_entry(b) for b in blobs)
    return put(signed[:offset] + table, CERTDIR, "<II", offset, len(table))


def _mutated(signed: bytes, change: Callable[[object], None]) -> bytes:
    """The signature's PKCS#7 blob with its SignerInfo changed by ``change``."""
    from asn1crypto import cms

    offset, _size = _table(signed)
    length = struct.unpack_from("<I", signed, offset)[0]
    info = authenticode._AuthenticodeContentInfo.load(signed[offset + 8:offset + length])
    si = info["content"]["signer_infos"][0]
    change(si)
    info["content"]["signer_infos"] = cms.SignerInfos([cms.SignerInfo.load(si.dump(force=True))])
    return bytes(info.dump(force=True))


def _ski(si: object) -> None:
    from asn1crypto import cms

    si["sid"] = cms.SignerIdentifier({"subject_key_identifier": b"\x01" * 20})  # type: ignore[index]


def _empty_values(si: object) -> None:
    from asn1crypto import cms

    attrs = list(si["signed_attrs"])  # type: ignore[index]
    empty = cms.CMSAttribute({"type": "message_digest", "values": []})
    si["signed_attrs"] = cms.CMSAttributes([empty, *attrs])  # type: ignore[index]


def _twice(si: object) -> None:
    """A second messageDigest before the real one: which one would a verifier take?"""
    from asn1crypto import cms

    attrs = list(si["signed_attrs"])  # type: ignore[index]
    other = cms.CMSAttribute({"type": "message_digest", "values": [b"\0" * 32]})
    si["signed_attrs"] = cms.CMSAttributes([other, *attrs])  # type: ignore[index]


@pytest.mark.parametrize("change, message", [
    pytest.param(_ski, "identified by subject_key_identifier", id="subject-key-identifier"),
    pytest.param(_empty_values, "not one attribute with one value", id="empty-values"),
    pytest.param(_twice, "not one attribute with one value", id="message-digest-twice"),
])
def test_a_hostile_signer_info_is_malformed_and_the_next_signature_is_tried(
        signed: bytes, signer_and_db: tuple[Sign, x509.Certificate],
        change: Callable[[object], None], message: str) -> None:
    _sign, db = signer_and_db
    offset, _size = _table(signed)
    good = signed[offset + 8:offset + struct.unpack_from("<I", signed, offset)[0]]
    bad = _mutated(signed, change)
    with pytest.raises(VerificationError) as info:
        authenticode.verify_image(_with_table(signed, bad), [db], "img")
    assert info.value.rule == "malformed" and message in info.value.message
    assert info.value.exit_code == 4
    # firmware accepts an image if any of its signatures is trusted: one it cannot read
    # first must not hide a good one after it
    report = authenticode.verify_image(_with_table(signed, bad, good), [db], "img")
    assert report.signer_subject == db.subject.rfc4514_string()


# -- a hostile signer certificate or signature: exit 4, never an internal error ----------------

_EC_OID = bytes.fromhex("06072a8648ce3d0201")  # id-ecPublicKey


def _ec_signed(change: Callable[[bytes, ec.EllipticCurvePrivateKey], bytes]
               ) -> tuple[bytes, x509.Certificate]:
    """The mkpe application signed by a fresh self-signed P-256 key, the certificate in
    its signature changed by ``change``; and the unchanged certificate, as the db."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile db")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))

    def sign(digest: bytes) -> bytes:
        return key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))

    image = authenticode.sign_image(make_efi_app(), "app", cert, [], sign, "ec")
    # the certificate table is not hashed: the certificate in it can change, same length
    der = cert.public_bytes(serialization.Encoding.DER)
    changed = change(der, key)
    assert image.count(der) == 1 and len(changed) == len(der)
    return image.replace(der, changed), cert


def _unknown_key_oid(der: bytes, _key: ec.EllipticCurvePrivateKey) -> bytes:
    assert der.count(_EC_OID) == 1
    return der.replace(_EC_OID, bytes.fromhex("06072a8648ce3d0209"))


def _point_off_the_curve(der: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    point = key.public_key().public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.UncompressedPoint)
    assert der.count(point) == 1
    return der.replace(point, point[:-1] + bytes([point[-1] ^ 1]))


def _version_5(der: bytes, _key: ec.EllipticCurvePrivateKey) -> bytes:
    v3 = bytes.fromhex("a003020102")
    assert der.find(v3) < 16
    return der.replace(v3, bytes.fromhex("a003020105"), 1)


@pytest.mark.parametrize("change", [
    pytest.param(_unknown_key_oid, id="unknown-key-oid"),
    pytest.param(_point_off_the_curve, id="point-off-the-curve"),
    pytest.param(_version_5, id="certificate-version-5"),
])
def test_a_signer_certificate_cryptography_refuses_is_malformed(
        change: Callable[[bytes, ec.EllipticCurvePrivateKey], bytes], tmp_path: Path,
        run: Run) -> None:
    image, db = _ec_signed(change)
    with pytest.raises(VerificationError) as info:
        authenticode.verify_image(image, [db], "img")
    assert info.value.rule == "malformed", info.value.message
    _cli_refuses(run, tmp_path, image, db, "cannot parse the Authenticode signature")
    # the same key with its certificate unchanged verifies: what failed was the change
    good, db = _ec_signed(lambda der, _key: der)
    authenticode.verify_image(good, [db], "img")


def test_mutated_certificate_tables_never_crash() -> None:
    """300 seeded mutants of a signed image's certificate table (1-4 bytes each, the
    WIN_CERTIFICATE header included): each verifies or is refused as a TrustbootError;
    none raises anything else (the CLI's exit 70)."""
    image, db = _ec_signed(lambda der, _key: der)
    offset, size = _table(image)
    rng = random.Random(20261128)
    refused = 0
    for _ in range(300):
        mutant = bytearray(image)
        for _ in range(rng.randint(1, 4)):
            mutant[rng.randrange(offset, offset + size)] = rng.randrange(256)
        try:
            authenticode.verify_image(bytes(mutant), [db], "img")
        except (ConfigError, VerificationError):
            refused += 1
    assert refused > 200  # the mutants were mostly broken, and each was refused as such


# -- the table's size: a few well-framed entries, or the whole table is malformed ------------


def _raw_table(table: bytes) -> bytes:
    """The mkpe application with ``table`` (raw WIN_CERTIFICATE bytes) as its table."""
    app = make_efi_app()
    return put(app + table, CERTDIR, "<II", len(app), len(table))


def _blob(signed: bytes) -> bytes:
    offset, _size = _table(signed)
    return signed[offset + 8:offset + struct.unpack_from("<I", signed, offset)[0]]


def test_a_table_of_empty_entries_is_refused_at_the_first(tmp_path: Path,
                                                          signer_and_db: tuple[Sign,
                                                                               x509.Certificate],
                                                          run: Run) -> None:
    """100000 empty PKCS#7 entries (the reviewer's 33 million fit in MAX_IMAGE, minutes of
    CPU when each was parsed): the first, which holds no SignedData, condemns the table."""
    _sign, db = signer_and_db
    app, db_file = tmp_path / "app.efi", tmp_path / "db.crt"
    app.write_bytes(_raw_table(struct.pack("<IHH", 8, 0x0200, 0x0002) * 100_000))
    db_file.write_bytes(db.public_bytes(serialization.Encoding.PEM))
    r = run("secureboot", "verify", "--db", str(db_file), str(app))
    assert r.exit_code == 4, r.output
    assert (f"malformed WIN_CERTIFICATE at byte {len(make_efi_app())}: its 0 bytes are "
            "not one DER SignedData") in r.output


@pytest.mark.parametrize("entry", [
    pytest.param(bytes(16), id="zeros"),
    pytest.param(b"\x30\x82\x10\x00" + bytes(60), id="sequence-longer-than-its-entry"),
    pytest.param(b"\x30\x80" + bytes(62), id="indefinite-length"),
    pytest.param(b"\x31\x3e" + bytes(62), id="a-set"),
    pytest.param(b"\x30\x3e" + bytes(62) + b"\x01", id="non-zero-padding"),
    pytest.param(b"\x30\x3e" + bytes(62) + bytes(8), id="eight-bytes-of-padding"),
])
def test_a_broken_entry_condemns_the_table_even_after_a_good_one(
        signed: bytes, signer_and_db: tuple[Sign, x509.Certificate], entry: bytes) -> None:
    """Framing, unlike a SignerInfo firmware cannot use, is no matter of trying the next
    signature: a table holding a broken frame is refused whole, before any parsing."""
    _sign, db = signer_and_db
    for blobs in ((entry,), (_blob(signed), entry), (entry, _blob(signed))):
        with pytest.raises(VerificationError) as info:
            authenticode.verify_image(_with_table(signed, *blobs), [db], "img")
        assert info.value.rule == "malformed", info.value.message
        assert "are not one DER SignedData" in info.value.message


def test_more_entries_than_signers_write_are_refused(
        signed: bytes, signer_and_db: tuple[Sign, x509.Certificate]) -> None:
    """Entries of any type count (skipping millions of foreign ones costs time too)."""
    _sign, db = signer_and_db
    foreign = struct.pack("<IHH", 8, 0x0200, 0x0001)  # an empty WIN_CERT_TYPE_X509
    good = _entry(_blob(signed))
    most = authenticode.MAX_SIGNATURES
    image = _raw_table(foreign * (most - 1) + good)
    report = authenticode.verify_image(image, [db], "img")
    assert report.signer_subject == db.subject.rfc4514_string()
    with pytest.raises(VerificationError) as info:
        authenticode.verify_image(_raw_table(foreign * most + good), [db], "img")
    assert info.value.rule == "malformed"
    assert f"more than {most} entries" in info.value.message


def test_two_valid_signatures_verify(signed: bytes,
                                     signer_and_db: tuple[Sign, x509.Certificate],
                                     other_pki: Path) -> None:
    """A binary signed for two db keys (a shim signed for both Microsoft CAs): either
    key's db accepts it."""
    _sign, db = signer_and_db
    other = keyset.load_keyset(other_pki)
    signer = keyset.open_signer(other, "db", constant(PASS.encode()),
                                now=dt.datetime.now(dt.UTC))
    other_signed = keyset.sign_efi(make_efi_app(), "app", signer)
    image = _with_table(signed, _blob(signed), _blob(other_signed))
    for trusted in (db, other.certificates["db"]):
        report = authenticode.verify_image(image, [trusted], "img")
        assert report.signer_subject == trusted.subject.rfc4514_string()


# -- decoding only what is verified -------------------------------------------------------------


def _deep_attribute(si: object) -> None:
    """One more signed attribute, of an unknown type, holding 2000 nested SEQUENCEs."""
    from asn1crypto import cms, core

    value = b"\x05\x00"
    for _ in range(2000):
        value = der_tlv(0x30, value)
    attrs = list(si["signed_attrs"])  # type: ignore[index]
    deep = cms.CMSAttribute({"type": "1.2.3.4", "values": [core.Any.load(value)]})
    si["signed_attrs"] = cms.CMSAttributes([*attrs, deep])  # type: ignore[index]


def test_a_deeply_nested_signed_attribute_is_not_decoded(
        signed: bytes, signer_and_db: tuple[Sign, x509.Certificate], tmp_path: Path,
        run: Run) -> None:
    """Decoding the attribute recursed to Python's limit (exit 70). It is not read at all
    now: the signature fails where it really fails, over attributes that changed."""
    _sign, db = signer_and_db
    image = _with_table(signed, _mutated(signed, _deep_attribute))
    with pytest.raises(VerificationError) as info:
        authenticode.verify_image(image, [db], "img")
    assert info.value.rule == "bad-signature", info.value.message
    _cli_refuses(run, tmp_path, image, db, "does not verify with the signer's key")
