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

from typing import Any

from trustboot.text import UNSAFE_CATEGORIES, clean

__all__ = ["UNSAFE_CATEGORIES", "bound", "clean"]

MAX_STRING = 512  # characters of one value in JSON/SARIF evidence
MAX_ITEMS = 50  # entries of one list in JSON/SARIF evidence
MAX_KEYS = 100  # keys of one mapping (the audit's own field names; a bound all the same)
MAX_DEPTH = 12


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
