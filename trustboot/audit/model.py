"""What an audit observed, as plain data: the probes' output and the checks' input."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from trustboot.audit import dhcp4, dhcp6
from trustboot.audit.loaders import LoaderInfo
from trustboot.audit.tftp import FetchResult, WriteResult

# Reasons a bound can stop the audit from seeing something (Observation.limit), and what
# each means; every one reached is a high finding.
LIMIT_REASONS = {
    "kernel-drops": "frames the kernel dropped before the audit read them (receive buffer "
                    "full: a flood)",
    "per-server-cap": "answers not kept because their sender had already sent the most "
                      "answers kept per server",
    "server-count-cap": "answers not kept because too many distinct senders answered",
    "total-cap": "answers not kept because the total number of answers kept was reached",
    "malformed-senders": "malformed packets not kept because too many senders sent some",
    "client-messages": "client messages not examined (passive mode) past the per-window bound",
    "unparsed-frames": "frames that were no DHCP message, not examined past the per-window bound",
    "backlog": "frames that arrived within the window but were still unread when it closed",
    "ip-fragments": "IP fragments not kept because too many datagrams were being "
                    "reassembled at once",
    "proxy-queries": "ProxyDHCP servers not queried on port 4011 because too many answered",
    "follow-targets": "boot files not fetched because too many were offered",
    "follow-deadline": "fetches still running when the follow-up time ran out",
    "fetch-deadline": "boot files whose transfer did not finish within --follow-timeout",
    "size-cap": "boot files larger than --max-file-size (only a prefix was read)",
}
LISTENER_LIMITS = ("kernel-drops", "per-server-cap", "server-count-cap", "total-cap",
                   "malformed-senders", "client-messages", "unparsed-frames", "backlog",
                   "ip-fragments")


@dataclass
class Probe:
    """One message the audit sent."""

    protocol: str  # dhcpv4, dhcpv6, proxydhcp
    arch: str
    ipxe: bool
    mac: str
    xid: int
    target: str = "broadcast"
    # each time it went out (a PXE ROM repeats its DISCOVER): secs field and broadcast flag
    sends: list[tuple[int, bool]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"protocol": self.protocol, "arch": self.arch, "ipxe": self.ipxe,
                "mac": self.mac, "xid": f"0x{self.xid:x}", "target": self.target,
                "sends": [{"secs": s, "broadcast": b} for s, b in self.sends]}


@dataclass
class Offer:
    """A DHCPv4 server reply: an OFFER/ACK to a probe, a ProxyDHCP answer, or one seen passively."""

    packet: dhcp4.Dhcp4Packet
    src_ip: str
    src_mac: str
    port: int  # source port: 67, or 4011 for a boot server's answer
    at: float  # seconds since the audit began
    probe: Probe | None = None  # None in passive mode

    @property
    def server_ip(self) -> str:
        """Option 54 when present and plausible, else the packet's source address."""
        sid = self.packet.server_id
        return sid if sid and sid != dhcp4.NO_ADDRESS else self.src_ip

    @property
    def is_proxy(self) -> bool:
        """A PXEClient answer that offers no address: ProxyDHCP (or a 4011 boot server)."""
        vc = self.packet.vendor_class or ""
        return self.port == dhcp4.PXE_PORT or (
            vc.startswith(("PXEClient", "HTTPClient")) and self.packet.yiaddr == dhcp4.NO_ADDRESS
        )

    @property
    def role(self) -> str:
        return "proxydhcp" if self.is_proxy else "dhcp"

    @property
    def arch(self) -> str | None:
        return self.probe.arch if self.probe else None

    @property
    def ipxe_probe(self) -> bool:
        return bool(self.probe and self.probe.ipxe)

    @property
    def boot_file(self) -> str:
        """What a client would load: option 67 wins over the BOOTP file field."""
        return self.packet.bootfile_option or self.packet.file

    @property
    def boot_server(self) -> str:
        """Where a client would load it from: option 66, else sname, else siaddr."""
        if self.packet.tftp_server_option:
            return self.packet.tftp_server_option
        if self.packet.sname:
            return self.packet.sname
        return self.packet.siaddr if self.packet.siaddr != dhcp4.NO_ADDRESS else ""

    def boot_targets(self) -> list[BootTarget]:
        """Every (server, file) the header fields and options 66/67 point at, deduplicated."""
        pkt = self.packet
        # A split option 67/66 is one name to RFC 3396 clients and its first part to iPXE.
        # An overloaded file/sname field is options to RFC 2132 clients and text to iPXE.
        files = [f for f in (pkt.bootfile_option, pkt.ipxe_text_option(dhcp4.OPT_BOOTFILE),
                             pkt.file, pkt.ipxe_file) if f]
        servers = [s for s in (pkt.tftp_server_option,
                               pkt.ipxe_text_option(dhcp4.OPT_TFTP_SERVER), pkt.sname,
                               pkt.ipxe_sname) if s]
        if pkt.siaddr != dhcp4.NO_ADDRESS:
            servers.append(pkt.siaddr)
        if not servers and self.is_proxy:
            servers.append(self.server_ip)
        out: list[BootTarget] = []
        for f in files:
            if "://" in f:
                target = BootTarget.from_url(f)
                if target not in out:
                    out.append(target)
                continue
            for s in servers or [""]:
                target = BootTarget("tftp", s, f.lstrip("/") if s else f, f"tftp://{s}/{f}")
                if target not in out:
                    out.append(target)
        return out

    def evidence(self) -> dict[str, object]:
        data: dict[str, object] = {
            "server_ip": self.server_ip, "source_ip": self.src_ip, "source_mac": self.src_mac,
            "source_port": self.port, "role": self.role, "at_s": round(self.at, 3),
        }
        if self.probe is not None:
            data["probe_arch"] = self.probe.arch
            data["probe_ipxe"] = self.probe.ipxe
        data.update(self.packet.evidence())
        vendor = self.packet.pxe_vendor_options()
        if vendor:
            data["option_43_pxe"] = dhcp4.describe_pxe_vendor(vendor)
        return data


