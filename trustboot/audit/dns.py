"""How a booting client finds a boot URL's host: literal addresses as iPXE reads them, and
names through the DNS servers its DHCP offer gave (DHCPv4 option 6, DHCPv6 option 23).

Never through this host's resolver: a rogue on the audited segment must not make the
auditor send queries for names it chooses to the auditor's own (management, corporate)
DNS, and what the host's resolver answers is not what a client on the segment is told.

The codec (``build_query``, ``parse_response``) does no I/O and raises nothing but
MalformedPacket for what a server sends. ``lookup`` sends one question from the audited
interface only, with a random id and source port, takes an answer only from the server it
asked with its question echoed, and ends by the caller's deadline.
"""

from __future__ import annotations

import ipaddress
import secrets
import select
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from trustboot.audit.dhcp4 import safe_text
from trustboot.audit.errors import MalformedPacket, wire_bytes
from trustboot.audit.netif import device_name

PORT = 53
TYPE_A, TYPE_CNAME, TYPE_AAAA = 1, 5, 28
TYPE_NAMES = {TYPE_A: "A", TYPE_CNAME: "CNAME", TYPE_AAAA: "AAAA"}
CLASS_IN = 1
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
          5: "REFUSED"}
MAX_NAME = 255  # octets of a name on the wire (RFC 1035 3.1)
MAX_LABEL = 63
MAX_POINTERS = 16  # compression pointers followed while reading one name
MAX_CNAMES = 8  # CNAME records followed from the question's name, within one answer
MAX_SERVERS = 3  # offered DNS servers asked, in the offer's order
MAX_ANSWER = 4096  # bytes read of one datagram (EDNS is never offered: 512 is the norm)
HEAD_HEX = 96  # bytes of a malformed answer kept as evidence
RETRY = 1.0  # seconds before the question is sent again (the same id and port)
MAX_SENDS = 4
MAX_IGNORED = 256  # stray datagrams read per question before it is given up


# -- literal hosts: no DNS at all --------------------------------------------------------------


_SPACE = " \f\n\r\t\v"


def _ipxe_number(text: str, width: int) -> int | None:
    """One dotted part as iPXE's strtoul(..., 0) reads it, at ``width`` bits; None when no
    character was taken (iPXE then refuses the part)."""
    i = 0
    while i < len(text) and text[i] in _SPACE:
        i += 1
    negate = False
    if text[i:i + 1] in ("-", "+"):
        negate = text[i] == "-"
        i += 1
    base = 10
    if text[i:i + 1] == "0":
        i += 1
        base = 8
        if text[i:i + 1] in ("x", "X"):
            i += 1
            base = 16
    value = 0
    while i < len(text):
        ch = text[i]
        digit = int(ch, 36) if ch.isascii() and ch.isalnum() else 99
        if digit >= base:
            break
        value = value * base + digit
        i += 1
    if i != len(text) or i == 0:
        return None  # a stray character: iPXE stops at it and the separator check fails
    mask = (1 << width) - 1
    return (-value if negate else value) & mask


def ipxe_ipv4(host: str) -> list[str]:
    """The IPv4 addresses iPXE's numeric resolver reads ``host`` as: four dot-separated
    parts, each decimal, octal (0...) or hex (0x...), sign and leading space allowed, each at
    most 255 after wrapping at the width of C's unsigned long. A 32-bit (BIOS) and a 64-bit
    (UEFI) build can wrap a huge part differently: every reading is returned. Empty when
    iPXE would look ``host`` up as a name (``127.1``, ``2130706433`` included)."""
    parts = host.split(".")
    if len(parts) != 4 or any(not p for p in parts) or len(host) > 256:
        return []
    found: list[str] = []
    for width in (32, 64):
        values = [_ipxe_number(p, width) for p in parts]
        if all(v is not None and v <= 0xFF for v in values):
            text = ".".join(str(v) for v in values)
            if text not in found:
                found.append(text)
    return found


def literal_addresses(host: str) -> list[str] | None:
    """The addresses a URL host stands for without any lookup (iPXE's numeric resolver),
    or None for a name. ``host`` is the URL's host (brackets removed, %-escapes still in:
    iPXE decodes them before reading the host). IPv6 is read as Python reads it, which
    also takes the embedded-IPv4 forms (``::ffff:127.0.0.1``) iPXE would look up: being
    wrong that way only refuses more."""
    decoded = unquote_to_bytes(host).decode("latin-1")
    if ":" in decoded:
        try:
            return [str(ipaddress.IPv6Address(decoded.split("%", 1)[0]))]
        except ValueError:
            return None
    return ipxe_ipv4(decoded) or None


