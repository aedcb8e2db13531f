"""The listener without a network: frames in and out through a socketpair."""

from __future__ import annotations

import ipaddress
import struct
import threading
import time
from collections.abc import Callable

import pytest

from tests.audit import packets
from tests.audit.fakelink import FakeLink, Responder, listener
from trustboot.audit import dhcp4, dhcp6, frames, probe
from trustboot.audit.errors import MalformedPacket
from trustboot.audit.model import Offer


def dhcp_server(*, file: bytes = b"", options: list[tuple[int, bytes]] | None = None,
                src_mac: bytes = packets.SERVER_MAC, src_ip: str = "192.0.2.1",
                yiaddr: str = "192.0.2.100", ipxe_file: bytes | None = None) -> Responder:
    def respond(frame: frames.Frame) -> list[bytes]:
        if frame.dport != 67:
            return []
        req = dhcp4.parse(frame.payload)
        chosen = ipxe_file if ipxe_file is not None and req.user_class == "iPXE" else file
        reply = packets.dhcp_reply(xid=req.xid, chaddr=req.chaddr, file=chosen,
                                   server_id=src_ip, siaddr=src_ip, yiaddr=yiaddr,
                                   options=options)
        return [packets.offer_frame(reply, src_mac=src_mac, src_ip=src_ip)]
    return respond


def test_the_window_opens_when_the_probes_go_out() -> None:
    """Setting up the socket took longer than the window (a loaded machine): the probes
    still go out, and the whole window is still listened to after them."""
    link = FakeLink()
    lst, obs = listener(link, window=0.3)
    time.sleep(0.5)
    lst.run()
    assert len(link.sent_dhcp4()) == 13 * 2 * 2
    assert 0.3 <= obs.listen_seconds < 1.5


def test_probes_look_like_pxe_clients_from_random_macs() -> None:
    link = FakeLink()
    lst, obs = listener(link, window=0.3)
    lst.run()
    discovers = link.sent_dhcp4()
    # 13 architectures, two machines each, each as the PXE ROM and as iPXE
    assert len(discovers) == 13 * 2 * 2
    assert {d.client_arch for d in discovers} == {0, 6, 7, 9, 10, 11, 15, 16, 18, 19, 20, 21, 22}
    assert sum(d.user_class == "iPXE" for d in discovers) == 26
    for frame in link.sent:
        parsed = frames.parse_frame(frame)
        assert parsed is not None
        if parsed.family == 4:
            pkt = dhcp4.parse(parsed.payload)
            assert parsed.src_mac == pkt.chaddr and parsed.src_ip == "0.0.0.0"
            assert not parsed.src_mac[0] & 0x01  # unicast
    macs = {d.chaddr for d in discovers}
    assert len(macs) == 26
    local = {m for m in macs if m[0] & 0x02}
    vendor = {m.hex()[:6] for m in macs - local}
    assert len(local) == 13 and vendor <= set(probe.VENDOR_OUIS)  # real NIC vendors too
    assert set(link.unicast) == macs
    solicits = link.sent_dhcp6()
    assert len(solicits) == 9 * 2  # UEFI architectures only
    assert len(obs.probes) == 52 + 18
    assert 0.3 <= obs.listen_seconds < 1.5


def test_discovers_repeat_through_the_window_with_growing_secs() -> None:
    link = FakeLink()
    lst, obs = listener(link, window=2.0, arches=("efi-x64",), dhcpv6=False)
    lst.run()
    discovers = link.sent_dhcp4()
    assert len(discovers) == 4 * 4  # four rounds of four probes
    by_xid: dict[int, list[dhcp4.Dhcp4Packet]] = {}
    for d in discovers:
        by_xid.setdefault(d.xid, []).append(d)
    assert len(by_xid) == 4
    for repeats in by_xid.values():  # same xid, as a PXE ROM retransmits
        secs = [d.secs for d in repeats]
        assert secs == sorted(secs) and secs[0] <= 3 and secs[-1] >= 12
    assert {d.flags for d in discovers} == {0, 0x8000} or all(
        d.flags == 0x8000 for d in discovers[:4])  # round 0 broadcasts; later rounds vary
    assert all(len(p.sends) == 4 for p in obs.probes)


def test_offers_are_matched_to_their_probe() -> None:
    link = FakeLink([dhcp_server(file=b"undionly.kpxe", ipxe_file=b"https://x/boot.ipxe")])
    lst, obs = listener(link, window=0.3, arches=("bios",), dhcpv6=False)
    seen: list[Offer] = []
    lst.on_offer = seen.append
    lst.run()
    assert len(obs.offers) == 4 and seen == obs.offers  # two machines, PXE ROM and iPXE
    for o in obs.offers:
        assert o.probe is not None and o.probe.arch == "bios"
        assert o.boot_file == ("https://x/boot.ipxe" if o.ipxe_probe else "undionly.kpxe")
    assert obs.offers[0].src_mac == "02:74:62:00:00:01"


