"""Boot URL hosts are found as a booting client finds them, never with this host's resolver.

The DNS codec against hand-built and fuzzed answers (nothing escapes but MalformedPacket),
iPXE's reading of literal IPv4 hosts, and the small client against a server on loopback in
this process: a random id and port, only the asked server's answer with the question
echoed, bounded by the deadline. The network version (a hostile DNS server on a segment,
the offer's option 6) is in test_dns_segment.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.audit import packets
from tests.audit.netns import REPO, Segment, missing_tools
from tests.audit.test_checks import observe, offer, policy
from trustboot.audit import dhcp4, dns
from trustboot.audit.errors import MalformedPacket
from trustboot.audit.follow import FollowConfig, Follower, find_host, http_check
from trustboot.audit.model import HttpCheck

NAME = dns.encode_name("boot.example")


def rr(owner: bytes, rtype: int, rdata: bytes, *, rclass: int = dns.CLASS_IN) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, 60, len(rdata)) + rdata


def answer(qid: int, *records: bytes, name: bytes = NAME, qtype: int = dns.TYPE_A,
           rcode: int = 0, flags: int = 0x8180, qdcount: int = 1) -> bytes:
    """A response to (qid, name, qtype) carrying ``records`` in its answer section."""
    return (struct.pack("!HHHHHH", qid, flags | rcode, qdcount, len(records), 0, 0)
            + name + struct.pack("!HH", qtype, dns.CLASS_IN) + b"".join(records))


def a(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


QUESTION_PTR = b"\xc0\x0c"  # the question's name, compressed


# -- the codec ---------------------------------------------------------------------------------


def test_a_query_asks_one_question_with_recursion_desired() -> None:
    query = dns.build_query(0x1234, NAME, dns.TYPE_AAAA)
    assert query[:12] == bytes.fromhex("123401000001000000000000")
    assert query[12:] == b"\x04boot\x07example\x00\x00\x1c\x00\x01"


def test_an_answer_gives_the_addresses_of_the_question() -> None:
    reply = dns.parse_response(answer(7, rr(QUESTION_PTR, dns.TYPE_A, a("192.0.2.1")),
                                      rr(QUESTION_PTR, dns.TYPE_A, a("192.0.2.9"))),
                               qid=7, name=NAME, qtype=dns.TYPE_A)
    assert reply is not None and reply.addresses == ["192.0.2.1", "192.0.2.9"], reply
    six = dns.parse_response(answer(7, rr(QUESTION_PTR, dns.TYPE_AAAA, a("2001:db8::1")),
                                    qtype=dns.TYPE_AAAA),
                             qid=7, name=NAME, qtype=dns.TYPE_AAAA)
    assert six is not None and six.addresses == ["2001:db8::1"]


def test_records_for_other_names_types_or_classes_are_not_the_answer() -> None:
    other = dns.encode_name("other.example")
    reply = dns.parse_response(answer(
        7, rr(other, dns.TYPE_A, a("192.0.2.66")), rr(QUESTION_PTR, dns.TYPE_AAAA,
                                                      a("2001:db8::66")),
        rr(QUESTION_PTR, dns.TYPE_A, a("192.0.2.67"), rclass=3)),
        qid=7, name=NAME, qtype=dns.TYPE_A)
    assert reply is not None and reply.addresses == [] and reply.problem == "no A record"


def test_names_compare_without_case() -> None:
    upper = b"\x04BOOT\x07Example\x00"
    reply = dns.parse_response(answer(7, rr(upper, dns.TYPE_A, a("192.0.2.1")), name=upper),
                               qid=7, name=NAME, qtype=dns.TYPE_A)
    assert reply is not None and reply.addresses == ["192.0.2.1"]


def test_a_cname_chain_is_followed_within_the_answer() -> None:
    one, two = dns.encode_name("one.example"), dns.encode_name("two.example")
    reply = dns.parse_response(answer(
        7, rr(two, dns.TYPE_A, a("192.0.2.1")), rr(QUESTION_PTR, dns.TYPE_CNAME, one),
        rr(one, dns.TYPE_CNAME, two)), qid=7, name=NAME, qtype=dns.TYPE_A)
    assert reply is not None and reply.addresses == ["192.0.2.1"], reply
    assert reply.cnames == ["one.example", "two.example"]


def test_a_cname_chain_is_bounded_and_a_loop_ends() -> None:
    names = [dns.encode_name(f"n{i}.example") for i in range(dns.MAX_CNAMES + 2)]
    chain = [rr(QUESTION_PTR, dns.TYPE_CNAME, names[0])] + [
        rr(names[i], dns.TYPE_CNAME, names[i + 1]) for i in range(len(names) - 1)] + [
        rr(names[-1], dns.TYPE_A, a("192.0.2.1"))]
    long = dns.parse_response(answer(7, *chain), qid=7, name=NAME, qtype=dns.TYPE_A)
    assert long is not None and not long.addresses
    assert long.problem == f"a CNAME chain longer than {dns.MAX_CNAMES}"
    loop = dns.parse_response(answer(7, rr(QUESTION_PTR, dns.TYPE_CNAME, names[0]),
                                     rr(names[0], dns.TYPE_CNAME, NAME)),
                              qid=7, name=NAME, qtype=dns.TYPE_A)
    assert loop is not None and loop.problem == "the answer's CNAME records loop"
    dangling = dns.parse_response(answer(7, rr(QUESTION_PTR, dns.TYPE_CNAME, names[0])),
                                  qid=7, name=NAME, qtype=dns.TYPE_A)
    assert dangling is not None and "ends at n0.example" in str(dangling.problem)


@pytest.mark.parametrize(("rcode", "name"), [(3, "NXDOMAIN"), (2, "SERVFAIL"), (5, "REFUSED")])
def test_an_error_answer_has_no_address(rcode: int, name: str) -> None:
    reply = dns.parse_response(answer(7, rr(QUESTION_PTR, dns.TYPE_A, a("192.0.2.1")),
                                      rcode=rcode), qid=7, name=NAME, qtype=dns.TYPE_A)
    assert reply is not None and reply.rcode_name == name and not reply.addresses


@pytest.mark.parametrize("data", [
    answer(8, rr(QUESTION_PTR, dns.TYPE_A, a("127.0.0.1"))),  # another id
    answer(7, rr(QUESTION_PTR, dns.TYPE_A, a("127.0.0.1")), flags=0x0100),  # a query
    answer(7, rr(QUESTION_PTR, dns.TYPE_A, a("127.0.0.1")), name=dns.encode_name("x.example")),
    answer(7, rr(QUESTION_PTR, dns.TYPE_AAAA, a("::1")), qtype=dns.TYPE_AAAA),
    answer(7, qdcount=0)[:12],  # no question echoed
], ids=["id", "not-a-response", "other-name", "other-type", "no-question"])
def test_what_answers_another_question_is_ignored(data: bytes) -> None:
    assert dns.parse_response(data, qid=7, name=NAME, qtype=dns.TYPE_A) is None


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x00\x07\x81", "shorter than a DNS header"),
    (answer(7, rr(QUESTION_PTR, dns.TYPE_A, a("192.0.2.1")), flags=0x8380),
     "truncated answer (TC bit set)"),
    (answer(7, rr(b"\xc0\x29", dns.TYPE_A, a("192.0.2.1"))),  # points at itself
     "compression pointer does not point backwards"),
    (answer(7, rr(b"\xc0\x30", dns.TYPE_A, a("192.0.2.1")))[:0x30]  # a pointer cycle
     + b"\xc0\x32\xc0\x30", "compression pointer does not point backwards"),
    (answer(7, rr(QUESTION_PTR, dns.TYPE_A, b"\x01\x02\x03\x04\x05")), "A record of 5 bytes"),
    (answer(7, rr(QUESTION_PTR, dns.TYPE_A, a("192.0.2.1")))[:-2],
     "resource record data runs past the end"),
    (answer(7, rr(b"\x40", dns.TYPE_A, a("192.0.2.1"))), "reserved label type"),
    (answer(7, rr(QUESTION_PTR, dns.TYPE_CNAME, b"\x01x\x00junk")),
     "CNAME data and its name differ in length"),
    (answer(7, rr(b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63
                  + b"\x3f" + b"a" * 63 + b"\x00", dns.TYPE_A, a("192.0.2.1"))),
     "name longer than 255 octets or past the end"),
])
def test_malformed_answers_raise_the_documented_error(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket) as raised:
        dns.parse_response(data, qid=7, name=NAME, qtype=dns.TYPE_A)
    assert raised.value.reason == reason


def test_a_chain_of_backward_pointers_is_bounded() -> None:
    """Each pointer points before the last (no cycle), but more than MAX_POINTERS of them."""
    count = dns.MAX_POINTERS + 2
    base = len(answer(7)) + 2 + 10  # the data of a first record (of a type no one reads)
    body = b"\x00"  # the root name, at ``base``, then pointers each to the one before
    for i in range(count):
        body += struct.pack("!H", 0xC000 | (base + (2 * i - 1 if i else 0)))
    last = base + len(body) - 2
    data = answer(7, rr(QUESTION_PTR, 99, body),
                  rr(struct.pack("!H", 0xC000 | last), dns.TYPE_A, a("192.0.2.1")))
    with pytest.raises(MalformedPacket) as raised:
        dns.parse_response(data, qid=7, name=NAME, qtype=dns.TYPE_A)
    assert raised.value.reason == "too many compression pointers"


@pytest.mark.parametrize("name", ["", ".", "a..b", "a" * 64 + ".example",
                                  ".".join(["a" * 60] * 5)])
def test_names_no_client_could_ask_for_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        dns.encode_name(name)


FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_raise_nothing_but_malformed(data: bytes) -> None:
    qid = int.from_bytes(data[:2].ljust(2, b"\0"), "big")  # as often our id as not
    try:
        dns.parse_response(data, qid=qid, name=NAME, qtype=dns.TYPE_A)
    except MalformedPacket:
        pass


VALID = answer(7, rr(QUESTION_PTR, dns.TYPE_CNAME, b"\x03one\xc0\x11"),
               rr(b"\x03one\xc0\x11", dns.TYPE_A, a("192.0.2.1")))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8),
       st.integers(12, len(VALID)))
def test_mutated_answers_raise_nothing_but_malformed(flips: list[tuple[int, int]],
                                                     cut: int) -> None:
    data = bytearray(VALID)
    for at, value in flips:
        data[at] = value
    try:
        reply = dns.parse_response(bytes(data[:cut] if cut < len(data) else data),
                                   qid=7, name=NAME, qtype=dns.TYPE_A)
    except MalformedPacket:
        return
    if reply is not None:
        assert all(ipaddress.IPv4Address(x) for x in reply.addresses)
        assert len(reply.cnames) <= dns.MAX_CNAMES


def test_the_valid_answer_the_fuzzer_mutates_resolves() -> None:
    reply = dns.parse_response(VALID, qid=7, name=NAME, qtype=dns.TYPE_A)
    assert reply is not None and reply.addresses == ["192.0.2.1"]
    assert reply.cnames == ["one.example"]


# -- literal hosts ------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "addresses"), [
    ("192.0.2.1", ["192.0.2.1"]), ("0xc0.0.02.1", ["192.0.2.1"]),
    ("0300.0.2.0x1", ["192.0.2.1"]), ("+192.0.2.1", ["192.0.2.1"]),
    (" 192.0.2.1", ["192.0.2.1"]), ("0x.0.0.0", ["0.0.0.0"]),  # iPXE takes an empty hex part
    ("4294967488.0.2.1", ["192.0.2.1"]),  # 2**32 + 192: only a 32-bit build wraps it
    ("18446744073709551808.0.2.1", ["192.0.2.1"]),  # 2**64 + 192: both do
    ("-18446744073709551424.0.2.1", ["192.0.2.1"]),
    ("%31%39%32.0.2.1", ["192.0.2.1"]),  # iPXE decodes the host first
    ("2001:db8::1", ["2001:db8::1"]), ("fe80::1%eth0", ["fe80::1"]),
])
def test_literal_hosts_are_read_as_ipxe_reads_them(host: str, addresses: list[str]) -> None:
    assert dns.literal_addresses(host) == addresses


@pytest.mark.parametrize("host", ["boot.example", "127.1", "2130706433", "0x7f.1",
                                  "192.0.2.256", "192.0.2.1.", "192.0.2.1x", "192.0.2.09",
                                  "1.2.3.4.5", "-1.0.0.0", "", "localhost"])
def test_other_hosts_are_names_to_ipxe(host: str) -> None:
    assert dns.literal_addresses(host) is None


# -- the client, against a server on loopback ------------------------------------------------


@dataclass
class Server:
    """A UDP DNS server on 127.0.0.1 that answers each query with ``respond``."""

    respond: Callable[[bytes, socket.socket, tuple[str, int]], None]
    queries: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)
    port: int = 0


@pytest.fixture
def udp() -> Iterator[Callable[..., Server]]:
    made: list[tuple[socket.socket, threading.Thread]] = []
    stop = threading.Event()

    def make(respond: Callable[[bytes, socket.socket, tuple[str, int]], None]) -> Server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.05)
        server = Server(respond, port=sock.getsockname()[1])

        def serve() -> None:
            while not stop.is_set():
                try:
                    data, peer = sock.recvfrom(2048)
                except (TimeoutError, OSError):
                    continue
                server.queries.append((data, peer))
                respond(data, sock, peer)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        made.append((sock, thread))
        return server

    yield make
    stop.set()
    for sock, thread in made:
        thread.join(2)
        sock.close()


def reply_to(query: bytes, *records: bytes, qid: int | None = None, rcode: int = 0) -> bytes:
    """An answer echoing ``query``'s question."""
    head = struct.pack("!HHHHHH", qid if qid is not None else
                       int.from_bytes(query[:2], "big"), 0x8180 | rcode, 1, len(records), 0, 0)
    return head + query[12:] + b"".join(records)


