"""Fetch what an origin serves the way iPXE will, and judge it with iPXE's rules.

The read-back uses the public HTTPS URL, trusts only the roots iPXE has compiled in (the same
TRUST= list serves HTTPS and code signing), speaks TLS 1.2 with iPXE's cipher suites, asks for
the identity encoding, and streams with a size cap, hashing as it goes (no object is held in
memory), or comparing it with the file this process published it from (``Tally``).
Signatures are judged by ``trustboot.cms.verify.verify_signature``.

Bodies are streamed with the standard library's ``http.client`` on the same TLS context,
not httpx: OpenSSL hands out one 16 KiB TLS record per read, and httpx/httpcore/h11 spend
a dozen Python calls on each (measured: 2.5 CPU s per 512 MiB against curl's 0.8; most of
the read-back's time). ``http.client`` fills a 1 MiB buffer in C (``readinto``), so the
cost left is TLS and SHA-256 (or the compare). One keep-alive connection per thread and
origin. The total deadline of each GET is the one policy of ``trustboot.publish.deadline``,
enforced by its ``Watchdog`` (a per-recv clamp cannot reach inside ``readinto``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from trustboot.cms.digest import file_stamp, recalled
from trustboot.cms.verify import (
    MAX_SIGNATURE_SIZE,
    Finding,
    TrustAnchor,
    Verdict,
    digest_algorithms,
    in_time_moment,
    verify_signature,
)
from trustboot.errors import (
    ConfigError,
    OperationalError,
    TrustbootError,
    VerificationError,
)
from trustboot.publish.deadline import (
    FIRST_READ,
    HEAD_SECONDS,
    MIN_RATE,
    Watchdog,
    budget,
    paced,
    too_slow,
)
from trustboot.publish.http import (
    RetryableStatus,
    raw_answer,
    status_error,
    tls_context,
    tls_failure,
    with_retries,
)
from trustboot.publish.origin import NotServed, TooLarge
from trustboot.publish.proxy import proxy_for
from trustboot.publish.stream import open_regular
from trustboot.text import clean

if TYPE_CHECKING:
    from trustboot.publish.revocation import Revocations

CHUNK = 1 << 20  # a body's largest read (its first: deadline.FIRST_READ, see _read_body)

# Redirects followed before the read-back gives up. iPXE follows the Location of any
# answer that is not a 2xx (a 3xx, or even a 404 with one), with no limit of its own
# (src/net/tcp/httpcore.c, http_transfer_complete); a CDN or a moved path needs one or
# two hops, a longer chain is a misconfigured origin.
MAX_REDIRECTS = 5

T = TypeVar("T")


@dataclass(frozen=True)
class Trust:
    """What the booting iPXE trusts, for verify-as-iPXE of served objects."""

    roots: tuple[TrustAnchor, ...]  # trustboot.cms.verify.TrustAnchor (TRUST=)
    extra_certs: tuple[bytes, ...] = ()  # DER, built in with CERT=
    signer_name: str | None = None  # imgverify --signer
    # Not iPXE's (it reads no CRL): which signers must not be made live (publish.revocation)
    revocation: Revocations | None = field(default=None, compare=False)

    def ca_pem(self) -> bytes | None:
        """The roots as PEM, for TLS to the origin (iPXE uses the same list for HTTPS)."""
        pems = [x509.load_der_x509_certificate(a.certificate).public_bytes(Encoding.PEM)
                for a in self.roots if a.certificate]
        return b"".join(pems) or None

    @property
    def ca_sha256(self) -> str | None:
        return self.roots[0].sha256.hex() if self.roots else None


def judge(signature: bytes, digests: dict[str, bytes], trust: Trust,
          now: dt.datetime) -> Verdict:
    return verify_signature(signature, digests, trust=list(trust.roots), now=now,
                            signer_name=trust.signer_name, extra_certs=list(trust.extra_certs))


# iPXE's verdicts (cms.verify) for a certificate used outside its validity at the clock
EXPIRY_RULES = frozenset({"expired", "not-yet-valid"})


def judge_beside_the_clock(signature: bytes, digests: dict[str, bytes], trust: Trust,
                           now: dt.datetime, *, signed_at: dt.datetime | None = None
                           ) -> tuple[Verdict, Finding | None]:
    """iPXE's verdict at ``now``; when its only failure is the clock (EXPIRY_RULES), the
    verdict at another moment instead, with the clock's failure beside it. That verdict
    tells who signed when nothing else is wrong (`publish list` shows an expired release's
    signer); it is not iPXE's at ``now``, and the gates judge at ``now`` (judge).
    (pipeline.signed_date, which dates a release, judges at the date it signs always.)

    The moment is ``signed_at``, the date the signed object itself states (release.json's
    ``created``), where it has one: the signer must have been valid then, since a key
    leaked after its certificate ended could otherwise sign any date. Without one, a
    moment every certificate of the chains is valid (in_time_moment)."""
    verdict = judge(signature, digests, trust, now)
    failure = verdict.failure
    if failure is None or failure.rule not in EXPIRY_RULES:
        return verdict, None
    moment = signed_at if signed_at is not None else in_time_moment(
        signature, trust=trust.roots, extra_certs=trust.extra_certs)
    if moment is None:
        return verdict, None
    return judge(signature, digests, trust, moment), failure


def signature_hashes(signature: bytes) -> set[str]:
    """Digests an image must be hashed with for this signature (sha256 always)."""
    try:
        return digest_algorithms(signature) | {"sha256"}
    except Exception:
        return {"sha256"}


@dataclass(frozen=True)
class Served:
    url: str
    size: int
    digests: dict[str, bytes]

    @property
    def sha256(self) -> str:
        return self.digests["sha256"].hex()


@dataclass(frozen=True)
class LocalCopy:
    """The file an object was published from, as this process hashed it (see Tally)."""

    path: Path
    stamp: tuple[int, ...]  # trustboot.cms.digest.file_stamp when it was hashed
    digests: dict[str, bytes]

    @classmethod
    def of(cls, path: Path, sha256: str) -> LocalCopy | None:
        """The file at ``path`` if this process hashed it, as it is now, and found
        ``sha256``; None otherwise (its object's read-back then hashes what is served)."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        digests = recalled(st)
        known = digests.get("sha256")
        if known is None or known.hex() != sha256:
            return None
        return cls(path, file_stamp(st), digests)


class Tally:
    """The size and digests of a body, fed chunk by chunk as it is read.

    Given the LocalCopy an object was published from, each chunk is compared with the
    file's bytes at the same offset instead of being hashed: a read from the page cache
    and a memcmp cost a tenth of SHA-256, which was most of a large read-back's CPU.
    Bytes equal to the file, which still has the stamp it had when this process hashed
    it, have its digests (the stamp has the strength ``trustboot.cms.digest`` explains).
    At the first difference, the bytes before it (equal to the file's) are hashed from
    the file and the rest as they come, so ``result()`` is always the digests of exactly
    the bytes fed; it is None only when the file changed meanwhile, as nothing is then
    known of what was fed: read it again without a LocalCopy. ``close()`` when done.
    """

    def __init__(self, names: Iterable[str], local: LocalCopy | None = None) -> None:
        self.names = tuple(sorted(set(names)))
        self.size = 0
        self._local = local
        self._fd = -1
        self._buf = bytearray()
        self._void = False
        self._hashers: list[Any] | None = None
        if local is not None and set(self.names) <= set(local.digests):
            self._fd = _open_unchanged(local)
        if self._fd < 0:
            self._hashers = [hashlib.new(name) for name in self.names]

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        n = len(chunk)
        if self._hashers is None:
            try:
                if not self._same(chunk, n):
                    self._diverge()
            except OSError:  # the file no longer reads: nothing vouches for what was fed
                self._void = True
                self.close()
                self._hashers = [hashlib.new(name) for name in self.names]
        if self._hashers is not None:
            for h in self._hashers:
                h.update(chunk)
        self.size += n

    def result(self) -> dict[str, bytes] | None:
        if self._hashers is None:
            assert self._local is not None
            if not self._unchanged():
                self._void = True
            elif self.size == self._local.stamp[2]:
                self.close()
                return {name: self._local.digests[name] for name in self.names}
            else:
                self._diverge()  # a shorter body: the file's first bytes
        self.close()
        if self._void or self._hashers is None:
            return None
        return {name: h.digest() for name, h in zip(self.names, self._hashers, strict=True)}

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _same(self, chunk: bytes | bytearray | memoryview, n: int) -> bool:
        if len(self._buf) != n:
            self._buf = bytearray(n)  # once for steady chunk sizes, again for the last
        # (bytearray == buffer is one memcmp; two memoryviews compare item by item)
        return _read_at(self._fd, self._buf, self.size) == n and self._buf == chunk

    def _diverge(self) -> None:
        """From here on, hash: first the bytes fed so far, from the file they equal."""
        hashers = [hashlib.new(name) for name in self.names]
        if self._unchanged():
            buf = memoryview(bytearray(min(CHUNK, self.size)))
            done = 0
            while done < self.size:
                piece = buf[:min(len(buf), self.size - done)]
                try:
                    complete = _read_at(self._fd, piece, done) == len(piece)
                except OSError:  # the file no longer reads: nothing vouches for what was fed
                    complete = False
                if not complete:
                    self._void = True  # (the stamp says it cannot have shrunk)
                    break
                for h in hashers:
                    h.update(piece)
                done += len(piece)
        else:
            self._void = True
        self.close()
        self._hashers = hashers

    def _unchanged(self) -> bool:
        assert self._local is not None
        try:
            return self._fd >= 0 and file_stamp(os.fstat(self._fd)) == self._local.stamp
        except OSError:
            return False


def _open_unchanged(local: LocalCopy) -> int:
    """A descriptor of ``local.path`` if it is still the regular file that was hashed."""
    try:
        fd, st = open_regular(local.path)
    except OperationalError:
        return -1
    if file_stamp(st) == local.stamp:
        return fd
    os.close(fd)
    return -1


def _read_at(fd: int, buf: bytearray | memoryview, offset: int) -> int:
    """Fill ``buf`` from ``fd`` at ``offset``; fewer bytes only at the end of the file."""
    view = memoryview(buf)
    got = 0
    while got < len(buf):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


class _LocalChanged(Exception):
    """The LocalCopy changed while the body was compared with it (see Tally.result)."""


class _Redirect(Exception):
    """A non-2xx answer with a Location (followed by ``Reader._following``)."""

    def __init__(self, status: int, location: str) -> None:
        super().__init__(f"HTTP {status} to {location}")
        self.status = status
        self.location = location


def _shown(url: str) -> str:
    """A URL an origin sent (a redirect's Location), safe and short in a message."""
    return clean(url, limit=300, ascii_only=True)


def _chain(urls: list[str]) -> str:
    return " -> ".join(_shown(u) for u in urls)


def _via(chain: list[str]) -> str:
    return f"reached by redirect: {_chain(chain)}"


def tally_chunks(chunks: Iterable[bytes], hash_names: Iterable[str],
                 local: LocalCopy | None = None) -> tuple[int, dict[str, bytes] | None]:
    """The size and digests of ``chunks`` (a Tally fed them all; see Tally.result for
    when the digests are None)."""
    tally = Tally(hash_names, local)
    try:
        for chunk in chunks:
            tally.feed(chunk)
        return tally.size, tally.result()
    finally:
        tally.close()


def hash_chunks(chunks: Iterable[bytes], hash_names: Iterable[str]) -> tuple[int, dict[str, bytes]]:
    size, digests = tally_chunks(chunks, hash_names)
    assert digests is not None  # (no LocalCopy: hashed, never void)
    return size, digests


def _read_body(response: http.client.HTTPResponse, tally: Tally, url: str,
               max_size: int, body: list[bytes] | None,
               pace: Callable[[int], None] | None = None) -> int:
    """The body into ``tally`` (and ``body``); before each read, ``pace(n)`` with the
    bytes the body will have once that read's buffer is full (the request's deadline is
    moved to theirs: trustboot.publish.deadline.paced)."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    size = 0
    want = FIRST_READ
    while True:
        if pace is not None:
            pace(size + want)
        if not (n := response.readinto(view[:want])):
            break
        want = min(2 * want, CHUNK)
        size += n
        if size > max_size:
            raise TooLarge(f"{url} is larger than {max_size} bytes",
                           hint="the origin serves something else than what was published")
        tally.feed(view[:n])
        if body is not None:
            body.append(bytes(view[:n]))
    return size


class Reader:
    """An HTTPS client that sees what iPXE sees."""

    def __init__(self, *, ca_file: Path | None = None, ca_pem: bytes | None = None,
                 unsafe_no_verify: bool = False, unsafe_http: bool = False,
                 timeout: float = 30.0, retries: int = 4, ipxe_tls: bool = True,
                 min_rate: float = MIN_RATE) -> None:
        self.unsafe_http = unsafe_http
        self.retries = retries
        self.timeout = timeout
        self.min_rate = min_rate
        self._deadlines = Watchdog(name="trustboot-readback-deadline")
        ctx = tls_context(ca_file=ca_file, ca_pem=ca_pem, unsafe_no_verify=unsafe_no_verify,
                          ipxe_tls=ipxe_tls)
        self._ctx = ctx
        self._local = threading.local()
        self._conns: list[http.client.HTTPConnection] = []
        self._conns_lock = threading.Lock()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._deadlines.close()
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    def _connection(self, scheme: str, host: str, port: int | None
                    ) -> http.client.HTTPConnection:
        """This thread's keep-alive connection to (scheme, host, port)."""
        conns: dict[tuple[str, str, int | None], http.client.HTTPConnection] = \
            self._local.__dict__.setdefault("conns", {})
        key = (scheme, host, port)
        conn = conns.get(key)
        if conn is None:
            proxy = proxy_for(scheme, host, port)
            # through a proxy: a CONNECT tunnel to the origin, TLS end to end inside it
            at = (proxy.host, proxy.port) if proxy else (host, port)
            conn = (http.client.HTTPSConnection(*at, timeout=self.timeout,
                                                context=self._ctx) if scheme == "https"
                    else http.client.HTTPConnection(*at, timeout=self.timeout))
            if proxy:
                conn.set_tunnel(host, port, headers=proxy.headers)
            conns[key] = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def connect(self, url: str) -> ssl.SSLSocket:
        """Open this thread's connection to ``url``'s host now (TCP and the TLS handshake,
        with this Reader's trust and iPXE's suites) and return its TLS socket, to see
        what the handshake negotiated; the next request to that host goes on it, so a
        check costs one handshake. Errors as the socket raises them (OSError, ssl);
        TimeoutError when it all takes longer than the timeout."""
        parts = urlsplit(url)
        where = (parts.scheme, parts.hostname or "", parts.port)
        if parts.scheme != "https":
            raise ConfigError(f"{url!r} is not an https:// URL")
        conn = self._connection(*where)
        if conn.sock is None:
            # the tunnel and the handshake within one timeout in all: a proxy or an origin
            # trickling them a byte at a time (each in time for the per-read timeout)
            # held `origin check` forever
            seconds = budget(self.timeout, 0, min_rate=self.min_rate)
            token = self._deadlines.watch(conn, time.monotonic() + seconds)
            try:
                conn.connect()
            except BaseException:
                late = self._deadlines.done(token)
                self._drop_connection(*where)
                if not late:
                    raise
            else:
                late = self._deadlines.done(token)  # (shut down as it finished: no use)
                if late:
                    self._drop_connection(*where)
            if late:
                proxy = proxy_for(*where)
                through = f" through the proxy {proxy.shown}" if proxy else ""
                raise TimeoutError(f"connecting{through} and the TLS handshake were not "
                                   f"done after {seconds:.0f} s")
        if not isinstance(conn.sock, ssl.SSLSocket):  # https: always TLS
            raise RuntimeError(f"no TLS socket to {url}")
        return conn.sock

    def _drop_connection(self, scheme: str, host: str, port: int | None) -> None:
        conn = self._local.__dict__.get("conns", {}).pop((scheme, host, port), None)
        if conn is not None:
            conn.close()

    @staticmethod
    def _send(conn: http.client.HTTPConnection, target: str
              ) -> tuple[http.client.HTTPResponse, socket.socket | None]:
        """The answer's head, and the socket its body comes on (``conn.sock`` is None
        once an answer says the connection closes: see Watchdog.move)."""
        headers = {"Accept-Encoding": "identity", "User-Agent": "iPXE/2 (trustboot)"}
        reused = conn.sock is not None
        try:
            conn.request("GET", target, headers=headers)
            sock = conn.sock
            return conn.getresponse(), sock
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if not reused:
                raise
        # the server closed the idle keep-alive connection: once more on a new one, opened
        # by the same connection object, which the request's watchdog watches (a new
        # object was not: the origin could trickle the retried answer for ever)
        conn.close()
        conn.request("GET", target, headers=headers)
        sock = conn.sock
        return conn.getresponse(), sock

    def _get_hashed(self, url: str, max_size: int, names: tuple[str, ...],
                    body: list[bytes] | None = None, *, due: float | None = None,
                    local: LocalCopy | None = None) -> Served:
        """One GET of ``url`` over http.client, hashed into ``names`` (see the module doc);
        the bytes are also appended to ``body`` if given. OperationalError (not retried)
        when the answer takes longer than its deadline (``trustboot.publish.deadline``),
        which is ``budget`` from now but no later than ``due + budget`` (a redirect
        chain's)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn = self._connection(parts.scheme, host, parts.port)
        # (the environment read again: it named this connection's proxy, if any)
        proxy = proxy_for(parts.scheme, host, parts.port)
        seconds = budget(self.timeout, max_size, min_rate=self.min_rate)
        now = time.monotonic()
        limit = (now if due is None else min(now, due)) + seconds
        # ``limit`` is what the largest answer may take; a small one trickled must not take
        # as long (an entry script may, by its 16 MiB cap, hold `origin check --timeout 2`
        # for 258 s): the head within the timeout and a second, then the body at min_rate
        # by what came
        token = self._deadlines.watch(conn, min(limit, now + self.timeout + HEAD_SECONDS))

        def pace(begun: float, received: int, sock: socket.socket | None) -> None:
            self._deadlines.move(token, min(limit, paced(begun, self.timeout, received,
                                                         min_rate=self.min_rate)), sock)

        try:
            served = self._get_on(conn, url, (parts.scheme, host, parts.port), target,
                                  max_size, names, body, local, pace)
        except BaseException:
            if not self._deadlines.done(token):
                raise
            late = True
        else:
            # a connection shut down at its deadline may look like an answer that ended
            late = self._deadlines.done(token)
        if late:
            self._drop_connection(parts.scheme, host, parts.port)
            # (a tunnel the proxy never opens looks the same)
            through = f" (through the proxy {proxy.shown})" if proxy else ""
            raise too_slow(url, time.monotonic() - now, min_rate=self.min_rate,
                           via=through) from None
        return served

    def _get_on(self, conn: http.client.HTTPConnection, url: str,
                where: tuple[str, str, int | None], target: str, max_size: int,
                names: tuple[str, ...], body: list[bytes] | None,
                local: LocalCopy | None,
                pace: Callable[[float, int, socket.socket | None], None]) -> Served:
        """``pace(begun, received, sock)``: the body begun at ``begun`` on ``sock`` is to
        have ``received`` bytes by its deadline (see _get_hashed)."""
        scheme, host, port = where
        try:
            response, sock = self._send(conn, target)
            begun = time.monotonic()
            location = response.getheader("location")
            if location and not 200 <= response.status < 300:
                # as iPXE: a Location is followed on any answer but a success, not only
                # on a 3xx (httpcore.c, http_transfer_complete)
                raise _Redirect(response.status, location)
            if response.status != 200:
                pace(begun, 64 << 10, sock)
                answer = response.read(64 << 10)
                self._status(raw_answer(response.status, response.getheaders(), answer),
                             url)
            encoding = (response.getheader("content-encoding") or "identity").lower()
            if encoding not in ("identity", ""):
                raise OperationalError(
                    f"{url} was served with Content-Encoding {encoding}; iPXE would hash "
                    "the encoded bytes", hint="turn off gzip for boot files on the origin")
            length = response.length  # None when chunked
            tally = Tally(names, local)
            try:
                size = _read_body(response, tally, url, max_size, body,
                                  lambda received: pace(begun, received, sock))
                if length is not None and size != length:
                    # http.client ends a body cut short quietly: a transfer error
                    # (retried), not a digest of the part that arrived
                    raise http.client.IncompleteRead(b"", length - size)
                digests = tally.result()
            finally:
                tally.close()
            if response.will_close:
                self._drop_connection(scheme, host, port)
            if digests is None:
                raise _LocalChanged(url)
            return Served(url, size, digests)
        except (OSError, http.client.HTTPException) as exc:
            proxy = proxy_for(scheme, host, port)
            self._drop_connection(scheme, host, port)
            # as an httpx transport error: with_retries retries it, or reports the TLS
            # certificate failure it wraps (see http.tls_failure)
            through = f" (through the proxy {proxy.shown})" if proxy else ""
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}{through}") from exc
        except BaseException:
            self._drop_connection(scheme, host, port)
            raise

    def _check_url(self, url: str) -> None:
        scheme = urlsplit(url).scheme
        if scheme == "http" and not self.unsafe_http:
            raise ConfigError(f"public URL {url} is plain HTTP",
                              hint="iPXE should fetch over https://; --unsafe-http allows it")
        if scheme not in ("http", "https"):
            raise ConfigError(f"public URL {url!r} is not https://")

    def _following(self, url: str, get: Callable[[str, float], T]) -> T:
        """``get(hop_url, chain_deadline)`` along the redirects from ``url``, as iPXE
        follows them: any answer but a 2xx that has a Location (a 3xx, but also a 404
        with one), resolved against the URL that answered.
        What is judged is what the last URL serves. Every hop is TLS-verified with the
        same roots and has its own deadline; the chain ends by ``chain_deadline`` (one
        request's budget plus ``timeout`` per hop). A hop that leaves https (iPXE would
        follow it), a loop or more than MAX_REDIRECTS hops is an error naming the chain."""
        chain = [url]
        start = time.monotonic()
        while True:
            hop = chain[-1]
            try:
                return get(hop, start + (len(chain) - 1) * self.timeout)
            except _Redirect as redirect:
                try:
                    target = urljoin(hop, redirect.location.strip())
                except ValueError:  # "https://[::1/": _check_hop says what is wrong
                    target = redirect.location.strip()
                self._check_hop(chain, target, redirect.status)
                chain.append(target)
            except httpx.TransportError as exc:
                tls = tls_failure(hop, exc) if len(chain) > 1 else None
                if tls is None:
                    raise
                raise VerificationError(f"{tls.message} ({_via(chain)})", hint=tls.hint,
                                        rule=tls.rule, subject=hop) from None
            except TrustbootError as exc:
                if len(chain) > 1:
                    exc.message = f"{exc.message} ({_via(chain)})"
                raise

    def _check_hop(self, chain: list[str], target: str, status: int) -> None:
        shown = [*chain, target]
        try:
            parts = urlsplit(target)
            _ = parts.port  # ValueError for a port out of range or not a number
            valid = target.isascii() and not any(c.isspace() or not c.isprintable()
                                                  for c in target)
        except ValueError:
            valid = False
        if not valid:
            # (http.client would refuse it, or fail to encode it, on the next request)
            raise OperationalError(f"{_shown(chain[-1])} redirects (HTTP {status}) to "
                                   f"{_shown(target)!r}, which is not a valid URL",
                                   hint="fix the redirect on the origin (a URL is ASCII, "
                                        "with spaces and the like %-encoded)")
        if parts.scheme != "https" and not (parts.scheme == "http" and self.unsafe_http):
            raise VerificationError(
                f"{_shown(chain[-1])} redirects (HTTP {status}) to {_shown(target)}, which is "
                f"not https:// ({_chain(shown)})",
                hint="iPXE would follow it and fetch the rest of the boot chain without TLS, "
                     "where anyone on the path can answer instead of the origin (a signed "
                     "image still verifies, but what the boot fetches and when is theirs to "
                     "choose); make the origin redirect to https:// only",
                rule="origin-redirect", subject=chain[0])
        if not parts.hostname:
            raise OperationalError(f"{_shown(chain[-1])} redirects (HTTP {status}) to "
                                   f"{_shown(target)!r}, which names no host",
                                   hint="fix the redirect on the origin")
        if target in chain:
            raise OperationalError(f"{_shown(chain[0])} redirects in a loop: {_chain(shown)}",
                                   hint="fix the redirects on the origin (iPXE would "
                                        "loop until its download times out)")
        if len(chain) > MAX_REDIRECTS:
            raise OperationalError(
                f"{_shown(chain[0])} redirects more than {MAX_REDIRECTS} times: "
                f"{_chain(shown)}", hint="point the origin's redirect at the final location")

    def stream(self, url: str, *, max_size: int, hash_names: Iterable[str] = ("sha256",),
               local: LocalCopy | None = None) -> Served:
        """GET ``url`` (following redirects) and hash it while streaming, or compare it
        with ``local``, the file it was published from (see Tally); more than
        ``max_size`` is an error. ``Served.url`` is where the bytes came from."""
        self._check_url(url)
        names = tuple(sorted(set(hash_names) | {"sha256"}))

        def once(copy: LocalCopy | None) -> Served:
            return self._following(url, lambda hop, due: self._get_hashed(
                hop, max_size, names, due=due, local=copy))

        try:
            return with_retries(lambda: once(local), url=url, what="fetching",
                                retries=self.retries)
        except _LocalChanged:  # (the file was written meanwhile: what was read is unknown)
            return with_retries(lambda: once(None), url=url, what="fetching",
                                retries=self.retries)

    def fetch(self, url: str, *, max_size: int) -> bytes:
        """GET ``url`` whole (a signature, a script), following redirects; more than
        ``max_size`` is an error."""
        self._check_url(url)

        def once() -> bytes:
            body: list[bytes] = []
            self._following(url, lambda hop, due: self._get_hashed(
                hop, max_size, ("sha256",), body, due=due))
            return b"".join(body)

        return with_retries(once, url=url, what="fetching", retries=self.retries)

    @staticmethod
    def _status(response: httpx.Response, url: str) -> None:
        code = response.status_code
        if code == 200:
            return
        if code >= 500:
            raise RetryableStatus(response)
        if code in (403, 404, 410):
            raise NotServed(f"the origin does not serve {url} (HTTP {code})",
                            hint="the object is missing on the origin or not readable "
                                 "anonymously; iPXE fetches without credentials",
                            status=code)
        raise status_error(response, "fetching", url)

    def verify_pair(self, image_url: str, sig_url: str, *, trust: Trust, now: dt.datetime,
                    max_size: int) -> tuple[Served, Verdict]:
        """Fetch an image and its .sig as iPXE would (image first) and judge them."""
        served = self.stream(image_url, max_size=max_size, hash_names=("sha256", "sha384",
                                                                        "sha512", "sha1",
                                                                        "sha224"))
        signature = self.fetch(sig_url, max_size=MAX_SIGNATURE_SIZE)
        return served, judge(signature, served.digests, trust, now)