def test_answers_to_other_clients_are_kept_without_a_probe() -> None:
    link = FakeLink()
    lst, obs = listener(link, window=0.2, arches=("bios",), dhcpv6=False)
    link.inject(packets.offer_frame(packets.dhcp_reply(xid=1, chaddr=b"\x02" * 6,
                                                       file=b"x.kpxe")))
    lst.run()
    [offer] = obs.offers
    assert offer.probe is None and offer.boot_file == "x.kpxe"


def test_neighbour_solicitation_for_our_address_is_answered() -> None:
    def server6(frame: frames.Frame) -> list[bytes]:
        if frame.dport != 547:
            return []
        ll = frame.src_ip
        # a neighbour solicitation for the probe's link-local address, then the advertise
        target = ipaddress.IPv6Address(ll).packed
        body = struct.pack("!BBHI", frames.ICMPV6_NS, 0, 0, 0) + target
        src = ipaddress.IPv6Address("fe80::1").packed
        ip6 = struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + src + target + body
        ns = frames.ethernet(frame.src_mac, packets.SERVER_MAC, frames.ETH_P_IPV6, ip6)
        msg = dhcp6.parse(frame.payload)
        adv = packets.advertise(xid=msg.xid, client_duid=bytes.fromhex(msg.client_duid or ""),
                                url="http://[2001:db8::1]/boot.efi")
        return [ns, packets.advertise_frame(adv, dst_mac=frame.src_mac)]

    link = FakeLink([server6])
    lst, obs = listener(link, window=0.3, arches=("efi-x64",), ipxe_probe=False)
    lst.run()
    adverts = [f for f in (frames.parse_frame(x) for x in link.sent)
               if f is not None and f.icmp_type == frames.ICMPV6_NA]
    assert len(adverts) == 2 and {a.dst_ip for a in adverts} == {"fe80::1"}
    assert len(obs.replies6) == 2
    for reply in obs.replies6:
        assert reply.probe is not None and reply.probe.arch == "efi-x64"
        assert reply.message.bootfile_url == "http://[2001:db8::1]/boot.efi"


def test_malformed_packets_are_recorded_not_fatal() -> None:
    link = FakeLink()
    lst, obs = listener(link, window=0.2, arches=("bios",), dhcpv6=False)
    bad = packets.dhcp_reply(xid=1, chaddr=b"\x02" * 6, raw_options=b"\x43\xc8evil")
    link.inject(packets.offer_frame(bad, src_mac=packets.ROGUE_MAC, src_ip="192.0.2.9"))
    link.inject(packets.offer_frame(b"\x02" * 50, src_mac=packets.ROGUE_MAC, src_ip="192.0.2.9"))
    link.inject(packets.offer_frame(b"x")[:40])  # UDP length beyond the frame
    lst.run()
    reasons = [(m.protocol, m.reason) for m in obs.malformed]
    assert ("dhcpv4", "options: option 67 length 200 runs past the end") in reasons
    # ... and that offer still counts: iPXE takes it, using the options before the cut.
    assert [(o.server_ip, o.src_ip) for o in obs.offers] == [("192.0.2.9", "192.0.2.9")]
    assert any(p == "dhcpv4" and "too short" in r for p, r in reasons)
    assert any(p == "ip/udp" for p, _ in reasons)
    assert all(m.head_hex for m in obs.malformed)


def test_a_flood_is_bounded_in_time_and_memory() -> None:
    link = FakeLink()
    lst, obs = listener(link, window=0.5, arches=("bios",), dhcpv6=False, ipxe_probe=False)
    for i in range(3000):
        link.inject(packets.offer_frame(b"\x02" * 56 + i.to_bytes(4, "big"),
                                        src_mac=packets.ROGUE_MAC))
    start = time.monotonic()
    lst.run()
    assert time.monotonic() - start < 2.0
    # one sender: a few packets kept as evidence, the rest over its cap, counted
    assert len(obs.malformed) == 5
    assert sum(obs.malformed_counts.values()) + obs.limits["per-server-cap"] == 3000
    assert obs.dropped == obs.limits["per-server-cap"] > 0


def test_passive_mode_sends_nothing_and_notes_clients() -> None:
    link = FakeLink()
    lst, obs = listener(link, window=0.2, passive=True)
    discover = dhcp4.build_discover(mac=b"\x02\x11\x22\x33\x44\x55", xid=5,
                                    arch=dhcp4.ARCHES["efi-x64"], uuid=bytes(16))
    link.inject(frames.udp4_frame(src_mac=b"\x02\x11\x22\x33\x44\x55",
                                  dst_mac=frames.BROADCAST_MAC, src_ip="0.0.0.0",
                                  dst_ip="255.255.255.255", sport=68, dport=67,
                                  payload=discover))
    link.inject(packets.offer_frame(packets.dhcp_reply(xid=5, chaddr=b"\x02\x11\x22\x33\x44\x55",
                                                       file=b"a.efi")))
    lst.run()
    assert link.sent == [] and obs.probes == []
    assert obs.clients_seen == ["02:11:22:33:44:55 PXEClient:Arch:00007:UNDI:003016"]
    assert len(obs.offers) == 1 and obs.offers[0].probe is None


