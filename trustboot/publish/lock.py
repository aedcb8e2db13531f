"""The publish lock every backend takes: one protocol, backend-specific atomic create.

A backend supplies an atomic "create if absent" (a hard link, a MOVE without overwrite, an
S3 conditional PUT), a reader of the holder's record, a way to move a stale lock aside, a
rewrite of the record and a release. The record names owner, host, pid (and its PID
namespace), time and a random token (what makes a lock ours), so the loser's error names
the winner, and a lock left by a dead process on this host (or one older than
``stale_after``) is broken.

Heartbeat: a holder rewrites its record (same token, new time) every ``refresh`` seconds
(a sixth of ``stale_after`` unless given) on a daemon thread, so a publish that runs longer
than ``stale_after`` keeps its lock. A refresh that finds the lock is not ours any more
(broken, or replaced) marks it lost, and so does ``stale_after - refresh`` seconds without
a successful refresh (someone may have judged it stale by then); the origin's writes and
the entry switch call ``HeldLock.check`` first (``GuardedByLock``), which then raises: the
holder stops before its next change to the origin, never continues. A check that finds the
heartbeat overdue (the process was stopped, or the machine slept, past that age: its writes
can wake before its heartbeat) refreshes the record itself first, or finds the lock lost.

A refresh reads the record, then rewrites it, then reads it again. The rewrite is a
compare-and-swap: it never replaces a record that is not ours (another's lock taken while
the refresh was under way).
- S3: a PUT conditional on our last record's ETag (``If-Match``).
- file:// and WebDAV (``swap_record``): the stores' only atomic conditional is "move if
  the destination is absent" (a hard link, a MOVE with ``Overwrite: F``; nginx's dav
  module ignores If-Match, If-None-Match, If-Unmodified-Since and If on PUT, MOVE and
  DELETE, tested on nginx 1.22). So the lock is moved aside (atomic: whatever record it
  held is now ours alone to look at), read there, and our new record created in its
  place without overwrite, or, when the record aside is not ours, that one given back
  without overwrite. What remains: while the lock is aside (a rename on file://, three
  or four requests on WebDAV) it is absent. A publisher arriving then takes it, and the
  holder's create fails: the holder marks its lock lost and stops (one holder, the
  newcomer). A breaker whose lock was moved aside by the holder's refresh and reads it
  in that moment finds it gone and stops too (no holder; a run again resumes). Never do
  two holders both go on.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator

from trustboot.errors import OperationalError, TrustbootError
from trustboot.text import clean

LOCK_STALE_AFTER = 6 * 3600.0
REFRESH_FRACTION = 6  # refreshed every stale_after / 6 (at least every second) by default


_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def _clock() -> float:
    """Seconds that also run while the machine sleeps: others judge our record by the wall
    clock, so a laptop suspended mid-publish must see that time passed too."""
    return time.clock_gettime(_BOOTTIME)


def _pid_namespace() -> str | None:
    """This process's PID namespace (``pid:[4026531836]``), or None where there is none."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def lock_record(owner: str, token: str) -> dict[str, object]:
    return {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
            "pidns": _pid_namespace(), "time": time.time(), "token": token}


def _when(record: dict[object, object]) -> float | None:
    """The record's time as a finite float; None when it has none. A number no writer of
    ours makes (10**400, beyond a float) raises ValueError: an unreadable record."""
    when = record.get("time")
    if isinstance(when, bool) or not isinstance(when, int | float):
        return None
    try:
        value = float(when)
    except OverflowError:
        raise ValueError("lock time out of range") from None
    if not math.isfinite(value):
        raise ValueError("lock time not finite")  # (JSON's Infinity/NaN)
    return value


