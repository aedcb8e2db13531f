"""The CA that decides which host receives the operator's origin credentials is the
operator's: a recipe (from a pull request) that names origin.ca_file and authenticates to
its origin is refused unless the operator gives the CA (--origin-ca-file or
TRUSTBOOT_ORIGIN_CA_FILE), which replaces the recipe's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.publish.conftest import Pki
from tests.release.lab import isolate_env, make_lab
from tests.release.test_credentials import IMAGES, SECRET, _Capture, capture
from trustboot.cli.main import cli
from trustboot.release.plan import ORIGIN_CA_ENV

ENV_NAME = "TRUSTBOOT_ORIGIN_TOKEN"


@pytest.fixture(autouse=True)
def _no_ipxe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_env(monkeypatch, tmp_path, ORIGIN_CA_ENV)


def _release(recipe: Path, *args: str, env: dict[str, str]) -> Result:
    return CliRunner().invoke(cli, ["release", str(recipe), *args], env=env)


def _recipe(pki: Pki, tmp_path: Path, url: str) -> Path:
    return make_lab(tmp_path / "lab", pki, url, images=IMAGES, client_cert=False,
                    extra=f", credentials: {{env: {ENV_NAME}}}",
                    release_id="{date}-{digest8}")


def test_bound_credentials_with_the_recipes_ca_are_refused_before_any_request(
        pki: Pki, tmp_path: Path) -> None:
    """The review's attack: the credentials are bound to the URL, the capture server
    answers for that URL (redirected name) with a certificate of the recipe's CA."""
    with capture(pki, tmp_path) as url:
        env = {ENV_NAME: f"{url} bearer:{SECRET}"}
        recipe = _recipe(pki, tmp_path, url)
        line = next(i for i, x in enumerate(recipe.read_text().splitlines(), 1)
                    if x.startswith("origin:"))
        res = _release(recipe, env=env)
        assert res.exit_code == 3, res.output
        assert f"lab.yaml:{line}: origin.ca_file 'pki/ca.crt' comes from the recipe" \
            in res.stderr, res.stderr
        assert "--origin-ca-file" in res.stderr and ORIGIN_CA_ENV in res.stderr
        assert SECRET not in res.output
        assert _Capture.seen == []

        # a dry run sends nothing, says what a real run refuses
        res = _release(recipe, "--dry-run", "--json", env=env)
        assert res.exit_code == 0, res.output
        notes = json.loads(res.stdout)["warnings"]
        assert any(n.startswith("a real run would be refused: ") and "--origin-ca-file" in n
                   for n in notes), notes
        assert all(auth is None for _, auth in _Capture.seen)


def test_the_operators_ca_replaces_the_recipes(pki: Pki, tmp_path: Path,
                                               session_ca: Path) -> None:
    """With another CA from the operator (the origin's real one), the host with a
    certificate of the recipe's CA fails the handshake and receives nothing; with the CA
    that did issue it (the operator's choice), the credentials are sent."""
    with capture(pki, tmp_path) as url:
        env = {ENV_NAME: f"{url} bearer:{SECRET}"}
        recipe = _recipe(pki, tmp_path, url)
        res = _release(recipe, "--origin-ca-file", str(session_ca / "ca.crt"), env=env)
        assert res.exit_code == 4, res.output
        assert "does not verify" in res.stderr
        assert _Capture.seen == []
        res = _release(recipe, env={**env, ORIGIN_CA_ENV: str(pki.ca)})
        assert res.exit_code == 1, res.output  # the capture server refuses the upload
        assert _Capture.seen and all(a == f"Bearer {SECRET}" for _, a in _Capture.seen)


def test_unsafe_unbound_credentials_accepts_the_recipes_ca(pki: Pki,
                                                            tmp_path: Path) -> None:
    with capture(pki, tmp_path) as url:
        env = {ENV_NAME: f"{url} bearer:{SECRET}"}
        res = _release(_recipe(pki, tmp_path, url), "--unsafe-unbound-credentials", env=env)
        assert res.exit_code == 1, res.output
        assert "warning: --unsafe-unbound-credentials" in res.stderr
        assert _Capture.seen


def test_the_cli_spells_the_variable_the_library_names() -> None:
    from trustboot.cli import release as cli_release

    assert cli_release.ORIGIN_CA_ENV == ORIGIN_CA_ENV
    out = CliRunner().invoke(cli, ["release", "--help"]).output
    assert "--origin-ca-file" in out and ORIGIN_CA_ENV in out


@pytest.mark.parametrize("url", ["https://127.0.0.1:9/dav/", "s3://boot/prod"])
def test_no_ca_for_the_origin_is_refused_at_the_recipe_line(pki: Pki, tmp_path: Path,
                                                            url: str) -> None:
    """trustboot never trusts the system's store: an https:// or s3:// recipe without
    origin.ca_file (and no --origin-ca-file) is refused at validation, at its origin line,
    naming what release takes (the TLS code's own hint named publish's --ca-file/--pki),
    in a dry run too; with --origin-ca-file it validates."""
    recipe = make_lab(tmp_path / "lab", pki, url, images=IMAGES, client_cert=False,
                      release_id="{date}-{digest8}")
    extra = (", endpoint: 'https://127.0.0.1:9', public_url: 'https://127.0.0.1:9/boot/'"
             if url.startswith("s3") else "")
    recipe.write_text(recipe.read_text().replace(", ca_file: pki/ca.crt", extra))
    line = next(i for i, x in enumerate(recipe.read_text().splitlines(), 1)
                if x.startswith("origin:"))
    env = {"TRUSTBOOT_AMBIENT_CREDENTIALS": f"{url} https://127.0.0.1:9"} \
        if url.startswith("s3") else {}
    for args in ((), ("--dry-run",)):
        res = _release(recipe, *args, env=env)
        assert res.exit_code == 3, res.output
        assert f"lab.yaml:{line}: origin " in res.stderr, res.stderr
        assert "has no CA to check its TLS certificate" in res.stderr, res.stderr
        assert "origin.ca_file" in res.stderr and "--origin-ca-file" in res.stderr
        assert "--pki" not in res.stderr
    res = _release(recipe, "--dry-run", "--origin-ca-file", str(pki.ca), env=env)
    assert "has no CA" not in res.stderr, res.stderr
