"""Tell what kind of boot loader (or script) a fetched file is, from its first bytes. No I/O.

Heuristics, stated as such in the output: iPXE's x86 prefixes are not compressed and carry
fixed strings ("PXE->EB:", "Installation failed - cannot continue"); its EFI binaries carry
"iPXE" and "ipxe.org". A PE image with a non-empty security directory carries an
Authenticode signature (checked for presence only, not validity).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from trustboot.audit.dhcp4 import safe_text
from trustboot.ipxe.lint import unguarded_boot
from trustboot.ipxe.syntax import runs_as_script

URL_RE = re.compile(rb"(?:https?|tftp|ftp|nfs)://[\x21-\x7e]{1,512}")
IPXE_VERSION_RE = re.compile(rb"iPXE (\d+\.\d+\.\d+[0-9A-Za-z+.\-]*)")
# Scripts larger than this are not parsed (their imgverify is unknown, and said so): the
# parser's time grows with what a hostile server sends, and it runs before the fetch's
# result is reported. Real boot scripts are a few KiB; parsing this much and walking its
# paths (within the walk's own bounds, see unguarded_boot) takes about a second.
MAX_PARSED_SCRIPT = 256 * 1024


@dataclass
class LoaderInfo:
    kind: str  # ipxe, ipxe-script, pxelinux, syslinux, grub, shim, windows, pe, elf, text, unknown
    description: str
    ipxe: bool = False
    script: bool = False
    pe_signed: bool | None = None  # only for PE images
    ipxe_version: str | None = None
    urls: list[str] = field(default_factory=list)
    # scripts only: does imgverify (or the script's imgtrust) guard every path to a boot?
    imgverify: bool | None = None
    unguarded: str | None = None  # scripts only: where an unverified image can run, and how
    not_parsed: str | None = None  # scripts only: why it was not checked (imgverify unknown)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind, "description": self.description, "ipxe": self.ipxe,
            "script": self.script, "pe_signed": self.pe_signed,
            "ipxe_version": self.ipxe_version, "urls": self.urls, "imgverify": self.imgverify,
            "unguarded": self.unguarded, "not_parsed": self.not_parsed,
        }


def _pe_signed(data: bytes) -> bool | None:
    """True/False when ``data`` starts a PE image whose header we can read; else None."""
    if len(data) < 0x40 or data[:2] != b"MZ":
        return None
    pe_off = struct.unpack_from("<I", data, 0x3C)[0]
    if pe_off + 24 > len(data) or data[pe_off : pe_off + 4] != b"PE\0\0":
        return None
    opt = pe_off + 24
    if opt + 2 > len(data):
        return None
    magic = struct.unpack_from("<H", data, opt)[0]
    dirs = opt + (96 if magic == 0x10B else 112 if magic == 0x20B else -1)
    if dirs < opt:
        return None
    number_off = dirs - 4
    if number_off + 4 > len(data):
        return None
    count = struct.unpack_from("<I", data, number_off)[0]
    sec = dirs + 4 * 8  # IMAGE_DIRECTORY_ENTRY_SECURITY is entry 4
    if count <= 4 or sec + 8 > len(data):
        return False
    _addr, size = struct.unpack_from("<II", data, sec)
    return bool(size > 0)


def _urls(data: bytes) -> list[str]:
    out: list[str] = []
    for match in URL_RE.finditer(data[: 1024 * 1024]):
        text = safe_text(match.group(0))
        if text not in out:
            out.append(text)
        if len(out) >= 32:
            break
    return out


def _script(head: bytes) -> LoaderInfo:
    """An iPXE script, and whether verification guards every path to a boot in it, as the
    lint's model of iPXE judges it: an imgverify whose failure is skipped (``|| goto``),
    one a goto jumps over or one after the boot does not count."""
    info = LoaderInfo("ipxe-script", "iPXE script", ipxe=True, script=True, urls=_urls(head))
    if len(head) > MAX_PARSED_SCRIPT:
        info.not_parsed = (f"too large to parse ({len(head)} bytes read; the audit parses "
                           f"scripts of up to {MAX_PARSED_SCRIPT} bytes)")
        return info
    found = unguarded_boot(head.decode("latin-1"))  # byte for byte: iPXE has no encoding
    if found is None:
        info.imgverify = True
    elif found.rule == "too-complex":
        info.not_parsed = "too many paths or images to check within the audit's bounds"
    else:
        info.imgverify, info.unguarded = False, str(found)
    return info


def identify(head: bytes) -> LoaderInfo:
    """Classify a boot file from its first bytes (up to a few MiB)."""
    # exactly what iPXE runs as a script (#!gpxe too; not a BOM, not #!IPXE)
    if runs_as_script(head):
        return _script(head)
    pe = _pe_signed(head)
    version = IPXE_VERSION_RE.search(head)
    ipxe = (
        b"PXE->EB:" in head
        or b"Installation failed - cannot continue" in head
        or (b"iPXE" in head and b"ipxe.org" in head)
    )
    if ipxe:
        return LoaderInfo("ipxe", "iPXE", ipxe=True, pe_signed=pe,
                          ipxe_version=safe_text(version.group(1)) if version else None,
                          urls=_urls(head))
    for marker, kind, desc in (
        (b"PXELINUX", "pxelinux", "PXELINUX (SYSLINUX network loader)"),
        (b"SYSLINUX", "syslinux", "SYSLINUX"),
        (b"shim_lock", "shim", "shim (UEFI Secure Boot first stage)"),
        (b"GRUB", "grub", "GNU GRUB"),
        (b"Windows Boot Manager", "windows", "Windows Boot Manager"),
        (b"bootmgr", "windows", "Windows network boot program"),
    ):
        if marker in head:
            return LoaderInfo(kind, desc, pe_signed=pe, urls=_urls(head))
    if pe is not None:
        return LoaderInfo("pe", "PE/COFF (EFI) image", pe_signed=pe, urls=_urls(head))
    if head[:4] == b"\x7fELF":
        return LoaderInfo("elf", "ELF image", urls=_urls(head))
    sample = head[:4096]
    if sample and all(b in b"\t\r\n" or 0x20 <= b < 0x7F for b in sample):
        return LoaderInfo("text", "text file", script=True, urls=_urls(head))
    return LoaderInfo("unknown", "unrecognised binary", urls=_urls(head))
