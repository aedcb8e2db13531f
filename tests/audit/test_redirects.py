"""A boot URL's redirect is evidence, never followed: also when its Location carries bytes
strict HTTP parsers refuse (CR, ESC, NUL), which iPXE reads up to the line's end and
follows. A plain HTTP server on loopback in this process; the address check, which refuses
loopback, is stubbed as in test_fetch_deadline."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from tests.audit.test_checks import observe, rules
from trustboot.audit import follow
from trustboot.audit.follow import http_check
from trustboot.audit.policy import Policy
from trustboot.audit.rawhead import ipxe_status_location
from trustboot.audit.text import clean

Serve = Callable[[bytes], int]


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Serve]:
    """``serve(answer)``: a port whose one connection gets ``answer`` after its request."""
    monkeypatch.setattr(follow, "find_host", lambda *a, **k: follow.Found(["127.0.0.1"]))
    made: list[tuple[socket.socket, threading.Thread]] = []

    def start(answer: bytes) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(5)

        def run() -> None:
            try:
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(5)
                    conn.recv(4096)
                    conn.sendall(answer)
            except OSError:
                pass

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        made.append((listener, thread))
        return int(listener.getsockname()[1])

    yield start
    for listener, thread in made:
        thread.join(5)
        listener.close()


# (what the server sends as the Location, what iPXE reads as its target)
HOSTILE = {
    "esc": (b"http://x/\x1b]0;owned\x07\x1b[2J", "http://x/\x1b]0;owned\x07\x1b[2J"),
    "bare-cr": (b"http://x/a\rb", "http://x/a\rb"),
    "nul": (b"http://x/a\x00b", "http://x/a"),  # a C string: iPXE reads up to the NUL
}


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_redirect_with_control_characters_is_evidence(serve: Serve, kind: str) -> None:
    sent, target = HOSTILE[kind]
    port = serve(b"HTTP/1.1 302 Found\r\nLocation: " + sent
                 + b"\r\nContent-Length: 0\r\n\r\n")
    url = f"http://boot.example:{port}/boot.ipxe"
    check = http_check(url, policy=Policy(), timeout=3.0, max_size=1 << 20)
    assert not check.ok and check.status == 302, check
    assert check.location == clean(target, limit=256), check
    assert check.error is not None and "a redirect, not followed" in check.error
    [finding] = rules(observe(http=[check]))["boot-file-unverified"]
    assert finding.evidence["http"]["location"] == clean(target, limit=256)
    assert "\x1b" not in str(finding.to_json()) and "\r" not in str(finding.to_json())


def test_a_long_hostile_location_is_cut(serve: Serve) -> None:
    port = serve(b"HTTP/1.1 301 Moved\r\nLocation: http://x/" + b"\x1b" * 5000
                 + b"\r\n\r\n")
    check = http_check(f"http://boot.example:{port}/x", policy=Policy(), timeout=3.0,
                       max_size=1 << 20)
    assert check.status == 301 and check.location is not None, check
    assert check.location.endswith("...[4753 more chars]"), check.location[-40:]


@pytest.mark.parametrize(("head", "read"), [
    (b"HTTP/1.1 302 F\r\nLocation: a\r\nlocation:\t b\x1b\r\n\r\n", (302, b"b\x1b")),
    (b"HTTP/1.0 404 Not Found\nX: \x1b\n\n", (404, None)),
    (b"HTTP/1.1 302 F\r\nLocation: a\r\nno colon\r\n\r\n", None),  # iPXE fails the answer
    (b"HTTP/1.1 302 F\r\nLocation: a\r\n", None),  # the head never ended
    (b"SSH-2.0-x\r\n\r\n", None),
])
def test_a_head_is_read_as_ipxe_reads_it(head: bytes,
                                         read: tuple[int, bytes | None] | None) -> None:
    assert ipxe_status_location(head) == read
