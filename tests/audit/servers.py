"""Small servers the audit tests run inside network namespaces (run as a script).

    python servers.py tftp ROOT           writable TFTP (tftpy): the write-probe positive
    python servers.py tftp-endless        TFTP on port 69 whose every file never ends (each
                                          ACK gets the next block at once); ignores writes
    python servers.py tftp-hostile ATTACK RELEASED EVIL
                                          TFTP on port 69 serving every file as ATTACK says:
        duplicate        RELEASED, but block 1 is sent again as EVIL's first block
        short-block      tsize 600 bytes past RELEASED, RELEASED, then EVIL at offset 1024+
        tiny-blksize     EVIL in blocks of 7 bytes (blksize 7, tsize its size)
        oack-flood       an OACK every 0.1 s, never any data
        plain            RELEASED with blksize 512 and its true tsize (a benign server)
    python servers.py https ROOT CERT KEY HTTPS file server on [::]:443 (dual stack)
    python servers.py https-switch FILE N CERT KEY CERT2 KEY2
                                          HTTPS on port 443 answering every GET with FILE;
                                          the first N connections get CERT, later ones CERT2
    python servers.py hostile-dhcp IF     answers every DHCPDISCOVER with malformed replies
    python servers.py rogue IF MODE ARG.. a hostile DHCP responder speaking raw frames:
        flood N          on the first DISCOVER: N junk offers to other clients from random
                         MACs; its own offer (evil.kpxe) to every DISCOVER
        spoof N IP MAC   on the first DISCOVER: N distinct offers spoofing IP/MAC, then its own
        urls URL...      answers each DISCOVER with the next URL as option 67
        urls-dns DNS URL...
                         answers a client's first DISCOVER with one offer per URL, each with
                         DNS (an IPv4 address) as option 6
        files HEX...     answers each DISCOVER with the next name (hex: NUL and high bytes
                         as they are) as option 67
        evasive          answers only DISCOVERs with secs >= 5, from a universally
                         administered MAC, for arch 9 (EFI BC), from source port 6767
        giaddr IP        offers with server identifier IP and giaddr set (a "relay")
        duid6 MAC        answers Solicits with an Advertise whose DUID-LL embeds MAC
        many N LEN       answers the first DISCOVER from N fake servers, option 67 LEN bytes
    python servers.py http                hostile HTTP on port 80: /drip-headers, /drip-body,
                                          /drip-close (no Content-Length),
                                          /hang, /bomb (gzip, gzip), /big, /redirect (C1 + bidi),
                                          /moved (302 to /bomb)
    python servers.py canary PORT LOG     TCP listener on 127.0.0.1 and ::1 logging connections
    python servers.py dns ADDR LOG [ALT]  hostile DNS server on ADDR:53 logging every question
                                          ("IP PORT ID NAME TYPE") to LOG; the first label of
                                          the name says how it answers:
        good             A 192.0.2.1 (AAAA 2001:db8::1)
        cname            CNAME c1.NAME, c1 CNAME c2.NAME, c2 A 192.0.2.1, in one answer
        longcname        a chain of 12 CNAMEs, ending in A 192.0.2.1
        local            A 127.0.0.1        self     A 192.0.2.50 (the auditor's address)
        silent           never answers      nx       NXDOMAIN        servfail  SERVFAIL
        spoof            A 127.0.0.1 from ALT:53, from ADDR:5353 and with another id, then
                         (0.2 s later) the real answer, A 192.0.2.1
        pointers         an answer whose name is a compression pointer to itself
        truncated        the TC bit set
        anything else    A 192.0.2.1

Each prints "ready" on stdout once it is listening, and runs until terminated.
"""

from __future__ import annotations

import fcntl
import functools
import gzip
import http.server
import ipaddress
import logging
import os
import socket
import ssl
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.audit import packets
from trustboot.audit import dhcp4, dhcp6, frames


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


