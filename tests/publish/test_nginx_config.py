"""`origin nginx-config` against hostile and careless options: what the rendered site would
expose or let publishers change, refused before a user pastes it into production."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from trustboot.cli.main import cli
from trustboot.errors import ConfigError
from trustboot.publish.nginx import NginxSite, render

SITE = NginxSite(server_names=("boot.example.net",), root=Path("/srv/boot"),
                 certificate=Path("/etc/trustboot/server.pem"),
                 key=Path("/etc/trustboot/server.key"),
                 client_ca=Path("/etc/trustboot/chain.pem"),
                 key_password_file=Path("/etc/trustboot/server.pass"),
                 client_crl=Path("/etc/trustboot/trust/chain-crl.pem"),
                 body_temp_dir=Path("/srv/.dav-tmp"), writers=("publisher",))


def _with(field: str, value: str) -> NginxSite:
    changes: dict[str, Any] = {field: Path(value)}
    return replace(SITE, **changes)


def test_the_documented_layout_renders() -> None:
    assert "root /srv/boot;" in render(SITE)


@pytest.mark.parametrize("field", ["certificate", "key", "key_password_file", "client_ca",
                                   "client_crl", "body_temp_dir"])
@pytest.mark.parametrize("under", ["/srv/boot/tls/x", "/srv/boot/.tls/x", "/srv/boot"])
def test_nothing_of_nginx_own_is_served(field: str, under: str) -> None:
    """Under --root the key and its passphrase were downloadable by anyone (GET), an
    upload in flight too (nginx's numbered temp files), and any publisher could PUT its
    own client CA or an empty CRL (writes anywhere under the root, dot-files included)."""
    with pytest.raises(ConfigError, match="inside --root"):
        render(_with(field, under))


def test_a_sibling_sharing_the_prefix_is_fine() -> None:
    assert "ssl_certificate_key /srv/boot-tls/k;" in render(_with("key", "/srv/boot-tls/k"))


def test_root_of_the_file_system_refused() -> None:
    with pytest.raises(ConfigError, match="whole file system"):
        render(_with("root", "/"))


@pytest.mark.parametrize("field", ["root", "key", "body_temp_dir"])
def test_dot_dot_refused(field: str) -> None:
    """/srv/boot/../../etc/trustboot/k looks outside the root to a string check, and
    --root /srv/boot/.. serves /srv: no path may hold '..'."""
    value = {"root": "/srv/boot/..", "key": "/srv/boot/../boot/k",
             "body_temp_dir": "/srv/boot/tmp/../tmp"}[field]
    with pytest.raises(ConfigError, match=r"'\.\.'"):
        render(_with(field, value))


def test_cli_refuses_a_key_under_the_root(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, [
        "origin", "nginx-config", "--server-name", "boot.example.net", "--root",
        str(tmp_path), "--cert", str(tmp_path / "server.pem"), "--key",
        str(tmp_path / "server.key"), "--client-ca", "/etc/trustboot/chain.pem",
        "--writer", "publisher"])
    assert res.exit_code == 3, res.output
    assert "--cert" in res.output and "inside --root" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("size", ["0", "00", "0g", "0K"])
def test_a_body_size_of_zero_is_no_limit_and_refused(size: str) -> None:
    """client_max_body_size 0 turns nginx's limit off: one upload could fill the disk."""
    with pytest.raises(ConfigError, match="above 0"):
        render(replace(SITE, max_body_size=size))
    assert "client_max_body_size 1k;" in render(replace(SITE, max_body_size="1k"))


@pytest.mark.parametrize("listen", ["0", "99999", "1.2.3.4.5:443", "999.1.1.1:443",
                                    "[::zz]:443", "[1::2::3]:443"])
def test_a_listen_nginx_refuses_is_refused_here(listen: str) -> None:
    """Each rendered a site that nginx -t refused ("invalid port", "host not found")."""
    with pytest.raises(ConfigError, match="--listen"):
        render(replace(SITE, listen=(listen,)))


@pytest.mark.parametrize("name", ["*", "*x", "a*"])
def test_a_server_name_nginx_refuses_is_refused_here(name: str) -> None:
    with pytest.raises(ConfigError, match="--server-name"):
        render(replace(SITE, server_names=(name,)))


def test_listens_and_names_nginx_takes() -> None:
    text = render(replace(SITE, listen=("8443", "192.0.2.1:443", "[2001:db8::1]:443",
                                        "*:444"),
                          server_names=("*.example.net", "[2001:db8::1]", "boot")))
    assert "listen [2001:db8::1]:443 ssl default_server;" in text
    assert "server_name *.example.net [2001:db8::1] boot;" in text


@pytest.mark.parametrize("option", ["--root", "--body-temp-dir", "--key", "--client-crl"])
def test_an_empty_path_is_not_the_current_directory(option: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`--root "$BOOT_ROOT"` with the variable unset gave "", which became the directory
    the command ran in: the site served it to anyone and took publishers' writes there."""
    monkeypatch.chdir(tmp_path)
    args = {"--root": "/srv/boot", "--cert": "/etc/tb/server.pem",
            "--key": "/etc/tb/server.key", "--client-ca": "/etc/tb/chain.pem",
            "--writer": "publisher", option: ""}
    res = CliRunner().invoke(cli, ["origin", "nginx-config", "--server-name",
                                   "boot.example.net",
                                   *[x for kv in args.items() for x in kv]])
    assert res.exit_code == 2, res.output
    assert option in res.output and "empty" in res.output
    assert str(tmp_path) not in res.output
