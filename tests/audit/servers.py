"""Small servers the audit tests run inside network namespaces (run as a script).

    python servers.py tftp ROOT           writable TFTP (tftpy): the write-probe positive
    python servers.py https ROOT CERT KEY HTTPS file server on [::]:443 (dual stack)
    python servers.py hostile-dhcp IF     answers every DHCPDISCOVER with malformed replies

Each prints "ready" on stdout once it is listening, and runs until terminated.
"""

from __future__ import annotations

import functools
import http.server
import logging
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable


def _ready() -> None:
    print("ready", flush=True)


def tftp(root: str) -> None:
    import tftpy

    logging.disable(logging.CRITICAL)
    server = tftpy.TftpServer(root)
    thread = threading.Thread(target=server.listen, args=("0.0.0.0", 69), daemon=True)
    thread.start()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.settimeout(0.2)
    for _ in range(100):
        probe.sendto(b"\x00\x01ready-check\x00octet\x00", ("127.0.0.1", 69))
        try:
            probe.recvfrom(1024)
            break
        except TimeoutError:
            continue
    _ready()
    thread.join()


class _DualStackServer(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def https(root: str, cert: str, key: str) -> None:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = _DualStackServer(("::", 443), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    _ready()
    server.serve_forever()


def _malformed_replies(request: bytes) -> list[bytes]:
    xid = request[4:8]
    chaddr = request[28:44]
    header = (
        struct.pack("!BBBB", 2, 1, 6, 0) + xid + b"\0\0\x80\0" + b"\0" * 4
        + bytes([192, 0, 2, 77]) + b"\0" * 8 + chaddr + b"\0" * 192
    )
    cookie = b"\x63\x82\x53\x63"
    return [
        # option 67 claims 200 bytes and runs past the end of the packet
        header + cookie + b"\x35\x01\x02" + b"\x43\xc8evil.kpxe",
        # too short for a BOOTP header
        header[:100],
        # option 52 overload points at a file field full of garbage TLVs
        header[:108] + b"\x01\xff" + b"\0" * 126 + cookie + b"\x35\x01\x02\x34\x01\x01\xff",
    ]


def hostile_dhcp(interface: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
    sock.bind(("0.0.0.0", 67))
    _ready()
    while True:
        data, _addr = sock.recvfrom(4096)
        if len(data) < 240 or data[0] != 1:
            continue
        for reply in _malformed_replies(data):
            sock.sendto(reply, ("255.255.255.255", 68))
            time.sleep(0.01)


def main(argv: list[str]) -> None:
    mode, *args = argv
    modes: dict[str, Callable[..., None]] = {
        "tftp": tftp, "https": https, "hostile-dhcp": hostile_dhcp}
    modes[mode](*args)


if __name__ == "__main__":
    main(sys.argv[1:])