def _endless(client: tuple[str, int]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    block = 1
    try:
        while True:
            sock.sendto(b"\x00\x03" + (block & 0xFFFF).to_bytes(2, "big") + b"e" * 512, client)
            sock.recvfrom(2048)
            block += 1
    except OSError:
        pass
    finally:
        sock.close()


def tftp_endless() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", 69))
    _ready()
    while True:
        data, client = server.recvfrom(2048)
        if data[:2] == b"\x00\x01":  # a read request; writes get no answer at all
            threading.Thread(target=_endless, args=(client,), daemon=True).start()


def _hostile_transfer(attack: str, released: bytes, evil: bytes,
                      client: tuple[str, int]) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)

    def send(packet: bytes, *, ack: bool = True) -> None:
        sock.sendto(packet, client)
        if ack:
            sock.recvfrom(2048)

    def oack(**options: int) -> bytes:
        return b"\x00\x06" + b"".join(f"{k}\x00{v}\x00".encode() for k, v in options.items())

    def data(block: int, payload: bytes) -> bytes:
        return b"\x00\x03" + (block & 0xFFFF).to_bytes(2, "big") + payload

    def lockstep(payload: bytes, blksize: int = 512) -> None:
        for i, at in enumerate(range(0, len(payload) + 1, blksize)):
            send(data(i + 1, payload[at:at + blksize]))

    try:
        if attack == "duplicate":  # iPXE keeps the later copy of block 1
            send(data(1, released[:512]))
            send(data(1, evil[:512]))
            for i, at in enumerate(range(512, len(released) + 1, 512)):
                send(data(i + 2, released[at:at + 512]))
        elif attack == "short-block":  # iPXE waits past the short block for the tsize
            size = len(released) + 600
            send(oack(blksize=512, tsize=size))
            lockstep(released)
            block = len(released) // 512 + 2
            send(data(block, evil[: size - (block - 1) * 512]))
        elif attack == "tiny-blksize":
            send(oack(blksize=7, tsize=len(evil)))
            lockstep(evil, 7)
        elif attack == "oack-flood":
            for _ in range(300):
                send(oack(blksize=512), ack=False)
                time.sleep(0.1)
        else:
            send(oack(blksize=512, tsize=len(released)))
            lockstep(released)
    except OSError:
        pass  # the client stopped (as the audit does at an inconsistent transfer)
    finally:
        sock.close()


def tftp_hostile(attack: str, released_file: str, evil_file: str) -> None:
    released = Path(released_file).read_bytes()
    evil = Path(evil_file).read_bytes()
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", 69))
    _ready()
    while True:
        data, client = server.recvfrom(2048)
        if data[:2] == b"\x00\x01":
            threading.Thread(target=_hostile_transfer, args=(attack, released, evil, client),
                             daemon=True).start()


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


def read_head(conn: socket.socket) -> bytes | None:
    """A request's head (up to its blank line, 64 KiB at most); None if the client closed
    the connection before it ended."""
    request = b""
    while b"\r\n\r\n" not in request and len(request) < 65536:
        got = conn.recv(4096)
        if not got:
            return None
        request += got
    return request


def https_switch(body_file: str, first: str, cert: str, key: str, cert2: str, key2: str
                 ) -> None:
    """A server that shows one certificate to the audit's probe and another to its GET."""
    contexts = []
    for c, k in ((cert, key), (cert2, key2)):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(c, k)
        contexts.append(ctx)
    body = Path(body_file).read_bytes()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 443))
    server.listen(16)
    _ready()
    count = 0
    while True:
        conn, _addr = server.accept()
        count += 1
        ctx = contexts[0] if count <= int(first) else contexts[1]
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(10)
                if read_head(tls) is not None:
                    tls.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                                + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        except OSError:  # the client gave up on the handshake (as it should on CERT2)
            conn.close()


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


# -- scripted rogue DHCP responders (raw frames: any source MAC, IP and port) -----------------


