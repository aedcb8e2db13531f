"""Publishing, the read-back and `origin check` through an HTTP proxy from the environment
(https_proxy / no_proxy, as curl, git and botocore take them), against a real tinyproxy:
a CONNECT tunnel with TLS to the origin end to end, the proxy's password never shown."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.publish.conftest import Nginx, Pki, ReleaseFactory, anon_get
from tests.publish.rgw import RGW, rgw  # noqa: F401  (the session fixture)
from tests.publish.test_nginx import publish
from tests.publish.test_redirects import _foreign_cert
from tests.publish.tinyproxy import PASSWORD, Tinyproxy, tinyproxy  # noqa: F401
from trustboot.cli.main import cli
from trustboot.errors import ConfigError, OperationalError, VerificationError
from trustboot.publish.proxy import proxy_for
from trustboot.publish.readback import Reader

ENTRY = b"#!ipxe\necho through a proxy\n"


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


def test_the_proxy_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert proxy_for("https", "origin.example", 443) is None
    monkeypatch.setenv("HTTPS_PROXY", "proxy.corp:3128")  # bare host:port, as curl takes it
    proxy = proxy_for("https", "origin.example", 443)
    assert proxy is not None and (proxy.host, proxy.port, proxy.headers) == \
        ("proxy.corp", 3128, {})
    assert proxy_for("http", "origin.example", 80) is None  # http_proxy is not https_proxy
    # credentials are %-decoded into Proxy-Authorization and masked when shown
    monkeypatch.setenv("https_proxy", "http://us%40er:p%3Ass:w@10.0.0.1:8080/")
    proxy = proxy_for("https", "origin.example", None)
    assert proxy is not None and proxy.port == 8080
    assert base64.b64decode(proxy.headers["Proxy-Authorization"].split()[1]) == b"us@er:p:ss:w"
    assert proxy.shown == "http://***@10.0.0.1:8080" and "p:ss" not in repr(proxy.shown)
    # no_proxy: names, domain suffixes, host:port
    monkeypatch.setenv("no_proxy", "internal.example,.lab,origin.example:8443")
    assert proxy_for("https", "internal.example", 443) is None
    assert proxy_for("https", "boot.lab", 443) is None
    assert proxy_for("https", "origin.example", 8443) is None
    assert proxy_for("https", "origin.example", 443) is not None


@pytest.mark.parametrize("value", [
    "https://user:hunter2@proxy.corp:3128",  # TLS to the proxy: not supported
    "socks5://user:hunter2@proxy.corp:1080",
    "http://user:hunter2@proxy.corp:99999",
    "http://user:hunter2@proxy.corp:3128/some/path",
    "http://user:hunter2@:3128",
    "http://user:hunter2@[proxy.corp:3128",  # urlsplit's ValueError: exit 70 before
    "http://user:hunter2@[proxy.corp]:3128",
])
def test_a_proxy_that_is_not_http_host_port_is_refused_without_its_password(
        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("https_proxy", value)
    with pytest.raises(ConfigError) as caught:
        proxy_for("https", "origin.example", 443)
    text = f"{caught.value.message} {caught.value.hint}"
    assert "https_proxy" in text and "http://HOST:PORT" in text
    assert "hunter2" not in text and "user" not in text


def _wait_for_connect(proxy: Tinyproxy, before: int, target: str) -> list[str]:
    """The CONNECTs logged since ``before``, once ``target`` is among them (the proxy logs
    a request as it takes it; a short wait covers the write reaching the file)."""
    deadline = time.monotonic() + 5
    while target not in (new := proxy.connects()[before:]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return new


def _check(pki: Pki, url: str) -> Result:
    return CliRunner().invoke(cli, ["origin", "check", url, "--pki", str(pki.dir),
                                    "--signer", "boot-signer", "--json"])


def test_publish_and_check_through_a_proxy(pki: Pki, nginx: Nginx, tinyproxy: Tinyproxy,  # noqa: F811
                                           make_release: ReleaseFactory,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    origin = f"127.0.0.1:{nginx.port}"
    monkeypatch.setenv("https_proxy", tinyproxy.url())
    before = len(tinyproxy.connects())
    res = publish(pki, make_release({"boot.ipxe": ENTRY, "vmlinuz": b"k" * 300_000}),
                  nginx.url, "r1")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["readback"] == "https"
    assert anon_get(nginx.url + "boot.ipxe", pki).content == ENTRY
    # uploads (httpcore) and the read-back (http.client) both went through the tunnel
    assert origin in _wait_for_connect(tinyproxy, before, origin)
    assert PASSWORD not in res.output

    before = len(tinyproxy.connects())
    res = _check(pki, nginx.url + "boot.ipxe")
    assert res.exit_code == 0, res.output
    # TLS end to end: the origin's own chain, as iPXE would see it, not the proxy's
    assert json.loads(res.output)["chain"][0]["subject"] == "CN=origin"
    assert origin in _wait_for_connect(tinyproxy, before, origin)


# (an address range, as curl reads no_proxy: the proxy is never asked to CONNECT,
# never sent the proxy credentials)
@pytest.mark.parametrize("no_proxy", ["localhost,127.0.0.1", "intranet.example, 127.0.0.0/8"])
def test_no_proxy_goes_direct(pki: Pki, nginx: Nginx, tinyproxy: Tinyproxy,  # noqa: F811
                              make_release: ReleaseFactory,
                              monkeypatch: pytest.MonkeyPatch, no_proxy: str) -> None:
    monkeypatch.setenv("https_proxy", tinyproxy.url())
    monkeypatch.setenv("no_proxy", no_proxy)
    before = len(tinyproxy.connects())
    res = publish(pki, make_release({"boot.ipxe": ENTRY}), nginx.url, "r1")
    assert res.exit_code == 0, res.output
    assert _check(pki, nginx.url + "boot.ipxe").exit_code == 0
    time.sleep(0.3)
    assert tinyproxy.connects()[before:] == []


def test_a_proxy_that_refuses_fails_the_run_naming_it_not_its_password(
        pki: Pki, nginx: Nginx, tinyproxy: Tinyproxy,  # noqa: F811
        make_release: ReleaseFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", tinyproxy.url("wrong-secret-77"))
    res = publish(pki, make_release({"boot.ipxe": ENTRY}), nginx.url, "r1", "--retries", "0")
    assert res.exit_code == 1, res.output
    shown = f"http://***@127.0.0.1:{tinyproxy.port}"
    assert shown in res.output and "wrong-secret-77" not in res.output
    # the uploads went to the proxy too: nothing reached the origin, not even a release dir
    assert anon_get(nginx.url + "boot.ipxe", pki).status_code == 404
    assert anon_get(nginx.url + "releases/r1/boot.ipxe", pki).status_code == 404

    res = _check(pki, nginx.url + "boot.ipxe")
    assert res.exit_code == 1, res.output
    assert shown in res.output and "wrong-secret-77" not in res.output


def test_s3_publish_through_a_proxy(pki: Pki, tinyproxy: Tinyproxy,  # noqa: F811
                                    rgw: RGW, make_release: ReleaseFactory,  # noqa: F811
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's reading of the same variables, through the deadline sender's own pools."""
    pytest.importorskip("boto3", reason="needs boto3 (pip install 'trustboot[s3]')")
    bucket = f"tb-proxy-{os.getpid()}"
    rgw.client().create_bucket(Bucket=bucket)
    monkeypatch.setenv("TB_TEST_S3_PROXY_CREDS", f"{rgw.access_key}:{rgw.secret_key}")
    monkeypatch.setenv("https_proxy", tinyproxy.url())
    release = make_release({"boot.ipxe": ENTRY, "vmlinuz": b"s3" * 100_000})

    def run(release_id: str, *extra: str) -> Result:
        return CliRunner().invoke(cli, [
            "publish", str(release), f"s3://{bucket}/boot", "--release-id", release_id, "--pki",
            str(pki.dir), "--endpoint-url", rgw.endpoint, "--credentials-env",
            "TB_TEST_S3_PROXY_CREDS", "--signer", "boot-signer", "--json", *extra])

    before = len(tinyproxy.connects())
    res = run("r1")
    assert res.exit_code == 0, res.output
    store = rgw.endpoint.removeprefix("https://")
    assert store in _wait_for_connect(tinyproxy, before, store)
    assert PASSWORD not in res.output

    monkeypatch.setenv("https_proxy", tinyproxy.url("wrong-secret-77"))
    res = run("r2", "--retries", "0")
    assert res.exit_code == 1, res.output
    assert "wrong-secret-77" not in res.output
    # the uploads went to the proxy too (not only the read-back): nothing of r2 is stored
    monkeypatch.delenv("https_proxy")  # (the test's own boto3 client takes it too)
    listed = rgw.client().list_objects_v2(Bucket=bucket, Prefix="boot/releases/r2/")
    assert listed.get("KeyCount", 0) == 0