@dataclass
class Reply6:
    """A DHCPv6 Advertise/Reply."""

    message: dhcp6.Dhcp6Message
    src_ip: str
    src_mac: str
    at: float
    probe: Probe | None = None

    @property
    def server_key(self) -> str:
        return self.message.server_duid or self.src_ip

    def evidence(self) -> dict[str, object]:
        data: dict[str, object] = {
            "source_ip": self.src_ip, "source_mac": self.src_mac, "at_s": round(self.at, 3),
            "server_duid_mac": self.message.server_duid_mac,
        }
        if self.probe is not None:
            data["probe_arch"] = self.probe.arch
            data["probe_ipxe"] = self.probe.ipxe
        data.update(self.message.evidence())
        return data


@dataclass(frozen=True)
class BootTarget:
    scheme: str  # tftp, http, https, or whatever the URL said
    server: str
    path: str
    url: str

    @classmethod
    def from_url(cls, url: str) -> BootTarget:
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
        except ValueError:
            return cls("invalid", "", url, url)
        return cls(parts.scheme.lower(), host, parts.path.lstrip("/"), url)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def server_is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.server)
        except ValueError:
            return False
        return True


@dataclass
class Malformed:
    protocol: str
    reason: str
    src_ip: str
    src_mac: str
    head_hex: str  # the first bytes, as evidence
    length: int
    at: float

    def evidence(self) -> dict[str, object]:
        return {"protocol": self.protocol, "reason": self.reason, "source_ip": self.src_ip,
                "source_mac": self.src_mac, "length": self.length, "head_hex": self.head_hex,
                "at_s": round(self.at, 3)}


@dataclass
class Fetched:
    """A boot file followed over TFTP (or HTTP) with what it turned out to be."""

    target: BootTarget
    result: FetchResult
    loader: LoaderInfo | None
    well_known: bool = False

    def to_json(self) -> dict[str, object]:
        data: dict[str, Any] = {"url": self.target.url, "well_known": self.well_known}
        data.update(self.result.to_json())
        data["loader"] = self.loader.to_json() if self.loader else None
        return data


