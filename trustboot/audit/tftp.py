"""TFTP (RFC 1350, 2347-2349) packet codec and a small, bounded client for the audit.

``parse`` raises :class:`MalformedPacket` only. The client never keeps more than
``head_limit`` bytes of a file, stops at ``max_size`` bytes, and gives up at its deadline
whatever the server sends; stray or malformed datagrams are counted and recorded, not fatal.
It reads a transfer as iPXE's TFTP client does and vouches for a file (``ok``, a SHA-256)
only when iPXE would assemble exactly the bytes hashed: see ``fetch``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import struct
import time
from dataclasses import dataclass, field

from trustboot.audit import dns
from trustboot.audit.dhcp4 import safe_text
from trustboot.audit.errors import MalformedPacket, wire_bytes
from trustboot.audit.netif import device_name

PORT = 69
RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
OPCODE_NAMES = {1: "RRQ", 2: "WRQ", 3: "DATA", 4: "ACK", 5: "ERROR", 6: "OACK"}
DEFAULT_BLKSIZE = 512
# What iPXE asks for, so a server cannot tell the audit from a booting client by its request:
# tftp_send_rrq (src/net/udp/tftp.c) asks for TFTP_MAX_BLKSIZE (src/include/ipxe/tftp.h),
# then tsize 0, in that order.
REQUEST_BLKSIZE = 1432
IPXE_RRQ_OPTIONS = {"blksize": str(REQUEST_BLKSIZE), "tsize": "0"}  # ordered as iPXE's
MAX_DATAGRAM = 65536
ERROR_NAMES = {
    0: "not defined", 1: "file not found", 2: "access violation", 3: "disk full",
    4: "illegal operation", 5: "unknown transfer ID", 6: "file already exists",
    7: "no such user", 8: "option negotiation refused",
}


@dataclass
class TftpPacket:
    opcode: int
    filename: str = ""
    mode: str = ""
    options: dict[str, str] = field(default_factory=dict)
    block: int = 0
    data: bytes = b""
    error_code: int = 0
    error_message: str = ""


def _split_strings(body: bytes, *, what: str) -> list[bytes]:
    if body and not body.endswith(b"\x00"):
        raise MalformedPacket(f"{what}: strings are not NUL-terminated")
    parts = body.split(b"\x00")[:-1] if body else []
    if len(parts) > 64:
        raise MalformedPacket(f"{what}: too many fields")
    return parts


def parse(data: bytes) -> TftpPacket:
    """Decode one TFTP datagram. Raises MalformedPacket only."""
    data = wire_bytes(data)
    if len(data) < 2:
        raise MalformedPacket("shorter than an opcode")
    opcode = struct.unpack_from("!H", data, 0)[0]
    body = data[2:]
    if opcode in (RRQ, WRQ):
        parts = _split_strings(body, what=OPCODE_NAMES[opcode])
        if len(parts) < 2:
            raise MalformedPacket("request without filename and mode")
        opts = parts[2:]
        if len(opts) % 2:
            raise MalformedPacket("option without a value")
        return TftpPacket(
            opcode, filename=safe_text(parts[0]), mode=safe_text(parts[1]).lower(),
            options={safe_text(opts[i]).lower(): safe_text(opts[i + 1])
                     for i in range(0, len(opts), 2)},
        )
    if opcode == DATA:
        if len(body) < 2:
            raise MalformedPacket("DATA without a block number")
        return TftpPacket(opcode, block=struct.unpack_from("!H", body, 0)[0], data=body[2:])
    if opcode == ACK:
        if len(body) != 2:
            raise MalformedPacket(f"ACK of {len(body)} bytes, expected 2")
        return TftpPacket(opcode, block=struct.unpack_from("!H", body, 0)[0])
    if opcode == ERROR:
        if len(body) < 2:
            raise MalformedPacket("ERROR without a code")
        code = struct.unpack_from("!H", body, 0)[0]
        message = body[2:].split(b"\x00", 1)[0]
        return TftpPacket(opcode, error_code=code, error_message=safe_text(message[:512]))
    if opcode == OACK:
        parts = _split_strings(body, what="OACK")
        if len(parts) % 2:
            raise MalformedPacket("OACK option without a value")
        return TftpPacket(opcode, options={
            safe_text(parts[i]).lower(): safe_text(parts[i + 1])
            for i in range(0, len(parts), 2)
        })
    raise MalformedPacket(f"unknown opcode {opcode}")


def wire_text(name: bytes) -> str:
    """A file name's bytes as text that ``build_request`` turns back into exactly those
    bytes (undecodable ones as surrogates, as os.fsdecode does): for the callers that
    carry names as text."""
    return name.decode("utf-8", "surrogateescape")


def build_request(opcode: int, filename: bytes | str,
                  options: dict[str, str] | None = None) -> bytes:
    """A read or write request for ``filename``: bytes go on the wire as they are (a boot
    file name as the client read it off the DHCP offer); text is UTF-8, with surrogates
    from ``wire_text`` turned back into their bytes."""
    name = filename if isinstance(filename, bytes) else filename.encode("utf-8",
                                                                        "surrogateescape")
    if b"\x00" in name:  # the server would read the rest as the transfer mode
        raise ValueError("a TFTP file name cannot hold a NUL byte: cut it there first")
    out = struct.pack("!H", opcode) + name + b"\x00octet\x00"
    for key, value in (options or {}).items():
        out += key.encode() + b"\x00" + value.encode() + b"\x00"
    return out


def build_ack(block: int) -> bytes:
    return struct.pack("!HH", ACK, block & 0xFFFF)


def build_data(block: int, data: bytes) -> bytes:
    return struct.pack("!HH", DATA, block & 0xFFFF) + data


def build_error(code: int, message: str) -> bytes:
    return struct.pack("!HH", ERROR, code) + message.encode() + b"\x00"


@dataclass
class FetchResult:
    server: str
    filename: str
    ok: bool = False
    size: int = 0
    sha256: str | None = None
    head: bytes = b""
    error: str | None = None
    truncated: bool = False
    announced_size: int | None = None
    elapsed: float = 0.0
    malformed: list[str] = field(default_factory=list)
    deadline_reached: bool = False  # the server kept the transfer open until time ran out
    # why iPXE could hold other bytes than the audit hashed (one of INCONSISTENCIES); then
    # ok is False and sha256 None: such a transfer is never reported as matching anything
    inconsistent: str | None = None
    blksize: int = 512  # the block size iPXE would use (the server's OACK, else 512)

    def to_json(self) -> dict[str, object]:
        return {
            "server": self.server, "filename": self.filename, "ok": self.ok, "size": self.size,
            "deadline_reached": self.deadline_reached,
            "sha256": self.sha256, "error": self.error, "truncated": self.truncated,
            "announced_size": self.announced_size, "elapsed_s": round(self.elapsed, 3),
            "malformed": self.malformed, "inconsistent": self.inconsistent,
            "blksize": self.blksize,
        }


# What a server did that lets iPXE assemble a file other than the one the audit hashed.
INCONSISTENCIES = {
    "conflicting-block": "a block sent again with other content (iPXE keeps the later copy)",
    "out-of-order": "a block ahead of the next one (iPXE stores it at its offset)",
    "short-block": "a short block before the announced size (iPXE waits for more)",
    "size-mismatch": "a file longer or shorter than its announced size",
    "options-changed": "options changed after they were set (iPXE applies every OACK)",
    "multicast": "an unrequested multicast option (iPXE acts on it)",
    "ambiguous-tsize": "a tsize that 32- and 64-bit iPXE read as different sizes",
}


@dataclass
class WriteResult:
    server: str
    filename: str
    writable: bool = False
    confirmed: bool = False  # the server acknowledged the data block too
    detail: str = ""
    malformed: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"server": self.server, "filename": self.filename, "writable": self.writable,
                "confirmed": self.confirmed, "detail": self.detail, "malformed": self.malformed}


def _canonical(host: str) -> str:
    """An IP address in its canonical text form (e.g. '::1'); anything else unchanged."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


