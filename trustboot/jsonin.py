"""JSON from outside (an origin's release.json, lock record or switch journal, a file
someone handed us), parsed so that a hostile document is a ValueError like any other
malformed one: Python's parser raises RecursionError on deep nesting (a few KiB of '['),
which no caller expected, and it accepts Infinity/NaN, which no writer of ours emits.

How deep the parser goes before that RecursionError depends on the interpreter (under a
thousand levels on 3.11; 3.12 and 3.13 parse a thousand and more), so the depth is also
bounded here, the same on every Python: no document of ours nests beyond a handful of
levels, and a record nested beyond MAX_DEPTH is malformed, not merely odd (a lock record
that parses on one Python and not on another would be stale on one and held on the other).
"""

from __future__ import annotations

import json
from typing import Any


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# Arrays and objects inside each other, at most (ours: under 10).
MAX_DEPTH = 64


def loads(data: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` that raises ValueError (never RecursionError) on nesting deeper than
    ``max_depth`` (at most MAX_DEPTH) and refuses Infinity/NaN. A smaller ``max_depth``
    suits a document that is carried inside another one we write."""
    try:
        value = json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    _check_depth(value, min(max_depth, MAX_DEPTH))
    return value


def _check_depth(value: Any, max_depth: int) -> None:
    """Level by level, without recursion (a recursive walk would be the RecursionError
    avoided above); json.loads makes only dicts and lists as containers."""
    level = [value] if type(value) in (dict, list) else []
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            raise ValueError(f"nested deeper than {max_depth} levels")
        below: list[Any] = []
        for node in level:
            below += [c for c in (node.values() if type(node) is dict else node)
                      if type(c) in (dict, list)]
        level = below