def test_proxy_offer_without_an_address_notes_the_skipped_query() -> None:
    proxy = dhcp_server(src_mac=packets.ROGUE_MAC, src_ip="192.0.2.3", yiaddr="0.0.0.0",
                        options=[(60, b"PXEClient")])
    link = FakeLink([proxy])
    lst, obs = listener(link, window=0.2, arches=("bios",), dhcpv6=False, ipxe_probe=False)
    lst.run()
    assert len(obs.offers) == 2
    offer = obs.offers[0]
    assert offer.is_proxy and offer.role == "proxydhcp"
    assert any("not queried on port 4011" in n for n in obs.notes)


def _proxy_naming(server_id: str) -> Responder:
    """A ProxyDHCP answer from 192.0.2.3 whose server identifier (option 54) says
    ``server_id``: where a PXE client sends its port-4011 request."""
    def respond(frame: frames.Frame) -> list[bytes]:
        if frame.dport != 67:
            return []
        req = dhcp4.parse(frame.payload)
        reply = packets.dhcp_reply(xid=req.xid, chaddr=req.chaddr, yiaddr="0.0.0.0",
                                   siaddr="192.0.2.3", server_id=server_id,
                                   options=[(60, b"PXEClient")])
        return [packets.offer_frame(reply, src_mac=packets.ROGUE_MAC, src_ip="192.0.2.3")]
    return respond


@pytest.mark.parametrize(("server_id", "why"), [
    ("127.0.0.1", "loopback"),
    ("169.254.169.254", "link-local"),
    ("192.0.2.50", "an address of the auditing host"),
    ("255.255.255.255", "multicast/broadcast"),
])
def test_a_proxydhcp_naming_a_local_address_is_not_queried(server_id: str, why: str) -> None:
    """The port-4011 query went wherever option 54 said, this host or 127.0.0.1 included,
    without the vetting every fetch gets: it is refused the same way, and noted."""
    link = FakeLink([_proxy_naming(server_id)])
    lst, obs = listener(link, window=0.2, arches=("bios",), dhcpv6=False, ipxe_probe=False,
                        own_ip="192.0.2.50")
    lst.run()
    assert len(obs.offers) == 2 and all(o.is_proxy for o in obs.offers)
    assert not [p for p in obs.probes if p.protocol == "proxydhcp"]
    assert lst.udp is None  # not even a socket
    [note] = [n for n in obs.notes if "port 4011" in n]
    assert f"server identifier {server_id} is {why}" in note and "192.0.2.3" in note


def test_a_proxydhcp_on_the_segment_is_still_queried() -> None:
    link = FakeLink([_proxy_naming("192.0.2.3")])
    lst, obs = listener(link, window=0.2, arches=("bios",), dhcpv6=False, ipxe_probe=False,
                        own_ip="192.0.2.50")
    lst.run()
    [query] = [p for p in obs.probes if p.protocol == "proxydhcp"]
    assert query.target == "192.0.2.3:4011"
    assert not [n for n in obs.notes if "not queried" in n]


def _junk_offer(i: int) -> bytes:
    """A well-formed offer to another client, from a sender of its own."""
    mac = b"\x02\xee" + i.to_bytes(4, "big")
    reply = packets.dhcp_reply(xid=0x10000000 + i, chaddr=b"\x02" * 6, file=b"junk.kpxe",
                               server_id="192.0.2.77", siaddr="192.0.2.77")
    return packets.offer_frame(reply, src_mac=mac, src_ip="192.0.2.77")


def _noise_then(link: FakeLink, noise: Callable[[dhcp4.Dhcp4Packet], list[bytes]],
                answer: Responder) -> Responder:
    """A responder that, on the first DISCOVER, sends ``noise`` and then its real answer,
    from another thread while the listener reads (as on a wire)."""
    started: list[threading.Thread] = []

    def respond(frame: frames.Frame) -> list[bytes]:
        if frame.dport != 67 or started:
            return []
        req = dhcp4.parse(frame.payload)
        replies = answer(frame)

        def send() -> None:
            for junk_frame in noise(req):
                link.inject(junk_frame)
            for reply in replies:
                link.inject(reply)
        started.append(threading.Thread(target=send, daemon=True))
        started[0].start()
        return []
    return respond


def test_a_flood_of_foreign_offers_does_not_hide_the_rogue() -> None:
    """20,000 offers from 20,000 senders, then the rogue's answer to our probe: it is kept,
    and what the flood pushed out is recorded as reached limits."""
    rogue = dhcp_server(file=b"evil.kpxe", src_mac=packets.ROGUE_MAC, src_ip="192.0.2.2")
    junk = [_junk_offer(i) for i in range(20_000)]
    link = FakeLink()
    lst, obs = listener(link, window=2.0, arches=("bios",), dhcpv6=False, ipxe_probe=False)
    link.responders = [_noise_then(link, lambda _req: junk, rogue)]
    link.kernel_drops = 7
    start = time.monotonic()
    lst.run()
    assert time.monotonic() - start < 3.5
    assert any(o.src_mac == "02:74:62:00:00:02" and o.boot_file == "evil.kpxe"
               for o in obs.offers)
    assert obs.limits["server-count-cap"] > 0 and obs.limits["kernel-drops"] == 7
    assert len(obs.offers) <= probe.MAX_OFFERS


