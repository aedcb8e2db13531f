"""bin-arm64-efi/ipxe.efi from a real tree: cross-built, an AArch64 PE, trusting our root.

Needs TRUSTBOOT_IPXE_SRC and the cross compiler (Debian gcc-aarch64-linux-gnu); skipped
with the reason otherwise. Not booted: that would need an AArch64 firmware under TCG.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.ipxe.testpki import TestPki, cached_pki
from tests.ipxe_qemu import cache_root, ipxe_src_or_skip
from trustboot.cli.main import cli
from trustboot.ipxe.config import load_single_certificate

pytestmark = [pytest.mark.ipxe, pytest.mark.slow]

PE_MACHINE_ARM64 = 0xAA64


def _pe_machine(data: bytes) -> int:
    assert data[:2] == b"MZ", "not a PE image"
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    assert data[pe:pe + 4] == b"PE\0\0"
    machine: int = struct.unpack_from("<H", data, pe + 4)[0]
    return machine


def test_arm64_efi_build_trusts_only_our_root(tmp_path: Path) -> None:
    src = ipxe_src_or_skip()
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("needs the AArch64 cross compiler: apt-get install gcc-aarch64-linux-gnu")
    pki: TestPki = cached_pki(cache_root() / "pki", "main")
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, [
        "ipxe", "build", "--source", str(src), "--trust", str(pki.root),
        "--target", "bin-arm64-efi/ipxe.efi",
        "--chain", "https://boot.example.net/boot.ipxe", "--signer", "boot-signer",
        "--output", str(out), "--cache-dir", str(cache_root() / "ipxe"), "--json",
    ])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert [t["sha256"] for t in manifest["trust"]] == [
        load_single_certificate(pki.root).fingerprint]
    efi = (out / "bin-arm64-efi" / "ipxe.efi").read_bytes()
    assert _pe_machine(efi) == PE_MACHINE_ARM64