MALFORMED_KEPT = 20  # malformed datagrams kept as evidence per transfer (the rest counted)


class _Malformed:
    """The first MALFORMED_KEPT malformed datagrams as evidence, and how many more came."""

    def __init__(self, kept: list[str]) -> None:
        self.kept = kept
        self.dropped = 0

    def add(self, reason: str, data: bytes) -> None:
        if len(self.kept) < MALFORMED_KEPT:
            self.kept.append(f"{reason}: {data[:64].hex()}")
        else:
            self.dropped += 1

    def close(self) -> None:
        if self.dropped:
            self.kept.append(f"{self.dropped} more malformed packet(s) not kept")


class _Transfer:
    """One UDP socket talking to one server transfer ID, with retransmission and a deadline.

    The retransmission timer runs from the last packet sent, as iPXE's does: datagrams that
    make no progress (junk, strays, another TID) neither end the transfer early nor keep it
    alive; only the deadline bounds them."""

    def __init__(self, server: str, *, device: str | None, deadline: float, retry: float,
                 port: int = PORT) -> None:
        self.server = _canonical(server)  # as recvfrom reports it, so replies match
        self.port = port
        self.deadline = deadline
        self.retry = retry
        self.tid: int | None = None
        family = socket.AF_INET6 if ":" in server else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if device:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                                     device_name(device))
            dns.bind_as_ipxe(self.sock, "::" if family == socket.AF_INET6 else "0.0.0.0")  # noqa: S104
        except OSError:
            self.sock.close()  # the caller reports the error; do not leak the descriptor
            raise
        self.last: tuple[bytes, tuple[str, int]] | None = None
        self.resend_at = deadline
        self.retries = 0
        self.stray = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, packet: bytes, port: int | None = None) -> None:
        dest = (self.server, port if port is not None else (self.tid or self.port))
        self.last = (packet, dest)
        self.sock.sendto(packet, dest)
        self.resend_at = time.monotonic() + self.retry
        self.retries = 0

    def abort(self, message: str) -> None:
        if self.tid is not None:
            try:
                self.sock.sendto(build_error(0, message), (self.server, self.tid))
            except OSError:
                pass

    def receive(self, max_retries: int = 4) -> bytes | None:
        """The next datagram from the server's TID; None at the deadline, or once the last
        packet sent went unanswered through ``max_retries`` retransmissions."""
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                return None
            if now >= self.resend_at:
                if self.retries >= max_retries or self.last is None:
                    return None
                self.retries += 1
                self.sock.sendto(*self.last)
                self.resend_at = now + self.retry
                continue
            self.sock.settimeout(max(0.01, min(self.resend_at, self.deadline) - now))
            try:
                data, addr = self.sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:  # e.g. ICMP port unreachable surfaced as ECONNREFUSED
                return None
            if addr[0] != self.server:
                self.stray += 1  # iPXE ignores other senders however many there are
                continue
            if self.tid is None:
                self.tid = addr[1]
            elif addr[1] != self.tid:
                # dropped without an answer, as iPXE does (RFC 1350's ERROR 5 would reflect
                # a spoofed flood one for one, and tell the audit apart from a client)
                self.stray += 1
                continue
            return data

    def receive_packet(self, malformed: _Malformed) -> TftpPacket | None:
        """The next well-formed packet from the server (malformed ones kept as evidence)."""
        while True:
            data = self.receive()
            if data is None:
                return None
            try:
                return parse(data)
            except MalformedPacket as exc:
                malformed.add(exc.reason, data)


