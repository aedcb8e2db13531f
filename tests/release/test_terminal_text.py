"""What `trustboot release` prints for a person quotes the recipe's paths and its signer's
certificate: none of it may drive the terminal (escape sequences, bidi overrides)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.release.conftest import Lab, release

pytestmark = pytest.mark.usefixtures("no_ipxe_build")

HOSTILE = "\x1b]2;pwned\x07\u202e"


def _self_signed(d: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil-signer"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"Evil{HOSTILE}Org")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=400))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (d / "evil.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "evil.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"release tests passphrase")))
    (d / "evil.key").chmod(0o600)


def test_a_signer_subject_with_escapes_is_refused_and_not_echoed(lab: Lab) -> None:
    _self_signed(lab.dir)
    recipe = lab.recipe()
    text = recipe.read_text().replace(
        "signer: {key: release-signer,",
        "signer: {key: 'file:evil.key', cert: evil.crt, chain: evil.crt,")
    recipe.write_text(text)
    code, out, err = release(str(recipe), "--dry-run")
    assert code == 3, (out, err)
    assert "\x1b" not in out + err and "\u202e" not in out + err
    assert "r.yaml:" in err and "subject" in err and "\\x1b" in err


def test_stage_lines_escape_what_the_recipe_names(lab: Lab) -> None:
    fw = lab.dir / f"fw{HOSTILE}"
    (fw / "bin").mkdir(parents=True)
    (fw / "bin" / "ipxe.lkrn").write_bytes(b"firmware " * 100)
    recipe = lab.recipe(ipxe='ipxe: {prebuilt: "fw\\e]2;pwned\\a\\u202e", '
                             "targets: [bin/ipxe.lkrn]}")
    code, out, err = release(str(recipe))
    assert code == 0, (out, err)
    assert "prebuilt firmware from" in err
    assert "\x1b" not in out + err and "\u202e" not in out + err
    assert "\\x1b]2;pwned\\x07\\u202e" in out + err
