"""End to end on a real iPXE: `trustboot ca` → `trustboot sign` → firmware trusting the CA
root → QEMU. A signed entry script runs under `imgtrust --permanent`; the same script with
one byte changed, signed by another CA, or checked against another --signer is refused and
never runs. Needs TRUSTBOOT_IPXE_SRC (skipped with the reason otherwise)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.ipxe_qemu import boot, build_test_ipxe, ipxe_src_or_skip
from trustboot.cli.main import cli

pytestmark = [pytest.mark.ipxe, pytest.mark.slow]

PAYLOAD = "#!ipxe\necho PAYLOAD-RAN\necho TRUSTBOOT-DONE\n"


def _ok(*args: str) -> None:
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert r.exit_code == 0, r.output


def _make_ca(root: Path, secrets: Path, signer: str) -> Path:
    pki = root / "pki"
    _ok("ca", "init", "--pki", str(pki), "--key-type", "rsa-3072", "--name", root.name,
        "--passphrase-file", str(secrets))
    _ok("ca", "issue", "codesign", signer, "--pki", str(pki), "--passphrase-file",
        str(secrets), "--key-passphrase-file", str(secrets))
    return pki


def _sign(pki: Path, secrets: Path, signer: str, path: Path) -> bytes:
    _ok("sign", str(path), "--pki", str(pki), "--key", signer, "--passphrase-file",
        str(secrets))
    return path.with_name(path.name + ".sig").read_bytes()


def test_ca_signed_chain_boots_and_tampering_is_refused(tmp_path: Path) -> None:
    ipxe_src_or_skip()
    secrets = tmp_path / "pass"
    secrets.write_text("e2e passphrase 1\n")
    secrets.chmod(0o600)
    (tmp_path / "good").mkdir()
    (tmp_path / "rogue").mkdir()
    pki = _make_ca(tmp_path / "good", secrets, "release-signer")
    rogue = _make_ca(tmp_path / "rogue", secrets, "release-signer")

    entry = tmp_path / "entry.ipxe"
    entry.write_text(PAYLOAD)
    good_sig = _sign(pki, secrets, "release-signer", entry)
    rogue_sig = _sign(rogue, secrets, "release-signer", entry)
    tampered = PAYLOAD.replace("PAYLOAD-RAN", "PAYLOAD-RAM").encode()

    lkrn = build_test_ipxe([pki / "ca.crt"], certs=[pki / "issuing-ca.crt"])

    def run(image: bytes, sig: bytes, signer: str = "release-signer") -> str:
        script = (
            "#!ipxe\n"
            "imgtrust --permanent\n"
            "imgfetch --name entry tftp://10.0.2.2/entry.ipxe\n"
            f"imgverify --signer {signer} entry tftp://10.0.2.2/entry.ipxe.sig "
            "&& echo VERDICT ok || echo VERDICT fail\n"
            # Under imgtrust --permanent an unverified image must not execute.
            "chain entry || echo CHAIN-REFUSED\n"
            "echo TRUSTBOOT-DONE\n"
        )
        return boot(lkrn, {"entry.ipxe": image, "entry.ipxe.sig": sig}, script)

    console = run(PAYLOAD.encode(), good_sig)
    assert "VERDICT ok" in console and "PAYLOAD-RAN" in console, console[-2000:]

    for label, image, sig, signer in (
        ("one byte changed", tampered, good_sig, "release-signer"),
        ("signed by another CA", PAYLOAD.encode(), rogue_sig, "release-signer"),
        ("wrong --signer", PAYLOAD.encode(), good_sig, "someone-else"),
    ):
        console = run(image, sig, signer)
        assert "VERDICT fail" in console, (label, console[-2000:])
        assert "PAYLOAD-RAN" not in console and "PAYLOAD-RAM" not in console, label
        assert "CHAIN-REFUSED" in console, (label, console[-2000:])
