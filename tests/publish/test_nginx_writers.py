"""`origin nginx-config --writer`: which of the CA's client certificates may write."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from tests.publish.conftest import (
    KEY_PASS,
    Pki,
    anon_get,
    free_port,
    make_pki,
    start_nginx,
    stop_nginx,
)
from trustboot.cli.main import cli
from trustboot.errors import ConfigError
from trustboot.publish.nginx import NginxSite, render


def _put(url: str, pki: Pki, name: str) -> int:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.cert(name)), str(pki.key(name)), password=KEY_PASS)
    with httpx.Client(verify=ctx, trust_env=False) as client:
        return client.put(url, content=name.encode()).status_code


@pytest.fixture(scope="module")
def ipxe_client_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pki = make_pki(tmp_path_factory.mktemp("writers") / "ca")
    pki.issue("client", "ipxe-client")
    return pki


def test_a_client_certificate_built_into_ipxe_cannot_write(ipxe_client_pki: Pki,
                                                           tmp_path: Path) -> None:
    """`ca issue client ipxe-client` is what the README has built into iPXE (PRIVKEY=),
    so its key is in every boot image anyone can download; the site let every client
    certificate of the CA write, so that one could PUT, DELETE and MOVE releases too."""
    pki = ipxe_client_pki
    nginx = start_nginx(pki, tmp_path / "nginx", extra_args=("--writer", "publisher"))
    try:
        assert _put(nginx.url + "from-ipxe", pki, "ipxe-client") == 403
        assert not (nginx.root / "from-ipxe").exists()
        assert _put(nginx.url + "from-publisher", pki, "publisher") == 201
        assert anon_get(nginx.url + "from-publisher", pki).content == b"publisher"
    finally:
        stop_nginx(nginx)


@pytest.mark.parametrize("name", ["", "a b", "a|b", "a)|(.*", "-a", "a\nb", "x" * 65])
def test_writer_names_are_certificate_names(name: str) -> None:
    site = NginxSite(server_names=("b",), root=Path("/srv/boot"), certificate=Path("/e/c"),
                     key=Path("/e/k"), client_ca=Path("/e/ca"), writers=(name,))
    with pytest.raises(ConfigError, match="--writer"):
        render(site)


def test_without_writers_the_site_is_refused_unless_unsafe() -> None:
    """The safe choice is the default: a site any client certificate of the CA can write to
    (the one in every boot image included) takes --unsafe-any-client-writes, and says so."""
    args = ["origin", "nginx-config", "--server-name", "b", "--cert", "/e/c", "--key",
            "/e/k", "--client-ca", "/e/ca"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 3, res.output
    assert "no --writer" in res.output and "--writer publisher" in res.output
    assert "server {" not in res.stdout
    res = CliRunner().invoke(cli, [*args, "--unsafe-any-client-writes"])
    assert res.exit_code == 0, res.output
    assert "# WARNING: no --writer" in res.stdout
    assert "no --writer" in res.stderr


def test_two_sites_in_one_nginx_keep_their_own_rules(ipxe_client_pki: Pki,
                                                     tmp_path: Path) -> None:
    """Every site named its maps $trustboot_denied (and $trustboot_client), and nginx
    silently lets a later map of the same name replace an earlier one for all sites: a
    production site with --writer publisher, followed in sites-enabled/ by a staging site
    without, took writes from any client certificate of the CA."""
    pki = ipxe_client_pki
    prod_port = free_port()
    prod_root = tmp_path / "prod-www"
    prod_root.mkdir(mode=0o755)
    chain = tmp_path / "prod-chain.pem"
    chain.write_bytes(pki.cert("origin").read_bytes()
                      + (pki.dir / "issuing-ca.crt").read_bytes())
    prod = render(NginxSite(
        server_names=("localhost",), root=prod_root, certificate=chain,
        key=pki.key("origin"), key_password_file=pki.key_pass,
        client_ca=pki.dir / "chain.pem", listen=(f"127.0.0.1:{prod_port}",), ipv6=False,
        writers=("publisher",)))
    # the staging site (no --writer) is the one start_nginx renders, included after
    staging = start_nginx(pki, tmp_path / "staging", other_site=lambda _port: prod,
                          extra_args=("--unsafe-any-client-writes",))
    try:
        url = f"https://127.0.0.1:{prod_port}/"
        assert _put(url + "from-ipxe", pki, "ipxe-client") == 403
        assert not (prod_root / "from-ipxe").exists()
        assert _put(url + "from-publisher", pki, "publisher") == 201
        # and staging keeps its own (laxer) rule
        assert _put(staging.url + "from-ipxe", pki, "ipxe-client") == 201
    finally:
        stop_nginx(staging)
