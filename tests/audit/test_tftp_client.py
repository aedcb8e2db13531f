"""The bounded TFTP client against tftpy on loopback, and against servers that misbehave."""

from __future__ import annotations

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
    data = bytes(range(256)) * 40  # 10240 bytes: several 1428-byte blocks
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

        threading.Thread(target=run, daemon=True).start()
        return int(sock.getsockname()[1])

    yield start
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
    def handler(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
        for junk in (b"\x00", b"\x00\x09zz", b"\x00\x03\x00", b"\x00\x06tsize\x00"):
            sock.sendto(junk, client)

    port = fake_server(handler)
    result = tftp.fetch("127.0.0.1", "x", port=port, timeout=1.0, retry=0.3)
    assert not result.ok
    assert len(result.malformed) == 4
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
    assert result.error == "server sent a non-numeric option value"


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


def test_a_block_out_of_order_is_not_the_next_one(fake_server) -> None:  # type: ignore[no-untyped-def]
    def handler(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
        sock.sendto(tftp.build_data(1, b"a" * 512), client)
        sock.recvfrom(2048)
        sock.sendto(tftp.build_data(3, b"evil"), client)  # skips block 2
        time.sleep(0.1)
        sock.sendto(tftp.build_data(2, b"good"), client)
        sock.recvfrom(2048)

    port = fake_server(handler)
    result = tftp.fetch("127.0.0.1", "x", port=port, timeout=3, retry=2.0)
    assert result.ok and result.sha256 == hashlib.sha256(b"a" * 512 + b"good").hexdigest()


def test_options_acknowledged_mid_transfer_change_nothing(fake_server) -> None:  # type: ignore[no-untyped-def]
    # an OACK is the answer to the request only: one after block 1 does not shrink blksize
    def handler(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
        sock.sendto(tftp.build_data(1, b"a" * 512), client)
        sock.recvfrom(2048)
        sock.sendto(b"\x00\x06blksize\x008\x00", client)
        time.sleep(0.1)
        sock.sendto(tftp.build_data(2, b"b" * 100), client)
        sock.recvfrom(2048)

    port = fake_server(handler)
    result = tftp.fetch("127.0.0.1", "x", port=port, timeout=3, retry=2.0)
    assert result.ok and result.size == 612, result.error


@pytest.mark.parametrize("blksize", [7, 65465])
def test_a_blksize_outside_rfc_2348_is_refused(fake_server, blksize: int) -> None:  # type: ignore[no-untyped-def]
    def handler(sock: socket.socket, data: bytes, client: tuple[str, int]) -> None:
        sock.sendto(b"\x00\x06blksize\x00%d\x00" % blksize, client)

    port = fake_server(handler)
    result = tftp.fetch("127.0.0.1", "x", port=port, timeout=2)
    assert result.error == f"server chose an invalid blksize {blksize}"


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