def c_library_ipv4(host: str) -> str | None:
    """What the C library's inet_aton (other boot loaders, Linux tools) reads ``host`` as,
    when iPXE would take it for a name (``127.1``, ``0x7f.1``, ``2130706433``); no lookup."""
    try:
        return socket.inet_ntoa(socket.inet_aton(unquote_to_bytes(host).decode("latin-1")))
    except (OSError, ValueError):
        return None


# -- the codec ---------------------------------------------------------------------------------


def encode_name(name: str) -> bytes:
    """``name`` in wire form (labels, root label last); ValueError when no client could ask
    for it (an empty label, a label over 63 octets, a name over 255). Bytes are sent as
    the URL carried them (latin-1 keeps each byte), as iPXE does: no IDNA."""
    try:
        raw = unquote_to_bytes(name).decode("latin-1").encode("latin-1")
    except UnicodeError:
        raise ValueError("not a name a client could look up") from None
    if raw.endswith(b"."):
        raw = raw[:-1]
    labels = raw.split(b".")
    if not raw or any(not 0 < len(label) <= MAX_LABEL for label in labels):
        raise ValueError("not a name a client could look up (an empty or over-long label)")
    wire = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    if len(wire) > MAX_NAME:
        raise ValueError("not a name a client could look up (longer than 255 octets)")
    return wire


def build_query(qid: int, name: bytes, qtype: int) -> bytes:
    """A standard query (recursion desired) for ``name`` (wire form) of ``qtype``."""
    return (qid.to_bytes(2, "big") + b"\x01\x00" + b"\x00\x01\x00\x00\x00\x00\x00\x00"
            + name + qtype.to_bytes(2, "big") + CLASS_IN.to_bytes(2, "big"))


def read_name(data: bytes, offset: int) -> tuple[bytes, int]:
    """The name at ``offset`` (labels joined by dots, lower case for comparison) and the
    offset after it. Each compression pointer must point before the one that led to it, and
    a name follows at most MAX_POINTERS of them: no loop, however the message is built."""
    labels: list[bytes] = []
    end: int | None = None
    length = 1
    limit = offset  # a pointer must point before this
    pos = offset
    pointers = 0
    while True:
        if pos >= len(data):
            raise MalformedPacket("name runs past the end", offset=pos)
        size = data[pos]
        if size & 0xC0 == 0xC0:
            if pos + 2 > len(data):
                raise MalformedPacket("compression pointer cut short", offset=pos)
            target = int.from_bytes(data[pos:pos + 2], "big") & 0x3FFF
            pointers += 1
            if pointers > MAX_POINTERS:
                raise MalformedPacket("too many compression pointers", offset=pos)
            if target >= limit:
                raise MalformedPacket("compression pointer does not point backwards",
                                      offset=pos)
            if end is None:
                end = pos + 2
            limit = target
            pos = target
            continue
        if size & 0xC0:
            raise MalformedPacket("reserved label type", offset=pos)
        if size == 0:
            break
        length += size + 1
        if length > MAX_NAME or pos + 1 + size > len(data):
            raise MalformedPacket("name longer than 255 octets or past the end", offset=pos)
        labels.append(data[pos + 1:pos + 1 + size])
        pos += 1 + size
    return b".".join(labels).lower(), end if end is not None else pos + 1


@dataclass
class Reply:
    """What one answer says about the question's name."""

    rcode: int
    addresses: list[str] = field(default_factory=list)
    cnames: list[str] = field(default_factory=list)  # the chain followed, as text
    problem: str | None = None  # why the answer gives no address although NOERROR

    @property
    def rcode_name(self) -> str:
        return RCODES.get(self.rcode, f"rcode {self.rcode}")


