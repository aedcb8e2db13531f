"""The WebDAV transport is built from public httpx/httpcore API only (a future httpx may
rename its internals), and behaves like httpx's own transport: against real nginx, with
the request's extensions (timeouts, sni_hostname) and httpx's exception types (which
``with_retries`` relies on)."""

from __future__ import annotations

import ast
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import trustboot.publish.deadline
import trustboot.publish.http
from tests.publish.conftest import Nginx, Pki
from trustboot.errors import OperationalError
from trustboot.publish.deadline import total_deadline
from trustboot.publish.http import deadline_transport, tls_context, tls_failure, with_retries

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
