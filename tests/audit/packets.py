"""Builders for server-side packets the audit's unit tests feed it (no I/O)."""

from __future__ import annotations

import ipaddress
import struct

from trustboot.audit import dhcp4, dhcp6, frames

SERVER_MAC = bytes.fromhex("027462000001")
ROGUE_MAC = bytes.fromhex("027462000002")


def opt(code: int, value: bytes) -> bytes:
    return bytes([code, len(value)]) + value


def dhcp_reply(
    *, xid: int, chaddr: bytes, yiaddr: str = "192.0.2.100", siaddr: str = "192.0.2.1",
    server_id: str | None = "192.0.2.1", sname: bytes = b"", file: bytes = b"",
    options: list[tuple[int, bytes]] | None = None, message_type: int = dhcp4.OFFER,
    raw_options: bytes | None = None,
) -> bytes:
    header = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s", 2, 1, 6, 0, xid, 0, 0x8000,
        b"\0" * 4, ipaddress.IPv4Address(yiaddr).packed, ipaddress.IPv4Address(siaddr).packed,
        b"\0" * 4, chaddr + b"\0" * (16 - len(chaddr)), sname, file,
    )
    body = opt(dhcp4.OPT_MESSAGE_TYPE, bytes([message_type]))
    if server_id:
        body += opt(dhcp4.OPT_SERVER_ID, ipaddress.IPv4Address(server_id).packed)
    for code, value in options or []:
        body += opt(code, value)
    if raw_options is not None:
        body = raw_options
    return header + dhcp4.MAGIC_COOKIE + body + b"\xff"


def offer_frame(payload: bytes, *, src_mac: bytes = SERVER_MAC, src_ip: str = "192.0.2.1",
                sport: int = 67) -> bytes:
    return frames.udp4_frame(src_mac=src_mac, dst_mac=frames.BROADCAST_MAC, src_ip=src_ip,
                             dst_ip="255.255.255.255", sport=sport, dport=68, payload=payload)


def opt6(code: int, value: bytes) -> bytes:
    return struct.pack("!HH", code, len(value)) + value


def advertise(*, xid: int, client_duid: bytes, url: str | None,
              server_mac: bytes = SERVER_MAC, address: str = "2001:db8::100") -> bytes:
    ia = struct.pack("!III", 1, 0, 0) + opt6(
        dhcp6.OPT_IAADDR, ipaddress.IPv6Address(address).packed + struct.pack("!II", 600, 600))
    body = (
        opt6(dhcp6.OPT_CLIENTID, client_duid)
        + opt6(dhcp6.OPT_SERVERID, dhcp6.duid_ll(server_mac))
        + opt6(dhcp6.OPT_IA_NA, ia)
    )
    if url is not None:
        body += opt6(dhcp6.OPT_BOOTFILE_URL, url.encode())
    return bytes([dhcp6.ADVERTISE]) + xid.to_bytes(3, "big") + body


def advertise_frame(payload: bytes, *, dst_mac: bytes, server_mac: bytes = SERVER_MAC) -> bytes:
    return frames.udp6_frame(
        src_mac=server_mac, dst_mac=dst_mac, src_ip=frames.link_local_from_mac(server_mac),
        dst_ip=frames.link_local_from_mac(dst_mac), sport=547, dport=546, payload=payload)


def fragment(frame: bytes, size: int, *, ident: int = 0x4242) -> list[bytes]:
    """An IPv4 frame cut into fragments carrying ``size`` bytes (a multiple of 8) each."""
    head, ip = frame[:14], frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    body = ip[ihl:]
    out = []
    for at in range(0, len(body), size):
        piece = body[at : at + size]
        more = at + size < len(body)
        hdr = bytearray(ip[:ihl])
        struct.pack_into("!HHH", hdr, 2, ihl + len(piece), ident,
                         (0x2000 if more else 0) | at // 8)
        struct.pack_into("!H", hdr, 10, 0)
        struct.pack_into("!H", hdr, 10, frames.checksum(bytes(hdr)))
        out.append(head + bytes(hdr) + piece)
    return out


def fragment6(frame: bytes, size: int, *, ident: int = 0x4242) -> list[bytes]:
    """An IPv6 frame cut into fragments carrying ``size`` bytes (a multiple of 8) each."""
    head, fixed, body = frame[:14], frame[14:54], frame[54:]
    out = []
    for at in range(0, len(body), size):
        piece = body[at : at + size]
        more = at + size < len(body)
        hdr = bytearray(fixed)
        hdr[6] = 44
        struct.pack_into("!H", hdr, 4, 8 + len(piece))
        out.append(head + bytes(hdr) + struct.pack("!BBHI", fixed[6], 0, at | more, ident)
                   + piece)
    return out
