"""`ca issue codesign NAME --pkcs11-key URI`: the CA certifies a key generated in a token."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.keys.softhsm import PIN, Token, openssl_verify
from trustboot import secrets
from trustboot.ca.store import CertificateAuthority
from trustboot.cli.main import cli

CA_PASS = b"ca passphrase 123"


@pytest.mark.parametrize("key_type", ["EC:prime256v1", "rsa:2048"])
def test_issue_for_token_key_then_sign_by_uri_alone(token: Token, tmp_path: Path,
                                                    key_type: str) -> None:
    token.run("pkcs11-tool", "--module", str(token.module), "--login", "--pin", PIN,
              "--token-label", token.label, "--keypairgen", "--key-type", key_type,
              "--label", "signer", "--id", "07")
    pki = tmp_path / "pki"
    CertificateAuthority.init(pki, secrets.constant(CA_PASS), key_type="ec-p256")
    env = {"TB_CA": CA_PASS.decode()}
    issued = CliRunner().invoke(cli, ["ca", "issue", "codesign", "hsm-signer", "--pki", str(pki),
                                      "--pkcs11-key", token.uri(), "--passphrase-env", "TB_CA",
                                      "--json"], env=env)
    assert issued.exit_code == 0, issued.output
    assert not (pki / "private" / "hsm-signer.key").exists()  # the key stays in the token
    image = tmp_path / "boot.ipxe"
    image.write_text("#!ipxe\n")
    pin = tmp_path / "pin"
    pin.write_text(PIN)
    # No --cert, no --chain: the certificate and chain come from the pki.
    signed = CliRunner().invoke(cli, ["sign", str(image), "--key", token.uri(), "--pki",
                                      str(pki), "--pin-file", str(pin)])
    assert signed.exit_code == 0, signed.output
    openssl_verify(image, Path(f"{image}.sig"), pki / "ca.crt")
    # Revoked in the pki: refused, although the reference is a token URI.
    CertificateAuthority.open(pki).revoke("hsm-signer", secrets.constant(CA_PASS))
    refused = CliRunner().invoke(cli, ["sign", str(image), "--key", token.uri(), "--pki",
                                       str(pki), "--pin-file", str(pin), "--out",
                                       str(tmp_path / "again")])
    assert refused.exit_code == 4 and "[rule: revoked]" in refused.output, refused.output
    assert not (tmp_path / "again").exists()


def test_pkcs11_key_and_csr_are_exclusive(token: Token, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    CertificateAuthority.init(pki, secrets.constant(CA_PASS), key_type="ec-p256")
    csr = tmp_path / "x.csr"
    csr.write_text("x")
    result = CliRunner().invoke(cli, ["ca", "issue", "codesign", "n", "--pki", str(pki),
                                      "--pkcs11-key", token.uri(), "--csr", str(csr)])
    assert result.exit_code == 3 and "only one of" in result.output
    missing = CliRunner().invoke(cli, ["ca", "issue", "codesign", "n", "--pki", str(pki),
                                       "--pkcs11-key", token.uri("nothing")])
    assert missing.exit_code == 3 and "no public key matching" in missing.output
