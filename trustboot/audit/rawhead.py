"""A boot file's HTTP response head as iPXE reads it, for when httpx refuses it.

A hostile server's redirect can carry a Location that strict parsers reject (a bare CR, an
ESC, a NUL): httpx raises a protocol error and the target is lost, while iPXE reads the line
up to its LF and follows it. ``HeadBackend`` keeps the first bytes each connection reads
(the head), and ``ipxe_status_location`` reads them as iPXE's httpcore.c and linebuf.c do,
so the target is reported as evidence. No terminal output here: callers ``clean`` it.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

import httpcore

from trustboot.publish.deadline import DeadlineBackend

HEAD_KEPT = 16 * 1024  # bytes kept of what one fetch reads: the head, not the body
_SPACES = b" \t\n\v\f\r"  # iPXE's isspace()


class _KeepingStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, kept: bytearray) -> None:
        self._inner, self._kept = inner, kept

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self._inner.read(max_bytes, timeout)
        room = HEAD_KEPT - len(self._kept)
        if room > 0:
            self._kept += data[:room]
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        # the handshake reads inside the inner stream: what is kept is the plaintext
        return _KeepingStream(self._inner.start_tls(ssl_context, server_hostname, timeout),
                              self._kept)

    def get_extra_info(self, info: str) -> object:
        return self._inner.get_extra_info(info)


class HeadBackend(httpcore.NetworkBackend):
    """DeadlineBackend, keeping the first HEAD_KEPT bytes read in ``kept`` (one fetch, one
    connection: the response head)."""

    def __init__(self) -> None:
        self._inner = DeadlineBackend()
        self.kept = bytearray()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _KeepingStream(self._inner.connect_tcp(host, port, timeout, local_address,
                                                      socket_options), self.kept)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None
                            ) -> httpcore.NetworkStream:
        return _KeepingStream(self._inner.connect_unix_socket(path, timeout, socket_options),
                              self.kept)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def ipxe_status_location(head: bytes) -> tuple[int, bytes | None] | None:
    """The status and the Location iPXE takes from a response head: lines end at LF (a CR
    before it dropped), each is a C string (it ends at a NUL), a header is NAME:VALUE with
    the name compared without case and spaces skipped before the value, and the last
    Location wins. None when iPXE would fail the response instead (no status, a header
    line without ':', no end of the head within the bytes kept)."""
    lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
    lines = [line.split(b"\x00", 1)[0] for line in lines]
    words = lines[0].split(b" ", 2)
    if len(words) < 2 or not words[0].startswith(b"HTTP/") or len(words[1]) != 3 \
            or not words[1].isdigit():
        return None
    location: bytes | None = None
    for line in lines[1:-1]:  # the last piece has no LF: it is not a line yet
        if not line:
            return int(words[1]), location
        name, sep, value = line.partition(b":")
        if not sep:
            return None  # iPXE: "malformed header", the transfer fails
        if name.lower() == b"location":
            location = value.lstrip(_SPACES)
    return None