def _own(interface: str) -> tuple[bytes, str]:
    mac = bytes.fromhex(Path(f"/sys/class/net/{interface}/address").read_text().strip()
                        .replace(":", ""))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", interface.encode()[:15]))
    return mac, str(ipaddress.IPv4Address(raw[20:24]))


def _offer(req: dhcp4.Dhcp4Packet, *, server_ip: str, file: bytes, src_mac: bytes,
           src_ip: str, sport: int = 67, giaddr: str | None = None,
           yiaddr: str = "192.0.2.222", dns: str | None = None) -> bytes:
    extra = [(dhcp4.OPT_DNS, ipaddress.IPv4Address(dns).packed)] if dns else []
    reply = bytearray(packets.dhcp_reply(xid=req.xid, chaddr=req.chaddr, yiaddr=yiaddr,
                                         siaddr=server_ip, server_id=server_ip,
                                         options=[(67, file), *extra] if len(file) <= 255
                                         else None,
                                         raw_options=_long_option(67, file, server_ip)
                                         if len(file) > 255 else None))
    if giaddr is not None:
        reply[24:28] = ipaddress.IPv4Address(giaddr).packed
    return packets.offer_frame(bytes(reply), src_mac=src_mac, src_ip=src_ip, sport=sport)


def _long_option(code: int, value: bytes, server_ip: str) -> bytes:
    """Option 53, 54, and a long option split into 255-byte pieces (RFC 3396)."""
    out = packets.opt(dhcp4.OPT_MESSAGE_TYPE, bytes([dhcp4.OFFER]))
    out += packets.opt(dhcp4.OPT_SERVER_ID, ipaddress.IPv4Address(server_ip).packed)
    for i in range(0, len(value), 255):
        out += packets.opt(code, value[i : i + 255])
    return out


def _junk_frames(count: int) -> list[bytes]:
    """Well-formed offers to clients that do not exist, from random MACs (UDP checksum 0)."""
    template = bytearray(packets.offer_frame(packets.dhcp_reply(
        xid=0, chaddr=b"\x02\x99" * 3, file=b"junk.kpxe", server_id="192.0.2.99",
        siaddr="192.0.2.99"), src_mac=b"\x02" * 6, src_ip="192.0.2.99"))
    template[40:42] = b"\0\0"  # no UDP checksum: the xid and MAC can change freely
    out = []
    noise = os.urandom(10 * count)
    for i in range(count):
        frame = bytearray(template)
        frame[6:12] = b"\x02" + noise[10 * i : 10 * i + 5]
        frame[46:50] = noise[10 * i + 5 : 10 * i + 9]
        out.append(bytes(frame))
    return out


