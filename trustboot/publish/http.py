"""HTTPS plumbing shared by the WebDAV origin, the read-back and ``origin check``.

* TLS trusts only what it is given (the private CA), never the system store; turning
  verification off needs ``unsafe_no_verify``.
* ``ipxe_tls=True`` narrows the client to what iPXE speaks (TLS 1.2, the AES-GCM/CBC suites
  it implements), so a read-back that succeeds is one iPXE can repeat.
* ``with_retries`` retries connection errors and 5xx with exponential backoff and ends in
  one OperationalError naming the URL; certificate failures are never retried.
* ``deadline_transport``: an httpx transport (public httpx/httpcore API only) whose
  requests made under ``trustboot.publish.deadline.total_deadline`` end by their deadline.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import httpcore
import httpx

from trustboot.errors import ConfigError, OperationalError, VerificationError, find_in_chain
from trustboot.fsutil import read_capped, write_fully
from trustboot.publish.deadline import DeadlineBackend
from trustboot.publish.origin import SERVER_CHAIN_HINT
from trustboot.publish.proxy import Proxy, proxy_for
from trustboot.text import clean

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

# httpcore's exceptions as the httpx ones callers catch (with_retries retries
# httpx.TransportError), as httpx's own HTTPTransport maps them.
_HTTPX_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
}


@contextlib.contextmanager
def _as_httpx_errors(proxy: Proxy | None = None) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        # the most specific: the first class of the exception's MRO that is mapped
        mapped = next((_HTTPX_ERRORS[c] for c in type(exc).__mro__ if c in _HTTPX_ERRORS),
                      None)
        if mapped is None:
            raise
        through = f" (through the proxy {proxy.shown})" if proxy else ""
        raise mapped(f"{exc}{through}") from exc


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, parts: Iterable[bytes]) -> None:
        self._parts = parts

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors():
            yield from self._parts

    def close(self) -> None:
        close = getattr(self._parts, "close", None)
        if close is not None:
            with _as_httpx_errors():
                close()


class DeadlineTransport(httpx.BaseTransport):
    """httpx's HTTPTransport, made of public httpx/httpcore API only, over a connection
    pool whose network backend keeps each request made under ``total_deadline`` within
    its deadline (httpx.HTTPTransport takes no network backend).

    ``backend`` replaces the direct connections' DeadlineBackend (one wrapping it, e.g. to
    keep what was read). ``socket_options`` are set on every socket it opens (e.g.
    SO_BINDTODEVICE); with ``proxies=False`` it never goes through a proxy, whatever the
    environment says (the httpx.Client over it needs ``trust_env=False`` too, or it mounts
    its own proxies)."""

    def __init__(self, ctx: ssl.SSLContext, *, max_connections: int,
                 socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                 proxies: bool = True,
                 backend: httpcore.NetworkBackend | None = None) -> None:
        self._ctx, self._max, self._proxies = ctx, max_connections, proxies
        self._options = list(socket_options) if socket_options is not None else None
        self._pool = httpcore.ConnectionPool(
            ssl_context=ctx, max_connections=max_connections, keepalive_expiry=5.0,
            network_backend=backend or DeadlineBackend(), socket_options=self._options)
        self._proxied: dict[Proxy, httpcore.HTTPProxy] = {}

    def _pool_for(self, url: httpx.URL) -> tuple[httpcore.ConnectionPool, Proxy | None]:
        if not self._proxies:
            return self._pool, None
        proxy = proxy_for(url.scheme, url.host, url.port)
        if proxy is None:
            return self._pool, None
        if proxy not in self._proxied:
            host = f"[{proxy.host}]" if ":" in proxy.host else proxy.host
            # https:// is tunnelled (CONNECT): TLS with self._ctx to the origin, end to end
            self._proxied[proxy] = httpcore.HTTPProxy(
                proxy_url=f"http://{host}:{proxy.port}", proxy_headers=list(proxy.headers.items()),
                ssl_context=self._ctx, max_connections=self._max, keepalive_expiry=5.0,
                network_backend=DeadlineBackend(), socket_options=self._options)
        return self._proxied[proxy], proxy

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.SyncByteStream):
            raise TypeError("an asynchronous request body on a synchronous transport")
        pool, proxy = self._pool_for(request.url)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host,
                             port=request.url.port, target=request.url.raw_path),
            headers=request.headers.raw, content=request.stream,
            extensions=request.extensions)  # the timeouts, sni_hostname, ...
        with _as_httpx_errors(proxy):
            answer = pool.handle_request(core)
        if not isinstance(answer.stream, Iterable):
            raise TypeError("an asynchronous response body on a synchronous transport")
        return httpx.Response(status_code=answer.status, headers=answer.headers,
                              stream=_ResponseStream(answer.stream),
                              extensions=answer.extensions)

    def close(self) -> None:
        with _as_httpx_errors():
            self._pool.close()
            for pool in self._proxied.values():
                pool.close()


def deadline_transport(ctx: ssl.SSLContext, *, max_connections: int) -> DeadlineTransport:
    """An httpx transport whose requests made under ``total_deadline`` end by then."""
    return DeadlineTransport(ctx, max_connections=max_connections)


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
                with loadable(_read_tls_file(ca_file, "origin CA file")) as path:
                    ctx.load_verify_locations(cafile=path)
            if ca_pem is not None:
                with loadable(ca_pem) as path:
                    ctx.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"cannot load the origin CA {ca_file or '(trust roots)'}: "
                              f"{exc}", hint="pass a PEM CA certificate with --ca-file") from None
    if client_cert is not None:
        from trustboot.keys.keyfile import check_key_encryption

        cert = _read_tls_file(client_cert, "client certificate")
        key = _read_tls_file(client_key, "client key") if client_key is not None else None
        # OpenSSL would run any KDF the key file asks for, for minutes, and take 40-bit RC2
        check_key_encryption(cert if key is None else key,
                             f"client key {client_key or client_cert}")
        try:
            with loadable(cert) as cert_path, \
                    (loadable(key) if key is not None else contextlib.nullcontext()) as key_path:
                ctx.load_cert_chain(cert_path, key_path, password=client_key_passphrase)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the client certificate {client_cert}: {exc}",
                              hint="pass the PEM certificate and its key (and the key's "
                                   "passphrase) from `trustboot ca issue client`") from None
    return ctx


# A CA bundle, a client certificate or key: a few KiB (a system bundle ~200 KiB).
MAX_TLS_FILE = 4 << 20


def _read_tls_file(path: Path, what: str) -> bytes:
    """The CA bundle or client certificate/key at ``path``, read once: a regular file of at
    most MAX_TLS_FILE bytes (read_capped: a FIFO there blocked the run forever, /dev/zero
    never ended; ConfigError naming the file). Links are followed: these are the user's
    own paths, and secret mounts (Kubernetes, Vault agents) are links."""
    return read_capped(path, MAX_TLS_FILE, what)


@contextlib.contextmanager
def loadable(data: bytes) -> Iterator[str]:
    """A path that reads ``data``, for OpenSSL calls that take only a path: a sealed
    in-memory file of this process (memfd), so what was read and checked is exactly what
    OpenSSL loads, whatever happens to the original path meanwhile (no window to swap
    it), and a client key never touches a disk."""
    fd = os.memfd_create("trustboot-tls", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        write_fully(fd, data)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                    | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def raw_answer(status: int, headers: httpx.Headers | Sequence[tuple[str, str]],
               content: bytes, request: httpx.Request | None = None) -> httpx.Response:
    """An answer whose body was read raw and capped, as an httpx.Response to judge: its
    Content-Encoding dropped, which httpx would otherwise undo in memory on the spot (a
    hostile origin's 1 MiB gzip answer is 1 GiB inflated; trustboot asks for identity,
    so an encoded body is only ever a broken answer, left as it came)."""
    kept = httpx.Headers(headers)
    kept.pop("content-encoding", None)
    return httpx.Response(status, headers=kept, content=content, request=request)


def unasked_encoding(headers: httpx.Headers, what: str, url: str) -> OperationalError | None:
    """The error for an answer whose body is encoded (Content-Encoding: gzip, ...) although
    trustboot asked for identity; None for a plain one. Its bytes are nothing to parse or
    hash (they are not what the origin holds), and are never inflated (see raw_answer)."""
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return None
    return OperationalError(
        f"{what} {url}: the origin sent an answer encoded with Content-Encoding "
        f"{clean(encoding, limit=40, ascii_only=True)}, which trustboot did not ask for "
        "(it asks for identity); refused",
        hint="turn compression off for these answers on the origin or the proxy in front "
             "of it (nginx: gzip off; a proxy that compresses whatever the client asks)")


def tls_failure(url: str, exc: BaseException) -> VerificationError | None:
    """A certificate problem buried in an httpx error, as a VerificationError."""
    cause = find_in_chain(exc, ssl.SSLCertVerificationError)
    if cause is not None:
        return VerificationError(
            f"the TLS certificate of {url} does not verify: {cause.verify_message}",
            hint=f"{SERVER_CHAIN_HINT}, and the CA trusted for it must be that CA "
                 "(--ca-file, or a recipe's origin.ca_file)",
            rule="origin-tls", subject=url)
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return VerificationError(f"the TLS certificate of {url} does not verify: {text}",
                                 hint="check the CA file (--ca-file, or a recipe's "
                                      "origin.ca_file) and the origin's certificate",
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
