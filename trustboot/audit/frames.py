"""Ethernet, IPv4, IPv6, UDP and the bit of ICMPv6 neighbour discovery the probe needs. No I/O.

The probe speaks from a random MAC, as a booting machine would, so it builds whole frames
and answers neighbour solicitations for its own link-local addresses itself.
``parse_frame`` returns None for frames that are not UDP or ICMPv6 over IP and raises
:class:`MalformedPacket` for IP/UDP headers that lie about their lengths.
:class:`Reassembler` puts fragmented IP datagrams back together first, as a client's
stack does (iPXE, EDK2): a rogue must not hide its offer by fragmenting it.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from trustboot.audit.errors import MalformedPacket

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
IPPROTO_FRAGMENT = 44
BROADCAST_MAC = b"\xff" * 6
ICMPV6_NS = 135
ICMPV6_NA = 136
MAX_PENDING_DATAGRAMS = 64  # fragmented datagrams being put together at once
MAX_FRAGMENTS = 64  # fragments of one datagram
FRAGMENT_TIMEOUT = 3.0  # seconds a datagram's fragments wait for the rest


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def udp4_frame(
    *, src_mac: bytes, dst_mac: bytes, src_ip: str, dst_ip: str, sport: int, dport: int,
    payload: bytes,
) -> bytes:
    src = ipaddress.IPv4Address(src_ip).packed
    dst = ipaddress.IPv4Address(dst_ip).packed
    udp_len = 8 + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, IPPROTO_UDP, udp_len)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    csum = checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0x10, 20 + udp_len, 0, 0, 64, IPPROTO_UDP, 0, src, dst
    )
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ethernet(dst_mac, src_mac, ETH_P_IP, ip + udp)


def _ip6_packet(src: bytes, dst: bytes, next_header: int, body: bytes, hop_limit: int) -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(body), next_header, hop_limit) + src + dst + body


def _ip6_checksum(src: bytes, dst: bytes, next_header: int, body: bytes) -> int:
    pseudo = src + dst + struct.pack("!I3xB", len(body), next_header)
    return checksum(pseudo + body) or 0xFFFF


def multicast_mac(ip6: str) -> bytes:
    return b"\x33\x33" + ipaddress.IPv6Address(ip6).packed[-4:]


def link_local_from_mac(mac: bytes) -> str:
    eui = bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:6]
    return str(ipaddress.IPv6Address(b"\xfe\x80" + b"\0" * 6 + eui))


def udp6_frame(
    *, src_mac: bytes, dst_mac: bytes, src_ip: str, dst_ip: str, sport: int, dport: int,
    payload: bytes, hop_limit: int = 1,
) -> bytes:
    src = ipaddress.IPv6Address(src_ip).packed
    dst = ipaddress.IPv6Address(dst_ip).packed
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    csum = _ip6_checksum(src, dst, IPPROTO_UDP, udp)
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    return ethernet(dst_mac, src_mac, ETH_P_IPV6, _ip6_packet(src, dst, IPPROTO_UDP, udp,
                                                                  hop_limit))


def neighbour_advert(
    *, src_mac: bytes, dst_mac: bytes, target: str, dst_ip: str
) -> bytes:
    """A solicited neighbour advertisement for ``target`` (ours), sent from it."""
    src = ipaddress.IPv6Address(target).packed
    dst = ipaddress.IPv6Address(dst_ip).packed
    # type, code, checksum, flags (solicited + override), target, option 2 (target lladdr)
    body = struct.pack("!BBHI", ICMPV6_NA, 0, 0, 0x60000000) + src + bytes([2, 1]) + src_mac
    csum = _ip6_checksum(src, dst, IPPROTO_ICMPV6, body)
    body = body[:2] + struct.pack("!H", csum) + body[4:]
    return ethernet(dst_mac, src_mac, ETH_P_IPV6, _ip6_packet(src, dst, IPPROTO_ICMPV6, body,
                                                                  255))


@dataclass(frozen=True)
class Frame:
    """A decoded UDP datagram (or ICMPv6 message) with the addresses it came with."""

    src_mac: bytes
    dst_mac: bytes
    family: int  # 4 or 6
    src_ip: str
    dst_ip: str
    protocol: int
    sport: int
    dport: int
    payload: bytes
    icmp_type: int | None = None


def parse_frame(frame: bytes) -> Frame | None:
    """Decode an Ethernet frame down to UDP/ICMPv6; None when it is something else."""
    if len(frame) < 14:
        return None
    dst_mac, src_mac = frame[0:6], frame[6:12]
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    offset = 14
    if ethertype == ETH_P_8021Q:
        if len(frame) < 18:
            return None
        ethertype = struct.unpack_from("!H", frame, 16)[0]
        offset = 18
    if ethertype == ETH_P_IP:
        return _parse_ip4(frame[offset:], src_mac, dst_mac)
    if ethertype == ETH_P_IPV6:
        return _parse_ip6(frame[offset:], src_mac, dst_mac)
    return None


def _parse_ip4(packet: bytes, src_mac: bytes, dst_mac: bytes) -> Frame | None:
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total = struct.unpack_from("!H", packet, 2)[0]
    frag = struct.unpack_from("!H", packet, 6)[0]
    proto = packet[9]
    if proto != IPPROTO_UDP:
        return None
    if ihl < 20 or total < ihl or total > len(packet):
        raise MalformedPacket("IPv4 header lengths are inconsistent")
    if frag & 0x3FFF:
        raise MalformedPacket("fragmented IPv4 datagram (not reassembled)")
    src_ip = str(ipaddress.IPv4Address(packet[12:16]))
    dst_ip = str(ipaddress.IPv4Address(packet[16:20]))
    return _parse_udp(packet[ihl:total], 4, src_ip, dst_ip, src_mac, dst_mac)


def _parse_ip6(packet: bytes, src_mac: bytes, dst_mac: bytes) -> Frame | None:
    if len(packet) < 40 or packet[0] >> 4 != 6:
        return None
    plen = struct.unpack_from("!H", packet, 4)[0]
    next_header = packet[6]
    src_ip = str(ipaddress.IPv6Address(packet[8:24]))
    dst_ip = str(ipaddress.IPv6Address(packet[24:40]))
    body = packet[40 : 40 + plen]
    if len(body) < plen:
        raise MalformedPacket("IPv6 payload length runs past the frame")
    # Skip hop-by-hop options (MLD reports carry them); anything else we leave alone.
    if next_header == 0:
        if len(body) < 8:
            return None
        next_header, hlen = body[0], (body[1] + 1) * 8
        body = body[hlen:]
    if next_header == IPPROTO_UDP:
        return _parse_udp(body, 6, src_ip, dst_ip, src_mac, dst_mac)
    if next_header == IPPROTO_ICMPV6 and len(body) >= 4:
        return Frame(src_mac, dst_mac, 6, src_ip, dst_ip, IPPROTO_ICMPV6, 0, 0, body,
                     icmp_type=body[0])
    return None


def _parse_udp(
    seg: bytes, family: int, src_ip: str, dst_ip: str, src_mac: bytes, dst_mac: bytes
) -> Frame:
    if len(seg) < 8:
        raise MalformedPacket("UDP header truncated")
    sport, dport, length = struct.unpack_from("!HHH", seg, 0)
    if length < 8 or length > len(seg):
        raise MalformedPacket("UDP length field is inconsistent")
    return Frame(src_mac, dst_mac, family, src_ip, dst_ip, IPPROTO_UDP, sport, dport,
                 seg[8:length])


def neighbour_solicitation_target(frame: Frame) -> str | None:
    """The target address of an ICMPv6 neighbour solicitation, else None."""
    if frame.icmp_type != ICMPV6_NS or len(frame.payload) < 24:
        return None
    return str(ipaddress.IPv6Address(frame.payload[8:24]))


def _ip_start(frame: bytes, ethertype: bytes) -> int | None:
    """Where the IP header of an Ethernet frame (VLAN-tagged or not) starts, or None."""
    if len(frame) >= 18 and frame[12:14] == b"\x81\x00":
        return 18 if frame[16:18] == ethertype else None
    return 14 if frame[12:14] == ethertype else None


@dataclass(frozen=True)
class _Fragment:
    key: tuple[bytes, ...]  # addresses, identification (and protocol)
    source: tuple[str, bytes]  # the sender's IP address and MAC
    offset: int
    more: bool
    data: bytes
    head: bytes  # Ethernet + IP header (+ IPv6 extension headers before the fragment's)
    fix: tuple[int, int]  # where the IP header starts; where the header's next-header is


def _fragment(frame: bytes) -> _Fragment | None:
    """The fragment ``frame`` carries (a UDP datagram's, or any over IPv6), else None.
    MalformedPacket for headers that lie about their lengths."""
    start = _ip_start(frame, b"\x08\x00")
    if start is not None and len(frame) >= start + 20 and frame[start + 9] == IPPROTO_UDP:
        ip = frame[start:]
        flags = struct.unpack_from("!H", ip, 6)[0]
        if not flags & 0x3FFF:
            return None
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        if ip[0] >> 4 != 4 or ihl < 20 or total < ihl or total > len(ip):
            raise MalformedPacket("IPv4 header lengths are inconsistent")
        return _Fragment((ip[12:20], ip[4:6], ip[9:10]),
                         (str(ipaddress.IPv4Address(ip[12:16])), frame[6:12]),
                         (flags & 0x1FFF) * 8, bool(flags & 0x2000), ip[ihl:total],
                         frame[: start + ihl], (start, -1))
    start = _ip_start(frame, b"\x86\xdd")
    if start is None or len(frame) < start + 48:
        return None
    ip = frame[start:]
    at, next_at = 40, 6  # the header after the fixed one, and where its type is said
    if ip[6] == 0:  # hop-by-hop options first (MLD does that); then the fragment header
        at, next_at = 40 + (ip[41] + 1) * 8, 40
    if ip[next_at] != IPPROTO_FRAGMENT or len(ip) < at + 8:
        return None
    plen = struct.unpack_from("!H", ip, 4)[0]
    if 40 + plen > len(ip) or at + 8 > 40 + plen:
        raise MalformedPacket("IPv6 payload length runs past the frame")
    field_ = struct.unpack_from("!H", ip, at + 2)[0]
    head = bytearray(frame[: start + at])
    head[start + next_at] = ip[at]  # the fragmented payload's own type
    return _Fragment((ip[8:40], ip[at + 4 : at + 8]),
                     (str(ipaddress.IPv6Address(ip[8:24])), frame[6:12]),
                     field_ & 0xFFF8, bool(field_ & 1), ip[at + 8 : 40 + plen], bytes(head),
                     (start, 0))


def is_fragment(frame: bytes) -> bool:
    """Whether ``frame`` carries an IP fragment that ``Reassembler`` takes."""
    try:
        return _fragment(frame) is not None
    except (MalformedPacket, struct.error):
        return True  # add() reports it


def ip_source(frame: bytes) -> str:
    """The IP source address of a frame (for evidence), or '?'."""
    start = _ip_start(frame, b"\x08\x00")
    if start is not None and len(frame) >= start + 20:
        return str(ipaddress.IPv4Address(frame[start + 12 : start + 16]))
    start = _ip_start(frame, b"\x86\xdd")
    if start is not None and len(frame) >= start + 40:
        return str(ipaddress.IPv6Address(frame[start + 8 : start + 24]))
    return "?"


@dataclass
class _Datagram:
    first_seen: float
    source: tuple[str, bytes]  # IP address and MAC of the sender
    head: bytes | None = None  # the first fragment's headers
    fix: tuple[int, int] = (0, -1)
    total: int | None = None  # payload length, known from the last fragment
    pieces: list[tuple[int, bytes]] = field(default_factory=list)


class Reassembler:
    """IP fragments (IPv4: of UDP datagrams; IPv6: any) back into whole frames; bounded.

    ``add`` returns the frame of the whole datagram once its last missing fragment is in,
    with the first fragment's headers (IPv4: fragment fields cleared; IPv6: the fragment
    header removed). Fragments that overlap (the classic way to show a checker and a
    client different datagrams), that do not add up, or that are too many raise
    MalformedPacket and drop the datagram. When MAX_PENDING_DATAGRAMS are pending, new ones
    are not kept: ``dropped`` counts their fragments. A datagram whose first fragment came
    but which never completed (within FRAGMENT_TIMEOUT, or by ``flush``) is listed in
    ``incomplete`` (its sender's IP address and MAC).
    """

    def __init__(self) -> None:
        self._pending: dict[tuple[bytes, ...], _Datagram] = {}
        self.dropped = 0
        self.incomplete: list[tuple[str, bytes]] = []

    def _expire(self, now: float) -> None:
        for key, d in list(self._pending.items()):
            if now - d.first_seen > FRAGMENT_TIMEOUT:
                self._drop(key)

    def _drop(self, key: tuple[bytes, ...]) -> None:
        d = self._pending.pop(key)
        if d.head is not None:
            self.incomplete.append(d.source)

    def flush(self) -> None:
        """The listen window closed: whatever is still pending never completed."""
        for key in list(self._pending):
            self._drop(key)

    def add(self, frame: bytes, now: float) -> bytes | None:
        try:
            return self._add(frame, now)
        except struct.error as exc:
            # Last resort: a field the checks missed is the sender's fault, and must not
            # stop the audit that is looking for that sender.
            raise MalformedPacket(f"IP fragment fields that do not fit ({exc})") from exc

    def _add(self, frame: bytes, now: float) -> bytes | None:
        frag = _fragment(frame)
        if frag is None:
            return None
        offset, data = frag.offset, frag.data
        if frag.more and len(data) % 8:
            raise MalformedPacket("IP fragment that is not a multiple of 8 bytes")
        end = offset + len(data)
        if end > 0xFFFF:
            raise MalformedPacket("IP fragments of a datagram longer than 65535 bytes")
        self._expire(now)
        key = frag.key
        d = self._pending.get(key)
        if d is None:
            if len(self._pending) >= MAX_PENDING_DATAGRAMS:
                self.dropped += 1
                return None
            d = self._pending[key] = _Datagram(now, frag.source)
        for at, piece in d.pieces:
            if at < end and offset < at + len(piece):
                if (at, piece) == (offset, data):
                    return None  # a retransmitted copy
                self._pending.pop(key)
                raise MalformedPacket("overlapping IP fragments (a checker and a client "
                                      "could see different datagrams)")
        if not frag.more:
            if (d.total is not None and d.total != end) or any(at + len(p) > end
                                                                for at, p in d.pieces):
                self._pending.pop(key)
                raise MalformedPacket("IP fragments that do not add up to one datagram")
            d.total = end
        elif d.total is not None and end > d.total:
            self._pending.pop(key)
            raise MalformedPacket("IP fragments that do not add up to one datagram")
        if len(d.pieces) >= MAX_FRAGMENTS:
            self._pending.pop(key)
            raise MalformedPacket(f"more than {MAX_FRAGMENTS} fragments of one IP datagram")
        d.pieces.append((offset, data))
        if offset == 0:
            d.head, d.fix = frag.head, frag.fix
        if d.head is not None and d.total is not None and _length_field(
                d.head, d.fix, d.total) > 0xFFFF:
            # The payload fits in 65535 bytes but not with the headers in front of it
            # (IPv4's total length counts the IP header, IPv6's payload length the
            # extension headers): no host would take it as one datagram.
            self._pending.pop(key)
            raise MalformedPacket("IP fragments of a datagram longer than 65535 bytes with "
                                  "its headers")
        if d.head is None or d.total is None or sum(len(p) for _, p in d.pieces) != d.total:
            return None
        del self._pending[key]
        head = bytearray(d.head)
        start, kind = d.fix
        if kind < 0:  # IPv4: total length, no fragment fields
            struct.pack_into("!H", head, start + 2, _length_field(d.head, d.fix, d.total))
            struct.pack_into("!H", head, start + 6, 0)
        else:  # IPv6: payload length (extension headers kept, the fragment header gone)
            struct.pack_into("!H", head, start + 4, _length_field(d.head, d.fix, d.total))
        return bytes(head) + b"".join(p for _, p in sorted(d.pieces))


def _length_field(head: bytes, fix: tuple[int, int], total: int) -> int:
    """The IP length field of the datagram put back together: IPv4's total length, or
    IPv6's payload length (extension headers included)."""
    start, kind = fix
    return len(head) - start + total - (40 if kind >= 0 else 0)