def _accepting(listener: socket.socket, stop: threading.Event,
               handle: Callable[[socket.socket], None]) -> threading.Thread:
    """A started thread handing each connection ``listener`` (with a short timeout)
    accepts to ``handle``, on a thread of its own, until ``stop``."""
    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def mitm_proxy(tmp_path: Path) -> Iterator[str]:
    """A hostile proxy: it accepts any CONNECT, then answers the TLS handshake itself with
    a certificate for 127.0.0.1 from a CA of its own. Its URL."""
    cert, key = _foreign_cert(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                part = conn.recv(4096)
                if not part:
                    break
                head += part
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
            except (OSError, ssl.SSLError):
                pass  # the client refused our certificate: as it should

    thread = _accepting(listener, stop, answer)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    listener.close()


def test_a_proxy_cannot_answer_for_the_origin(pki: Pki, nginx: Nginx, mitm_proxy: str,
                                              make_release: ReleaseFactory,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", mitm_proxy)
    url = nginx.url + "boot.ipxe"
    with Reader(ca_file=pki.ca, retries=0) as reader, \
            pytest.raises(VerificationError) as err:
        reader.fetch(url, max_size=1 << 20)
    assert err.value.rule == "origin-tls" and "does not verify" in err.value.message
    # the uploads (httpcore's tunnel) verify the origin the same way: exit 4, nothing sent
    res = publish(pki, make_release({"boot.ipxe": ENTRY}), nginx.url, "r1", "--retries", "0")
    assert res.exit_code == 4, res.output
    assert "does not verify" in res.output
    res = _check(pki, url)
    assert res.exit_code == 4, res.output
    assert json.loads(res.stdout)["tls_error"].startswith("certificate does not verify")


def test_a_proxy_that_trickles_its_answer_is_cut_at_the_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A CONNECT answered one header line every 0.2 s, forever (each read in time for
    the per-read timeout): the fetch ends at its deadline, naming the proxy."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n")
            while not stop.is_set():
                conn.sendall(b"X-Wait: 1\r\n")
                time.sleep(0.2)

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    try:
        with Reader(unsafe_no_verify=True, retries=0, timeout=2) as reader, \
                pytest.raises(OperationalError) as err:
            reader.fetch("https://origin.invalid/boot.ipxe", max_size=1024)
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - start < 10
    assert "served too slowly" in err.value.message
    assert f"(through the proxy http://127.0.0.1:{port})" in err.value.message


@pytest.mark.parametrize(("no_proxy", "host", "port", "direct"), [
    # a default port left out of the URL (httpx and urlsplit give None) is still that port
    ("origin.example:443", "origin.example", None, True),
    ("origin.example:443", "origin.example", 8443, False),
    # IPv6 entries, with or without brackets, with a port only in brackets
    ("::1", "::1", 8443, True),
    ("[::1]", "::1", None, True),
    ("[::1]:8443", "::1", 8443, True),
    ("fd00::/8", "fd00::7", 443, True),
    # CIDR ranges, as curl takes them; an address is never matched as a domain suffix
    ("10.0.0.0/8", "10.1.2.3", 443, True),
    ("0.1", "10.0.0.1", 443, False),
    ("192.168.1.0/24", "192.168.2.1", 443, False),
    # names: the name and its subdomains, a leading dot or not; never a longer name
    (".example.com", "example.com", 443, True),
    ("example.com", "boot.EXAMPLE.com", 443, True),
    ("example.com", "badexample.com", 443, False),
    ("*", "anything.example", 443, True),
    ("foo,*", "anything.example", 443, False),  # '*' counts alone only (curl)
])
def test_no_proxy_as_curl_reads_it(monkeypatch: pytest.MonkeyPatch, no_proxy: str, host: str,
                                   port: int | None, direct: bool) -> None:
    monkeypatch.setenv("https_proxy", "http://proxy.corp:3128")
    monkeypatch.setenv("no_proxy", no_proxy)
    if direct:
        assert proxy_for("https", host, port) is None
    elif ":" in host:
        with pytest.raises(ConfigError):
            proxy_for("https", host, port)
    else:
        assert proxy_for("https", host, port) is not None


def test_lowercase_proxy_variables_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://upper.corp:1")
    monkeypatch.setenv("NO_PROXY", "origin.example")
    assert proxy_for("https", "origin.example", None) is None
    assert proxy_for("https", "other.example", None) == proxy_for("https", "x.example", 443)
    monkeypatch.setenv("https_proxy", "http://lower.corp:2")
    monkeypatch.setenv("no_proxy", "other.example")
    proxy = proxy_for("https", "origin.example", None)
    assert proxy is not None and (proxy.host, proxy.port) == ("lower.corp", 2)
    assert proxy_for("https", "other.example", None) is None


def test_an_ipv6_origin_through_a_proxy_is_refused_with_the_way_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.11's http.client and httpcore write "CONNECT ::1:443" (and a server name
    without brackets): no proxy opens that tunnel; say so instead of the proxy's 400."""
    monkeypatch.setenv("https_proxy", "http://proxy.corp:3128")
    with pytest.raises(ConfigError) as err:
        proxy_for("https", "::1", None)
    assert "no_proxy" in (err.value.hint or "")
    with Reader(unsafe_no_verify=True, retries=0, timeout=2) as reader, \
            pytest.raises(ConfigError):
        reader.fetch("https://[::1]:8443/boot.ipxe", max_size=10)


