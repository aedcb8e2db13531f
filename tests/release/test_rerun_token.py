"""A release signed in a token with an ECDSA key (whose signatures differ on every
signing, unlike RSA's or a file key's RFC 6979 ones) is published again by re-running its
recipe: after a run killed once release.json claimed the id, and after a rollback. The
signatures the origin already holds are kept; signing again could never match the claim."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec

from tests.keys.softhsm import PIN, Token, make_token
from tests.release.conftest import PASSPHRASE, SIGNER, Lab, origin_lost_after_the_claim
from trustboot.ca.store import CertificateAuthority
from trustboot.cli.main import cli
from trustboot.secrets import constant

pytest.importorskip("pkcs11", reason="needs python-pkcs11 (trustboot[pkcs11])")


pytestmark = pytest.mark.usefixtures("no_ipxe_build")


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Token:
    tok = make_token(tmp_path / "hsm")
    for key, value in tok.env.items():
        monkeypatch.setenv(key, value)
    return tok


def _token_recipe(lab: Lab, token: Token) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    token.import_key(key, "ec-signer")
    pw = constant(PASSPHRASE)
    entry = CertificateAuthority.open(lab.pki).issue(
        "codesign", "token-ec", pw, None, public_key=key.public_key(),
        now=dt.datetime.now(dt.UTC)).entry
    pin = lab.dir / "pin.txt"
    pin.write_text(PIN + "\n")
    pin.chmod(0o600)
    text = lab.recipe().read_text()
    old = f"signer: {{key: {SIGNER}, passphrase: {{file: pass.txt}}}}"
    assert old in text
    recipe = lab.dir / "token.yaml"
    recipe.write_text(text.replace(old, (
        f"signer: {{key: '{token.uri('ec-signer')}', "
        f"cert: {entry.cert_path.relative_to(lab.dir)}, passphrase: {{file: pin.txt}}}}")))
    return recipe


def _release(recipe: Path, token: Token) -> tuple[int, dict[str, object], str]:
    r = CliRunner().invoke(cli, ["release", str(recipe), "--json", "--pkcs11-module",
                                 str(token.module)])
    return r.exit_code, json.loads(r.stdout) if r.exit_code == 0 else {}, r.stderr


def _live(lab: Lab, rid: str) -> bool:
    return (lab.origin / "boot.ipxe").read_bytes() == \
        (lab.origin / "releases" / rid / "boot.ipxe").read_bytes()


def test_token_ecdsa_release_killed_after_claiming_its_id_completes_on_rerun(
        lab: Lab, token: Token) -> None:
    recipe = _token_recipe(lab, token)
    with origin_lost_after_the_claim():
        code, _, err = _release(recipe, token)
    assert code == 1, err
    claims = list((lab.origin / "releases").glob("*/release.json"))
    assert len(claims) == 1 and not (lab.origin / "boot.ipxe").exists()
    rid = claims[0].parent.name
    held = {p.name: p.read_bytes() for p in claims[0].parent.glob("*/*.sig")}
    assert held  # the signatures went first
    code, data, err = _release(recipe, token)
    assert code == 0, err
    assert data["release"] == rid and _live(lab, rid)
    assert {p.name: p.read_bytes() for p in claims[0].parent.glob("*/*.sig")} == held


def test_token_ecdsa_release_switched_back_to_by_rerunning_its_recipe(
        lab: Lab, token: Token) -> None:
    recipe = _token_recipe(lab, token)
    kernel = lab.dir / "images" / "vmlinuz"
    first_kernel = kernel.read_bytes()
    code, first, err = _release(recipe, token)
    assert code == 0, err
    kernel.write_bytes(b"another kernel " * 3000)
    code, second, err = _release(recipe, token)
    assert code == 0, err
    assert second["release"] != first["release"]
    kernel.write_bytes(first_kernel)
    code, again, err = _release(recipe, token)
    assert code == 0, err
    assert again["release"] == first["release"] and again["uploaded"] == []
    assert _live(lab, str(first["release"]))
