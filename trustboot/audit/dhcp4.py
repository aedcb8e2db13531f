"""DHCPv4 / BOOTP codec: PXE client messages out, anything at all in. No I/O.

``parse`` raises :class:`MalformedPacket` and nothing else, whatever the bytes. Recoverable
oddities (a missing END option, a truncated trailing pad, a sname/file that is not text) are
kept in ``Dhcp4Packet.anomalies`` so the audit can show them as evidence.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any

from trustboot.audit.errors import MalformedPacket, wire_bytes

MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTP_HEADER_LEN = 236
SERVER_PORT = 67
CLIENT_PORT = 68
PXE_PORT = 4011
MAX_PACKET = 65535
NO_ADDRESS = "0.0.0.0"  # noqa: S104 - an address field left empty, not a bind

# Message types (option 53)
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
MESSAGE_TYPE_NAMES = {
    1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK",
    7: "RELEASE", 8: "INFORM",
}

# Options
OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS = 6
OPT_HOSTNAME = 12
OPT_DOMAIN = 15
OPT_VENDOR = 43
OPT_REQUESTED_IP = 50
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAM_REQUEST = 55
OPT_MAX_SIZE = 57
OPT_VENDOR_CLASS = 60
OPT_CLIENT_ID = 61
OPT_TFTP_SERVER = 66
OPT_BOOTFILE = 67
OPT_USER_CLASS = 77
OPT_CLIENT_ARCH = 93
OPT_CLIENT_NII = 94
OPT_CLIENT_UUID = 97
OPT_IPXE_ENCAP = 175
OPT_END = 255

# PXE vendor sub-options inside option 43 (PXE spec 2.1, table 2-1)
PXE_DISCOVERY_CONTROL = 6
PXE_BOOT_SERVERS = 8
PXE_BOOT_MENU = 9
PXE_MENU_PROMPT = 10
PXE_BOOT_ITEM = 71

# iPXE feature indicators in option 175 (src/include/ipxe/dhcp.h)
IPXE_FEATURES = {
    0x10: "pxeext", 0x13: "http", 0x14: "https", 0x15: "tftp", 0x17: "dns",
    0x18: "bzimage", 0x19: "multiboot", 0x21: "pxe", 0x22: "elf", 0x24: "efi", 0x27: "menu",
}


@dataclass(frozen=True)
class Arch:
    """One PXE client flavour: what it puts in options 60, 93 and 94."""

    name: str
    code: int  # option 93 (RFC 4578 / IANA processor architecture types)
    vendor_class: str  # option 60
    nii: bytes  # option 94: type, major, minor
    http: bool = False
    dhcpv6: bool = True  # UEFI clients also boot over DHCPv6

    @property
    def description(self) -> str:
        return ARCH_DESCRIPTIONS.get(self.name, self.name)


def _pxe(name: str, code: int, *, http: bool = False, bios: bool = False,
         dhcpv6: bool = True) -> Arch:
    kind = "HTTPClient" if http else "PXEClient"
    undi = "002001" if bios else "003016"
    return Arch(name, code, f"{kind}:Arch:{code:05d}:UNDI:{undi}",
                b"\x01\x02\x01" if bios else b"\x01\x03\x10", http=http, dhcpv6=dhcpv6)


# Every client architecture (option 93, IANA "Processor Architecture Types") that boots
# x86, x64 or ARM machines from the network today: a rogue may answer only one of them.
ARCHES: dict[str, Arch] = {a.name: a for a in (
    _pxe("bios", 0, bios=True, dhcpv6=False),
    _pxe("efi-ia32", 6),
    _pxe("efi-x64", 7),
    _pxe("efi-bc", 9),  # "EFI byte code": what many x64 firmwares actually send
    _pxe("efi-arm32", 10),
    _pxe("efi-arm64", 11),
    _pxe("efi-ia32-http", 15, http=True),
    _pxe("efi-x64-http", 16, http=True),
    _pxe("efi-arm32-http", 18, http=True),
    _pxe("efi-arm64-http", 19, http=True),
    _pxe("bios-http", 20, http=True, bios=True, dhcpv6=False),
    _pxe("uboot-arm32", 21, dhcpv6=False),
    _pxe("uboot-arm64", 22, dhcpv6=False),
)}
ARCH_DESCRIPTIONS = {
    "bios": "x86 BIOS PXE",
    "efi-ia32": "x86 (32-bit) UEFI PXE",
    "efi-x64": "x86-64 UEFI PXE",
    "efi-bc": "x86-64 UEFI PXE (EFI BC code 9)",
    "efi-arm32": "ARM32 UEFI PXE",
    "efi-arm64": "ARM64 UEFI PXE",
    "efi-ia32-http": "x86 (32-bit) UEFI HTTP boot",
    "efi-x64-http": "x86-64 UEFI HTTP boot",
    "efi-arm32-http": "ARM32 UEFI HTTP boot",
    "efi-arm64-http": "ARM64 UEFI HTTP boot",
    "bios-http": "PC/AT BIOS HTTP boot",
    "uboot-arm32": "ARM32 U-Boot",
    "uboot-arm64": "ARM64 U-Boot",
}
ARCH_BY_CODE = {a.code: a for a in ARCHES.values()}


def _ip(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def safe_text(raw: bytes) -> str:
    """Bytes from the wire as printable text: non-ASCII and control bytes escaped."""
    out = []
    for b in raw:
        if 0x20 <= b < 0x7F and b != 0x5C:
            out.append(chr(b))
        elif b == 0x5C:
            out.append("\\\\")
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out)


def cstring(raw: bytes) -> tuple[bytes, bytes]:
    """``raw`` as a client reads a DHCP string (iPXE's fetch_string_setting, EDK2): the
    bytes before the first NUL, used as they are; and the bytes after it (b"" when none)."""
    head, _sep, tail = raw.partition(b"\x00")
    return head, tail


# The longest option value the audit keeps, RFC 3396 instances joined. A boot file name or
# URL is a few hundred bytes; a rogue repeating option 67 250 times (a 64 KiB fragmented
# datagram) must not cost the audit that much time and memory each time a check reads it.
MAX_OPTION_VALUE = 2048
# Characters of one option's text kept in a packet's evidence (the report cuts at 512:
# this leaves room for the marker, so the count of what was cut survives).
EVIDENCE_TEXT = 480
# DHCPv4 boot parameters whose bytes after a NUL are recorded: what they name is loaded.
BOOT_OPTIONS = {66: "option 66", 67: "option 67"}


# Entries of one list in a packet's evidence (option 43 menu items and sub-options,
# anomalies): a 64 KiB answer must not become tens of KiB of report, once per answer.
EVIDENCE_ITEMS = 16
# Bytes of an undecoded value shown (as hex) in evidence.
EVIDENCE_HEX = 64


def first_items(items: list[Any], limit: int = EVIDENCE_ITEMS) -> list[Any]:
    """The first ``limit`` of ``items`` for evidence, with a marker counting the rest."""
    if len(items) <= limit:
        return items
    return [*items[:limit], f"...[{len(items) - limit} more items]"]


def shown_hex(raw: bytes, limit: int = EVIDENCE_HEX) -> str:
    """``raw`` as hex for evidence, cut after ``limit`` bytes with the report's marker."""
    if len(raw) <= limit:
        return raw.hex()
    return f"{raw[:limit].hex()}...[{len(raw) - limit} more bytes]"


def shown(text: str, limit: int = EVIDENCE_TEXT) -> str:
    """``text`` cut for evidence, with the report's marker."""
    return text if len(text) <= limit else f"{text[:limit]}...[{len(text) - limit} more chars]"


def hidden_text(tail: bytes) -> tuple[int, str]:
    """Bytes after a NUL as evidence: how many, and their text (cut before escaping)."""
    return len(tail), shown(safe_text(tail[: EVIDENCE_TEXT + 1]))


@dataclass
class Dhcp4Packet:
    op: int
    htype: int
    hlen: int
    hops: int
    xid: int
    secs: int
    flags: int
    ciaddr: str
    yiaddr: str
    siaddr: str
    giaddr: str
    chaddr: bytes
    sname: str  # "" when empty or overloaded; for display (escaped)
    file: str
    options: dict[int, bytes] = field(default_factory=dict)
    option_order: list[int] = field(default_factory=list)
    overload: int = 0
    anomalies: list[str] = field(default_factory=list)
    # Options sent more than once (in the options field or an overloaded file/sname field):
    # the first instance, which is all iPXE and EDK2 read (RFC 3396 clients join them all,
    # as ``options`` does).
    first_instances: dict[int, bytes] = field(default_factory=dict)
    # An overloaded (option 52) file / sname field read as text, as iPXE reads it.
    ipxe_file: str = ""
    ipxe_sname: str = ""
    # The same four names as clients use them: the bytes before the first NUL, unescaped.
    file_bytes: bytes = b""
    sname_bytes: bytes = b""
    ipxe_file_bytes: bytes = b""
    ipxe_sname_bytes: bytes = b""
    # Boot parameters with bytes after a NUL (no client reads them): where -> (how many,
    # their text cut for evidence), made once
    after_nul: dict[str, tuple[int, str]] = field(default_factory=dict)
    # value object -> (value, its C string, that string's text): each decoded once
    _decoded: dict[int, tuple[bytes, bytes, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    _vendor: tuple[bytes, dict[int, bytes]] | None = field(
        default=None, init=False, repr=False, compare=False)

    # -- convenience views -------------------------------------------------------------
    @property
    def damage(self) -> str | None:
        """Why a strict parser would have refused the packet (a truncated option block,
        whose options before the cut still count), or None."""
        return next((a[len(TRUNCATED):] for a in self.anomalies if a.startswith(TRUNCATED)),
                    None)

    @property
    def message_type(self) -> int | None:
        value = self.options.get(OPT_MESSAGE_TYPE)
        return value[0] if value and len(value) == 1 else None

    @property
    def message_type_name(self) -> str:
        mt = self.message_type
        if mt is None:
            return "BOOTP" if OPT_MESSAGE_TYPE not in self.options else "invalid"
        return MESSAGE_TYPE_NAMES.get(mt, f"type-{mt}")

    @property
    def server_id(self) -> str | None:
        value = self.options.get(OPT_SERVER_ID)
        return _ip(value) if value is not None and len(value) == 4 else None

    def _string(self, value: bytes | None) -> tuple[bytes, str] | None:
        """(the C string a client reads, its text for display), decoded once per value:
        checks and reports ask for the same option many times per packet."""
        if value is None:
            return None
        hit = self._decoded.get(id(value))
        if hit is None or hit[0] is not value:  # keyed by identity: the value is kept alive
            head = cstring(value)[0]
            hit = self._decoded[id(value)] = (value, head, safe_text(head))
        return hit[1], hit[2]

    def option_string(self, code: int) -> tuple[bytes, str] | None:
        """Option ``code`` as RFC 3396 clients read it (all instances joined, up to the
        first NUL): the bytes they use and their text for display."""
        return self._string(self.options.get(code))

    def ipxe_option_string(self, code: int) -> tuple[bytes, str] | None:
        """Option ``code`` as iPXE and EDK2 read it, when that differs from the joined
        instances: the first instance only."""
        return self._string(self.first_instances.get(code))

    def text_option(self, code: int) -> str | None:
        found = self.option_string(code)
        return None if found is None else found[1]

    def ipxe_text_option(self, code: int) -> str | None:
        found = self.ipxe_option_string(code)
        return None if found is None else found[1]

    @property
    def vendor_class(self) -> str | None:
        return self.text_option(OPT_VENDOR_CLASS)

    @property
    def tftp_server_option(self) -> str | None:
        return self.text_option(OPT_TFTP_SERVER)

    @property
    def bootfile_option(self) -> str | None:
        return self.text_option(OPT_BOOTFILE)

    @property
    def dns_servers(self) -> list[str]:
        """Option 6: the DNS servers a client resolves boot URL host names with, in order
        (a trailing partial address is ignored, as clients read whole addresses)."""
        value = self.options.get(OPT_DNS) or b""
        return list(dict.fromkeys(_ip(value[i:i + 4]) for i in range(0, len(value) - 3, 4)))

    @property
    def client_arch(self) -> int | None:
        value = self.options.get(OPT_CLIENT_ARCH)
        return struct.unpack("!H", value[:2])[0] if value and len(value) >= 2 else None

    @property
    def client_mac(self) -> str:
        return mac_text(self.chaddr)

    @property
    def is_reply(self) -> bool:
        return self.op == 2

    @property
    def user_class(self) -> str | None:
        return self.text_option(OPT_USER_CLASS)

    def pxe_vendor_options(self) -> dict[int, bytes] | None:
        """Option 43 as PXE sub-options (those before any cut short, as iPXE reads an
        encapsulated block), or None when absent."""
        value = self.options.get(OPT_VENDOR)
        if value is None:
            return None
        if self._vendor is None or self._vendor[0] is not value:  # decoded once, as above
            subs, _order, _anoms = parse_option_block(value, 0, len(value),
                                                      where="option 43", lenient=True)
            self._vendor = (value, subs)
        return dict(self._vendor[1])

    def evidence(self) -> dict[str, object]:
        """The fields a finding cites, in a stable JSON-friendly form."""
        data: dict[str, object] = {
            "message_type": self.message_type_name,
            "xid": f"0x{self.xid:08x}",
            "client_mac": self.client_mac,
            "yiaddr": self.yiaddr,
            "siaddr": self.siaddr,
            "giaddr": self.giaddr,
            "sname": self.sname,
            "file": self.file,
            "flags": f"0x{self.flags:04x}",
        }
        named = {
            OPT_SERVER_ID: "option_54_server_id",
            OPT_VENDOR_CLASS: "option_60_vendor_class",
            OPT_TFTP_SERVER: "option_66_tftp_server",
            OPT_BOOTFILE: "option_67_bootfile",
            OPT_USER_CLASS: "option_77_user_class",
        }
        for code, key in named.items():
            if code in self.options:
                text = self.text_option(code)
                data[key] = (self.server_id if code == OPT_SERVER_ID
                             else None if text is None else shown(text))
        if self.ipxe_file:
            data["file_read_as_text_by_ipxe"] = self.ipxe_file
        if self.ipxe_sname:
            data["sname_read_as_text_by_ipxe"] = self.ipxe_sname
        for code in (OPT_TFTP_SERVER, OPT_BOOTFILE):
            first = self.ipxe_text_option(code)
            if first is not None:  # split: what iPXE and EDK2 read of it
                data[f"option_{code}_first_instance"] = shown(first)
        if self.after_nul:
            data["after_nul"] = {where: text for where, (_n, text) in self.after_nul.items()}
        if OPT_DNS in self.options:
            data["option_6_dns_servers"] = self.dns_servers[:16]
        if OPT_VENDOR in self.options:
            data["option_43_hex"] = self.options[OPT_VENDOR][:255].hex()
        if self.overload:
            data["option_52_overload"] = self.overload
        if self.anomalies:
            data["anomalies"] = first_items([shown(a) for a in self.anomalies])
        return data


# The start of the anomaly a truncated option block leaves (see parse_option_block).
TRUNCATED = "truncated: "


@dataclass
class _Joined:
    """Options as RFC 3396 clients read them: the instances of a code joined in order (up
    to MAX_OPTION_VALUE bytes), with the first instance and the count of each code."""

    values: dict[int, bytes] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)
    first: dict[int, bytes] = field(default_factory=dict)  # codes sent more than once
    count: dict[int, int] = field(default_factory=dict)
    dropped: dict[int, int] = field(default_factory=dict)  # bytes past MAX_OPTION_VALUE

    def add(self, code: int, value: bytes) -> None:
        have = self.values.get(code)
        if have is None:
            self.values[code] = value
            self.order.append(code)
            self.count[code] = 1
            return
        if self.count[code] == 1:
            self.first[code] = have
        self.count[code] += 1
        room = MAX_OPTION_VALUE - len(have)
        if room > 0:
            self.values[code] = have + value[:room]
        if len(value) > room:
            self.dropped[code] = self.dropped.get(code, 0) + len(value) - max(room, 0)


def parse_option_block(
    buf: bytes, start: int, end: int, *, where: str = "options", lenient: bool = False,
    joined: _Joined | None = None,
) -> tuple[dict[int, bytes], list[int], list[str]]:
    """TLV options between start and end; repeated codes are concatenated (RFC 3396), up
    to MAX_OPTION_VALUE bytes each.

    An option that runs past the end raises MalformedPacket, or with ``lenient`` ends the
    block as it does in iPXE's dhcpopts.c (the options before it count) and is reported as
    the first anomaly, starting with :data:`TRUNCATED`. ``joined`` carries the options on
    from an earlier block (an overloaded field continues the options field) and keeps the
    first instance of each repeated code: all iPXE and EDK2 read."""
    acc = joined if joined is not None else _Joined()
    anomalies: list[str] = []
    i = start
    while i < end:
        code = buf[i]
        if code == OPT_PAD:
            i += 1
            continue
        if code == OPT_END:
            break
        problem = None
        if i + 1 >= end:
            problem = f"{where}: option {code} has no length byte"
        elif i + 2 + buf[i + 1] > end:
            problem = f"{where}: option {code} length {buf[i + 1]} runs past the end"
        if problem is not None:
            if not lenient:
                raise MalformedPacket(problem, offset=i)
            anomalies.insert(0, TRUNCATED + problem)
            break  # (no END either: the truncation says it all)
        length = buf[i + 1]
        acc.add(code, buf[i + 2 : i + 2 + length])
        i += 2 + length
    else:  # the block ran out without an END option
        if where == "options":
            anomalies.append("options field has no END option")
    return acc.values, acc.order, anomalies


def _header_string(raw: bytes) -> tuple[bytes, str, bytes]:
    """A NUL-terminated BOOTP header field: its C string, that string's text, and the
    bytes after the NUL when any is not zero (b"" otherwise: padding)."""
    head, tail = cstring(raw)
    return head, safe_text(head), tail if any(tail) else b""


def _note_option_strings(pkt: Dhcp4Packet, joined: _Joined) -> None:
    """Anomalies for what a client reads differently from the bytes sent: a boot
    parameter with bytes after a NUL, a boot parameter sent in parts, an option cut."""
    for code, where in BOOT_OPTIONS.items():
        heads: set[bytes] = set()
        for value, which in ((pkt.options.get(code), where),
                             (pkt.first_instances.get(code), f"{where} (first instance)")):
            if value is None:
                continue
            head, tail = cstring(value)
            if any(tail) and head not in heads:  # (the same name twice says nothing new)
                heads.add(head)
                pkt.after_nul.setdefault(which, hidden_text(tail))
                pkt.anomalies.append(
                    f"{which} has {len(tail)} bytes after a NUL: clients stop at the NUL "
                    f"and use {shown(safe_text(head), 64)!r}")
        if joined.count.get(code, 0) > 1:
            pkt.anomalies.append(
                f"{where} sent {joined.count[code]} times: RFC 3396 clients join the parts, "
                "iPXE and EDK2 use the first")
    for code, dropped in joined.dropped.items():
        pkt.anomalies.append(
            f"option {code} is {MAX_OPTION_VALUE + dropped} bytes in {joined.count[code]} "
            f"parts: the audit keeps its first {MAX_OPTION_VALUE}")


def parse(data: bytes) -> Dhcp4Packet:
    """Decode one BOOTP/DHCP message. Raises MalformedPacket only."""
    data = wire_bytes(data)
    if len(data) > MAX_PACKET:
        raise MalformedPacket("longer than any UDP payload")
    if len(data) < BOOTP_HEADER_LEN:
        raise MalformedPacket(f"too short for a BOOTP header ({len(data)} < 236 bytes)")
    op, htype, hlen, hops, xid, secs, flags = struct.unpack_from("!BBBBIHH", data, 0)
    if op not in (1, 2):
        raise MalformedPacket(f"op {op} is neither BOOTREQUEST nor BOOTREPLY")
    anomalies: list[str] = []
    if hlen > 16:
        anomalies.append(f"hlen {hlen} > 16")
    chaddr = data[28 : 28 + min(hlen, 16)]
    sname_raw = data[44:108]
    file_raw = data[108:236]
    pkt = Dhcp4Packet(
        op=op, htype=htype, hlen=hlen, hops=hops, xid=xid, secs=secs, flags=flags,
        ciaddr=_ip(data[12:16]), yiaddr=_ip(data[16:20]), siaddr=_ip(data[20:24]),
        giaddr=_ip(data[24:28]), chaddr=chaddr, sname="", file="", anomalies=anomalies,
    )
    joined = _Joined()
    if len(data) >= BOOTP_HEADER_LEN + 4 and data[236:240] == MAGIC_COOKIE:
        # Leniently: a reply whose last option is cut short still counts for iPXE (and
        # for a rogue server that appends one broken byte to hide from a strict parser).
        _opts, _order, anoms = parse_option_block(data, 240, len(data), lenient=True,
                                                  joined=joined)
        anomalies.extend(anoms)
    elif len(data) > BOOTP_HEADER_LEN:
        anomalies.append("no DHCP magic cookie: plain BOOTP or garbage after the header")
    pkt.options, pkt.option_order = joined.values, joined.order
    overload_raw = pkt.options.get(OPT_OVERLOAD)
    if overload_raw is not None:
        if len(overload_raw) != 1 or overload_raw[0] not in (1, 2, 3):
            anomalies.append(f"invalid option 52 value {overload_raw.hex()}")
        else:
            pkt.overload = overload_raw[0]
    # RFC 2131 4.1: options, then file, then sname (EDK2 looks for an option in that
    # order too, and takes the first instance it finds).
    for bit, raw, name in ((1, file_raw, "file"), (2, sname_raw, "sname")):
        if pkt.overload & bit:
            # iPXE ignores option 52 (it reads the field as text): what it holds must not
            # make the whole reply undecodable.
            _extra, _extra_order, extra_anoms = parse_option_block(
                raw, 0, len(raw), where=f"overloaded {name} field", lenient=True,
                joined=joined)
            anomalies.extend(a for a in extra_anoms if a.startswith(TRUNCATED))
    pkt.first_instances = joined.first
    if pkt.overload:
        # iPXE ignores option 52: it reads both fields as text whatever they hold.
        if pkt.overload & 1:
            pkt.ipxe_file_bytes, pkt.ipxe_file, _tail = _header_string(file_raw)
        if pkt.overload & 2:
            pkt.ipxe_sname_bytes, pkt.ipxe_sname, _tail = _header_string(sname_raw)
    for bit, raw, name in ((1, file_raw, "file"), (2, sname_raw, "sname")):
        if pkt.overload & bit:
            continue
        head, text, tail = _header_string(raw)
        if name == "file":
            pkt.file_bytes, pkt.file = head, text
        else:
            pkt.sname_bytes, pkt.sname = head, text
        if tail:
            pkt.after_nul[f"{name} field"] = hidden_text(tail)
            anomalies.append(f"bytes after the NUL in the {name} field")
    _note_option_strings(pkt, joined)
    mt = pkt.options.get(OPT_MESSAGE_TYPE)
    if mt is not None and len(mt) != 1:
        anomalies.append(f"option 53 has length {len(mt)}")
    sid = pkt.options.get(OPT_SERVER_ID)
    if sid is not None and len(sid) != 4:
        anomalies.append(f"option 54 has length {len(sid)}")
    return pkt


# -- building client messages ---------------------------------------------------------------


def _opt(code: int, value: bytes) -> bytes:
    if len(value) > 255:
        raise ValueError(f"option {code} longer than 255 bytes")
    return bytes([code, len(value)]) + value


PARAMETER_REQUEST_LIST = bytes(
    [OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_DOMAIN, OPT_VENDOR,
     OPT_VENDOR_CLASS, OPT_TFTP_SERVER, OPT_BOOTFILE, 128, 129, 130, 131, 132, 133, 134, 135,
     OPT_IPXE_ENCAP]
)


def ipxe_encap_option() -> bytes:
    """Option 175 as iPXE sends it: one-byte feature flags, each set to 1."""
    return b"".join(bytes([code, 1, 1]) for code in (0x10, 0x13, 0x14, 0x15, 0x17, 0x18, 0x24))


def build_client_message(
    *,
    message_type: int,
    mac: bytes,
    xid: int,
    arch: Arch,
    uuid: bytes,
    ipxe: bool = False,
    broadcast: bool = True,
    secs: int = 4,
    ciaddr: str = NO_ADDRESS,
    extra_options: list[tuple[int, bytes]] | None = None,
) -> bytes:
    """A DHCPDISCOVER/REQUEST that looks like the given PXE (or iPXE) client."""
    if len(mac) != 6:
        raise ValueError("mac must be 6 bytes")
    if len(uuid) != 16:
        raise ValueError("uuid must be 16 bytes")
    header = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        1, 1, 6, 0, xid & 0xFFFFFFFF, min(max(secs, 0), 0xFFFF), 0x8000 if broadcast else 0,
        ipaddress.IPv4Address(ciaddr).packed, b"\0" * 4, b"\0" * 4, b"\0" * 4,
        mac + b"\0" * 10, b"", b"",
    )
    opts = [
        _opt(OPT_MESSAGE_TYPE, bytes([message_type])),
        _opt(OPT_MAX_SIZE, struct.pack("!H", 1464)),
        _opt(OPT_PARAM_REQUEST, PARAMETER_REQUEST_LIST),
        _opt(OPT_CLIENT_ARCH, struct.pack("!H", arch.code)),
        _opt(OPT_CLIENT_NII, arch.nii),
        _opt(OPT_CLIENT_UUID, b"\x00" + uuid),
        _opt(OPT_VENDOR_CLASS, arch.vendor_class.encode()),
    ]
    if ipxe:
        opts.append(_opt(OPT_USER_CLASS, b"iPXE"))
        opts.append(_opt(OPT_IPXE_ENCAP, ipxe_encap_option()))
    for code, value in extra_options or ():
        opts.append(_opt(code, value))
    body = header + MAGIC_COOKIE + b"".join(opts) + bytes([OPT_END])
    if len(body) < 300:  # some relays and servers drop anything shorter than BOOTP's 300
        body += b"\0" * (300 - len(body))
    return body


def build_discover(*, mac: bytes, xid: int, arch: Arch, uuid: bytes, ipxe: bool = False,
                   secs: int = 4, broadcast: bool = True) -> bytes:
    return build_client_message(
        message_type=DISCOVER, mac=mac, xid=xid, arch=arch, uuid=uuid, ipxe=ipxe, secs=secs,
        broadcast=broadcast,
    )


def build_pxe_request(
    *, mac: bytes, xid: int, arch: Arch, uuid: bytes, ciaddr: str, boot_item: bytes | None
) -> bytes:
    """The DHCPREQUEST a PXE client unicasts to a boot server on port 4011."""
    extra: list[tuple[int, bytes]] = []
    if boot_item is not None:
        extra.append((OPT_VENDOR, _opt(PXE_BOOT_ITEM, boot_item) + bytes([OPT_END])))
    return build_client_message(
        message_type=REQUEST, mac=mac, xid=xid, arch=arch, uuid=uuid, broadcast=False,
        ciaddr=ciaddr, extra_options=extra,
    )


def first_boot_item(vendor: dict[int, bytes] | None) -> bytes | None:
    """The boot item (type, layer 0) of the first menu entry in a PXE option 43, if any."""
    if not vendor:
        return None
    menu = vendor.get(PXE_BOOT_MENU)
    if menu and len(menu) >= 3:
        return menu[:2] + b"\x00\x00"
    return None


def describe_pxe_vendor(vendor: dict[int, bytes]) -> dict[str, object]:
    """Option 43 PXE sub-options in readable form (for evidence; the first EVIDENCE_ITEMS
    sub-options and menu items, each text and undecoded value cut)."""
    out: dict[str, object] = {}
    codes = list(vendor)
    if len(codes) > EVIDENCE_ITEMS:
        out["sub_options_omitted"] = len(codes) - EVIDENCE_ITEMS
    for code in codes[:EVIDENCE_ITEMS]:
        value = vendor[code]
        if code == PXE_DISCOVERY_CONTROL and len(value) == 1:
            out["discovery_control"] = value[0]
        elif code == PXE_BOOT_MENU:
            items = []
            i = 0
            while i + 3 <= len(value):
                length = value[i + 2]
                desc = value[i + 3 : i + 3 + length]
                items.append({"type": struct.unpack("!H", value[i : i + 2])[0],
                              "description": shown(safe_text(desc), EVIDENCE_HEX)})
                i += 3 + length
            out["boot_menu"] = first_items(items)
        elif code == PXE_MENU_PROMPT and value:
            out["menu_prompt"] = {"timeout": value[0],
                                  "text": shown(safe_text(value[1:]))}
        elif code == PXE_BOOT_ITEM and len(value) == 4:
            out["boot_item"] = {"type": struct.unpack("!H", value[:2])[0],
                                "layer": struct.unpack("!H", value[2:])[0]}
        else:
            out[f"sub_{code}"] = shown_hex(value)
    return out
