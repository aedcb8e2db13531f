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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustboot.fsutil import append_line, open_log, read_capped

GENESIS = "0" * 64
MAX_LOG_FILE = 256 << 20
_TAIL = 1 << 16


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


def _next_link(fd: int) -> tuple[int, str, bool]:
    """(seq, prev, needs_newline) for the entry appended after the file's last line."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 1, GENESIS, False
    want = _TAIL
    while True:
        start = max(0, size - want)
        os.lseek(fd, start, os.SEEK_SET)
        tail = b""
        while len(tail) < size - start and (chunk := os.read(fd, size - start - len(tail))):
            tail += chunk
        complete = tail.endswith(b"\n")
        body = tail[:-1] if complete else tail
        cut = body.rfind(b"\n")
        if cut >= 0 or start == 0 or want >= MAX_LOG_FILE:
            break
        want *= 4  # a last line longer than the tail read
    last = body[cut + 1:]
    seq: int | None = None
    if complete:
        try:
            record = json.loads(last)
            if isinstance(record, dict) and isinstance(record.get("seq"), int):
                seq = record["seq"] + 1
        except ValueError:
            seq = None
    if seq is None:  # legacy or damaged last line: the new entry's line number
        seq = _count_lines(fd) + 1
    return seq, line_hash(last), not complete


def append(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Append ``record`` with its ``seq`` and ``prev`` links; call under the CA lock.

    A last line cut short (a crash mid-write) is left as it is, and reported by
    :func:`verify`; the new entry starts on a line of its own and links to it.
    """
    fd = _open_log(path)
    if fd is None:
        seq, prev, newline = 1, GENESIS, False
    else:
        try:
            seq, prev, newline = _next_link(fd)
        finally:
            os.close(fd)
    chained = {k: v for k, v in record.items() if k not in ("seq", "prev")}
    chained |= {"seq": seq, "prev": prev}
    line = json.dumps(chained, sort_keys=True).encode()
    append_line(path, (b"\n" if newline else b"") + line + b"\n")
    return chained


def verify(path: Path, *, chained_from: int | None = None) -> LogCheck:
    """Check the chain; the first broken line (if any) and what is wrong with it.

    ``chained_from`` is the line the CA index says the chain starts at: unchained lines
    at or after it are not a legacy prefix but a stripped chain.
    """
    if not path.exists() and not path.is_symlink():
        return LogCheck(0, 0, 0, GENESIS, None)
    data = read_capped(path, MAX_LOG_FILE, "operation log", nofollow=True)
    truncated = bool(data) and not data.endswith(b"\n")
    lines = data.split(b"\n")
    if not truncated:
        lines.pop()  # the empty string after the final newline
    records: list[dict[str, Any] | None] = []
    for raw in lines:
        try:
            rec = json.loads(raw)
        except ValueError:
            rec = None
        records.append(rec if isinstance(rec, dict) else None)

    def chained(rec: dict[str, Any] | None) -> bool:
        return rec is not None and "prev" in rec and "seq" in rec

    legacy = 0
    while (legacy < len(records) and records[legacy] is not None
           and not chained(records[legacy])
           and (chained_from is None or legacy + 1 < chained_from)):
        legacy += 1
    head = line_hash(lines[-1]) if lines else GENESIS

    def result(problem: LogProblem | None) -> LogCheck:
        return LogCheck(len(lines), legacy, len(lines), head, problem)

    prev = GENESIS if legacy == 0 else line_hash(lines[legacy - 1])
    for idx in range(legacy, len(lines)):
        lineno = idx + 1
        rec = records[idx]
        if idx == len(lines) - 1 and truncated:
            return result(LogProblem(lineno, "truncated", (
                f"line {lineno}, the last one, is incomplete (no newline): a write was cut "
                "off or the file was truncated")))
        if rec is None:
            return result(LogProblem(lineno, "edited",
                                     f"line {lineno} is not a JSON log entry"))
        if not chained(rec):
            return result(LogProblem(lineno, "inserted", (
                f"line {lineno} has no hash link (seq/prev) although the chain started "
                f"at line {legacy + 1}: inserted, or its links were removed")))
        seq = rec["seq"]
        if not isinstance(seq, int) or isinstance(seq, bool):
            return result(LogProblem(lineno, "edited", f"line {lineno} has a non-integer seq"))
        if seq != lineno:
            later = [r.get("seq") for r in records[idx + 1:] if r is not None]
            if seq > lineno and lineno not in later and all(
                    not isinstance(s, int) or s > seq for s in later):
                missing = (f"entry {lineno}" if seq == lineno + 1
                           else f"entries {lineno}-{seq - 1}")
                return result(LogProblem(lineno, "deleted", (
                    f"{missing} of the log are missing: line {lineno} holds entry {seq}")))
            return result(LogProblem(lineno, "reordered", (
                f"line {lineno} holds entry {seq}: entries were moved or duplicated")))
        if rec["prev"] != prev:
            nxt = records[idx + 1] if idx + 1 < len(records) else None
            own_change = nxt is not None and chained(nxt) and nxt["prev"] != line_hash(
                lines[idx])
            if own_change or idx == 0:
                return result(LogProblem(lineno, "edited", (
                    f"line {lineno} was changed: its link does not match the line before "
                    "it")))
            return result(LogProblem(lineno - 1, "edited", (
                f"line {lineno - 1} was changed after it was written: line {lineno} "
                f"recorded its hash as {str(rec['prev'])[:16]}..., it is now "
                f"{prev[:16]}...")))
        prev = line_hash(lines[idx])
    return result(None)


def count_lines(path: Path) -> int:
    """Lines in the log now (the line the next entry will have, minus one)."""
    fd = _open_log(path)
    if fd is None:
        return 0
    try:
        return _count_lines(fd)
    finally:
        os.close(fd)
