"""UEFI Secure Boot data formats: EFI signature lists and time-based authenticated updates.

An EFI_SIGNATURE_LIST (UEFI 2.x, 32.4.1) is what firmware stores in PK, KEK, db and dbx, and
what setup screens and ``efi-updatevar`` take as ``.esl``. An ``.auth`` file is the same list
prefixed by EFI_VARIABLE_AUTHENTICATION_2: a timestamp and a PKCS#7 SignedData over
``name || vendor GUID || attributes || timestamp || data`` made by the key one level up
(PK signs PK and KEK, KEK signs db). Firmware in setup mode takes the PK update signed by
the PK itself; after that, every update must chain this way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from trustboot.errors import ConfigError

EFI_CERT_X509 = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_SHA256 = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")
EFI_CERT_TYPE_PKCS7 = uuid.UUID("4aafd29d-68df-49ee-8aa9-347d375665a7")
EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
# Owner of entries trustboot writes outside a Secure Boot key set (e.g. the HTTPS Boot CA
# list, where firmware ignores the owner): a fixed name-based GUID.
TRUSTBOOT_OWNER = uuid.uuid5(uuid.NAMESPACE_URL, "https://trustboot.invalid/uefi-owner")

# NV | BS | RT | TIME_BASED_AUTHENTICATED_WRITE_ACCESS
AUTHENTICATED_ATTRIBUTES = 0x01 | 0x02 | 0x04 | 0x20
WIN_CERT_TYPE_EFI_GUID = 0x0EF1
WIN_CERT_REVISION = 0x0200

VARIABLES = {
    "PK": EFI_GLOBAL_VARIABLE,
    "KEK": EFI_GLOBAL_VARIABLE,
    "db": EFI_IMAGE_SECURITY_DATABASE,
    "dbx": EFI_IMAGE_SECURITY_DATABASE,
}

_ESL_HEADER = struct.Struct("<16sIII")


@dataclass(frozen=True)
class SignatureEntry:
    type: uuid.UUID  # EFI_CERT_X509 or EFI_CERT_SHA256
    owner: uuid.UUID
    data: bytes  # a DER certificate or a 32-byte hash


def guid_bytes(value: uuid.UUID) -> bytes:
    """EFI_GUID in memory order (the first three fields little-endian)."""
    return value.bytes_le


def x509_list(certificates: list[bytes], owner: uuid.UUID) -> bytes:
    """One EFI_SIGNATURE_LIST per certificate (X.509 lists hold one entry each, because
    every entry of a list must have the same size)."""
    return b"".join(signature_list(EFI_CERT_X509, owner, [der]) for der in certificates)


def signature_list(sig_type: uuid.UUID, owner: uuid.UUID, payloads: list[bytes]) -> bytes:
    if not payloads or len({len(p) for p in payloads}) != 1:
        raise ValueError("a signature list needs entries of one size")
    size = 16 + len(payloads[0])
    body = b"".join(guid_bytes(owner) + p for p in payloads)
    return _ESL_HEADER.pack(guid_bytes(sig_type), _ESL_HEADER.size + len(body), 0, size) + body


def parse_signature_lists(data: bytes, what: str = "signature list") -> list[SignatureEntry]:
    """Every entry of a sequence of EFI_SIGNATURE_LISTs; ConfigError on any malformation."""
    entries: list[SignatureEntry] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < _ESL_HEADER.size:
            raise ConfigError(f"{what}: truncated EFI_SIGNATURE_LIST header at byte {pos}")
        raw_type, list_size, header_size, sig_size = _ESL_HEADER.unpack_from(data, pos)
        end = pos + list_size
        body = pos + _ESL_HEADER.size + header_size
        if list_size < _ESL_HEADER.size or end > len(data) or body > end or sig_size < 16:
            raise ConfigError(f"{what}: EFI_SIGNATURE_LIST at byte {pos} has bad sizes")
        if (end - body) % sig_size:
            raise ConfigError(f"{what}: EFI_SIGNATURE_LIST at byte {pos} is not a whole "
                              "number of entries")
        sig_type = uuid.UUID(bytes_le=raw_type)
        for off in range(body, end, sig_size):
            owner = uuid.UUID(bytes_le=data[off:off + 16])
            entries.append(SignatureEntry(sig_type, owner, data[off + 16:off + sig_size]))
        pos = end
    return entries


def efi_time(when: dt.datetime) -> bytes:
    """EFI_TIME as time-based authenticated variables need it: UTC, Pad1, Nanosecond,
    TimeZone, Daylight and Pad2 all zero."""
    t = when.astimezone(dt.UTC)
    return struct.pack("<HBBBBBBIhBB", t.year, t.month, t.day, t.hour, t.minute, t.second,
                       0, 0, 0, 0, 0)


def signed_payload(name: str, timestamp: bytes, data: bytes) -> bytes:
    """The bytes the PKCS#7 signature of an authenticated update covers."""
    vendor = VARIABLES[name]
    return (name.encode("utf-16-le") + guid_bytes(vendor)
            + struct.pack("<I", AUTHENTICATED_ATTRIBUTES) + timestamp + data)


def auth_update(name: str, data: bytes, when: dt.datetime,
                sign_sha256: Callable[[bytes], bytes]) -> bytes:
    """An ``.auth`` file: EFI_VARIABLE_AUTHENTICATION_2 followed by ``data``.

    ``sign_sha256`` takes the SHA-256 digest of the signed payload and returns a DER
    SignedData (bare, not in a ContentInfo, as the UEFI spec and efitools'
    sign-efi-sig-list have it), detached and without signed attributes.
    """
    if name not in VARIABLES:
        raise ValueError(f"unknown Secure Boot variable {name}")
    timestamp = efi_time(when)
    digest = hashlib.sha256(signed_payload(name, timestamp, data)).digest()
    cms = sign_sha256(digest)
    header = struct.pack("<IHH", 4 + 2 + 2 + 16 + len(cms), WIN_CERT_REVISION,
                         WIN_CERT_TYPE_EFI_GUID)
    return timestamp + header + guid_bytes(EFI_CERT_TYPE_PKCS7) + cms + data


@dataclass(frozen=True)
class AuthUpdate:
    timestamp: bytes
    cms: bytes
    data: bytes


def parse_auth_update(blob: bytes, what: str = "auth file") -> AuthUpdate:
    if len(blob) < 16 + 24:
        raise ConfigError(f"{what}: too short for EFI_VARIABLE_AUTHENTICATION_2")
    timestamp = blob[:16]
    length, revision, cert_type = struct.unpack_from("<IHH", blob, 16)
    guid = uuid.UUID(bytes_le=blob[24:40])
    if revision != WIN_CERT_REVISION or cert_type != WIN_CERT_TYPE_EFI_GUID \
            or guid != EFI_CERT_TYPE_PKCS7:
        raise ConfigError(f"{what}: not a PKCS#7 WIN_CERTIFICATE_UEFI_GUID")
    if length < 24 or 16 + length > len(blob):
        raise ConfigError(f"{what}: certificate length {length} is out of range")
    return AuthUpdate(timestamp, blob[40:16 + length], blob[16 + length:])
