"""A root rotation on a real iPXE under QEMU: firmware built during the rotation (TRUST= both
roots) accepts signatures under the old and the new chain; firmware built after `retire`
(only the new root) refuses the old chain. Needs TRUSTBOOT_IPXE_SRC (skipped otherwise)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.ipxe_qemu import boot, build_test_ipxe, ipxe_src_or_skip
from trustboot.cli.main import cli

pytestmark = [pytest.mark.ipxe, pytest.mark.slow]

PAYLOAD = "#!ipxe\necho PAYLOAD-RAN\necho TRUSTBOOT-DONE\n"


def _ok(*args: str) -> str:
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


def test_firmware_with_both_roots_accepts_either_chain(tmp_path: Path) -> None:
    ipxe_src_or_skip()
    secrets = tmp_path / "pass"
    secrets.write_text("rotation passphrase 1\n")
    secrets.chmod(0o600)
    pki = tmp_path / "pki"
    ca = ("--pki", str(pki), "--passphrase-file", str(secrets))
    _ok("ca", "init", *ca, "--key-type", "rsa-3072", "--name", "rotation-e2e")
    _ok("ca", "issue", "codesign", "signer", *ca, "--key-passphrase-file", str(secrets))
    entry = tmp_path / "entry.ipxe"
    entry.write_text(PAYLOAD)

    def sign(out: str) -> bytes:
        _ok("sign", str(entry), "--pki", str(pki), "--key", "signer", "--passphrase-file",
            str(secrets), "--out", str(tmp_path / out))
        return (tmp_path / out / "entry.ipxe.sig").read_bytes()

    old_sig = sign("old")
    _ok("ca", "rotate", "root", "begin", *ca)
    both = json.loads(_ok("ca", "export", "--pki", str(pki), "--out", str(tmp_path / "both"),
                          "--json"))
    # firmware of the transition: TRUST= old and new root
    fw_both = build_test_ipxe([Path(both["root"]), Path(both["root_next"])])
    _ok("ca", "rotate", "root", "promote", *ca, "--confirm-fleet")
    new_sig = sign("new")
    assert new_sig != old_sig
    _ok("ca", "rotate", "root", "retire", "--pki", str(pki))
    final = json.loads(_ok("ca", "export", "--pki", str(pki), "--out", str(tmp_path / "new"),
                           "--json"))
    assert final["trust_sha256"] == [both["trust_sha256"][1]]
    fw_new = build_test_ipxe([Path(final["root"])])

    def run(lkrn: Path, sig: bytes) -> str:
        script = (
            "#!ipxe\n"
            "imgtrust --permanent\n"
            "imgfetch --name entry tftp://10.0.2.2/entry.ipxe\n"
            "imgverify --signer signer entry tftp://10.0.2.2/entry.ipxe.sig "
            "&& echo VERDICT ok || echo VERDICT fail\n"
            "chain entry || echo CHAIN-REFUSED\n"
            "echo TRUSTBOOT-DONE\n"
        )
        return boot(lkrn, {"entry.ipxe": PAYLOAD.encode(), "entry.ipxe.sig": sig}, script)

    for label, lkrn, sig, accepted in (("both roots, old chain", fw_both, old_sig, True),
                                       ("both roots, new chain", fw_both, new_sig, True),
                                       ("new root only, new chain", fw_new, new_sig, True),
                                       ("new root only, old chain", fw_new, old_sig, False)):
        console = run(lkrn, sig)
        if accepted:
            assert "VERDICT ok" in console and "PAYLOAD-RAN" in console, (label,
                                                                          console[-2000:])
        else:
            assert "VERDICT fail" in console and "CHAIN-REFUSED" in console, (label,
                                                                              console[-2000:])
            assert "PAYLOAD-RAN" not in console, label