def test_spoofed_offers_from_one_sender_do_not_hide_the_rogue() -> None:
    """2,100 distinct offers spoofing the authorized server (answering our own probes),
    then the rogue's: the rogue is kept; the spoofer is capped, and that is recorded."""
    auth = dhcp_server(file=b"undionly.kpxe")
    rogue = dhcp_server(file=b"evil.kpxe", src_mac=packets.ROGUE_MAC, src_ip="192.0.2.2")
    link = FakeLink()
    lst, obs = listener(link, window=1.0, arches=("bios",), dhcpv6=False, ipxe_probe=False)

    def spoofed(req: dhcp4.Dhcp4Packet) -> list[bytes]:  # ~0.1 s to build
        return [packets.offer_frame(packets.dhcp_reply(xid=req.xid, chaddr=req.chaddr,
                                                       file=f"f{i}".encode()))
                for i in range(2100)]

    link.responders = [_noise_then(link, spoofed, lambda f: auth(f) + rogue(f))]
    lst.run()
    assert any(o.src_mac == "02:74:62:00:00:02" for o in obs.offers)
    assert obs.limits["per-server-cap"] > 0
    assert obs.limit_samples["per-server-cap"] == ["192.0.2.1 (02:74:62:00:00:01)"]


def test_answers_from_any_source_port_are_recorded() -> None:
    link = FakeLink()
    lst, obs = listener(link, window=0.2, arches=("bios",), dhcpv6=False)
    reply = packets.dhcp_reply(xid=9, chaddr=b"\x02" * 6, file=b"odd.kpxe")
    link.inject(packets.offer_frame(reply, sport=6767, src_mac=packets.ROGUE_MAC))
    lst.run()
    [offer] = obs.offers
    assert offer.port == 6767 and offer.boot_file == "odd.kpxe"


def test_port_4011_queries_are_bounded() -> None:
    """200 fake ProxyDHCP servers do not make the audit send 200 (x arches) queries."""
    def proxies(frame: frames.Frame) -> list[bytes]:
        if frame.dport != 67:
            return []
        req = dhcp4.parse(frame.payload)
        return [packets.offer_frame(packets.dhcp_reply(
            xid=req.xid, chaddr=req.chaddr, yiaddr="0.0.0.0", server_id=f"198.51.100.{i}",
            siaddr=f"198.51.100.{i}", options=[(60, b"PXEClient")]),
            src_mac=b"\x02\xfb\x00\x00\x00" + bytes([i]), src_ip=f"198.51.100.{i}")
            for i in range(1, 201)]

    link = FakeLink([proxies])
    lst, obs = listener(link, window=0.3, arches=("bios",), dhcpv6=False, ipxe_probe=False)
    lst.run()
    assert len(lst.state.proxied) == probe.MAX_PROXY_QUERIES
    assert obs.limits["proxy-queries"] > 0


def _fragmented_rogue(order: Callable[[list[bytes]], list[bytes]]) -> Responder:
    """A rogue DHCP server that sends its offers in IPv4 fragments (in ``order``): a
    client's stack reassembles them, so the audit must too."""
    def respond(frame: frames.Frame) -> list[bytes]:
        if frame.dport != 67:
            return []
        req = dhcp4.parse(frame.payload)
        reply = packets.dhcp_reply(xid=req.xid, chaddr=req.chaddr, file=b"rogue.kpxe",
                                   server_id="192.0.2.66", siaddr="192.0.2.66")
        whole = packets.offer_frame(reply, src_mac=packets.ROGUE_MAC, src_ip="192.0.2.66")
        return order(packets.fragment(whole, 64, ident=req.xid & 0xFFFF))
    return respond


@pytest.mark.parametrize("order", [list, lambda f: f[::-1], lambda f: f[1:] + f[:1]],
                         ids=["in-order", "reversed", "first-last"])
def test_a_fragmented_offer_is_reassembled(order: Callable[[list[bytes]], list[bytes]]
                                           ) -> None:
    link = FakeLink([_fragmented_rogue(order)])
    lst, obs = listener(link, window=0.3, arches=("bios",), dhcpv6=False, ipxe_probe=False)
    lst.run()
    assert obs.offers, [m.reason for m in obs.malformed]
    assert {(o.server_ip, o.boot_file) for o in obs.offers} == {("192.0.2.66", "rogue.kpxe")}
    assert all(o.probe is not None for o in obs.offers)
    assert not obs.malformed and not obs.limits