def rogue(interface: str, mode: str, *args: str) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sock.bind((interface, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * 1024 * 1024)
    mac, ip = _own(interface)
    junk = _junk_frames(int(args[0])) if mode == "flood" else []
    urls = [a.encode() for a in args] if mode == "urls" else \
        [a.encode() for a in args[1:]] if mode == "urls-dns" else \
        [bytes.fromhex(a) for a in args] if mode == "files" else []
    answered = 0
    last_burst = 0.0
    clients: set[bytes] = set()
    _ready()
    while True:
        data = sock.recv(65536)
        try:
            frame = frames.parse_frame(data)
        except ValueError:
            continue
        if frame is None or frame.src_mac == mac or frame.protocol != frames.IPPROTO_UDP:
            continue
        if frame.family == 6:
            if mode == "fragmented6" and frame.dport == dhcp6.SERVER_PORT:
                msg = dhcp6.parse(frame.payload)
                adv = packets.advertise(xid=msg.xid, client_duid=bytes.fromhex(
                    msg.client_duid or ""), url="https://[2001:db8::66]/evil.efi",
                    server_mac=mac)
                whole = frames.udp6_frame(
                    src_mac=mac, dst_mac=frame.src_mac, src_ip=frames.link_local_from_mac(mac),
                    dst_ip=frame.src_ip, sport=547, dport=546, payload=adv)
                for part in reversed(packets.fragment6(whole, 48, ident=msg.xid)):
                    sock.send(part)
            if mode == "duid6" and frame.dport == dhcp6.SERVER_PORT:
                msg = dhcp6.parse(frame.payload)
                adv = packets.advertise(xid=msg.xid, client_duid=bytes.fromhex(
                    msg.client_duid or ""), url="https://[2001:db8::1]/boot.ipxe",
                    server_mac=bytes.fromhex(args[0].replace(":", "")))
                sock.send(frames.udp6_frame(
                    src_mac=mac, dst_mac=frame.src_mac, src_ip=frames.link_local_from_mac(mac),
                    dst_ip=frame.src_ip, sport=547, dport=546, payload=adv))
            continue
        if frame.dport != 67:
            continue
        try:
            req = dhcp4.parse(frame.payload)
        except ValueError:
            continue
        if req.op != 1 or req.message_type != dhcp4.DISCOVER:
            continue
        if mode == "flood":
            if not answered:
                start = time.monotonic()
                for junk_frame in junk:
                    try:
                        sock.send(junk_frame)
                    except OSError:
                        time.sleep(0.0005)
                print(f"flood of {len(junk)} took {time.monotonic() - start:.2f} s",
                      file=sys.stderr, flush=True)
                time.sleep(0.05)
            # Like any DHCP server, the rogue answers every DISCOVER (the flood only once):
            # an offer the kernel dropped while the socket was full comes again.
            sock.send(_offer(req, server_ip=ip, file=b"evil.kpxe", src_mac=mac, src_ip=ip))
        elif mode == "spoof" and not answered:
            spoof_mac = bytes.fromhex(args[2].replace(":", ""))
            for i in range(int(args[0])):
                sock.send(_offer(req, server_ip=args[1], file=f"f{i}.kpxe".encode(),
                                 src_mac=spoof_mac, src_ip=args[1]))
            time.sleep(0.05)
            sock.send(_offer(req, server_ip=ip, file=b"evil.kpxe", src_mac=mac, src_ip=ip))
        elif mode in ("urls", "files"):
            url = urls[answered % len(urls)]
            sock.send(_offer(req, server_ip=ip, file=url, src_mac=mac, src_ip=ip))
        elif mode == "urls-dns" and req.chaddr not in clients:
            clients.add(req.chaddr)
            for url in urls:
                sock.send(_offer(req, server_ip=ip, file=url, src_mac=mac, src_ip=ip,
                                 dns=args[0]))
        elif mode == "evasive":
            if req.secs >= 5 and not req.chaddr[0] & 0x02 and req.client_arch == 9:
                sock.send(_offer(req, server_ip=ip, file=b"evil.efi", src_mac=mac, src_ip=ip,
                                 sport=6767))
        elif mode == "fragmented":  # the offer in 64-byte IPv4 fragments, last first
            whole = _offer(req, server_ip=ip, file=b"evil.kpxe", src_mac=mac, src_ip=ip)
            for part in reversed(packets.fragment(whole, 64, ident=req.xid & 0xFFFF)):
                sock.send(part)
        elif mode == "giaddr":
            sock.send(_offer(req, server_ip=args[0], file=b"evil.kpxe", src_mac=mac, src_ip=ip,
                             giaddr="192.0.2.254"))
        elif mode == "many" and time.monotonic() - last_burst > 3:  # once per audit
            last_burst = time.monotonic()
            count, length = int(args[0]), int(args[1])
            for i in range(count):
                fake_mac = b"\x02\xfa" + i.to_bytes(4, "big")
                fake_ip = f"192.0.2.{10 + i % 200}"
                name = (f"fake{i}-".encode() + b"A" * length)[:length]
                sock.send(_offer(req, server_ip=fake_ip, file=name, src_mac=fake_mac,
                                 src_ip=fake_ip))
        answered += 1


# -- hostile HTTP --------------------------------------------------------------------------------


def _bomb() -> bytes:
    """256 MiB of zeros, gzipped twice: a few KB on the wire (the audit never decodes it,
    so a bigger bomb would only cost this server start-up time)."""
    inner = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    parts = [inner.compress(chunk) for _ in range(256)]
    parts.append(inner.flush())
    return gzip.compress(b"".join(parts), 9)


def _http_client(conn: socket.socket, bomb: bytes) -> None:
    try:
        conn.settimeout(30)
        request = read_head(conn)
        if request is None:
            return
        path = request.split(b" ", 2)[1].decode(errors="replace") if b" " in request else "/"
        if path.startswith("/drip-headers"):
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100000:
                conn.sendall(bytes([byte]))
                time.sleep(0.5)
        elif path.startswith("/drip-body"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n")
            while True:
                conn.sendall(b"x")
                time.sleep(0.5)
        elif path.startswith("/drip-close"):  # no length: the body ends with the connection
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            while True:
                conn.sendall(b"x")
                time.sleep(0.5)
        elif path.startswith("/hang"):
            time.sleep(3600)
        elif path.startswith("/bomb"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip, gzip\r\n"
                         b"Content-Type: application/octet-stream\r\n"
                         + f"Content-Length: {len(bomb)}\r\n\r\n".encode() + bomb)
        elif path.startswith("/big"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 67108864\r\n\r\n")
            block = b"B" * 65536
            for _ in range(1024):
                conn.sendall(block)
        elif path.startswith("/moved"):  # a well-formed redirect: followed, it would fetch
            conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://192.0.2.2/bomb\r\n"
                         b"Content-Length: 0\r\n\r\n")
        elif path.startswith("/redirect"):
            conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://x/\xc2\x9b31m\xe2\x80\xae"
                         b"evil\x1b[2J\r\nContent-Length: 0\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    except OSError:
        pass
    finally:
        conn.close()


def hostile_http() -> None:
    bomb = _bomb()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 80))
    server.listen(64)
    _ready()
    while True:
        conn, _addr = server.accept()
        threading.Thread(target=_http_client, args=(conn, bomb), daemon=True).start()


