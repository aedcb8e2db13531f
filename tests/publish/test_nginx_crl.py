"""A revoked publisher certificate against the real nginx origin: `origin nginx-config
--client-crl` (ssl_crl) with the CRLs `ca crl --root` and `ca export` make refuses its
writes, a valid publisher still writes; without it (a warning says so) it can write."""

from __future__ import annotations

import datetime as dt
import shutil
import ssl
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from cryptography import x509

from tests.publish.conftest import (
    KEY_PASS,
    Pki,
    anon_get,
    make_pki,
    run_cli,
    start_nginx,
    stop_nginx,
)
from trustboot.cli.main import cli
from trustboot.publish.nginx import client_crl_problems


@pytest.fixture(scope="module")
def revoking_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, Path, Path]:
    """A CA with a client certificate `former` revoked (its certificate and key kept, as
    the former publisher would), the root's CRL made and the trust material exported."""
    base = tmp_path_factory.mktemp("crl-pki")
    pki = make_pki(base / "ca")
    pki.issue("client", "former")
    kept = base / "former"
    kept.mkdir()
    shutil.copy(pki.cert("former"), kept / "former.crt")
    shutil.copy(pki.key("former"), kept / "former.key")
    ca_pass = str(pki.secrets / "ca.pass")
    run_cli("ca", "revoke", "former", "--pki", str(pki.dir), "--passphrase-file", ca_pass)
    run_cli("ca", "crl", "--root", "--pki", str(pki.dir), "--passphrase-file", ca_pass)
    run_cli("ca", "export", "--pki", str(pki.dir), "--out", str(base / "trust"))
    return pki, kept, base / "trust"


def _put(url: str, pki: Pki, cert: Path, key: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(cert), str(key), password=KEY_PASS)
    with httpx.Client(verify=ctx, trust_env=False) as client:
        return client.put(url, content=b"written").status_code


@pytest.mark.parametrize("with_crl", [True, False])
def test_a_revoked_publisher_cannot_write(revoking_pki: tuple[Pki, Path, Path],
                                          tmp_path: Path, with_crl: bool) -> None:
    pki, kept, trust = revoking_pki
    # `former` is a writer: only the CRL may stop it
    extra = ("--writer", "publisher", "--writer", "former", *(
        ("--client-crl", str(trust / "chain-crl.pem")) if with_crl else ()))
    nginx = start_nginx(pki, tmp_path / "nginx", extra_args=extra)
    try:
        site = (tmp_path / "nginx/site.conf").read_text()
        assert ("ssl_crl " in site) == with_crl
        status = _put(nginx.url + "by-former", pki, kept / "former.crt", kept / "former.key")
        if with_crl:
            assert status in (400, 403), status
            assert not (nginx.root / "by-former").exists()
            assert "certificate revoked" in nginx.error_log()
        else:  # the hole the option closes: revoked, and still writing
            assert status == 201 and (nginx.root / "by-former").exists()
        # a valid publisher writes, booting clients read
        assert _put(nginx.url + "by-publisher", pki, pki.cert("publisher"),
                    pki.key("publisher")) == 201
        assert anon_get(nginx.url + "by-publisher", pki).content == b"written"
    finally:
        stop_nginx(nginx)


def _config(pki: Pki, *extra: str) -> list[str]:
    return ["origin", "nginx-config", "--server-name", "boot.example.net", "--cert",
            "/etc/tb/server.pem", "--key", "/etc/tb/server.key", "--client-ca",
            str(pki.dir / "chain.pem"), "--writer", "publisher", "--writer", "former", *extra]


def test_without_a_crl_the_config_and_a_warning_say_revocation_is_not_enforced(
        revoking_pki: tuple[Pki, Path, Path]) -> None:
    pki, _, _ = revoking_pki
    res = CliRunner().invoke(cli, _config(pki))
    assert res.exit_code == 0, res.output
    assert "revoked publisher certificate can still write" in res.stderr
    assert "# WARNING: no --client-crl" in res.stdout and "ssl_crl" not in \
        res.stdout.replace("(ssl_crl)", "")


def test_a_crl_file_nginx_would_lock_everyone_out_with_is_refused(
        revoking_pki: tuple[Pki, Path, Path], tmp_path: Path) -> None:
    """crl.pem alone (no root CRL): nginx wants a CRL from every CA of the chain and
    answers every client certificate with 400; the config is refused, naming the fix."""
    pki, _, trust = revoking_pki
    res = CliRunner().invoke(cli, _config(pki, "--client-crl", str(trust / "crl.pem")))
    assert res.exit_code == 3, res.output
    assert "has no CRL signed by" in res.output and "Root" in res.output
    assert "ca crl --root" in res.output and "chain-crl.pem" in res.output
    res = CliRunner().invoke(cli, _config(pki, "--client-crl", str(trust / "chain-crl.pem")))
    assert res.exit_code == 0, res.output
    assert f"ssl_crl {trust / 'chain-crl.pem'};" in res.stdout
    # rendered for another machine: the file is not here to check
    res = CliRunner().invoke(cli, _config(pki, "--client-crl", "/etc/tb/chain-crl.pem"))
    assert res.exit_code == 0 and "not checked" in res.stderr, res.output


def test_crl_dates_are_judged_as_nginx_would(revoking_pki: tuple[Pki, Path, Path]) -> None:
    pki, _, trust = revoking_pki
    crls, ca = (trust / "chain-crl.pem").read_bytes(), (pki.dir / "chain.pem").read_bytes()
    issuing_ends = x509.load_pem_x509_crl((trust / "crl.pem").read_bytes()).next_update_utc
    assert issuing_ends is not None
    assert client_crl_problems(crls, ca, dt.datetime.now(dt.UTC)) == ([], [])
    errors, warnings = client_crl_problems(crls, ca, issuing_ends - dt.timedelta(days=2))
    assert not errors and len(warnings) == 1 and "refresh it" in warnings[0]
    errors, _ = client_crl_problems(crls, ca, issuing_ends + dt.timedelta(minutes=1))
    assert len(errors) == 1 and "out of date" in errors[0]
    assert client_crl_problems(b"", ca, dt.datetime.now(dt.UTC))[0] == ["holds no PEM CRL"]
