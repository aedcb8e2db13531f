"""A TLS front for the real RGW that injects 5xx answers and otherwise forwards each
request unchanged: same method, path, query, Host and every signed header, byte for byte
the same body. That is what keeps AWS SigV4 valid through it (the signature covers Host,
the path and the payload hash); only ``Expect``, which SigV4 never signs, and hop-by-hop
headers are dropped. It presents the same server certificate as RGW (the publish pki's
``origin``), so clients trust it exactly as they trust RGW.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-authorization", "proxy-authenticate", "expect"}
ERROR = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
         b"<Message>injected by the test proxy</Message></Error>")


@dataclass
class Burst:
    method: str  # regex on the method
    path: str  # regex searched in the path (with its query)
    count: int  # how many matching requests get ``status``
    status: int = 503
    answer: bytes = ERROR  # the body of the injected error
    # > 0: instead of an error, RGW's real answer, sent one byte every ``trickle`` seconds
    # (a slowloris origin: each read gets a byte well within any per-read timeout)
    trickle: float = 0.0
    trickle_body: bool = False  # the status line and headers at once, then the trickle
    # > 0: the trickle stops (the connection closed) after this many seconds, so a client
    # that never gives up is not held for the whole answer
    trickle_for: float = 0.0
    # the trickled answer says Connection: close (http.client then lets go of the socket
    # the body is still read from)
    close: bool = False
    # > 0: instead of an error, RGW's real answer whose TLS breaks after this many body
    # bytes: a forged record, written beneath the TLS layer (a middlebox's corruption)
    tls_break: int = 0


@dataclass
class PassState:
    upstream: tuple[str, int]
    upstream_ctx: ssl.SSLContext
    bursts: list[Burst] = field(default_factory=list)
    seen: list[tuple[str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def injected(self) -> int:
        return sum(1 for _m, _p, status in self.seen if status >= 500)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # server_close() joins the handlers, once close_connections() made each one's socket
    # fail: a trickle or a kept-alive connection would otherwise outlive its test
    block_on_close = True
    state: PassState

    def server_activate(self) -> None:
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _any(self) -> None:
        st = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with st.lock:
            burst = next((b for b in st.bursts if b.count > 0 and
                          re.fullmatch(b.method, self.command) and
                          re.search(b.path, self.path)), None)
            if burst:
                burst.count -= 1
        if burst and not burst.trickle and not burst.tls_break:
            self._answer(burst.status, [("Content-Type", "application/xml")], burst.answer)
            return
        conn = http.client.HTTPSConnection(*st.upstream, context=st.upstream_ctx,
                                           timeout=60)
        try:
            conn.putrequest(self.command, self.path, skip_host=True,
                            skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP:
                    conn.putheader(name, value)
            conn.endheaders(body if length else None)
            r = conn.getresponse()
            data = r.read()
            headers = [(k, v) for k, v in r.getheaders()
                       if k.lower() not in HOP and (k.lower() != "content-length"
                                                    or self.command == "HEAD")]
            if burst and burst.tls_break:
                self._break_tls(r.status, headers, data, burst.tls_break)
            elif burst:
                self._trickle(r.status, headers, data, burst)
            else:
                self._answer(r.status, headers, data)
        finally:
            conn.close()

    def _trickle(self, status: int, headers: list[tuple[str, str]], body: bytes,
                 burst: Burst) -> None:
        with self.server.state.lock:
            self.server.state.seen.append((self.command, self.path, status))
        head = f"HTTP/1.1 {status} OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        if self.command != "HEAD":
            head += f"Content-Length: {len(body)}\r\n"
        if burst.close:
            head += "Connection: close\r\n"
        data = (head + "\r\n").encode("latin-1") + (body if self.command != "HEAD" else b"")
        every = burst.trickle
        until = time.monotonic() + burst.trickle_for if burst.trickle_for else float("inf")
        if burst.close:
            self.close_connection = True
        try:
            if burst.trickle_body:
                self.wfile.write(data[:len(head) + 2])
                data = data[len(head) + 2:]
            for i in range(len(data)):
                if time.monotonic() >= until:
                    self.close_connection = True  # the answer cut short
                    return
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(every)
        except OSError:
            self.close_connection = True  # the client gave up: what the test wants

    def _break_tls(self, status: int, headers: list[tuple[str, str]], body: bytes,
                   after: int) -> None:
        """The head and ``after`` bytes of the body through TLS, then an application-data
        record of random bytes on the socket beneath it, which the client cannot decrypt;
        then the connection is closed."""
        self._head(status, headers, len(body))
        self.wfile.write(body[:after])
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            os.write(self.connection.fileno(), b"\x17\x03\x03\x00\x40" + os.urandom(64))

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self._head(status, headers, len(body))
        if self.command != "HEAD":
            self.wfile.write(body)

    def _head(self, status: int, headers: list[tuple[str, str]], length: int) -> None:
        """Record the answer, then send its status line and headers (with the body's
        length, but to a HEAD)."""
        with self.server.state.lock:
            self.server.state.seen.append((self.command, self.path, status))
        self.send_response_only(status)
        for k, v in headers:
            self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(length))
        self.end_headers()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _any

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def s3_passthrough(endpoint: str, *, cert: Path, key: Path, key_password: str,
                   ca: Path) -> Iterator[tuple[str, PassState]]:
    """(https://127.0.0.1:PORT, state) in front of ``endpoint``."""
    parts = urlsplit(endpoint)
    up_ctx = ssl.create_default_context(cafile=str(ca))
    state = PassState((parts.hostname or "127.0.0.1", parts.port or 443), up_ctx)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key), password=key_password)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.state = state
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.close_connections()
        server.server_close()
