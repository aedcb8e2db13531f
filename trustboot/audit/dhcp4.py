"""DHCPv4 / BOOTP codec: PXE client messages out, anything at all in. No I/O.

``parse`` raises :class:`MalformedPacket` and nothing else, whatever the bytes. Recoverable
oddities (a missing END option, a truncated trailing pad, a sname/file that is not text) are
kept in ``Dhcp4Packet.anomalies`` so the audit can show them as evidence.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

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


def _cstring(raw: bytes) -> tuple[str, bool]:
    """A NUL-terminated BOOTP string field; the flag says bytes after the NUL were not zero."""
    head, sep, tail = raw.partition(b"\x00")
    return safe_text(head), bool(sep) and any(tail)


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
    sname: str  # "" when empty or overloaded
    file: str
    options: dict[int, bytes] = field(default_factory=dict)
    option_order: list[int] = field(default_factory=list)
    overload: int = 0
    anomalies: list[str] = field(default_factory=list)
    # Options sent more than once: the first instance, which is all iPXE reads (RFC 3396
    # clients concatenate them, as ``options`` does).
    first_instances: dict[int, bytes] = field(default_factory=dict)
    # An overloaded (option 52) file / sname field read as text, as iPXE reads it.
    ipxe_file: str = ""
    ipxe_sname: str = ""

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

    def text_option(self, code: int) -> str | None:
        value = self.options.get(code)
        if value is None:
            return None
        return safe_text(value.rstrip(b"\x00"))

    def ipxe_text_option(self, code: int) -> str | None:
        """Option ``code`` as iPXE reads it, when that differs from the concatenation:
        only its first instance."""
        value = self.first_instances.get(code)
        return None if value is None else safe_text(value.rstrip(b"\x00"))

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
        subs, _order, _anoms = parse_option_block(value, 0, len(value), where="option 43",
                                                  lenient=True)
        return subs

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
                data[key] = (
                    self.server_id if code == OPT_SERVER_ID else self.text_option(code)
                )
        if self.ipxe_file:
            data["file_read_as_text_by_ipxe"] = self.ipxe_file
        if self.ipxe_sname:
            data["sname_read_as_text_by_ipxe"] = self.ipxe_sname
        for code in (OPT_TFTP_SERVER, OPT_BOOTFILE):
            if code in self.first_instances:  # split: what iPXE reads of it
                data[f"option_{code}_first_instance"] = self.ipxe_text_option(code)
        if OPT_VENDOR in self.options:
            data["option_43_hex"] = self.options[OPT_VENDOR][:255].hex()
        if self.overload:
            data["option_52_overload"] = self.overload
        if self.anomalies:
            data["anomalies"] = list(self.anomalies)
        return data


# The start of the anomaly a truncated option block leaves (see parse_option_block).
TRUNCATED = "truncated: "


def parse_option_block(
    buf: bytes, start: int, end: int, *, where: str = "options", lenient: bool = False,
    first: dict[int, bytes] | None = None,
) -> tuple[dict[int, bytes], list[int], list[str]]:
    """TLV options between start and end; repeated codes are concatenated (RFC 3396).

    An option that runs past the end raises MalformedPacket, or with ``lenient`` ends the
    block as it does in iPXE's dhcpopts.c (the options before it count) and is reported as
    the first anomaly, starting with :data:`TRUNCATED`. ``first`` receives the first
    instance of each repeated code: all iPXE reads (it does not concatenate)."""
    options: dict[int, bytes] = {}
    order: list[int] = []
    anomalies: list[str] = []
    i = start
    saw_end = False
    while i < end:
        code = buf[i]
        if code == OPT_PAD:
            i += 1
            continue
        if code == OPT_END:
            saw_end = True
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
            return options, order, anomalies
        length = buf[i + 1]
        value = buf[i + 2 : i + 2 + length]
        if code in options:
            if first is not None:
                first.setdefault(code, options[code])
            options[code] += value
        else:
            options[code] = value
            order.append(code)
        i += 2 + length
    if not saw_end and where == "options":
        anomalies.append("options field has no END option")
    return options, order, anomalies


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
    if len(data) >= BOOTP_HEADER_LEN + 4 and data[236:240] == MAGIC_COOKIE:
        # Leniently: a reply whose last option is cut short still counts for iPXE (and
        # for a rogue server that appends one broken byte to hide from a strict parser).
        opts, order, anoms = parse_option_block(data, 240, len(data), lenient=True,
                                                first=pkt.first_instances)
        pkt.options, pkt.option_order = opts, order
        anomalies.extend(anoms)
    elif len(data) > BOOTP_HEADER_LEN:
        anomalies.append("no DHCP magic cookie: plain BOOTP or garbage after the header")
    overload_raw = pkt.options.get(OPT_OVERLOAD)
    if overload_raw is not None:
        if len(overload_raw) != 1 or overload_raw[0] not in (1, 2, 3):
            anomalies.append(f"invalid option 52 value {overload_raw.hex()}")
        else:
            pkt.overload = overload_raw[0]
    # RFC 2131 4.1: options, then file, then sname.
    for bit, raw, name in ((1, file_raw, "file"), (2, sname_raw, "sname")):
        if pkt.overload & bit:
            # iPXE ignores option 52 (it reads the field as text): what it holds must not
            # make the whole reply undecodable.
            extra, extra_order, extra_anoms = parse_option_block(
                raw, 0, len(raw), where=f"overloaded {name} field", lenient=True
            )
            anomalies.extend(a for a in extra_anoms if a.startswith(TRUNCATED))
            for code in extra_order:
                if code in pkt.options:
                    pkt.options[code] += extra[code]
                else:
                    pkt.options[code] = extra[code]
                    pkt.option_order.append(code)
    if pkt.overload:
        # iPXE ignores option 52: it reads both fields as text whatever they hold.
        pkt.ipxe_file = _cstring(file_raw)[0] if pkt.overload & 1 else ""
        pkt.ipxe_sname = _cstring(sname_raw)[0] if pkt.overload & 2 else ""
    if not pkt.overload & 1:
        pkt.file, junk = _cstring(file_raw)
        if junk:
            anomalies.append("bytes after the NUL in the file field")
    if not pkt.overload & 2:
        pkt.sname, junk = _cstring(sname_raw)
        if junk:
            anomalies.append("bytes after the NUL in the sname field")
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
    """Option 43 PXE sub-options in readable form (for evidence)."""
    out: dict[str, object] = {}
    for code, value in vendor.items():
        if code == PXE_DISCOVERY_CONTROL and len(value) == 1:
            out["discovery_control"] = value[0]
        elif code == PXE_BOOT_MENU:
            items = []
            i = 0
            while i + 3 <= len(value):
                length = value[i + 2]
                desc = value[i + 3 : i + 3 + length]
                items.append({"type": struct.unpack("!H", value[i : i + 2])[0],
                              "description": safe_text(desc)})
                i += 3 + length
            out["boot_menu"] = items
        elif code == PXE_MENU_PROMPT and value:
            out["menu_prompt"] = {"timeout": value[0], "text": safe_text(value[1:])}
        elif code == PXE_BOOT_ITEM and len(value) == 4:
            out["boot_item"] = {"type": struct.unpack("!H", value[:2])[0],
                                "layer": struct.unpack("!H", value[2:])[0]}
        else:
            out[f"sub_{code}"] = value.hex()
    return out
