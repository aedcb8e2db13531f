"""iPXE's own string parsers, ported: where trustboot must say what a real iPXE accepts
(``imgverify --signer`` names, typed setting values in ``ipxe script lint``).

From src/core/string.c (strtoul, digit_value), src/net/ipv4.c (inet_aton),
src/net/ipv6.c (inet6_aton), src/core/base16.c (hex_decode), src/core/base64.c
(base64_decode). They differ from C's and Python's own in ways that matter: a "0x" with no
digit is a number, overflow wraps, an empty IPv6 word is 0.
"""

from __future__ import annotations


def strtoul(text: str, base: int = 0) -> tuple[int, int]:
    """iPXE's strtoul() (core/string.c), not C's: (value, index of the end pointer).

    It skips whitespace, a sign and (base 0 only) a "0"/"0x" prefix even when no digit
    follows, leaving the end pointer after them; "0x" is a prefix only in base 0; overflow
    wraps (unsigned long: 64 bits, as in x86-64 and arm64 builds).
    """
    i, n = 0, len(text)
    while i < n and text[i] in " \t\n\v\f\r":
        i += 1
    negate = i < n and text[i] == "-"
    if i < n and text[i] in "+-":
        i += 1
    if base == 0:
        base = 10
        if i < n and text[i] == "0":
            i, base = i + 1, 8
            if i < n and ord(text[i]) & ~0x20 == ord("X"):
                i, base = i + 1, 16
    value = 0
    while i < n and digit_value(text[i]) < base:
        value = (value * base + digit_value(text[i])) % (1 << 64)
        i += 1
    return ((-value) % (1 << 64) if negate else value), i


def digit_value(char: str) -> int:
    """iPXE's digit_value(): a letter counts from 10 up, anything else is >= any base."""
    c = ord(char)
    if c >= ord("a"):
        return c - ord("a") + 10
    if c >= ord("A"):
        return c - ord("A") + 10
    return c - ord("0") if ord("0") <= c <= ord("9") else 1 << 32


def inet6_aton(name: str) -> bytes | None:
    """iPXE's inet6_aton(): up to eight strtoul(.., 16) words separated by ':' (an empty
    word is 0), one "::" padded with zero words."""
    words: list[int] = []
    pad: int | None = None
    pos = 0
    while True:
        value, used = strtoul(name[pos:], 16)
        end = pos + used
        if value > 0xFFFF:
            return None
        words.append(value)
        if end == len(name):
            break
        if name[end] != ":":
            return None
        if end == pos and pos != 0:
            if pad is not None:
                return None  # a second "::"
            pad = len(words)
        pos = end + 1
        if len(words) == 8:
            return None
    if pad is not None:
        words[pad:pad] = [0] * (8 - len(words))
    elif len(words) != 8:
        return None
    return b"".join(w.to_bytes(2, "big") for w in words)


def inet_aton(name: str) -> bytes | None:
    """iPXE's inet_aton(): four strtoul(.., 0) numbers up to 255 (so 0x0a, 012, "+1" and
    even an empty "0x" count), separated by '.'."""
    out = bytearray()
    pos = 0
    for i in range(4):
        value, used = strtoul(name[pos:])
        if used == 0 or value > 0xFF:
            return None
        out.append(value)
        end = pos + used
        if i < 3:
            if name[end:end + 1] != ".":
                return None
            pos = end + 1
        elif end != len(name):
            return None
    return bytes(out)


def hex_decode(separator: str, encoded: str, *, optional: bool = False) -> int | None:
    """iPXE's hex_decode(): how many bytes ``encoded`` decodes to (pairs of hex digits,
    ``separator`` between pairs, only optionally with ``optional``), or None where it
    returns -EINVAL (an odd digit, another character, a separator at the end)."""
    count, i, n = 0, 0, len(encoded)
    while i < n:
        if count and separator:
            if encoded[i] == separator:
                i += 1
            elif not optional:
                return None
        for _ in range(2):  # the end of the string is not a digit either
            if i >= n or digit_value(encoded[i]) >= 16:
                return None
            i += 1
        count += 1
    return count


BASE64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def base64_decode(encoded: str) -> int | None:
    """iPXE's base64_decode(): the decoded length, or None where it returns -EINVAL (a
    character outside the alphabet, more than two '=', anything but '=' after one, or a
    bit count that is not whole bytes). Whitespace is skipped."""
    bits = pads = 0
    for char in encoded:
        if char in " \t\n\v\f\r":
            continue
        if char == "=":
            if pads >= 2:
                return None
            pads += 1
            bits -= 2  # (an unsigned int in iPXE: a leading '=' wraps, and fails below)
            continue
        if pads or char not in BASE64_ALPHABET:
            return None
        bits += 6
    return None if bits % 8 else bits // 8
