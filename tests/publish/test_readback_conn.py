"""The read-back's keep-alive connections: a server that drops an idle connection does
not fail the next fetch (one immediate retry on a new connection, not a counted retry)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator

import pytest

from trustboot.publish.readback import Reader

BODY = b"#!ipxe\necho keep-alive\n" * 100


class _DropsAfterEachAnswer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # answers look keep-alive; the socket is closed anyway

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def dropping_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DropsAfterEachAnswer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/boot.ipxe"
    finally:
        server.shutdown()
        server.server_close()


def test_a_dropped_keep_alive_connection_is_reopened(dropping_server: str) -> None:
    with Reader(unsafe_http=True, unsafe_no_verify=True, retries=0) as reader:
        for _ in range(3):
            served = reader.stream(dropping_server, max_size=1 << 20)
            assert served.sha256 == hashlib.sha256(BODY).hexdigest()
            assert served.size == len(BODY)