# -- reading a transfer as iPXE's TFTP client does ----------------------------------------------
# iPXE (src/net/udp/tftp.c: tftp_rx_oack, tftp_process_blksize/tsize, tftp_rx_data,
# tftp_presize) keeps a block size, a tsize, the largest size it knows of and a bitmap of
# received blocks. Each DATA block goes to offset index x blksize, whatever came before;
# the bitmap is sized from the known size (a file of exactly n blocks has an empty block
# n + 1), and the transfer ends when every block in it is in, not at a short block. The
# audit hashes in order, so it follows iPXE's bookkeeping and stops, calling the transfer
# inconsistent, wherever iPXE's bytes could differ from the in-order stream.

U32 = 1 << 32
U64 = 1 << 64
_SPACES = b" \t\n\v\f\r"  # iPXE's isspace()


def ipxe_strtoul(raw: bytes) -> tuple[int, bool] | None:
    """An option value as iPXE's strtoul(value, &end, 10) reads it, with its check that
    nothing is left over: spaces, one sign, decimal digits (none at all reads as 0). The
    value modulo 2**64 (the negative ones wrapped, as in C), and whether it had a minus;
    None where iPXE refuses the value."""
    text = raw.lstrip(_SPACES)
    negative = text[:1] == b"-"
    if text[:1] in (b"-", b"+"):
        text = text[1:]
    if text and not text.isdigit():  # bytes.isdigit(): ASCII digits only, as iPXE's
        return None
    value = 0
    for at in range(0, len(text), 18):  # in pieces: int() refuses very long digit strings
        piece = text[at:at + 18]
        value = (value * 10 ** len(piece) + int(piece)) % U64
    return (-value % U64 if negative else value), negative


