"""JSON from outside (an origin's release.json, lock record or switch journal, a file
someone handed us), parsed so that a hostile document is a ValueError like any other
malformed one: Python's parser raises RecursionError on deep nesting (a few KiB of '['),
which no caller expected, and it accepts Infinity/NaN, which no writer of ours emits."""

from __future__ import annotations

import json
from typing import Any


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads(data: str | bytes) -> Any:
    """``json.loads`` that raises ValueError (never RecursionError) on too-deep nesting
    and refuses Infinity/NaN."""
    try:
        return json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