@dataclass
class HttpCheck:
    url: str
    ok: bool = False
    status: int | None = None
    size: int = 0
    sha256: str | None = None
    truncated: bool = False
    error: str | None = None
    tls_chain_sha256: list[str] = field(default_factory=list)
    tls_verified: bool | None = None  # against the expected CA, when one was given
    tls_error: str | None = None
    loader: LoaderInfo | None = None
    content_encoding: str | None = None  # what the server sent although we asked for identity
    refused: str | None = None  # why the audit would not connect (a local/forbidden target)
    limit: str | None = None  # the limit that stopped the fetch: size-cap, fetch-deadline
    location: str | None = None  # a redirect's target, as the server sent it (cut)

    def to_json(self) -> dict[str, object]:
        return {
            "url": self.url, "ok": self.ok, "status": self.status, "size": self.size,
            "sha256": self.sha256, "truncated": self.truncated, "error": self.error,
            "tls_chain_sha256": self.tls_chain_sha256, "tls_verified": self.tls_verified,
            "tls_error": self.tls_error, "content_encoding": self.content_encoding,
            "refused": self.refused, "limit": self.limit, "location": self.location,
            "loader": self.loader.to_json() if self.loader else None,
        }


@dataclass(frozen=True)
class NotFetched:
    """A boot file that was offered but has no fetch in the report, and why."""

    target: BootTarget
    reason: str
    offer: dict[str, object]  # the evidence of the offer (or DHCPv6 reply) naming it

    def to_json(self) -> dict[str, object]:
        return {"url": self.target.url, "scheme": self.target.scheme, "reason": self.reason,
                "offer": self.offer}


# what the audit follows; a boot file offered under any other scheme is never fetched
FETCHED_SCHEMES = ("tftp", "http", "https")


def _why_not_fetched(target: BootTarget) -> str:
    if target.scheme not in FETCHED_SCHEMES:
        return f"the audit does not fetch {target.scheme}:// boot files"
    if target.scheme == "tftp" and not target.server:
        return "the offer names no boot server"
    if target.scheme == "tftp" and not target.server_is_ip:
        return "the boot server is not an IP address"
    return "skipped: too many targets or no IPv4 address to fetch from"


@dataclass
class Observation:
    interface: str
    mode: str  # active | passive
    window: float
    probes: list[Probe] = field(default_factory=list)
    offers: list[Offer] = field(default_factory=list)
    replies6: list[Reply6] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)
    fetched: list[Fetched] = field(default_factory=list)
    http: list[HttpCheck] = field(default_factory=list)
    writes: list[WriteResult] = field(default_factory=list)
    clients_seen: list[str] = field(default_factory=list)  # passive: MACs asking for boot
    notes: list[str] = field(default_factory=list)
    followed: bool = True  # False: boot files were deliberately not fetched (--no-follow)
    # what a bound kept from the audit: reason -> count, and a few senders/targets per reason
    limits: dict[str, int] = field(default_factory=dict)
    limit_samples: dict[str, list[str]] = field(default_factory=dict)
    malformed_counts: dict[str, int] = field(default_factory=dict)  # "proto ip mac" -> count
    listen_seconds: float = 0.0
    follow_seconds: float = 0.0

    def limit(self, reason: str, sample: str | None = None, count: int = 1) -> None:
        """Record that a bound was reached: it becomes a high finding."""
        self.limits[reason] = self.limits.get(reason, 0) + count
        if sample is not None:
            samples = self.limit_samples.setdefault(reason, [])
            if len(samples) < 5 and sample not in samples:
                samples.append(sample)

    def not_fetched(self) -> list[NotFetched]:
        """Every offered boot file (DHCPv4 offers, DHCPv6 boot URLs) with no fetch or HTTP
        check in the observation: an unfetchable scheme (ftp://, nfs://, ...), a TFTP
        server named by host name, or one skipped. A report must show these: a reader that
        only looks at what was fetched would otherwise take the segment as fully seen."""
        seen = {f.target.url for f in self.fetched} | {h.url for h in self.http}
        out: list[NotFetched] = []
        offered = [(t, o.evidence()) for o in self.offers for t in o.boot_targets()]
        offered += [(BootTarget.from_url(r.message.bootfile_url), r.evidence())
                    for r in self.replies6 if r.message.bootfile_url]
        for target, evidence in offered:
            if target.url in seen:
                continue
            seen.add(target.url)
            out.append(NotFetched(target, _why_not_fetched(target), evidence))
        return out

    @property
    def dropped(self) -> int:
        """Packets not kept because a bound was reached (listener limits only)."""
        return sum(n for reason, n in self.limits.items() if reason in LISTENER_LIMITS)

    def to_json(self) -> dict[str, object]:
        return {
            "interface": self.interface, "mode": self.mode, "window_s": self.window,
            "listen_s": round(self.listen_seconds, 3),
            "follow_s": round(self.follow_seconds, 3),
            "probes": [p.to_json() for p in self.probes],
            "responders": responders(self),
            "dhcpv4": [o.evidence() for o in self.offers],
            "dhcpv6": [r.evidence() for r in self.replies6],
            "malformed": [m.evidence() for m in self.malformed],
            "fetched": [f.to_json() for f in self.fetched],
            "http": [h.to_json() for h in self.http],
            "not_fetched": [n.to_json() for n in self.not_fetched()],
            "tftp_write_probes": [w.to_json() for w in self.writes],
            "clients_seen": self.clients_seen, "notes": self.notes, "dropped": self.dropped,
            "limits": dict(self.limits), "limit_samples": dict(self.limit_samples),
        }


