"""The audit's HTTP(S) fetch ends at its total deadline with no thread of its own, without a
network namespace: a TLS server on loopback in this process (the address check, which
refuses loopback, is what is stubbed: ``find_host`` answers with the server's address)."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.audit.conftest import AuditPki
from tests.audit.servers import read_head
from trustboot.audit import follow
from trustboot.audit.follow import http_check
from trustboot.audit.model import HttpCheck
from trustboot.audit.policy import Policy

BODY = b"#!ipxe\necho served\n" * 64
GIVE_UP = 8.0  # the server's own limit: a fetch that is never cut fails, not hangs
SCRIPTS = {
    "/ok": BODY,
    "/slow/boot.ipxe": BODY,
    # a hostile boot script: a quarter million continuations, then half a million lines
    "/hostile/boot.ipxe": b"#!ipxe\n" + b"a\\\n" * 250_000 + b"echo a\n" * 500_000,
}


@dataclass
class Served:
    """What the server saw: request heads, SNI names, and every thread alive while it was
    sending an answer body."""

    port: int
    heads: list[bytes] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    threads: set[threading.Thread] = field(default_factory=set)


def _answer(tls: ssl.SSLSocket, path: str, served: Served) -> None:
    """/ok: a small file; /drip: a byte every 0.2 s (no read ever waits long enough to time
    out); /flood: 16 KiB blocks as fast as the client takes them (no read ever waits)."""
    if path == "/esc-redirect":  # a Location httpx refuses and iPXE follows
        tls.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://x/\x1b[2J\r\r\n"
                    b"Content-Length: 0\r\n\r\n")
        return
    if path in SCRIPTS:
        body = SCRIPTS[path]
        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        return
    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n")
    block = b"x" if path == "/drip" else b"x" * 16384
    stop = time.monotonic() + GIVE_UP
    while time.monotonic() < stop:
        served.threads |= set(threading.enumerate())
        tls.sendall(block)
        if path == "/drip":
            time.sleep(0.2)


def _serve(listener: socket.socket, ctx: ssl.SSLContext, served: Served,
           stop: threading.Event) -> None:
    """One connection at a time, in this one thread (the TLS probe's connections end with
    their handshake)."""
    listener.settimeout(0.1)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        conn.settimeout(GIVE_UP)
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                head = read_head(tls)
                if head is not None:
                    served.heads.append(head)
                    _answer(tls, head.split(b" ", 2)[1].decode(), served)
        except OSError:
            pass  # the client cut the answer (or only probed the handshake)
        finally:
            conn.close()


@pytest.fixture
def server(test_pki: AuditPki, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(test_pki.chain_pem, test_pki.key_pem)
    listener = socket.create_server(("127.0.0.1", 0))
    served = Served(listener.getsockname()[1])

    def name(_tls: ssl.SSLObject, sni: str | None, _ctx: ssl.SSLContext) -> None:
        served.sni.append(sni)

    ctx.sni_callback = name
    monkeypatch.setattr(follow, "find_host", lambda *a, **k: follow.Found(["127.0.0.1"]))
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(listener, ctx, served, stop), daemon=True)
    thread.start()
    yield served
    stop.set()
    thread.join(GIVE_UP + 5)
    listener.close()


def _policy(pki: AuditPki | None) -> Policy:
    return dataclasses.replace(Policy(), ca_file=pki.root_pem if pki else None)


def _fetch(url: str, policy: Policy, timeout: float, max_size: int = 1 << 20
           ) -> tuple[HttpCheck, float]:
    start = time.monotonic()
    check = http_check(url, policy=policy, timeout=timeout, max_size=max_size)
    return check, time.monotonic() - start


def test_the_file_comes_from_the_vetted_address_under_its_own_name(
        server: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection goes to the vetted address, directly (never through a proxy the
    environment names), and the URL's name is in Host and SNI."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:1")  # nothing there: a proxied fetch fails
    check, _ = _fetch(f"https://boot.example:{server.port}/ok", _policy(None), 5.0)
    assert check.ok and check.sha256 == hashlib.sha256(BODY).hexdigest(), check
    [head] = server.heads
    assert f"\r\nhost: boot.example:{server.port}\r\n".encode() in head.lower(), head
    assert b"\r\naccept-encoding: identity\r\n" in head.lower(), head
    assert server.sni == ["boot.example", "boot.example"]  # the probe's, the fetch's


@pytest.mark.parametrize("with_ca", [False, True], ids=["unverified", "verified"])
def test_a_drip_fed_https_body_ends_at_the_deadline_without_a_thread(
        server: Served, test_pki: AuditPki, with_ca: bool) -> None:
    """A byte every 0.2 s never lets a read time out: the total deadline alone ends the
    fetch, reported as that limit, and no thread was started to watch the clock (none
    alive while the body was sent, none left after)."""
    before = set(threading.enumerate())
    check, elapsed = _fetch(f"https://192.0.2.1:{server.port}/drip",
                            _policy(test_pki if with_ca else None), 1.0)
    assert check.limit == "fetch-deadline" and not check.ok and check.size > 0, check
    assert check.tls_verified is (True if with_ca else None), check
    assert elapsed < 2.0, elapsed
    assert server.threads - before == set(), "a thread ran during the fetch"
    assert set(threading.enumerate()) - before == set()


def test_a_fast_sender_is_cut_at_the_deadline_too(server: Served) -> None:
    """A body that always has bytes waiting (no read ever blocks) is cut at the deadline,
    not carried on to the size cap."""
    check, elapsed = _fetch(f"https://192.0.2.1:{server.port}/flood", _policy(None), 0.5,
                            max_size=1 << 40)
    assert check.limit == "fetch-deadline" and check.size > 0, check
    assert elapsed < 1.5, elapsed


@pytest.mark.parametrize("past_deadline", [False, True], ids=["before", "after"])
def test_a_transport_error_is_the_deadline_only_once_it_has_passed(
        monkeypatch: pytest.MonkeyPatch, past_deadline: bool) -> None:
    """A connection that fails (reset, closed mid-body) is evidence, with its error; the
    same failure once the deadline has passed is the deadline, however the transport
    words it (an SSL read cut by its timeout can surface as a read error)."""
    import httpx

    from trustboot.publish import http as publish_http

    def handler(request: httpx.Request) -> httpx.Response:
        if past_deadline:
            time.sleep(0.4)  # the fetch's whole deadline is 0.2 s
        raise httpx.ReadError("connection reset by peer", request=request)

    monkeypatch.setattr(follow, "find_host", lambda *a, **k: follow.Found(["192.0.2.1"]))
    monkeypatch.setattr(publish_http, "DeadlineTransport",
                        lambda *a, **k: httpx.MockTransport(handler))
    check, _ = _fetch("http://boot.example/ipxe.efi", _policy(None), 0.2)
    assert not check.ok, check
    if past_deadline:
        assert check.limit == "fetch-deadline" and "longer than 0.2 s" in (check.error or "")
    else:
        assert check.limit is None and check.error == "ReadError: connection reset by peer"


def _audit_of(url: str, monkeypatch: pytest.MonkeyPatch, *, slow_identify: float = 0.0
              ) -> tuple[list[str], list[HttpCheck]]:
    """Follow ``url`` offered as the boot file, against a release whose boot.ipxe is some
    other file; the rules found, and the HTTP checks recorded."""
    from tests.audit.test_checks import observe, offer, policy
    from trustboot.audit.checks import evaluate

    if slow_identify:
        from trustboot.audit.loaders import LoaderInfo, identify

        def slow(head: bytes) -> LoaderInfo:
            time.sleep(slow_identify)
            return identify(head)

        monkeypatch.setattr("trustboot.audit.follow.identify", slow)
    obs = observe()
    pol = dataclasses.replace(policy(), origins=())
    follower = follow.Follower(follow.FollowConfig(device=None, timeout=8.0), pol, obs,
                               deadline=time.monotonic() + 10.0)
    follower.on_offer(offer(file=url))
    follower.finish(4.0)
    return [f.rule for f in evaluate(obs, pol)], list(obs.http)


def test_a_slow_identification_never_loses_the_hash(
        server: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is fetched and hashed, then classified: classification still running at
    the follow-up deadline costs the loader (a reached limit), never the hash, so the file
    that is not the release is still a critical mismatch (it was only a limit and a
    'not fetched' boot file)."""
    found, checks = _audit_of(f"https://192.0.2.1:{server.port}/slow/boot.ipxe",
                              monkeypatch, slow_identify=6.0)
    [check] = checks
    assert check.sha256 == hashlib.sha256(BODY).hexdigest()
    assert check.loader is None
    assert "boot-file-mismatch" in found and "audit-limit-reached" in found, found
    assert "boot-file-unverified" not in found, found


def test_a_hostile_boot_script_is_hashed_and_checked_in_bounded_time(
        server: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """4 MB of continuations and lines: parsed, it took 30 s and more, past the follow-up
    deadline, and the mismatch was lost. Parsing is capped: the script's imgverify is
    unknown and said so, and the mismatch is found."""
    began = time.monotonic()
    found, checks = _audit_of(f"https://192.0.2.1:{server.port}/hostile/boot.ipxe",
                              monkeypatch)
    assert time.monotonic() - began < 4.0
    [check] = checks
    assert check.sha256 == hashlib.sha256(
        SCRIPTS["/hostile/boot.ipxe"]).hexdigest()
    assert check.loader is not None and "too large to parse" in (check.loader.not_parsed or "")
    assert "boot-file-mismatch" in found and "audit-limit-reached" not in found, found


def test_a_hostile_redirect_over_https_is_evidence(server: Served) -> None:
    """The head kept for iPXE's reading is the plaintext after the TLS handshake."""
    check, _ = _fetch(f"https://boot.example:{server.port}/esc-redirect", _policy(None), 5.0)
    assert check.status == 302 and check.location == "http://x/\\x1b[2J\\x0d", check
