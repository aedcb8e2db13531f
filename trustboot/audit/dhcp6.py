"""DHCPv6 codec (RFC 8415, RFC 5970 network boot options). No I/O.

``parse`` raises :class:`MalformedPacket` and nothing else; nesting depth and option counts
are bounded so a hostile packet costs little.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from trustboot.audit.dhcp4 import (
    MAX_OPTION_VALUE,
    Arch,
    cstring,
    first_items,
    hidden_text,
    safe_text,
    shown,
)
from trustboot.audit.errors import MalformedPacket, wire_bytes

CLIENT_PORT = 546
SERVER_PORT = 547
ALL_SERVERS = "ff02::1:2"

SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY = 1, 2, 3, 4, 5, 6, 7
RELEASE, DECLINE, RECONFIGURE, INFORMATION_REQUEST, RELAY_FORW, RELAY_REPL = 8, 9, 10, 11, 12, 13
MESSAGE_TYPE_NAMES = {
    1: "SOLICIT", 2: "ADVERTISE", 3: "REQUEST", 4: "CONFIRM", 5: "RENEW", 6: "REBIND",
    7: "REPLY", 8: "RELEASE", 9: "DECLINE", 10: "RECONFIGURE", 11: "INFORMATION-REQUEST",
    12: "RELAY-FORW", 13: "RELAY-REPL",
}
SERVER_MESSAGES = {ADVERTISE, REPLY, RECONFIGURE, RELAY_REPL}

OPT_CLIENTID = 1
OPT_SERVERID = 2
OPT_IA_NA = 3
OPT_IA_TA = 4
OPT_IAADDR = 5
OPT_ORO = 6
OPT_PREFERENCE = 7
OPT_ELAPSED_TIME = 8
OPT_RELAY_MSG = 9
OPT_STATUS_CODE = 13
OPT_USER_CLASS = 15
OPT_VENDOR_CLASS = 16
OPT_VENDOR_OPTS = 17
OPT_DNS_SERVERS = 23
OPT_DOMAIN_LIST = 24
OPT_BOOTFILE_URL = 59
OPT_BOOTFILE_PARAM = 60
OPT_CLIENT_ARCH = 61
OPT_NII = 62

MAX_OPTIONS = 512
MAX_DEPTH = 4
PXE_ENTERPRISE = 343  # Intel, used by UEFI PXE/HTTP clients in option 16


@dataclass
class Dhcp6Message:
    msg_type: int
    xid: int  # 24 bits; 0 for relay messages
    options: list[tuple[int, bytes]] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    hop_count: int | None = None
    link_address: str | None = None
    peer_address: str | None = None
    # Why a strict parser would have refused it: an option running past the end, where
    # iPXE's dhcpv6_option() stops and still uses the options before it (they count here).
    damage: str | None = None
    # Bytes after a NUL in a boot file URL (clients stop at the NUL), one per instance:
    # how many, and their text for evidence.
    url_tails: list[tuple[int, str]] = field(default_factory=list)
    # The distinct boot file URLs clients may use (see parse), as bytes; and, made once,
    # their text
    url_values: list[bytes] = field(default_factory=list)
    _urls: list[tuple[bytes, str]] | None = field(default=None, init=False, repr=False,
                                                  compare=False)

    @property
    def type_name(self) -> str:
        return MESSAGE_TYPE_NAMES.get(self.msg_type, f"type-{self.msg_type}")

    def first(self, code: int) -> bytes | None:
        for c, v in self.options:
            if c == code:
                return v
        return None

    @property
    def server_duid(self) -> str | None:
        v = self.first(OPT_SERVERID)
        return v.hex() if v is not None else None

    @property
    def client_duid(self) -> str | None:
        v = self.first(OPT_CLIENTID)
        return v.hex() if v is not None else None

    @property
    def server_duid_mac(self) -> str | None:
        """The link-layer address inside a DUID-LLT or DUID-LL (Ethernet) server identifier."""
        v = self.first(OPT_SERVERID)
        if v is None or len(v) < 4:
            return None
        duid_type, hwtype = struct.unpack_from("!HH", v, 0)
        if hwtype != 1:
            return None
        mac = v[8:] if duid_type == 1 else v[4:] if duid_type == 3 else b""
        return ":".join(f"{b:02x}" for b in mac) if len(mac) == 6 else None

    def bootfile_url_strings(self) -> list[tuple[bytes, str]]:
        """Every boot file URL (option 59) a client may use, each as clients read it (up
        to the first NUL, at most MAX_OPTION_VALUE bytes): the bytes and their text. A
        repeated option 59 is no mistake to skip: iPXE uses the first, EDK2 the last."""
        if self._urls is None:
            self._urls = [(v, safe_text(v)) for v in self.url_values]
        return list(self._urls)

    @property
    def bootfile_url(self) -> str | None:
        """The text of the first option 59 (what iPXE uses), up to its first NUL; None
        without one. Judge bootfile_url_strings: EDK2 uses the last."""
        v = self.first(OPT_BOOTFILE_URL)
        if v is None:
            return None
        head = cstring(v[:MAX_OPTION_VALUE])[0]
        return next((t for raw, t in self.bootfile_url_strings() if raw == head),
                    None) or safe_text(head)

    @property
    def bootfile_params(self) -> list[str]:
        v = self.first(OPT_BOOTFILE_PARAM)
        return [safe_text(p) for p in _length_prefixed(v[:MAX_OPTION_VALUE])] if v else []

    @property
    def dns_servers(self) -> list[str]:
        """Option 23 (OPTION_DNS_SERVERS): the servers a client resolves boot URL host names
        with, in order (a trailing partial address is ignored)."""
        value = self.first(OPT_DNS_SERVERS) or b""
        return list(dict.fromkeys(str(ipaddress.IPv6Address(value[i:i + 16]))
                                  for i in range(0, len(value) - 15, 16)))

    @property
    def preference(self) -> int | None:
        v = self.first(OPT_PREFERENCE)
        return v[0] if v is not None and len(v) == 1 else None

    @property
    def addresses(self) -> list[str]:
        out = []
        for code, value in self.options:
            if code not in (OPT_IA_NA, OPT_IA_TA):
                continue
            skip = 12 if code == OPT_IA_NA else 4
            try:
                subs = parse_options(value, skip, depth=1)
            except MalformedPacket:
                continue
            for sc, sv in subs:
                if sc == OPT_IAADDR and len(sv) >= 24:
                    out.append(str(ipaddress.IPv6Address(sv[:16])))
        return out

    @property
    def status(self) -> list[tuple[int, str]]:
        """Status codes at the top level and inside IA options."""
        found: list[tuple[int, str]] = []

        def collect(opts: list[tuple[int, bytes]], depth: int) -> None:
            for code, value in opts:
                if code == OPT_STATUS_CODE and len(value) >= 2:
                    found.append((struct.unpack("!H", value[:2])[0], safe_text(value[2:])))
                elif code in (OPT_IA_NA, OPT_IA_TA) and depth < MAX_DEPTH:
                    skip = 12 if code == OPT_IA_NA else 4
                    try:
                        collect(parse_options(value, skip, depth=depth + 1), depth + 1)
                    except MalformedPacket:
                        continue

        collect(self.options, 0)
        return found

    def evidence(self) -> dict[str, object]:
        data: dict[str, object] = {
            "message_type": self.type_name,
            "xid": f"0x{self.xid:06x}",
            "server_duid": self.server_duid,
            "client_duid": self.client_duid,
        }
        # each of these properties decodes options again: read every one once
        url, params, addresses = self.bootfile_url, self.bootfile_params, self.addresses
        preference, status = self.preference, self.status
        if url is not None:
            data["option_59_bootfile_url"] = shown(url)
        if len(self.url_values) > 1:
            data["option_59_bootfile_urls"] = first_items(
                [shown(t) for _v, t in self.bootfile_url_strings()])
        if self.url_tails:
            data["after_nul"] = {"option 59": self.url_tails[0][1]}
        if params:
            data["option_60_bootfile_params"] = first_items([shown(p) for p in params])
        if addresses:
            data["addresses"] = first_items(addresses)
        if preference is not None:
            data["preference"] = preference
        if self.first(OPT_DNS_SERVERS) is not None:
            data["option_23_dns_servers"] = self.dns_servers[:16]
        if status:
            data["status"] = first_items([{"code": c, "message": shown(m)}
                                          for c, m in status])
        if self.anomalies:
            data["anomalies"] = first_items([shown(a) for a in self.anomalies])
        return data


def _length_prefixed(value: bytes) -> list[bytes]:
    out = []
    i = 0
    while i + 2 <= len(value):
        n = struct.unpack_from("!H", value, i)[0]
        out.append(value[i + 2 : i + 2 + n])
        i += 2 + n
    return out


def parse_options(buf: bytes, start: int = 0, *, depth: int = 0) -> list[tuple[int, bytes]]:
    out, damage = _options(buf, start, depth=depth)
    if damage is not None:
        raise MalformedPacket(damage[0], offset=damage[1])
    return out


def _options(buf: bytes, start: int = 0, *, depth: int = 0,
             ) -> tuple[list[tuple[int, bytes]], tuple[str, int] | None]:
    """The options up to the end or to one that is cut short, and (reason, offset) of the
    cut. Too deep, too many or a body shorter than its fixed fields raise."""
    if depth > MAX_DEPTH:
        raise MalformedPacket("options nested too deeply")
    out: list[tuple[int, bytes]] = []
    i = start
    if start > len(buf):
        raise MalformedPacket("option body shorter than its fixed fields")
    while i < len(buf):
        if i + 4 > len(buf):
            return out, ("truncated option header", i)
        code, length = struct.unpack_from("!HH", buf, i)
        if i + 4 + length > len(buf):
            return out, (f"option {code} length {length} runs past the end", i)
        out.append((code, buf[i + 4 : i + 4 + length]))
        if len(out) > MAX_OPTIONS:
            raise MalformedPacket("too many options")
        i += 4 + length
    return out, None


def parse(data: bytes) -> Dhcp6Message:
    """Decode one DHCPv6 message. Raises MalformedPacket only."""
    data = wire_bytes(data)
    if len(data) < 4:
        raise MalformedPacket(f"too short for a DHCPv6 header ({len(data)} bytes)")
    msg_type = data[0]
    if msg_type in (RELAY_FORW, RELAY_REPL):
        if len(data) < 34:
            raise MalformedPacket("too short for a relay message header")
        options, damage = _options(data, 34)
        return Dhcp6Message(
            msg_type, 0, options, hop_count=data[1],
            link_address=str(ipaddress.IPv6Address(data[2:18])),
            peer_address=str(ipaddress.IPv6Address(data[18:34])),
            damage=None if damage is None else damage[0],
        )
    xid = int.from_bytes(data[1:4], "big")
    options, damage = _options(data, 4)
    msg = Dhcp6Message(msg_type, xid, options, damage=None if damage is None else damage[0])
    if damage is not None:
        msg.anomalies.append(f"{damage[0]} (at byte {damage[1]}): the options before it "
                             "are used, as iPXE uses them")
    if msg_type == 0 or msg_type > 36:
        msg.anomalies.append(f"unknown message type {msg_type}")
    _note_strings(msg)
    seen = [c for c, _ in msg.options]
    if msg_type in SERVER_MESSAGES and msg_type != RELAY_REPL:
        if seen.count(OPT_SERVERID) != 1:
            msg.anomalies.append(f"{seen.count(OPT_SERVERID)} server identifier options")
    return msg


# Distinct boot file URLs judged per message: a rogue repeating option 59 500 times must
# not make 500 fetches and findings per Advertise. The last one is always among them.
MAX_BOOTFILE_URLS = 8


def _note_strings(msg: Dhcp6Message) -> None:
    """The boot file URLs clients may use (every instance of option 59, cut at the first
    NUL), and anomalies where they read other than what was sent."""
    heads: list[bytes] = []
    for code, value in msg.options:
        if code != OPT_BOOTFILE_URL:
            continue
        if len(value) > MAX_OPTION_VALUE:
            msg.anomalies.append(f"option 59 is {len(value)} bytes: the audit keeps its "
                                 f"first {MAX_OPTION_VALUE}")
        head, tail = cstring(value[:MAX_OPTION_VALUE])
        heads.append(head)
        if any(tail) and len(msg.url_tails) < MAX_BOOTFILE_URLS:
            msg.url_tails.append(hidden_text(tail))
            msg.anomalies.append(
                f"option 59 has {len(tail)} bytes after a NUL: clients stop at the NUL and "
                f"use {shown(safe_text(head), 64)!r}")
    if len(heads) > 1:
        msg.anomalies.append(f"option 59 sent {len(heads)} times: iPXE uses the first, EDK2 "
                             "the last; each is judged")
    distinct = [h for h in dict.fromkeys(heads) if h]
    if len(distinct) > MAX_BOOTFILE_URLS:
        msg.anomalies.append(f"{len(distinct)} distinct boot file URLs: the audit judges "
                             f"the first {MAX_BOOTFILE_URLS - 1} and the last")
        distinct = [h for h in dict.fromkeys([*distinct[:MAX_BOOTFILE_URLS - 1], heads[-1]])
                    if h]
    msg.url_values = distinct


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("!HH", code, len(value)) + value


def duid_ll(mac: bytes) -> bytes:
    return struct.pack("!HH", 3, 1) + mac


def build_solicit(*, mac: bytes, xid: int, arch: Arch, iaid: int, ipxe: bool = False,
                  elapsed: float = 0.0) -> bytes:
    """A Solicit as a UEFI PXE/HTTP client sends it, asking for the boot file URL."""
    vendor = arch.vendor_class.encode()
    opts = [
        _opt(OPT_CLIENTID, duid_ll(mac)),
        _opt(OPT_ELAPSED_TIME, struct.pack("!H", min(int(elapsed * 100), 0xFFFF))),
        _opt(OPT_ORO, struct.pack("!4H", OPT_BOOTFILE_URL, OPT_BOOTFILE_PARAM,
                                  OPT_DNS_SERVERS, OPT_DOMAIN_LIST)),
        _opt(OPT_IA_NA, struct.pack("!III", iaid, 0, 0)),
        _opt(OPT_CLIENT_ARCH, struct.pack("!H", arch.code)),
        _opt(OPT_NII, arch.nii),
        _opt(OPT_VENDOR_CLASS, struct.pack("!IH", PXE_ENTERPRISE, len(vendor)) + vendor),
    ]
    if ipxe:
        opts.append(_opt(OPT_USER_CLASS, struct.pack("!H", 4) + b"iPXE"))
    return bytes([SOLICIT]) + (xid & 0xFFFFFF).to_bytes(3, "big") + b"".join(opts)
