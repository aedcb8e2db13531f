"""HTTPS plumbing shared by the WebDAV origin, the read-back and ``origin check``.

* TLS trusts only what it is given (the private CA), never the system store; turning
  verification off needs ``unsafe_no_verify``.
* ``ipxe_tls=True`` narrows the client to what iPXE speaks (TLS 1.2, the AES-GCM/CBC suites
  it implements), so a read-back that succeeds is one iPXE can repeat.
* ``with_retries`` retries connection errors and 5xx with exponential backoff and ends in
  one OperationalError naming the URL; certificate failures are never retried.
* ``deadline_transport`` + ``total_deadline``: a per-read timeout alone does not bound an
  answer trickled a byte at a time (slowloris); every socket operation of a request made
  under ``total_deadline`` waits at most until the request's deadline (see MIN_RATE).
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpcore
import httpx

from trustboot.errors import ConfigError, OperationalError, VerificationError

# The cipher suites iPXE implements (src/crypto/mishmash/*: ECDHE/DHE/RSA with AES-CBC and
# AES-GCM; TLS 1.2 at most), in OpenSSL names, forward-secret and AEAD first.
IPXE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-SHA256", "ECDHE-RSA-AES128-SHA256",
    "ECDHE-ECDSA-AES256-SHA384", "ECDHE-RSA-AES256-SHA384",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
)
# Older iPXE builds (before ECDHE support) only offer plain RSA key exchange.
IPXE_LEGACY_CIPHERS = ("AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA256",
                       "AES256-SHA256")
USER_AGENT = "trustboot-publish (iPXE-compatible read-back)"

T = TypeVar("T")

# The slowest answer waited for: a request gets timeout + max_size / MIN_RATE seconds in
# all. The per-read timeout alone does not bound an answer trickled a byte at a time
# (slowloris): a hostile origin would hold a release (or a CI job) forever.
MIN_RATE = 64 << 10

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


class _DeadlineBackend(httpcore.NetworkBackend):
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


def deadline_transport(ctx: ssl.SSLContext, *, max_connections: int) -> httpx.HTTPTransport:
    """An httpx transport whose requests made under ``total_deadline`` end by then."""
    transport = httpx.HTTPTransport(verify=ctx, limits=httpx.Limits(
        max_connections=max_connections))
    # httpx takes no network backend: the pool it made is replaced by the same pool
    # over one that clamps each socket operation to the thread's deadline
    if not isinstance(getattr(transport, "_pool", None), httpcore.ConnectionPool):
        raise RuntimeError("this httpx version is not supported (no connection pool)")
    transport._pool = httpcore.ConnectionPool(
        ssl_context=ctx, max_connections=max_connections, keepalive_expiry=5.0,
        network_backend=_DeadlineBackend())
    return transport


@contextlib.contextmanager
def total_deadline(seconds: float, url: str, *, start: float | None = None
                   ) -> Iterator[float]:
    """Socket operations of ``deadline_transport`` requests on this thread end within
    ``seconds`` of ``start`` (time.monotonic(), default now); a transport error after that
    is the OperationalError "served too slowly" (not retried). Yields the deadline."""
    outer: float | None = getattr(_due, "at", None)
    at = (time.monotonic() if start is None else start) + seconds
    _due.at = at if outer is None else min(outer, at)
    try:
        yield _due.at
    except httpx.TransportError:
        if time.monotonic() < _due.at:
            raise
        raise too_slow(url, seconds) from None
    finally:
        _due.at = outer


def too_slow(url: str, seconds: float) -> OperationalError:
    return OperationalError(
        f"{url} was served too slowly: not complete after {seconds:.0f} s "
        f"(less than {MIN_RATE / 1024:.0f} KiB/s)",
        hint="check the origin and the network path to it; an origin that trickles "
             "its answers holds every client that boots from it")


class Deadlines:
    """Shuts down the connection of a request that outlives its deadline (see MIN_RATE):
    one thread per Reader or S3 origin, started on first use, looking a few times a
    second. For clients that are not httpx (``deadline_transport``): http.client and
    the urllib3 connections under boto3, which are http.client connections too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[int, tuple[float, http.client.HTTPConnection]] = {}
        self._expired: set[int] = set()
        self._count = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def watch(self, conn: http.client.HTTPConnection, deadline: float) -> int:
        with self._lock:
            self._count += 1
            self._due[self._count] = (deadline, conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="trustboot-deadline")
                self._thread.start()
            return self._count

    def done(self, token: int) -> bool:
        """Stop watching ``token``; whether its deadline passed."""
        with self._lock:
            self._due.pop(token, None)
            late = token in self._expired
            self._expired.discard(token)
            return late

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic()
            with self._lock:
                late = [(t, conn) for t, (when, conn) in self._due.items() if when <= now]
                for token, conn in late:
                    self._expired.add(token)
                    if conn.sock is not None:  # else: still connecting (its own timeout)
                        del self._due[token]
            for _token, conn in late:
                sock = conn.sock
                if sock is not None:
                    # the raw socket's shutdown: a blocked read (TLS or not) returns at once
                    with contextlib.suppress(OSError):
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()


