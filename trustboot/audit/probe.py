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
from trustboot.audit.netif import device_name, interface_index, interface_ipv4, shown
from trustboot.errors import ConfigError, OperationalError

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_MULTICAST = 0
PACKET_MR_PROMISC = 1
PACKET_MR_UNICAST = 3
PACKET_OUTGOING = 4
PACKET_IGNORE_OUTGOING = 23  # Linux 4.20
SO_ATTACH_FILTER = 26
CAP_NET_RAW = 13

PACKET_STATISTICS = 6
SO_RCVBUFFORCE = 33

# Bounds on what one window keeps. Reaching any of them is recorded (Observation.limit) and
# reported as a high finding: the audit never calls a segment clean when it did not see all.
MAX_OFFERS = 8000  # answers kept (DHCPv4 + DHCPv6), all senders together
# Bytes of the answers kept, all senders together: 8000 answers of 64 KiB (fragmented
# datagrams) held 1.2 GB and made a 100 MB report. Past this budget only a new sender's
# first answer of at most FIRST_ANSWER_BYTES is kept (a real offer fits one frame), so
# what is kept stays under 32 MiB: 30 MiB + (MAX_SENDERS + MAX_FOREIGN_SENDERS) x 1500.
MAX_KEPT_BYTES = 30 * 1024 * 1024
FIRST_ANSWER_BYTES = 1500
MAX_SENDERS = 1024  # distinct senders (source MAC + IP) of answers to our probes kept
MAX_FOREIGN_SENDERS = 256  # distinct senders of answers to other clients kept
FOREIGN_PER_SENDER = 16  # answers to other clients' xids kept per sender
MAX_MALFORMED = 200  # malformed packets kept as evidence (all are counted per sender)
MALFORMED_PER_SENDER = 5
MAX_MALFORMED_SENDERS = 256
MAX_CLIENTS = 256
MAX_PROXY_QUERIES = 128  # port-4011 queries sent per window
MAX_CLIENT_MESSAGES = 4096  # passive mode: client messages decoded per window
MAX_OTHER_FRAMES = 20000  # frames that are no DHCP message (neighbour discovery, garbage)
BACKLOG_GRACE = 0.5  # seconds to finish reading what arrived before the window closed
MAX_FRAME = 65536
RCVBUF = 16 * 1024 * 1024

# Vendor OUIs of NICs that PXE-boot (Intel, Broadcom, Realtek, Mellanox, Dell, HPE,
# Supermicro, Raspberry Pi, VMware; all universally administered): a rogue that only
# answers "real" NICs must not be able to tell the probe from a machine.
VENDOR_OUIS = (
    "001b21", "3cfdfe", "a0369f", "001018", "00e04c", "98039b", "f8bc12", "1866da",
    "9457a5", "0cc47a", "dca632", "005056",
)


# -- a tiny classic-BPF assembler: the filter keeps the busy segment out of Python ------------

_LD_H_ABS, _LD_B_ABS, _LD_H_IND, _LD_B_IND, _LDX_B_MSH = 0x28, 0x30, 0x48, 0x50, 0xB1
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


