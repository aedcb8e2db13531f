"""A real iPXE (built by `trustboot ipxe build --chain`) boots from the nginx origin after
`trustboot publish`, before and after a rollback. Needs TRUSTBOOT_IPXE_SRC and QEMU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.ipxe_qemu import DONE_MARKER, boot, chain_firmware, ipxe_src_or_skip
from tests.publish.conftest import Nginx, Pki, ReleaseFactory
from trustboot.cli.main import cli

pytestmark = [pytest.mark.ipxe, pytest.mark.slow]


def _entry(marker: str) -> bytes:
    return f"#!ipxe\necho {marker}\necho {DONE_MARKER}\n".encode()


def _publish(pki: Pki, args: list[str]) -> dict[str, object]:
    res = CliRunner().invoke(cli, [*args, "--pki", str(pki.dir), "--client-cert", "publisher",
                                   "--client-key-passphrase-file", str(pki.key_pass),
                                   "--signer", "boot-signer", "--json"])
    assert res.exit_code == 0, res.output
    out: dict[str, object] = json.loads(res.output)
    return out


def test_real_ipxe_boots_the_published_release_and_the_rollback(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory, tmp_path: Path) -> None:
    src = ipxe_src_or_skip()
    lkrn = chain_firmware(src, pki.dir, f"https://10.0.2.2:{nginx.port}/boot.ipxe",
                          tmp_path / "fw")
    stops = (DONE_MARKER, "Could not verify", "stopping")

    def boot_marker() -> str:
        return boot(lkrn, {}, "#!ipxe\n", restrict=False, stop_on=stops, timeout=150)

    ra = make_release({"boot.ipxe": _entry("MARKER-RELEASE-A")})
    _publish(pki, ["publish", str(ra), nginx.url, "--release-id", "a"])
    console = boot_marker()
    assert "MARKER-RELEASE-A" in console, console

    rb = make_release({"boot.ipxe": _entry("MARKER-RELEASE-B")})
    _publish(pki, ["publish", str(rb), nginx.url, "--release-id", "b"])
    console = boot_marker()
    assert "MARKER-RELEASE-B" in console, console

    _publish(pki, ["publish", "rollback", nginx.url, "a"])
    console = boot_marker()
    assert "MARKER-RELEASE-A" in console and "MARKER-RELEASE-B" not in console, console

    # a tampered entry on the origin never runs
    (nginx.root / "boot.ipxe").write_bytes(_entry("MARKER-TAMPERED"))
    console = boot_marker()
    assert "MARKER-TAMPERED" not in console, console
    assert "Could not verify" in console or "stopping" in console, console
