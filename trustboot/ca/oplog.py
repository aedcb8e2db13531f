"""The CA's operation log (log.jsonl), hash-chained so that changes to it are evident.

Every entry is one JSON object on one line with two extra keys:

* ``seq``: its line number in the file (1-based), so a deleted or moved line shows;
* ``prev``: the SHA-256 (hex) of the previous line's bytes, without the newline; the first
  line of a log carries :data:`GENESIS`.

Logs written before the chain existed start with entries that have neither key: they are a
*legacy prefix*, reported once by :func:`verify`, and the first chained entry links to the
last legacy line (its ``prev`` is that line's hash). An unchained entry after the first
chained one is a break. The chain protects every line but the last one against an edit
(the next line records its hash): anchor the head that :func:`verify` returns somewhere
else (a ticket, a commit) to protect the end of the log too.

Nothing here takes a lock: the CA store appends under its own lock.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustboot.fsutil import open_append, open_log

GENESIS = "0" * 64
# One entry is a few hundred bytes; a longer line is not one of ours (it is still hashed,
# in full, so the chain and the head stay exact). The log as a whole has no cap: it is
# read a chunk at a time.
MAX_LOG_LINE = 1 << 20
_CHUNK = 1 << 16


def line_hash(line: bytes) -> str:
    """The link to ``line`` (its bytes without the newline)."""
    return hashlib.sha256(line).hexdigest()


@dataclass(frozen=True)
class LogProblem:
    line: int  # 1-based line number of the first broken entry
    kind: str  # edited | deleted | reordered | inserted | truncated
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "kind": self.kind, "message": self.message}


@dataclass(frozen=True)
class LogCheck:
    lines: int
    legacy: int  # unchained entries at the start (a log older than the chain)
    head_seq: int  # seq and hash of the last line: anchor these elsewhere
    head_sha256: str
    problem: LogProblem | None

    def to_json(self) -> dict[str, Any]:
        return {"lines": self.lines, "legacy_entries": self.legacy,
                "head": {"seq": self.head_seq, "sha256": self.head_sha256},
                "problem": self.problem.to_json() if self.problem else None}


def _open_log(path: Path) -> int | None:
    """The log opened for reading (never through a link); None when it does not exist."""
    try:
        return open_log(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None


def _count_lines(fd: int) -> int:
    os.lseek(fd, 0, os.SEEK_SET)
    count, last = 0, b"\n"
    while chunk := os.read(fd, 1 << 20):
        count += chunk.count(b"\n")
        last = chunk[-1:]
    return count + (0 if last == b"\n" else 1)


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    out = b""
    while len(out) < size and (chunk := os.pread(fd, size - len(out), offset + len(out))):
        out += chunk
    return out


def _next_link(fd: int) -> tuple[int, str, bool]:
    """(seq, prev, needs_newline) for the entry appended after the file's last line.

    Only the last line is read (backwards to its start, a chunk at a time); one longer
    than :data:`MAX_LOG_LINE` is hashed without being held.
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return 1, GENESIS, False
    complete = _pread_all(fd, 1, size - 1) == b"\n"
    end = size - 1 if complete else size
    start = end
    while start > 0:
        lo = max(0, start - _CHUNK)
        cut = _pread_all(fd, start - lo, lo).rfind(b"\n")
        if cut >= 0:
            start = lo + cut + 1
            break
        start = lo
    digest = hashlib.sha256()
    last = b""
    for offset in range(start, end, _CHUNK):
        chunk = _pread_all(fd, min(_CHUNK, end - offset), offset)
        digest.update(chunk)
        if end - start <= MAX_LOG_LINE:
            last += chunk
    seq: int | None = None
    if complete and end - start <= MAX_LOG_LINE:
        try:
            record = json.loads(last)
            if isinstance(record, dict) and isinstance(record.get("seq"), int):
                seq = record["seq"] + 1
        except (ValueError, RecursionError):
            seq = None
    if seq is None:  # legacy or damaged last line: the new entry's line number
        seq = _count_lines(fd) + 1
    return seq, digest.hexdigest(), not complete