def test_fragments_that_cannot_be_one_datagram_are_malformed_from_their_sender() -> None:
    link = FakeLink()
    lst, obs = listener(link, window=0.2, arches=("bios",), dhcpv6=False)
    reply = packets.dhcp_reply(xid=7, chaddr=b"\x02" * 6, file=b"x.kpxe")
    whole = packets.offer_frame(reply, src_mac=packets.ROGUE_MAC, src_ip="192.0.2.66")
    parts = packets.fragment(whole, 64, ident=1)
    overlap = packets.fragment(whole, 128, ident=1)[1]  # overlaps parts[2] and [3]
    for frame in [*parts[:3], overlap]:
        link.inject(frame)
    link.inject(packets.fragment(whole, 64, ident=2)[0])  # the rest never comes
    lst.run()
    assert not obs.offers
    reasons = {(m.src_ip, m.reason) for m in obs.malformed}
    assert any(ip == "192.0.2.66" and "overlapping" in r for ip, r in reasons), reasons
    assert ("192.0.2.66", "fragmented IPv4 datagram that never completed") in reasons


def test_fragment_reassembly_is_bounded() -> None:
    reasm = frames.Reassembler()
    whole = packets.offer_frame(b"\x02" * 300)
    for ident in range(frames.MAX_PENDING_DATAGRAMS + 10):
        assert reasm.add(packets.fragment(whole, 64, ident=ident)[0], 0.0) is None
    assert reasm.dropped == 10
    assert reasm.add(packets.fragment(whole, 64, ident=0)[0], 0.0) is None  # a copy
    reasm.add(packets.fragment(whole, 64, ident=5000)[0], frames.FRAGMENT_TIMEOUT + 1)
    assert len(reasm.incomplete) == frames.MAX_PENDING_DATAGRAMS  # expired, with senders
    tiny = packets.fragment(packets.offer_frame(b"\x02" * 600), 8, ident=9)
    with pytest.raises(MalformedPacket, match="more than"):
        for frame in tiny:
            reasm.add(frame, 10.0)


def _with_fragment_field(frame: bytes, value: int) -> bytes:
    out = bytearray(frame)
    struct.pack_into("!H", out, 14 + 6, value)
    return bytes(out)


def _offset(frame: bytes) -> int:
    return int(struct.unpack_from("!H", frame, 14 + 6)[0]) & 0x1FFF


def _with_ip_total(frame: bytes, delta: int) -> bytes:
    out = bytearray(frame)
    struct.pack_into("!H", out, 14 + 2, struct.unpack_from("!H", out, 14 + 2)[0] + delta)
    return bytes(out)


@pytest.mark.parametrize(("frames_in", "reason"), [
    # a fragment with more to come must carry a multiple of 8 bytes
    (lambda parts: [_with_ip_total(parts[0][:-4], -4)], "not a multiple of 8"),
    # an offset that puts the end past 65535
    (lambda parts: [_with_fragment_field(parts[0], 0x2000 | 0x1FFF)], "longer than 65535"),
    # two last fragments that end in different places
    (lambda parts: [_with_fragment_field(parts[-2], _offset(parts[-2])), parts[-1]],
     "do not add up"),
    # after the last fragment, one with more to come that reaches past its end
    (lambda parts: [parts[-1], _with_fragment_field(parts[0], 0x2000 | 40)], "do not add up"),
    # an IPv4 header whose total length is beyond the fragment's frame
    (lambda parts: [_with_ip_total(parts[0], 64)], "IPv4 header lengths are inconsistent"),
], ids=["not-multiple-of-8", "past-65535", "two-last", "past-the-end", "ip-total"])
def test_fragments_that_cannot_be_one_datagram_are_refused(
        frames_in: Callable[[list[bytes]], list[bytes]], reason: str) -> None:
    whole = packets.offer_frame(b"\x02" * 300)
    parts = packets.fragment(whole, 64, ident=3)
    reasm = frames.Reassembler()
    with pytest.raises(MalformedPacket, match=reason):
        for frame in frames_in(parts):
            reasm.add(frame, 0.0)


def test_an_ipv6_fragment_whose_payload_length_runs_past_the_frame_is_refused() -> None:
    whole = frames.udp6_frame(src_mac=b"\x02" * 6, dst_mac=b"\x02" * 6, src_ip="fe80::1",
                              dst_ip="fe80::2", sport=547, dport=546, payload=b"y" * 100)
    first = bytearray(packets.fragment6(whole, 48)[0])
    struct.pack_into("!H", first, 14 + 4, struct.unpack_from("!H", first, 14 + 4)[0] + 8)
    with pytest.raises(MalformedPacket, match="IPv6 payload length runs past the frame"):
        frames.Reassembler().add(bytes(first), 0.0)