def test_the_proxy_password_is_in_no_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "http://user:hunter2@proxy.corp:3128")
    proxy = proxy_for("https", "origin.example", None)
    assert proxy is not None and proxy.headers
    encoded = proxy.headers["Proxy-Authorization"].split()[1]
    assert "hunter2" not in repr(proxy) and encoded not in repr(proxy)


def test_s3_no_proxy_is_read_as_for_the_other_origins(
        pki: Pki, tinyproxy: Tinyproxy, rgw: RGW,  # noqa: F811
        make_release: ReleaseFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's own reading of no_proxy knows no address ranges: the uploads went to
    the proxy while the read-back went direct."""
    pytest.importorskip("boto3", reason="needs boto3 (pip install 'trustboot[s3]')")
    bucket = f"tb-noproxy-{os.getpid()}"
    rgw.client().create_bucket(Bucket=bucket)
    monkeypatch.setenv("TB_TEST_S3_PROXY_CREDS", f"{rgw.access_key}:{rgw.secret_key}")
    monkeypatch.setenv("https_proxy", tinyproxy.url())
    monkeypatch.setenv("no_proxy", "127.0.0.0/8")
    before = len(tinyproxy.connects())
    res = CliRunner().invoke(cli, [
        "publish", str(make_release({"boot.ipxe": ENTRY})), f"s3://{bucket}/boot",
        "--release-id", "r1", "--pki", str(pki.dir), "--endpoint-url", rgw.endpoint,
        "--credentials-env", "TB_TEST_S3_PROXY_CREDS", "--signer", "boot-signer", "--json"])
    assert res.exit_code == 0, res.output
    time.sleep(0.3)
    assert tinyproxy.connects()[before:] == []


@pytest.fixture
def dripper() -> Iterator[tuple[int, list[bytes]]]:
    """A server that, once a client speaks, answers one piece every 0.2 s for 20 s: as a
    proxy, a CONNECT reply whose headers never end; as an origin, a TLS handshake
    record (16 KiB long) that never completes. (port, what it was sent first)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    heard: list[bytes] = []

    def drip(conn: socket.socket) -> None:
        with conn:
            first = conn.recv(4096)
            heard.append(first)
            proxy = first.startswith(b"CONNECT")
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n" if proxy
                         else b"\x16\x03\x03\x40\x00")
            started = time.monotonic()
            while not stop.is_set() and time.monotonic() - started < 20:
                try:
                    conn.sendall(b"X-Wait: 1\r\n" if proxy else b"\x02")
                except OSError:
                    return  # the client gave up: as it should
                time.sleep(0.2)

    thread = _accepting(listener, stop, drip)
    yield listener.getsockname()[1], heard
    stop.set()
    thread.join(5)
    listener.close()


