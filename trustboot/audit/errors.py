"""The one exception the audit's parsers raise: whatever the network sends becomes evidence."""

from __future__ import annotations


class MalformedPacket(ValueError):
    """A packet that cannot be decoded. ``reason`` is short and stable enough to group by."""

    def __init__(self, reason: str, *, offset: int | None = None) -> None:
        super().__init__(reason if offset is None else f"{reason} (at byte {offset})")
        self.reason = reason
        self.offset = offset


def wire_bytes(data: object) -> bytes:
    """``data`` as bytes, or MalformedPacket: the parsers' common first step."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedPacket("not bytes")
    return bytes(data)
