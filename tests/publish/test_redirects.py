"""The read-back follows redirects as iPXE does (any 3xx with a Location, resolved
against the URL that answered), TLS-verifying every hop with the same roots, and refuses
a hop that leaves https://, a loop and an over-long chain, naming the chain.

Against a real nginx ("the redirector", same CA as the session's WebDAV origin) that
answers 301/302/307 to another path on itself, to the session's nginx (a second origin),
in a loop, to plain http:// (a server block of its own) and to a server block whose
certificate comes from another CA."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.publish.conftest import (
    Nginx,
    Pki,
    ReleaseFactory,
    free_port,
    start_nginx,
    stop_nginx,
)
from tests.publish.test_faults import publish
from trustboot.cli.main import cli
from trustboot.errors import OperationalError, VerificationError
from trustboot.publish.readback import MAX_REDIRECTS, Reader

BODY = b"served at the end of the chain\n" * 100


@dataclass
class Redirector:
    url: str  # https://127.0.0.1:PORT/ (a certificate from the test CA)
    root: Path  # served under /files/
    http_port: int
    foreign_port: int


def _foreign_cert(base: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: a CA the read-back does not trust."""
    cert, key = base / "foreign.crt", base / "foreign.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True,
                   capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def redirector(pki: Pki, nginx_origin: Nginx, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Redirector]:
    """A second nginx (started as the session's, see start_nginx) whose extra server
    blocks redirect: on its TLS port, to /files/ on itself, to the session's nginx, in a
    loop, too often, off https; and two more ports serving /files/: plain HTTP, and TLS
    with a certificate from another CA."""
    base = tmp_path_factory.mktemp("redirector")
    root = base / "redirects"
    (root / "files").mkdir(parents=True)
    foreign_crt, foreign_key = _foreign_cert(base)
    port, http_port, foreign_port = free_port(), free_port(), free_port()
    hops = "\n".join(f"        location ~ ^/hop{n}/(.*)$ {{ return 302 /hop{n - 1}/$1; }}"
                     for n in range(2, MAX_REDIRECTS + 2))
    servers = f"""\
    server {{
        listen 127.0.0.1:{port} ssl;
        root {root};
        ssl_certificate {nginx_origin.base / "server-chain.pem"};
        ssl_certificate_key {pki.key("origin")};
        ssl_password_file {pki.key_pass};
        location /files/ {{ }}
        location ~ ^/r301/(.*)$ {{ return 301 /files/$1; }}
        location ~ ^/r302/(.*)$ {{ return 302 /files/$1; }}
        location ~ ^/r307/(.*)$ {{ return 307 /files/$1; }}
        location ~ ^/r404/(.*)$ {{ add_header Location /files/$1 always; return 404; }}
        location ~ ^/relative/(.*)$ {{ absolute_redirect off; return 302 ../files/$1; }}
        location ~ ^/other/(.*)$ {{ return 302 https://$host:{nginx_origin.port}/$1; }}
        location ~ ^/twice/(.*)$ {{ return 302 /other/$1; }}
        location ~ ^/loop/(.*)$ {{ return 302 /loop2/$1; }}
        location ~ ^/loop2/(.*)$ {{ return 302 /loop/$1; }}
        location ~ ^/hop1/(.*)$ {{ return 302 /files/$1; }}
{hops}
        location ~ ^/plain/(.*)$ {{ return 302 http://$host:{http_port}/files/$1; }}
        location ~ ^/ftp/(.*)$ {{ return 302 ftp://127.0.0.1/files/$1; }}
        location ~ ^/foreign/(.*)$ {{ return 302 https://127.0.0.1:{foreign_port}/files/$1; }}
        location /nolocation/ {{ return 302; }}
        location /nonascii/ {{ return 302 "/f\u00efles/a"; }}
        location /spaces/ {{ return 302 "/files/a b"; }}
        location /badport/ {{ return 302 "https://127.0.0.1:99999/files/a"; }}
        location /notaport/ {{ return 302 "https://127.0.0.1:x/files/a"; }}
        location /badv6/ {{ return 302 "https://[::1/files/a"; }}
    }}
    server {{
        listen 127.0.0.1:{http_port};
        root {root};
        location /files/ {{ }}
    }}
    server {{
        listen 127.0.0.1:{foreign_port} ssl;
        root {root};
        ssl_certificate {foreign_crt};
        ssl_certificate_key {foreign_key};
        location /files/ {{ }}
    }}
"""
    n = start_nginx(pki, base / "nginx", main_extra=servers)
    try:
        yield Redirector(f"https://127.0.0.1:{port}/", root / "files", http_port,
                         foreign_port)
    finally:
        stop_nginx(n)


@pytest.fixture
def served(redirector: Redirector, nginx: Nginx) -> str:
    """BODY as "a" on the redirector's /files/ and at the root of the session's nginx."""
    (redirector.root / "a").write_bytes(BODY)
    (nginx.root / "a").write_bytes(BODY)
    return hashlib.sha256(BODY).hexdigest()


