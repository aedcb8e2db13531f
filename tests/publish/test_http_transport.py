"""The WebDAV transport is built from public httpx/httpcore API only (a future httpx may
rename its internals), and behaves like httpx's own transport: against real nginx, with
the request's extensions (timeouts, sni_hostname) and httpx's exception types (which
``with_retries`` relies on)."""

from __future__ import annotations

import ast
import contextlib
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

import trustboot.publish.deadline
import trustboot.publish.http
from tests.publish.conftest import Nginx, Pki
from trustboot.errors import ConfigError, OperationalError
from trustboot.publish.deadline import total_deadline
from trustboot.publish.http import (
    deadline_transport,
    loadable,
    tls_context,
    tls_failure,
    with_retries,
)

MODULES = [trustboot.publish.http, trustboot.publish.deadline]


def private_uses(source: str) -> list[str]:
    """Private names reached on anything but ``self``/``cls``: attributes, getattr-style
    string lookups and imports of private modules."""
    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "setattr", "hasattr", "delattr") \
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                and private(str(node.args[1].value)):
            found.append((node.lineno, f"{node.func.id}(..., {node.args[1].value!r})"))
        elif isinstance(node, ast.ImportFrom) and node.module and any(
                private(part) for part in node.module.split(".")):
            found.append((node.lineno, f"from {node.module}"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names
                      if any(private(p) for p in a.name.split("."))]
    return [f"line {line}: {what}" for line, what in sorted(found)]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_the_transport_uses_no_private_httpx_attribute(module: object) -> None:
    path = Path(str(getattr(module, "__file__", "")))
    assert private_uses(path.read_text()) == []


def test_the_check_finds_what_the_old_transport_did() -> None:
    # the transport this replaced swapped httpx's pool: the check must see that
    old = ('if not isinstance(getattr(transport, "_pool", None), httpcore.ConnectionPool):\n'
           '    raise RuntimeError\n'
           'transport._pool = pool\n'
           'from httpx._transports.default import map_httpcore_exceptions\n')
    assert private_uses(old) == ["line 1: getattr(..., '_pool')", "line 3: ._pool",
                                 "line 4: from httpx._transports.default"]


def client(pki: Pki, **kw: object) -> httpx.Client:
    ctx = tls_context(ca_file=pki.ca)
    return httpx.Client(transport=deadline_transport(ctx, max_connections=2),
                        trust_env=False, **kw)  # type: ignore[arg-type]


def test_requests_and_streams_against_nginx(nginx: Nginx, pki: Pki) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    (nginx.root / "blob").write_bytes(body)
    with client(pki, timeout=5.0) as c:
        r = c.get(nginx.url + "blob")
        assert (r.status_code, r.content, r.headers["content-length"]) == (
            200, body, str(len(body)))
        with c.stream("GET", nginx.url + "blob") as streamed:
            assert b"".join(streamed.iter_raw(65536)) == body
        assert c.get(nginx.url + "missing").status_code == 404


def test_sni_hostname_reaches_the_tls_handshake(nginx: Nginx, pki: Pki) -> None:
    (nginx.root / "x").write_bytes(b"x")
    # the certificate names localhost: checked against the extension, not the URL (two
    # clients: a kept-alive connection would skip the second handshake)
    with client(pki, timeout=5.0) as c:
        ok = c.get(nginx.url + "x", extensions={"sni_hostname": "localhost"})
        assert ok.content == b"x"
    with client(pki, timeout=5.0) as c:
        with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
            c.get(nginx.url + "x", extensions={"sni_hostname": "wrong.example"})


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and never answers."""
    srv = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except TimeoutError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    for s in held:
        s.close()
    srv.close()


def test_timeouts_and_errors_are_httpx_exceptions(pki: Pki, silent_server: int) -> None:
    url = f"http://127.0.0.1:{silent_server}/"
    with client(pki, timeout=httpx.Timeout(5.0, read=0.3)) as c:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):  # the client's read timeout was honoured
            c.get(url)
        assert time.monotonic() - started < 3
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with client(pki, timeout=2.0) as c:
        with pytest.raises(httpx.ConnectError):
            c.get(f"https://127.0.0.1:{port}/")
        # which with_retries turns into one OperationalError after retrying
        with pytest.raises(OperationalError, match="failed after 2 attempt"):
            with_retries(lambda: c.get(f"https://127.0.0.1:{port}/"), url="u",
                         what="fetching", retries=1, sleep=lambda _s: None)


def test_the_total_deadline_ends_a_silent_answer(pki: Pki, silent_server: int) -> None:
    with client(pki, timeout=30.0) as c:
        started = time.monotonic()
        with pytest.raises(OperationalError, match="too slowly"), total_deadline(0.5, "u"):
            c.get(f"http://127.0.0.1:{silent_server}/")
        assert time.monotonic() - started < 3


def test_a_certificate_failure_is_not_hidden(nginx: Nginx) -> None:
    other = ssl.create_default_context()  # the system store: not the origin's CA
    with httpx.Client(transport=deadline_transport(other, max_connections=1),
                      trust_env=False) as c, pytest.raises(httpx.ConnectError) as info:
        c.get(nginx.url)
    # the cause stays chained: with_retries reports it as a verification failure
    failure = tls_failure(nginx.url, info.value)
    assert failure is not None and "does not verify" in failure.message


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """TimeoutError in this (the main) thread after ``seconds``: a loop that never ends
    fails the test instead of hanging the suite."""
    def ring(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_cyclic_exception_chain_is_walked_once() -> None:
    """An exception chain can loop (an error set as the context of its own cause, as
    some library's cleanup does): looking for a certificate failure in it ends, and
    finds one that is there."""
    outer = httpx.ConnectError("outer")
    inner = OSError("inner")
    outer.__cause__ = inner
    inner.__context__ = outer
    with _alarm(5):
        assert tls_failure("https://origin.example/", outer) is None
        cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
        cert.verify_message = "unable to get local issuer certificate"
        cert.__context__ = outer
        inner.__context__ = cert
        failure = tls_failure("https://origin.example/", outer)
    assert failure is not None and failure.message.endswith(
        "does not verify: unable to get local issuer certificate"), failure


def _self_signed_pem(cn: str) -> bytes:
    import datetime as dt

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_openssl_loads_the_bytes_that_were_read_not_the_path_again(
        nginx: Nginx, pki: Pki, tmp_path: Path) -> None:
    """tls_context reads each TLS file once (capped, regular) and OpenSSL loads those
    bytes (loadable): a file swapped after the check is not what gets loaded, and the
    copy OpenSSL reads is sealed in memory, on no disk."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca.read_bytes())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with loadable(ca.read_bytes()) as path:
        ca.write_bytes(_self_signed_pem("swapped in"))  # after the check, before the load
        ctx.load_verify_locations(cafile=path)
        assert Path(path).resolve().name.startswith("memfd:")
        fd = os.open(path, os.O_WRONLY)
        try:
            with pytest.raises(PermissionError):
                os.write(fd, b"x")  # sealed: nobody changes it until OpenSSL is done
        finally:
            os.close(fd)
    assert ctx.get_ca_certs(binary_form=True) == [
        x509.load_pem_x509_certificate(pki.ca.read_bytes()).public_bytes(Encoding.DER)]
    (nginx.root / "x").write_bytes(b"x")
    with httpx.Client(transport=deadline_transport(ctx, max_connections=1),
                      trust_env=False, timeout=5.0) as c:
        assert c.get(nginx.url + "x").content == b"x"
    # tls_context itself: a CA file that is not PEM is refused naming the file, as before
    with pytest.raises(ConfigError, match=f"cannot load the origin CA {ca}"):
        ca.write_bytes(b"not a certificate")
        tls_context(ca_file=ca)


class _Opens:
    """Counts opens of files with inotify (IN_OPEN; IN_CLOSE_NOWRITE in the watch mask
    keeps two opens from merging into one event)."""

    def __init__(self, paths: list[Path]) -> None:
        import ctypes

        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = int(self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        assert self._fd >= 0
        self.by_wd = {int(self._libc.inotify_add_watch(self._fd, bytes(p), 0x20 | 0x10)): p
                      for p in paths}

    def counts(self) -> dict[str, int]:
        import struct

        out = {p.name: 0 for p in self.by_wd.values()}
        try:
            data = os.read(self._fd, 1 << 16)
        except BlockingIOError:
            data = b""
        os.close(self._fd)
        offset = 0
        while offset < len(data):
            wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
            offset += 16 + length
            if mask & 0x20:
                out[self.by_wd[wd].name] += 1
        return out


def test_each_tls_file_is_opened_once(pki: Pki, tmp_path: Path) -> None:
    """What was checked is what OpenSSL loads: tls_context opens the CA file, the client
    certificate and its key once each (it opened each again by path for OpenSSL, leaving
    a window in which the checked file could be swapped)."""
    files = {"ca.pem": pki.ca, "client.crt": pki.cert("publisher"),
             "client.key": pki.key("publisher")}
    for name, source in files.items():
        (tmp_path / name).write_bytes(source.read_bytes())
    opens = _Opens([tmp_path / name for name in files])
    ctx = tls_context(ca_file=tmp_path / "ca.pem", client_cert=tmp_path / "client.crt",
                      client_key=tmp_path / "client.key",
                      client_key_passphrase=pki.key_pass.read_bytes().strip())
    assert opens.counts() == {"ca.pem": 1, "client.crt": 1, "client.key": 1}
    assert len(ctx.get_ca_certs()) == 1