def tls_context(*, ca_file: Path | None = None, ca_pem: bytes | None = None,
                client_cert: Path | None = None, client_key: Path | None = None,
                client_key_passphrase: bytes | None = None,
                unsafe_no_verify: bool = False, ipxe_tls: bool = False) -> ssl.SSLContext:
    """A client context trusting exactly ``ca_file``/``ca_pem``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ipxe_tls:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(":".join(IPXE_CIPHERS + IPXE_LEGACY_CIPHERS))
    if unsafe_no_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        if ca_file is None and ca_pem is None:
            raise ConfigError("no CA to verify the origin's TLS certificate with",
                              hint="pass --ca-file or --pki (its ca.crt is trusted)")
        try:
            if ca_file is not None:
                ctx.load_verify_locations(cafile=str(ca_file))
            if ca_pem is not None:
                ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"cannot load the origin CA {ca_file or '(trust roots)'}: "
                              f"{exc}", hint="pass a PEM CA certificate with --ca-file") from None
    if client_cert is not None:
        try:
            ctx.load_cert_chain(str(client_cert), str(client_key) if client_key else None,
                                password=client_key_passphrase)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the client certificate {client_cert}: {exc}",
                              hint="pass the PEM certificate and its key (and the key's "
                                   "passphrase) from `trustboot ca issue client`") from None
    return ctx


def tls_failure(url: str, exc: BaseException) -> VerificationError | None:
    """A certificate problem buried in an httpx error, as a VerificationError."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return VerificationError(
                f"the TLS certificate of {url} does not verify: {cause.verify_message}",
                hint="the origin must present a server certificate from your CA for this "
                     "host name (`trustboot ca issue server`), and --ca-file must be that CA",
                rule="origin-tls", subject=url)
        cause = cause.__cause__ or cause.__context__
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return VerificationError(f"the TLS certificate of {url} does not verify: {text}",
                                 hint="check --ca-file and the origin's certificate",
                                 rule="origin-tls", subject=url)
    return None


class RetryableStatus(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def with_retries(fn: Callable[[], T], *, url: str, what: str, retries: int,
                 backoff: float = 0.25, sleep: Callable[[float], None] = time.sleep,
                 retry_status: Sequence[int] = (500, 502, 503, 504, 507)) -> T:
    """``fn()``, retried on connection errors and 5xx; then a clear OperationalError."""
    attempt = 0
    while True:
        try:
            return fn()
        except RetryableStatus as exc:
            status = exc.response.status_code
            if status not in retry_status or attempt >= retries:
                raise OperationalError(
                    f"{what} {url}: the origin answered HTTP {status} "
                    f"{exc.response.reason_phrase} (after {attempt + 1} attempt(s))",
                    hint="507 means the origin's disk is full" if status == 507 else
                    "check the origin's error log; the run can simply be repeated (it resumes)",
                ) from None
            last = f"HTTP {status}"
        except httpx.TransportError as exc:
            tls = tls_failure(url, exc)
            if tls is not None:
                raise tls from None
            if attempt >= retries:
                raise OperationalError(
                    f"{what} {url} failed after {attempt + 1} attempt(s): "
                    f"{type(exc).__name__}: {exc}",
                    hint="check that the origin is up and reachable; the run resumes") from None
            last = type(exc).__name__
        attempt += 1
        delay = backoff * (2 ** (attempt - 1)) * (0.5 + random.random())  # noqa: S311 - jitter
        _ = last
        sleep(min(delay, 10.0))


def status_error(response: httpx.Response, what: str, url: str) -> OperationalError:
    """A non-retryable HTTP error, explained."""
    code = response.status_code
    hints = {
        401: "the origin wants credentials: --credentials-file/--credentials-env or a "
             "client certificate (--client-cert)",
        403: "the origin refused: listing (PROPFIND) and writes need a client certificate "
             "from your CA (--client-cert) or credentials allowed to write; with those, "
             "the web server itself may not be allowed to write its root (nginx answers "
             "403 when mkdir is denied: its error log says so; the root and the body temp "
             "directory belong to its worker user)",
        404: "the path does not exist on the origin (a missing collection?): check the "
             "origin URL",
        409: "a parent collection is missing on the origin",
        413: "the origin refuses objects this large (nginx client_max_body_size)",
        507: "the origin's disk is full",
    }
    return OperationalError(f"{what} {url}: HTTP {code} {response.reason_phrase}",
                            hint=hints.get(code, "check the origin's error log"))
