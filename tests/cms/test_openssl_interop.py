"""openssl cms -verify accepts what trustboot signs; trustboot verify judges openssl's output."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.cms.pki import PASSPHRASE, Material, ec_key, make_material, rsa_key
from tests.conftest import require_tool
from trustboot.cli.main import cli


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(Path(tmp_path_factory.mktemp("pki")))


def _sign(material: Material, key_path: Path, cert: Path, chain: Path, image: Path,
          hash_name: str) -> Path:
    result = CliRunner().invoke(cli, [
        "sign", str(image), "--key", f"file:{key_path}", "--cert", str(cert),
        "--chain", str(chain), "--passphrase-env", "TB_TEST_PASS", "--hash", hash_name,
    ], env={"TB_TEST_PASS": PASSPHRASE.decode()})
    assert result.exit_code == 0, result.output
    return image.with_name(image.name + ".sig")


def _openssl_verify(material: Material, image: Path, sig: Path) -> subprocess.CompletedProcess[
        str]:
    return subprocess.run(
        ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(sig),
         "-content", str(image), "-CAfile", str(material.directory / "root.pem"),
         "-purpose", "any", "-out", "/dev/null"],
        capture_output=True, text=True, check=False)


@pytest.mark.parametrize("kind", ["rsa", "ecdsa-p256", "ecdsa-p384"])
@pytest.mark.parametrize("hash_name", ["sha256", "sha384", "sha512"])
@pytest.mark.parametrize("direct", [False, True], ids=["intermediate", "root-issued"])
def test_openssl_accepts_trustboot_signatures(
    material: Material, tmp_path: Path, kind: str, hash_name: str, direct: bool
) -> None:
    require_tool("openssl", "openssl")
    key = rsa_key() if kind == "rsa" else ec_key(
        ec.SECP256R1() if kind == "ecdsa-p256" else ec.SECP384R1())
    name = f"{kind}-{hash_name}-{'d' if direct else 'i'}"
    key_path, cert, chain = material.issue(name, key, direct=direct)
    image = tmp_path / "kernel"
    image.write_bytes(b"\x7fELF" + bytes(range(256)) * 513)
    sig = _sign(material, key_path, cert, chain, image, hash_name)
    result = _openssl_verify(material, image, sig)
    assert result.returncode == 0, result.stderr
    assert "Verification successful" in result.stderr
    # And openssl sees plain DER with no signed attributes.
    dump = subprocess.run(["openssl", "cms", "-cmsout", "-print", "-inform", "DER", "-in",
                           str(sig)], capture_output=True, text=True, check=True).stdout
    import re

    assert re.search(r"signedAttrs:\s*<ABSENT>", dump), dump


def _openssl_sign(material: Material, tmp_path: Path, extra: list[str]) -> tuple[Path, Path]:
    key = rsa_key()
    _key_path, cert, chain = material.issue(f"ossl-{tmp_path.name}", key)
    plain_key = tmp_path / "plain.key"
    plain_key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    image = tmp_path / "initrd"
    image.write_bytes(b"initrd contents " * 4096)
    sig = tmp_path / "initrd.sig"
    subprocess.run(["openssl", "cms", "-sign", "-binary", "-in", str(image), "-signer",
                    str(cert), "-inkey", str(plain_key), "-certfile", str(chain),
                    "-outform", "DER", "-out", str(sig), "-md", "sha256", *extra],
                   check=True, capture_output=True)
    return image, sig


@pytest.mark.parametrize(("extra", "exit_code", "rule"), [
    (["-noattr"], 0, None),
    ([], 4, "signed-attributes"),
    (["-noattr", "-keyid"], 4, "signer-identifier"),
    (["-noattr", "-stream"], 4, "signature-format"),
])
def test_trustboot_verify_judges_openssl_signatures(
    material: Material, tmp_path: Path, extra: list[str], exit_code: int, rule: str | None
) -> None:
    require_tool("openssl", "openssl")
    image, sig = _openssl_sign(material, tmp_path, extra)
    result = CliRunner().invoke(cli, ["verify", str(image), "--sig", str(sig), "--trust",
                                      str(material.directory / "root.pem")])
    assert result.exit_code == exit_code, result.output
    if rule:
        assert f"[rule: {rule}]" in result.output
        assert "hint:" in result.output


def test_refused_signed_attributes_are_not_also_called_accepted(
    material: Material, tmp_path: Path
) -> None:
    # openssl's default (signed attributes) fails in iPXE; the warning that iPXE "accepts"
    # signed attributes whose signature is over the image digest must not contradict that.
    require_tool("openssl", "openssl")
    image, sig = _openssl_sign(material, tmp_path, [])
    result = CliRunner().invoke(cli, ["verify", str(image), "--sig", str(sig), "--trust",
                                      str(material.directory / "root.pem"), "--json"])
    assert result.exit_code == 4, result.output
    import json

    report = json.loads(result.stdout)
    assert report["failure"]["rule"] == "signed-attributes"
    assert [w["rule"] for w in report["warnings"]] == []
    assert "accepts it" not in CliRunner().invoke(cli, [
        "verify", str(image), "--sig", str(sig), "--trust",
        str(material.directory / "root.pem")]).output


def test_sign_with_an_incomplete_chain_names_the_chain_option(
    material: Material, tmp_path: Path
) -> None:
    # The intermediate is missing from --chain: the hint must say how to fix it with
    # trustboot itself, not only with openssl's flag.
    key_path, cert, _chain = material.issue(f"short-{tmp_path.name}", rsa_key())
    image = tmp_path / "kernel"
    image.write_bytes(b"kernel")
    result = CliRunner().invoke(cli, [
        "sign", str(image), "--key", f"file:{key_path}", "--cert", str(cert),
        "--chain", str(material.directory / "root.pem"), "--passphrase-env", "TB_TEST_PASS",
    ], env={"TB_TEST_PASS": PASSPHRASE.decode()})
    assert result.exit_code == 4, result.output
    assert "[rule: chain-incomplete]" in result.output
    assert "--signing-chain" in result.output.split("hint:", 1)[1]
    assert not image.with_name("kernel.sig").exists()