def ask(server: Server, name: str = "boot.example", timeout: float = 2.0) -> dns.Lookup:
    return dns.lookup("127.0.0.1", name, dns.TYPE_A, device=None, source=None,
                      deadline=time.monotonic() + timeout, port=server.port)


def test_the_asked_server_answers(udp: Callable[..., Server]) -> None:
    server = udp(lambda q, s, p: s.sendto(reply_to(q, rr(QUESTION_PTR, dns.TYPE_A,
                                                         a("192.0.2.1"))), p))
    asked = ask(server)
    assert asked.addresses == ["192.0.2.1"] and asked.error is None, asked
    assert asked.rcode == "NOERROR" and asked.sends == 1 and asked.ignored == 0
    assert asked.to_json()["addresses"] == ["192.0.2.1"]


def test_each_question_has_a_random_id_and_source_port(udp: Callable[..., Server]) -> None:
    server = udp(lambda q, s, p: s.sendto(reply_to(q, rr(QUESTION_PTR, dns.TYPE_A,
                                                         a("192.0.2.1"))), p))
    for _ in range(6):
        ask(server)
    ids = {q[:2] for q, _peer in server.queries}
    ports = {peer[1] for _q, peer in server.queries}
    assert len(ids) >= 5 and len(ports) >= 5, (ids, ports)


