"""Total deadlines for HTTP requests: one policy, two ways to enforce it.

A per-read timeout alone does not bound an answer trickled a byte at a time (slowloris): a
hostile origin would hold a release (or a CI job) forever. So every request gets
``budget(timeout, size)`` = timeout + size / ``MIN_RATE`` seconds in all, and one that is
not done by then fails with ``too_slow`` (an OperationalError, never retried).

``size`` is what the answer may be (a cap), so that budget alone let a small answer
trickled take as long as the largest allowed (a 16 MiB cap is 256 s). Reads are also
paced by what came: the head within the timeout (and ``HEAD_SECONDS``) where the server has
nothing to do before it answers, then the body at ``MIN_RATE`` by the bytes received so
far (``paced``), after a grace of one timeout.

The policy is enforced in the way each client allows:

* httpx (WebDAV, the audit's boot-file fetch): ``total_deadline`` (or ``deadline_at``,
  which reports nothing) sets this thread's deadline and ``DeadlineBackend``,
  the httpcore network backend of ``trustboot.publish.http.deadline_transport``, cuts each
  socket operation's timeout to what is left of it. httpcore hands every recv/send to the
  backend, so no thread is needed.
* ``http.client`` (the read-back, chosen for speed: see ``trustboot.publish.readback``):
  ``Watchdog`` shuts down the socket of a request that outlives its deadline. A clamp
  cannot work there: ``HTTPResponse.readinto`` fills a 1 MiB buffer in C with as many recv
  calls as the server makes it, each given the full timeout, and nothing is called between
  them. The watchdog costs the read-back nothing per byte: it looks at the clock ten
  times a second, and a request registers and unregisters once and moves its deadline
  once per buffer read (``paced``: the deadline of the bytes that fill it).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

from trustboot.errors import OperationalError

# The slowest answer waited for, in bytes per second (see budget).
MIN_RATE = 64 << 10


def budget(timeout: float, size: int, *, min_rate: float = MIN_RATE) -> float:
    """Seconds a request moving ``size`` bytes gets in all."""
    return timeout + size / min_rate


# What the status line and headers of an answer may take beyond the request's own time
# (the --timeout), when the server has no work to do before it answers (a listing, a read).
HEAD_SECONDS = 1.0


# A paced body's first read, doubled after each up to the reader's largest: a read returns
# once its buffer is full, so its deadline is that of the bytes filling it (``paced``): a
# second's worth at MIN_RATE, not sixteen seconds' for a 1 MiB buffer.
FIRST_READ = MIN_RATE


def paced(start: float, grace: float, received: int, *, min_rate: float = MIN_RATE) -> float:
    """When (time.monotonic()) a body begun at ``start`` must have brought ``received``
    bytes: after ``grace`` seconds, at ``min_rate``. A deadline by what came, not by the
    cap: a small answer trickled is given up on as soon as a large one would be."""
    return start + grace + received / min_rate


def too_slow(url: str, seconds: float, *, min_rate: float = MIN_RATE,
             via: str = "") -> OperationalError:
    return OperationalError(
        f"{url} was served too slowly: not complete after {seconds:.0f} s "
        f"(less than {min_rate / 1024:.0f} KiB/s){via}",
        hint="check the origin and the network path to it; an origin that trickles "
             "its answers holds every client that boots from it")


# -- httpx: each socket operation clamped to the thread's deadline --------------------
_due = threading.local()  # the deadline (time.monotonic()) of this thread's request


def _clamp(timeout: float | None) -> float | None:
    """``timeout`` cut to what is left of this thread's total deadline, if any."""
    due: float | None = getattr(_due, "at", None)
    if due is None:
        return timeout
    left = due - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("the request's total deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamp(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname,
                                                     _clamp(timeout)))

    def get_extra_info(self, info: str) -> object:
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's synchronous backend, each operation within this thread's deadline."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_tcp(host, port, _clamp(timeout),
                                                       local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None
                            ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_unix_socket(path, _clamp(timeout),
                                                               socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


@contextlib.contextmanager
def deadline_at(at: float) -> Iterator[float]:
    """Socket operations of ``DeadlineBackend`` connections on this thread end by ``at``
    (time.monotonic()), or by an enclosing deadline if that is sooner: an operation still
    running then times out, one started after it fails with httpcore.ReadTimeout. Errors
    pass through as they are: what a late one means is the caller's to say (as
    ``total_deadline`` does). Yields the deadline in force."""
    outer: float | None = getattr(_due, "at", None)
    _due.at = at if outer is None else min(outer, at)
    try:
        yield _due.at
    finally:
        _due.at = outer


@contextlib.contextmanager
def total_deadline(seconds: float, url: str, *, start: float | None = None
                   ) -> Iterator[float]:
    """Socket operations of ``DeadlineBackend`` connections on this thread end within
    ``seconds`` of ``start`` (time.monotonic(), default now); a transport error after that
    is ``too_slow`` (not retried). Yields the deadline."""
    with deadline_at((time.monotonic() if start is None else start) + seconds) as due:
        try:
            yield due
        except httpx.TransportError:
            if time.monotonic() < due:
                raise
            raise too_slow(url, seconds) from None


# -- http.client: a watchdog shuts a late request's socket down ----------------------
class Watchdog:
    """Shuts down the socket of a request that outlives its deadline: one thread per
    watchdog, started on first use, looking a few times a second."""

    def __init__(self, *, name: str = "trustboot-deadline") -> None:
        self._name = name
        self._lock = threading.Lock()
        # token -> (deadline, connection, its socket once pinned)
        self._due: dict[int, tuple[float, http.client.HTTPConnection,
                                   socket.socket | None]] = {}
        self._expired: set[int] = set()
        self._count = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()  # the running thread's

    def watch(self, conn: http.client.HTTPConnection, deadline: float) -> int:
        """Watch ``conn`` until ``deadline``; a token for ``done``."""
        with self._lock:
            self._count += 1
            self._due[self._count] = (deadline, conn, None)
            if self._thread is None:
                # each thread has its own stop: after close(), the next watch starts anew
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._run, args=(self._stop,),
                                                daemon=True, name=self._name)
                self._thread.start()
            return self._count

    def move(self, token: int, deadline: float, sock: socket.socket | None = None) -> None:
        """Watch ``token`` until ``deadline`` now (a body paced by what came); nothing
        once its deadline has passed (the socket is shut down, or about to be). ``sock``:
        the request's socket, shut down instead of the connection's: http.client lets go
        of it (``conn.sock`` None) when the answer says the connection closes, while the
        body is still read from it."""
        with self._lock:
            watched = self._due.get(token)
            if watched is not None and token not in self._expired:
                self._due[token] = (deadline, watched[1], sock or watched[2])

    def done(self, token: int) -> bool:
        """Stop watching ``token``; whether its deadline passed."""
        with self._lock:
            self._due.pop(token, None)
            late = token in self._expired
            self._expired.discard(token)
            return late

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(0.1):
            now = time.monotonic()
            with self._lock:
                late = [(t, pinned or conn.sock) for t, (when, conn, pinned)
                        in self._due.items() if when <= now]
                for token, sock in late:
                    self._expired.add(token)
                    if sock is not None:  # else: still connecting (its own timeout)
                        del self._due[token]
            for _token, sock in late:
                if sock is not None:
                    # the raw socket's shutdown: a blocked read (TLS or not) returns at once
                    with contextlib.suppress(OSError):
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop the thread; a later ``watch`` starts another (an origin entered again)."""
        with self._lock:
            self._stop.set()
            self._thread = None
