"""`secureboot init --pkcs11`: PK, KEK and db generated in a real token (SoftHSM2) and
signing there: Authenticode that sbverify accepts, and .auth updates signed by the level
above."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.keys.softhsm import PIN, Token, make_token, replace_key
from trustboot.cli.main import cli
from trustboot.secureboot import efi, keyset

from .mkpe import make_efi_app
from .test_keyset import _verify_auth

ENV = {"TB_PIN": PIN}


def _cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env or ENV)


@dataclass(frozen=True)
class TokenKeySet:
    token: Token
    pki: Path
    init: dict[str, object]


@pytest.fixture(scope="module")
def token_keyset(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenKeySet]:
    base = tmp_path_factory.mktemp("sbtoken")
    token = make_token(base / "hsm", label="sb-token")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in token.env.items():
            mp.setenv(key, value)
        mp.setenv("TRUSTBOOT_PKCS11_MODULE", str(token.module))
        pki = base / "pki"
        pki.mkdir(mode=0o755)
        r = _cli("secureboot", "init", "--pki", str(pki), "--name", "Token Boot",
                 "--pkcs11", f"pkcs11:token={token.label}", "--passphrase-env", "TB_PIN",
                 "--json")
        assert r.exit_code == 0, r.output
        yield TokenKeySet(token, pki, json.loads(r.output))


def test_keys_generated_in_the_token(token_keyset: TokenKeySet) -> None:
    import pkcs11

    directory = token_keyset.pki / keyset.DIRNAME
    assert list((directory / "private").iterdir()) == []  # no key files at all
    meta_text = (directory / keyset.META).read_text()
    assert PIN not in meta_text
    meta = json.loads(meta_text)
    assert set(meta["pkcs11"]) == {"module", *keyset.ROLES}
    assert token_keyset.init["pkcs11"] == {r: meta["pkcs11"][r] for r in keyset.ROLES}
    lib = pkcs11.lib(str(token_keyset.token.module))
    try:
        with lib.get_token(token_label=token_keyset.token.label).open(user_pin=PIN) as s:
            keys = list(s.get_objects({pkcs11.Attribute.CLASS:
                                       pkcs11.ObjectClass.PRIVATE_KEY}))
            labels = {k[pkcs11.Attribute.LABEL] for k in keys}
            assert labels == {f"trustboot-sb-{r}" for r in keyset.ROLES}
            for k in keys:
                assert k[pkcs11.Attribute.SENSITIVE] and not k[pkcs11.Attribute.EXTRACTABLE]
                assert len(k[pkcs11.Attribute.MODULUS]) * 8 == 2048
    finally:
        lib.finalize()
    # The certificates were self-signed in the token, each by its own key.
    ks = keyset.load_keyset(token_keyset.pki)
    for cert in ks.certificates.values():
        cert.verify_directly_issued_by(cert)


def test_sign_in_token_passes_sbverify(token_keyset: TokenKeySet, tmp_path: Path) -> None:
    app = tmp_path / "app.efi"
    app.write_bytes(make_efi_app())
    signed = tmp_path / "app.signed.efi"
    r = _cli("secureboot", "sign", "--pki", str(token_keyset.pki), str(app), "--out",
             str(signed), "--passphrase-env", "TB_PIN")
    assert r.exit_code == 0, r.output
    r = _cli("secureboot", "verify", "--pki", str(token_keyset.pki), str(signed))
    assert r.exit_code == 0, r.output
    if shutil.which("sbverify") is None:
        pytest.skip("needs sbverify for the independent check: apt-get install sbsigntool")
    db = token_keyset.pki / keyset.DIRNAME / "db.crt"
    ok = subprocess.run(["sbverify", "--cert", str(db), str(signed)], capture_output=True,
                        text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    kek = token_keyset.pki / keyset.DIRNAME / "KEK.crt"  # signed by db, not by the KEK
    bad = subprocess.run(["sbverify", "--cert", str(kek), str(signed)], capture_output=True,
                         text=True, check=False)
    assert bad.returncode != 0, bad.stdout + bad.stderr


def test_export_auth_signed_in_token(token_keyset: TokenKeySet, tmp_path: Path) -> None:
    out = tmp_path / "sb"
    r = _cli("secureboot", "export", "--pki", str(token_keyset.pki), "--out", str(out),
             "--passphrase-env", "TB_PIN")
    assert r.exit_code == 0, r.output
    for role in keyset.ROLES:
        _verify_auth(out, role, keyset.UPDATE_SIGNER[role])
    _verify_auth(out, "PK", "PK", file="noPK.auth", data=b"")
    assert efi.parse_signature_lists((out / "db.esl").read_bytes())[0].data == \
        (out / "db.cer").read_bytes()


def test_wrong_pin_refused(token_keyset: TokenKeySet, tmp_path: Path) -> None:
    app = tmp_path / "app.efi"
    app.write_bytes(make_efi_app())
    r = _cli("secureboot", "sign", "--pki", str(token_keyset.pki), str(app),
             "--passphrase-env", "TB_BAD", env={"TB_BAD": "000000"})
    assert r.exit_code == 3 and "wrong PIN" in r.output, r.output
    assert not (tmp_path / "app.signed.efi").exists()


def test_second_key_set_in_the_same_token_refused(token_keyset: TokenKeySet,
                                                  tmp_path: Path) -> None:
    """The labels are taken: refused, nothing written, and the first set's keys are left
    alone (it still signs)."""
    pki = tmp_path / "pki2"
    pki.mkdir(mode=0o755)
    r = _cli("secureboot", "init", "--pki", str(pki), "--name", "Second",
             "--pkcs11", f"pkcs11:token={token_keyset.token.label}",
             "--passphrase-env", "TB_PIN")
    assert r.exit_code == 3 and "already holds objects" in r.output, r.output
    assert not (pki / keyset.DIRNAME).exists()
    assert not list(pki.glob(".secureboot.*"))
    app = tmp_path / "app.efi"
    app.write_bytes(make_efi_app())
    r = _cli("secureboot", "sign", "--pki", str(token_keyset.pki), str(app),
             "--passphrase-env", "TB_PIN")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(("uri", "why"), [
    ("pkcs11:token=sb-token;object=PK", "name the token only"),
    ("pkcs11:token=sb-token?pin-value=1234", "carries the PIN itself")])
def test_init_uri_must_name_the_token_only(uri: str, why: str, tmp_path: Path) -> None:
    r = _cli("secureboot", "init", "--pki", str(tmp_path), "--name", "X", "--pkcs11", uri,
             "--pkcs11-module", "/nonexistent.so", "--passphrase-env", "TB_PIN")
    assert r.exit_code == 3 and why in r.output, r.output
    assert "1234" not in r.output
    assert not (tmp_path / keyset.DIRNAME).exists()


def test_failed_init_removes_the_keys_it_generated(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The token already holds a 'trustboot-sb-KEK' (someone else's): the PK generated
    before the refusal is removed again, and the other object is left alone."""
    import pkcs11

    token = make_token(tmp_path / "hsm", label="sb-half")
    for key, value in token.env.items():
        monkeypatch.setenv(key, value)
    lib = pkcs11.lib(str(token.module))
    try:
        with lib.get_token(token_label=token.label).open(rw=True, user_pin=PIN) as s:
            s.create_object({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.DATA,
                             pkcs11.Attribute.TOKEN: True,
                             pkcs11.Attribute.LABEL: "trustboot-sb-KEK",
                             pkcs11.Attribute.VALUE: b"not ours"})
    finally:
        lib.finalize()
    pki = tmp_path / "pki"
    pki.mkdir(mode=0o755)
    r = _cli("secureboot", "init", "--pki", str(pki), "--name", "Half",
             "--pkcs11", f"pkcs11:token={token.label}", "--pkcs11-module", str(token.module),
             "--passphrase-env", "TB_PIN")
    assert r.exit_code == 3 and "trustboot-sb-KEK" in r.output, r.output
    assert not (pki / keyset.DIRNAME).exists()
    lib = pkcs11.lib(str(token.module))
    try:
        with lib.get_token(token_label=token.label).open(user_pin=PIN) as s:
            labels = sorted(o[pkcs11.Attribute.LABEL] for o in list(s.get_objects({})))
    finally:
        lib.finalize()
    assert labels == ["trustboot-sb-KEK"], labels


