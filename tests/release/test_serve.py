"""The demo's short-lived HTTPS origin on 127.0.0.1, as another local user finds it: any
process on the host can connect to its port (listed in /proc/net/tcp)."""

from __future__ import annotations

import http.client
import socket
import ssl
from pathlib import Path

import pytest

from tests.release.conftest import serve_over_https


def _get(port: int, ca: Path, path: str) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_a_connection_that_never_says_hello_does_not_stall_the_origin(
        session_ca: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # The TLS handshake ran in the accept loop: one connection sending nothing (another
    # user's) stopped every later fetch, and the demo's read-back hung for good.
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "boot.ipxe").write_bytes(b"#!ipxe\n")
    with serve_over_https(session_ca, origin, tmp_path / "scratch") as port, \
            socket.create_connection(("127.0.0.1", port)) as silent, \
            socket.create_connection(("127.0.0.1", port)) as garbage:
        garbage.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not TLS: refused in its own thread
        for _ in range(3):
            assert _get(port, session_ca / "ca.crt", "/boot.ipxe") == (200, b"#!ipxe\n")
        assert silent.fileno() >= 0
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err  # the library never prints