def lock_is_stale(record: object, *, now: float, stale_after: float) -> bool:
    """A lock left by a dead process on this host, or older than ``stale_after``."""
    if not isinstance(record, dict):
        return True  # unreadable: a crash between create and write
    try:
        when = _when(record)
    except ValueError:
        return True  # not a time trustboot writes: unreadable
    if when is not None and now - when > stale_after:
        return True
    pid = record.get("pid")
    # A pid means something only in the PID namespace it was taken in: a container on
    # this host with its hostname (host networking) has pids this process cannot see.
    pidns = record.get("pidns")
    if pidns is not None and pidns != _pid_namespace():
        return False
    # (a pid beyond the kernel's range is no process of this host: os.kill cannot take it)
    if record.get("host") == socket.gethostname() and isinstance(pid, int) \
            and not isinstance(pid, bool) and 0 < pid < 1 << 31:
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
    try:
        when = _when(record)
    except ValueError:
        when = None
    age = f", {int(time.time() - when)} s ago" if when is not None else ""
    # the record is the origin's text: escaped, so it cannot drive the terminal
    owner, pid, host = (clean(str(record.get(k, "?")), limit=200)
                        for k in ("owner", "pid", "host"))
    return f"{owner} (pid {pid} on {host}{age})"


class HeldLock:
    """A lock this process holds, kept fresh by a daemon thread (see the module doc)."""

    def __init__(self, where: str, record: dict[str, object], *, stale_after: float,
                 refresh: float, read: Callable[[], object],
                 rewrite: Callable[[bytes], bool]) -> None:
        self.where = where
        self.token = str(record["token"])
        self._record = record
        self._stale_after = stale_after
        self._refresh = refresh
        self._read = read
        self._rewrite = rewrite
        self._lost: str | None = None
        self._mutex = threading.Lock()  # one refresh at a time, none after stop
        self._refreshing: int | None = None  # the thread in refresh (its writes check too)
        self._stopped = threading.Event()
        self._last_ok = _clock()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="trustboot-lock-heartbeat")

    def ours(self, record: object) -> bool:
        return isinstance(record, dict) and record.get("token") == self.token

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop refreshing; returns once no refresh is under way."""
        with self._mutex:
            self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _overdue(self) -> bool:
        """Whether another publisher may have judged our record stale by now: it was last
        known ours ``stale_after - refresh`` seconds ago or more."""
        return _clock() - self._last_ok > self._stale_after - self._refresh

    def check(self, *, confirm: bool = False) -> None:
        """Raise if the lock is lost; ``confirm``: read the record to be sure first (before
        the entry switch)."""
        if (self._lost is None and self._refreshing != threading.get_ident()
                and self._overdue()):
            # The heartbeat is late: this process was stopped or the machine slept past
            # the stale age, and the heartbeat has not run since. Another publisher may
            # hold the lock now; refresh here (or find it lost) before writing anything.
            self.refresh()
        if confirm and self._lost is None:
            held = self._read()
            if not self.ours(held):
                self._lose_to(held)
        if not self._thread.is_alive() and not self._stopped.is_set():
            # the heartbeat ends only once the lock is lost, unless it died of a bug:
            # then nothing refreshes the record and others will judge it stale
            self._lose("its heartbeat stopped")
        if self._lost is not None:
            raise OperationalError(
                f"lost the lock on {self.where} ({self._lost}); stopped before changing "
                "the origin further",
                hint="another publisher took the lock over, judging this run's stale (did "
                     "its refreshes reach the origin? are the two hosts' clocks apart?): "
                     "let that one finish, then run this one again (it resumes)")

    @property
    def lost(self) -> str | None:
        return self._lost

    def _lose(self, why: str) -> None:
        if self._lost is None:
            self._lost = why

    def _lose_to(self, held: object) -> None:
        self._lose(f"it is now held by {describe_lock(held)}" if held is not None
                   else "it was removed")

    def refresh(self) -> bool:
        """One heartbeat: rewrite the record if it is still ours; whether it is."""
        with self._mutex:
            if self._stopped.is_set() or self._lost is not None:
                return self._lost is None
            self._refreshing = threading.get_ident()
            try:
                return self._refresh_held()
            finally:
                self._refreshing = None

    def _refresh_held(self) -> bool:
        held = self._read()
        if self.ours(held):
            self._record = dict(self._record, time=time.time())
            refused = not self._rewrite(json.dumps(self._record).encode())
            held = self._read()  # after a refusal: whoever took it meanwhile
            if refused:
                self._lose_to(held)
                return False
        if not self.ours(held):
            self._lose_to(held)
            return False
        self._last_ok = _clock()
        return True

    def _run(self) -> None:
        while not self._stopped.wait(self._refresh):
            try:
                if not self.refresh():
                    return
            except (TrustbootError, OSError):
                # the origin is unreachable: keep trying until someone may have judged
                # the record stale; then the lock cannot be trusted any more
                if self._overdue():
                    self._lose(f"it could not be refreshed for "
                               f"{_clock() - self._last_ok:.0f} s")
                    return


def swap_record(body: bytes, *, take: Callable[[], str | None],
                read: Callable[[str], object], give_back: Callable[[str], object],
                drop: Callable[[str], object], create: Callable[[bytes], bool]) -> bool:
    """The heartbeat's rewrite as a compare-and-swap on a store that only has "move if
    the destination is absent" (see the module doc): True if the lock held our record
    (the token in ``body``) and now holds ``body``.

    ``take()``: move the lock to a new private name and return it (None: no lock).
    ``read(aside)``: its record. ``give_back(aside)``: move it back without overwrite.
    ``drop(aside)``: remove it (gone already is fine). ``create(body)``: the lock with
    ``body`` if absent (the same atomic create a publisher takes it with)."""
    token = json.loads(body).get("token")
    aside = take()
    if aside is None:
        return False  # broken (the next read tells by whom)
    try:
        held = read(aside)
        if not (isinstance(held, dict) and held.get("token") == token):
            give_back(aside)  # another's: back in place, unless a newcomer's is there
            return False
        try:
            return create(body)  # False: a newcomer took the absent lock meanwhile
        except BaseException:
            give_back(aside)  # ours again, as it was
            raise
    finally:
        drop(aside)


class GuardedByLock:
    """Mixed into an origin: while it holds its lock, its writes (and its entry switch,
    ``confirm=True``) first make sure the lock is still theirs (``HeldLock.check``)."""

    _held: HeldLock | None = None

    def _check_lock(self, *, confirm: bool = False) -> None:
        held = self._held
        if held is not None:
            held.check(confirm=confirm)

    @contextlib.contextmanager
    def _guarded(self, lock: contextlib.AbstractContextManager[HeldLock]
                 ) -> Iterator[HeldLock]:
        with lock as held:
            self._held = held
            try:
                yield held
            finally:
                self._held = None


@contextlib.contextmanager
def origin_lock(owner: str, *, where: str, remove_hint: str,
                try_create: Callable[[bytes], bool], read: Callable[[], object],
                break_stale: Callable[[object, bytes], bool], release: Callable[[], None],
                rewrite: Callable[[bytes], bool], stale_after: float = LOCK_STALE_AFTER,
                refresh: float | None = None, settle: float = 0.0) -> Iterator[HeldLock]:
    """Hold the lock for the block, refreshing it (see the module doc).

    ``try_create(body)``: create the lock with this record if there is none; whether it did.
    ``break_stale(seen, body)``: remove the lock judged stale if it still is ``seen``, or
    replace it by ``body`` atomically; True only in the second case (the lock is ours).
    ``rewrite(body)``: the heartbeat's new record; False if the store refused it (not ours).
    ``settle``: how long to wait for a holder that has created the lock but not yet written
    its record (non-atomic backends)."""
    record = lock_record(owner, secrets.token_hex(16))
    body = json.dumps(record).encode()
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
        if break_stale(held, body):
            break
    else:
        raise OperationalError(f"could not take the lock on {where}",
                               hint="another publish keeps taking it; retry later")
    if refresh is None:
        refresh = max(stale_after / REFRESH_FRACTION, 1.0)
    if refresh <= 0:
        raise ValueError("the lock's refresh interval must be positive")
    lock = HeldLock(where, record, stale_after=stale_after, refresh=refresh, read=read,
                    rewrite=rewrite)
    lock.start()
    try:
        yield lock
    finally:
        lock.stop()
        with contextlib.suppress(TrustbootError, OSError):
            if lock.ours(read()):
                release()