@pytest.mark.parametrize("via", ["proxy", "origin"])
def test_origin_check_ends_when_the_handshake_trickles(
        pki: Pki, dripper: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch,
        via: str) -> None:
    """`origin check` (a monitor, run from cron) opens its connection before any GET:
    the proxy's CONNECT answer had only the per-read timeout, so a proxy sending a header
    line in time for each read held it for as long as it liked. Now the tunnel and the TLS
    handshake end within --timeout in all, an operational failure (exit 1)."""
    port, heard = dripper
    if via == "proxy":
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
        url = "https://origin.invalid/boot.ipxe"
    else:
        url = f"https://127.0.0.1:{port}/boot.ipxe"
    started = time.monotonic()
    res = CliRunner().invoke(cli, ["origin", "check", url, "--pki", str(pki.dir),
                                   "--timeout", "2", "--json"])
    took = time.monotonic() - started
    assert heard, "the client never reached the server"
    assert res.exit_code == 1, res.output
    assert took < 10, f"origin check took {took:.0f} s"
    error = json.loads(res.stdout)["tls_error"]
    if via == "proxy":  # the CONNECT answer has no timeout of its own: the watchdog's
        assert "were not done after 2 s" in error
    else:  # the handshake's socket timeout and the watchdog both fire at 2 s: either wins
        assert "timed out" in error or "were not done after 2 s" in error, error
