"""A hostile WebDAV server cannot hold a run or fill its memory: every request (listing,
reads, any other answer) has a total deadline, not only a per-read timeout, and every
answer is capped while it streams."""

from __future__ import annotations

import gzip
import http.server
import time
import tracemalloc
from collections.abc import Iterator
from typing import ClassVar

import pytest

from tests.publish.conftest import gzip_of_zeros, http_server
from trustboot.errors import OperationalError
from trustboot.publish import webdav
from trustboot.publish.origin import OriginOptions
from trustboot.publish.webdav import WebDAVOrigin

TRICKLE_FOR = 12.0  # the server gives up trickling after this long (the test's bound)
sent: dict[str, int] = {}


class _Hostile(http.server.BaseHTTPRequestHandler):
    """/slow-*: each byte in time for the per-read timeout, the whole never (slowloris);
    /slow-head: the status line and headers too; /huge/: an endless multistatus."""

    protocol_version = "HTTP/1.1"

    def _answer(self, status: str) -> None:
        head = f"HTTP/1.1 {status}\r\nContent-Length: 100000\r\n\r\n".encode()
        started = time.monotonic()
        try:
            if self.path.startswith("/huge/"):
                self.wfile.write(f"HTTP/1.1 {status}\r\nConnection: close\r\n\r\n".encode())
                self.wfile.write(b'<?xml version="1.0"?><multistatus xmlns="DAV:">')
                block = b"<response><href>/huge/x</href></response>" * 1000
                sent["huge"] = 0
                while sent["huge"] < 64 << 20:
                    self.wfile.write(block)
                    sent["huge"] += len(block)
                return
            if self.path.startswith("/slow-head/"):
                for byte in head:
                    if time.monotonic() - started > TRICKLE_FOR:
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
            self.wfile.write(head)
            while time.monotonic() - started < TRICKLE_FOR:
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # the client gave up: what it should do

    def do_PROPFIND(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer("207 Multi-Status")

    def do_GET(self) -> None:
        self._answer("200 OK")

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hostile(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # a 1 s read timeout and 16 MiB/s as the slowest rate: every deadline here is 2 s
    monkeypatch.setattr(webdav, "MIN_RATE", 16 << 20, raising=False)
    with http_server(_Hostile) as url:
        yield url


def origin(url: str) -> WebDAVOrigin:
    return WebDAVOrigin(url, OriginOptions(unsafe_http=True, unsafe_no_verify=True,
                                           timeout=1.0, retries=2))


@pytest.mark.parametrize("path", ["slow-body/", "slow-head/"])
def test_a_trickled_listing_is_given_up_on(hostile: str, path: str) -> None:
    started = time.monotonic()
    with origin(hostile + path) as o, pytest.raises(OperationalError, match="too slowly"):
        o.list("")
    assert time.monotonic() - started < 6  # deadline 2 s, never retried


@pytest.mark.parametrize("path", ["slow-body/", "slow-head/"])
def test_a_trickled_read_is_given_up_on(hostile: str, path: str) -> None:
    started = time.monotonic()
    with origin(hostile + path) as o, pytest.raises(OperationalError, match="too slowly"):
        b"".join(o.read("boot.ipxe", max_size=100_000))
    assert time.monotonic() - started < 6


def test_an_endless_listing_is_cut_at_the_cap(hostile: str) -> None:
    with origin(hostile + "huge/") as o, pytest.raises(OperationalError, match="larger than"):
        o.list("")
    # read no further than the cap (plus what the socket buffers held)
    assert sent["huge"] < webdav.MAX_PROPFIND_BYTES + (8 << 20)


class _BadHrefs(http.server.BaseHTTPRequestHandler):
    """A 207 multistatus whose hrefs no URL parser accepts (a broken IPv6 literal, two
    ports, a fullwidth '/'), beside one good name."""

    protocol_version = "HTTP/1.1"
    hrefs: ClassVar[list[str]] = ["https://[zz/boot.ipxe", "https://h:1:2/x.sig", "https://a\uff0fb/c"]

    def do_PROPFIND(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        base = self.path.rstrip("/")
        good = "0123456789abcdef.k" if "staging" in base else "good.ipxe"
        body = ('<?xml version="1.0"?><multistatus xmlns="DAV:">'
                + "".join(f"<response><href>{h}</href><propstat><prop><resourcetype/>"
                          "<getlastmodified>Mon, 01 Jan 2001 00:00:00 GMT</getlastmodified>"
                          "</prop></propstat></response>" for h in self.hrefs)
                + f"<response><href>{base}/{good}</href><propstat><prop><resourcetype/>"
                  "<getlastmodified>Mon, 01 Jan 2001 00:00:00 GMT</getlastmodified>"
                  "</prop></propstat></response></multistatus>").encode()
        self.send_response(207)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_DELETE(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_hrefs_no_parser_accepts_are_skipped_not_a_crash() -> None:
    """A hostile origin's listing must not end the run as an internal error (exit 70):
    a name that is not a URL is not one of ours, and the listing goes on."""
    with http_server(_BadHrefs) as url, origin(url) as o:
        assert o.list("") == ["good.ipxe"]
        assert o.list_dirs("") == []
        assert o.remove_stale_temps(0) == [".tb-tmp.staging/0123456789abcdef.k"]


@pytest.mark.parametrize("length", ["\u00b2", "\u0661\u0662", "9" * 5000, "-1", "1e3"])
def test_a_content_length_that_is_no_ascii_number_is_no_size(length: str) -> None:
    """A listing's getcontentlength is the origin's text: '²' passed str.isdigit() and
    int() refused it, an internal error (exit 70) for every publish to that origin; a
    number of thousands of digits too. Not a size (as a missing one)."""
    data = ('<?xml version="1.0"?><multistatus xmlns="DAV:"><response><href>/a</href>'
            f"<propstat><prop><getcontentlength>{length}</getcontentlength></prop>"
            "</propstat></response></multistatus>").encode()
    assert webdav.parse_multistatus(data) == [("/a", False, None, None)]


@pytest.mark.parametrize("shape", ["deep", "wide"])
def test_a_listing_built_to_eat_memory_is_refused_early(shape: str) -> None:
    """Within the 16 MiB cap, 2 million nested (or 4 million empty) elements built a tree
    of about 650 MB in 5 s; no WebDAV answer nests deeper than a few levels or holds more
    elements than a few per listed name: refused while it is parsed."""
    n = (webdav.MAX_PROPFIND_BYTES - 100) // (8 if shape == "deep" else 4)
    body = "<a>" * n + "</a>" * n if shape == "deep" else "<a/>" * n
    data = f'<multistatus xmlns="DAV:">{body}</multistatus>'.encode()
    # each shape by its own limit: the element count alone would stop the deep one later
    with pytest.raises(OperationalError, match="nested too deeply" if shape == "deep"
                       else "too many elements"):
        webdav.parse_multistatus(data)


def test_the_parser_refuses_an_answer_over_the_cap_before_parsing_it() -> None:
    """The transport stops reading at MAX_PROPFIND_BYTES; the parser keeps its own cap for
    any other caller, and refuses by size (not after chewing through it as XML)."""
    data = b" " * (webdav.MAX_PROPFIND_BYTES + 1)
    with pytest.raises(OperationalError, match="larger than 16 MiB"):
        webdav.parse_multistatus(data)
    with pytest.raises(OperationalError, match="larger than 16 MiB"):
        webdav.parse_modified(data)


@pytest.mark.parametrize("when", ["Mon, 01 Jan 99999999999999999999 00:00:00 GMT",
                                  "Mon, 01 Jan 2020 00:00:00 +99999999999999999999"])
def test_a_modification_time_python_overflows_on_is_unknown(when: str) -> None:
    """email.utils raised OverflowError on such a date: exit 70 in every publish (the
    stale-upload sweep reads these times) instead of a time not known."""
    data = ('<multistatus xmlns="DAV:"><response><href>/x</href><propstat><prop>'
            f'<getlastmodified>{when}</getlastmodified></prop></propstat></response>'
            '</multistatus>').encode()
    assert webdav.parse_modified(data) == [("/x", False, None)]


ENDLESS_TREE_STOP = 3000  # PROPFINDs the endless tree answers before it ends (the test's bound)
tree_asked: list[str] = []


class _EndlessTree(http.server.BaseHTTPRequestHandler):
    """Every collection holds two more collections and one object, without end (until
    ENDLESS_TREE_STOP requests): each answer small and fast, the whole never done."""

    protocol_version = "HTTP/1.1"

    def do_PROPFIND(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        tree_asked.append(self.path)
        base = self.path.rstrip("/")
        children = "" if len(tree_asked) > ENDLESS_TREE_STOP else "".join(
            f"<response><href>{base}/{name}/</href><propstat><prop><resourcetype>"
            "<collection/></resourcetype></prop></propstat></response>"
            for name in ("a", "b")) + (
            f"<response><href>{base}/o</href><propstat><prop><resourcetype/>"
            "<getcontentlength>1</getcontentlength></prop></propstat></response>")
        body = f'<?xml version="1.0"?><multistatus xmlns="DAV:">{children}</multistatus>'
        data = body.encode()
        # one write: headers and body apart wait on the client's delayed ACK (40 ms each)
        self.wfile.write(b"HTTP/1.1 207 Multi-Status\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(data), data))

    def log_message(self, *args: object) -> None:
        pass


def test_a_listing_without_end_is_cut_at_the_listing_cap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each PROPFIND answer is capped, but a listing walks every collection: an origin
    whose collections hold collections forever held `publish list` and prune, memory
    growing with every answer. A whole listing is bounded too (origin.MAX_LISTED)."""
    from trustboot.publish import origin as origin_module

    monkeypatch.setattr(origin_module, "MAX_LISTED", 300)
    tree_asked.clear()
    with http_server(_EndlessTree) as url, origin(url) as o, \
            pytest.raises(OperationalError, match="did not end within 300 names"):
        o.list("releases/")
    assert len(tree_asked) < 150  # stopped at the cap, long before the server would


BOMB = gzip_of_zeros(256 << 20)  # ~250 KiB on the wire, 256 MiB inflated


class _Bomb(http.server.BaseHTTPRequestHandler):
    """Every answer (a listing's 207, a read's 403) a gzip bomb, though the client asked
    for the identity encoding."""

    protocol_version = "HTTP/1.1"

    def _bomb(self, status: str) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.wfile.write(f"HTTP/1.1 {status}\r\nContent-Encoding: gzip\r\n"
                         f"Content-Length: {len(BOMB)}\r\n\r\n".encode() + BOMB)

    def do_PROPFIND(self) -> None:
        self._bomb("207 Multi-Status")

    def do_GET(self) -> None:
        self._bomb("403 Forbidden")

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("call", ["list", "read"])
def test_an_encoded_answer_is_never_inflated(call: str) -> None:
    """Answers are read raw and capped, then handed to httpx to judge: httpx undid their
    Content-Encoding in memory, so a 250 KiB answer (1 MiB for an error page, 16 MiB for
    a listing, within the caps) became 256 MiB (1 GiB, 16 GiB). An encoded body stays as
    it came: the listing does not parse, the read is refused."""
    with http_server(_Bomb) as url, origin(url) as o:
        tracemalloc.start()
        try:
            with pytest.raises(OperationalError):
                if call == "list":
                    o.list("")
                else:
                    b"".join(o.read("boot.ipxe", max_size=1 << 20))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 32 << 20, f"peak {peak >> 20} MiB"


class _DuplicateHrefs(_BadHrefs):
    """A 207 multistatus naming one object three times."""

    hrefs: ClassVar[list[str]] = ["/good.ipxe", "https://127.0.0.1/good.ipxe"]


def test_a_name_listed_twice_is_one_object() -> None:
    """Duplicate entries in a PROPFIND answer showed up as duplicate releases in
    `publish list` (terminal and --json)."""
    with http_server(_DuplicateHrefs) as url, origin(url) as o:
        assert o.list("") == ["good.ipxe"]


@pytest.mark.parametrize("path", ["slow-body/", "slow-head/"])
def test_a_trickled_listing_is_given_up_on_by_what_came(path: str) -> None:
    """At the real slowest rate (64 KiB/s), a listing's deadline was what a 16 MiB answer
    may take: a trickled PROPFIND held `publish list --timeout 2` for 258 s. The head
    must come within the timeout (and a second), the body at the slowest rate by what
    was received so far."""
    with http_server(_Hostile) as url:
        started = time.monotonic()
        with origin(url + path) as o, pytest.raises(OperationalError, match="too slowly"):
            o.list("")
        assert time.monotonic() - started < 6, time.monotonic() - started


class _Gzipped(http.server.BaseHTTPRequestHandler):
    """A listing and a JSON object, each gzipped (Content-Encoding: gzip) though the
    client asked for identity: a proxy or CDN in front that compresses regardless."""

    protocol_version = "HTTP/1.1"

    def _gzipped(self, status: str, data: bytes) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        packed = gzip.compress(data)
        self.wfile.write(f"HTTP/1.1 {status}\r\nContent-Encoding: gzip\r\n"
                         f"Content-Length: {len(packed)}\r\n\r\n".encode() + packed)

    def do_PROPFIND(self) -> None:
        self._gzipped("207 Multi-Status", b'<?xml version="1.0"?><multistatus xmlns="DAV:">'
                      b"<response><href>/boot.ipxe</href></response></multistatus>")

    def do_GET(self) -> None:
        self._gzipped("200 OK", b'{"release": "r1"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("call", ["list", "read"])
def test_an_encoded_answer_is_named_as_such(call: str) -> None:
    """A gzipped listing (or JSON object) was reported as "not UTF-8", which sent the user
    looking at the origin's charset: say what came, and keep never inflating it."""
    with http_server(_Gzipped) as url, origin(url) as o, \
            pytest.raises(OperationalError) as caught:
        if call == "list":
            o.list("")
        else:
            b"".join(o.read("release.json", max_size=1 << 20))
    message = caught.value.message
    assert "Content-Encoding gzip" in message and "did not ask for" in message, message
    assert (url if call == "list" else f"{url}release.json") in message, message
    assert "gzip off" in (caught.value.hint or "")


class _NotXml(http.server.BaseHTTPRequestHandler):
    """A 207 answer that is no multistatus: not UTF-8 under /latin1/, else broken XML."""

    protocol_version = "HTTP/1.1"

    def do_PROPFIND(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<multistatus>\xe9</multistatus>" if "latin1" in self.path \
            else b"<multistatus><response></multistatus>"
        self.wfile.write(b"HTTP/1.1 207 Multi-Status\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("path", "says"), [("latin1/", "is not UTF-8"),
                                            ("broken/", "is not acceptable XML")])
def test_a_listing_that_does_not_parse_names_the_url(path: str, says: str) -> None:
    """A listing walks many collections; "the origin's PROPFIND answer is not UTF-8"
    left the user to guess which one answered so."""
    with http_server(_NotXml) as url, origin(url + path) as o, \
            pytest.raises(OperationalError, match=says) as caught:
        o.list("releases/")
    assert f"from {url}{path}releases/ " in caught.value.message, caught.value.message


@pytest.mark.parametrize("call", ["stat", "read"])
def test_a_trickled_head_is_given_up_on_within_the_timeout(call: str) -> None:
    """At the real slowest rate: a HEAD's (stat) head had what a 1 MiB answer may take
    (17 s with a 1 s timeout), a read's what its cap may (65 s for 4 MiB); a server sends
    either head at once."""
    with http_server(_Hostile) as url:
        started = time.monotonic()
        with origin(url + "slow-head/") as o, \
                pytest.raises(OperationalError, match="too slowly") as caught:
            if call == "stat":
                o.stat("boot.ipxe")
            else:
                b"".join(o.read("release.json", max_size=4 << 20))
        assert time.monotonic() - started < 4, time.monotonic() - started
    assert f"{url}slow-head/" in caught.value.message
