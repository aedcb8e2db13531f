"""The bounded TFTP client against tftpy on loopback, and against servers that misbehave."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from trustboot.audit import tftp

tftpy = pytest.importorskip("tftpy", reason="needs tftpy (pip install .[test])")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tftpy_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    logging.getLogger("tftpy").setLevel(logging.CRITICAL)
    port = _free_port()
    server = tftpy.TftpServer(str(tmp_path))
    thread = threading.Thread(target=server.listen, args=("127.0.0.1", port, 0.5), daemon=True)
    thread.start()
    for _ in range(100):
        if server.sock is not None:
            break
        time.sleep(0.01)
    yield port, tmp_path
    server.stop(now=True)
    thread.join(timeout=5)


def test_fetch_hashes_a_multi_block_file(tftpy_server: tuple[int, Path]) -> None:
    port, root = tftpy_server
    data = bytes(range(256)) * 40  # 10240 bytes: several 1432-byte blocks
    (root / "undionly.kpxe").write_bytes(data)
    result = tftp.fetch("127.0.0.1", "undionly.kpxe", port=port, timeout=5)
    assert result.ok and result.error is None
    assert result.size == len(data) and result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.head == data and result.announced_size == len(data)


def test_fetch_keeps_only_the_head(tftpy_server: tuple[int, Path]) -> None:
    port, root = tftpy_server
    (root / "big").write_bytes(b"x" * 5000)
    result = tftp.fetch("127.0.0.1", "big", port=port, timeout=5, head_limit=100)
    assert result.ok and len(result.head) == 100 and result.size == 5000


def test_fetch_stops_at_max_size(tftpy_server: tuple[int, Path]) -> None:
    port, root = tftpy_server
    (root / "big").write_bytes(b"x" * 5000)
    result = tftp.fetch("127.0.0.1", "big", port=port, timeout=5, max_size=1000)
    assert not result.ok and result.truncated and result.sha256 is None
    assert "exceeds 1000" in (result.error or "")


def test_fetch_missing_file(tftpy_server: tuple[int, Path]) -> None:
    port, _ = tftpy_server
    result = tftp.fetch("127.0.0.1", "nope", port=port, timeout=5)
    assert not result.ok and result.error and "TFTP error 1" in result.error


def test_write_probe_on_a_writable_server(tftpy_server: tuple[int, Path]) -> None:
    port, root = tftpy_server
    result = tftp.probe_write("127.0.0.1", port=port, timeout=5)
    assert result.writable and result.confirmed
    time.sleep(0.2)
    assert (root / result.filename).read_bytes().startswith(b"trustboot audit write probe")


# -- misbehaving servers -----------------------------------------------------------------------


@pytest.fixture
def fake_server() -> Iterator[Callable[[Callable[[socket.socket, bytes, tuple[str, int]], None]],
                                       int]]:
    """Run ``handler(sock, request, client)`` for the first request on a fresh port."""
    socks: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def start(handler: Callable[[socket.socket, bytes, tuple[str, int]], None]) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        socks.append(sock)

        def run() -> None:
            try:
                data, client = sock.recvfrom(2048)
                handler(sock, data, client)
            except OSError:
                pass

        threads.append(threading.Thread(target=run, daemon=True))
        threads[-1].start()
        return int(sock.getsockname()[1])

    yield start
    for s in socks:
        # wakes a handler still waiting in recvfrom (closing alone does not), and its
        # next send fails: no thread outlives the test
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
    for t in threads:
        t.join(5)
    for s in socks:
        s.close()


# the second: a retry interval longer than the timeout does not extend it
@pytest.mark.parametrize(("retry", "bound"), [(0.2, 2.0), (4.0, 1.6)])
def test_silent_server_times_out_in_bounded_time(fake_server, retry: float,  # type: ignore[no-untyped-def]
                                                 bound: float) -> None:
    port = fake_server(lambda sock, data, client: None)
    start = time.monotonic()
    result = tftp.fetch("127.0.0.1", "x", port=port, timeout=1.0, retry=retry)
    assert not result.ok and result.error == "timed out"
    assert not result.deadline_reached  # nothing answered: no transfer was kept open
    assert time.monotonic() - start < bound


def test_garbage_replies_are_recorded(fake_server) -> None:  # type: ignore[no-untyped-def]
    # iPXE ignores the first three (the OACK without a value is an OACK of no options) and
    # aborts its transfer at a DATA packet too short for a block number: so does the audit
    def handler(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
        for junk in (b"\x00", b"\x00\x09zz", b"\x00\x06tsize\x00", b"\x00\x03\x00"):
            sock.sendto(junk, client)
            time.sleep(0.05)

    port = fake_server(handler)
    result = tftp.fetch("127.0.0.1", "x", port=port, timeout=1.0, retry=0.3)
    assert not result.ok and "too short for a block number" in (result.error or "")
    assert len(result.malformed) == 4, result.malformed
    assert any("unknown opcode 9" in m for m in result.malformed)


def test_oversized_block_and_bogus_options(fake_server) -> None:  # type: ignore[no-untyped-def]
    def handler(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
        sock.sendto(tftp.build_data(1, b"x" * 600), client)  # > 512 without negotiation

    port = fake_server(handler)
    result = tftp.fetch("127.0.0.1", "x", port=port, timeout=2)
    assert not result.ok and "blksize 512" in (result.error or "")

    def bad_oack(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
        sock.sendto(b"\x00\x06blksize\x00lots\x00", client)

    port = fake_server(bad_oack)
    result = tftp.fetch("127.0.0.1", "x", port=port, timeout=2)
    assert not result.ok and result.inconsistent is None
    assert "blksize 'lots', which iPXE refuses" in (result.error or ""), result.error


def _plain_transfer(payload: bytes) -> Callable[[socket.socket, bytes, tuple[str, int]], None]:
    """A server that ignores the options (no OACK, no tsize) and sends 512-byte blocks."""
    def handler(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
        for block, at in enumerate(range(0, len(payload) + 1, 512), start=1):
            sock.sendto(tftp.build_data(block, payload[at:at + 512]), client)
            sock.recvfrom(2048)  # the ACK (or the client's error when it stops)
    return handler


@pytest.mark.parametrize(("size", "ok"), [(1024, True), (1025, False), (2048, False)])
def test_max_size_holds_without_an_announced_size(fake_server, size: int, ok: bool) -> None:  # type: ignore[no-untyped-def]
    # exactly max_size is whole; a byte more is cut, though the server never said how big
    port = fake_server(_plain_transfer(b"x" * size))
    result = tftp.fetch("127.0.0.1", "x", port=port, timeout=3, max_size=1024)
    assert result.announced_size is None
    assert (result.ok, result.truncated) == (ok, not ok), result.error
    if not ok:
        assert result.error == "more than 1024 bytes" and result.sha256 is None


@pytest.mark.parametrize("spoof_from", ["127.0.0.2", "127.0.0.1"])
def test_blocks_from_another_host_or_port_are_not_the_file(fake_server, spoof_from: str  # type: ignore[no-untyped-def]
                                                           ) -> None:
    """A second sender on the segment races the server with its own blocks: one from
    another address before the server's first block, one from the server's address but
    another port (transfer ID) in mid-transfer. Neither is taken for the file."""
    spoof = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    spoof.bind((spoof_from, 0))

    def handler(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
        if spoof_from != "127.0.0.1":
            spoof.sendto(tftp.build_data(1, b"evil"), client)
            time.sleep(0.1)
            sock.sendto(tftp.build_data(1, b"good"), client)
        else:
            sock.sendto(tftp.build_data(1, b"a" * 512), client)
            sock.recvfrom(2048)
            spoof.sendto(tftp.build_data(2, b"evil"), client)
            time.sleep(0.1)
            sock.sendto(tftp.build_data(2, b"good"), client)
        sock.recvfrom(2048)

    port = fake_server(handler)
    try:
        result = tftp.fetch("127.0.0.1", "x", port=port, timeout=3, retry=2.0)
    finally:
        spoof.close()
    expected = b"good" if spoof_from != "127.0.0.1" else b"a" * 512 + b"good"
    assert result.ok and result.sha256 == hashlib.sha256(expected).hexdigest(), result.error


def test_huge_announced_size_is_refused_before_transfer(fake_server) -> None:  # type: ignore[no-untyped-def]
    def handler(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
        sock.sendto(b"\x00\x06tsize\x0099999999999\x00blksize\x001428\x00", client)

    port = fake_server(handler)
    result = tftp.fetch("127.0.0.1", "x", port=port, timeout=2, max_size=1024)
    assert result.truncated and result.announced_size == 99999999999


def test_refused_write(fake_server) -> None:  # type: ignore[no-untyped-def]
    def handler(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
        assert tftp.parse(data).opcode == tftp.WRQ
        sock.sendto(tftp.build_error(2, "Access violation"), client)

    port = fake_server(handler)
    result = tftp.probe_write("127.0.0.1", port=port, timeout=2)
    assert not result.writable and "error 2" in result.detail


def test_a_write_request_acked_with_another_block_is_not_writable(fake_server) -> None:  # type: ignore[no-untyped-def]
    port = fake_server(lambda sock, data, client: sock.sendto(tftp.build_ack(7), client))
    result = tftp.probe_write("127.0.0.1", port=port, timeout=2)
    assert not result.writable and result.detail == "unexpected answer ACK"


def test_a_write_is_confirmed_only_by_the_ack_of_its_block(fake_server) -> None:  # type: ignore[no-untyped-def]
    def handler(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
        sock.sendto(tftp.build_ack(0), client)
        sock.recvfrom(2048)  # the data block
        sock.sendto(tftp.build_ack(0), client)  # the request's ACK again, not block 1's

    port = fake_server(handler)
    result = tftp.probe_write("127.0.0.1", port=port, timeout=2, retry=0.3)
    assert result.writable and not result.confirmed


def test_ipv6_server_in_long_form_is_recognised() -> None:
    """Replies come from '::1'; a server written out in full must still be matched."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.bind(("::1", 0))
    except OSError:
        sock.close()
        pytest.skip("no IPv6 loopback")
    sock.settimeout(5)

    def run() -> None:
        try:
            _data, client = sock.recvfrom(2048)
            sock.sendto(tftp.build_data(1, b"hello"), client)
        except OSError:
            pass

    threading.Thread(target=run, daemon=True).start()
    try:
        result = tftp.fetch("0:0:0:0:0:0:0:1", "x", port=int(sock.getsockname()[1]),
                            timeout=2.0, retry=0.5)
    finally:
        sock.close()
    assert result.ok and result.size == 5, result.error


