"""A recipe's origin.client_cert authenticates only to the origin the operator bound it to.

``origin.client_cert: NAME`` has the release write with the CA home's TLS client
certificate NAME, to whatever origin.url the recipe names. Every WebDAV origin that
trusts the CA's client certificates takes those writes: a pull request pointing
origin.url at another team's origin, or at production instead of staging, published and
switched an entry there with the operator's certificate (reproduced below with two real
nginx WebDAV origins of one CA). Now the operator binds the certificate to its origin,
outside the recipe (TRUSTBOOT_CLIENT_CERT_ORIGIN='ORIGIN_URL NAME', or
--client-cert-origin); without a binding the recipe is refused before any request
unless --unsafe-unbound-credentials, and a dry run presents no unbound certificate and
says what the real run would refuse. nginx logs $ssl_client_verify for each request
(SUCCESS: the client certificate was presented and verified; NONE: not presented)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.publish.conftest import Nginx, Pki, start_nginx, stop_nginx
from tests.release.lab import isolate_env, make_lab
from trustboot.cli.main import cli
from trustboot.release.plan import ORIGIN_CA_ENV

IMAGES = {"vmlinuz": b"kernel " * 3000, "initrd.img": b"initrd " * 1000}
ENV = "TRUSTBOOT_CLIENT_CERT_ORIGIN"
# each request and whether it came with a verified client certificate
VERIFY_LOG = ("log_format certs '$request_method $uri $ssl_client_verify';\n"
              "    access_log {base}/certs.log certs;")


@pytest.fixture(autouse=True)
def _no_ipxe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_env(monkeypatch, tmp_path, ENV)


def _start(pki: Pki, base: Path) -> Nginx:
    return start_nginx(pki, base, main_extra="    " + VERIFY_LOG.format(base=base))


@pytest.fixture
def two(pki: Pki, tmp_path: Path) -> Iterator[tuple[Nginx, Nginx]]:
    """Two WebDAV origins that take writes with the CA's client certificates: the
    operator's (staging) and another one (prod)."""
    staging = _start(pki, tmp_path / "staging")
    try:
        prod = _start(pki, tmp_path / "prod")
        try:
            yield staging, prod
        finally:
            stop_nginx(prod)
    finally:
        stop_nginx(staging)


def _seen(n: Nginx) -> list[str]:
    """'METHOD /path VERIFY' for each request the origin answered."""
    log = n.base / "certs.log"
    return log.read_text().splitlines() if log.exists() else []


def _settled(n: Nginx, at_least: int = 1) -> list[str]:
    """_seen, once nginx logged ``at_least`` requests (it logs after the response is
    sent: the client may be done before the line is written), or after 5 s."""
    import time

    deadline = time.monotonic() + 5
    while len(seen := _seen(n)) < at_least and time.monotonic() < deadline:
        time.sleep(0.02)
    return seen


def _recipe(pki: Pki, tmp_path: Path, url: str) -> Path:
    # {date} in the id: a dry run lists the origin, so it has a connection to present
    # the certificate on
    return make_lab(tmp_path / "lab", pki, url, images=IMAGES, client_cert=True,
                    release_id="{date}-{digest8}")


def _release(recipe: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["release", str(recipe), *args], env=env)


def _origin_line(recipe: Path) -> int:
    return next(i for i, line in enumerate(recipe.read_text().splitlines(), 1)
                if line.startswith("origin:"))


def test_an_unbound_client_certificate_is_refused_before_any_request(
        pki: Pki, tmp_path: Path, two: tuple[Nginx, Nginx]) -> None:
    """The reproduction: a recipe edited to point at the other origin. Before, it
    published there with the operator's certificate (exit 0, prod's boot.ipxe switched);
    now exit 3 at the recipe's origin line, naming the binding, and prod saw nothing."""
    _staging, prod = two
    recipe = _recipe(pki, tmp_path, prod.url)
    res = _release(recipe)
    assert res.exit_code == 3, res.output
    line = _origin_line(recipe)
    assert f"lab.yaml:{line}: origin.client_cert 'publisher' is not bound to an origin, " \
           f"and this recipe chooses where it authenticates (origin.url {prod.url})" \
           in res.stderr, res.stderr
    assert f"{ENV}='{prod.url} publisher'" in res.stderr
    assert "--unsafe-unbound-credentials" in res.stderr
    assert _seen(prod) == []
    assert list(prod.root.iterdir()) == []