def boot_protocol_filter(*, passive: bool = False) -> list[tuple[int, int, int, int]]:
    """BPF: BOOTREPLYs to UDP 68 (any source port) or from 4011; DHCPv6 server messages
    (546/547); ICMPv6 neighbour solicitations. Passive mode adds client messages (67/4011).

    Everything else on a flooded segment is dropped in the kernel, before it costs a read.
    """
    client: list[tuple[object, ...]] = []
    if passive:
        client = [(_LD_H_IND, 16), (_JEQ_K, 67, "accept", 0), (_JEQ_K, 4011, "accept", 0)]
    prog: list[tuple[object, ...]] = [
        (_LD_H_ABS, 12),
        (_JEQ_K, frames.ETH_P_IP, 0, "not_v4"),
        (_LD_B_ABS, 23),
        (_JEQ_K, 17, 0, "drop"),
        (_LD_H_ABS, 20),
        (_JSET_K, 0x3FFF, "accept", 0),  # a UDP fragment: reassembled, then judged
        (_LDX_B_MSH, 14),
        (_LD_H_IND, 16),
        (_JEQ_K, dhcp4.CLIENT_PORT, "bootreply", 0),
        (_LD_H_IND, 14),
        (_JEQ_K, dhcp4.PXE_PORT, "bootreply", 0),
        *client,
        (_JEQ_K, 0xFFFFFFFF, "drop", "drop"),
        ("bootreply",),
        (_LD_B_IND, 22),  # UDP payload byte 0: op
        (_JEQ_K, 2, "accept", "drop"),
        ("not_v4",),
        (_JEQ_K, frames.ETH_P_IPV6, 0, "drop"),
        (_LD_B_ABS, 20),
        (_JEQ_K, 58, "icmp6", 0),
        (_JEQ_K, frames.IPPROTO_FRAGMENT, "accept", 0),  # reassembled, then judged
        (_JEQ_K, 17, 0, "drop"),
        (_LD_H_ABS, 54),
        (_JEQ_K, 547, "accept", 0),
        (_LD_H_ABS, 56),
        (_JEQ_K, 546, "accept", 0),
        (_JEQ_K, 547 if passive else 0x10000, "accept", "drop"),
        ("icmp6",),
        (_LD_B_ABS, 54),
        (_JEQ_K, frames.ICMPV6_NS, "accept", "drop"),
        ("drop",),
        (_RET_K, 0),
        ("accept",),
        (_RET_K, 0x40000),
    ]
    return _assemble(prog)