def parse_response(data: object, *, qid: int, name: bytes, qtype: int) -> Reply | None:
    """The answer to question (``qid``, ``name`` in wire form, ``qtype``) in ``data``; None
    when ``data`` answers no such question (another id, not a response, the question not
    echoed): a client would ignore it. MalformedPacket when it cannot be read, or is
    truncated (TC): a client that does not retry over TCP has no answer either."""
    data = wire_bytes(data)
    if len(data) < 12:
        raise MalformedPacket("shorter than a DNS header")
    if int.from_bytes(data[0:2], "big") != qid or not data[2] & 0x80:
        return None
    qd, an = int.from_bytes(data[4:6], "big"), int.from_bytes(data[6:8], "big")
    if qd != 1:
        return None
    asked, pos = read_name(data, 12)
    if pos + 4 > len(data):
        raise MalformedPacket("question cut short", offset=pos)
    wanted = read_name(name, 0)[0]
    if (asked != wanted or int.from_bytes(data[pos:pos + 2], "big") != qtype
            or int.from_bytes(data[pos + 2:pos + 4], "big") != CLASS_IN):
        return None
    pos += 4
    if data[2] & 0x02:
        raise MalformedPacket("truncated answer (TC bit set)")
    reply = Reply(data[3] & 0x0F)
    records: list[tuple[bytes, int, bytes]] = []  # owner, type, rdata (names decoded)
    for _ in range(an):
        owner, pos = read_name(data, pos)
        if pos + 10 > len(data):
            raise MalformedPacket("resource record cut short", offset=pos)
        rtype = int.from_bytes(data[pos:pos + 2], "big")
        rclass = int.from_bytes(data[pos + 2:pos + 4], "big")
        size = int.from_bytes(data[pos + 8:pos + 10], "big")
        start, pos = pos + 10, pos + 10 + size
        if pos > len(data):
            raise MalformedPacket("resource record data runs past the end", offset=start)
        if rclass != CLASS_IN:
            continue
        rdata = data[start:pos]
        if rtype in (TYPE_A, TYPE_AAAA) and len(rdata) != (4 if rtype == TYPE_A else 16):
            raise MalformedPacket(f"{TYPE_NAMES[rtype]} record of {len(rdata)} bytes",
                                  offset=start)
        if rtype == TYPE_CNAME:
            target, after = read_name(data, start)
            if after != pos:
                raise MalformedPacket("CNAME data and its name differ in length",
                                      offset=start)
            rdata = target
        records.append((owner, rtype, rdata))
    if reply.rcode != 0:
        return reply
    current = wanted
    seen = {current}
    while True:
        found = [r for o, t, r in records if o == current and t == qtype]
        if found:
            reply.addresses = list(dict.fromkeys(str(ipaddress.ip_address(r)) for r in found))
            return reply
        alias = next((r for o, t, r in records if o == current and t == TYPE_CNAME), None)
        if alias is None:
            reply.problem = (f"no {TYPE_NAMES.get(qtype, qtype)} record" if not reply.cnames
                             else f"the CNAME chain ends at {safe_text(current)} without "
                             "an address in the answer")
            return reply
        if alias in seen:
            reply.problem = "the answer's CNAME records loop"
            return reply
        if len(reply.cnames) >= MAX_CNAMES:
            reply.problem = f"a CNAME chain longer than {MAX_CNAMES}"
            return reply
        seen.add(alias)
        reply.cnames.append(safe_text(alias))
        current = alias


# -- asking the offered servers ----------------------------------------------------------------


@dataclass(frozen=True)
class Nameservers:
    """The DNS servers one offer gave, and which of its options gave them."""

    servers: tuple[str, ...]
    family: int  # 4: a DHCPv4 client, asks for A; 6: a DHCPv6 client, asks for AAAA
    option: str  # "DHCPv4 option 6", "DHCPv6 option 23"

    @property
    def qtype(self) -> int:
        return TYPE_AAAA if self.family == 6 else TYPE_A


@dataclass
class Lookup:
    """One question to one offered server, and what became of it (report evidence)."""

    server: str
    name: str  # as asked, escaped for display
    qtype: str
    rcode: str | None = None
    addresses: list[str] = field(default_factory=list)
    cnames: list[str] = field(default_factory=list)
    error: str | None = None
    sends: int = 0
    ignored: int = 0  # datagrams that were not the answer: other sender, id or question
    malformed: str | None = None  # the reason, when the answer could not be read
    malformed_head: str = ""  # its first bytes, hex
    malformed_length: int = 0
    elapsed: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {"server": self.server, "name": self.name, "type": self.qtype,
                "rcode": self.rcode, "addresses": self.addresses, "cnames": self.cnames,
                "error": self.error, "sends": self.sends, "ignored": self.ignored,
                "malformed": self.malformed, "elapsed_s": round(self.elapsed, 3)}


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.split("%", 1)[0]) == ipaddress.ip_address(b)
    except ValueError:
        return False


def bind_as_ipxe(sock: socket.socket, host: str) -> None:
    """A random source port in 1025-65535, as iPXE's tcpip_bind picks (src/net/tcpip.c),
    not one from this host's ephemeral range (32768-60999 on Linux), which would tell a
    server the audit apart over a few requests (and a resolver should pick one at random
    anyway)."""
    for _ in range(8):
        try:
            sock.bind((host, 1025 + secrets.randbelow(65536 - 1025)))
            return
        except OSError:  # taken: another try, then whatever the kernel gives
            continue
    sock.bind((host, 0))