def canary(port: str, log: str) -> None:
    """Listens where a fetch must never go (the auditor's own loopback); logs any connection."""
    sockets = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
        s.listen(16)
        sockets.append(s)

    def serve(s: socket.socket) -> None:
        while True:
            conn, addr = s.accept()
            with open(log, "a", encoding="ascii") as fh:
                fh.write(f"{addr[0]}\n")
            conn.close()

    for s in sockets:
        threading.Thread(target=serve, args=(s,), daemon=True).start()
    _ready()
    while True:
        time.sleep(3600)


# -- hostile DNS ---------------------------------------------------------------------------------


def _rr(owner: bytes, rtype: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata


def _dns_answer(query: bytes, qname: bytes, qtype: int, *, records: list[bytes],
                rcode: int = 0, flags: int = 0x8180, qid: int | None = None) -> bytes:
    head = struct.pack("!HHHHHH", int.from_bytes(query[:2], "big") if qid is None else qid,
                       flags | rcode, 1, len(records), 0, 0)
    question = b"".join(bytes([len(label)]) + label for label in qname.split(b".")) + b"\0"
    return head + question + struct.pack("!HH", qtype, 1) + b"".join(records)


def _address_records(owner: bytes, qtype: int, v4: str, v6: str = "2001:db8::1") -> list[bytes]:
    if qtype == 28:
        return [_rr(owner, 28, ipaddress.IPv6Address(v6).packed)]
    return [_rr(owner, 1, ipaddress.IPv4Address(v4).packed)]


def _name(text: bytes) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in text.split(b".")) + b"\0"


