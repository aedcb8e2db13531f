"""The publish lock every backend takes: one protocol, backend-specific atomic create.

A backend supplies an atomic "create if absent" (a hard link, a MOVE without overwrite, an
S3 conditional PUT), a reader of the holder's record, a way to move a stale lock aside, and
a release. The record names owner, host, pid (and its PID namespace) and time, so the
loser's error names the winner, and a lock left by a dead process on this host (or one
older than ``stale_after``) is broken.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterator

from trustboot.errors import OperationalError, TrustbootError
from trustboot.text import clean

LOCK_STALE_AFTER = 6 * 3600.0


def _pid_namespace() -> str | None:
    """This process's PID namespace (``pid:[4026531836]``), or None where there is none."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def lock_record(owner: str) -> dict[str, object]:
    return {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
            "pidns": _pid_namespace(), "time": time.time()}


def lock_is_stale(record: object, *, now: float, stale_after: float) -> bool:
    """A lock left by a dead process on this host, or older than ``stale_after``."""
    if not isinstance(record, dict):
        return True  # unreadable: a crash between create and write
    when = record.get("time")
    if isinstance(when, float) and not math.isfinite(when):
        return True  # (JSON's Infinity/NaN) not a time trustboot writes: unreadable
    if isinstance(when, int | float) and now - when > stale_after:
        return True
    pid = record.get("pid")
    # A pid means something only in the PID namespace it was taken in: a container on
    # this host with its hostname (host networking) has pids this process cannot see.
    pidns = record.get("pidns")
    if pidns is not None and pidns != _pid_namespace():
        return False
    if record.get("host") == socket.gethostname() and isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def describe_lock(record: object) -> str:
    if not isinstance(record, dict):
        return "an unknown process"
    when = record.get("time")
    age = f", {int(time.time() - when)} s ago" if isinstance(when, int | float) \
        and math.isfinite(when) else ""
    # the record is the origin's text: escaped, so it cannot drive the terminal
    owner, pid, host = (clean(str(record.get(k, "?")), limit=200)
                        for k in ("owner", "pid", "host"))
    return f"{owner} (pid {pid} on {host}{age})"


@contextlib.contextmanager
def origin_lock(owner: str, *, where: str, remove_hint: str,
                try_create: Callable[[bytes], bool], read: Callable[[], object],
                break_stale: Callable[[object], None], release: Callable[[], None],
                stale_after: float = LOCK_STALE_AFTER, settle: float = 0.0) -> Iterator[None]:
    """Hold the lock for the block. ``settle``: how long to wait for a holder that has
    created the lock but not yet written its record (non-atomic backends)."""
    body = json.dumps(lock_record(owner)).encode()
    for _attempt in range(3):
        if try_create(body):
            break
        held = read()
        if held is None and settle:
            time.sleep(settle)
            held = read()
        if held is not None and not lock_is_stale(held, now=time.time(),
                                                  stale_after=stale_after):
            raise OperationalError(
                f"origin {where} is locked by {describe_lock(held)}",
                hint=f"another publish is running; wait for it, or {remove_hint} if that "
                     "process is gone")
        break_stale(held)
    else:
        raise OperationalError(f"could not take the lock on {where}",
                               hint="another publish keeps taking it; retry later")
    try:
        yield
    finally:
        with contextlib.suppress(TrustbootError, OSError):
            if read() == json.loads(body):
                release()