def test_the_bound_origin_takes_the_release(
        pki: Pki, tmp_path: Path, two: tuple[Nginx, Nginx]) -> None:
    """Bound by the environment variable (the CI job's way): writes carry the verified
    certificate; bound by --client-cert-origin the same."""
    staging, _prod = two
    recipe = _recipe(pki, tmp_path, staging.url)
    # (and the operator gives the CA that authenticates the origin, not the recipe)
    res = _release(recipe, "--json", env={ENV: f"{staging.url} publisher",
                                          ORIGIN_CA_ENV: str(pki.ca)})
    assert res.exit_code == 0, res.output
    assert "--unsafe" not in res.stderr
    writes = [s for s in _seen(staging) if s.startswith("PUT ")]
    assert writes and all(s.endswith(" SUCCESS") for s in writes), _seen(staging)
    first = json.loads(res.stdout)["release"]
    assert re.search(rf"releases/{first}/", (staging.root / "boot.ipxe").read_text())

    # a path below the bound one is covered, as for a bound secret
    (staging.root / "boot").mkdir()
    res = _release(_recipe(pki, tmp_path, staging.url + "boot/"),
                   "--client-cert-origin", f"{staging.url} publisher",
                   "--origin-ca-file", str(pki.ca))
    assert res.exit_code == 0, res.output
    assert (staging.root / "boot" / "boot.ipxe").is_file()


def test_a_binding_for_another_origin_or_certificate_is_refused(
        pki: Pki, tmp_path: Path, two: tuple[Nginx, Nginx]) -> None:
    """Bound to staging, a recipe pointing at prod (or at a path beside the bound one,
    or with another certificate) is refused, in a dry run too; prod saw nothing."""
    staging, prod = two
    line = _origin_line(_recipe(pki, tmp_path, prod.url))
    for args in ([], ["--dry-run"], ["--unsafe-unbound-credentials"]):
        res = _release(tmp_path / "lab" / "lab.yaml", *args,
                       env={ENV: f"{staging.url} publisher"})
        assert res.exit_code == 3, (args, res.output)
        assert f"lab.yaml:{line}: the client certificate publisher (bound by environment " \
               f"variable {ENV}) is bound to origin {staging.url}, not to {prod.url}" \
               in res.stderr, res.stderr
    assert _seen(prod) == []

    res = _release(_recipe(pki, tmp_path, staging.url + "other/"),
                   env={ENV: f"{staging.url}boot/ publisher"})
    assert res.exit_code == 3, res.output
    assert "not to" in res.stderr

    res = _release(_recipe(pki, tmp_path, staging.url), env={ENV: f"{staging.url} prod-writer"})
    assert res.exit_code == 3, res.output
    assert "binds the client certificate prod-writer, not publisher" in res.stderr, res.stderr
    assert [s for s in _seen(staging) if not s.startswith("GET /.mark")] == []


def test_a_malformed_binding_is_refused_without_echoing_it(
        pki: Pki, tmp_path: Path, two: tuple[Nginx, Nginx]) -> None:
    staging, _prod = two
    recipe = _recipe(pki, tmp_path, staging.url)
    for value in (staging.url, "publisher", f"{staging.url} publisher extra",
                  f"https://u:hunter2@127.0.0.1:{staging.port}/ publisher",
                  f"{staging.url}?x=1 publisher", "ftp://127.0.0.1/ publisher"):
        res = _release(recipe, env={ENV: value})
        assert res.exit_code == 3, (value, res.output)
        assert "hunter2" not in res.output
        assert ENV in res.stderr
    assert _seen(staging) == []


def test_unsafe_unbound_credentials_lets_it_through_with_a_warning(
        pki: Pki, tmp_path: Path, two: tuple[Nginx, Nginx]) -> None:
    _staging, prod = two
    res = _release(_recipe(pki, tmp_path, prod.url), "--unsafe-unbound-credentials")
    assert res.exit_code == 0, res.output
    assert "warning: --unsafe-unbound-credentials" in res.stderr
    assert "origin.client_cert" in res.stderr
    assert (prod.root / "boot.ipxe").is_file()
    assert any(s.startswith("PUT ") and s.endswith(" SUCCESS") for s in _seen(prod))


def test_a_dry_run_presents_no_unbound_certificate_and_says_what_a_run_refuses(
        pki: Pki, tmp_path: Path, two: tuple[Nginx, Nginx]) -> None:
    """A dry run lists the origin (the {date} id) without the certificate, exits 0, and
    notes the refusal and the binding to set (stderr, and `warnings` in its JSON)."""
    _staging, prod = two
    recipe = _recipe(pki, tmp_path, prod.url)
    res = _release(recipe, "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    note = next(w for w in doc["warnings"] if "origin.client_cert" in w)
    assert note.startswith("a real run would be refused: ")
    assert f"{ENV}='{prod.url} publisher'" in note
    seen = _settled(prod)
    assert seen and all(s.startswith("PROPFIND ") and s.endswith(" NONE") for s in seen), seen

    # bound, and the origin authenticated by the operator's CA: the dry run lists with it
    # (a read of the origin it is bound to), no note
    res = _release(recipe, "--dry-run", "--json", env={ENV: f"{prod.url} publisher",
                                                       ORIGIN_CA_ENV: str(pki.ca)})
    assert res.exit_code == 0, res.output
    assert not any("client_cert" in w for w in json.loads(res.stdout)["warnings"])
    assert _settled(prod, len(seen) + 1)[-1].endswith(" SUCCESS")
    assert list(prod.root.iterdir()) == []
