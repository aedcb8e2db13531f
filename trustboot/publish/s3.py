"""``s3://bucket/prefix``: an S3-compatible object store (AWS S3, Ceph RGW, R2, MinIO, ...).

Through boto3, so the usual credential chain works (environment, ``AWS_PROFILE`` / shared
config, container and instance roles); ``OriginOptions.credentials`` of the basic kind
(``ACCESS_KEY:SECRET`` from a file or a named environment variable) overrides it. The chain
signs for whatever origin and endpoint it is given: ``trustboot release``, whose recipe
chooses them, lets it only for the origin the operator bound it to (``AmbientBinding``,
checked in ``trustboot.release.plan``). This module is imported only for s3:// origins, so
other commands never load boto3.

* Endpoint: ``OriginOptions.endpoint_url`` (https://; http:// only with ``unsafe_http``),
  path-style addressing (no wildcard DNS needed). Without it, AWS S3 for the configured region.
* TLS: verified against ``OriginOptions.ca_file`` only (the CLI's default is the pki's
  ca.crt; for AWS S3 or another public endpoint pass the system bundle as --ca-file). No CA
  is an error; verification is never off unless ``unsafe_no_verify``. A certificate that
  does not verify is a VerificationError (exit 4), as on the other backends.
* Checksums: ``when_required`` both ways, because Ceph RGW (16.x) rejects the flexible
  checksums current boto3 sends by default (PUT fails with MissingContentLength).
* Every object is stored with ``x-amz-meta-sha256`` (what ``stat`` reports, so a re-run
  uploads only what is missing or different) and, unless ``OriginOptions.public_read`` is
  False (``--no-public-read``), the canned ACL ``public-read``: booting clients fetch
  anonymously. Without it a bucket policy or a CDN (origin access) must grant reads; the
  read-back then goes through ``public_url`` (the CDN), or, when none is given, through
  authenticated reads from the store (the endpoint URL is not what clients fetch).
* A PUT (single or a completed multipart upload) is atomic per object: readers see the old
  object or the complete new one. Files above ``MULTIPART_THRESHOLD`` are sent in parts read
  straight from the file (memory stays at a few buffers whatever the size); a failed
  multipart upload is aborted.
* ``copy`` (the entry switch) is a server-side copy with ``Cache-Control: no-cache``: the
  entry object changes on every switch and must not be cached by a CDN.
* Deadlines: botocore's connect/read timeouts bound each socket operation, not a
  request, so a store that trickles its answer a byte at a time would hold the run
  forever. Every call (with botocore's retries) ends within ``timeout`` + (its upload +
  its answer) / MIN_RATE, as on WebDAV: the connections it sends on are registered with a
  watchdog (``deadline.Watchdog``) that shuts them down at the deadline, and the failure is
  "served too slowly" (exit 1), never retried. A GET's budget counts its ``max_size``,
  which alone let a small object trickled take what the largest may (66 s for a 4 MiB
  cap): the calls the store answers at once (GET, HEAD, a listing) are also given up on
  by what came, as on WebDAV: each request's head within ``timeout`` + HEAD_SECONDS, then
  its body at MIN_RATE after one timeout's grace (``deadline.paced``), the watchdog's
  deadline moved before each read to that of the bytes filling it (an object's reads
  begin at 64 KiB and double to 1 MiB), on the socket the request was sent on
  (http.client lets go of it when the answer says Connection: close). Uploads and
  copies keep the whole budget: the store works before it answers. The requests are
  sent by ``_Sender`` through botocore's public ``before-send`` event, on urllib3 pools
  whose connections register themselves: no private attribute of botocore is touched.
* Text the store sends (error codes and messages) goes through ``text.clean`` before it
  reaches a message: nothing the server wrote can move the terminal's cursor or forge a
  line of ours.
* ``lock``: the shared protocol of ``trustboot.publish.lock`` on a private lock object
  ``.trustboot-publish.lock``. Checked against the Ceph RGW 16.2.15 tested here: a PUT
  honours ``If-None-Match: *`` and ``If-Match: ETAG`` (412 otherwise; RGW wants the ETag
  without its quotes, so both forms are tried), a DELETE ignores ``If-Match`` (it deletes
  whatever the ETag). So every change to the lock is a conditional PUT:
  - create: ``If-None-Match: *``, exactly one publisher wins;
  - break a stale lock: no DELETE, but our record PUT with ``If-Match`` on the stale
    record's ETag (read together with the record judged stale): of two breakers exactly
    one replaces it, the other's precondition fails and it then finds a fresh lock;
  - heartbeat: ``If-Match`` on the ETag of our own last record, so a refresh never
    overwrites a lock someone else took;
  - release: the record is read and deleted if ours (an unconditional DELETE; only the
    holder releases, and nobody breaks a lock that is refreshed).
  Whether the store honours the header is checked each time (the same conditional PUT
  repeated must now fail); a store that ignores it (or answers 501) falls back to "ours
  if the object still carries our record after ``LOCK_SETTLE`` seconds". That fallback
  is best effort: it excludes publishers whose PUTs land within the settle period of each
  other, not a breaker whose PUT lands after another's settle: both then hold the lock
  until the first heartbeat (``HeldLock``) of the overwritten one finds it lost and stops
  it before its next write.
* Leftover multipart uploads: a publish killed mid-upload (SIGKILL, power, a network cut)
  leaves its parts stored and billed. Every lock taken aborts those, and only those
  (``_abort_stale_uploads``): uploads of release objects of this origin
  (``<prefix>/releases/<id>/...``; a nested origin's ``<prefix>/staging/releases/`` is not
  this one's) that the store initiated before this lock's record was written.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, urlsplit

import boto3
import botocore.exceptions as bexc
import botocore.session
import urllib3
import urllib3.exceptions as u3exc
from botocore.awsrequest import (
    AWSHTTPConnection,
    AWSHTTPConnectionPool,
    AWSHTTPSConnection,
    AWSHTTPSConnectionPool,
    AWSPreparedRequest,
    AWSResponse,
)
from botocore.config import Config
from botocore.httpsession import ProxyConfiguration, mask_proxy_url
from botocore.model import Shape
from botocore.parsers import ResponseParser, ResponseParserError, ResponseParserFactory
from botocore.utils import get_environ_proxies

from trustboot import jsonin
from trustboot.errors import ConfigError, OperationalError, VerificationError
from trustboot.publish.deadline import FIRST_READ, HEAD_SECONDS, Watchdog, paced, too_slow
from trustboot.publish.deadline import budget as deadline_budget
from trustboot.publish.fileorigin import LOCK_NAME
from trustboot.publish.http import tls_context, tls_failure
from trustboot.publish.lock import LOCK_STALE_AFTER, GuardedByLock, HeldLock, origin_lock
from trustboot.publish.manifest import RELEASES_PREFIX, release_id_problem, release_key_problem
from trustboot.publish.origin import (
    AgeUnknown,
    ListingBudget,
    ObjectStat,
    OriginOptions,
    TooLarge,
    check_key,
    check_prefix,
    check_web_url,
    key_problem,
)
from trustboot.publish.proxy import goes_direct

# the answer allowance of a call that is not a GET: WebDAV's
from trustboot.publish.webdav import MAX_ANSWER_BYTES as MAX_ANSWER
from trustboot.text import clean

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MULTIPART_THRESHOLD = 64 << 20  # above this, multipart (S3 caps a single PUT at 5 GiB)
PART_SIZE = 16 << 20
MAX_PARTS = 10_000
MAX_COPY_SIZE = 5 << 30  # a single server-side copy; entry objects are far smaller
# an object's body is read in reads of up to this, from deadline.FIRST_READ doubled each
# time (see S3Origin._chunks)
READ_CHUNK = 1 << 20
LOCK_SETTLE = 1.0
MAX_CONNECTIONS = 16  # per origin: botocore's pool and our sender's (_Sender) alike
SHA256_META = "sha256"
_HEX64 = re.compile(r"[0-9a-f]{64}")
# AWS's bucket rule (lower-case, digits, '.', '-'); also what RGW accepts by default.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _content_type(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    if name.endswith((".ipxe", ".txt")):
        return "text/plain; charset=utf-8"
    if name.endswith(".json"):
        return "application/json"
    return "application/octet-stream"


_current = threading.local()  # .watch: the _Watch of this thread's S3 call, if any


class _Watch:
    """The requests one S3 call (botocore's retries included) sends, each one's connection
    shut down by ``deadlines`` at its deadline (see the module docstring): all by
    ``budget`` seconds from the call's start. A prompt call's (``grace``: the request's own
    time, a server having nothing to do before it answers a GET, a HEAD or a listing) also
    by what came: the head within ``grace`` and HEAD_SECONDS of the request, then the body
    at MIN_RATE after ``grace`` (deadline.paced)."""

    def __init__(self, deadlines: Watchdog, budget: float, *,
                 grace: float | None = None) -> None:
        self.deadlines = deadlines
        self.budget = budget
        self.start = time.monotonic()
        self.due = self.start + budget
        self.grace = grace
        self.token: int | None = None  # the request on the wire (one at a time)
        self.sock: socket.socket | None = None  # its socket, once its answer's head is in
        self.begun = self.start  # when that head came in
        self.late = False

    def add(self, conn: Any) -> None:
        # botocore sends one request at a time: the one before this (an attempt retried)
        # is over, and its connection may already serve another thread's call
        self._settle()
        self.sock = None
        due = self.due if self.grace is None else \
            min(self.due, time.monotonic() + self.grace + HEAD_SECONDS)
        self.token = self.deadlines.watch(conn, due)

    def head_in(self, sock: socket.socket | None) -> None:
        """The request's answer has its head; its body comes on ``sock``."""
        self.begun = time.monotonic()
        self.sock = sock
        self.pace(0)

    def pace(self, received: int) -> None:
        """The answer's body is to have brought ``received`` bytes by its deadline: the
        request's deadline is moved to theirs (prompt calls; others keep the call's), and
        the socket pinned (http.client lets go of it, conn.sock None, when the answer
        says Connection: close, while the body is still read from it)."""
        if self.token is None:
            return
        due = self.due if self.grace is None else \
            min(self.due, paced(self.begun, self.grace, received))
        self.deadlines.move(self.token, due, self.sock)

    def end(self) -> bool:
        """Stop watching (again: a no-op); whether a deadline passed."""
        self._settle()
        self.late |= time.monotonic() >= self.due
        return self.late

    def _settle(self) -> None:
        if self.token is not None:
            self.late |= self.deadlines.done(self.token)
            self.token = None

    def too_slow(self, url: str) -> OperationalError:
        return too_slow(url, time.monotonic() - self.start)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        outer = getattr(_current, "watch", None)
        _current.watch = self
        try:
            yield
        finally:
            _current.watch = outer


def _sending(conn: Any) -> None:
    watch = getattr(_current, "watch", None)
    if watch is not None:
        watch.add(conn)


def _answered(sock: socket.socket | None) -> None:
    watch = getattr(_current, "watch", None)
    if watch is not None:
        watch.head_in(sock)


class _Late(OperationalError):
    """A request of a call given up on at its deadline (see _Sender.send)."""


# botocore's own connection classes, registering each request with the calling
# thread's _Watch (urllib3's connections are http.client connections: the Watchdog shuts
# down their socket) and telling it when the answer's head is in, with the socket its
# body comes on (taken before: conn.sock is None by then if the answer says
# Connection: close)
class _WatchedHTTPConnection(AWSHTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> Any:
        _sending(self)
        return super().request(*args, **kwargs)

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        sock = self.sock
        response = super().getresponse(*args, **kwargs)
        _answered(sock)
        return response


class _WatchedHTTPSConnection(AWSHTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> Any:
        _sending(self)
        return super().request(*args, **kwargs)

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        sock = self.sock
        response = super().getresponse(*args, **kwargs)
        _answered(sock)
        return response


class _WatchedHTTPPool(AWSHTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(AWSHTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


# An answer botocore reads whole into memory (everything but an object's body): a
# listing page of 1000 keys of up to 1 KiB each is about 1.3 MB; as WebDAV's listings.
MAX_ANSWER_READ = 16 << 20


class _CappedRaw:
    """A urllib3 response whose ``stream()`` (what AWSResponse.content reads) ends in
    TooLarge past MAX_ANSWER_READ bytes: a store's endless answer to a listing or a PUT
    otherwise filled memory until the call's deadline. Each read is paced by ``watch``
    (a prompt call's answer is given up on by what came, see _Watch)."""

    def __init__(self, raw: Any, where: str, watch: _Watch | None) -> None:
        self._raw = raw
        self._where = where
        self._watch = watch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def stream(self, amt: int = 1 << 16, decode_content: bool | None = None
               ) -> Iterator[bytes]:
        total = 0
        chunks = self._raw.stream(amt, decode_content)
        while True:
            if self._watch is not None:
                # a read returns once its buffer is full: the deadline of the bytes filling it
                self._watch.pace(total + amt)
            chunk = next(chunks, None)
            if chunk is None:
                return
            total += len(chunk)
            if total > MAX_ANSWER_READ:
                self._raw.close()
                raise TooLarge(f"{self._where}: the store's answer is larger than "
                               f"{MAX_ANSWER_READ} bytes", hint="check the S3 endpoint")
            yield chunk


class _StreamedRaw:
    """An object's body, which botocore's StreamingBody reads. A record that does not
    decrypt mid-body (a middlebox's corruption, a broken TLS stack) raises urllib3's
    SSLError, which StreamingBody passes on unwrapped: every read of an object or of the
    lock ended in an internal error (exit 70). As a ProtocolError it is botocore's
    ResponseStreamingError, a broken transfer, as a connection cut mid-body is."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def read(self, amt: int | None = None) -> bytes:
        try:
            data: bytes = self._raw.read(amt)
        except u3exc.SSLError as exc:
            raise u3exc.ProtocolError(f"TLS failed within the body: {exc}", exc) from exc
        return data


class _Sender:
    """Sends the S3 client's requests itself, on connections from the pools above, so the
    calling thread's _Watch sees each one. Through botocore's documented ``before-send``
    event (a handler's AWSResponse fulfils the request): botocore still signs, retries
    and parses; only the HTTP exchange is ours. It is botocore's own (URLLib3Session.send)
    in urllib3's public API, errors mapped to the same botocore exceptions (which its
    retries and ``S3Origin._error`` judge), proxies from the environment as botocore
    takes them."""

    def __init__(self, ssl_context: ssl.SSLContext, timeout: float, maxsize: int) -> None:
        self._kwargs: dict[str, Any] = {
            "timeout": urllib3.Timeout(connect=timeout, read=timeout),
            "maxsize": maxsize, "ssl_context": ssl_context}
        self._direct = self._watching(urllib3.PoolManager(**self._kwargs))
        self._proxied: dict[str, urllib3.PoolManager] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _watching(manager: urllib3.PoolManager) -> urllib3.PoolManager:
        manager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}
        return manager

    def _manager(self, url: str) -> tuple[urllib3.PoolManager, str | None]:
        parts = urlsplit(url)
        if goes_direct(parts.scheme, parts.hostname or "", parts.port):
            return self._direct, None  # no_proxy as the read-back and WebDAV read it
        proxies = get_environ_proxies(url)
        config = ProxyConfiguration(proxies=proxies)
        proxy = config.proxy_url_for(url)
        if not proxy:
            return self._direct, None
        with self._lock:
            if proxy not in self._proxied:
                self._proxied[proxy] = self._watching(urllib3.proxy_from_url(
                    proxy, proxy_headers=config.proxy_headers_for(proxy), **self._kwargs))
            return self._proxied[proxy], proxy

    def send(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        watch: _Watch | None = getattr(_current, "watch", None)
        # a request cut at its deadline is the end of its call, not retried: botocore
        # would send it again, each attempt trickled as long (and after a backoff)
        if watch is not None and watch.end():
            raise _Late(f"{request.url} was given up on at its deadline")
        try:
            return self._exchange(request, watch)
        except bexc.BotoCoreError:
            if watch is not None and watch.end():
                raise _Late(f"{request.url} was given up on at its deadline") from None
            raise

    def _exchange(self, request: AWSPreparedRequest, watch: _Watch | None) -> AWSResponse:
        url = request.url
        proxy: str | None = None
        try:
            manager, proxy = self._manager(url)
            conn = manager.connection_from_url(url)
            parts = urlsplit(url)
            # a plain-HTTP proxy takes the absolute URL; a tunnel (CONNECT) the path
            target = url if proxy and parts.scheme == "http" else \
                (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            encoding = request.headers.get("Transfer-Encoding", b"")
            chunked = (encoding.decode("latin-1") if isinstance(encoding, bytes)
                       else str(encoding)).lower() == "chunked"
            body: Any = request.body  # botocore's types and urllib3's differ in name only
            headers: Any = request.headers
            raw = conn.urlopen(method=request.method, url=target, body=body,
                               headers=headers, retries=urllib3.Retry(False),
                               assert_same_host=False, preload_content=False,
                               decode_content=False, chunked=chunked,
                               enforce_content_length=False)
            if request.stream_output and raw.status < 300:
                if raw.headers.get("Content-Length") is None and "chunked" not in \
                        str(raw.headers.get("Transfer-Encoding", "")).lower():
                    # a store sends an object with its length (or chunked): none is a head
                    # cut short (http.client takes the connection's end for the head's),
                    # and the body read to that end was the object, empty
                    raw.close()
                    raise u3exc.ProtocolError("the answer ended within its head")
                # an object's body: read (capped) by S3Origin.read. (An error's body
                # botocore reads whole to parse it: capped below like any answer.)
                return AWSResponse(url, raw.status, cast(Any, raw.headers), _StreamedRaw(raw))
            response = AWSResponse(url, raw.status, cast(Any, raw.headers),
                                   _CappedRaw(raw, f"{parts.netloc}{parts.path}", watch))
            response.content  # noqa: B018  (read now, within the call's watch)
            return response
        except u3exc.SSLError as exc:
            raise bexc.SSLError(endpoint_url=url, error=exc) from exc
        except (u3exc.NewConnectionError, socket.gaierror) as exc:
            raise bexc.EndpointConnectionError(endpoint_url=url, error=exc) from exc
        except u3exc.ProxyError as exc:
            raise bexc.ProxyConnectionError(proxy_url=mask_proxy_url(proxy or ""),
                                            error=exc) from exc
        except u3exc.ConnectTimeoutError as exc:
            raise bexc.ConnectTimeoutError(endpoint_url=url, error=exc) from exc
        except u3exc.ReadTimeoutError as exc:
            raise bexc.ReadTimeoutError(endpoint_url=url, error=exc) from exc
        except u3exc.ProtocolError as exc:
            raise bexc.ConnectionClosedError(error=exc, request=request,
                                             endpoint_url=url) from exc
        except (OSError, u3exc.HTTPError) as exc:
            raise bexc.HTTPClientError(error=exc) from exc

    def close(self) -> None:
        self._direct.clear()
        with self._lock:
            for manager in self._proxied.values():
                manager.clear()


class _Digest:
    """The running sha256 of a file sent in slices, one after the other."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()


class _FileSlice:
    """``length`` bytes of an open file from ``offset``, as a seekable request body.

    botocore rewinds it (seek(0)) to retry, and it has no fileno() on purpose: botocore would
    take the whole file's size from it. The bytes read feed ``digest`` once (a rewind restarts
    this slice's share), so what was sent can be compared with the digest the release
    claims; ``progress`` gets each byte once, retries excluded.
    """

    def __init__(self, fd: int, offset: int, length: int, digest: _Digest,
                 progress: Callable[[int], None] | None) -> None:
        self._fd, self._offset, self._length = fd, offset, length
        self._pos = 0
        self._reported = 0
        self._progress = progress
        self._digest = digest
        self._base = digest.h.copy()
        self._hashed = 0

    def __len__(self) -> int:
        return self._length

    def read(self, n: int = -1) -> bytes:
        left = self._length - self._pos
        if n is None or n < 0 or n > left:
            n = left
        if n <= 0:
            return b""
        data = os.pread(self._fd, min(n, 1 << 20), self._offset + self._pos)
        if not data:
            raise OperationalError("the local file became shorter during the upload",
                                   hint="do not modify the release directory during a publish")
        if self._pos == self._hashed:
            self._digest.h.update(data)
            self._hashed += len(data)
        self._pos += len(data)
        if self._progress is not None and self._pos > self._reported:
            self._progress(self._pos - self._reported)
            self._reported = self._pos
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, min(self._length, base + pos))
        if self._pos < self._hashed:  # a rewind to resend: hash this slice again
            self._digest.h = self._base.copy()
            self._hashed = 0
        return self._pos

    def tell(self) -> int:
        return self._pos


class _NoConditions(Exception):
    """The store refuses conditional PUTs (HTTP 501)."""


class MalformedAnswer(bexc.BotoCoreError):
    """An answer of the store botocore could not parse (a size that is no number, a date
    that is none): an error of the store like any other, not of trustboot."""

    fmt = "the store's answer could not be read: {error}"


def _field(answer: Mapping[str, Any], name: str) -> Any:
    """A field botocore leaves out when the store's answer lacks it (a header, an XML
    element): its absence is the store's error (exit 1), not a KeyError (exit 70)."""
    value = answer.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedAnswer(error=f"no {name}")
    return value


class _CheckedParsers(ResponseParserFactory):
    """botocore's parsers, whose failures on a malformed answer (ValueError from int() or
    the date parser, ResponseParserError, neither a BotoCoreError) are MalformedAnswer:
    a hostile or broken store's '<Size>abc</Size>' was an internal error (exit 70)."""

    def create_parser(self, protocol_name: str) -> ResponseParser:
        parser = super().create_parser(protocol_name)
        parse = parser.parse

        def checked(response: Mapping[str, Any], shape: Shape) -> Any:
            try:
                return parse(response, shape)
            except (ValueError, ResponseParserError) as exc:
                raise MalformedAnswer(error=clean(str(exc), limit=300)) from None

        parser.parse = checked  # type: ignore[method-assign]
        return parser


def _left_by_a_publish(name: str, base: str, initiated: object, taken: dt.datetime) -> bool:
    """Whether a multipart upload of ``name`` is a killed publish's leftover (see
    ``S3Origin._abort_stale_uploads``): a release object of this origin (``base`` is its
    ``releases/``), initiated before the lock was ``taken``."""
    if not name.startswith(base):
        return False
    release, _, key = name[len(base):].partition("/")
    if release_id_problem(release) is not None or release_key_problem(key) is not None:
        return False
    if not isinstance(initiated, dt.datetime) or initiated.tzinfo is None:
        return False  # undated: it may be anyone's, at any time
    return initiated < taken


class S3Origin(GuardedByLock):
    """An origin in an S3 bucket under an optional prefix (``s3://boot/prod``)."""

    def __init__(self, url: str, options: OriginOptions, *, public_read: bool | None = None,
                 multipart_threshold: int = MULTIPART_THRESHOLD,
                 part_size: int = PART_SIZE) -> None:
        parts = urlsplit(url)
        if (parts.scheme != "s3" or parts.query or parts.fragment or "@" in parts.netloc
                or ":" in parts.netloc):
            raise ConfigError(f"origin {url!r} is not an s3://BUCKET/PREFIX URL",
                              hint="no credentials, port, query or fragment in the URL; "
                                   "give the endpoint with --endpoint-url")
        bucket = parts.netloc
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise ConfigError(f"origin {url!r}: {bucket!r} is not a valid bucket name",
                              hint="3-63 characters: lower-case letters, digits, '.' and '-'")
        prefix = parts.path.strip("/")
        if prefix:
            check_key(prefix)
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/" + (f"{prefix}/" if prefix else "")
        self.options = options
        self.public_read = options.public_read if public_read is None else public_read
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.endpoint = self._check_endpoint(options)
        self._client: S3Client | None = None
        self._sender: _Sender | None = None
        self._lock_etag: str | None = None  # of the lock record this origin wrote last
        self._region = "us-east-1"
        self._deadlines = Watchdog(name="trustboot-s3-deadline")

    @staticmethod
    def _check_endpoint(options: OriginOptions) -> str | None:
        endpoint = options.endpoint_url
        if endpoint is None:
            return None
        ep = check_web_url(endpoint, "--endpoint-url", unsafe_http=options.unsafe_http)
        if ep.path not in ("", "/"):
            raise ConfigError(f"--endpoint-url {endpoint!r} must be scheme://host[:port] only",
                              hint="the bucket and prefix go into the s3://BUCKET/PREFIX "
                                   "origin URL")
        return endpoint.rstrip("/")

    # -- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> S3Origin:
        opts = self.options
        creds = opts.credentials
        kwargs: dict[str, Any] = {}
        if creds is not None:
            if creds.scheme != "basic" or not creds.username:
                raise ConfigError(f"S3 credentials from {creds.source} must be "
                                  "'ACCESS_KEY_ID:SECRET_ACCESS_KEY'",
                                  hint="or leave them out to use AWS_ACCESS_KEY_ID / "
                                       "AWS_PROFILE / the instance role")
            kwargs = {"aws_access_key_id": creds.username,
                      "aws_secret_access_key": creds.secret}
        try:
            core = botocore.session.Session()
            core.register_component("response_parser_factory", _CheckedParsers())
            session = boto3.session.Session(botocore_session=core, **kwargs)
        except bexc.BotoCoreError as exc:  # a broken profile in ~/.aws/config
            raise ConfigError(f"cannot load the AWS configuration: {exc}") from None
        self._region = session.region_name or "us-east-1"
        if opts.client_cert is not None:
            raise ConfigError("TLS client certificates are not supported for s3:// origins",
                              hint="S3 authenticates with access keys (SigV4); drop "
                                   "--client-cert")
        # The same rule as every origin: a CA is required (never the system store unless
        # given as --ca-file) and must load; the unsafe flag is the only way around it.
        tls_ctx = tls_context(ca_file=opts.ca_file, unsafe_no_verify=opts.unsafe_no_verify)
        verify: bool | str = False if opts.unsafe_no_verify else str(opts.ca_file)
        config = Config(
            region_name=self._region,
            signature_version="s3v4",
            connect_timeout=opts.timeout,
            read_timeout=opts.timeout,
            # total_max_attempts counts the first request (max_attempts counts retries
            # only: N + 1 there was one retry more than --retries N)
            retries={"total_max_attempts": opts.retries + 1, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path" if self.endpoint else "auto"},
            max_pool_connections=MAX_CONNECTIONS,
            user_agent_extra="trustboot",
        )
        self._client = session.client("s3", endpoint_url=self.endpoint, verify=verify,
                                      config=config)
        self._sender = _Sender(tls_ctx, opts.timeout, MAX_CONNECTIONS)
        # last: a handler registered later (one that looks at or holds a request) still
        # runs before the request is sent. (The stubs type every handler as returning
        # None; before-send's may answer.)
        self._client.meta.events.register_last("before-send.s3",
                                               cast(Callable[..., None], self._sender.send))
        return self

    def __exit__(self, *exc: object) -> None:
        self._deadlines.close()
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("use the origin as a context manager")
        return self._client

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self) -> str:
        return f" at {self.endpoint}" if self.endpoint else ""

    def _error(self, exc: Exception, key: str,
               action: str) -> OperationalError | ConfigError | VerificationError:
        """One clear error for every way a request fails."""
        what = f"{self.url}{key}: {action}"
        if isinstance(exc, bexc.ClientError):
            err = exc.response.get("Error", {})
            # the store's words: escaped (text.clean) before they reach a message
            code = clean(str(err.get("Code", "")), limit=100)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            msg = clean(str(err.get("Message", "")), limit=500) or code
            if code == "SignatureDoesNotMatch":
                return OperationalError(
                    f"{what} refused: the secret key does not match the access key "
                    "(SignatureDoesNotMatch)",
                    hint="check AWS_SECRET_ACCESS_KEY, the profile or the credentials file")
            if code == "InvalidAccessKeyId":
                return OperationalError(
                    f"{what} refused: the access key ID is unknown{self._where()} "
                    "(InvalidAccessKeyId)",
                    hint="check AWS_ACCESS_KEY_ID / the profile, and that --endpoint-url "
                         "is the store the keys belong to")
            # before the 403s: RGW answers a full quota with 403 QuotaExceeded
            if code in ("QuotaExceeded", "InsufficientStorage", "EntityTooLarge") \
                    or status == 507:
                return OperationalError(f"{what} failed: the store is out of space or "
                                        f"quota ({code or status}): {msg}",
                                        hint="free space or raise the quota, then run again "
                                             "(it resumes)")
            if code in ("AccessDenied", "AllAccessDisabled") or status == 403:
                # a HEAD answer has no body to tell a bad key from a missing permission
                keys = "check the access key and secret, and " if code in ("403", "") else ""
                return OperationalError(
                    f"{what} refused: access denied ({code or status})",
                    hint=f"{keys}the credentials need read/write/list/delete (and "
                         f"PutObjectAcl for public-read) on s3://{self.bucket}/{self.prefix}")
            if code == "AccessControlListNotSupported":
                return OperationalError(
                    f"{what} refused: bucket {self.bucket!r} has ACLs disabled (object "
                    "ownership 'bucket owner enforced'), so objects cannot be made "
                    "public-read one by one",
                    hint="grant anonymous s3:GetObject with a bucket policy (or serve through "
                         "a CDN) and publish without the public-read ACL")
            if code == "NoSuchBucket":
                return OperationalError(
                    f"{what} failed: bucket {self.bucket!r} does not exist{self._where()}",
                    hint=f"create it first (aws s3 mb s3://{self.bucket}"
                         + (f" --endpoint-url {self.endpoint}" if self.endpoint else "")
                         + ") or fix the origin URL")
            return OperationalError(f"{what} failed: {code or status}: {msg}")
        if isinstance(exc, bexc.SSLError):
            tls = tls_failure(self.endpoint or "the S3 endpoint", exc)
            if tls is not None:  # a certificate problem: exit 4, as on the other backends
                return tls
            return OperationalError(
                f"{what} failed: TLS verification of {self.endpoint or 'the endpoint'} "
                f"failed: {clean(str(exc), limit=500)}",
                hint="the endpoint's certificate must chain to --ca-file (default: the pki's "
                     "ca.crt) and name the host in --endpoint-url")
        if isinstance(exc, bexc.NoCredentialsError | bexc.PartialCredentialsError):
            return ConfigError(
                f"{what}: no S3 credentials found",
                hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or "
                     "give 'ACCESS_KEY_ID:SECRET' in a credentials file")
        if isinstance(exc, bexc.EndpointConnectionError | bexc.ConnectTimeoutError
                      | bexc.ReadTimeoutError | bexc.ConnectionClosedError):
            return OperationalError(f"{what} failed: cannot reach {self.endpoint or 'S3'} "
                                    f"after {self.options.retries} retries: "
                                    f"{clean(str(exc), limit=500)}",
                                    hint="check --endpoint-url and the network, then run "
                                         "again (it resumes)")
        if isinstance(exc, bexc.ResponseStreamingError):
            return OperationalError(f"{what} failed: the transfer broke off: "
                                    f"{clean(str(exc), limit=500)}",
                                    hint="run again; if it repeats, check what sits between "
                                         "here and the store (a proxy, a TLS middlebox)")
        return OperationalError(f"{what} failed: {clean(str(exc), limit=500)}")

    @contextlib.contextmanager
    def _timed(self, key: str, *, size: int = 0, budget: float | None = None,
               keep: bool = False, prompt: bool = False) -> Iterator[_Watch]:
        """One call within its deadline: ``timeout`` + (``size`` + MAX_ANSWER) / MIN_RATE,
        or ``budget``. A failure after it is "served too slowly" (see the docstring).
        ``keep``: still watched after a success (a body to read; the reader ends it).
        ``prompt``: a call the store answers at once (a GET, a HEAD, a listing), also
        given up on by what came: ``budget`` is what its largest answer may take, and a
        small one trickled must not take as long (a release.json, 4 MiB cap, held
        `publish rollback --timeout 2` for 66 s). Other calls may make the store work
        before it answers (an upload, a server-side copy): theirs is the whole budget."""
        watch = _Watch(self._deadlines, budget if budget is not None else
                       deadline_budget(self.options.timeout, size + MAX_ANSWER),
                       grace=self.options.timeout if prompt else None)
        try:
            with watch.active():
                yield watch
        except (bexc.BotoCoreError, bexc.ClientError, OperationalError) as exc:
            if not watch.end() or isinstance(exc, TooLarge):
                raise
            raise watch.too_slow(f"{self.url}{key}") from None
        except BaseException:
            watch.end()
            raise
        # an answer cut at the deadline can parse as a shorter one (urllib3 only logs
        # headers that end early): past the deadline nothing that arrived counts
        if (not keep or time.monotonic() >= watch.due) and watch.end():
            raise watch.too_slow(f"{self.url}{key}")

    @contextlib.contextmanager
    def _calling(self, key: str, action: str, *, size: int = 0,
                 prompt: bool = False) -> Iterator[None]:
        with self._timed(key, size=size, prompt=prompt):
            try:
                yield
            except (bexc.BotoCoreError, bexc.ClientError) as exc:
                raise self._error(exc, key, action) from None

    def _put_args(self, key: str, sha256: str) -> dict[str, Any]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key),
                                "Metadata": {SHA256_META: sha256},
                                "ContentType": _content_type(key)}
        if self.public_read:
            args["ACL"] = "public-read"
        return args

    # -- objects --------------------------------------------------------------------
    def stat(self, key: str) -> ObjectStat | None:
        full = self._full(key)
        try:
            with self._timed(key, prompt=True):
                head = self.client.head_object(Bucket=self.bucket, Key=full)
        except bexc.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error(exc, key, "HEAD") from None
        except bexc.BotoCoreError as exc:
            raise self._error(exc, key, "HEAD") from None
        size = head.get("ContentLength")
        if not isinstance(size, int) or size < 0:  # a HEAD answer without Content-Length
            raise self._error(MalformedAnswer(error="no Content-Length"), key, "HEAD")
        digest = head.get("Metadata", {}).get(SHA256_META)
        etag = head.get("ETag")
        return ObjectStat(size=size,
                          sha256=digest if digest and _HEX64.fullmatch(digest) else None,
                          etag=etag.strip('"') if etag else None)

    def put_file(self, key: str, path: Path, *, size: int, sha256: str,
                 progress: Callable[[int], None] | None = None) -> None:
        args = self._put_args(key, sha256)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            raise OperationalError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OperationalError(f"{path} is not a regular file")
            if st.st_size != size:
                raise OperationalError(
                    f"{path} is {st.st_size} bytes, not the {size} it had when hashed",
                    hint="do not modify the release directory during a publish")
            digest = _Digest()
            if size <= self.multipart_threshold:
                body = _FileSlice(fd, 0, size, digest, progress)
                self._check_lock()
                with self._calling(key, "upload", size=size):
                    self.client.put_object(Body=body, ContentLength=size,  # type: ignore[arg-type]
                                           **args)
                if digest.h.hexdigest() != sha256:
                    # never leave an object whose sha256 metadata lies (a re-run would skip it)
                    self.delete(key)
                    raise self._changed(path, key)
            else:
                self._multipart(key, fd, size, args, digest, progress, path=path)
        finally:
            os.close(fd)

    def _changed(self, path: Path, key: str) -> OperationalError:
        return OperationalError(
            f"{path} changed while it was uploaded to {self.url}{key} (its sha256 is no "
            "longer the one the release was built with)",
            hint="do not modify the release directory during a publish")

    def _multipart(self, key: str, fd: int, size: int, args: dict[str, Any], digest: _Digest,
                   progress: Callable[[int], None] | None, *, path: Path) -> None:
        part_size = max(self.part_size, -(-size // MAX_PARTS))
        with self._calling(key, "starting a multipart upload"):
            upload_id = _field(self.client.create_multipart_upload(**args), "UploadId")
        try:
            parts = []
            for number, offset in enumerate(range(0, size, part_size), start=1):
                length = min(part_size, size - offset)
                with self._calling(key, f"uploading part {number}", size=length):
                    r = self.client.upload_part(
                        Bucket=self.bucket, Key=args["Key"], UploadId=upload_id,
                        PartNumber=number, ContentLength=length,
                        Body=_FileSlice(fd, offset, length, digest,  # type: ignore[arg-type]
                                        progress))
                    parts.append({"PartNumber": number, "ETag": _field(r, "ETag")})
            if digest.h.hexdigest() != args["Metadata"][SHA256_META]:
                raise self._changed(path, key)  # before completing: nothing becomes visible
            self._check_lock()
            with self._calling(key, "completing a multipart upload"):
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=args["Key"], UploadId=upload_id,
                    MultipartUpload={"Parts": parts})  # type: ignore[typeddict-item]
        except BaseException:
            # parts of an unfinished upload are stored (and billed) until aborted
            with contextlib.suppress(bexc.BotoCoreError, bexc.ClientError):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=args["Key"],
                                                   UploadId=upload_id)
            raise

    def put_bytes(self, key: str, data: bytes, *, sha256: str) -> None:
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"put_bytes({key!r}): sha256 does not match the data")
        self._check_lock()
        with self._calling(key, "upload", size=len(data)):
            self.client.put_object(Body=data, ContentLength=len(data),
                                   **self._put_args(key, sha256))

    def read(self, key: str, *, max_size: int) -> Iterator[bytes]:
        full = self._full(key)
        # one deadline for the request and its body (read by _chunks): its head by the
        # timeout (and a second), then its body paced by what came
        try:
            with self._timed(key, budget=deadline_budget(self.options.timeout, max_size),
                             keep=True, prompt=True) as watch:
                obj = self.client.get_object(Bucket=self.bucket, Key=full)
        except bexc.ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) == "NoSuchKey":
                raise OperationalError(f"{self.url}{key} does not exist on the origin") \
                    from None
            raise self._error(exc, key, "GET") from None
        except bexc.BotoCoreError as exc:
            raise self._error(exc, key, "GET") from None
        body = obj["Body"]
        if int(obj.get("ContentLength", 0)) > max_size:
            body.close()
            watch.end()
            raise TooLarge(f"{self.url}{key} is larger than {max_size} bytes")
        return self._chunks(body, key, max_size, watch)

    def _chunks(self, body: Any, key: str, max_size: int, watch: _Watch) -> Iterator[bytes]:
        total = 0
        want = FIRST_READ
        try:
            while True:
                # a read returns once its buffer is full (or the body ends): the deadline
                # of the bytes that fill it, so the first reads are small
                watch.pace(total + want)
                chunk = body.read(want)
                if not chunk:
                    break
                want = min(2 * want, READ_CHUNK)
                total += len(chunk)
                if total > max_size:
                    raise TooLarge(f"{self.url}{key} is larger than {max_size} bytes")
                yield chunk
            if watch.end():  # the body may have been cut at the deadline (see _timed)
                raise watch.too_slow(f"{self.url}{key}")
        except (bexc.BotoCoreError, bexc.ClientError) as exc:
            if watch.end():
                raise watch.too_slow(f"{self.url}{key}") from None
            raise self._error(exc, key, "GET") from None
        finally:
            body.close()
            watch.end()

    def list(self, prefix: str) -> list[str]:
        check_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        out: list[str] = []
        budget = ListingBudget(f"{self.url}{prefix}")
        for page in self._pages(prefix, budget, Prefix=base + prefix):
            for item in page.get("Contents", []):
                full = item.get("Key", "")
                key = full[len(base):]
                budget.name(key)
                # outside the prefix (a store may answer so), not something we wrote, or
                # the lock: never hand it on
                if not full.startswith(base) or key == LOCK_NAME or key_problem(key):
                    continue
                out.append(key)
        return sorted(out)

    def _pages(self, prefix: str, budget: ListingBudget, **args: Any) -> Iterator[Any]:
        """list_objects_v2's pages, each request within its own deadline, all of them
        within ``budget``."""
        pages = iter(self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, **args))
        while True:
            budget.request()
            with self._calling(prefix, "listing", prompt=True):
                page = next(pages, None)
            if page is None:
                return
            yield page

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        check_prefix(prefix)
        col = prefix.rstrip("/")
        level = f"{self.prefix}/" if self.prefix else ""
        level += f"{col}/" if col else ""
        out: list[str] = []
        budget = ListingBudget(f"{self.url}{prefix}")
        # Delimiter '/': the store rolls every key below a "directory" up into one
        # CommonPrefixes entry, so the pages count directories, not objects
        for page in self._pages(prefix, budget, Prefix=level, Delimiter="/"):
            for item in page.get("CommonPrefixes", []):
                full = item.get("Prefix", "")
                budget.name(str(full))
                name = full[len(level):-1]
                # a store that answers with names outside the prefix, or ones we never
                # write: never hand them on
                if not full.startswith(level) or not full.endswith("/") or not name \
                        or "/" in name or key_problem(f"{col}/{name}" if col else name):
                    continue
                out.append(name)
        return sorted(out)

    def delete(self, key: str) -> None:
        self._check_lock()
        with self._calling(key, "DELETE"):
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def copy_many(self, pairs: Sequence[tuple[str, str]]) -> None:
        # each copy is already one atomic replace; nothing to stage before them
        self._check_lock(confirm=True)  # the entry switch: never on a lost lock
        for src_key, dst_key in pairs:
            self.copy(src_key, dst_key)

    def copy(self, src_key: str, dst_key: str) -> None:
        check_key(dst_key)
        self._check_lock()
        src = self.stat(src_key)
        if src is None:
            raise OperationalError(f"{self.url}{src_key} does not exist on the origin")
        if src.size > MAX_COPY_SIZE:
            raise OperationalError(f"{self.url}{src_key} is larger than 5 GiB: a single "
                                   "server-side copy cannot switch it")
        args = self._put_args(dst_key, src.sha256 or "")
        if src.sha256 is None:
            del args["Metadata"]
        extra: dict[str, Any] = {}
        if src.etag:
            # the object we looked at, not one replaced meanwhile (then the metadata would lie)
            extra["CopySourceIfMatch"] = src.etag
        # the store copies before it answers (AWS sends whitespace meanwhile): the budget
        # counts the object, as an upload's does
        with self._calling(dst_key, f"server-side copy from {src_key}", size=src.size):
            self.client.copy_object(CopySource={"Bucket": self.bucket,
                                                "Key": self._full(src_key)},
                                    MetadataDirective="REPLACE", CacheControl="no-cache",
                                    **extra, **args)

    # -- lock -----------------------------------------------------------------------
    def _get_lock(self) -> tuple[object, str | None]:
        """The lock's record and ETag; (None, None) when there is none."""
        try:
            # within a deadline, as every call: a store trickling the record held the
            # lock's taker (and the heartbeat, and the switch's check) for as long as it
            # liked
            with self._timed(LOCK_NAME, size=4097, prompt=True) as watch:
                obj = self.client.get_object(Bucket=self.bucket, Key=self._full(LOCK_NAME))
                with contextlib.closing(obj["Body"]) as body:
                    watch.pace(4097)
                    data = body.read(4097)
        except bexc.ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) == "NoSuchKey":
                return None, None
            raise self._error(exc, LOCK_NAME, "reading the lock") from None
        except bexc.BotoCoreError as exc:
            raise self._error(exc, LOCK_NAME, "reading the lock") from None
        try:
            record: object = jsonin.loads(data) if len(data) <= 4096 else "unreadable"
        except ValueError:
            record = "unreadable"
        return record, obj.get("ETag")

    def _read_lock(self) -> object:
        return self._get_lock()[0]

    def _put_lock(self, body: bytes, **condition: str) -> str | None:
        """PUT the lock object (private) under ``condition`` (IfNoneMatch or IfMatch): its
        new ETag, or None when the precondition failed. _NoConditions when the store
        refuses the header outright."""
        try:
            with self._timed(LOCK_NAME, size=len(body)):
                r = self.client.put_object(Bucket=self.bucket, Key=self._full(LOCK_NAME),
                                           Body=body, ContentType="application/json",
                                           **condition)  # type: ignore[arg-type]
        except bexc.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if condition and (code in ("PreconditionFailed", "ConditionalRequestConflict")
                              or status in (409, 412)):
                return None
            if condition and (code == "NotImplemented" or status == 501):
                raise _NoConditions from None
            raise self._error(exc, LOCK_NAME, "locking") from None
        except bexc.BotoCoreError as exc:
            raise self._error(exc, LOCK_NAME, "locking") from None
        return str(r.get("ETag") or "")

    def _replace_lock(self, body: bytes, etag: str) -> str | None:
        """PUT ``body`` if the lock's ETag is still ``etag`` (compare-and-swap): the new
        ETag, or None. RGW 16 compares If-Match without the quotes S3 puts around an
        ETag (the quoted form never matches there): each form is tried; neither matches
        another object."""
        forms = [etag] + ([etag.strip('"')] if etag.startswith('"') else [])
        for form in forms:
            new = self._put_lock(body, IfMatch=form)
            if new is not None:
                return new
        return None

    def _create_lock(self, body: bytes, settle: float) -> bool:
        """Create the lock object if absent; True if it is ours (see the module docstring)."""
        if self._read_lock() is not None:
            return False  # held (or stale): the shared protocol judges the holder
        try:
            etag = self._put_lock(body, IfNoneMatch="*")
            if etag is None:
                return False
            # Does the store honour If-None-Match? Then this second PUT must be refused.
            if self._put_lock(body, IfNoneMatch="*") is None:
                self._lock_etag = etag
                return True  # an atomic create: the lock is ours
        except _NoConditions:
            self._put_lock(body)
        return self._settled(body, settle)

    def _settled(self, body: bytes, settle: float) -> bool:
        """For a store that ignores conditions: let a racing PUT land, then look."""
        time.sleep(settle)
        record, etag = self._get_lock()
        if record != json.loads(body):
            return False
        self._lock_etag = etag
        return True

    def _break_lock(self, seen: object, body: bytes, settle: float) -> bool:
        """Replace a stale lock by ours if it is still the one judged stale: a PUT with
        If-Match on its ETag, so of two breakers exactly one wins (S3 has no conditional
        DELETE: RGW 16 deletes whatever If-Match says). True if the lock is now ours."""
        record, etag = self._get_lock()
        if record != seen or not etag:
            return False  # refreshed, released or taken meanwhile: look again
        try:
            new = self._replace_lock(body, etag)
            if new is None:
                return False  # another breaker (or the holder's refresh) was first
            # Does the store honour If-Match? Then the old ETag must not match any more.
            if self._replace_lock(body, etag) is None:
                self._lock_etag = new
                return True
        except _NoConditions:
            self._put_lock(body)
        return self._settled(body, settle)

    def _refresh_lock(self, body: bytes) -> bool:
        """The heartbeat's rewrite: only over our own last record (If-Match)."""
        try:
            new = self._replace_lock(body, self._lock_etag or "")
        except _NoConditions:
            new = self._put_lock(body)
        if new is None:
            return False
        self._lock_etag = new
        return True

    def _lock_written_at(self) -> dt.datetime | None:
        """When the store wrote the lock record this origin now holds, by the store's own
        clock (the listing's LastModified: to the millisecond on RGW, and in the same form
        as a multipart upload's Initiated); None if the store does not say."""
        key = self._full(LOCK_NAME)
        listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=key, MaxKeys=1)
        for entry in listing.get("Contents", []):
            when = entry.get("LastModified")
            if entry.get("Key") == key and isinstance(when, dt.datetime) and when.tzinfo:
                return when
        return None

    def _abort_stale_uploads(self) -> None:
        """Abort the multipart uploads a killed publish of this origin left.

        Parts of an upload that is never completed nor aborted stay stored (and billed)
        forever. Which uploads are a killed run's leftovers, and nobody else's:
        - under ``<prefix>/releases/<id>/`` only: trustboot uploads in parts nothing but
          release objects. Not the whole prefix (let alone the whole bucket for an origin
          without one): a bucket is shared with other applications, and an origin nested
          under this one (``s3://b/prod/staging`` in ``s3://b/prod``) has its own lock and
          its own uploads in progress. (An origin nested inside another's ``releases/``
          is not supported: prune and ``publish list`` take all of it for releases.)
        - initiated before this lock's record was written (both by the store's clock):
          one started since cannot be a leftover of a run that held the lock before us.
          A store that does not date the upload or the lock: nothing is aborted.
        Why on every lock taken and not only when a stale lock is broken: a killed run's
        lock is not always broken; the operator may delete it by hand, as the "locked"
        error suggests once the holder is gone, and then nobody would ever clean up.
        Under our lock no run of this origin uploads, so every acquisition may: a run
        whose lock we broke while it still lived (stopped, or cut off) fails at its next
        part or at the completion, where it checks the lock anyway.
        Best effort: a store or policy that refuses the listing just keeps the parts (an
        ``AbortIncompleteMultipartUpload`` lifecycle rule on the bucket covers that).
        """
        base = f"{self.prefix}/{RELEASES_PREFIX}/" if self.prefix else f"{RELEASES_PREFIX}/"
        with contextlib.suppress(bexc.BotoCoreError, bexc.ClientError, OperationalError), \
                self._timed("(multipart uploads)"):
            taken = self._lock_written_at()
            if taken is None:
                return
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=base)
            for page in pages:
                for up in page.get("Uploads", []):
                    name, upload_id = up.get("Key", ""), up.get("UploadId", "")
                    if upload_id and _left_by_a_publish(name, base, up.get("Initiated"),
                                                        taken):
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=name,
                                                           UploadId=upload_id)

    @contextlib.contextmanager
    def lock(self, owner: str, *, stale_after: float = LOCK_STALE_AFTER,
             refresh: float | None = None, settle: float = LOCK_SETTLE) -> Iterator[HeldLock]:
        with self._guarded(origin_lock(
                owner, where=self.url, remove_hint=f"delete {self.url}{LOCK_NAME}",
                try_create=lambda body: self._create_lock(body, settle),
                read=self._read_lock,
                break_stale=lambda seen, body: self._break_lock(seen, body, settle),
                release=lambda: self.delete(LOCK_NAME), rewrite=self._refresh_lock,
                stale_after=stale_after, refresh=refresh)) as held:
            self._abort_stale_uploads()
            yield held

    def remove_stale_temps(self, older_than: float) -> builtins.list[str]:
        # a PUT leaves no temporary object; the multipart uploads of a killed run are
        # aborted by the next run that takes the lock (_abort_stale_uploads)
        return []

    def folder_age(self, prefix: str) -> float | None:
        # By the store's clock, as _abort_stale_uploads judges a leftover: the objects'
        # LastModified and the uploads' Initiated against when the store wrote the lock
        # we hold (a moment ago at most: the age can only come out too young).
        full = self._full(check_prefix(prefix).rstrip("/")) + "/"
        with self._calling(LOCK_NAME, "listing"):
            taken = self._lock_written_at()
        if taken is None:
            return None
        dates: list[object] = []
        budget = ListingBudget(f"{self.url}{prefix}")
        for page in self._pages(prefix, budget, Prefix=full):
            for item in page.get("Contents", []):
                budget.name(str(item.get("Key", "")))
                dates.append(item.get("LastModified"))
        # an upload in parts under way there has no object yet
        with self._calling(prefix, "listing uploads", prompt=True):
            try:
                uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=full)
            except bexc.ClientError as exc:
                err = exc.response.get("Error", {})
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if err.get("Code") not in ("AccessDenied", "AllAccessDisabled") \
                        and status != 403:
                    raise
                # a policy may grant the objects and not this listing: without it an
                # upload under way there cannot be seen, so the folder has no age
                raise AgeUnknown(
                    f"{self.url} refused to list the uploads in parts under {prefix} "
                    "(ListMultipartUploads: access denied; these credentials lack "
                    "s3:ListBucketMultipartUploads)",
                    hint="grant s3:ListBucketMultipartUploads on the bucket to the "
                         "publishing credentials") from None
        if uploads.get("IsTruncated"):
            return None
        dates += [up.get("Initiated") for up in uploads.get("Uploads", [])]
        if not dates or not all(isinstance(d, dt.datetime) and d.tzinfo for d in dates):
            return None  # nothing there, or an entry the store does not date
        return (taken - max(cast(list[dt.datetime], dates))).total_seconds()

    def unlisted(self, prefix: str) -> builtins.list[str]:
        # the keys under it that `list` hands on to nobody (uploads in parts are no
        # objects: the next run that takes the lock aborts a killed run's)
        full = self._full(check_prefix(prefix).rstrip("/")) + "/"
        base = f"{self.prefix}/" if self.prefix else ""
        out: list[str] = []
        budget = ListingBudget(f"{self.url}{prefix}")
        for page in self._pages(prefix, budget, Prefix=full):
            for item in page.get("Contents", []):
                key = str(item.get("Key", ""))
                budget.name(key)
                if key.startswith(full) and not key_problem(key[len(base):]) \
                        and key[len(base):] != LOCK_NAME:
                    continue
                out.append(key[len(base):] if key.startswith(base) else key)
        return sorted(out)

    def remove_empty_folder(self, prefix: str) -> bool:
        # no folders in a bucket: one is gone once no key starts with it
        full = self._full(check_prefix(prefix).rstrip("/")) + "/"
        with self._calling(prefix, "listing", prompt=True):
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=full, MaxKeys=1)
        return not page.get("Contents")

    # -- URLs -----------------------------------------------------------------------
    def public_url(self, key: str) -> str | None:
        """``OriginOptions.public_url`` + key, else the endpoint's path-style URL (None
        for private objects: ``public_read`` False and no public URL given)."""
        path = quote(check_key(key), safe="/-._~")
        if self.options.public_url:
            return self.options.public_url.rstrip("/") + "/" + path
        if not self.public_read:
            return None  # private objects: clients fetch through a CDN we were not told of
        root = quote(self.prefix, safe="/-._~") + "/" if self.prefix else ""
        if self.endpoint:
            return f"{self.endpoint}/{self.bucket}/{root}{path}"
        if "." in self.bucket:  # a dotted bucket breaks the wildcard certificate
            return f"https://s3.{self._region}.amazonaws.com/{self.bucket}/{root}{path}"
        return f"https://{self.bucket}.s3.{self._region}.amazonaws.com/{root}{path}"

    def __repr__(self) -> str:
        return f"S3Origin({self.url!r}, endpoint={self.endpoint!r})"