def ipxe_loop_status(offers: list[Offer]) -> str:
    """For one server: 'broken' when iPXE (user-class iPXE) is handed something other than
    what the PXE ROM gets, 'not-broken' when it gets the same file, 'no-answer-to-ipxe'
    when the server ignores iPXE, 'unknown' without both probes (passive mode)."""
    plain: dict[str, str] = {}
    ipxe: dict[str, str] = {}
    for o in offers:
        if o.probe is None or o.port == dhcp4.PXE_PORT:
            continue
        (ipxe if o.probe.ipxe else plain).setdefault(o.probe.arch, o.boot_file)
    if not plain:
        return "unknown"
    if not ipxe:
        return "no-answer-to-ipxe"
    common = [arch for arch in plain if arch in ipxe]
    if not common:
        return "unknown"
    if any(plain[a] and ipxe[a] == plain[a] for a in common):
        return "not-broken"
    return "broken"


def responders(obs: Observation) -> list[dict[str, object]]:
    """One entry per server that answered: identity, what it offers, how it treats iPXE."""
    grouped: dict[tuple[str, str], list[Offer]] = {}
    for offer in obs.offers:
        grouped.setdefault((offer.server_ip, offer.src_mac), []).append(offer)
    out: list[dict[str, object]] = []
    for (ip, mac), offers in grouped.items():
        boot = []
        seen: set[tuple[object, ...]] = set()
        for o in offers:
            pkt = o.packet
            entry = {
                "arch": o.arch, "ipxe": o.ipxe_probe, "port": o.port,
                "siaddr": pkt.siaddr, "sname": pkt.sname, "file": pkt.file,
                "option_66": pkt.tftp_server_option, "option_67": pkt.bootfile_option,
                "option_43": dhcp4.describe_pxe_vendor(pkt.pxe_vendor_options() or {}),
            }
            key = tuple(str(v) for v in entry.values())
            if key not in seen:
                seen.add(key)
                boot.append(entry)
        out.append({
            "protocol": "dhcpv4",
            "server_ip": ip, "server_mac": mac,
            "role": "proxydhcp" if all(o.is_proxy for o in offers) else "dhcp",
            "offered_addresses": sorted({o.packet.yiaddr for o in offers
                                         if o.packet.yiaddr != dhcp4.NO_ADDRESS
                                         and o.port != dhcp4.PXE_PORT}),
            "boot": boot,
            "ipxe_loop": ipxe_loop_status(offers),
        })
    grouped6: dict[str, list[Reply6]] = {}
    for reply in obs.replies6:
        grouped6.setdefault(reply.server_key, []).append(reply)
    for replies in grouped6.values():
        first = replies[0]
        out.append({
            "protocol": "dhcpv6", "server_ip": first.src_ip, "server_mac": first.src_mac,
            "server_duid": first.message.server_duid, "role": "dhcpv6",
            "offered_addresses": sorted({a for r in replies for a in r.message.addresses}),
            "boot_urls": sorted({r.message.bootfile_url for r in replies
                                 if r.message.bootfile_url}),
        })
    return out
