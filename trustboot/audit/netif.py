"""Interface names as the kernel takes them: bytes, at most 15 of them.

A Linux interface name is any bytes but '/', ':', whitespace and NUL, not necessarily
UTF-8; argv hands it to Python as a str with surrogate escapes, so it becomes bytes again
with os.fsencode (never str.encode, which fails on those). The kernel cuts a longer name
to IFNAMSIZ - 1 bytes in SO_BINDTODEVICE and ioctls, so binding to another interface than
the one named: such a name is refused, never cut.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct

from trustboot.audit.dhcp4 import safe_text
from trustboot.errors import ConfigError

IFNAMSIZ = 16  # the kernel's buffer: 15 bytes and a NUL
SIOCGIFADDR = 0x8915
_HINT = "list interfaces with 'ip link' and pass one with --interface"


def shown(name: str) -> str:
    """The name for a message: its bytes, non-ASCII and control bytes escaped."""
    return safe_text(os.fsencode(name))


def device_name(name: str) -> bytes:
    """``name`` as the kernel takes it (SO_BINDTODEVICE, an ifreq); ConfigError when no
    interface can have it."""
    raw = os.fsencode(name)
    if not raw or b"\0" in raw:
        raise ConfigError(f"no network interface can be named '{shown(name)}'", hint=_HINT)
    if len(raw) >= IFNAMSIZ:
        raise ConfigError(
            f"no network interface named '{shown(name)}': it is {len(raw)} bytes long, and "
            f"Linux interface names are at most {IFNAMSIZ - 1}", hint=_HINT)
    return raw


def interface_index(name: str) -> int:
    """The index of the interface named ``name``; ConfigError naming it when none is."""
    device_name(name)  # refused before the kernel would cut it
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise ConfigError(f"no network interface named '{shown(name)}'", hint=_HINT) from None


def interface_ipv4(name: str) -> str | None:
    """The interface's IPv4 address (None without one, or without such an interface)."""
    request = struct.pack("256s", device_name(name))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, request)
        except OSError:
            return None
    return str(ipaddress.IPv4Address(res[20:24]))
