"""`ca issue codesign NAME --pkcs11-key URI`: the CA certifies a key generated in a token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

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
    env = {"TB_CA": CA_PASS.decode(), "TB_PIN": PIN}
    issued = CliRunner().invoke(cli, ["ca", "issue", "codesign", "hsm-signer", "--pki", str(pki),
                                      "--pkcs11-key", token.uri(), "--passphrase-env", "TB_CA",
                                      "--pin-env", "TB_PIN", "--json"], env=env)
    assert issued.exit_code == 0, issued.output
    assert not (pki / "private" / "hsm-signer.key").exists()  # the key stays in the token
    image = tmp_path / "boot.ipxe"
    image.write_text("#!ipxe\n")
    pin = tmp_path / "pin"
    pin.write_text(PIN)
    pin.chmod(0o600)
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
                                       "--pkcs11-key", token.uri("nothing"), "--pin-env",
                                       "TB_PIN"], env={"TB_PIN": PIN})
    assert missing.exit_code == 3 and "no public key matching" in missing.output


def _keypair(token: Token, label: str, key_id: str, key_type: str = "rsa:2048") -> None:
    token.run("pkcs11-tool", "--module", str(token.module), "--login", "--pin", PIN,
              "--token-label", token.label, "--keypairgen", "--key-type", key_type,
              "--label", label, "--id", key_id)


def _issue(pki: Path, uri: str, name: str = "n") -> Result:
    return CliRunner().invoke(cli, ["ca", "issue", "codesign", name, "--pki", str(pki),
                                    "--pkcs11-key", uri, "--passphrase-env", "TB_CA",
                                    "--pin-env", "TB_PIN"],
                              env={"TB_CA": CA_PASS.decode(), "TB_PIN": PIN})


def test_public_key_alone_is_not_certified(token: Token, tmp_path: Path) -> None:
    """Proof of possession: a token holding someone's public key object but not the
    private key cannot get it certified."""
    pki = tmp_path / "pki"
    CertificateAuthority.init(pki, secrets.constant(CA_PASS), key_type="ec-p256")
    _keypair(token, "theirs", "09")
    token.run("pkcs11-tool", "--module", str(token.module), "--login", "--pin", PIN,
              "--token-label", token.label, "--delete-object", "--type", "privkey",
              "--label", "theirs")
    refused = _issue(pki, token.uri("theirs"))
    assert refused.exit_code == 3, refused.output
    assert "no private key" in refused.output and "proof of possession" in refused.output
    assert "hint:" in refused.output and "Traceback" not in refused.output
    ca = CertificateAuthority.open(pki)
    assert not [e for e in ca.entries if e.name == "n"]  # nothing issued
    assert not (pki / "issued" / "n.crt").exists()


@pytest.mark.parametrize(("theirs", "refusal"), [
    ("rsa:2048", "does not match its public key"),
    ("EC:prime256v1", "is a RSA key but its public key object is not"),
])
def test_private_key_of_another_pair_is_not_certified(token: Token, tmp_path: Path,
                                                      theirs: str, refusal: str) -> None:
    """The URI's public and private key objects must be one pair: the challenge signed by
    the private key has to verify with the public key that would be certified."""
    pki = tmp_path / "pki"
    CertificateAuthority.init(pki, secrets.constant(CA_PASS), key_type="ec-p256")
    _keypair(token, "mine", "0a")
    _keypair(token, "theirs", "0b", theirs)
    # Keep their public key, and put my private key under their label and id.
    pkcs11 = ("pkcs11-tool", "--module", str(token.module), "--login", "--pin", PIN,
              "--token-label", token.label)
    token.run(*pkcs11, "--delete-object", "--type", "privkey", "--label", "theirs")
    token.run(*pkcs11, "--set-id", "0b", "--id", "0a", "--type", "privkey")
    uri = token.uri("theirs", id="%0b")
    with_mine = _issue(pki, token.uri("mine", id="%0a"))  # the public half of mine is gone
    assert with_mine.exit_code == 3 and "no private key" in with_mine.output, with_mine.output
    refused = _issue(pki, uri.replace(";object=theirs", ""), "m")
    assert refused.exit_code == 3, refused.output
    assert refusal in refused.output and "hint:" in refused.output, refused.output
    assert not (pki / "issued" / "m.crt").exists()


def test_wrong_pin_refuses_before_anything_is_issued(token: Token, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    CertificateAuthority.init(pki, secrets.constant(CA_PASS), key_type="ec-p256")
    _keypair(token, "signer", "07")
    result = CliRunner().invoke(cli, ["ca", "issue", "codesign", "n", "--pki", str(pki),
                                      "--pkcs11-key", token.uri(), "--passphrase-env", "TB_CA",
                                      "--pin-env", "TB_PIN"],
                                env={"TB_CA": CA_PASS.decode(), "TB_PIN": "000000"})
    assert result.exit_code == 3 and "wrong PIN" in result.output, result.output
    assert "000000" not in result.output
    assert not (pki / "issued" / "n.crt").exists()


def _public_object(token: Token, label: str, attrs: dict[Any, object]) -> None:
    """A CKO_PUBLIC_KEY object made in a R/W public session, without logging in: what
    anyone who can open the token may do."""
    import pkcs11
    from pkcs11 import Attribute

    lib = pkcs11.lib(str(token.module))
    try:
        with lib.get_token(token_label=token.label).open(rw=True) as session:
            session.create_object({Attribute.CLASS: pkcs11.ObjectClass.PUBLIC_KEY,
                                   Attribute.TOKEN: True, Attribute.LABEL: label, **attrs})
    finally:
        lib.finalize()


def test_a_malformed_public_key_object_is_a_config_error(token: Token, tmp_path: Path) -> None:
    """A public key object whose attributes cryptography refuses (n = 0, a point off the
    curve, truncated EC parameters) is named as invalid (exit 3), wherever it is read:
    finding its certificate in the pki for `sign`, and certifying it."""
    from asn1crypto import core
    from pkcs11 import Attribute, KeyType
    from pkcs11.util.ec import encode_named_curve_parameters

    p256 = encode_named_curve_parameters("secp256r1")
    off_curve = core.OctetString(b"\x04" + b"\x01" * 64).dump()
    _public_object(token, "badrsa", {Attribute.KEY_TYPE: KeyType.RSA,
                                     Attribute.MODULUS: b"\x00",
                                     Attribute.PUBLIC_EXPONENT: b"\x02"})
    _public_object(token, "badpoint", {Attribute.KEY_TYPE: KeyType.EC,
                                       Attribute.EC_PARAMS: p256, Attribute.EC_POINT: off_curve})
    _public_object(token, "badparams", {Attribute.KEY_TYPE: KeyType.EC,
                                        Attribute.EC_PARAMS: p256[:-2],
                                        Attribute.EC_POINT: off_curve})
    pki, image, pin = _ca_image_pin(tmp_path)
    for label, kind in (("badrsa", "RSA"), ("badpoint", "EC"), ("badparams", "EC")):
        expected = f"the public key object of {token.uri(label)} is not a valid {kind} key"
        signed = CliRunner().invoke(cli, ["sign", str(image), "--key", token.uri(label),
                                          "--pki", str(pki), "--pin-file", str(pin)])
        assert signed.exit_code == 3, signed.output
        assert expected in signed.output and "hint:" in signed.output, signed.output
        issued = _issue(pki, token.uri(label), label)
        assert issued.exit_code == 3, issued.output
        assert expected in issued.output, issued.output
    assert not list(tmp_path.glob("*.sig")) and not list((pki / "issued").glob("bad*"))


def _ca_image_pin(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA home, an image to sign and the token's PIN file (0600)."""
    pki = tmp_path / "pki"
    CertificateAuthority.init(pki, secrets.constant(CA_PASS), key_type="ec-p256")
    image = tmp_path / "boot.ipxe"
    image.write_text("#!ipxe\n")
    pin = tmp_path / "pin"
    pin.write_text(PIN)
    pin.chmod(0o600)
    return pki, image, pin


