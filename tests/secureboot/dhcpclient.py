"""A one-shot DHCPDISCOVER as UEFI HTTP Boot firmware or iPXE sends it; prints the offer.

Run inside a client namespace: ``python dhcpclient.py IFACE MAC ARCH VENDOR_CLASS [USER_CLASS]``.
Prints JSON {"file": ..., "vendor_class": ...} of the first OFFER, or {} after 10 s.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time


def discover(mac: bytes, xid: int, arch: int, vendor: str, user: str | None) -> bytes:
    head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, b"\0" * 4,
                       b"\0" * 4, b"\0" * 4, b"\0" * 4, mac + b"\0" * 10, b"", b"")
    opts = b"\x63\x82\x53\x63" + bytes([53, 1, 1])
    opts += bytes([93, 2]) + struct.pack("!H", arch)
    opts += bytes([60, len(vendor)]) + vendor.encode()
    if user:
        opts += bytes([77, len(user)]) + user.encode() + bytes([175, 2, 0x13, 0x01])
    opts += bytes([55, 4, 1, 3, 60, 67, 255])
    return head + opts


def parse(reply: bytes, xid: int) -> dict[str, str] | None:
    if len(reply) < 240 or reply[0] != 2 or struct.unpack_from("!I", reply, 4)[0] != xid:
        return None
    out = {"file": reply[108:236].split(b"\0")[0].decode(errors="replace")}
    pos = 240
    while pos < len(reply) and reply[pos] != 255:
        if reply[pos] == 0:
            pos += 1
            continue
        code, n = reply[pos], reply[pos + 1]
        value = reply[pos + 2:pos + 2 + n]
        if code == 60:
            out["vendor_class"] = value.decode(errors="replace")
        if code == 67:
            out["file"] = value.split(b"\0")[0].decode(errors="replace")
        pos += 2 + n
    return out


def main() -> None:
    iface, mac, arch, vendor = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    user = sys.argv[5] if len(sys.argv) > 5 else None
    xid = int.from_bytes(os.urandom(4), "big")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    s.bind(("", 68))
    s.settimeout(1.0)
    packet = discover(bytes.fromhex(mac.replace(":", "")), xid, arch, vendor, user)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        s.sendto(packet, ("255.255.255.255", 67))
        try:
            while True:
                data, _ = s.recvfrom(4096)
                offer = parse(data, xid)
                if offer is not None:
                    print(json.dumps(offer))
                    return
        except TimeoutError:
            continue
    print("{}")


if __name__ == "__main__":
    main()