def append(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Append ``record`` with its ``seq`` and ``prev`` links; call under the CA lock.

    A last line cut short (a crash mid-write) is left as it is, and reported by
    :func:`verify`; the new entry starts on a line of its own and links to it. The log is
    opened once, for reading its last line and appending.
    """
    fd = open_append(path)
    try:
        seq, prev, newline = _next_link(fd)
        chained = {k: v for k, v in record.items() if k not in ("seq", "prev")}
        chained |= {"seq": seq, "prev": prev}
        line = json.dumps(chained, sort_keys=True).encode()
        os.write(fd, (b"\n" if newline else b"") + line + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return chained


@dataclass(frozen=True)
class _Line:
    sha256: str  # of its bytes without the newline
    record: dict[str, Any] | None  # None: not a JSON object (or longer than MAX_LOG_LINE)
    complete: bool  # ended by a newline
    too_long: bool


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested a million deep
        return None
    return rec if isinstance(rec, dict) else None


def read_lines(fd: int) -> Iterator[_Line]:
    """The log's lines from ``fd``, a chunk at a time: memory is one line at most."""
    digest, kept, length = hashlib.sha256(), bytearray(), 0

    def take(part: bytes) -> None:
        nonlocal length
        digest.update(part)
        length += len(part)
        if length <= MAX_LOG_LINE:
            kept.extend(part)

    def line(complete: bool) -> _Line:
        too_long = length > MAX_LOG_LINE
        return _Line(digest.hexdigest(), None if too_long else _parse(bytes(kept)),
                     complete, too_long)

    while chunk := os.read(fd, _CHUNK):
        start = 0
        while (nl := chunk.find(b"\n", start)) >= 0:
            take(chunk[start:nl])
            yield line(True)
            digest, kept, length = hashlib.sha256(), bytearray(), 0
            start = nl + 1
        take(chunk[start:])
    if length:
        yield line(False)


def verify(path: Path, *, chained_from: int | None = None) -> LogCheck:
    """Check the chain; the first broken line (if any) and what is wrong with it.

    ``chained_from`` is the line the CA index says the chain starts at: unchained lines
    at or after it are not a legacy prefix but a stripped chain. The log is streamed (no
    size cap, one line in memory at a time), so a long-lived CA can always be checked.
    """
    if not path.exists() and not path.is_symlink():
        return LogCheck(0, 0, 0, GENESIS, None)
    fd = open_log(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return check_lines(read_lines(fd), chained_from=chained_from)
    finally:
        os.close(fd)


def _chained(rec: dict[str, Any] | None) -> bool:
    return rec is not None and "prev" in rec and "seq" in rec


def check_lines(lines: Iterator[_Line], *, chained_from: int | None = None) -> LogCheck:
    """:func:`verify` over lines as :func:`read_lines` yields them (one look-ahead)."""
    count, legacy, in_prefix = 0, 0, True
    prev = head = GENESIS
    problem: LogProblem | None = None
    # a line holding the wrong entry: deleted or reordered, told by the entries after it
    moved: tuple[int, int] | None = None  # (line, the seq it holds)
    later_has_line, later_all_greater = False, True
    cur = next(lines, None)
    while cur is not None:
        nxt = next(lines, None)
        count += 1
        lineno, rec, head = count, cur.record, cur.sha256
        if moved is not None and rec is not None:
            s = rec.get("seq")
            later_has_line |= s == moved[0]
            later_all_greater &= not isinstance(s, int) or s > moved[1]
        if problem is None and moved is None:
            if in_prefix and rec is not None and not _chained(rec) and (
                    chained_from is None or legacy + 1 < chained_from):
                legacy += 1
            else:
                in_prefix = False
                problem, moved = _check_line(cur, nxt, lineno, prev, legacy)
            prev = cur.sha256
        cur = nxt
    if moved is not None:
        line, seq = moved
        if seq > line and not later_has_line and later_all_greater:
            missing = (f"entry {line} of the log is" if seq == line + 1
                       else f"entries {line}-{seq - 1} of the log are")
            problem = LogProblem(line, "deleted", (
                f"{missing} missing: line {line} holds entry {seq}"))
        else:
            problem = LogProblem(line, "reordered", (
                f"line {line} holds entry {seq}: entries were moved or duplicated"))
    return LogCheck(count, legacy, count, head, problem)


def _check_line(cur: _Line, nxt: _Line | None, lineno: int, prev: str, legacy: int
                ) -> tuple[LogProblem | None, tuple[int, int] | None]:
    """What is wrong with one line of the chain: (problem, None), or (None, (line, seq))
    when it holds another entry (the rest of the log tells deleted from reordered)."""
    rec = cur.record
    if nxt is None and not cur.complete:
        return LogProblem(lineno, "truncated", (
            f"line {lineno}, the last one, is incomplete (no newline): a write was cut "
            "off or the file was truncated")), None
    if rec is None:
        what = (f"longer than {MAX_LOG_LINE} bytes" if cur.too_long
                else "not a JSON log entry")
        return LogProblem(lineno, "edited", f"line {lineno} is {what}"), None
    if not _chained(rec):
        return LogProblem(lineno, "inserted", (
            f"line {lineno} has no hash link (seq/prev) although the chain started "
            f"at line {legacy + 1}: inserted, or its links were removed")), None
    seq = rec["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool):
        return LogProblem(lineno, "edited", f"line {lineno} has a non-integer seq"), None
    if seq != lineno:
        return None, (lineno, seq)
    if rec["prev"] != prev:
        own_change = nxt is not None and _chained(nxt.record) and \
            nxt.record is not None and nxt.record["prev"] != cur.sha256
        if own_change or lineno == 1:
            return LogProblem(lineno, "edited", (
                f"line {lineno} was changed: its link does not match the line before "
                "it")), None
        return LogProblem(lineno - 1, "edited", (
            f"line {lineno - 1} was changed after it was written: line {lineno} "
            f"recorded its hash as {str(rec['prev'])[:16]}..., it is now "
            f"{prev[:16]}...")), None
    return None, None


def records(path: Path) -> Iterator[dict[str, Any] | None]:
    """The entry on each line of the log, in order, streamed (None for a line that is not
    a JSON object; a missing log has none). What the entries say is only as good as the
    chain: :func:`verify` it too."""
    fd = _open_log(path)
    if fd is None:
        return
    try:
        for line in read_lines(fd):
            yield line.record
    finally:
        os.close(fd)


def count_lines(path: Path) -> int:
    """Lines in the log now (the line the next entry will have, minus one)."""
    fd = _open_log(path)
    if fd is None:
        return 0
    try:
        return _count_lines(fd)
    finally:
        os.close(fd)
