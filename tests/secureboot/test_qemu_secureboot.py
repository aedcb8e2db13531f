"""Secure Boot under QEMU/OVMF with trustboot's own keys and a real iPXE build.

Runs only with an iPXE source tree (TRUSTBOOT_IPXE_SRC), QEMU and OVMF. The firmware gets
a variable store with trustboot's PK/KEK/db enrolled and Secure Boot on; the embedded
script prints a marker, so the marker on the console means the firmware started the binary.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tests.ipxe_qemu import DONE_MARKER, boot_efi, doubled, seen
from trustboot.secrets import constant
from trustboot.secureboot import keyset

from .conftest import EMBED_MARKER as MARKER
from .conftest import PASS

pytestmark = [pytest.mark.ipxe, pytest.mark.slow]

# OVMF's boot manager says one of these when the image fails the db check.
REFUSED = ("Access Denied", "Security Violation")
STOPS = (DONE_MARKER, doubled(DONE_MARKER), *REFUSED)


def _sign(pki: Path, data: bytes) -> bytes:
    ks = keyset.load_keyset(pki)
    signer = keyset.open_signer(ks, "db", constant(PASS.encode()), now=dt.datetime.now(dt.UTC))
    return keyset.sign_efi(data, "ipxe.efi", signer)


def _boot(tmp_path: Path, data: bytes, vars_file: Path, *, pxe: bool = False) -> str:
    efi = tmp_path / "boot.efi"
    efi.write_bytes(data)
    return boot_efi(efi, vars_file=vars_file, secure_boot=True, stop_on=STOPS, pxe=pxe,
                    timeout=240)


def test_signed_ipxe_starts_with_secure_boot_on(unsigned: dict[str, bytes], keyset_pki: Path,
                                                vars_file: Path, tmp_path: Path) -> None:
    console = _boot(tmp_path, _sign(keyset_pki, unsigned["ipxe.efi"]), vars_file)
    assert seen(MARKER, console), console


@pytest.mark.parametrize("case", ["unsigned", "other-key", "byte-changed"])
def test_firmware_refuses(case: str, unsigned: dict[str, bytes], keyset_pki: Path,
                          other_pki: Path, vars_file: Path, tmp_path: Path) -> None:
    data = unsigned["ipxe.efi"]
    if case == "other-key":
        data = _sign(other_pki, data)
    elif case == "byte-changed":
        signed = bytearray(_sign(keyset_pki, data))
        signed[0x1000] ^= 0x01  # inside the first section
        data = bytes(signed)
    console = _boot(tmp_path, data, vars_file)
    assert not seen(MARKER, console), console
    assert any(r in console for r in REFUSED), console


def test_snponly_over_pxe(unsigned: dict[str, bytes], keyset_pki: Path, other_pki: Path,
                          vars_file: Path, tmp_path: Path) -> None:
    good = _boot(tmp_path, _sign(keyset_pki, unsigned["snponly.efi"]), vars_file, pxe=True)
    assert seen(MARKER, good), good
    bad = _boot(tmp_path, _sign(other_pki, unsigned["snponly.efi"]), vars_file, pxe=True)
    assert not seen(MARKER, bad), bad
