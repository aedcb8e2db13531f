"""The audit's sockets: speak as a booting PXE client and listen to whatever answers.

One AF_PACKET socket on the interface, with a classic BPF filter for DHCPv4 (67/68/4011),
DHCPv6 (546/547) and ICMPv6, sends whole frames from random MACs (as a real booting machine
has no address yet) and receives everything the segment sends back. The random MACs are
added to the interface's unicast filter for the life of the socket (PACKET_MR_UNICAST), so
replies to them arrive without turning the whole interface promiscuous; ``--passive`` does
use promiscuous mode, to also see offers unicast to other clients. Neighbour solicitations
for the probe's own link-local addresses are answered here, so DHCPv6 servers can reach it.

A kernel UDP socket (the interface's own IPv4 address) carries the ProxyDHCP port-4011
queries; their answers are read from the packet socket too.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from trustboot.audit import dhcp4, dhcp6, frames
from trustboot.audit.errors import MalformedPacket
from trustboot.audit.model import Malformed, Observation, Offer, Probe, Reply6
from trustboot.errors import ConfigError, OperationalError

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_MULTICAST = 0
PACKET_MR_PROMISC = 1
PACKET_MR_UNICAST = 3
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SIOCGIFADDR = 0x8915
CAP_NET_RAW = 13

MAX_OFFERS = 2000
MAX_MALFORMED = 200
MAX_CLIENTS = 256
MAX_FRAME = 65536


# -- a tiny classic-BPF assembler: the filter keeps the busy segment out of Python ------------

_LD_H_ABS, _LD_B_ABS, _LD_H_IND, _LDX_B_MSH = 0x28, 0x30, 0x48, 0xB1
_JEQ_K, _JSET_K, _RET_K = 0x15, 0x45, 0x06


def _assemble(program: list[tuple[object, ...]]) -> list[tuple[int, int, int, int]]:
    """Instructions as (label?, op, k, jt_label, jf_label); labels resolved to offsets."""
    labels: dict[str, int] = {}
    body: list[tuple[object, ...]] = []
    for item in program:
        if isinstance(item[0], str) and len(item) == 1:
            labels[item[0]] = len(body)
        else:
            body.append(item)
    out = []
    for pc, (op, k, *jumps) in enumerate(body):
        jt = jf = 0
        if jumps:
            jt = labels[jumps[0]] - pc - 1 if isinstance(jumps[0], str) else int(jumps[0])  # type: ignore[call-overload]
            jf = labels[jumps[1]] - pc - 1 if isinstance(jumps[1], str) else int(jumps[1])  # type: ignore[call-overload]
        out.append((int(op), jt, jf, int(k)))  # type: ignore[call-overload]
    return out


def _port_checks(
    offset: int, ports: tuple[int, ...], *, last_fail: str | int
) -> list[tuple[object, ...]]:
    prog: list[tuple[object, ...]] = [(_LD_H_IND, offset)]
    for i, port in enumerate(ports):
        fail = last_fail if i == len(ports) - 1 else 0
        prog.append((_JEQ_K, port, "accept", fail))
    return prog


def boot_protocol_filter() -> list[tuple[int, int, int, int]]:
    """BPF: IPv4 UDP 67/68/4011 (unfragmented or first fragment), IPv6 UDP 546/547, ICMPv6."""
    v4 = (67, 68, 4011)
    prog: list[tuple[object, ...]] = [
        (_LD_H_ABS, 12),
        (_JEQ_K, frames.ETH_P_IP, 0, "not_v4"),
        (_LD_B_ABS, 23),
        (_JEQ_K, 17, 0, "drop"),
        (_LD_H_ABS, 20),
        (_JSET_K, 0x1FFF, "drop", 0),
        (_LDX_B_MSH, 14),
        *_port_checks(14, v4, last_fail=0),
        *_port_checks(16, v4, last_fail="drop"),
        ("not_v4",),
        (_JEQ_K, frames.ETH_P_IPV6, 0, "drop"),
        (_LD_B_ABS, 20),
        (_JEQ_K, 58, "accept", 0),
        (_JEQ_K, 0, "accept", 0),
        (_JEQ_K, 17, 0, "drop"),
        (_LD_H_ABS, 54),
        (_JEQ_K, 546, "accept", 0),
        (_JEQ_K, 547, "accept", 0),
        (_LD_H_ABS, 56),
        (_JEQ_K, 546, "accept", 0),
        (_JEQ_K, 547, "accept", "drop"),
        ("drop",),
        (_RET_K, 0),
        ("accept",),
        (_RET_K, 0x40000),
    ]
    return _assemble(prog)


def _attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> bool:
    raw = b"".join(struct.pack("HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(raw)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError:
        return False
    return True


# -- interface facts -------------------------------------------------------------------------


def has_cap_net_raw() -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_RAW & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def interface_index(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise ConfigError(
            f"no network interface named {name!r}",
            hint="list interfaces with 'ip link' and pass one with --interface",
        ) from None


def interface_ipv4(name: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return str(ipaddress.IPv4Address(res[20:24]))


def random_mac() -> bytes:
    first = (os.urandom(1)[0] & 0xFC) | 0x02  # unicast, locally administered
    return bytes([first]) + os.urandom(5)


def parse_mac(text: str) -> bytes:
    parts = text.replace("-", ":").split(":")
    try:
        mac = bytes(int(p, 16) for p in parts)
    except ValueError:
        mac = b""
    if len(mac) != 6 or mac[0] & 1:
        raise ConfigError(f"not a unicast MAC address: {text!r}", hint="e.g. 02:00:5e:10:00:01")
    return mac


class Link(Protocol):
    """What the listener needs from the wire: whole Ethernet frames in and out."""

    filtered: bool

    def send(self, frame: bytes) -> None: ...
    def recv(self) -> tuple[bytes, int] | None: ...
    def fileno(self) -> int: ...
    def add_unicast(self, mac: bytes) -> None: ...
    def add_multicast(self, mac: bytes) -> None: ...
    def close(self) -> None: ...


class PacketSocket:
    """An AF_PACKET socket on one interface, filtered to boot protocols."""

    def __init__(self, interface: str, *, promiscuous: bool) -> None:
        self.interface = interface
        self.ifindex = interface_index(interface)
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise OperationalError(
                "the audit needs raw sockets: this process lacks CAP_NET_RAW"
                + ("" if os.geteuid() == 0 else " (not running as root)"),
                hint="run 'trustboot audit' as root, or grant the capability: "
                "setcap cap_net_raw,cap_net_admin+ep on the Python interpreter",
            ) from None
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            self.filtered = _attach_filter(self.sock, boot_protocol_filter())
            self.sock.bind((interface, 0))
            if promiscuous:
                self._membership(PACKET_MR_PROMISC, b"")
            self.sock.setblocking(False)
            self._drain()
        except OSError as exc:
            self.sock.close()
            raise OperationalError(
                f"cannot listen on {interface}: {exc.strerror or exc}",
                hint="check that the interface is up ('ip link set IF up')",
            ) from None

    def _membership(self, kind: int, address: bytes) -> None:
        mreq = struct.pack("iHH8s", self.ifindex, kind, len(address), address)
        self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)

    def add_unicast(self, mac: bytes) -> None:
        self._membership(PACKET_MR_UNICAST, mac)

    def add_multicast(self, mac: bytes) -> None:
        self._membership(PACKET_MR_MULTICAST, mac)

    def _drain(self) -> None:
        """Frames queued before the filter was attached are not ours to judge."""
        for _ in range(10000):
            try:
                self.sock.recv(MAX_FRAME)
            except BlockingIOError:
                return

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def recv(self) -> tuple[bytes, int] | None:
        try:
            data, addr = self.sock.recvfrom(MAX_FRAME)
        except BlockingIOError:
            return None
        return data, addr[2]

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


@dataclass
class ProbeConfig:
    interface: str
    window: float = 5.0
    arches: tuple[str, ...] = tuple(dhcp4.ARCHES)
    ipxe_probe: bool = True
    dhcpv6: bool = True
    proxy_queries: bool = True
    passive: bool = False
    mac: bytes | None = None


@dataclass
class _ProbeState:
    macs: dict[str, bytes] = field(default_factory=dict)  # arch -> MAC
    uuids: dict[str, bytes] = field(default_factory=dict)
    by_xid4: dict[int, Probe] = field(default_factory=dict)
    by_xid6: dict[int, Probe] = field(default_factory=dict)
    link_locals: dict[str, bytes] = field(default_factory=dict)  # our fe80:: -> MAC
    seen: set[bytes] = field(default_factory=set)
    proxied: set[tuple[str, str]] = field(default_factory=set)


class Listener:
    """Runs one listen window: sends the probes, collects replies into an Observation."""

    def __init__(self, config: ProbeConfig, obs: Observation,
                 on_offer: Callable[[Offer], None] | None = None,
                 on_reply6: Callable[[Reply6], None] | None = None,
                 *, link: Link | None = None) -> None:
        """``link`` replaces the packet socket (tests feed frames through a socketpair)."""
        self.cfg = config
        self.obs = obs
        self.on_offer = on_offer
        self.on_reply6 = on_reply6
        self.state = _ProbeState()
        self.start = time.monotonic()
        if link is None:
            self.own_ip = interface_ipv4(config.interface)
            link = PacketSocket(config.interface, promiscuous=config.passive)
        else:
            self.own_ip = None
        self.pkt: Link = link
        if not link.filtered:
            obs.notes.append("kernel refused the BPF filter: filtering in user space")
        self.udp: socket.socket | None = None

    def close(self) -> None:
        self.pkt.close()
        if self.udp is not None:
            self.udp.close()

    # -- sending ---------------------------------------------------------------------------
    def _send_dhcp4(self, probe: Probe, payload: bytes) -> None:
        mac = bytes.fromhex(probe.mac.replace(":", ""))
        self.pkt.send(frames.udp4_frame(
            src_mac=mac, dst_mac=frames.BROADCAST_MAC, src_ip=dhcp4.NO_ADDRESS,
            dst_ip="255.255.255.255", sport=dhcp4.CLIENT_PORT, dport=dhcp4.SERVER_PORT,
            payload=payload))

    def _send_dhcp6(self, probe: Probe, payload: bytes) -> None:
        mac = bytes.fromhex(probe.mac.replace(":", ""))
        self.pkt.send(frames.udp6_frame(
            src_mac=mac, dst_mac=frames.multicast_mac(dhcp6.ALL_SERVERS),
            src_ip=frames.link_local_from_mac(mac), dst_ip=dhcp6.ALL_SERVERS,
            sport=dhcp6.CLIENT_PORT, dport=dhcp6.SERVER_PORT, payload=payload))

    def _prepare(self) -> list[tuple[Probe, bytes]]:
        st = self.state
        out: list[tuple[Probe, bytes]] = []
        for name in self.cfg.arches:
            arch = dhcp4.ARCHES[name]
            mac = self.cfg.mac or random_mac()
            st.macs[name] = mac
            st.uuids[name] = os.urandom(16)
            self.pkt.add_unicast(mac)
            for ipxe in (False, True) if self.cfg.ipxe_probe else (False,):
                xid = int.from_bytes(os.urandom(4), "big")
                probe = Probe("dhcpv4", name, ipxe, dhcp4.mac_text(mac), xid)
                st.by_xid4[xid] = probe
                out.append((probe, dhcp4.build_discover(
                    mac=mac, xid=xid, arch=arch, uuid=st.uuids[name], ipxe=ipxe)))
            if self.cfg.dhcpv6 and arch.code != 0:
                ll = frames.link_local_from_mac(mac)
                st.link_locals[ll] = mac
                solicited = "ff02::1:ff" + ipaddress.IPv6Address(ll).exploded[-7:]
                self.pkt.add_multicast(frames.multicast_mac(solicited))
                xid = int.from_bytes(os.urandom(3), "big")
                probe = Probe("dhcpv6", name, False, dhcp4.mac_text(mac), xid,
                              target=dhcp6.ALL_SERVERS)
                st.by_xid6[xid] = probe
                out.append((probe, dhcp6.build_solicit(
                    mac=mac, xid=xid, arch=arch, iaid=int.from_bytes(mac[2:], "big"))))
        if self.cfg.dhcpv6 and st.link_locals:
            self.pkt.add_multicast(frames.multicast_mac(dhcp6.ALL_SERVERS))
        return out

    def _send_all(self, messages: list[tuple[Probe, bytes]]) -> None:
        for probe, payload in messages:
            try:
                if probe.protocol == "dhcpv6":
                    self._send_dhcp6(probe, payload)
                else:
                    self._send_dhcp4(probe, payload)
            except OSError as exc:
                raise OperationalError(
                    f"cannot send on {self.cfg.interface}: {exc.strerror or exc}",
                    hint="check that the interface is up and has a link",
                ) from None

    def _open_udp(self, own_ip: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                            self.cfg.interface.encode())
            sock.bind((own_ip, 0))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _query_proxy(self, offer: Offer) -> None:
        """Ask a ProxyDHCP server for the boot file, as a PXE client does on port 4011."""
        probe = offer.probe
        if probe is None or not self.cfg.proxy_queries:
            return
        key = (offer.server_ip, probe.arch)
        if key in self.state.proxied:
            return
        self.state.proxied.add(key)
        if self.own_ip is None:
            self.obs.notes.append(
                f"ProxyDHCP {offer.server_ip} not queried on port 4011: "
                f"{self.cfg.interface} has no IPv4 address")
            return
        arch = dhcp4.ARCHES[probe.arch]
        xid = int.from_bytes(os.urandom(4), "big")
        mac = self.state.macs[probe.arch]
        query = Probe("proxydhcp", probe.arch, probe.ipxe, dhcp4.mac_text(mac), xid,
                      target=f"{offer.server_ip}:4011")
        self.state.by_xid4[xid] = query
        self.obs.probes.append(query)
        payload = dhcp4.build_pxe_request(
            mac=mac, xid=xid, arch=arch, uuid=self.state.uuids[probe.arch], ciaddr=self.own_ip,
            boot_item=dhcp4.first_boot_item(offer.packet.pxe_vendor_options()))
        try:  # an offer from the network must not end the audit, whatever it names
            if self.udp is None:
                self.udp = self._open_udp(self.own_ip)
            self.udp.sendto(payload, (offer.server_ip, dhcp4.PXE_PORT))
        except OSError as exc:
            self.obs.notes.append(
                f"ProxyDHCP {offer.server_ip}: port-4011 query failed: {exc.strerror or exc}")

    # -- receiving -------------------------------------------------------------------------
    def _malformed(self, protocol: str, exc: MalformedPacket, src_ip: str, src_mac: bytes,
                   data: bytes) -> None:
        if len(self.obs.malformed) >= MAX_MALFORMED:
            self.obs.dropped += 1
            return
        self.obs.malformed.append(Malformed(
            protocol, exc.reason, src_ip, dhcp4.mac_text(src_mac), data[:96].hex(), len(data),
            time.monotonic() - self.start))

    def handle_frame(self, data: bytes) -> None:
        """Decode and record one received frame; never raises for what the network sent."""
        try:
            frame = frames.parse_frame(data)
        except MalformedPacket as exc:
            self._malformed("ip/udp", exc, "?", data[6:12], data)
            return
        if frame is None:
            return
        if frame.protocol == frames.IPPROTO_ICMPV6:
            target = frames.neighbour_solicitation_target(frame)
            if target is not None and target in self.state.link_locals and not self.cfg.passive:
                mac = self.state.link_locals[target]
                dst_ip = frame.src_ip if frame.src_ip != "::" else "ff02::1"
                dst_mac = frame.src_mac if frame.src_ip != "::" else frames.multicast_mac(dst_ip)
                try:
                    self.pkt.send(frames.neighbour_advert(src_mac=mac, dst_mac=dst_mac,
                                                          target=target, dst_ip=dst_ip))
                except OSError as exc:
                    self.obs.notes.append(f"could not answer a neighbour solicitation: {exc}")
            return
        if frame.family == 4:
            self._handle_v4(frame)
        else:
            self._handle_v6(frame)

    def _dedupe(self, frame: frames.Frame) -> bool:
        key = hashlib.sha256(frame.src_mac + frame.src_ip.encode() + frame.payload).digest()
        if key in self.state.seen:
            return True
        self.state.seen.add(key)
        return False

    def _handle_v4(self, frame: frames.Frame) -> None:
        server_to_client = frame.sport in (dhcp4.SERVER_PORT, dhcp4.PXE_PORT)
        client_to_server = frame.dport in (dhcp4.SERVER_PORT, dhcp4.PXE_PORT)
        if not (server_to_client or client_to_server) or self._dedupe(frame):
            return
        try:
            pkt = dhcp4.parse(frame.payload)
        except MalformedPacket as exc:
            self._malformed("dhcpv4", exc, frame.src_ip, frame.src_mac, frame.payload)
            return
        if client_to_server and not server_to_client:
            if pkt.op == 1 and self.cfg.passive:
                self._client_seen(f"{pkt.client_mac} {pkt.vendor_class or ''}".strip())
            return
        if pkt.op != 2:
            return
        probe = self.state.by_xid4.get(pkt.xid)
        if probe is not None and pkt.client_mac != probe.mac:
            probe = None  # same xid, other client: still a server on this segment
        if len(self.obs.offers) >= MAX_OFFERS:
            self.obs.dropped += 1
            return
        offer = Offer(pkt, frame.src_ip, dhcp4.mac_text(frame.src_mac), frame.sport,
                      time.monotonic() - self.start, probe)
        self.obs.offers.append(offer)
        if offer.is_proxy and offer.port != dhcp4.PXE_PORT and not self.cfg.passive:
            self._query_proxy(offer)
        if self.on_offer is not None:
            self.on_offer(offer)

    def _handle_v6(self, frame: frames.Frame) -> None:
        if frame.protocol != frames.IPPROTO_UDP or self._dedupe(frame):
            return
        if frame.sport == dhcp6.SERVER_PORT or frame.dport == dhcp6.CLIENT_PORT:
            try:
                msg = dhcp6.parse(frame.payload)
            except MalformedPacket as exc:
                self._malformed("dhcpv6", exc, frame.src_ip, frame.src_mac, frame.payload)
                return
            if msg.msg_type not in dhcp6.SERVER_MESSAGES:
                return
            if len(self.obs.replies6) >= MAX_OFFERS:
                self.obs.dropped += 1
                return
            reply = Reply6(msg, frame.src_ip, dhcp4.mac_text(frame.src_mac),
                           time.monotonic() - self.start, self.state.by_xid6.get(msg.xid))
            self.obs.replies6.append(reply)
            if self.on_reply6 is not None:
                self.on_reply6(reply)
        elif frame.dport == dhcp6.SERVER_PORT and self.cfg.passive:
            try:
                msg = dhcp6.parse(frame.payload)
            except MalformedPacket as exc:
                self._malformed("dhcpv6", exc, frame.src_ip, frame.src_mac, frame.payload)
                return
            self._client_seen(f"{dhcp4.mac_text(frame.src_mac)} dhcpv6 {msg.type_name}")

    def _client_seen(self, text: str) -> None:
        if text in self.obs.clients_seen:
            return
        if len(self.obs.clients_seen) >= MAX_CLIENTS:
            self.obs.dropped += 1
            return
        self.obs.clients_seen.append(text)

    def run(self) -> None:
        """Send (unless passive), then listen until the window closes."""
        messages: list[tuple[Probe, bytes]] = []
        if not self.cfg.passive:
            messages = self._prepare()
            self.obs.probes.extend(p for p, _ in messages)
            self._send_all(messages)
        end = self.start + self.cfg.window
        resend_at = self.start + self.cfg.window * 0.4 if self.cfg.window >= 2 else None
        budget = 200_000  # frames per window: a flood cannot keep us here past the window
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if resend_at is not None and now >= resend_at and messages:
                resend_at = None
                self._send_all(messages)  # one retransmission, as a PXE ROM would
            wait = min(end, resend_at or end) - now
            readable, _, _ = select.select([self.pkt], [], [], max(0.0, wait))
            if not readable:
                continue
            for _ in range(256):
                got = self.pkt.recv()
                if got is None:
                    break
                data, pkttype = got
                if pkttype == PACKET_OUTGOING:
                    continue
                budget -= 1
                if budget <= 0:
                    self.obs.dropped += 1
                    continue
                self.handle_frame(data)
            if self.udp is not None:
                try:  # answers come in through the packet socket; keep this one empty
                    while self.udp.recv(MAX_FRAME):
                        pass
                except OSError:
                    pass
        self.obs.listen_seconds = time.monotonic() - self.start
