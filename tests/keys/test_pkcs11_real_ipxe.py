"""Signatures made by a SoftHSM2 token are accepted by a real iPXE's imgverify (QEMU)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec

from tests.cms.pki import Material, ec_key, rsa_key
from tests.keys.softhsm import PIN, Token
from trustboot.cli.main import cli

pytestmark = [pytest.mark.ipxe, pytest.mark.slow]


def test_real_ipxe_accepts_token_signatures(token: Token, material: Material,
                                            tmp_path: Path) -> None:
    from tests.ipxe_qemu import boot, build_test_ipxe, ipxe_src_or_skip

    ipxe_src_or_skip()
    pin = tmp_path / "pin"
    pin.write_text(PIN)
    pin.chmod(0o600)
    files: dict[str, bytes] = {}
    for kind, key, key_id in (("rsa", rsa_key(), "01"), ("ec", ec_key(ec.SECP256R1()), "02"),
                              ("ec384", ec_key(ec.SECP384R1()), "03")):
        _, cert, chain = material.issue(f"hsm-ipxe-{kind}", key)
        token.import_key(key, f"k-{kind}", key_id)
        image = tmp_path / f"image-{kind}"
        image.write_bytes(f"kernel signed in a token ({kind})\n".encode() * 500)
        result = CliRunner().invoke(cli, [
            "sign", str(image), "--key", token.uri(f"k-{kind}"), "--cert", str(cert),
            "--chain", str(chain), "--pin-file", str(pin), "--hash", "sha256"])
        assert result.exit_code == 0, result.output
        files[image.name] = image.read_bytes()
        files[f"{image.name}.sig"] = (tmp_path / f"{image.name}.sig").read_bytes()
    # The negative control: a changed byte under the RSA signature.
    files["tampered"] = files["image-rsa"][:-1] + b"X"
    files["tampered.sig"] = files["image-rsa.sig"]
    lkrn = build_test_ipxe([material.directory / "root.pem"])
    lines = ["#!ipxe"]
    for name in ("image-rsa", "image-ec", "image-ec384", "tampered"):
        lines.append(f"imgfetch tftp://10.0.2.2/{name} && imgfetch tftp://10.0.2.2/{name}.sig"
                     f" && imgverify {name} {name}.sig && echo VERDICT {name} ok || "
                     f"echo VERDICT {name} fail")
        lines.append("imgfree")
    lines.append("echo TRUSTBOOT-DONE")
    console = boot(lkrn, files, "\n".join(lines) + "\n", timeout=240)
    for name in ("image-rsa", "image-ec", "image-ec384"):
        assert f"VERDICT {name} ok" in console, console[-3000:]
    assert "VERDICT tampered fail" in console, console[-3000:]