def test_answers_from_elsewhere_or_to_another_question_are_ignored(
        udp: Callable[..., Server]) -> None:
    """A spoofer on another port, a wrong id and another name come first, each claiming
    loopback; the real answer after them is the one taken."""
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    bad = rr(QUESTION_PTR, dns.TYPE_A, a("127.0.0.1"))

    def respond(q: bytes, s: socket.socket, p: tuple[str, int]) -> None:
        other.sendto(reply_to(q, bad), p)  # the right answer, from another port
        s.sendto(reply_to(q, bad, qid=int.from_bytes(q[:2], "big") ^ 1), p)
        wrong = bytearray(reply_to(q, bad))
        wrong[13] ^= 0x20  # "Boot": still the name to DNS, so make it another letter
        wrong[14] = ord("z")
        s.sendto(bytes(wrong), p)
        time.sleep(0.05)
        s.sendto(reply_to(q, rr(QUESTION_PTR, dns.TYPE_A, a("192.0.2.1"))), p)

    try:
        asked = ask(udp(respond))
    finally:
        other.close()
    assert asked.addresses == ["192.0.2.1"], asked
    assert asked.ignored == 3, asked


def test_a_silent_server_ends_at_the_deadline_after_retries(udp: Callable[..., Server]) -> None:
    server = udp(lambda q, s, p: None)
    start = time.monotonic()
    asked = ask(server, timeout=2.5)
    assert 2.4 < time.monotonic() - start < 3.0
    # sent at 0, 1 and (backing off) 3 s: the deadline at 2.5 s comes first
    assert asked.error == "no answer before the deadline" and asked.sends == 2, asked
    assert {q[:2] for q, _ in server.queries} == {server.queries[0][0][:2]}  # one id