@pytest.mark.parametrize("path", ["r301", "r302", "r307", "r404", "relative", "hop1",
                                  f"hop{MAX_REDIRECTS}"])
def test_follows_a_redirect_on_the_same_origin(pki: Pki, redirector: Redirector,
                                               served: str, path: str) -> None:
    with Reader(ca_file=pki.ca, retries=0) as reader:
        got = reader.stream(f"{redirector.url}{path}/a", max_size=len(BODY))
        assert reader.fetch(f"{redirector.url}{path}/a", max_size=len(BODY)) == BODY
    assert (got.size, got.sha256) == (len(BODY), served)
    assert got.url == f"{redirector.url}files/a"  # what was judged: the last URL's bytes


@pytest.mark.parametrize("path", ["other", "twice"])
def test_follows_a_redirect_to_a_second_origin_of_the_same_ca(
        pki: Pki, redirector: Redirector, nginx: Nginx, served: str, path: str) -> None:
    with Reader(ca_file=pki.ca, retries=0) as reader:
        got = reader.stream(f"{redirector.url}{path}/a", max_size=len(BODY))
    assert got.url == f"{nginx.url}a" and got.sha256 == served


def test_caps_apply_at_the_end_of_the_chain(pki: Pki, redirector: Redirector,
                                            served: str) -> None:
    with Reader(ca_file=pki.ca, retries=0) as reader, \
            pytest.raises(OperationalError) as err:
        reader.fetch(f"{redirector.url}r302/a", max_size=len(BODY) - 1)
    assert f"{redirector.url}files/a is larger than {len(BODY) - 1} bytes" in err.value.message
    assert f"reached by redirect: {redirector.url}r302/a -> {redirector.url}files/a" \
        in err.value.message


def test_a_loop_is_an_error_naming_the_chain(pki: Pki, redirector: Redirector,
                                             served: str) -> None:
    with Reader(ca_file=pki.ca, retries=0) as reader, \
            pytest.raises(OperationalError) as err:
        reader.stream(f"{redirector.url}loop/a", max_size=len(BODY))
    u = redirector.url
    assert err.value.exit_code == 1
    assert err.value.message == (f"{u}loop/a redirects in a loop: {u}loop/a -> {u}loop2/a "
                                 f"-> {u}loop/a")


def test_too_many_hops_is_an_error(pki: Pki, redirector: Redirector, served: str) -> None:
    with Reader(ca_file=pki.ca, retries=0) as reader, \
            pytest.raises(OperationalError, match=f"redirects more than {MAX_REDIRECTS} "
                                                  "times: .*hop1/a -> .*/files/a$"):
        reader.stream(f"{redirector.url}hop{MAX_REDIRECTS + 1}/a", max_size=len(BODY))


@pytest.mark.parametrize("path,scheme", [("plain", "http"), ("ftp", "ftp")])
def test_a_hop_off_https_is_refused(pki: Pki, redirector: Redirector, served: str,
                                    path: str, scheme: str) -> None:
    with Reader(ca_file=pki.ca, retries=0) as reader, \
            pytest.raises(VerificationError) as err:
        reader.stream(f"{redirector.url}{path}/a", max_size=len(BODY))
    assert err.value.exit_code == 4 and err.value.rule == "origin-redirect"
    assert err.value.message.startswith(f"{redirector.url}{path}/a redirects (HTTP 302) to "
                                        f"{scheme}://127.0.0.1")
    assert "not https://" in err.value.message
    assert err.value.hint is not None and "without TLS" in err.value.hint


def test_a_hop_to_plain_http_is_followed_with_unsafe_http(pki: Pki, redirector: Redirector,
                                                          served: str) -> None:
    with Reader(ca_file=pki.ca, retries=0, unsafe_http=True) as reader:
        got = reader.stream(f"{redirector.url}plain/a", max_size=len(BODY))
    assert got.url == f"http://127.0.0.1:{redirector.http_port}/files/a"


def test_a_hop_to_another_ca_does_not_verify(pki: Pki, redirector: Redirector,
                                             served: str) -> None:
    with Reader(ca_file=pki.ca, retries=0) as reader, \
            pytest.raises(VerificationError) as err:
        reader.stream(f"{redirector.url}foreign/a", max_size=len(BODY))
    assert err.value.rule == "origin-tls"
    hop = f"https://127.0.0.1:{redirector.foreign_port}/files/a"
    assert err.value.message.startswith(f"the TLS certificate of {hop} does not verify")
    assert f"reached by redirect: {redirector.url}foreign/a -> {hop}" in err.value.message


