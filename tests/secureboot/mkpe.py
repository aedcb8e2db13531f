"""A minimal PE32+ EFI application, made for the tests (no compiler, nothing shipped).

One .text section whose code is ``xor eax, eax; ret`` (returns EFI_SUCCESS), laid out as
an EFI toolchain would: FileAlignment 0x200, SectionAlignment 0x1000, 16 data directories.
"""

from __future__ import annotations

import struct


def make_efi_app(code: bytes = b"\x31\xc0\xc3", *, pad_to: int = 0x200) -> bytes:
    file_align, sect_align = 0x200, 0x1000
    lfanew = 0x40
    opt_size = 240
    headers = lfanew + 4 + 20 + opt_size + 40
    size_of_headers = -(-headers // file_align) * file_align
    raw = code + b"\xcc" * (-len(code) % pad_to)
    dos = b"MZ" + b"\0" * 0x3A + struct.pack("<I", lfanew)
    coff = struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, opt_size, 0x0022)
    opt = struct.pack(
        "<HBBIIIIIQIIHHHHHHIIIIHHQQQQII",
        0x20B, 14, 0, len(raw), 0, 0, sect_align, sect_align, 0,
        sect_align, file_align, 0, 0, 0, 0, 0, 0, 0,
        sect_align + -(-len(raw) // sect_align) * sect_align, size_of_headers, 0,
        10, 0,  # subsystem EFI application
        0x100000, 0x1000, 0x100000, 0x1000, 0, 16)
    opt += b"\0" * (16 * 8)
    assert len(opt) == opt_size, len(opt)
    section = struct.pack("<8sIIIIIIHHI", b".text", len(code), sect_align, len(raw),
                          size_of_headers, 0, 0, 0, 0, 0x60000020)
    head = dos + b"PE\0\0" + coff + opt + section
    return head + b"\0" * (size_of_headers - len(head)) + raw


def make_marker_app(marker: str) -> bytes:
    """An EFI application that prints ``marker`` on the firmware console (ConOut) and
    returns EFI_SUCCESS: the marker on the console means the firmware started it.

    x86-64 code, position independent (the message is addressed RIP-relative), so the
    image needs no relocations::

        sub  rsp, 0x28            ; shadow space, stack 16-byte aligned for the call
        mov  rcx, [rdx + 0x40]    ; SystemTable->ConOut
        lea  rdx, [rip + msg]
        call [rcx + 8]            ; ConOut->OutputString(ConOut, msg)
        xor  eax, eax
        add  rsp, 0x28
        ret
    """
    head = b"\x48\x83\xec\x28" b"\x48\x8b\x4a\x40" b"\x48\x8d\x15"
    tail = b"\xff\x51\x08" b"\x31\xc0" b"\x48\x83\xc4\x28" b"\xc3"
    # The displacement counts from the end of the lea (head + its 4 bytes) to msg.
    disp = struct.pack("<i", len(tail))
    msg = f"\r\n{marker}\r\n".encode("utf-16-le") + b"\0\0"
    return make_efi_app(head + disp + tail + msg)