def test_a_malformed_answer_is_recorded_and_ends_the_question(
        udp: Callable[..., Server]) -> None:
    server = udp(lambda q, s, p: s.sendto(reply_to(q, rr(b"\xc0\x1e", dns.TYPE_A,
                                                         a("192.0.2.1"))), p))
    start = time.monotonic()
    asked = ask(server)
    assert time.monotonic() - start < 1.0
    assert asked.malformed == "compression pointer does not point backwards", asked
    assert asked.error == f"malformed answer: {asked.malformed}"
    assert asked.malformed_head and asked.malformed_length > 12


@pytest.mark.parametrize(("rcode", "error"), [(3, "NXDOMAIN"), (2, "SERVFAIL")])
def test_error_answers_are_the_reason(udp: Callable[..., Server], rcode: int,
                                      error: str) -> None:
    asked = ask(udp(lambda q, s, p: s.sendto(reply_to(q, rcode=rcode), p)))
    assert asked.error == error and not asked.addresses, asked


def test_servers_are_asked_in_turn_each_with_a_share_of_the_time(
        udp: Callable[..., Server]) -> None:
    silent = udp(lambda q, s, p: None)
    start = time.monotonic()
    asked = dns.resolve("boot.example", dns.Nameservers(("127.0.0.1", "127.0.0.2"), 4, "x"),
                        device=None, source=None, deadline=time.monotonic() + 1.0,
                        port=silent.port)
    assert time.monotonic() - start < 1.3
    assert [q.server for q in asked] == ["127.0.0.1", "127.0.0.2"]
    assert all(q.error == "no answer before the deadline" for q in asked)
    # the first one's silence does not use up the second one's time
    assert all(q.sends >= 1 and 0.4 < q.elapsed < 0.7 for q in asked), asked


