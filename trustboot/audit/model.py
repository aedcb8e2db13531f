"""What an audit observed, as plain data: the probes' output and the checks' input."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from trustboot.audit import dhcp4, dhcp6
from trustboot.audit.dns import Lookup, Nameservers
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
    "byte-cap": "answers not kept because the answers kept already held the most bytes an "
                "audit keeps (large answers: a flood)",
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
                   "byte-cap", "malformed-senders", "client-messages", "unparsed-frames", "backlog",
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
    _targets: list[BootTarget] | None = field(default=None, init=False, repr=False,
                                              compare=False)

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

    def nameservers(self) -> Nameservers:
        """The DNS servers this offer gives a client for boot URL host names (option 6)."""
        return Nameservers(tuple(self.packet.dns_servers), 4, "DHCPv4 option 6")

    def boot_targets(self) -> list[BootTarget]:
        """Every (server, file) the header fields and options 66/67 point at, deduplicated,
        each built from the bytes a client uses (up to the first NUL, unescaped)."""
        if self._targets is None:  # built once: every check and the follower ask for them
            self._targets = self._build_targets()
        return list(self._targets)

    def _build_targets(self) -> list[BootTarget]:
        pkt = self.packet
        # A split option 67/66 is one name to RFC 3396 clients and its first part to iPXE
        # and EDK2. An overloaded file/sname field is options to RFC 2132 clients and text
        # to iPXE.
        files = [f for f in (pkt.option_string(dhcp4.OPT_BOOTFILE),
                             pkt.ipxe_option_string(dhcp4.OPT_BOOTFILE),
                             (pkt.file_bytes, pkt.file), (pkt.ipxe_file_bytes, pkt.ipxe_file))
                 if f is not None and f[0]]
        servers = [s for s in (pkt.option_string(dhcp4.OPT_TFTP_SERVER),
                               pkt.ipxe_option_string(dhcp4.OPT_TFTP_SERVER),
                               (pkt.sname_bytes, pkt.sname),
                               (pkt.ipxe_sname_bytes, pkt.ipxe_sname))
                   if s is not None and s[0]]
        if pkt.siaddr != dhcp4.NO_ADDRESS:
            servers.append((pkt.siaddr.encode(), pkt.siaddr))
        if not servers and self.is_proxy:
            servers.append((self.server_ip.encode(), self.server_ip))
        out: list[BootTarget] = []
        for raw, text in files:
            if b"://" in raw:
                targets = [BootTarget.from_raw_url(raw, text)]
            else:  # a server's name only matters as an IP address: its text will do
                targets = [BootTarget.tftp(server, (raw, text))
                           for server in [s[1] for s in servers] or [""]]
            out += [t for t in targets if t not in out]
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

    _targets: list[BootTarget] | None = field(default=None, init=False, repr=False,
                                              compare=False)

    @property
    def sender(self) -> tuple[str, str, str]:
        """Who sent it: (server DUID, source address, source MAC). A DUID is only a claim
        (any sender can copy the authorized server's), so the checks judge answers per
        sender, never per DUID alone."""
        return (self.message.server_duid or "", self.src_ip, self.src_mac)

    def nameservers(self) -> Nameservers:
        """The DNS servers this reply gives a client (option 23): it asks them for AAAA."""
        return Nameservers(tuple(self.message.dns_servers), 6, "DHCPv6 option 23")

    def boot_targets(self) -> list[BootTarget]:
        """The boot file URLs (option 59) a client may use, each as it reads it."""
        if self._targets is None:
            self._targets = [BootTarget.from_raw_url(raw, text)
                             for raw, text in self.message.bootfile_url_strings()]
        return list(self._targets)

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


def _wire_url(raw: bytes) -> str:
    """A URL's bytes as an HTTP client sends them: bytes that cannot stand in a request
    line (controls, space, non-ASCII) percent-encoded, the rest unchanged (iPXE's
    uri_encode does the same); a URL of plain printable ASCII stays as it is."""
    return "".join(chr(b) if 0x21 <= b < 0x7F else f"%{b:02X}" for b in raw)


@dataclass(frozen=True)
class BootTarget:
    # server, path and url are text to show (bytes from the wire escaped, safe_text); url
    # also names the target in the report (fetches, not_fetched, findings)
    scheme: str  # tftp, http, https, or whatever the URL said
    server: str
    path: str
    url: str
    # What a client sends when that differs from the text (see wire_name/wire_url)
    raw_name: bytes | None = field(default=None, compare=False)
    raw_url: str | None = field(default=None, compare=False)

    @classmethod
    def from_url(cls, url: str) -> BootTarget:
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
        except ValueError:
            return cls("invalid", "", url, url)
        return cls(parts.scheme.lower(), host, parts.path.lstrip("/"), url)

    @classmethod
    def from_raw_url(cls, raw: bytes, text: str | None = None) -> BootTarget:
        """A URL as a client read it off the wire (up to the first NUL): split as bytes
        (latin-1 keeps each byte one character), shown escaped, sent as the client would."""
        url = text if text is not None else dhcp4.safe_text(raw)
        try:
            parts = urlsplit(raw.decode("latin-1"))
            host = parts.hostname or ""
        except ValueError:
            return cls("invalid", "", url, url)
        path = parts.path.lstrip("/").encode("latin-1")
        plain = url == raw.decode("latin-1")  # printable ASCII: no escaping happened
        return cls(parts.scheme.lower(), host if plain else dhcp4.safe_text(host.encode(
            "latin-1")), path.decode("latin-1") if plain else dhcp4.safe_text(path), url,
            raw_name=None if plain else path, raw_url=None if plain else _wire_url(raw))

    @classmethod
    def tftp(cls, server: str, name: tuple[bytes, str]) -> BootTarget:
        """File ``name`` (bytes as a client sends them, text for display) on ``server``."""
        raw, text = name
        path, path_text = (raw.lstrip(b"/"), text.lstrip("/")) if server else (raw, text)
        return cls("tftp", server, path_text, f"tftp://{server}/{text}",
                   raw_name=None if path_text == path.decode("latin-1") else path)

    @property
    def wire_name(self) -> bytes:
        """The file name a TFTP read request carries: the bytes the client read, unescaped
        (the display text of a name with a high byte or a control is another name)."""
        return self.raw_name if self.raw_name is not None else self.path.encode()

    @property
    def wire_url(self) -> str:
        """The URL an HTTP client requests (see _wire_url)."""
        return self.raw_url if self.raw_url is not None else self.url

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
    # how the host was found: the questions asked of the offer's DNS servers (none for a
    # literal address), and the address connected to
    dns: list[Lookup] = field(default_factory=list)
    address: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "url": self.url, "ok": self.ok, "status": self.status, "size": self.size,
            "sha256": self.sha256, "truncated": self.truncated, "error": self.error,
            "tls_chain_sha256": self.tls_chain_sha256, "tls_verified": self.tls_verified,
            "tls_error": self.tls_error, "content_encoding": self.content_encoding,
            "refused": self.refused, "limit": self.limit, "location": self.location,
            "loader": self.loader.to_json() if self.loader else None,
            "dns": [lookup.to_json() for lookup in self.dns], "address": self.address,
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
        offered: list[tuple[BootTarget, Offer | Reply6]] = [
            (t, o) for o in self.offers for t in o.boot_targets()]
        offered += [(t, r) for r in self.replies6 for t in r.boot_targets()]
        for target, source in offered:
            if target.url in seen:
                continue
            seen.add(target.url)  # evidence only for those reported: 8,000 offers may name one
            out.append(NotFetched(target, _why_not_fetched(target), source.evidence()))
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


def dhcpv6_responders(replies: list[Reply6]) -> dict[tuple[str, str], list[Reply6]]:
    """DHCPv6 answers per responder: (server DUID, source MAC). Not per DUID alone: a rogue
    copying the authorized server's DUID is a responder of its own. Not per source address
    either: one server answers from its link-local and its global addresses alike (the
    checks still judge every (DUID, address, MAC) on its own, see Reply6.sender)."""
    grouped: dict[tuple[str, str], list[Reply6]] = {}
    for reply in replies:
        grouped.setdefault((reply.message.server_duid or "", reply.src_mac), []).append(reply)
    return grouped


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
    for replies in dhcpv6_responders(obs.replies6).values():
        first = replies[0]
        out.append({
            "protocol": "dhcpv6", "server_ip": first.src_ip, "server_mac": first.src_mac,
            "server_ips": sorted({r.src_ip for r in replies}),
            "server_duid": first.message.server_duid, "role": "dhcpv6",
            "offered_addresses": sorted({a for r in replies for a in r.message.addresses}),
            "boot_urls": sorted({t.url for r in replies for t in r.boot_targets()}),
        })
    return out