def _oversized_fragments(family: int) -> list[bytes]:
    """One UDP datagram to a client port whose 65535 payload bytes come in ordinary
    1500-byte fragments: the payload fits the fragment offsets, the payload with its
    headers does not fit the IP length field (IPv4: the header counts; IPv6: a
    hop-by-hop header before the fragment header counts)."""
    payload = struct.pack("!HHHH", 67 if family == 4 else 547, 68 if family == 4 else 546,
                          8, 0) + b"A" * (65535 - 8)
    step = 1480 if family == 4 else 1448
    out = []
    for at in range(0, len(payload), step):
        piece, more = payload[at : at + step], at + step < len(payload)
        if family == 4:
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(piece), 0x1234,
                             (0x2000 if more else 0) | at // 8, 64, 17, 0,
                             bytes([192, 0, 2, 66]), bytes([255, 255, 255, 255]))
            out.append(frames.ethernet(frames.BROADCAST_MAC, packets.ROGUE_MAC, 0x0800,
                                       ip + piece))
        else:
            fixed = struct.pack("!IHBB16s16s", 6 << 28, 16 + len(piece), 0, 64,
                                ipaddress.IPv6Address("fe80::66").packed,
                                ipaddress.IPv6Address("fe80::1").packed)
            hop_by_hop = bytes([44, 0, 1, 4, 0, 0, 0, 0])  # then the fragment header
            fragment = struct.pack("!BBHI", 17, 0, at | more, 0x1234)
            out.append(frames.ethernet(b"\x33\x33\x00\x01\x00\x02", packets.ROGUE_MAC,
                                       0x86DD, fixed + hop_by_hop + fragment + piece))
    return out


@pytest.mark.parametrize("family", [4, 6])
def test_a_datagram_too_long_with_its_headers_is_malformed_not_fatal(family: int) -> None:
    # A rogue could stop the audit that looks for it: struct.error out of the reassembler
    # ended the listen loop (exit 70). Now: malformed, from its sender, and the audit goes on.
    link = FakeLink()
    lst, obs = listener(link, window=0.2, arches=("bios",), dhcpv6=False)
    for frame in _oversized_fragments(family):
        link.inject(frame)
    link.inject(packets.offer_frame(packets.dhcp_reply(xid=1, chaddr=b"\x02" * 6,
                                                       file=b"later.kpxe")))
    lst.run()
    source = "192.0.2.66" if family == 4 else "fe80::66"
    assert [m.reason for m in obs.malformed if m.src_ip == source] == [
        "IP fragments of a datagram longer than 65535 bytes with its headers"]
    assert [o.boot_file for o in obs.offers] == ["later.kpxe"]  # seen after it


def test_a_fragmented_advertise_is_reassembled() -> None:
    """IPv6 too: a DHCPv6 Advertise in fragments (last first) is what a client sees."""
    def server6(frame: frames.Frame) -> list[bytes]:
        if frame.dport != 547:
            return []
        msg = dhcp6.parse(frame.payload)
        adv = packets.advertise(xid=msg.xid, client_duid=bytes.fromhex(msg.client_duid or ""),
                                url="http://[2001:db8::66]/rogue.efi")
        return packets.fragment6(packets.advertise_frame(adv, dst_mac=frame.src_mac), 48,
                                 ident=msg.xid)[::-1]

    link = FakeLink([server6])
    lst, obs = listener(link, window=0.3, arches=("efi-x64",), ipxe_probe=False)
    lst.run()
    assert obs.replies6, [m.reason for m in obs.malformed]
    assert {r.message.bootfile_url for r in obs.replies6} == {"http://[2001:db8::66]/rogue.efi"}
    assert not obs.malformed and not obs.limits


def test_a_dhcpv6_advertise_cut_short_is_still_an_answer() -> None:
    """A rogue DHCPv6 server appending a broken option: iPXE still uses the boot URL before
    it, so the audit records the answer (and the damage as malformed-packet evidence)."""
    def server6(frame: frames.Frame) -> list[bytes]:
        if frame.dport != 547:
            return []
        msg = dhcp6.parse(frame.payload)
        adv = packets.advertise(xid=msg.xid, client_duid=bytes.fromhex(msg.client_duid or ""),
                                url="http://[2001:db8::66]/evil.efi") + b"\x00\x3b\x00\x40x"
        return [packets.advertise_frame(adv, dst_mac=frame.src_mac)]

    link = FakeLink([server6])
    lst, obs = listener(link, window=0.3, arches=("efi-x64",), ipxe_probe=False)
    lst.run()
    assert obs.replies6
    assert {r.message.bootfile_url for r in obs.replies6} == {"http://[2001:db8::66]/evil.efi"}
    assert ("dhcpv6", "option 59 length 64 runs past the end") in {
        (m.protocol, m.reason) for m in obs.malformed}


def _split_option_offer(i: int) -> list[bytes]:
    """An offer whose option 67 is sent 250 times (RFC 3396: one 64 KB name), in IPv4
    fragments, from a sender of its own."""
    body = packets.opt(53, bytes([dhcp4.OFFER])) + packets.opt(54, bytes([192, 0, 2, 7]))
    for k in range(250):
        body += packets.opt(67, bytes([65 + k % 26]) * 254 + b"\0")
    reply = packets.dhcp_reply(xid=0x20000000 + i, chaddr=b"\x02" * 6, raw_options=body)
    frame = packets.offer_frame(reply, src_mac=b"\x02\xdd" + i.to_bytes(4, "big"),
                                src_ip="192.0.2.7")
    return packets.fragment(frame, 1480, ident=i)


