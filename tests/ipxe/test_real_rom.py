"""NIC option ROM builds (`--target bin/VVVVDDDD.rom`) under QEMU as the e1000's ROM.

With trustboot's ROM as the NIC's only boot code, the machine network-boots the verified
chain and nothing else: a broken chain ends in the failure action, and SeaBIOS never
starts another network loader (there is none). Needs TRUSTBOOT_IPXE_SRC and QEMU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ipxe.test_real_ipxe import ENTRY, _flip, _serve
from tests.ipxe.testpki import TestPki
from tests.ipxe_qemu import DONE_MARKER, boot_rom, chain_firmware

pytestmark = [pytest.mark.ipxe, pytest.mark.slow]

ROM = "bin/8086100e.rom"  # QEMU's e1000


def test_e1000_rom_boots_only_the_verified_chain(real_src: Path, real_pki: TestPki,
                                                 tmp_path: Path) -> None:
    origin = _serve(real_pki, tmp_path)
    try:
        rom = chain_firmware(real_src, real_pki.dir,
                             f"https://10.0.2.2:{origin.server_address[1]}/boot.ipxe",
                             tmp_path / "fw", target=ROM)
        assert rom.read_bytes()[:2] == b"\x55\xaa"  # a PCI option ROM
        origin.files = {"/boot.ipxe": ENTRY, "/boot.ipxe.sig": real_pki.sign_bytes(ENTRY, "rom")}
        good, _ = boot_rom(rom, restrict=False, stop_on=(DONE_MARKER, "Could not verify"))
        assert "MARKER-SIGNED-ENTRY-RAN" in good, good
        origin.files = {"/boot.ipxe": _flip(ENTRY, 12),
                        "/boot.ipxe.sig": origin.files["/boot.ipxe.sig"]}
        bad, seabios = boot_rom(rom, restrict=False, timeout=90,
                                stop_on=("No bootable device", "Booting from Hard Disk"))
        assert "Could not verify" in bad, bad
        assert "MARKER-SIGNED-ENTRY-RAN" not in bad
        # The ROM is the NIC's only boot code: SeaBIOS tried exactly that one device, and
        # no second iPXE (e.g. QEMU's stock e1000 ROM) ever printed its banner.
        assert bad.count("iPXE initialising devices") <= 1, bad
        assert "Booting from Hard Disk" not in seabios
    finally:
        origin.shutdown()
        origin.server_close()