def test_a_replaced_private_key_in_the_token_signs_nothing(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """A private key put under the db key's label and id (its public key object left as
    it was) passes every check made when the key is loaded; its signature is checked
    before the signed image is written, and refused (exit 4) as the token's key, with
    what to do about the token (not as a damaged key file)."""
    token = make_token(tmp_path / "hsm", label="sb-swap")
    for key, value in token.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TRUSTBOOT_PKCS11_MODULE", str(token.module))
    pki = tmp_path / "pki"
    pki.mkdir(mode=0o755)
    r = _cli("secureboot", "init", "--pki", str(pki), "--name", "Swap Boot", "--pkcs11",
             f"pkcs11:token={token.label}", "--passphrase-env", "TB_PIN", "--json")
    assert r.exit_code == 0, r.output
    replace_key(token, json.loads(r.output)["pkcs11"]["db"], "rsa", keep_public=True)
    app = tmp_path / "app.efi"
    app.write_bytes(make_efi_app())
    out = tmp_path / "app.signed.efi"
    r = _cli("secureboot", "sign", "--pki", str(pki), str(app), "--out", str(out),
             "--passphrase-env", "TB_PIN")
    assert r.exit_code == 4, r.output
    assert "does not verify with its public key" in r.output, r.output
    assert "trustboot-sb-db" in r.output and "hint:" in r.output
    assert not out.exists()