def _bind_packet(sock: socket.socket, ifindex: int) -> None:
    """bind() an AF_PACKET socket to an interface by index. Python's own bind takes the
    interface's name as UTF-8 text, and a Linux name need not be that."""
    libc = ctypes.CDLL(None, use_errno=True)
    # struct sockaddr_ll: family, protocol (0: the socket's own), ifindex, the rest unused
    raw = struct.pack("=HHiHBB8s", socket.AF_PACKET, 0, ifindex, 0, 0, 0, b"")
    addr = ctypes.create_string_buffer(raw, len(raw))
    if libc.bind(sock.fileno(), addr, len(raw)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


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


def own_addresses() -> set[str]:
    """Every address of this host (all interfaces): a boot URL must not point back here."""
    found: set[str] = set()
    for _index, name in socket.if_nameindex():
        ip = interface_ipv4(name)
        if ip:
            found.add(ip)
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as fh:
            for line in fh:
                raw = line.split()[0] if line.strip() else ""
                if len(raw) == 32:
                    found.add(str(ipaddress.IPv6Address(bytes.fromhex(raw))))
    except (OSError, ValueError):
        pass
    return found


def forbidden_address(ip: str, own: set[str] | frozenset[str] = frozenset()) -> str | None:
    """Why the audit must not connect to ``ip`` (a resolved address), or None."""
    try:
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
            ip.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_unspecified or (isinstance(addr, ipaddress.IPv4Address)
                               and addr in ipaddress.IPv4Network("0.0.0.0/8")):
        return "unspecified"
    if addr.is_multicast or addr == ipaddress.IPv4Address("255.255.255.255"):
        return "multicast/broadcast"
    if str(addr) in own:
        return "an address of the auditing host"
    return None


def random_mac(*, vendor: bool = False) -> bytes:
    """A random unicast MAC: a NIC vendor's OUI, or locally administered."""
    if vendor:
        oui = VENDOR_OUIS[os.urandom(1)[0] % len(VENDOR_OUIS)]
        return bytes.fromhex(oui) + os.urandom(3)
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
    def drops(self) -> int: ...
    def close(self) -> None: ...


class PacketSocket:
    """An AF_PACKET socket on one interface, filtered to boot protocols."""

    def __init__(self, interface: str, *, promiscuous: bool, passive: bool = False) -> None:
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
            try:  # root may exceed rmem_max: a flood then overflows later, if at all
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self.filtered = _attach_filter(self.sock, boot_protocol_filter(passive=passive))
            _bind_packet(self.sock, self.ifindex)
            try:  # then recv() needs no source address, which Python reads as UTF-8 text
                self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
                self.outgoing_ignored = True
            except OSError:  # an older kernel: recvfrom() tells our own frames apart
                self.outgoing_ignored = False
                if os.fsencode(interface).decode("utf-8", "replace") != interface:
                    raise OSError(0, "before Linux 4.20 the audit cannot read frames on an "
                                  "interface whose name is not UTF-8") from None
            if promiscuous:
                self._membership(PACKET_MR_PROMISC, b"")
            self.sock.setblocking(False)
            self._drain()
            self.drops()  # drops before the filter was attached are not the segment's
        except OSError as exc:
            self.sock.close()
            raise OperationalError(
                f"cannot listen on {shown(interface)}: {exc.strerror or exc}",
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

    def drops(self) -> int:
        """Frames the kernel dropped since the last call (the receive buffer was full)."""
        try:
            raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        except OSError:
            return 0
        _packets, dropped = struct.unpack("II", raw)
        return int(dropped)

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def recv(self) -> tuple[bytes, int] | None:
        try:
            if self.outgoing_ignored:
                return self.sock.recv(MAX_FRAME), 0  # PACKET_HOST: never an outgoing one
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
class _Machine:
    """One pretend booting machine: a MAC and the messages it repeats through the window."""

    arch: str
    mac: bytes
    uuid: bytes
    probes: list[Probe] = field(default_factory=list)


@dataclass
class _ProbeState:
    machines: list[_Machine] = field(default_factory=list)
    macs: dict[str, bytes] = field(default_factory=dict)  # arch -> MAC for port-4011 queries
    uuids: dict[str, bytes] = field(default_factory=dict)
    by_xid4: dict[int, Probe] = field(default_factory=dict)
    by_xid6: dict[int, Probe] = field(default_factory=dict)
    link_locals: dict[str, bytes] = field(default_factory=dict)  # our fe80:: -> MAC
    seen: set[int] = field(default_factory=set)  # hashes of the frames already decoded
    proxied: set[tuple[str, str]] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)  # ProxyDHCP addresses not queried
    senders: dict[bytes, list[int]] = field(default_factory=dict)  # MAC+IP -> [ours, foreign]
    new_senders: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    named: dict[str, set[bytes]] = field(default_factory=dict)  # limit -> senders named
    kept: int = 0
    kept_bytes: int = 0  # of the frames kept (see MAX_KEPT_BYTES)
    sent: int = 0
    client_messages: int = 0
    other: int = 0


def round_offsets(window: float) -> list[float]:
    """When the DISCOVERs go out, as fractions of the window: a PXE ROM repeats its
    DISCOVER, and a rogue that answers only a repeat must still be seen."""
    if window >= 2:
        return [0.0, 0.2, 0.45, 0.7]
    if window >= 0.8:
        return [0.0, 0.45]
    return [0.0]


def _sender_text(src_mac: bytes, src_ip: bytes) -> str:
    ip = (str(ipaddress.IPv4Address(src_ip)) if len(src_ip) == 4
          else str(ipaddress.IPv6Address(src_ip)) if len(src_ip) == 16 else "?")
    return f"{ip} ({dhcp4.mac_text(src_mac)})"


class Listener:
    """Runs one listen window: sends the probes, collects replies into an Observation."""

    def __init__(self, config: ProbeConfig, obs: Observation,
                 on_offer: Callable[[Offer], None] | None = None,
                 on_reply6: Callable[[Reply6], None] | None = None,
                 *, link: Link | None = None, own_ip: str | None = None) -> None:
        """``link`` replaces the packet socket (tests feed frames through a socketpair),
        and ``own_ip`` the interface's address with it."""
        self.cfg = config
        self.obs = obs
        self.on_offer = on_offer
        self.on_reply6 = on_reply6
        self.state = _ProbeState()
        self.start = time.monotonic()
        self.own_ip = own_ip
        # where a port-4011 query must never go (the checks a fetch makes, see follow)
        self.own: set[str] = {own_ip} if own_ip else set()
        if link is None:
            self.own_ip = interface_ipv4(config.interface)
            self.own = own_addresses()
            link = PacketSocket(config.interface, promiscuous=config.passive,
                                passive=config.passive)
        self.pkt: Link = link
        if not link.filtered:
            obs.notes.append("kernel refused the BPF filter: filtering in user space")
        self.udp: socket.socket | None = None
        self.fragments = frames.Reassembler()

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

    def _prepare(self) -> list[Probe]:
        """Two machines per architecture, one with a NIC vendor's MAC and one with a locally
        administered MAC; each asks as the firmware's PXE client and as iPXE (and over
        DHCPv6 for UEFI)."""
        st = self.state
        out: list[Probe] = []
        for name in self.cfg.arches:
            arch = dhcp4.ARCHES[name]
            for vendor in (True, False):
                mac = self.cfg.mac or random_mac(vendor=vendor)
                machine = _Machine(name, mac, os.urandom(16))
                st.machines.append(machine)
                st.macs.setdefault(name, mac)
                st.uuids.setdefault(name, machine.uuid)
                self.pkt.add_unicast(mac)
                for ipxe in (False, True) if self.cfg.ipxe_probe else (False,):
                    xid = int.from_bytes(os.urandom(4), "big")
                    probe = Probe("dhcpv4", name, ipxe, dhcp4.mac_text(mac), xid)
                    st.by_xid4[xid] = probe
                    machine.probes.append(probe)
                if self.cfg.dhcpv6 and arch.dhcpv6:
                    ll = frames.link_local_from_mac(mac)
                    st.link_locals[ll] = mac
                    solicited = "ff02::1:ff" + ipaddress.IPv6Address(ll).exploded[-7:]
                    self.pkt.add_multicast(frames.multicast_mac(solicited))
                    xid = int.from_bytes(os.urandom(3), "big")
                    probe = Probe("dhcpv6", name, False, dhcp4.mac_text(mac), xid,
                                  target=dhcp6.ALL_SERVERS)
                    st.by_xid6[xid] = probe
                    machine.probes.append(probe)
                out.extend(machine.probes)
        if self.cfg.dhcpv6 and st.link_locals:
            self.pkt.add_multicast(frames.multicast_mac(dhcp6.ALL_SERVERS))
        return out

    def _send_round(self, number: int) -> None:
        """One repetition: secs grows as on a machine that keeps trying, the broadcast flag
        and the order vary, as they do between real firmwares."""
        st = self.state
        machines = list(st.machines)
        if number:  # a different order each time: no fixed rhythm to recognise
            machines.sort(key=lambda _m: os.urandom(2))
        for machine in machines:
            arch = dhcp4.ARCHES[machine.arch]
            for probe in machine.probes:
                last = probe.sends[-1][0] if probe.sends else os.urandom(1)[0] % 4
                secs = last + 4 + os.urandom(1)[0] % 9 if probe.sends else last
                broadcast = number % 2 == 0 or os.urandom(1)[0] % 2 == 0
                try:
                    if probe.protocol == "dhcpv6":
                        self._send_dhcp6(probe, dhcp6.build_solicit(
                            mac=machine.mac, xid=probe.xid, arch=arch,
                            iaid=int.from_bytes(machine.mac[2:], "big"), elapsed=secs))
                    else:
                        self._send_dhcp4(probe, dhcp4.build_discover(
                            mac=machine.mac, xid=probe.xid, arch=arch, uuid=machine.uuid,
                            ipxe=probe.ipxe, secs=secs, broadcast=broadcast))
                except OSError as exc:
                    raise OperationalError(
                        f"cannot send on {shown(self.cfg.interface)}: {exc.strerror or exc}",
                        hint="check that the interface is up and has a link",
                    ) from None
                probe.sends.append((secs, broadcast if probe.protocol == "dhcpv4" else False))
                st.sent += 1

    def _open_udp(self, own_ip: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                            device_name(self.cfg.interface))
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
        if len(self.state.proxied) >= MAX_PROXY_QUERIES:  # 1,000 fake proxies: not 13,000 queries
            self.obs.limit("proxy-queries", offer.server_ip)
            return
        self.state.proxied.add(key)
        # Option 54 is the sender's word: a query to it is a packet the network chose the
        # destination of, vetted as a fetch is (never this host, loopback, link-local...).
        why = forbidden_address(offer.server_ip, self.own)
        if why is not None:
            if offer.server_ip not in self.state.refused:
                self.state.refused.add(offer.server_ip)
                self.obs.notes.append(
                    f"ProxyDHCP {offer.src_ip} ({offer.src_mac}) not queried on port 4011: "
                    f"its server identifier {offer.server_ip} is {why}; find who sends it")
            return
        if self.own_ip is None:
            self.obs.notes.append(
                f"ProxyDHCP {offer.server_ip} not queried on port 4011: "
                f"{shown(self.cfg.interface)} has no IPv4 address")
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
            self.state.sent += 1
        except OSError as exc:
            self.obs.notes.append(
                f"ProxyDHCP {offer.server_ip}: port-4011 query failed: {exc.strerror or exc}")

    # -- receiving -------------------------------------------------------------------------
    def triage(self, data: bytes) -> bool:
        """Cheap look at a raw frame before decoding it: True to decode and record it.

        Identical copies are skipped. Answers are counted per sender (source MAC + IP):
        answers to our own probes are kept up to a bound that grows with what we sent,
        answers to other clients up to a small one, and the first answer of every new sender
        is kept whatever the total. What is not kept is recorded as a reached limit.
        """
        key = hash(data[6:])
        st = self.state
        if key in st.seen:
            return False
        sender = self._answer_sender(data)
        if sender is None:  # neighbour discovery, garbage: decode it, up to a bound
            st.other += 1
            if st.other > MAX_OTHER_FRAMES:
                self.obs.limit("unparsed-frames")
                return False
            return True
        ident, ours, kind = sender
        if kind == "client":
            st.client_messages += 1
            if st.client_messages > MAX_CLIENT_MESSAGES:
                self.obs.limit("client-messages")
                return False
            st.seen.add(key)
            return True
        counts = st.senders.get(ident)
        size = len(data)
        if st.kept_bytes + size > MAX_KEPT_BYTES and (counts is not None
                                                     or size > FIRST_ANSWER_BYTES):
            self._capped("byte-cap", ident)
            return False
        if counts is None:
            # senders answering our probes and senders answering others are bounded
            # apart: a flood of the latter cannot use up room meant for the former
            if st.new_senders[ours] >= (MAX_SENDERS if ours else MAX_FOREIGN_SENDERS):
                self._capped("server-count-cap", ident)
                return False
            st.new_senders[ours] += 1
            counts = st.senders[ident] = [0, 0]
        elif ours:
            if counts[0] >= 2 * st.sent + 32:
                self._capped("per-server-cap", ident)
                return False
        elif counts[1] >= FOREIGN_PER_SENDER:
            self._capped("per-server-cap", ident)
            return False
        if sum(counts) and st.kept >= MAX_OFFERS:
            self._capped("total-cap", ident)
            return False
        counts[0 if ours else 1] += 1
        st.kept += 1
        st.kept_bytes += size
        st.seen.add(key)
        return True

    def _capped(self, reason: str, ident: bytes) -> None:
        """Count a frame a cap kept out; name its sender only while examples are wanted
        (formatting costs more than the rest of the triage)."""
        named = self.state.named.setdefault(reason, set())
        if ident not in named and len(named) < 5:
            named.add(ident)
            self.obs.limit(reason, _sender_text(ident[:6], ident[6:]))
        else:
            self.obs.limits[reason] += 1

    def _answer_sender(self, data: bytes) -> tuple[bytes, bool, str] | None:
        """(sender, answers one of our probes, "v4"/"v6"/"client") for a DHCP message, read
        at fixed offsets without decoding; None for anything else (decoded normally)."""
        if len(data) < 42:
            return None
        ethertype = data[12:14]
        if ethertype == b"\x08\x00" and data[23] == 17:
            ihl = (data[14] & 0x0F) * 4
            udp = 14 + ihl
            if len(data) < udp + 16:
                return None
            payload = udp + 8
            dport = int.from_bytes(data[udp + 2 : udp + 4], "big")
            if data[payload] == 1 and dport in (dhcp4.SERVER_PORT, dhcp4.PXE_PORT):
                return data[6:12] + data[26:30], False, "client"
            if data[payload] != 2:
                return None
            xid = int.from_bytes(data[payload + 4 : payload + 8], "big")
            return data[6:12] + data[26:30], xid in self.state.by_xid4, "v4"
        if ethertype == b"\x86\xdd" and len(data) >= 66 and data[20] == 17:
            sport = int.from_bytes(data[54:56], "big")
            dport = int.from_bytes(data[56:58], "big")
            if dport == dhcp6.SERVER_PORT and sport != dhcp6.SERVER_PORT:
                return data[6:12] + data[22:38], False, "client"
            xid = int.from_bytes(data[63:66], "big")
            return data[6:12] + data[22:38], xid in self.state.by_xid6, "v6"
        return None

    def _malformed(self, protocol: str, exc: MalformedPacket, src_ip: str, src_mac: bytes,
                   data: bytes) -> None:
        """Every malformed packet is counted per sender; a few per sender are kept."""
        key = f"{protocol} {src_ip} {dhcp4.mac_text(src_mac)}"
        counts = self.obs.malformed_counts
        if key not in counts and len(counts) >= MAX_MALFORMED_SENDERS:
            self.obs.limit("malformed-senders", f"{src_ip} ({dhcp4.mac_text(src_mac)})")
            return
        counts[key] = counts.get(key, 0) + 1
        if counts[key] > MALFORMED_PER_SENDER or len(self.obs.malformed) >= MAX_MALFORMED:
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

    def _handle_v4(self, frame: frames.Frame) -> None:
        # every message to the client port counts, whatever port it came from
        server_to_client = (frame.dport == dhcp4.CLIENT_PORT
                            or frame.sport in (dhcp4.SERVER_PORT, dhcp4.PXE_PORT))
        client_to_server = frame.dport in (dhcp4.SERVER_PORT, dhcp4.PXE_PORT)
        if not (server_to_client or client_to_server):
            return
        try:
            pkt = dhcp4.parse(frame.payload)
        except MalformedPacket as exc:
            self._malformed("dhcpv4", exc, frame.src_ip, frame.src_mac, frame.payload)
            return
        if pkt.damage is not None:
            # Evidence of a broken sender, and still an answer: iPXE uses the options
            # before the cut, so the reply is judged like any other.
            self._malformed("dhcpv4", MalformedPacket(pkt.damage), frame.src_ip,
                            frame.src_mac, frame.payload)
        if client_to_server and not server_to_client:
            if pkt.op == 1 and self.cfg.passive:
                self._client_seen(f"{pkt.client_mac} {pkt.vendor_class or ''}".strip())
            return
        if pkt.op != 2:
            return
        probe = self.state.by_xid4.get(pkt.xid)
        if probe is not None and pkt.client_mac != probe.mac:
            probe = None  # same xid, other client: still a server on this segment
        offer = Offer(pkt, frame.src_ip, dhcp4.mac_text(frame.src_mac), frame.sport,
                      time.monotonic() - self.start, probe)
        self.obs.offers.append(offer)
        if offer.is_proxy and offer.port != dhcp4.PXE_PORT and not self.cfg.passive:
            self._query_proxy(offer)
        if self.on_offer is not None:
            self.on_offer(offer)

    def _parse6(self, frame: frames.Frame) -> dhcp6.Dhcp6Message | None:
        """The DHCPv6 message in ``frame``; None (and recorded) when it cannot be read."""
        try:
            msg = dhcp6.parse(frame.payload)
        except MalformedPacket as exc:
            self._malformed("dhcpv6", exc, frame.src_ip, frame.src_mac, frame.payload)
            return None
        if msg.damage is not None:  # evidence, and still an answer (as for DHCPv4)
            self._malformed("dhcpv6", MalformedPacket(msg.damage), frame.src_ip,
                            frame.src_mac, frame.payload)
        return msg

    def _handle_v6(self, frame: frames.Frame) -> None:
        if frame.protocol != frames.IPPROTO_UDP:
            return
        if frame.sport == dhcp6.SERVER_PORT or frame.dport == dhcp6.CLIENT_PORT:
            msg = self._parse6(frame)
            if msg is None or msg.msg_type not in dhcp6.SERVER_MESSAGES:
                return
            reply = Reply6(msg, frame.src_ip, dhcp4.mac_text(frame.src_mac),
                           time.monotonic() - self.start, self.state.by_xid6.get(msg.xid))
            self.obs.replies6.append(reply)
            if self.on_reply6 is not None:
                self.on_reply6(reply)
        elif frame.dport == dhcp6.SERVER_PORT and self.cfg.passive:
            msg = self._parse6(frame)
            if msg is None:
                return
            self._client_seen(f"{dhcp4.mac_text(frame.src_mac)} dhcpv6 {msg.type_name}")

    def _client_seen(self, text: str) -> None:
        if text in self.obs.clients_seen:
            return
        if len(self.obs.clients_seen) >= MAX_CLIENTS:
            self.obs.limit("client-messages", text)
            return
        self.obs.clients_seen.append(text)

    def _kernel_drops(self) -> None:
        dropped = self.pkt.drops()
        if dropped:
            self.obs.limit("kernel-drops", count=dropped)

    def run(self) -> None:
        """Send (unless passive), then listen until the window closes.

        The DISCOVERs are repeated through the window (see ``round_offsets``), with a little
        jitter. Reading never stops before the window ends, however much arrives: frames are
        triaged cheaply before they are decoded, and whatever a bound keeps out is recorded.
        """
        schedule: list[float] = []
        if not self.cfg.passive:
            self.obs.probes.extend(self._prepare())
        # The window opens now, not when the socket was set up: the setup and the probes'
        # preparation must not eat it (on a loaded machine a short window was over before
        # the first DISCOVER, and the audit heard nothing).
        self.start = time.monotonic()
        if not self.cfg.passive:
            step = self.cfg.window * 0.05
            for i, fraction in enumerate(round_offsets(self.cfg.window)):
                jitter = 0.0 if i == 0 else (os.urandom(1)[0] / 255 - 0.5) * step
                schedule.append(self.start + fraction * self.cfg.window + jitter)
        end = self.start + self.cfg.window
        rounds = 0
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if rounds < len(schedule) and now >= schedule[rounds]:
                self._send_round(rounds)
                rounds += 1
                continue
            wake = schedule[rounds] if rounds < len(schedule) else end
            readable, _, _ = select.select([self.pkt], [], [], max(0.0, min(end, wake) - now))
            if readable:
                self._read(1024)
        # What arrived in time but is still queued (a flood) is read for a short grace;
        # what is left after that is counted, not silently ignored.
        grace = time.monotonic() + BACKLOG_GRACE
        while time.monotonic() < grace and self._read(1024):
            pass
        left = 0
        while time.monotonic() < grace + 0.2 and self.pkt.recv() is not None:
            left += 1
        if left:
            self.obs.limit("backlog", count=left)
        self.fragments.flush()
        self._fragment_leftovers()
        self._kernel_drops()
        self.obs.listen_seconds = time.monotonic() - self.start

    def _reassemble(self, data: bytes) -> bytes | None:
        """A fragment in; the whole datagram's frame once complete. What cannot be put
        together is recorded as malformed (by its sender), what a bound kept out as such."""
        reasm = self.fragments
        try:
            whole = reasm.add(data, time.monotonic())
        except MalformedPacket as exc:
            self._malformed("ip/udp", exc, frames.ip_source(data), data[6:12], data)
            whole = None
        self._fragment_leftovers()
        return whole

    def _fragment_leftovers(self) -> None:
        reasm = self.fragments
        if reasm.dropped:
            self.obs.limit("ip-fragments", count=reasm.dropped)
            reasm.dropped = 0
        for source_ip, source_mac in reasm.incomplete:
            self._malformed("ip/udp", MalformedPacket(
                "fragmented IPv4 datagram that never completed"), source_ip, source_mac, b"")
        reasm.incomplete.clear()

    def _read(self, most: int) -> int:
        """Triage and record up to ``most`` queued frames; how many were read."""
        n = 0
        for n in range(1, most + 1):
            got = self.pkt.recv()
            if got is None:
                n -= 1
                break
            data, pkttype = got
            if pkttype == PACKET_OUTGOING:
                continue
            if frames.is_fragment(data):
                whole = self._reassemble(data)
                if whole is None:
                    continue
                data = whole
            if self.triage(data):
                self.handle_frame(data)
        self._kernel_drops()
        if self.udp is not None:
            try:  # answers come in through the packet socket; keep this one empty
                while self.udp.recv(MAX_FRAME):
                    pass
            except OSError:
                pass
        return n
