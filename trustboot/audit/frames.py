"""Ethernet, IPv4, IPv6, UDP and the bit of ICMPv6 neighbour discovery the probe needs. No I/O.

The probe speaks from a random MAC, as a booting machine would, so it builds whole frames
and answers neighbour solicitations for its own link-local addresses itself.
``parse_frame`` returns None for frames that are not UDP or ICMPv6 over IP and raises
:class:`MalformedPacket` for IP/UDP headers that lie about their lengths.
:class:`Reassembler` puts fragmented IPv4 datagrams back together first, as a client's
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


def _ip4_start(frame: bytes) -> int | None:
    """Where the IPv4 header of an Ethernet frame (VLAN-tagged or not) starts, or None."""
    if len(frame) >= 18 and frame[12:14] == b"\x81\x00":
        return 18 if frame[16:18] == b"\x08\x00" else None
    return 14 if frame[12:14] == b"\x08\x00" else None


def is_ip4_fragment(frame: bytes) -> bool:
    """Whether ``frame`` carries a fragment of a UDP datagram over IPv4."""
    start = _ip4_start(frame)
    if start is None or len(frame) < start + 20 or frame[start + 9] != IPPROTO_UDP:
        return False
    return bool(struct.unpack_from("!H", frame, start + 6)[0] & 0x3FFF)


def ip4_source(frame: bytes) -> str:
    """The IPv4 source address of a frame (for evidence), or '?'."""
    start = _ip4_start(frame)
    if start is None or len(frame) < start + 20:
        return "?"
    return str(ipaddress.IPv4Address(frame[start + 12 : start + 16]))


@dataclass
class _Datagram:
    first_seen: float
    source: tuple[str, bytes]  # IPv4 address and MAC of the sender
    head: bytes | None = None  # the first fragment's Ethernet + IPv4 header
    total: int | None = None  # payload length, known from the last fragment
    pieces: list[tuple[int, bytes]] = field(default_factory=list)


class Reassembler:
    """IPv4 fragments (of UDP datagrams) back into whole frames; bounded in memory.

    ``add`` returns the frame of the whole datagram once its last missing fragment is in,
    with the first fragment's headers (fragment fields cleared). Fragments that overlap
    (the classic way to show a checker and a client different datagrams), that do not add
    up, or that are too many raise MalformedPacket and drop the datagram. When
    MAX_PENDING_DATAGRAMS are pending, new ones are not kept: ``dropped`` counts their
    fragments. A datagram whose first fragment came but which never completed (within
    FRAGMENT_TIMEOUT, or by ``flush``) is listed in ``incomplete`` (its sender's IPv4
    address and MAC).
    """

    def __init__(self) -> None:
        self._pending: dict[tuple[bytes, bytes, bytes], _Datagram] = {}
        self.dropped = 0
        self.incomplete: list[tuple[str, bytes]] = []

    def _expire(self, now: float) -> None:
        for key, d in list(self._pending.items()):
            if now - d.first_seen > FRAGMENT_TIMEOUT:
                self._drop(key)

    def _drop(self, key: tuple[bytes, bytes, bytes]) -> None:
        d = self._pending.pop(key)
        if d.head is not None:
            self.incomplete.append(d.source)

    def flush(self) -> None:
        """The listen window closed: whatever is still pending never completed."""
        for key in list(self._pending):
            self._drop(key)

    def add(self, frame: bytes, now: float) -> bytes | None:
        start = _ip4_start(frame)
        if start is None or len(frame) < start + 20:
            return None
        ip = frame[start:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        if ip[0] >> 4 != 4 or ihl < 20 or total < ihl or total > len(ip):
            raise MalformedPacket("IPv4 header lengths are inconsistent")
        flags = struct.unpack_from("!H", ip, 6)[0]
        offset, more = (flags & 0x1FFF) * 8, bool(flags & 0x2000)
        data = ip[ihl:total]
        if more and len(data) % 8:
            raise MalformedPacket("IPv4 fragment that is not a multiple of 8 bytes")
        end = offset + len(data)
        if ihl + end > 0xFFFF:
            raise MalformedPacket("IPv4 fragments of a datagram longer than 65535 bytes")
        self._expire(now)
        key = (ip[12:20], ip[4:6], ip[9:10])  # addresses, identification, protocol
        d = self._pending.get(key)
        if d is None:
            if len(self._pending) >= MAX_PENDING_DATAGRAMS:
                self.dropped += 1
                return None
            d = self._pending[key] = _Datagram(now, (ip4_source(frame), frame[6:12]))
        for at, piece in d.pieces:
            if at < end and offset < at + len(piece):
                if (at, piece) == (offset, data):
                    return None  # a retransmitted copy
                self._pending.pop(key)
                raise MalformedPacket("overlapping IPv4 fragments (a checker and a client "
                                      "could see different datagrams)")
        if not more:
            if (d.total is not None and d.total != end) or any(at + len(p) > end
                                                              for at, p in d.pieces):
                self._pending.pop(key)
                raise MalformedPacket("IPv4 fragments that do not add up to one datagram")
            d.total = end
        elif d.total is not None and end > d.total:
            self._pending.pop(key)
            raise MalformedPacket("IPv4 fragments that do not add up to one datagram")
        if len(d.pieces) >= MAX_FRAGMENTS:
            self._pending.pop(key)
            raise MalformedPacket(f"more than {MAX_FRAGMENTS} fragments of one IPv4 datagram")
        d.pieces.append((offset, data))
        if offset == 0:
            d.head = frame[: start + ihl]
        if d.head is None or d.total is None or sum(len(p) for _, p in d.pieces) != d.total:
            return None
        del self._pending[key]
        head = bytearray(d.head)
        struct.pack_into("!H", head, start + 2, ihl + d.total)
        struct.pack_into("!H", head, start + 6, 0)
        return bytes(head) + b"".join(p for _, p in sorted(d.pieces))
