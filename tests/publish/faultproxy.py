"""A small HTTPS front for fault injection: its own certificate (wrong name, expired, ...),
scripted HTTP errors, optional auth, and everything else forwarded to the real nginx
origin (with the publisher's client certificate)."""

from __future__ import annotations

import http.server
import re
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-authorization", "proxy-authenticate"}


@dataclass
class Fault:
    method: str  # regex on the method
    status: int
    count: int  # how many matching requests fail
    path: str = ".*"  # regex on the request path


@dataclass
class Delay:
    method: str  # regex on the method
    path: str  # regex on the request path
    seconds: float  # held this long before it is forwarded
    count: int = 1  # how many matching requests are held
    started: threading.Event = field(default_factory=threading.Event)  # set when one is


@dataclass
class Trickle:
    """The origin's answer to matching requests, sent a byte every ``interval`` seconds
    (each byte in time for any per-read timeout, the whole never): after a prompt head,
    or the head trickled too (``head``). The proxy stops after ``for_seconds``."""

    method: str  # regex on the method
    path: str  # regex on the request path
    head: bool = False
    interval: float = 0.5
    for_seconds: float = 20.0
    count: int = 1_000_000  # how many matching requests are trickled


_Scripted = TypeVar("_Scripted", Fault, Delay, Trickle)


@dataclass
class ProxyState:
    upstream: str
    client: httpx.Client
    faults: list[Fault] = field(default_factory=list)
    require_auth: str | None = None  # Authorization value required on write methods
    canned: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # method -> answer
    # method -> status answered before reading the body, then the connection is closed
    # (a server or middlebox that does not wait for the upload)
    early: dict[str, int] = field(default_factory=dict)
    seen: list[tuple[str, str, int]] = field(default_factory=list)
    delays: list[Delay] = field(default_factory=list)
    # path -> bytes a GET answers instead of the origin's (a cache in front serving a
    # stale copy)
    stale: dict[str, bytes] = field(default_factory=dict)
    trickles: list[Trickle] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    state: ProxyState
    base: str


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _reply(self, status: int, headers: dict[str, str] | None = None,
               body: bytes = b"", *, length: str | None = None) -> None:
        """``length``: a HEAD's Content-Length (the origin's, for a body not sent)."""
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", length or str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _take(self, scripted: Sequence[_Scripted]) -> _Scripted | None:
        """The first of ``scripted`` matching this request with a count left (used up)."""
        hit = next((x for x in scripted if x.count > 0 and re.fullmatch(x.method, self.command)
                    and re.fullmatch(x.path, self.path)), None)
        if hit is not None:
            hit.count -= 1
        return hit

    def _any(self) -> None:
        st = self.server.state
        if self.command in st.early:
            st.seen.append((self.command, self.path, st.early[self.command]))
            self.close_connection = True
            self._reply(st.early[self.command], {"Connection": "close"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with st.lock:
            fault = self._take(st.faults)
            delay = self._take(st.delays)
            trickle = self._take(st.trickles)
        if delay:
            delay.started.set()
            time.sleep(delay.seconds)
        if fault:
            st.seen.append((self.command, self.path, fault.status))
            self._reply(fault.status, body=b"injected fault\n")
            return
        if self.command in ("GET", "HEAD") and self.path in st.stale:
            st.seen.append((self.command, self.path, 200))
            self._reply(200, {"Content-Type": "application/octet-stream"}, st.stale[self.path])
            return
        if self.command in st.canned:
            status, canned = st.canned[self.command]
            st.seen.append((self.command, self.path, status))
            self._reply(status, {"Content-Type": "application/xml"}, canned)
            return
        if st.require_auth and self.command not in ("GET", "HEAD") and \
                self.headers.get("Authorization") != st.require_auth:
            st.seen.append((self.command, self.path, 401))
            self._reply(401, {"WWW-Authenticate": 'Bearer realm="origin"'})
            return
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in HOP | {"host", "authorization", "content-length"}}
        if "Destination" in headers:
            headers["Destination"] = headers["Destination"].replace(self.server.base,
                                                                    st.upstream)
        r = st.client.request(self.command, st.upstream.rstrip("/") + self.path,
                              headers=headers, content=body)
        st.seen.append((self.command, self.path, r.status_code))
        out = {k: v for k, v in r.headers.items()
               if k.lower() in ("etag", "content-type", "last-modified", "cache-control")}
        if trickle is not None:
            self._trickle(trickle, r.status_code, r.reason_phrase, out, r.content)
            return
        self._reply(r.status_code, out, r.content, length=r.headers.get("content-length")
                    if self.command == "HEAD" else None)

    def _trickle(self, trickle: Trickle, status: int, reason: str, headers: dict[str, str],
                 body: bytes) -> None:
        self.close_connection = True
        head = "".join([f"HTTP/1.1 {status} {reason}\r\n",
                        *(f"{k}: {v}\r\n" for k, v in headers.items()),
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"]).encode()
        started = time.monotonic()
        try:
            if not trickle.head:
                self.wfile.write(head)
                head = b""
            for byte in head + body:
                if time.monotonic() - started > trickle.for_seconds:
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(trickle.interval)
        except OSError:
            pass  # the client gave up: what it should do

    do_GET = do_HEAD = do_PUT = do_DELETE = do_MKCOL = do_MOVE = do_COPY = _any
    do_PROPFIND = do_OPTIONS = _any

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def fault_proxy(upstream: str, *, cert: Path, key: Path, key_password: str | None,
                ca: Path, client_cert: Path, client_key: Path,
                client_password: str) -> Iterator[tuple[str, ProxyState]]:
    up_ctx = ssl.create_default_context(cafile=str(ca))
    up_ctx.load_cert_chain(str(client_cert), str(client_key), password=client_password)
    client = httpx.Client(verify=up_ctx, trust_env=False, timeout=30)
    state = ProxyState(upstream, client)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key), password=key_password)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.state = state
    server.base = f"https://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.base, state
    finally:
        server.shutdown()
        server.server_close()
        client.close()