# -- never this host's resolver -----------------------------------------------------------------


@pytest.fixture
def no_host_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any use of the C library's resolver fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        pytest.fail(f"the host's resolver was asked: {args!r}")

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        monkeypatch.setattr(socket, name, refuse)


def test_a_name_in_an_offer_without_dns_servers_is_not_fetched(no_host_resolver: None) -> None:
    obs = observe()
    follower = Follower(FollowConfig(device=None, timeout=1.0), policy(), obs)
    follower.on_offer(offer(file="https://boot.example/boot.ipxe", ipxe=True))
    follower.finish(2.0)
    [check] = obs.http
    assert not check.ok and check.dns == [] and check.address is None, check
    assert check.error == ("not fetched: boot.example is a host name and the offer gave no "
                           "DNS server (DHCPv4 option 6): a client could not resolve it "
                           "either"), check


def test_a_library_fetch_of_a_name_asks_no_resolver(no_host_resolver: None) -> None:
    check = http_check("https://localhost/x", policy=policy(), timeout=1.0, max_size=10)
    assert not check.ok and "gave no DNS server" in str(check.error), check


def test_an_offered_dns_server_on_a_local_address_is_not_asked(
        no_host_resolver: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dns, "lookup", lambda *a, **k: pytest.fail("asked"))
    found = find_host("boot.example", dns.Nameservers(("127.0.0.53",), 4, "DHCPv4 option 6"),
                      frozenset(), device=None, source=None, deadline=time.monotonic() + 1)
    assert found.refusal == ("boot.example would be resolved by the offered DNS server "
                             "127.0.0.53 (loopback), which the audit does not query")


