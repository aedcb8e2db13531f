"""The read-back's keep-alive connections: a server that drops an idle connection does
not fail the next fetch (one immediate retry on a new connection, not a counted retry)."""

from __future__ import annotations

import hashlib
import http.server
import time
import tracemalloc
from collections.abc import Iterator
from typing import ClassVar

import pytest

from tests.publish.conftest import gzip_of_zeros, http_server
from trustboot.errors import OperationalError
from trustboot.publish.origin import NotServed
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
    with http_server(_DropsAfterEachAnswer) as url:
        yield url + "boot.ipxe"


def test_a_dropped_keep_alive_connection_is_reopened(dropping_server: str) -> None:
    with Reader(unsafe_http=True, unsafe_no_verify=True, retries=0) as reader:
        for _ in range(3):
            served = reader.stream(dropping_server, max_size=1 << 20)
            assert served.sha256 == hashlib.sha256(BODY).hexdigest()
            assert served.size == len(BODY)


class _Trickles(http.server.BaseHTTPRequestHandler):
    """A hostile origin: every byte of the answer (headers too, for /slow-head) arrives
    in time for the per-read timeout, but the whole never does (slowloris)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        # /close: the answer says the connection closes after it (then http.client lets
        # go of the socket it is read from); given up trickling after 10 s
        head = (b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n%s\r\n"
                % (b"Connection: close\r\n" if self.path == "/close" else b""))
        try:
            if self.path == "/slow-head":
                for byte in head:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
            self.wfile.write(head)
            for _ in range(50 if self.path == "/close" else 100000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # the client gave up: what it should do

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("how", ["stream", "fetch", "slow-head", "close"])
def test_an_origin_trickling_its_answer_is_given_up_on(how: str) -> None:
    """/close: the watchdog shut down the connection's socket, which http.client drops
    (conn.sock None) once an answer says Connection: close: such a body was never cut,
    whatever its deadline."""
    with http_server(_Trickles) as base, Reader(
            unsafe_http=True, unsafe_no_verify=True, retries=2, timeout=1.0,
            min_rate=50_000) as reader:
        url = base + how
        started = time.monotonic()
        with pytest.raises(OperationalError, match="too slowly"):
            if how == "fetch":
                reader.fetch(url, max_size=100_000)
            else:
                reader.stream(url, max_size=100_000)
        # budget: timeout + max_size / min_rate = 3 s, never retried
        assert time.monotonic() - started < 6


class _DropsThenTrickles(_Trickles):
    """The first connection answers once, keep-alive, then hangs up on the next request
    without an answer (an idle connection dropped); every later connection trickles
    its answer a byte at a time."""

    protocol_version = "HTTP/1.1"
    connections: ClassVar[list[int]] = []

    def handle(self) -> None:
        self.connections.append(1)
        self.first = len(self.connections) == 1
        self.answered = 0
        super().handle()

    def do_GET(self) -> None:
        if self.first:
            if self.answered:
                self.close_connection = True  # hang up, no answer
                return
            self.answered += 1
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        super().do_GET()


def test_the_answer_on_a_reopened_connection_keeps_the_deadline() -> None:
    """A request whose idle keep-alive connection was dropped is sent once more on a new
    connection: that one was a new object the deadline's watchdog did not watch, so an
    origin dropping the idle connection and then trickling the answer held the
    read-back as long as it liked (the deadline was only noticed after it ended)."""
    _DropsThenTrickles.connections.clear()
    with http_server(_DropsThenTrickles) as base, Reader(
            unsafe_http=True, unsafe_no_verify=True, retries=0, timeout=1.0,
            min_rate=50_000) as reader:
        assert reader.fetch(base + "first", max_size=100_000) == b"ok"
        started = time.monotonic()
        with pytest.raises(OperationalError, match="too slowly"):
            reader.fetch(base + "second", max_size=100_000)
        # budget: timeout + max_size / min_rate = 3 s
        assert time.monotonic() - started < 8
    assert len(_DropsThenTrickles.connections) == 2


class _SlowRedirects(http.server.BaseHTTPRequestHandler):
    """/hopN redirects to /hopN-1, each answer trickled over 2 s; /hop0 is the object."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        n = int(self.path.removeprefix("/hop"))
        if n == 0:
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
            return
        answer = (f"HTTP/1.1 302 Found\r\nLocation: /hop{n - 1}\r\n"
                  "Content-Length: 0\r\n\r\n").encode()
        try:
            for byte in answer:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(2.0 / len(answer))
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


def test_a_redirect_chain_has_a_total_deadline() -> None:
    """Each hop answers within its own deadline (timeout + max_size / min_rate = 4 s),
    but the chain gets one request's budget plus ``timeout`` per hop: the fifth hop of
    2 s each is cut at about 6 s, not let run to 10 s and more."""
    with http_server(_SlowRedirects) as base, Reader(
            unsafe_http=True, unsafe_no_verify=True, retries=0, timeout=1.0,
            min_rate=50_000) as reader:
        assert reader.stream(base + "hop1", max_size=150_000).size == len(BODY)
        started = time.monotonic()
        with pytest.raises(OperationalError, match="too slowly"):
            reader.stream(base + "hop5", max_size=150_000)
        took = time.monotonic() - started
    assert 5 < took < 8, took


READBACK_BOMB = gzip_of_zeros(48 << 20)  # within the 64 KiB an error answer is read to


class _BombOn404(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.wfile.write(b"HTTP/1.1 404 Not Found\r\nContent-Encoding: gzip\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(READBACK_BOMB), READBACK_BOMB))

    def log_message(self, *args: object) -> None:
        pass


def test_an_encoded_error_answer_is_never_inflated() -> None:
    """The read-back judges a non-200 answer by its first 64 KiB, which httpx inflated:
    48 MiB of memory from a 48 KiB gzip 404 (the read-back asks for identity)."""
    with http_server(_BombOn404) as base, Reader(
            unsafe_http=True, unsafe_no_verify=True, retries=0, timeout=5.0) as reader:
        tracemalloc.start()
        try:
            with pytest.raises(NotServed):
                reader.fetch(base + "boot.ipxe", max_size=1 << 20)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak >> 20} MiB"