def ipxe_oack_options(body: bytes) -> tuple[list[tuple[bytes, bytes]], str | None]:
    """An OACK's (name, value) pairs as iPXE takes them: pair by pair, stopping without
    error at the first one not NUL-terminated or without a value (some servers pad OACKs
    with junk); and why it stopped early, if it did."""
    pairs: list[tuple[bytes, bytes]] = []
    at = 0
    while at < len(body):
        name_end = body.find(b"\x00", at)
        if name_end < 0:
            return pairs, "option name not NUL-terminated"
        if name_end + 1 == len(body):
            return pairs, f"option {safe_text(body[at:name_end])!r} without a value"
        value_end = body.find(b"\x00", name_end + 1)
        if value_end < 0:
            return pairs, f"option {safe_text(body[at:name_end])!r}: value not NUL-terminated"
        pairs.append((body[at:name_end], body[name_end + 1:value_end]))
        at = value_end + 1
    return pairs, None


class _Stop(Exception):
    """The transfer ends here without a file the audit can vouch for."""

    def __init__(self, message: str, *, inconsistent: str | None = None,
                 truncated: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.inconsistent = inconsistent
        self.truncated = truncated


RECORD_BYTES = 16  # per received block: enough that no server finds two blocks with one record


class _Reader:
    """One transfer followed as iPXE follows it, hashed in order."""

    def __init__(self, result: FetchResult, malformed: _Malformed, *, max_size: int,
                 head_limit: int) -> None:
        self.result = result
        self.malformed = malformed
        self.who = f"server {result.server} ({result.filename!r})"
        self.max_size = max_size
        self.head_limit = head_limit
        self.digest = hashlib.sha256()
        self.head = bytearray()
        self.blksize = DEFAULT_BLKSIZE
        self.tsize = 0  # iPXE's: 0 is "no size announced"
        self.filesize = 0  # the largest size iPXE knows of (tsize, or the data's end)
        self.nblocks = 0  # iPXE's bitmap length
        self.received = 0  # blocks in, in order: iPXE's first gap
        self.options_set = False  # an OACK or a DATA block fixed blksize and tsize
        # A record of each block received, to tell a retransmission from a block sent again
        # with other content: the block itself when it is small, else a keyed BLAKE2b (the
        # key is this transfer's own, so a server cannot aim at a collision). Every block
        # kept is full, so this holds at most as many bytes as were received (<= max_size).
        self.records = bytearray()
        self.key = os.urandom(16)
        self.done = False
        self.oacks = 0
        self.others = 0

    def _record(self, payload: bytes) -> bytes:
        if self.blksize <= RECORD_BYTES:
            return payload
        return hashlib.blake2b(payload, digest_size=RECORD_BYTES, key=self.key).digest()

    def _width(self) -> int:
        return min(self.blksize, RECORD_BYTES)

    def _presize(self, size: int) -> None:
        """iPXE's tftp_presize: the known size only grows, and the bitmap with it."""
        if size <= self.filesize:
            return
        self.filesize = size
        if self.blksize == 0:
            raise _Stop(f"{self.who} chose blksize 0 and a size of {size} bytes: iPXE "
                        "refuses such a transfer, so no client boots it")
        self.nblocks = size // self.blksize + 1

    def oack(self, body: bytes) -> int:
        """Apply an OACK; the block number to acknowledge (iPXE answers every OACK)."""
        self.oacks += 1
        pairs, junk = ipxe_oack_options(body)
        if junk is not None:
            self.malformed.add(f"OACK: {junk} (iPXE ignores the rest)", body)
        blksize, tsize, tsize_seen = self.blksize, self.tsize, False
        negative = False
        for name, value in pairs:
            key = name.lower()  # iPXE: strcasecmp
            if key == b"multicast":
                raise _Stop(f"{self.who} answered with the multicast option "
                            f"{safe_text(value)!r}, which was never asked for: iPXE acts on "
                            "it and may take blocks the audit cannot see",
                            inconsistent="multicast")
            if key not in (b"blksize", b"tsize"):
                continue  # iPXE ignores unknown options
            number = ipxe_strtoul(value)
            if number is None:
                self.malformed.add(
                    f"OACK {key.decode()} {safe_text(value)!r} is not a number", body)
                raise _Stop(f"{self.who} sent {key.decode()} {safe_text(value)!r}, which iPXE "
                            "refuses: a client's transfer fails there")
            if key == b"blksize":
                blksize = number[0] % U32  # an unsigned int in iPXE
            else:
                (tsize, negative), tsize_seen = number, True
        if negative:
            self.malformed.add(f"OACK tsize is negative: iPXE reads {tsize % U32} (32-bit) "
                               f"or {tsize} (64-bit)", body)
        if self.options_set and (blksize, tsize) != (self.blksize, self.tsize):
            raise _Stop(f"{self.who} changed its options (blksize {self.blksize} -> {blksize}, "
                        f"tsize {self.tsize} -> {tsize}) after they were set: iPXE applies "
                        "them, moving or adding blocks the audit has not seen",
                        inconsistent="options-changed")
        if not self.options_set:
            self.options_set = True
            self.blksize = self.result.blksize = blksize
            self.tsize = tsize
            if tsize_seen:
                self.result.announced_size = tsize
            # iPXE keeps tsize in an unsigned long: 32 bits on BIOS builds, 64 on UEFI
            if tsize % U32 > self.max_size:
                raise _Stop(f"announced size {tsize} exceeds {self.max_size}", truncated=True)
            if tsize >= U32:
                raise _Stop(f"{self.who} announced tsize {tsize}: a 32-bit iPXE reads "
                            f"{tsize % U32} bytes, a 64-bit one {tsize}, so what a client "
                            "loads depends on its platform", inconsistent="ambiguous-tsize")
            if tsize:
                self._presize(tsize)
        return self.received & 0xFFFF

    def data(self, packet: bytes) -> int:
        """Take a DATA datagram; the block number to acknowledge."""
        if len(packet) < 4:
            self.malformed.add("DATA without a block number", packet)
            raise _Stop(f"{self.who} sent a DATA packet of {len(packet)} bytes, too short "
                        "for a block number: iPXE aborts the transfer there")
        wire = struct.unpack_from("!H", packet, 2)[0]
        payload = packet[4:]
        # iPXE places a block number within the 65536 blocks after its first gap
        base = (self.received + 1) & ~0xFFFF
        if wire == 0 and base == 0:
            raise _Stop(f"{self.who} sent DATA block 0, which iPXE refuses: a client's "
                        "transfer fails there")
        index = base + wire - 1
        if len(payload) > self.blksize:
            raise _Stop(f"block {wire} has {len(payload)} bytes > blksize {self.blksize}")
        if self.blksize == 0:
            raise _Stop(f"{self.who} chose blksize 0: iPXE cannot take any block, so a "
                        "client's transfer fails")
        self.options_set = True
        width = self._width()
        if index < self.received:
            if self.records[index * width:(index + 1) * width] != self._record(payload) \
                    or len(payload) != self.blksize:
                raise _Stop(f"{self.who} sent block {wire} twice with different content: "
                            "iPXE keeps the later copy, so a client boots bytes other than "
                            "those hashed", inconsistent="conflicting-block")
            return self.received & 0xFFFF  # a retransmission; iPXE acknowledges it again
        if index > self.received:
            raise _Stop(f"{self.who} sent block {wire} while block "
                        f"{(self.received + 1) & 0xFFFF} was due: iPXE stores a block ahead "
                        "at its offset, so a client holds bytes the audit never saw",
                        inconsistent="out-of-order")
        end = self.result.size + len(payload)
        if end > self.max_size:
            raise _Stop(f"more than {self.max_size} bytes", truncated=True)
        if self.tsize and end > self.tsize:
            raise _Stop(f"{self.who} sent block {wire} ending at byte {end}, past the "
                        f"{self.tsize} bytes it announced: iPXE grows the file to take it, "
                        "so the server's size and its data disagree",
                        inconsistent="size-mismatch")
        self._presize(end)
        if index >= self.nblocks:  # only an empty first block: iPXE never sized its bitmap
            raise _Stop(f"{self.who} sent an empty file: iPXE has no block to mark for it and "
                        "fails the transfer, so no client boots it")
        if len(payload) == self.blksize:
            self.records += self._record(payload)
        self.digest.update(payload)
        if len(self.head) < self.head_limit:
            self.head += payload[: self.head_limit - len(self.head)]
        self.result.size = end
        self.received += 1
        if self.received == self.nblocks:  # iPXE's bitmap is full: the transfer is over
            if end != self.filesize:
                raise _Stop(f"{self.who} ended the file after {end} bytes, short of the "
                            f"{self.filesize} it announced: a client's copy is "
                            f"{self.filesize} bytes, the rest never sent",
                            inconsistent="size-mismatch")
            self.done = True
            self.result.ok = True
            self.result.sha256 = self.digest.hexdigest()
        elif len(payload) < self.blksize:
            raise _Stop(f"{self.who} sent a short block {wire} ({len(payload)} bytes, "
                        f"blksize {self.blksize}) after {end} of the {self.filesize} bytes "
                        "it announced: iPXE does not stop there, it waits for more and "
                        "places it after a gap", inconsistent="short-block")
        return self.received & 0xFFFF

    def out_of_time(self, *, answered: bool, at_deadline: bool, timeout: float) -> None:
        """The transfer ended without its last block, by the deadline or by silence."""
        result = self.result
        if answered and at_deadline:
            # the server answered and the transfer never finished: a slow or endless file,
            # or a server repeating OACKs or other packets to hold the client
            result.deadline_reached = True
            result.error = (
                f"still transferring after {timeout:g} s ({result.size} bytes): "
                f"{self.who} kept the transfer open" if result.size else
                f"{self.who} kept the transfer open for {timeout:g} s without sending "
                f"data ({self.oacks} OACK and {self.others} other packet(s))")
        else:
            result.error = "timed out" if not result.malformed else "malformed replies"


def fetch(
    server: str,
    filename: str,
    *,
    device: str | None = None,
    timeout: float = 10.0,
    max_size: int = 64 * 1024 * 1024,
    head_limit: int = 4 * 1024 * 1024,
    retry: float = 1.0,
    port: int = PORT,
) -> FetchResult:
    """Read ``filename`` from ``server``: hash all of it, keep its first ``head_limit`` bytes.

    ``ok`` (and a SHA-256) only when the transfer is one iPXE would finish with exactly the
    bytes hashed; ``inconsistent`` says why not when the server made the two differ."""
    start = time.monotonic()
    result = FetchResult(server=server, filename=filename)
    try:
        xfer = _Transfer(server, device=device, deadline=start + timeout, retry=retry,
                         port=port)
    except OSError as exc:
        result.error = f"cannot open a UDP socket: {exc.strerror or exc}"
        return result
    malformed = _Malformed(result.malformed)
    reader = _Reader(result, malformed, max_size=max_size, head_limit=head_limit)
    try:
        xfer.send(build_request(RRQ, filename, IPXE_RRQ_OPTIONS))
        while not reader.done:
            data = xfer.receive()
            if data is None:
                reader.out_of_time(answered=xfer.tid is not None, timeout=timeout,
                                   at_deadline=time.monotonic() >= xfer.deadline)
                break
            opcode = struct.unpack_from("!H", data)[0] if len(data) >= 2 else None
            if opcode == OACK:
                xfer.send(build_ack(reader.oack(data[2:])))
            elif opcode == DATA:
                xfer.send(build_ack(reader.data(data)))
            else:
                try:
                    pkt = parse(data)
                except MalformedPacket as exc:
                    malformed.add(exc.reason, data)
                    reader.others += 1
                    continue
                if pkt.opcode == ERROR:
                    name = ERROR_NAMES.get(pkt.error_code, "error")
                    result.error = f"TFTP error {pkt.error_code} ({name}): {pkt.error_message}"
                    break
                reader.others += 1  # iPXE ignores a request or an ACK from its server
    except _Stop as stop:
        xfer.abort("transfer refused by the audit")
        result.error = stop.message
        result.inconsistent = stop.inconsistent
        result.truncated = stop.truncated
        result.ok, result.sha256 = False, None
    except OSError as exc:
        result.error = f"network error: {exc.strerror or exc}"
    finally:
        xfer.close()
    malformed.close()
    result.head = bytes(reader.head)
    result.elapsed = time.monotonic() - start
    return result


def probe_write(
    server: str,
    *,
    device: str | None = None,
    timeout: float = 5.0,
    filename: str | None = None,
    retry: float = 1.0,
    port: int = PORT,
) -> WriteResult:
    """Try to upload a small, clearly named file. Only call this when the user asked for it."""
    name = filename or f"trustboot-audit-write-probe-{os.urandom(4).hex()}.txt"
    result = WriteResult(server=server, filename=name)
    payload = (
        b"trustboot audit write probe: this TFTP server accepted an unauthenticated upload.\n"
        b"Delete this file and disable TFTP writes.\n"
    )
    start = time.monotonic()
    try:
        xfer = _Transfer(server, device=device, deadline=start + timeout, retry=retry,
                         port=port)
    except OSError as exc:
        result.detail = f"cannot open a UDP socket: {exc.strerror or exc}"
        return result
    malformed = _Malformed(result.malformed)
    try:
        xfer.send(build_request(WRQ, name))
        pkt = xfer.receive_packet(malformed)
        if pkt is None:
            result.detail = "no answer to the write request"
            return result
        if pkt.opcode == ERROR:
            result.detail = (
                f"refused: TFTP error {pkt.error_code} "
                f"({ERROR_NAMES.get(pkt.error_code, 'error')}): {pkt.error_message}"
            )
            return result
        if (pkt.opcode == ACK and pkt.block == 0) or pkt.opcode == OACK:
            result.writable = True
            result.detail = "the server acknowledged the write request"
            xfer.send(build_data(1, payload))
            ack = xfer.receive_packet(malformed)
            if ack is not None and ack.opcode == ACK and ack.block == 1:
                result.confirmed = True
                result.detail = f"the server stored {len(payload)} bytes as {name!r}"
            return result
        result.detail = f"unexpected answer {OPCODE_NAMES.get(pkt.opcode, pkt.opcode)}"
        return result
    except OSError as exc:
        result.detail = f"network error: {exc.strerror or exc}"
        return result
    finally:
        xfer.close()
        malformed.close()
