"""The report boundary: every string that leaves the audit passes through here. No I/O.

Strings in a report came off the network (DHCP options, HTTP headers, error messages that
quote a server), so before any of them reaches a terminal, a JSON consumer or a SARIF viewer:
control characters (C0, DEL, C1), Unicode format characters (bidi overrides, zero-width
characters, ...), line/paragraph separators, surrogates, private-use and unassigned code
points are escaped as visible ``\\uXXXX`` text, and long values are cut with a marker.
``bound`` applies that to a whole JSON-like tree and caps list lengths, so one hostile
server cannot make a report of hundreds of megabytes.
"""

from __future__ import annotations

import unicodedata
from typing import Any

# Unicode general categories that must never reach an output verbatim.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
MAX_STRING = 512  # characters of one value in JSON/SARIF evidence
MAX_ITEMS = 50  # entries of one list in JSON/SARIF evidence
MAX_KEYS = 100  # keys of one mapping (the audit's own field names; a bound all the same)
MAX_DEPTH = 12


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 \
        else f"\\U{code:08x}"


def clean(text: str, *, limit: int | None = None, ascii_only: bool = False) -> str:
    """``text`` with unsafe characters escaped; cut to ``limit`` characters with a marker.

    ``ascii_only`` escapes every non-ASCII character too (the terminal table), so the output
    encodes in whatever encoding stdout has.
    """
    if limit is not None and len(text) > limit:
        cut = len(text) - limit
        text = text[:limit]
        suffix = f"...[{cut} more chars]"
    else:
        suffix = ""
    if text.isascii() and text.isprintable():
        return text + suffix
    out = []
    for ch in text:
        if ch.isascii():
            out.append(ch if ch.isprintable() else _escape(ch))
        elif ascii_only or unicodedata.category(ch) in UNSAFE_CATEGORIES:
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out) + suffix


def bound(value: Any, *, max_string: int = MAX_STRING, max_items: int = MAX_ITEMS,
          depth: int = 0) -> Any:
    """A JSON-like tree with every string cleaned and cut, and every list/dict capped."""
    if isinstance(value, str):
        return clean(value, limit=max_string)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if depth >= MAX_DEPTH:
        return clean(repr(value), limit=max_string)
    if isinstance(value, dict):
        items = list(value.items())
        out = {clean(str(k), limit=128): bound(v, max_string=max_string, max_items=max_items,
                                               depth=depth + 1)
               for k, v in items[:MAX_KEYS]}
        if len(items) > MAX_KEYS:
            out["_omitted_keys"] = len(items) - MAX_KEYS
        return out
    if isinstance(value, list | tuple | set | frozenset):
        seq = list(value)
        kept = [bound(v, max_string=max_string, max_items=max_items, depth=depth + 1)
                for v in seq[:max_items]]
        if len(seq) > max_items:
            kept.append(f"...[{len(seq) - max_items} more items]")
        return kept
    return clean(str(value), limit=max_string)