def drip_blocks(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
    """A server trickling full 512-byte blocks (a file with no end) every 0.3 s, whatever
    the client acknowledges: no read ever times out, so only the deadline ends it."""
    for block in range(1, 41):
        sock.sendto(tftp.build_data(block, b"d" * 512), client)
        time.sleep(0.3)


def test_a_drip_fed_transfer_ends_at_its_deadline(fake_server) -> None:  # type: ignore[no-untyped-def]
    port = fake_server(drip_blocks)
    start = time.monotonic()
    result = tftp.fetch("127.0.0.1", "x", port=port, timeout=1.0, retry=0.5)
    elapsed = time.monotonic() - start
    assert elapsed < 1.6, elapsed
    assert not result.ok and result.sha256 is None
    assert result.deadline_reached and result.size >= 512, result
    assert "still transferring after 1 s" in (result.error or ""), result.error


def endless_file(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
    """A well-behaved server of a file that never ends: each ACK gets the next full block
    at once (for 8 s at most), so neither a timeout nor a retry ever ends the transfer."""
    stop = time.monotonic() + 8
    block = 1
    sock.settimeout(1)
    while time.monotonic() < stop:
        sock.sendto(tftp.build_data(block & 0xFFFF, b"e" * 512), client)
        try:
            sock.recvfrom(2048)
        except OSError:
            return
        block += 1


def test_an_endless_file_ends_at_the_deadline_not_the_size_cap(fake_server) -> None:  # type: ignore[no-untyped-def]
    port = fake_server(endless_file)
    start = time.monotonic()
    result = tftp.fetch("127.0.0.1", "x", port=port, timeout=1.0, retry=0.5,
                        max_size=1 << 40)
    assert time.monotonic() - start < 1.6
    assert result.deadline_reached and not result.ok and not result.truncated, result.error


def test_fetch_asks_for_the_name_s_bytes() -> None:
    """A boot file name with a high byte (option 67 b'\\xe9vil.efi') goes on the wire as
    that byte, not as its escaped display text; fetch takes it as wire_text."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    asked: list[bytes] = []

    def serve() -> None:
        try:
            request, client = server.recvfrom(2048)
            asked.append(request)
            server.sendto(tftp.build_data(1, b"evil"), client)
            server.recvfrom(2048)  # the final ACK
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    name = b"\xe9vil.efi"
    result = tftp.fetch("127.0.0.1", tftp.wire_text(name), port=server.getsockname()[1],
                        timeout=5)
    thread.join(5)
    server.close()
    assert result.ok and result.size == 4, result
    assert asked and asked[0].startswith(b"\x00\x01" + name + b"\x00octet\x00"), asked


def test_the_request_is_the_one_ipxe_sends(fake_server) -> None:  # type: ignore[no-untyped-def]
    """A server must not tell the audit from a booting client by its read request. iPXE's
    tftp_send_rrq (src/net/udp/tftp.c) sends "<path>\\0octet\\0blksize\\0<n>\\0tsize\\00\\0"
    with n = TFTP_MAX_BLKSIZE (1432, src/include/ipxe/tftp.h): its downloader gives no
    window, so the cap is what it asks for; "multicast" only for tftm:// URIs."""
    asked: list[bytes] = []

    def handler(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
        asked.append(data)
        sock.sendto(tftp.build_error(1, "File not found"), client)

    fetch_from(fake_server, handler)
    assert asked == [b"\x00\x01undionly.kpxe\x00octet\x00blksize\x001432\x00tsize\x000\x00"]


def test_source_ports_are_drawn_as_ipxe_draws_them() -> None:
    """iPXE's tcpip_bind (src/net/tcpip.c) takes a random port in 1025-65535; a client whose
    ports all fall in Linux's ephemeral range (32768-60999) is not iPXE. Twenty draws all
    inside it happen with probability below 1e-7."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    ports: list[int] = []

    def serve() -> None:
        for _ in range(20):
            try:
                _, client = server.recvfrom(2048)
            except OSError:
                return
            ports.append(client[1])
            server.sendto(tftp.build_error(1, "File not found"), client)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    for _ in range(20):
        tftp.fetch("127.0.0.1", "x", port=server.getsockname()[1], timeout=2)
    thread.join(5)
    server.close()
    assert len(ports) == 20 and all(1025 <= p <= 65535 for p in ports), ports
    assert any(not 32768 <= p <= 60999 for p in ports), ports


# -- hostile transfers: the audit vouches only for the bytes iPXE would assemble ---------------
# iPXE's TFTP client writes each DATA block at block x blksize (a later copy of a block
# replaces the earlier one), takes blocks ahead of the next one, sizes the file from the
# OACK's tsize and finishes only when every block up to that size is in. A transfer whose
# result could differ between iPXE and the audit's in-order hash is never "ok".

Handler = Callable[[socket.socket, bytes, tuple[str, int]], None]
RELEASED = bytes(range(256)) * 4 + b"released tail"  # 1037 bytes: two full blocks and a tail
EVIL = b"E" * 512


def oack(*options: tuple[str, str]) -> bytes:
    return struct.pack("!H", tftp.OACK) + b"".join(
        name.encode() + b"\x00" + value.encode() + b"\x00" for name, value in options)


def blocks(payload: bytes, blksize: int = 512, first: int = 1) -> list[bytes]:
    """``payload`` as DATA packets, a trailing empty block when it fills the last one."""
    return [tftp.build_data(first + i, payload[at:at + blksize])
            for i, at in enumerate(range(0, len(payload) + 1, blksize))]


def lockstep(packets: list[bytes]) -> list[bytes | None]:
    """Each packet followed by a wait for the client's answer (its ACK)."""
    return [step for packet in packets for step in (packet, None)]


def script(steps: list[bytes | None], received: list[bytes] | None = None) -> Handler:
    """A server that sends each packet of ``steps`` in turn and, where a step is None, waits
    for the client's next datagram (kept in ``received``)."""
    def handler(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
        for step in steps:
            if step is None:
                got, _ = sock.recvfrom(2048)
                if received is not None:
                    received.append(got)
            else:
                sock.sendto(step, client)
    return handler


def fetch_from(fake_server: Callable[[Handler], int], handler: Handler, **kwargs: Any
               ) -> tftp.FetchResult:
    port = fake_server(handler)
    return tftp.fetch("127.0.0.1", "undionly.kpxe", port=port, **{
        "timeout": 3.0, "retry": 2.0, **kwargs})


def assert_matches(result: tftp.FetchResult, payload: bytes) -> None:
    assert result.ok and result.inconsistent is None, result
    assert result.sha256 == hashlib.sha256(payload).hexdigest() and result.size == len(payload)


def assert_never_a_match(result: tftp.FetchResult, kind: str) -> None:
    assert not result.ok and result.sha256 is None, result
    assert result.inconsistent == kind, result


@pytest.mark.parametrize("again", [1, 2], ids=["last-block", "older-block"])
def test_a_block_sent_again_with_other_content_is_never_a_match(fake_server, again: int  # type: ignore[no-untyped-def]
                                                                ) -> None:
    """Finding 1: block N as released, then block N again with other bytes. iPXE keeps the
    later copy (it writes at the block's offset), so a client boots those bytes."""
    good = blocks(RELEASED)
    evil = tftp.build_data(again, EVIL)
    steps = [*lockstep(good[:2]), evil, None, *lockstep(good[2:])]
    result = fetch_from(fake_server, script(steps))
    assert_never_a_match(result, "conflicting-block")
    assert f"block {again} twice" in (result.error or "") and "127.0.0.1" in (result.error or "")


def test_blocks_sent_again_unchanged_still_match(fake_server) -> None:  # type: ignore[no-untyped-def]
    """A retransmission (our ACK was lost, or the Sorcerer's Apprentice) repeats a block
    byte for byte: normal, the file still matches, and each copy is acknowledged."""
    good = blocks(RELEASED)
    steps = [*lockstep(good[:2]), good[1], None, good[0], None, *lockstep(good[2:])]
    received: list[bytes] = []
    result = fetch_from(fake_server, script(steps, received))
    assert_matches(result, RELEASED)
    for _ in range(200):  # the server's thread may still be reading the last ACK
        if len(received) >= 5:
            break
        time.sleep(0.01)
    # iPXE acknowledges every block with the first one it still lacks
    assert received == [tftp.build_ack(n) for n in (1, 2, 2, 2, 3)]


def test_a_block_ahead_of_the_next_one_is_never_a_match(fake_server) -> None:  # type: ignore[no-untyped-def]
    """Block 3 before block 2: iPXE stores it at its offset and finishes once block 2 is in,
    with bytes (block 3's) the in-order hash never saw."""
    steps: list[bytes | None] = [tftp.build_data(1, b"a" * 512), None,
                                 tftp.build_data(3, b"evil"), tftp.build_data(2, b"good"), None]
    result = fetch_from(fake_server, script(steps))
    assert_never_a_match(result, "out-of-order")
    assert "block 3" in (result.error or "")


def test_a_short_block_before_the_announced_size_is_never_a_match(fake_server) -> None:  # type: ignore[no-untyped-def]
    """Finding 2: tsize 1200, then 512 + 114 bytes. iPXE does not stop at the short block:
    it waits for block 3 (at offset 1024) and boots 1200 bytes with a hole."""
    payload = RELEASED[:626]
    steps = [oack(("blksize", "512"), ("tsize", "1200")), None, *lockstep(blocks(payload)),
             tftp.build_data(3, EVIL[:176]), None]
    result = fetch_from(fake_server, script(steps))
    assert_never_a_match(result, "short-block")
    assert result.announced_size == 1200 and result.size == 626
    assert "1200" in (result.error or "") and "block 2" in (result.error or "")


@pytest.mark.parametrize(("tsize", "payload"), [(600, RELEASED[:712]), (1200, RELEASED[:1124])],
                         ids=["data-beyond-tsize", "ends-before-tsize"])
def test_a_file_that_is_not_its_announced_size_is_never_a_match(fake_server, tsize: int,  # type: ignore[no-untyped-def]
                                                                 payload: bytes) -> None:
    """Data past tsize (iPXE grows the file to take it), or a last block that ends short of
    tsize (iPXE's file keeps tsize bytes, the rest never sent): either way the server's
    two statements disagree, and the hash cannot be trusted to be what iPXE holds."""
    steps = [oack(("blksize", "512"), ("tsize", str(tsize))), None,
             *lockstep(blocks(payload))]
    result = fetch_from(fake_server, script(steps))
    assert_never_a_match(result, "size-mismatch")
    assert result.announced_size == tsize


@pytest.mark.parametrize("payload", [RELEASED, RELEASED[:1024], RELEASED[:1]],
                         ids=["short-last-block", "exact-multiple", "one-byte"])
def test_a_normal_oack_transfer_matches(fake_server, payload: bytes) -> None:  # type: ignore[no-untyped-def]
    """The normal case: OACK with the true tsize, full blocks, a short (maybe empty) last
    one. ACK 0 answers the OACK."""
    received: list[bytes] = []
    steps = [oack(("blksize", "512"), ("tsize", str(len(payload)))), None,
             *lockstep(blocks(payload))]
    result = fetch_from(fake_server, script(steps, received))
    assert_matches(result, payload)
    assert result.announced_size == len(payload) and result.blksize == 512
    assert received[0] == tftp.build_ack(0)


@pytest.mark.parametrize(("value", "blksize"), [
    ("7", 7), ("1", 1), ("65465", 65465), ("4294967808", 512), ("\t+8", 8), ("0012", 12)])
def test_any_blksize_ipxe_accepts_is_followed(fake_server, value: str, blksize: int) -> None:  # type: ignore[no-untyped-def]
    """Finding 3: iPXE takes any number (strtoul, cut to 32 bits: 2**32 + 512 is 512),
    so a server choosing blksize 7 gets the file booted, and the audit must read it too."""
    payload = (RELEASED * 70)[:70000] if blksize > 1000 else RELEASED[:40]
    steps = [oack(("blksize", value), ("tsize", str(len(payload)))), None,
             *lockstep(blocks(payload, blksize))]
    result = fetch_from(fake_server, script(steps))
    assert_matches(result, payload)
    assert result.blksize == blksize


@pytest.mark.parametrize(("options", "expected"), [
    ((("blksize", "0"),), "blksize 0"),
    ((("blksize", "0"), ("tsize", "100")), "blksize 0"),
    ((("blksize", "8 "),), "blksize '8 ', which iPXE refuses"),
    ((("blksize", "0x10"),), "blksize '0x10', which iPXE refuses"),
    ((("tsize", "12abc"),), "tsize '12abc', which iPXE refuses"),
])
def test_option_values_ipxe_refuses_fail_the_fetch(fake_server,  # type: ignore[no-untyped-def]
                                                   options: tuple[tuple[str, str], ...],
                                                   expected: str) -> None:
    """Values with which iPXE's own transfer fails (blksize 0 takes no block; a number with
    anything after it is refused): the fetch fails too, saying so, and is not called
    inconsistent (no client boots anything from such a transfer)."""
    steps = [oack(*options), None, *lockstep(blocks(b"x" * 100, 100))]
    result = fetch_from(fake_server, script(steps), timeout=1.0, retry=0.5)
    assert not result.ok and result.inconsistent is None and not result.deadline_reached
    assert expected in (result.error or ""), result.error


@pytest.mark.parametrize("options", [(), (("tsize", "0"),)], ids=["no-oack", "tsize-0"])
def test_an_empty_file_fails_as_in_ipxe(fake_server, options: tuple[tuple[str, str], ...]  # type: ignore[no-untyped-def]
                                        ) -> None:
    """iPXE's bitmap is sized from a size above 0: an empty file (one empty block) leaves
    it empty, and marking block 1 fails the transfer. No client boots an empty file."""
    steps = ([oack(*options), None] if options else []) + lockstep(blocks(b""))
    result = fetch_from(fake_server, script(steps), timeout=1.0)
    assert not result.ok and result.inconsistent is None and "empty file" in (result.error or "")


def test_an_empty_tsize_is_no_size_as_in_ipxe(fake_server) -> None:  # type: ignore[no-untyped-def]
    """iPXE reads an empty (or blank, or '-0') value as 0, which for tsize means "no size":
    the transfer goes on, so the audit must not give up on it."""
    steps = [oack(("blksize", "512"), ("tsize", "")), None, *lockstep(blocks(RELEASED))]
    result = fetch_from(fake_server, script(steps))
    assert_matches(result, RELEASED)
    assert result.announced_size == 0


def test_a_negative_tsize_is_recorded_and_handled_as_ipxe_reads_it(fake_server) -> None:  # type: ignore[no-untyped-def]
    """tsize -1 is 2**32 - 1 to a 32-bit iPXE and 2**64 - 1 to a 64-bit one: too large
    either way (the size cap, a reached limit), and recorded as malformed."""
    steps = [oack(("blksize", "512"), ("tsize", "-1")), None, *lockstep(blocks(RELEASED))]
    result = fetch_from(fake_server, script(steps), timeout=1.0)
    assert not result.ok and result.truncated and result.announced_size == 2**64 - 1
    assert any("negative" in m and "tsize" in m for m in result.malformed), result.malformed


@pytest.mark.parametrize("value", ["-4294966296", "4294968296"])
def test_a_tsize_that_depends_on_the_client_is_never_a_match(fake_server, value: str) -> None:  # type: ignore[no-untyped-def]
    """iPXE keeps tsize in an unsigned long: these are 1000 bytes to a 32-bit (BIOS) iPXE
    and about 2**64 or 2**32 to a 64-bit (UEFI) one. Which file a client gets depends on
    its platform, so the audit cannot vouch for one hash."""
    steps = [oack(("blksize", "512"), ("tsize", value)), None,
             *lockstep(blocks(RELEASED[:1000]))]
    result = fetch_from(fake_server, script(steps), timeout=1.0)
    assert_never_a_match(result, "ambiguous-tsize")


def test_an_oack_with_trailing_junk_is_read_as_ipxe_reads_it(fake_server) -> None:  # type: ignore[no-untyped-def]
    """iPXE takes the options before junk at the end of an OACK (some servers send it) and
    ignores the rest; the audit must not ignore the whole OACK and then refuse blocks of
    the size it announced."""
    steps = [oack(("blksize", "1000"), ("tsize", str(len(RELEASED)))) + b"junk", None,
             *lockstep(blocks(RELEASED, 1000))]
    result = fetch_from(fake_server, script(steps))
    assert_matches(result, RELEASED)
    assert any("OACK" in m for m in result.malformed), result.malformed


def test_the_multicast_option_is_never_a_match(fake_server) -> None:  # type: ignore[no-untyped-def]
    """iPXE acts on a multicast option it never asked for (it may stop acknowledging and
    take blocks from a group the audit does not hear)."""
    steps = [oack(("blksize", "512"), ("multicast", ",,0")), None, *lockstep(blocks(RELEASED))]
    result = fetch_from(fake_server, script(steps))
    assert_never_a_match(result, "multicast")


@pytest.mark.parametrize(("late", "kind"), [
    (oack(("blksize", "8")), "options-changed"),
    (oack(("tsize", "5000")), "options-changed"),
    (oack(("blksize", "512")), None),
], ids=["blksize", "tsize", "same"])
def test_options_changed_mid_transfer_are_never_a_match(fake_server, late: bytes,  # type: ignore[no-untyped-def]
                                                        kind: str | None) -> None:
    """iPXE applies an OACK whenever it comes: one after block 1 changes the offsets of
    later blocks (blksize) or the size it waits for (tsize). One that changes nothing is
    harmless."""
    good = blocks(RELEASED)
    steps = [good[0], None, late, None, *lockstep(good[1:])]
    result = fetch_from(fake_server, script(steps))
    if kind is None:
        assert_matches(result, RELEASED)
    else:
        assert_never_a_match(result, kind)


def test_a_second_oack_with_other_options_is_never_a_match(fake_server) -> None:  # type: ignore[no-untyped-def]
    steps = [oack(("blksize", "8"), ("tsize", "1000")), None,
             oack(("blksize", "1428"), ("tsize", "1000")), None, *lockstep(blocks(RELEASED))]
    result = fetch_from(fake_server, script(steps))
    assert_never_a_match(result, "options-changed")


def test_data_block_0_fails_as_in_ipxe(fake_server) -> None:  # type: ignore[no-untyped-def]
    """iPXE aborts a transfer whose first block is numbered 0."""
    steps = [tftp.build_data(0, EVIL), tftp.build_data(1, b"good"), None]
    result = fetch_from(fake_server, script(steps), timeout=1.0)
    assert not result.ok and "block 0" in (result.error or "")


@pytest.mark.parametrize("packet", [oack(("blksize", "512")), tftp.build_ack(0), b"\x00\x09zz"],
                         ids=["oack", "ack", "junk"])
def test_a_server_that_never_sends_data_reaches_the_deadline(fake_server, packet: bytes  # type: ignore[no-untyped-def]
                                                             ) -> None:
    """Finding 4: a server repeating an OACK (or any packet but DATA) every 0.1 s keeps the
    transfer open: that is the deadline (a reached limit), not a plain timeout."""
    def handler(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
        for _ in range(40):
            sock.sendto(packet, client)
            time.sleep(0.1)

    start = time.monotonic()
    result = fetch_from(fake_server, handler, timeout=1.0, retry=0.5)
    assert time.monotonic() - start < 1.6
    assert not result.ok and result.deadline_reached and result.size == 0, result
    assert "kept the transfer" in (result.error or "") and "127.0.0.1" in (result.error or "")


def test_junk_and_strays_do_not_end_the_fetch(fake_server) -> None:  # type: ignore[no-untyped-def]
    """iPXE ignores packets of unknown types and from other senders however many come: a
    burst of them before the file must not make the audit give up (and report a file a
    client boots as merely unfetched)."""
    stray = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stray.bind(("127.0.0.2", 0))

    def handler(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
        for i in range(30):
            sock.sendto(b"\x00\x09junk%d" % i, client)
        for _ in range(11):  # in bursts the client's socket buffer holds
            for _ in range(100):
                stray.sendto(tftp.build_data(1, b"stray"), client)
            time.sleep(0.02)
        script(lockstep(blocks(RELEASED)))(sock, data, client)

    try:
        result = fetch_from(fake_server, handler)
    finally:
        stray.close()
    assert_matches(result, RELEASED)
    assert len(result.malformed) <= 21 and "not kept" in result.malformed[-1], result.malformed


def test_block_numbers_wrap_after_65535(fake_server) -> None:  # type: ignore[no-untyped-def]
    """More than 65535 blocks (blksize 1): block numbers wrap to 0 and the file matches."""
    payload = bytes(range(256)) * 257  # 65792 bytes
    steps = [oack(("blksize", "1"), ("tsize", str(len(payload)))), None,
             *lockstep(blocks(payload, 1))]
    result = fetch_from(fake_server, script(steps), timeout=30.0)
    assert_matches(result, payload)


def test_datagrams_from_another_port_of_the_server_are_not_answered(  # type: ignore[no-untyped-def]
        fake_server) -> None:
    """iPXE drops a datagram of another transfer ID silently. The audit answered each with
    an ERROR 5, so a flood spoofed from the server's address was reflected one for one
    (and the audit told apart from a client by it)."""
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.settimeout(0.5)

    def handler(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
        sock.sendto(tftp.build_data(1, RELEASED[:512]), client)  # fixes the TID
        for _ in range(5):
            other.sendto(tftp.build_data(2, b"stray"), client)
        script([None, *lockstep(blocks(RELEASED))[2:]])(sock, data, client)

    try:
        result = fetch_from(fake_server, handler)
        answers = []
        with contextlib.suppress(TimeoutError):
            while True:
                answers.append(other.recvfrom(2048)[0])
    finally:
        other.close()
    assert_matches(result, RELEASED)
    assert answers == []
