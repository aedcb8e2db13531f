"""A recipe's origin.credentials go only where the operator bound them.

A recipe comes from a pull request and chooses origin.url and the CA its certificate is
checked with. It may name only TRUSTBOOT_* variables, the secret must be bound to the
origin it goes to ('ORIGIN_URL user:password', set by the operator) unless the operator
passes --unsafe-unbound-credentials, and a dry run sends no credentials at all. Checked
against a TLS server of the test CA that records what it is sent, and the real nginx
WebDAV origin (whose access log shows the basic-auth user of every request)."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner, Result

from tests.publish.conftest import Nginx, Pki, logged_requests, origin_ca_server
from tests.release.lab import isolate_env, make_lab
from trustboot.cli.main import cli

SECRET = "glcbt-SECRETJOBTOKEN123"
IMAGES = {"vmlinuz": b"kernel " * 3000, "initrd.img": b"initrd " * 1000}


@pytest.fixture(autouse=True)
def _no_ipxe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_env(monkeypatch, tmp_path)


class _Capture(http.server.BaseHTTPRequestHandler):
    """The attacker's origin: records each request's method and Authorization, then
    refuses (as the capture server of the review did)."""

    seen: ClassVar[list[tuple[str, str | None]]] = []

    def _any(self) -> None:
        self.seen.append((self.command, self.headers.get("Authorization")))
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_PUT = do_DELETE = do_PROPFIND = do_MKCOL = do_MOVE = _any

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def capture(pki: Pki, tmp_path: Path) -> Iterator[str]:
    """A TLS server with a certificate of the recipe's CA (the CA file a hostile recipe
    brings would do the same): its URL."""
    _Capture.seen.clear()
    with origin_ca_server(_Capture, pki, tmp_path) as url:
        yield url


def _recipe(pki: Pki, tmp_path: Path, origin: str, env: str, *,
            client_cert: bool = False) -> Path:
    # {date} in the id: a dry run lists the origin (the id of the same inputs on an
    # earlier day), so it has something to send credentials with
    return make_lab(tmp_path / "lab", pki, origin, images=IMAGES, client_cert=client_cert,
                    extra=f", credentials: {{env: {env}}}", release_id="{date}-{digest8}")


def _release(recipe: Path, *args: str, env: dict[str, str]) -> Result:
    return CliRunner().invoke(cli, ["release", str(recipe), *args], env=env)


def _line_of(recipe: Path, text: str) -> int:
    return next(i for i, line in enumerate(recipe.read_text().splitlines(), 1)
                if text in line)


def test_a_recipe_cannot_name_a_variable_that_is_not_trustboots(
        pki: Pki, tmp_path: Path) -> None:
    """The review's exfiltration: origin.url, its CA and credentials.env: CI_REPOSITORY_URL
    (GitLab's URL with the job token) in a pull request. Refused while the recipe is read,
    with its file:line and the fix, whatever the options: nothing reaches the host."""
    token_url = f"https://gitlab-ci-token:{SECRET}@gitlab.example.com/grp/proj.git"
    with capture(pki, tmp_path) as url:
        recipe = _recipe(pki, tmp_path, url, "CI_REPOSITORY_URL")
        line = _line_of(recipe, "credentials")
        for args in ([], ["--dry-run"], ["--unsafe-unbound-credentials"],
                     ["--dry-run", "--json"]):
            res = _release(recipe, *args, env={"CI_REPOSITORY_URL": token_url})
            assert res.exit_code == 3, (args, res.output)
            assert f"lab.yaml:{line}: origin.credentials.env 'CI_REPOSITORY_URL' is not " \
                   "allowed" in res.stderr, res.stderr
            assert "TRUSTBOOT_" in res.stderr and SECRET not in res.output
        assert _Capture.seen == []


def test_unbound_credentials_from_a_recipe_are_refused_unless_the_operator_opts_in(
        pki: Pki, tmp_path: Path) -> None:
    """TRUSTBOOT_ORIGIN_CREDENTIALS holds 'ci:SECRET' with no origin URL before it: the
    recipe would choose where it goes. Refused (exit 3, the recipe line, the binding to
    write and the flag), dry run included, with no request made. With the operator's
    --unsafe-unbound-credentials it is sent (and warned about on every run); a dry run
    still does not send it."""
    env = {"TRUSTBOOT_ORIGIN_CREDENTIALS": f"ci:{SECRET}"}
    with capture(pki, tmp_path) as url:
        recipe = _recipe(pki, tmp_path, url, "TRUSTBOOT_ORIGIN_CREDENTIALS")
        line = _line_of(recipe, "credentials")
        for args in ([], ["--dry-run"]):
            res = _release(recipe, *args, env=env)
            assert res.exit_code == 3, (args, res.output)
            assert f"lab.yaml:{line}: origin.credentials.env: the credentials from " \
                   "environment variable TRUSTBOOT_ORIGIN_CREDENTIALS are not bound" \
                   in res.stderr, res.stderr
            assert f"'{url} USER:PASSWORD'" in res.stderr
            assert "--unsafe-unbound-credentials" in res.stderr
            assert SECRET not in res.output
        assert _Capture.seen == []

        res = _release(recipe, "--dry-run", "--unsafe-unbound-credentials", env=env)
        assert res.exit_code == 0, res.output
        assert "warning: --unsafe-unbound-credentials" in res.stderr
        assert "does not send origin.credentials" in res.stderr
        assert _Capture.seen and all(auth is None for _, auth in _Capture.seen)

        _Capture.seen.clear()
        res = _release(recipe, "--unsafe-unbound-credentials", env=env)
        assert res.exit_code == 1, res.output  # the capture server refuses
        assert "warning: --unsafe-unbound-credentials" in res.stderr
        basic = "Basic " + base64.b64encode(f"ci:{SECRET}".encode()).decode()
        assert (_Capture.seen[0][1]) == basic  # the opt-in is what sent it


def test_a_dry_run_sends_no_credentials_even_bound_ones(pki: Pki, tmp_path: Path) -> None:
    """Bound to the origin the recipe names (the recipe's own origin, here the capture
    server): a real run sends them, a dry run lists the origin without them and says so
    (stderr, and `warnings` in its JSON)."""
    with capture(pki, tmp_path) as url:
        env = {"TRUSTBOOT_ORIGIN_CREDENTIALS": f"{url} ci:{SECRET}"}
        recipe = _recipe(pki, tmp_path, url, "TRUSTBOOT_ORIGIN_CREDENTIALS")
        res = _release(recipe, "--dry-run", env=env)
        assert res.exit_code == 0, res.output
        assert "does not send origin.credentials (environment variable " \
               "TRUSTBOOT_ORIGIN_CREDENTIALS)" in res.stderr
        res = _release(recipe, "--dry-run", "--json", env=env)
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        assert any("does not send origin.credentials" in w for w in doc["warnings"])
        # listed (the id may be an earlier day's), refused without credentials: provisional
        assert doc["plan"]["release_id_provisional"] is True
        assert [m for m, _ in _Capture.seen] == ["PROPFIND", "PROPFIND"]
        assert all(auth is None for _, auth in _Capture.seen), _Capture.seen
        assert SECRET not in res.output

        _Capture.seen.clear()
        # the operator's CA (here the one the server's certificate is of) authenticates it
        res = _release(recipe, "--origin-ca-file", str(pki.ca), env=env)
        assert res.exit_code == 1, res.output
        assert _Capture.seen and all(auth is not None for _, auth in _Capture.seen)


def _users(lines: list[str], nginx: Nginx) -> list[str]:
    """The basic-auth user nginx logged for each request of ``lines`` (the combined log
    format's third field: '-' when none was sent)."""
    log = (nginx.base / "access.log").read_text().splitlines()
    users = []
    for request in lines:
        match = next(x for x in reversed(log) if f'"{request} ' in x)
        users.append(match.split(" ")[2])
    return users


def test_on_nginx_a_dry_run_lists_without_credentials_and_a_release_sends_bound_ones(
        pki: Pki, nginx: Nginx, tmp_path: Path) -> None:
    """The real WebDAV origin (writes with the client certificate, basic credentials
    bound to it, as CI holds them): the release publishes, and nginx saw the user on its
    requests; a dry run's reads of the same origin (its listing, and what it looks up of
    the release) carried none, and wrote nothing."""
    recipe = _recipe(pki, tmp_path, nginx.url, "TRUSTBOOT_DAV", client_cert=True)
    env = {"TRUSTBOOT_DAV": f"{nginx.url} alice:{SECRET}"}
    results: list[Result] = []
    requests = logged_requests(nginx, pki, lambda: results.append(
        _release(recipe, "--dry-run", env=env)))
    assert results[0].exit_code == 0, results[0].output
    assert requests and all(r.split()[0] in {"PROPFIND", "HEAD", "GET"}
                            for r in requests), requests
    assert set(_users(requests, nginx)) == {"-"}
    requests = logged_requests(nginx, pki, lambda: results.append(_release(recipe, env=env)))
    assert results[1].exit_code == 0, results[1].output
    assert any(r.startswith("PUT ") for r in requests)
    writes = [r for r in requests if not r.startswith("GET ")]  # the read-back is anonymous
    assert set(_users(writes, nginx)) == {"alice"}, writes
    assert re.search(r"releases/\d{8}-", (nginx.root / "boot.ipxe").read_text())
    assert SECRET not in results[1].output


def test_a_dry_run_does_not_sign_a_request_for_an_s3_endpoint(
        pki: Pki, tmp_path: Path) -> None:
    """boto3 signs every request with the credentials it has (the recipe's, else the
    environment's): a dry run of an s3:// recipe does not list the store at all, and
    says the id is provisional."""
    pytest.importorskip("boto3", reason="needs boto3 (pip install 'trustboot[s3]')")
    with capture(pki, tmp_path) as url:
        endpoint = url.rstrip("/")
        env = {"TRUSTBOOT_S3": f"s3://boot/prod {endpoint} AKIDTEST:{SECRET}"}
        recipe = make_lab(tmp_path / "lab", pki, "s3://boot/prod", images=IMAGES,
                          client_cert=False, release_id="{date}-{digest8}",
                          extra=f", endpoint: '{endpoint}', public_url: '{url}boot/prod/', "
                                "credentials: {env: TRUSTBOOT_S3}")
        res = _release(recipe, "--dry-run", "--json", env=env)
        assert res.exit_code == 0, res.output
        plan = json.loads(res.stdout)["plan"]
        assert plan["release_id_provisional"] is True
        assert "a dry run sends no credentials" in plan["origin_unreachable"]
        assert _Capture.seen == []
        # a real run signs its requests for the store (the operator's CA authenticates it)
        res = _release(recipe, "--origin-ca-file", str(pki.ca), env=env)
        assert res.exit_code == 1, res.output
        assert _Capture.seen and all(a and "AKIDTEST" in a for _, a in _Capture.seen)


def test_release_help_names_the_bindings_without_importing_the_origin_code() -> None:
    """cli.release spells the two binding variables itself, so building its options (and
    `release --help`) does not import trustboot.publish.origin: the names must stay
    those the library reads."""
    import subprocess
    import sys

    from trustboot.cli import release as cli_release
    from trustboot.publish import origin

    assert cli_release.AMBIENT_ENV == origin.AMBIENT_ENV
    assert cli_release.CLIENT_CERT_ENV == origin.CLIENT_CERT_ENV
    code = ("import sys, trustboot.cli.release; "
            "print('trustboot.publish.origin' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
