"""Text from outside (the network, certificates, files others wrote) made safe to show.

``clean`` escapes control characters (C0, DEL, C1), Unicode format characters (bidi
overrides, zero-width characters, ...), line/paragraph separators, surrogates, private-use
and unassigned code points as visible ``\\xNN``/``\\uXXXX`` text, so nothing an outsider
wrote can move a terminal's cursor, retitle it or reorder what a reader sees. No I/O.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

# Unicode general categories that must never reach an output verbatim.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


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


SHOWN_LIMIT = 200  # characters of an outside value quoted in a message


def shown(value: object, limit: int = SHOWN_LIMIT) -> str:
    """``value`` as a message quotes it (its repr), escaped and cut with ``clean``'s marker:
    an error names the value it refuses, and a hostile one (a megabyte file name) must not
    flood the terminal or a CI log."""
    return clean(repr(value), limit=limit)


def shown_names(names: Sequence[object], most: int = 10) -> str:
    """Names a message lists (unknown keys, duplicates): the first ``most``, each escaped
    and cut as ``clean`` cuts, then how many more: a hostile document's thousand
    megabyte keys must not flood the terminal or a CI log."""
    listed = ", ".join(clean(str(n), limit=SHOWN_LIMIT) for n in names[:most])
    return listed + (f" and {len(names) - most} more" if len(names) > most else "")


def clean_lines(text: str) -> str:
    """``clean`` on each line: for a message written in several lines that may quote
    outside text (errors, warnings): the lines stay, nothing in them drives a terminal."""
    return "\n".join(clean(line) for line in text.split("\n"))


def unsafe_string_at(value: object, where: str = "") -> str | None:
    """The JSON path of the first string (or key) in ``value`` with characters ``clean``
    escapes; None when there is none. For documents whose text reaches a terminal and
    the tool never writes such characters into (build records, audit reports)."""
    # a stack of (item, path, is_key), pushed in reverse: popped in document order
    todo: list[tuple[object, str, bool]] = [(value, where, False)]
    while todo:
        item, at, is_key = todo.pop()
        if is_key:
            if clean(str(item)) != item:
                return f"{at}/(a key)"
        elif isinstance(item, str):
            if clean(item) != item:
                return at or "/"
        elif isinstance(item, dict):
            entries: list[tuple[object, str, bool]] = []
            for key, sub in item.items():
                entries += [(key, at, True), (sub, f"{at}/{key}", False)]
            todo.extend(reversed(entries))
        elif isinstance(item, list):
            todo.extend(reversed([(sub, f"{at}/{i}", False) for i, sub in enumerate(item)]))
    return None


def not_utf8(value: str) -> bytes | None:
    """The bytes of ``value`` when it holds surrogate escapes, what Python makes of argv
    bytes that are not UTF-8 (no certificate, index or log line can hold them); None for
    text."""
    if any("\ud800" <= c <= "\udfff" for c in value):
        return value.encode("utf-8", "surrogateescape")
    return None