def _socket(server: str, *, device: str | None, source: str | None) -> socket.socket:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if device:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device_name(device))
        bind_as_ipxe(sock, (source or "") if family == socket.AF_INET else "::")
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def lookup(server: str, name: str, qtype: int, *, device: str | None, source: str | None,
           deadline: float, port: int = PORT) -> Lookup:
    """Ask ``server`` for ``name``'s ``qtype`` records from ``device`` (and ``source``, the
    interface's IPv4 address), until an answer or ``deadline`` (monotonic)."""
    start = time.monotonic()
    result = Lookup(server, safe_text(name.encode("latin-1", "replace")),
                    TYPE_NAMES.get(qtype, str(qtype)))
    try:
        wire = encode_name(name)
    except ValueError as exc:
        result.error = str(exc)
        return result
    qid = secrets.randbits(16)
    query = build_query(qid, wire, qtype)
    try:
        dest = _destination(server, port, device)  # (the interface may be gone by now)
        sock = _socket(server, device=device, source=source)
    except OSError as exc:
        result.error = f"cannot send from the audited interface: {exc.strerror or exc}"
        return result
    try:
        _exchange(sock, result, query, qid=qid, wire=wire, qtype=qtype, deadline=deadline,
                  dest=dest)
    finally:
        sock.close()
        result.elapsed = time.monotonic() - start
    return result


def is_ipv6_link_local(server: str) -> bool:
    """Whether ``server`` is an IPv6 link-local address (fe80::/10; not IPv4-mapped)."""
    try:
        address = ipaddress.IPv6Address(server.split("%", 1)[0])
    except ValueError:
        return False
    # checked, not left to ipaddress: ::ffff:169.254.x.x (a cloud metadata range) is not
    return address.ipv4_mapped is None and address.is_link_local


def _destination(server: str, port: int, device: str | None) -> tuple[str, int] | tuple[
        str, int, int, int]:
    """Where to send: a link-local server is reached on the audited interface (its scope),
    as a client reaches it on the interface it boots from."""
    if device and is_ipv6_link_local(server):
        return (server.split("%", 1)[0], port, 0, socket.if_nametoindex(device))
    return (server, port)


def _exchange(sock: socket.socket, result: Lookup, query: bytes, *, qid: int, wire: bytes,
              qtype: int, deadline: float, dest: tuple[str, int] | tuple[str, int, int, int]
              ) -> None:
    server, port = result.server, dest[1]
    next_send = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= deadline:
            result.error = "no answer before the deadline"
            return
        if now >= next_send and result.sends < MAX_SENDS:
            try:
                sock.sendto(query, dest)
            except OSError as exc:
                result.error = f"cannot reach it: {exc.strerror or exc}"
                return
            result.sends += 1
            next_send = now + RETRY * result.sends
        wake = min(deadline, next_send) if result.sends < MAX_SENDS else deadline
        readable, _, _ = select.select([sock], [], [], max(0.0, wake - time.monotonic()))
        if not readable:
            continue
        try:
            data, sender = sock.recvfrom(MAX_ANSWER)
        except BlockingIOError:
            continue
        except OSError as exc:  # an ICMP error queued for this socket
            result.error = f"cannot reach it: {exc.strerror or exc}"
            return
        if not _same_address(sender[0], server) or sender[1] != port:
            result.ignored += 1
        else:
            try:
                reply = parse_response(data, qid=qid, name=wire, qtype=qtype)
            except MalformedPacket as exc:
                result.malformed = exc.reason
                result.malformed_head = data[:HEAD_HEX].hex()
                result.malformed_length = len(data)
                result.error = f"malformed answer: {exc.reason}"
                return
            if reply is not None:
                result.rcode = reply.rcode_name
                result.cnames = reply.cnames
                result.addresses = reply.addresses
                if reply.rcode != 0:
                    result.error = reply.rcode_name
                elif reply.problem is not None:
                    result.error = reply.problem
                return
            result.ignored += 1
        if result.ignored >= MAX_IGNORED:
            result.error = f"{result.ignored} datagrams that were not the answer"
            return


def resolve(name: str, nameservers: Nameservers, *, device: str | None, source: str | None,
            deadline: float, port: int = PORT) -> list[Lookup]:
    """Ask the offered servers in turn (at most MAX_SERVERS), each with an equal share of
    the time left, until one answers with addresses or says the name does not exist."""
    done: list[Lookup] = []
    servers = nameservers.servers[:MAX_SERVERS]
    for i, server in enumerate(servers):
        share = (deadline - time.monotonic()) / (len(servers) - i)
        asked = lookup(server, name, nameservers.qtype, device=device, source=source,
                       deadline=time.monotonic() + max(0.0, share), port=port)
        done.append(asked)
        if asked.addresses or asked.rcode == "NXDOMAIN":
            break
    return done


__all__ = ["Lookup", "Nameservers", "Reply", "build_query", "c_library_ipv4", "encode_name",
           "ipxe_ipv4", "literal_addresses", "lookup", "parse_response", "read_name",
           "resolve"]