def test_the_offer_s_own_dns_servers_are_asked_for_its_url(
        no_host_resolver: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two offers name one URL with different DNS servers: each is resolved with its own,
    and the answers are evidence of which server said what."""
    asked: list[tuple[str, tuple[str, ...], int]] = []

    def fake(name: str, ns: dns.Nameservers, **_: object) -> list[dns.Lookup]:
        asked.append((name, ns.servers, ns.qtype))
        return [dns.Lookup(ns.servers[0], name, "A", rcode="NXDOMAIN", error="NXDOMAIN")]

    monkeypatch.setattr(dns, "resolve", fake)
    obs = observe()
    follower = Follower(FollowConfig(device=None, timeout=1.0), policy(), obs)
    for server in ("192.0.2.53", "192.0.2.54"):
        raw = packets.dhcp_reply(xid=1, chaddr=b"\x02" * 6, yiaddr="192.0.2.100",
                                 siaddr="192.0.2.2", server_id="192.0.2.2",
                                 options=[(67, b"https://boot.example/x"),
                                          (6, a(server) + a("192.0.2.99"))])
        o = offer()
        follower.on_offer(type(o)(dhcp4.parse(raw), "192.0.2.2", o.src_mac, 67, 0.1, o.probe))
    follower.finish(2.0)
    assert asked == [("boot.example", ("192.0.2.53", "192.0.2.99"), dns.TYPE_A),
                     ("boot.example", ("192.0.2.54", "192.0.2.99"), dns.TYPE_A)]
    errors = [h.error for h in obs.http]
    assert errors == [f"not fetched: boot.example could not be resolved with the offered DNS "
                      f"server {s} (NXDOMAIN)" for s in ("192.0.2.53", "192.0.2.54")]
    assert obs.http[0].to_json()["dns"] == [dns.Lookup(
        "192.0.2.53", "boot.example", "A", rcode="NXDOMAIN", error="NXDOMAIN").to_json()]


def test_a_dhcpv6_reply_s_servers_are_asked_for_aaaa(monkeypatch: pytest.MonkeyPatch,
                                                      no_host_resolver: None) -> None:
    from trustboot.audit import dhcp6
    from trustboot.audit.model import Reply6

    asked: list[dns.Nameservers] = []
    def fake(name: str, ns: dns.Nameservers, **_: object) -> list[dns.Lookup]:
        asked.append(ns)
        return []

    monkeypatch.setattr(dns, "resolve", fake)
    raw = packets.advertise(xid=1, client_duid=dhcp6.duid_ll(b"\x02" * 6),
                            url="https://boot.example/x", server_mac=b"\x02" * 6)
    raw += packets.opt6(dhcp6.OPT_DNS_SERVERS, a("2001:db8::53") + a("2001:db8::54"))
    reply = Reply6(dhcp6.parse(raw), "fe80::1", "02:02:02:02:02:02", 0.1)
    assert reply.evidence()["option_23_dns_servers"] == ["2001:db8::53", "2001:db8::54"]
    obs = observe()
    follower = Follower(FollowConfig(device=None, timeout=1.0), policy(), obs)
    follower.on_reply6(reply)
    follower.finish(2.0)
    assert asked == [dns.Nameservers(("2001:db8::53", "2001:db8::54"), 6, "DHCPv6 option 23")]
    assert asked[0].qtype == dns.TYPE_AAAA


def test_a_malformed_dns_answer_is_a_malformed_packet_finding() -> None:
    from tests.audit.test_checks import rules

    obs = observe()
    follower = Follower(FollowConfig(device=None, timeout=1.0), policy(), obs)
    bad = dns.Lookup("192.0.2.53", "boot.example", "A", error="malformed answer: x",
                     malformed="too many compression pointers", malformed_head="00",
                     malformed_length=80)
    follower._submit("url:x", lambda **_: HttpCheck("https://boot.example/x", dns=[bad],
                                                    error="not fetched"))
    follower.finish(2.0)
    [malformed] = rules(obs)["malformed-packet"]
    assert "dns" in malformed.message and "192.0.2.53" in malformed.message
    assert "too many compression pointers" in malformed.message


# -- link-local DNS servers from DHCPv6 ------------------------------------------------------
# Option 23 naming the router's fe80:: address is a normal IPv6 network: the server is a
# neighbour on the audited link (as the DHCPv6 server answering from fe80:: is) and iPXE asks
# it on its boot interface. It is asked, not reported as a local-only target.


def test_a_link_local_dhcpv6_dns_server_is_asked(no_host_resolver: None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[dns.Nameservers] = []

    def fake(name: str, ns: dns.Nameservers, **_: object) -> list[dns.Lookup]:
        asked.append(ns)
        return [dns.Lookup(ns.servers[0], name, "AAAA", rcode="NOERROR",
                           addresses=["2001:db8::80"])]

    monkeypatch.setattr(dns, "resolve", fake)
    ns = dns.Nameservers(("fe80::53", "::1"), 6, "DHCPv6 option 23")
    found = find_host("boot.example", ns, frozenset(), device="eth0", source=None,
                      deadline=time.monotonic() + 1)
    assert found.refusal is None and found.addresses == ["2001:db8::80"], found
    assert asked == [dns.Nameservers(("fe80::53",), 6, "DHCPv6 option 23")]


@pytest.mark.parametrize(("servers", "family", "why"), [
    (("fe80::53",), 6, "an address of the auditing host"),  # the auditor's own address
    (("169.254.169.253",), 4, "link-local"),  # IPv4 link-local: a metadata range
    (("::ffff:169.254.169.253",), 6, "link-local"),
])
def test_other_local_dns_servers_are_still_not_asked(
        no_host_resolver: None, monkeypatch: pytest.MonkeyPatch,
        servers: tuple[str, ...], family: int, why: str) -> None:
    monkeypatch.setattr(dns, "lookup", lambda *a, **k: pytest.fail("asked"))
    found = find_host("boot.example", dns.Nameservers(servers, family, "option"),
                      frozenset({"fe80::53"}), device="eth0", source=None,
                      deadline=time.monotonic() + 1)
    assert found.refusal == ("boot.example would be resolved by the offered DNS server "
                             f"{servers[0]} ({why}), which the audit does not query")


LINK_LOCAL_DNS = r"""
import socket, struct, sys
sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
sock.bind(("fe80::53", 53, 0, socket.if_nametoindex("eth0")))
print("ready", flush=True)
while True:
    query, peer = sock.recvfrom(2048)
    head = struct.pack("!HHHHHH", int.from_bytes(query[:2], "big"), 0x8180, 1, 1, 0, 0)
    record = b"\xc0\x0c" + struct.pack("!HHIH", 28, 1, 60, 16) + socket.inet_pton(
        socket.AF_INET6, "2001:db8::80")
    sock.sendto(head + query[12:] + record, peer)
"""

FIND = r"""
import json, time
from trustboot.audit import dns
from trustboot.audit.follow import find_host
found = find_host("boot.example", dns.Nameservers(("fe80::53",), 6, "DHCPv6 option 23"),
                  frozenset(), device="eth0", source=None, deadline=time.monotonic() + 4)
print(json.dumps({"addresses": found.addresses, "refusal": found.refusal,
                  "error": found.error}))
"""


@pytest.mark.root
def test_a_link_local_dns_server_is_asked_on_the_audited_link(tmp_path: Path) -> None:
    """On a real link: the question goes out of the audited interface to fe80::53."""
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    with Segment(tmp_path) as seg:
        server = seg.add_host("dns", 1, ipv4=False)
        client = seg.add_host("client", 2, ipv4=False)
        for host, address in ((server, "fe80::53"), (client, "fe80::2")):
            subprocess.run(host.argv(["ip", "addr", "add", f"{address}/64", "dev", "eth0",
                                      "nodad"]), check=True, timeout=30)
        proc = subprocess.Popen(server.argv([sys.executable, "-c", LINK_LOCAL_DNS]),
                                stdout=subprocess.PIPE)
        seg.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        out = subprocess.run(client.argv([sys.executable, "-c", FIND]), capture_output=True,
                             text=True, cwd=REPO, timeout=30,
                             env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"addresses": ["2001:db8::80"], "refusal": None,
                                      "error": None}
