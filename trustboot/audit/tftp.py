"""TFTP (RFC 1350, 2347-2349) packet codec and a small, bounded client for the audit.

``parse`` raises :class:`MalformedPacket` only. The client never keeps more than
``head_limit`` bytes of a file, stops at ``max_size`` bytes, and gives up at its deadline
whatever the server sends; stray or malformed datagrams are counted and recorded, not fatal.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import struct
import time
from dataclasses import dataclass, field

from trustboot.audit.dhcp4 import safe_text
from trustboot.audit.errors import MalformedPacket, wire_bytes

PORT = 69
RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
OPCODE_NAMES = {1: "RRQ", 2: "WRQ", 3: "DATA", 4: "ACK", 5: "ERROR", 6: "OACK"}
DEFAULT_BLKSIZE = 512
REQUEST_BLKSIZE = 1428
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
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
            self.sock.bind(("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))  # noqa: S104
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
                try:
                    self.sock.sendto(build_error(5, "unknown transfer ID"), addr[:2])
                except OSError:
                    pass
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
    """Read ``filename`` from ``server``: hash all of it, keep its first ``head_limit`` bytes."""
    start = time.monotonic()
    result = FetchResult(server=server, filename=filename)
    try:
        xfer = _Transfer(server, device=device, deadline=start + timeout, retry=retry,
                         port=port)
    except OSError as exc:
        result.error = f"cannot open a UDP socket: {exc.strerror or exc}"
        return result
    malformed = _Malformed(result.malformed)
    who = f"server {server} ({filename!r})"
    oacks = others = 0
    digest = hashlib.sha256()
    head = bytearray()
    blksize = DEFAULT_BLKSIZE
    expected = 1
    try:
        xfer.send(build_request(RRQ, filename, {"blksize": str(REQUEST_BLKSIZE), "tsize": "0"}))
        while True:
            pkt = xfer.receive_packet(malformed)
            if pkt is None:
                result.error = "timed out" if not result.malformed else "malformed replies"
                if xfer.tid is not None and time.monotonic() >= xfer.deadline:
                    # the server answered and the transfer never finished: a slow or endless
                    # file, or a server repeating OACKs or other packets to hold the client
                    result.deadline_reached = True
                    result.error = (
                        f"still transferring after {timeout:g} s ({result.size} bytes): "
                        f"{who} kept the transfer open" if result.size else
                        f"{who} kept the transfer open for {timeout:g} s without sending "
                        f"data ({oacks} OACK and {others} other packet(s))")
                break
            if pkt.opcode == ERROR:
                name = ERROR_NAMES.get(pkt.error_code, "error")
                result.error = f"TFTP error {pkt.error_code} ({name}): {pkt.error_message}"
                break
            if pkt.opcode == OACK:
                oacks += 1
            if pkt.opcode == OACK and expected == 1:
                try:
                    blksize = int(pkt.options.get("blksize", DEFAULT_BLKSIZE))
                    tsize = pkt.options.get("tsize")
                    result.announced_size = int(tsize) if tsize is not None else None
                except ValueError:
                    xfer.abort("bad option value")
                    result.error = "server sent a non-numeric option value"
                    break
                if not 8 <= blksize <= 65464:
                    xfer.abort("bad blksize")
                    result.error = f"server chose an invalid blksize {blksize}"
                    break
                if result.announced_size is not None and result.announced_size > max_size:
                    xfer.abort("file too large for the audit")
                    result.truncated = True
                    result.error = f"announced size {result.announced_size} exceeds {max_size}"
                    break
                xfer.send(build_ack(0))
                continue
            if pkt.opcode != DATA:
                others += pkt.opcode != OACK
                continue
            if pkt.block == (expected - 1) & 0xFFFF:
                xfer.send(build_ack(pkt.block))  # duplicate: our ACK was lost
                continue
            if pkt.block != expected & 0xFFFF:
                continue
            if len(pkt.data) > blksize:
                xfer.abort("block larger than negotiated")
                result.error = f"block {pkt.block} has {len(pkt.data)} bytes > blksize {blksize}"
                break
            result.size += len(pkt.data)
            if result.size > max_size:
                xfer.abort("file too large for the audit")
                result.truncated = True
                result.error = f"more than {max_size} bytes"
                break
            digest.update(pkt.data)
            if len(head) < head_limit:
                head += pkt.data[: head_limit - len(head)]
            xfer.send(build_ack(pkt.block))
            if len(pkt.data) < blksize:
                result.ok = True
                result.sha256 = digest.hexdigest()
                break
            expected += 1
    except OSError as exc:
        result.error = f"network error: {exc.strerror or exc}"
    finally:
        xfer.close()
    malformed.close()
    result.head = bytes(head)
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