def test_a_flood_of_huge_split_options_stays_within_bounds() -> None:
    """The reviewer's flood: offers whose option 67 is repeated 250 times (64 KB each).
    Joined without bound and escaped again at every read, 162 of them made an audit run
    65 s and use 348 MB. Values are capped when decoded (and the cut is an anomaly) and
    decoded once, so memory and time stay small (margins here are ten times or more)."""
    import json
    import tracemalloc
    from datetime import UTC, datetime

    from trustboot.audit.checks import evaluate
    from trustboot.audit.policy import policy_from_dict
    from trustboot.audit.report import to_json, to_table
    from trustboot.audit.runner import AuditResult

    count = 160
    floods = [_split_option_offer(i) for i in range(count)]
    link = FakeLink()
    lst, obs = listener(link, window=1.0, arches=("bios",), dhcpv6=False, ipxe_probe=False)

    def send() -> None:
        for parts in floods:
            for part in parts:
                link.inject(part)

    threading.Thread(target=send, daemon=True).start()
    start = time.monotonic()
    lst.run()
    assert time.monotonic() - start < 5.0
    assert len(obs.offers) == count, (len(obs.offers), obs.limits, obs.malformed[:1])
    kept = sum(len(v) for o in obs.offers for v in o.packet.options.values())
    assert kept < count * 4 * 1024  # 64 KB each when joined without bound
    first = obs.offers[0].packet
    assert len(first.options[67]) == dhcp4.MAX_OPTION_VALUE
    assert any("the audit keeps its first" in a for a in first.anomalies)
    assert any("option 67 sent 250 times" in a for a in first.anomalies)
    # decoded once per packet, however many checks read it
    assert first.text_option(67) is first.text_option(67)
    assert obs.offers[0].boot_targets()[0] is obs.offers[0].boot_targets()[0]
    policy = policy_from_dict({"authorized_servers": [{"ip": "192.0.2.1"}],
                               "expected_origin": "https://boot.example/"})
    tracemalloc.start()
    start = time.monotonic()
    try:
        findings = evaluate(obs, policy)
        now = datetime.now(UTC)
        result = AuditResult(obs, findings, policy, now, now)
        report = json.dumps(to_json(result, None))
        table = to_table(result, None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    took = time.monotonic() - start
    assert took < 10.0, took  # about 0.3 s here (with tracemalloc)
    assert peak < 32 * 1024 * 1024, peak  # about 3 MB here
    assert len(report) < 2 * 1024 * 1024 and len(table) < 256 * 1024
    assert {f.rule for f in findings} >= {"rogue-dhcp", "boot-name-after-nul"}


def _dhcpv6_server(*, duid_mac: bytes, sender_mac: bytes, url: str) -> Responder:
    """Answers Solicits with an Advertise whose DUID-LL embeds ``duid_mac``, sent from
    ``sender_mac`` (and its link-local address)."""
    def respond(frame: frames.Frame) -> list[bytes]:
        if frame.dport != 547:
            return []
        msg = dhcp6.parse(frame.payload)
        adv = packets.advertise(xid=msg.xid, client_duid=bytes.fromhex(msg.client_duid or ""),
                                url=url, server_mac=duid_mac)
        return [packets.advertise_frame(adv, dst_mac=frame.src_mac, server_mac=sender_mac)]
    return respond


@pytest.mark.parametrize("authorized", [
    {"duid": dhcp6.duid_ll(packets.SERVER_MAC).hex(), "role": "dhcpv6"},
    {"duid": dhcp6.duid_ll(packets.SERVER_MAC).hex(), "mac": "02:74:62:00:00:01",
     "role": "dhcpv6"},
], ids=["duid-only", "duid-and-mac"])
def test_a_dhcpv6_rogue_copying_the_authorized_duid_is_flagged(
        authorized: dict[str, str]) -> None:
    """A rogue copying the authorized server's DUID, answering after it from its own MAC and
    address with its own boot URL: authorization is per sender (DUID, address, MAC), so the
    rogue is judged on its own, counted as a responder of its own, and fails the audit."""
    from datetime import UTC, datetime

    from trustboot.audit.checks import Severity, evaluate, threshold_reached
    from trustboot.audit.model import responders
    from trustboot.audit.policy import policy_from_dict
    from trustboot.audit.report import summary
    from trustboot.audit.runner import AuditResult

    legit = _dhcpv6_server(duid_mac=packets.SERVER_MAC, sender_mac=packets.SERVER_MAC,
                           url="https://[2001:db8::1]/boot.ipxe")
    rogue = _dhcpv6_server(duid_mac=packets.SERVER_MAC, sender_mac=packets.ROGUE_MAC,
                           url="https://[2001:db8::66]/evil.efi")
    link = FakeLink([legit, rogue])  # the authorized server answers first
    lst, obs = listener(link, window=0.3, arches=("efi-x64",), ipxe_probe=False)
    lst.run()
    assert {r.src_mac for r in obs.replies6} == {"02:74:62:00:00:01", "02:74:62:00:00:02"}
    pol = policy_from_dict({"authorized_servers": [authorized]})
    findings = evaluate(obs, pol)
    flagged = [f for f in findings if f.rule in ("rogue-dhcpv6", "server-identity-conflict")]
    assert flagged, [f.rule for f in findings]
    assert {f.evidence["source_mac"] for f in flagged} == {"02:74:62:00:00:02"}
    assert all(f.severity >= Severity.HIGH for f in flagged)
    if "mac" in authorized:
        assert [f.rule for f in flagged] == ["rogue-dhcpv6"]
        assert flagged[0].severity == Severity.CRITICAL  # it hands out a boot URL
        assert "spoofed_duid" in flagged[0].evidence
    else:  # the DUID-LL's own MAC is not the rogue's
        assert "server-identity-conflict" in [f.rule for f in flagged]
    assert threshold_reached(findings, Severity.HIGH)
    v6 = [r for r in responders(obs) if r["protocol"] == "dhcpv6"]
    assert sorted(str(r["server_mac"]) for r in v6) == ["02:74:62:00:00:01",
                                                         "02:74:62:00:00:02"]
    assert {u for r in v6 for u in r["boot_urls"]} == {  # type: ignore[attr-defined]
        "https://[2001:db8::1]/boot.ipxe", "https://[2001:db8::66]/evil.efi"}
    now = datetime.now(UTC)
    result = AuditResult(obs, findings, pol, now, now)
    assert summary(result, Severity.HIGH)["responders"] == 2
    assert summary(result, Severity.HIGH)["failed"]


def _large_offer(sender: int, n: int) -> bytes:
    """A 16 KB offer to some other client (a PXE boot menu in option 43, sent 8 times, and
    62 other options of 250 bytes), distinct from every other one by its xid."""
    menu = b"".join(struct.pack("!HB", k, 60) + bytes([65 + k % 26]) * 60 for k in range(4))
    vendor = bytes([9, len(menu)]) + menu
    options = [(43, vendor)] * 8 + [(code, bytes([code]) * 250) for code in range(128, 190)]
    reply = packets.dhcp_reply(xid=0x30000000 + sender * 64 + n, chaddr=b"\x02" * 6,
                               server_id="192.0.2.9", options=options)
    return packets.offer_frame(reply, src_mac=b"\x02\xee" + sender.to_bytes(4, "big"),
                               src_ip="192.0.2.9")


def test_large_answers_are_kept_within_a_byte_budget() -> None:
    """4,096 distinct 16 KB answers (256 senders, each within its own cap): kept whole
    they were 64 MB (8,000 of 64 KB: 1.2 GB and a 100 MB report). What is kept stays within
    the byte budget, the rest is a reached limit reported as such, and each answer's
    evidence stays small."""
    import json
    from datetime import UTC, datetime

    from trustboot.audit.checks import evaluate
    from trustboot.audit.policy import policy_from_dict
    from trustboot.audit.report import to_json
    from trustboot.audit.runner import AuditResult

    frames_ = [_large_offer(s, n) for s in range(probe.MAX_FOREIGN_SENDERS)
               for n in range(probe.FOREIGN_PER_SENDER)]
    size = len(frames_[0])
    assert all(len(f) == size for f in frames_) and 16_000 < size < 20_000
    link = FakeLink()
    lst, obs = listener(link, window=2.0, arches=("bios",), dhcpv6=False, ipxe_probe=False)

    def send() -> None:
        for frame in frames_:
            link.inject(frame)

    threading.Thread(target=send, daemon=True).start()
    lst.run()
    kept = len(obs.offers) * size  # bytes of the answers kept
    assert kept <= 32 * 1024 * 1024, (len(obs.offers), kept)
    assert obs.limits.get("byte-cap", 0) > 0, obs.limits
    assert len(obs.offers) + obs.limits["byte-cap"] + obs.limits.get("backlog", 0) \
        + obs.limits.get("kernel-drops", 0) == len(frames_), obs.limits
    pol = policy_from_dict({"authorized_servers": [{"ip": "192.0.2.1"}]})
    findings = evaluate(obs, pol)
    assert any(f.rule == "audit-limit-reached" and f.evidence["limit"] == "byte-cap"
               for f in findings)
    now = datetime.now(UTC)
    report = json.dumps(to_json(AuditResult(obs, findings, pol, now, now), None))
    assert len(report) < len(obs.offers) * 6 * 1024, len(report) / len(obs.offers)


def test_the_evidence_of_one_answer_is_bounded() -> None:
    """A boot menu of 200 items and 20 unknown PXE sub-options in option 43: its evidence
    names the first few of each, with a count of the rest (it was every one, per answer)."""
    menu = b"".join(struct.pack("!HB", k, 1) + b"m" for k in range(200))
    vendor = b"".join(bytes([9, 200]) + menu[i : i + 200] for i in range(0, 800, 200))
    vendor += b"".join(bytes([100 + k, 40]) + b"\xaa" * 40 for k in range(20))
    options = [(43, vendor[i : i + 255]) for i in range(0, len(vendor), 255)]
    raw = packets.dhcp_reply(xid=1, chaddr=b"\x02" * 6, options=options)
    vendor_options = dhcp4.parse(raw).pxe_vendor_options() or {}
    assert len(vendor_options) > 16
    described = dhcp4.describe_pxe_vendor(vendor_options)
    assert len(str(described)) < 3072, len(str(described))