@pytest.mark.parametrize("path", ["nonascii", "spaces", "badport", "notaport", "badv6"])
def test_a_location_that_is_no_url_is_an_error(pki: Pki, redirector: Redirector,
                                               path: str) -> None:
    """(A port beyond 65535 or no number, an unclosed IPv6 bracket: urllib's ValueError
    was an internal error, exit 70, for an origin check a monitor runs.)"""
    with Reader(ca_file=pki.ca, retries=0) as reader, \
            pytest.raises(OperationalError) as err:
        reader.stream(f"{redirector.url}{path}/a", max_size=10)
    assert err.value.exit_code == 1
    assert err.value.message.startswith(f"{redirector.url}{path}/a redirects (HTTP 302) to ")
    assert "which is not a valid URL" in err.value.message
    assert err.value.message.isascii() and err.value.message.isprintable()


def test_a_redirect_without_location_is_an_http_error(pki: Pki, redirector: Redirector
                                                      ) -> None:
    with Reader(ca_file=pki.ca, retries=0) as reader, \
            pytest.raises(OperationalError, match="HTTP 302"):
        reader.stream(f"{redirector.url}nolocation/a", max_size=10)


def test_publish_reads_back_through_a_redirecting_public_url(
        pki: Pki, redirector: Redirector, nginx: Nginx, make_release: ReleaseFactory) -> None:
    """The origin's public URL redirects every object to the WebDAV origin (a CDN in
    front of it, say): the release verifies; and `origin check` follows the same way."""
    r = make_release({"boot.ipxe": b"#!ipxe\necho redirected\n", "vmlinuz": b"k" * 5000})
    res = publish(pki, r, nginx.url, "r1", "--public-url", redirector.url + "other/")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["release"] == "r1"
    res = CliRunner().invoke(cli, ["origin", "check", redirector.url + "other/boot.ipxe",
                                   "--pki", str(pki.dir), "--signer", "boot-signer",
                                   "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["served_from"] == nginx.url + "boot.ipxe"
    res = CliRunner().invoke(cli, ["origin", "check", redirector.url + "other/boot.ipxe",
                                   "--pki", str(pki.dir)])
    assert res.exit_code == 0, res.output
    assert f"served from: {nginx.url}boot.ipxe (redirected)" in res.output
    # a public URL that leaves https on the way: nothing is switched, exit 4
    res = publish(pki, r, nginx.url, "r2", "--public-url", redirector.url + "plain/")
    assert res.exit_code == 4, res.output
    assert "not https://" in res.output


@pytest.mark.ipxe
@pytest.mark.slow
def test_real_ipxe_boots_through_the_redirect_the_readback_followed(
        pki: Pki, redirector: Redirector, nginx: Nginx, make_release: ReleaseFactory,
        tmp_path: Path) -> None:
    """What the read-back accepted, real iPXE boots: its chain URL on the redirector
    answers 302 to the WebDAV origin (from the guest, 10.0.2.2 is the host). A redirect to
    a server whose certificate is from another CA: the read-back refuses it, and so does
    iPXE (the marker never appears). A redirect to plain http://: iPXE follows it."""
    from tests.ipxe_qemu import DONE_MARKER, boot, chain_firmware, ipxe_src_or_skip

    src = ipxe_src_or_skip()
    entry = f"#!ipxe\necho MARKER-REDIRECTED\necho {DONE_MARKER}\n".encode()
    r = make_release({"boot.ipxe": entry})
    res = publish(pki, r, nginx.url, "r1", "--public-url", redirector.url + "other/")
    assert res.exit_code == 0, res.output
    guest = redirector.url.replace("127.0.0.1", "10.0.2.2")
    stops = (DONE_MARKER, "Could not", "stopping")
    lkrn = chain_firmware(src, pki.dir, f"{guest}other/boot.ipxe", tmp_path / "fw")
    console = boot(lkrn, {}, "#!ipxe\n", restrict=False, stop_on=stops, timeout=150)
    assert "MARKER-REDIRECTED" in console, console

    for name in ("boot.ipxe", "boot.ipxe.sig"):
        (redirector.root / name).write_bytes((r / name).read_bytes())
    with Reader(ca_file=pki.ca, retries=0) as reader, pytest.raises(VerificationError):
        reader.stream(f"{redirector.url}foreign/boot.ipxe", max_size=1 << 20)
    lkrn = chain_firmware(src, pki.dir, f"{guest}foreign/boot.ipxe", tmp_path / "fw2")
    console = boot(lkrn, {}, "#!ipxe\n", restrict=False, stop_on=stops, timeout=150)
    assert "MARKER-REDIRECTED" not in console, console
    assert "Could not" in console or "stopping" in console, console

    # iPXE itself follows a redirect off https (and the image still verifies): the
    # read-back's refusal of such a hop is the project's rule, not iPXE's
    with Reader(ca_file=pki.ca, retries=0) as reader, pytest.raises(VerificationError):
        reader.stream(f"{redirector.url}plain/boot.ipxe", max_size=1 << 20)
    lkrn = chain_firmware(src, pki.dir, f"{guest}plain/boot.ipxe", tmp_path / "fw3")
    console = boot(lkrn, {}, "#!ipxe\n", restrict=False, stop_on=stops, timeout=150)
    assert "MARKER-REDIRECTED" in console, console