def _dns_reply(sock: socket.socket, alt: socket.socket | None, spoof_port: socket.socket,
               query: bytes, peer: tuple[str, int]) -> None:
    from trustboot.audit.dns import read_name

    qname, at = read_name(query, 12)
    qtype = int.from_bytes(query[at:at + 2], "big")
    kind = qname.split(b".", 1)[0]
    ptr = b"\xc0\x0c"

    def send(data: bytes) -> None:
        sock.sendto(data, peer)

    def answer(records: list[bytes], **kw: int) -> bytes:
        return _dns_answer(query, qname, qtype, records=records, **kw)

    if kind == b"silent":
        return
    if kind == b"nx":
        send(answer([], rcode=3))
    elif kind == b"servfail":
        send(answer([], rcode=2))
    elif kind == b"local":
        send(answer(_address_records(ptr, qtype, "127.0.0.1", "::1")))
    elif kind == b"self":
        send(answer(_address_records(ptr, qtype, "192.0.2.50", "2001:db8::32")))
    elif kind in (b"cname", b"longcname"):
        count = 2 if kind == b"cname" else 12
        names = [_name(b"c%d." % i + qname) for i in range(1, count + 1)]
        records = [_rr(ptr, 5, names[0])] + [_rr(names[i], 5, names[i + 1])
                                             for i in range(count - 1)]
        send(answer(records + _address_records(names[-1], qtype, "192.0.2.1")))
    elif kind == b"spoof":
        bad = answer(_address_records(ptr, qtype, "127.0.0.1", "::1"))
        if alt is not None:
            alt.sendto(bad, peer)
        spoof_port.sendto(bad, peer)
        send(answer(_address_records(ptr, qtype, "127.0.0.1", "::1"),
                    qid=int.from_bytes(query[:2], "big") ^ 0x5A5A))
        time.sleep(0.2)
        send(answer(_address_records(ptr, qtype, "192.0.2.1")))
    elif kind == b"pointers":
        head = answer([])
        here = len(head)
        send(head[:6] + b"\x00\x01" + head[8:]
             + _rr(struct.pack("!H", 0xC000 | here), 1, b"\x7f\x00\x00\x01"))
    elif kind == b"truncated":
        send(answer(_address_records(ptr, qtype, "192.0.2.1"), flags=0x8380))
    else:
        send(answer(_address_records(ptr, qtype, "192.0.2.1")))


def hostile_dns(address: str, log: str, alt_address: str | None = None) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((address, 53))
    spoof_port = socket.socket(family, socket.SOCK_DGRAM)
    spoof_port.bind((address, 5353))
    alt = None
    if alt_address:
        alt = socket.socket(family, socket.SOCK_DGRAM)
        alt.bind((alt_address, 53))
    _ready()
    while True:
        query, peer = sock.recvfrom(4096)
        try:
            from trustboot.audit.dns import read_name

            qname, at = read_name(query, 12)
            line = (f"{peer[0]} {peer[1]} {int.from_bytes(query[:2], 'big')} "
                    f"{qname.decode('latin-1')} {int.from_bytes(query[at:at + 2], 'big')}\n")
        except ValueError:
            line = f"{peer[0]} {peer[1]} unreadable\n"
            continue
        finally:
            with open(log, "a", encoding="latin-1") as fh:
                fh.write(line)
        threading.Thread(target=_dns_reply, args=(sock, alt, spoof_port, query, peer),
                         daemon=True).start()


def main(argv: list[str]) -> None:
    mode, *args = argv
    modes: dict[str, Callable[..., None]] = {
        "tftp": tftp, "tftp-endless": tftp_endless, "tftp-hostile": tftp_hostile,
        "https": https, "https-switch": https_switch,
        "hostile-dhcp": hostile_dhcp, "rogue": rogue,
        "http": hostile_http, "canary": canary, "dns": hostile_dns}
    modes[mode](*args)


if __name__ == "__main__":
    main(sys.argv[1:])