@pytest.mark.parametrize(("key_type", "missing", "error"), [
    ("rsa:2048", "MODULUS", "AttributeTypeInvalid"),
    ("rsa:2048", "PUBLIC_EXPONENT", "AttributeSensitive"),
    ("EC:prime256v1", "EC_POINT", "AttributeTypeInvalid"),
    ("EC:prime256v1", "EC_PARAMS", "AttributeTypeInvalid"),
    ("EC:prime256v1", "KEY_TYPE", "AttributeTypeInvalid"),
    ("EC:prime256v1", "KEY_TYPE", "vendor"),  # CKK_VENDOR_DEFINED: python-pkcs11 has no name
])
def test_a_public_key_object_without_an_attribute_is_a_config_error(
        token: Token, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_type: str,
        missing: str, error: str) -> None:
    """Tokens may not give every attribute of a public key object (some smart cards answer
    CKR_ATTRIBUTE_TYPE_INVALID for CKA_EC_POINT or CKA_PUBLIC_EXPONENT); SoftHSM2 always
    does, so the token's answer is simulated at python-pkcs11's boundary. The run names
    the object and the attribute (exit 3), for `sign` and for certifying it alike."""
    import pkcs11
    import pkcs11._pkcs11

    lowlevel: Any = pkcs11._pkcs11  # its stub does not declare the classes patched here

    _keypair(token, "partial", "09", key_type)
    pki, image, pin = _ca_image_pin(tmp_path)
    real_getitem = lowlevel.Object.__getitem__  # what the generated key classes use
    absent = pkcs11.Attribute[missing]

    def answer(obj: Any, attribute: Any) -> Any:
        if attribute == absent and error == "vendor":
            return pkcs11.KeyType(0x8000_0001)  # cannot name: ValueError, as for a real one
        if attribute == absent:
            raise getattr(pkcs11.exceptions, error)()
        return real_getitem(obj, attribute)
    monkeypatch.setattr(lowlevel.PublicKey, "__getitem__", answer)
    expected = (f"the key {token.uri('partial')} is of a key type that is not RSA or EC"
                if error == "vendor" else
                f"the public key object of {token.uri('partial')} has no readable CKA_{missing}")
    signed = CliRunner().invoke(cli, ["sign", str(image), "--key", token.uri("partial"),
                                      "--pki", str(pki), "--pin-file", str(pin)])
    assert signed.exit_code == 3, signed.output
    assert expected in signed.output and "hint:" in signed.output, signed.output
    issued = _issue(pki, token.uri("partial"), "partial")
    assert issued.exit_code == 3, issued.output
    assert expected in issued.output, issued.output
    assert not list(tmp_path.glob("*.sig")) and not list((pki / "issued").glob("partial*"))
