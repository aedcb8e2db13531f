"""`origin nginx-config --writer`: which of the CA's client certificates may write."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from tests.publish.conftest import KEY_PASS, Pki, anon_get, make_pki, start_nginx, stop_nginx
from trustboot.cli.main import cli
from trustboot.errors import ConfigError
from trustboot.publish.nginx import NginxSite, render


def _put(url: str, pki: Pki, name: str) -> int:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.cert(name)), str(pki.key(name)), password=KEY_PASS)
    with httpx.Client(verify=ctx, trust_env=False) as client:
        return client.put(url, content=name.encode()).status_code


def test_a_client_certificate_built_into_ipxe_cannot_write(tmp_path: Path) -> None:
    """`ca issue client ipxe-client` is what the README has built into iPXE (PRIVKEY=),
    so its key is in every boot image anyone can download; the site let every client
    certificate of the CA write, so that one could PUT, DELETE and MOVE releases too."""
    pki = make_pki(tmp_path / "ca")
    pki.issue("client", "ipxe-client")
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


def test_without_writers_the_config_and_a_warning_say_so() -> None:
    res = CliRunner().invoke(cli, ["origin", "nginx-config", "--server-name", "b", "--cert",
                                   "/e/c", "--key", "/e/k", "--client-ca", "/e/ca"])
    assert res.exit_code == 0, res.output
    assert "# WARNING: no --writer" in res.stdout
    assert "no --writer" in res.stderr
