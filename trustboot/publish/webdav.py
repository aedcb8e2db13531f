"""``https://host/path/``: a WebDAV origin (nginx + dav-ext, Apache mod_dav, ...) over httpx.

Written on httpx directly rather than webdav4: the operations needed are six verbs, and
owning them keeps control of what matters here (a streamed body with an exact
Content-Length and no buffering, PUT-to-temp + MOVE for atomic replace, retries that
re-open the file, per-status hints, TLS trusting only the private CA) without an fsspec
layer and its dependencies.

* put: PUT to ``.tb-tmp.staging/<random>.<name>``, then MOVE with ``Overwrite: T``
  (a rename on the server): readers see the old or the whole new object. All temporary
  objects live in that one staging collection, so what a killed upload leaves behind is
  found with one PROPFIND and removed by the next run once it is an hour old
  (``remove_stale_temps``).
* staging (``origin.StagingOrigin``): ``stage_file`` PUTs a file to the staging collection
  while hashing it (one read), ``place_staged`` MOVEs it to its key later; what a killed
  run staged is swept like any temporary object.
* collections: MKCOL each missing parent (405 = exists).
* list: PROPFIND ``Depth: 1`` per collection (``list_dirs``: of the one collection),
  parsed by ElementTree with DTDs and entity declarations refused (a multistatus never
  has one; billion-laughs never parses).
* lock: ``.trustboot-lock/`` holding ``owner.json``, made in the staging collection and
  MOVEd into place with ``Overwrite: F`` (atomic: exactly one client gets 201, and the lock
  never exists without its record); a stale lock (dead pid on this host, or old) is moved
  aside with MOVE ``Overwrite: F`` before being deleted, so two breakers cannot both win.
  The heartbeat's rewrite moves the lock aside the same way, and puts a new record in
  place only if the one aside was ours (``lock.swap_record``): nginx's dav module
  ignores If-Match on PUT and MOVE, so ``Overwrite: F`` is the conditional there is.
"""

from __future__ import annotations

import builtins
import contextlib
import email.utils
import hashlib
import re
import secrets
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, cast
from urllib.parse import SplitResult, quote, unquote, urlsplit

import httpx

from trustboot import jsonin
from trustboot.errors import ConfigError, OperationalError
from trustboot.publish.deadline import (
    HEAD_SECONDS,
    MIN_RATE,
    budget,
    paced,
    too_slow,
    total_deadline,
)
from trustboot.publish.fileorigin import TMP_PREFIX
from trustboot.publish.http import (
    RetryableStatus,
    deadline_transport,
    raw_answer,
    status_error,
    tls_context,
    unasked_encoding,
    with_retries,
)
from trustboot.publish.lock import (
    LOCK_STALE_AFTER,
    GuardedByLock,
    HeldLock,
    lock_is_stale,
    origin_lock,
    swap_record,
)
from trustboot.publish.origin import (
    ListingBudget,
    ObjectStat,
    OriginOptions,
    Staged,
    TooLarge,
    check_key,
    check_prefix,
    key_problem,
    redact_url,
)
from trustboot.publish.stream import DigestingUpload, StagesUploads, hashed_chunks
from trustboot.text import clean

CHUNK = 1 << 20
LOCK_COLLECTION = ".trustboot-lock"
# hidden from list() like every name starting with TMP_PREFIX
STAGING = TMP_PREFIX + "staging"
_TEMP_NAME = re.compile(r"[0-9a-f]{16}\..+")
MAX_PROPFIND_BYTES = 16 << 20
_DATED = b"<resourcetype/><getlastmodified/>"  # what an age is judged by
MAX_XML_DEPTH = 32
MAX_XML_ELEMENTS = MAX_PROPFIND_BYTES // 32  # nginx spends ~40 bytes an element
MAX_ANSWER_BYTES = 1 << 20  # any other answer: a status page, an error text, a lock file
DAV = "{DAV:}"


def parse_multistatus(data: bytes, *, source: str = "the origin"
                      ) -> list[tuple[str, bool, int | None, str | None]]:
    """(href, is_collection, size, etag) per response; no DTD, no entities. ``source``:
    the URL that answered, for errors."""
    out = []
    for href, is_col, response in _responses(data, source):
        length = response.findtext(f".//{DAV}getcontentlength")
        etag = response.findtext(f".//{DAV}getetag")
        length = (length or "").strip()
        # ASCII digits only: str.isdigit() takes '²', which int() refuses (ValueError)
        size = int(length) if length.isascii() and length.isdigit() \
            and len(length) <= 20 else None
        out.append((href, is_col, size, etag))
    return out


def _responses(data: bytes, source: str) -> Iterator[tuple[str, bool, ET.Element]]:
    """(href, is_collection, the response element) per response of a multistatus."""
    for response in _parse(data, source).iter(f"{DAV}response"):
        href = response.findtext(f"{DAV}href") or ""
        yield href, response.find(f".//{DAV}resourcetype/{DAV}collection") is not None, response


# Methods whose answer a server sends at once (nothing to do first, unlike a COPY of a
# large object): their head must come within the request's own time and HEAD_SECONDS.
_PROMPT = ("PROPFIND", "GET", "HEAD")


def _split_href(href: str) -> SplitResult | None:
    """``href`` split, or None when no URL parser would take it (a hostile server's broken
    IPv6 literal, two ports, a fullwidth '/'): a name that is not a URL is not ours."""
    try:
        parts = urlsplit(href)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return None
    return parts


def _parse(data: bytes, source: str) -> ET.Element:
    """A multistatus answer as XML: capped, UTF-8 only, no DTD (so no entities); errors
    name ``source``, the URL that answered (an origin has many collections)."""
    what = f"the PROPFIND answer from {source}"
    if len(data) > MAX_PROPFIND_BYTES:
        raise OperationalError(f"{what} is larger than 16 MiB",
                               hint="check the origin: is this the right URL?")
    # A multistatus never has a DTD, and without one there are no entities to expand.
    # Only UTF-8 is accepted, so the check below cannot be dodged with another encoding.
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise OperationalError(f"{what} is not UTF-8",
                               hint="a WebDAV server answers in UTF-8: check the origin "
                                    "(is the URL a WebDAV collection?)") from None
    if "<!doctype" in text.lower() or "<!entity" in text.lower():
        raise OperationalError(f"{what} has a DTD; refused",
                               hint="a WebDAV server never sends one: check the origin")
    # Parsed as it streams, counting: within the cap, millions of nested or empty
    # elements still built a tree of hundreds of MB; a real answer is a few levels deep
    # with a few elements per name listed.
    parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start", "end"))
    root: ET.Element | None = None
    depth = count = 0
    try:
        for at in [*range(0, len(text), CHUNK), -1]:
            if at < 0:
                parser.close()  # (raises on a document cut short)
            else:
                parser.feed(text[at:at + CHUNK])
            for item in parser.read_events():
                event, element = cast("tuple[str, object]", item)  # (events asked for)
                if event == "end":
                    depth -= 1
                    continue
                depth, count = depth + 1, count + 1
                if root is None and isinstance(element, ET.Element):
                    root = element
                if depth > MAX_XML_DEPTH:
                    raise OperationalError(f"{what} is nested too deeply; refused",
                                           hint="check the origin")
                if count > MAX_XML_ELEMENTS:
                    raise OperationalError(f"{what} has too many elements; refused",
                                           hint="check the origin")
    except ET.ParseError as exc:
        raise OperationalError(f"{what} is not acceptable XML: {exc}",
                               hint="is the URL a WebDAV collection?") from None
    assert root is not None  # (close() raised on a document without one)
    return root


def parse_modified(data: bytes, *, source: str = "the origin"
                   ) -> list[tuple[str, bool, float | None]]:
    """(href, is_collection, getlastmodified as a Unix time) per response (``source``:
    as parse_multistatus)."""
    out = []
    for href, is_col, response in _responses(data, source):
        text = response.findtext(f".//{DAV}getlastmodified")
        when = None
        if text:
            # (OverflowError: numbers past a C int in the date, from the origin)
            with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
                when = email.utils.parsedate_to_datetime(text.strip()).timestamp()
        out.append((href, is_col, when))
    return out


def etag_settled(last_modified: str | None, date: str | None) -> bool:
    """Whether an ETag answered with these headers changes with any later write: the
    object was last modified in an earlier second than the answer's Date. A server may
    make its ETag from the modification time in whole seconds (nginx does), so a write
    in that same second with the same size keeps it. Unknown (a header missing or not
    a date): not settled."""
    try:
        modified = email.utils.parsedate_to_datetime((last_modified or "").strip())
        now = email.utils.parsedate_to_datetime((date or "").strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
    if modified.tzinfo is None or now.tzinfo is None:
        return False  # "-0000": no time zone known, nothing to compare
    return int(modified.timestamp()) < int(now.timestamp())


class _WholeBody:
    """A request body made fresh for each attempt (``attempt``) that knows whether the
    last attempt's stream was read to its end (``sent``)."""

    def __init__(self, factory: Callable[[], Iterator[bytes]]) -> None:
        self.factory = factory
        self.sent = False
        self._stream: Iterator[bytes] | None = None

    def attempt(self) -> Iterator[bytes]:
        self.close()
        self.sent = False
        self._stream = self.factory()
        return self._follow(self._stream)

    def _follow(self, stream: Iterator[bytes]) -> Iterator[bytes]:
        yield from stream
        self.sent = True

    def close(self) -> None:
        stream, self._stream = self._stream, None
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # a stream left half-read stops its reader thread now


class WebDAVOrigin(StagesUploads, GuardedByLock):
    """A WebDAV collection over HTTPS (client certificate and/or basic/bearer auth)."""

    def __init__(self, url: str, options: OriginOptions) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigError(f"origin {redact_url(url)!r} is not an https://HOST/PATH/ URL")
        if parts.username or parts.password:
            raise ConfigError(f"origin {redact_url(url)} has credentials in the URL",
                              hint="use --credentials-file or --credentials-env (never argv)")
        if parts.query or parts.fragment:
            raise ConfigError(f"origin {url} must not have a query or fragment")
        if parts.scheme == "http" and not options.unsafe_http:
            raise ConfigError(f"origin {url} is plain HTTP", hint="use https:// (or "
                                                                  "--unsafe-http)")
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        self.base_path = path
        self._netloc = parts.netloc
        self.url = f"{parts.scheme}://{parts.netloc}{path}"
        self.options = options
        self._collections: set[str] = set()
        self._mutex = threading.Lock()
        self._client: httpx.Client | None = None

    def __enter__(self) -> WebDAVOrigin:
        o = self.options
        if o.credentials is not None and self.url.startswith("http://"):
            raise ConfigError("refusing to send credentials over plain HTTP")
        ctx = tls_context(ca_file=o.ca_file, client_cert=o.client_cert, client_key=o.client_key,
                          client_key_passphrase=o.client_key_passphrase,
                          unsafe_no_verify=o.unsafe_no_verify)
        auth: Any = None
        headers = {"User-Agent": "trustboot-publish", "Accept-Encoding": "identity"}
        if o.credentials is not None:
            if o.credentials.scheme == "basic":
                auth = httpx.BasicAuth(o.credentials.username or "", o.credentials.secret)
            else:
                headers["Authorization"] = f"Bearer {o.credentials.secret}"
        self._client = httpx.Client(timeout=o.timeout, auth=auth, headers=headers,
                                    follow_redirects=False, trust_env=False,
                                    transport=deadline_transport(ctx, max_connections=16))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- plumbing -------------------------------------------------------------------
    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            raise RuntimeError("use the origin as a context manager")
        return self._client

    def _url(self, key: str, *, collection: bool = False) -> str:
        return self.url + quote(key) + ("/" if collection else "")

    def _request(self, method: str, url: str, *, what: str, ok: tuple[int, ...],
                 passthrough: tuple[int, ...] = (), max_answer: int = MAX_ANSWER_BYTES,
                 upload: int = 0, **kw: Any) -> httpx.Response:
        """One request (retried, see with_retries): its answer read in full, at most
        ``max_answer`` bytes, and the whole exchange within its deadline (see MIN_RATE):
        a hostile server can neither fill memory nor hold the run by trickling bytes."""
        seconds = budget(self.options.timeout, upload + max_answer, min_rate=MIN_RATE)

        def once() -> httpx.Response:
            content = kw.get("content_factory")
            args = {k: v for k, v in kw.items() if k != "content_factory"}
            if content is not None:
                args["content"] = content()
            # ``seconds`` is what the largest answer may take; a small one trickled must not
            # take as long (a PROPFIND held a run for 258 s): the body must come at
            # MIN_RATE once the head is in (after a --timeout's grace), and a prompt
            # method's head within a second of the request's own time (other methods may
            # make the server work before it answers: a COPY of a large object)
            start = time.monotonic()
            head = (min(seconds, self.options.timeout + upload / MIN_RATE + HEAD_SECONDS)
                    if method in _PROMPT else seconds)
            with total_deadline(head, url, start=start):
                request = self.client.build_request(method, url, **args)
                streamed = self.client.send(request, stream=True)
            try:
                with total_deadline(seconds, url, start=start):
                    body = b"".join(self._capped(
                        streamed, url, max_answer, read_size=None,
                        pace=(time.monotonic(), self.options.timeout)))
            finally:
                streamed.close()
            if streamed.status_code in ok and method in ("PROPFIND", "GET") and (
                    encoded := unasked_encoding(streamed.headers, what, url)) is not None:
                raise encoded  # (a listing or a lock record: parsed, it was "not UTF-8")
            response = raw_answer(streamed.status_code, streamed.headers, body, request)
            if response.status_code in ok or response.status_code in passthrough:
                return response
            if response.status_code >= 500:
                raise RetryableStatus(response)
            raise status_error(response, what, url)

        return with_retries(once, url=url, what=what, retries=self.options.retries)

    def _ensure_collections(self, key: str) -> None:
        parts = key.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            col = "/".join(parts[:i])
            with self._mutex:
                if col in self._collections:
                    continue
            r = self._request("MKCOL", self._url(col, collection=True),
                              what="creating collection", ok=(201,), passthrough=(405,))
            _ = r
            with self._mutex:
                self._collections.add(col)

    def _temp_key(self, key: str) -> str:
        name = key.rpartition("/")[2]
        # no leading dot inside: nginx's PROPFIND hides dot files, and the collector
        # below must see them
        tmp = f"{STAGING}/{secrets.token_hex(8)}.{name}"[:200]
        self._ensure_collections(tmp)
        return tmp

    def _propfind(self, url: str, props: bytes) -> httpx.Response:
        """One PROPFIND ``Depth: 1`` of the collection at ``url`` asking ``props`` (the
        answer capped); 404 is passed through."""
        return self._request("PROPFIND", url, what="listing", ok=(207,), passthrough=(404,),
                             headers={"Depth": "1"}, max_answer=MAX_PROPFIND_BYTES,
                             content=b'<?xml version="1.0"?><propfind xmlns="DAV:"><prop>'
                                     + props + b"</prop></propfind>")

    def remove_stale_temps(self, older_than: float) -> builtins.list[str]:
        url = self._url(STAGING, collection=True)
        r = self._propfind(url, _DATED)
        if r.status_code == 404:
            return []
        # getlastmodified by the server against this host's clock (folder_age too)
        now = time.time()
        removed = []
        for href, is_col, modified in parse_modified(r.content, source=url):
            parts = _split_href(href)
            name = unquote(parts.path).rstrip("/").rpartition("/")[2] if parts else ""
            if not _TEMP_NAME.fullmatch(name) or key_problem(name):
                continue
            if modified is None or now - modified < older_than:
                continue  # perhaps an upload in progress (a lock broken as stale)
            # (a collection: a lock record a killed run never moved into place)
            self._delete_quiet(f"{STAGING}/{name}", collection=is_col)
            removed.append(f"{STAGING}/{name}")
        return sorted(removed)

    def _move(self, src: str, dst: str, *, overwrite: bool, collection: bool = False,
              missing_ok: bool = False) -> bool:
        r = self._request("MOVE", self._url(src, collection=collection), what="moving",
                          ok=(201, 204), passthrough=(412, 404) if missing_ok else (412,),
                          headers={"Destination": self._url(dst, collection=collection),
                                   "Overwrite": "T" if overwrite else "F"})
        return r.status_code in (201, 204)

    def _delete_quiet(self, key: str, *, collection: bool = False) -> None:
        with contextlib.suppress(OperationalError):
            self._request("DELETE", self._url(key, collection=collection), what="deleting",
                          ok=(200, 204), passthrough=(404,),
                          headers={"Depth": "infinity"} if collection else {})

    # -- objects --------------------------------------------------------------------
    def stat(self, key: str) -> ObjectStat | None:
        r = self._request("HEAD", self._url(check_key(key)), what="checking", ok=(200,),
                          passthrough=(404, 410))
        if r.status_code != 200:
            return None
        length = r.headers.get("content-length")
        if length is None or not length.isdigit():
            raise OperationalError(f"{self._url(key)}: HEAD without a Content-Length")
        return ObjectStat(size=int(length), sha256=None, etag=r.headers.get("etag"),
                          settled=etag_settled(r.headers.get("last-modified"),
                                               r.headers.get("date")))

    def _put_temp(self, key: str, factory: Callable[[], Iterator[bytes]], size: int) -> str:
        """PUT the body to a new temporary object named after ``key``; its name."""
        tmp = self._temp_key(key)
        body = _WholeBody(factory)
        try:
            r = self._request("PUT", self._url(tmp), what="uploading", ok=(200, 201, 204),
                              content_factory=body.attempt, upload=size,
                              headers={"Content-Length": str(size),
                                       "Content-Type": "application/octet-stream"})
            if not body.sent:
                # httpx returns an answer that arrives while the body is still being
                # written (the server then stops reading): success before the last byte
                # was read means the object is not what was hashed
                raise OperationalError(
                    f"uploading {self._url(tmp)}: the origin answered HTTP {r.status_code} "
                    "before it received the whole body", hint="the origin (or a proxy in "
                    "front of it) does not wait for uploads: check its configuration")
        except BaseException:
            self._delete_quiet(tmp)
            raise
        finally:
            body.close()
        return tmp

    def _put(self, key: str, factory: Callable[[], Iterator[bytes]], size: int) -> None:
        check_key(key)
        self._ensure_collections(key)
        tmp = self._put_temp(key, factory, size)
        try:
            self._check_lock()
            self._move(tmp, key, overwrite=True)
        except BaseException:
            self._delete_quiet(tmp)
            raise

    def put_file(self, key: str, path: Path, *, size: int, sha256: str,
                 progress: Callable[[int], None] | None = None) -> None:
        # a changed file raises before the last chunk is sent: the temp object is deleted
        # by _put and never MOVEd into place
        self._put(key, lambda: hashed_chunks(path, size=size, sha256=sha256,
                                             progress=progress), size)

    def put_bytes(self, key: str, data: bytes, *, sha256: str) -> None:
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError("sha256 does not match the data")
        self._put(key, lambda: iter([data]), len(data))

    # -- staging (origin.StagingOrigin): PUT to the staging collection while hashing,
    # MOVE to the key later; a killed run's leftovers are remove_stale_temps' to sweep
    # (stage_file: stream.StagesUploads)
    def _store_staging(self, name: str, upload: DigestingUpload) -> str:
        return self._put_temp(name, upload.chunks, upload.size)

    def _check_staged(self, staged: Staged) -> None:
        head, _, name = staged.token.rpartition("/")
        if head != STAGING or not _TEMP_NAME.fullmatch(name) or staged.done:
            raise ValueError(f"{staged.token!r} is not a pending staged object")

    def place_staged(self, staged: Staged, key: str) -> None:
        check_key(key)
        self._check_staged(staged)
        self._ensure_collections(key)
        try:
            self._check_lock()
            self._move(staged.token, key, overwrite=True)
        except BaseException:
            self._delete_quiet(staged.token)
            raise
        finally:
            staged.done = True

    def discard_staged(self, staged: Staged) -> None:
        if not staged.done:
            self._check_staged(staged)
            staged.done = True
            self._delete_quiet(staged.token)

    def read(self, key: str, *, max_size: int) -> Iterator[bytes]:
        url = self._url(check_key(key))
        seconds = budget(self.options.timeout, max_size, min_rate=MIN_RATE)

        def once() -> Iterator[bytes]:
            # as _request: ``seconds`` is what the largest object may take; the head must
            # come within the timeout (a second more), then the body at MIN_RATE by what
            # came (a release.json trickled held `publish rollback --timeout 2` for 66 s)
            start = time.monotonic()
            with total_deadline(min(seconds, self.options.timeout + HEAD_SECONDS), url,
                                start=start):
                request = self.client.build_request("GET", url)
                response = self.client.send(request, stream=True)
            pace = (time.monotonic(), self.options.timeout)
            if response.status_code != 200:
                with total_deadline(seconds, url, start=start):
                    answer = b"".join(self._capped(response, url, MAX_ANSWER_BYTES,
                                                   read_size=None, pace=pace))
                response = raw_answer(response.status_code, response.headers, answer,
                                      request)
                if response.status_code >= 500:
                    raise RetryableStatus(response)
                if response.status_code == 404:
                    raise OperationalError(f"{url} does not exist on the origin")
                raise status_error(response, "reading", url)
            if (encoded := unasked_encoding(response.headers, "reading", url)) is not None:
                response.close()
                raise encoded  # (not the object's bytes: never hashed, parsed or inflated)
            return self._capped(response, url, max_size, deadline=(start, seconds),
                                read_size=None, pace=pace)

        return self._unbroken(url, with_retries(once, url=url, what="reading",
                                                retries=self.options.retries))

    @staticmethod
    def _unbroken(url: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """``chunks``, a body read after its request's retries: a connection that breaks
        meanwhile (the origin closing it mid-answer) is an OperationalError naming ``url``,
        not the httpx error that escaped to the CLI as an internal error (exit 70)."""
        try:
            yield from chunks
        except httpx.TransportError as exc:
            raise OperationalError(
                f"reading {url}: the connection broke before the whole answer came "
                f"({type(exc).__name__}: {clean(str(exc), limit=200)})",
                hint="check the origin and the network path to it; then run the command "
                     "again") from None

    @staticmethod
    def _capped(response: httpx.Response, url: str, max_size: int, *,
                deadline: tuple[float, float] | None = None,
                pace: tuple[float, float] | None = None,
                read_size: int | None = CHUNK) -> Iterator[bytes]:
        """The raw body, at most ``max_size`` bytes; each read within ``deadline`` (start,
        seconds) of the whole request when given (the caller is between reads otherwise).
        ``pace`` (start, grace): the body so far must have come at MIN_RATE at least, after
        ``grace`` seconds (a deadline by what was received, not by what may come), judged
        on each read (``read_size`` None: as the socket gives it, not gathered to CHUNK)."""
        total = 0
        chunks = response.iter_raw(read_size)
        try:
            while True:
                if deadline is None:
                    chunk = next(chunks, None)
                else:
                    with total_deadline(deadline[1], url, start=deadline[0]):
                        chunk = next(chunks, None)
                if chunk is None:
                    return
                total += len(chunk)
                if total > max_size:
                    raise TooLarge(f"{url} is larger than {max_size} bytes",
                                   hint="check the origin: is this the right URL?")
                if pace is not None and (now := time.monotonic()) > paced(
                        *pace, total, min_rate=MIN_RATE):
                    raise too_slow(url, now - pace[0], min_rate=MIN_RATE)
                yield chunk
        finally:
            response.close()

    def list(self, prefix: str) -> builtins.list[str]:
        check_prefix(prefix)
        out: builtins.list[str] = []
        todo = [prefix.rstrip("/")]
        budget = ListingBudget(f"{redact_url(self.url)}{prefix}")
        while todo:
            budget.request()
            for key, is_col in self._children(todo.pop()):
                budget.name(key)
                (todo if is_col else out).append(key)
        return sorted(out)

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        check_prefix(prefix)
        col = prefix.rstrip("/")
        start = len(col) + 1 if col else 0
        # one PROPFIND (Depth: 1) of this collection, whatever lies below it; only its
        # direct sub-collections (a server may answer with deeper names)
        return sorted(key[start:] for key, is_col in self._children(col)
                      if is_col and "/" not in key[start:])

    def _children(self, col: str) -> builtins.list[tuple[str, bool]]:
        """(key, is_collection) of what one PROPFIND ``Depth: 1`` of the collection ``col``
        ('' is the root) shows: only names on this server under ``col`` that ``check_key``
        accepts, no temporary objects, no lock."""
        url = self._url(col, collection=True) if col else self.url
        r = self._propfind(url, b"<resourcetype/><getcontentlength/>")
        if r.status_code == 404:
            return []
        out: dict[str, bool] = {}  # a name listed twice counts once (the first answer)
        for href, is_col, _size, _etag in parse_multistatus(r.content, source=url):
            key = self._key_of(href)
            if key is None or key == col or not key or \
                    (col and not key.startswith(col + "/")):
                continue  # not ours, the collection itself, or not inside it
            name = key.rpartition("/")[2]
            if name.startswith(TMP_PREFIX) or name == LOCK_COLLECTION or key_problem(key):
                continue
            out.setdefault(key, is_col)
        return list(out.items())

    def unlisted(self, prefix: str) -> builtins.list[str]:
        col = check_prefix(prefix).rstrip("/")
        out: builtins.list[str] = []
        todo = [col]
        budget = ListingBudget(f"{redact_url(self.url)}{prefix}")
        while todo:
            budget.request()
            current = todo.pop()
            url = self._url(current, collection=True)
            r = self._propfind(url, b"<resourcetype/>")
            if r.status_code == 404:
                continue
            for href, is_col, _size, _etag in parse_multistatus(r.content, source=url):
                key = self._key_of(href)
                if key == current:
                    continue  # the collection itself
                budget.name(href)
                if key is None or not key.startswith(current + "/"):
                    out.append(href)  # another server's name, or outside: not ours to delete
                    continue
                name = key.rpartition("/")[2]
                if name.startswith(TMP_PREFIX) or name == LOCK_COLLECTION or key_problem(key):
                    out.append(key)
                elif is_col:
                    todo.append(key)
        return sorted(out)

    def _key_of(self, href: str) -> str | None:
        """The key an answer's href names (no trailing '/'), or None when it is another
        server's name or outside this origin."""
        parts = _split_href(href)
        if parts is None or (parts.netloc and parts.netloc != self._netloc):
            return None
        rel = unquote(parts.path)
        if not rel.startswith(self.base_path):
            return None
        return rel[len(self.base_path):].rstrip("/")

    def folder_age(self, prefix: str) -> float | None:
        # every entry's getlastmodified, the collections' own included, against this
        # host's clock, as remove_stale_temps judges; names list leaves out count too
        col = check_prefix(prefix).rstrip("/")
        newest: float | None = None
        todo = [col]
        budget = ListingBudget(f"{redact_url(self.url)}{prefix}")
        while todo:
            budget.request()
            current = todo.pop()
            url = self._url(current, collection=True)
            r = self._propfind(url, _DATED)
            if r.status_code == 404:
                return None  # not there (or gone meanwhile)
            for href, is_col, modified in parse_modified(r.content, source=url):
                key = self._key_of(href)
                if key is None or (key != current and not key.startswith(current + "/")):
                    continue  # not in this folder: not the folder's age
                budget.name(key)
                if modified is None or (is_col and key != current and key_problem(key)):
                    return None  # undated, or a folder we cannot look into
                newest = modified if newest is None else max(newest, modified)
                if is_col and key != current:
                    todo.append(key)
        return None if newest is None else time.time() - newest

    def remove_empty_folder(self, prefix: str) -> bool:
        col = check_prefix(prefix).rstrip("/")
        self._check_lock()
        url = self._url(col, collection=True)
        r = self._propfind(url, b"<resourcetype/>")
        if r.status_code == 404:
            return True
        # a DELETE of a collection takes all it holds: anything but itself in the
        # answer (another server's name too) and it stays
        if any(self._key_of(href) != col
               for href, _is_col, _when in parse_modified(r.content, source=url)):
            return False
        self._request("DELETE", url, what="deleting", ok=(200, 204), passthrough=(404,),
                      headers={"Depth": "infinity"})
        with self._mutex:
            self._collections.discard(col)
        return True

    def _holds_objects(self, col: str) -> bool:
        """Whether ``list(col + '/')`` would list anything, stopping at the first object
        found (a collection with other releases beside it costs one PROPFIND or two, not
        a listing of all of them)."""
        todo = [col]
        budget = ListingBudget(f"{redact_url(self.url)}{col}/")
        while todo:
            budget.request()
            children = self._children(todo.pop())
            for key, _is_col in children:
                budget.name(key)
            if any(not is_col for _key, is_col in children):
                return True
            todo.extend(key for key, is_col in children if is_col)
        return False

    def delete(self, key: str) -> None:
        self._check_lock()
        self._request("DELETE", self._url(check_key(key)), what="deleting", ok=(200, 204),
                      passthrough=(404,))
        # Drop now-empty collections (a pruned release leaves nothing behind), but never a
        # top-level one (releases/, an entry's directory): WebDAV deletes a collection with
        # all it holds, so a listing that wrongly says "empty" (a hostile or inconsistent
        # origin) must not cost more than the release being pruned.
        head = key.rpartition("/")[0]
        while "/" in head:
            if self._holds_objects(head):
                break
            self._request("DELETE", self._url(head, collection=True), what="deleting",
                          ok=(200, 204), passthrough=(404, 409),
                          headers={"Depth": "infinity"})
            with self._mutex:
                self._collections.discard(head)
            head = head.rpartition("/")[0]

    def copy(self, src_key: str, dst_key: str) -> None:
        check_key(src_key)
        check_key(dst_key)
        self._ensure_collections(dst_key)
        tmp = self._temp_key(dst_key)
        try:
            self._request("COPY", self._url(src_key), what="copying", ok=(201, 204),
                          headers={"Destination": self._url(tmp), "Overwrite": "T"})
            self._check_lock()
            self._move(tmp, dst_key, overwrite=True)
        except BaseException:
            self._delete_quiet(tmp)
            raise

    def copy_many(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Copy several objects so that they change together as closely as WebDAV allows:
        every COPY to a temp name first, then the MOVEs back to back (one round trip apart),
        so a writer killed mid-switch leaves a mismatched pair for the shortest time."""
        staged: list[tuple[str, str]] = []
        try:
            for src_key, dst_key in pairs:
                check_key(src_key)
                check_key(dst_key)
                self._ensure_collections(dst_key)
                tmp = self._temp_key(dst_key)
                staged.append((tmp, dst_key))
                self._request("COPY", self._url(src_key), what="copying", ok=(201, 204),
                              headers={"Destination": self._url(tmp), "Overwrite": "T"})
            self._check_lock(confirm=True)  # the entry switch: never on a lost lock
            for tmp, dst_key in staged:
                self._move(tmp, dst_key, overwrite=True)
        except BaseException:
            for tmp, _dst in staged:
                self._delete_quiet(tmp)
            raise

    # -- lock -----------------------------------------------------------------------
    def _read_lock(self, collection: str = LOCK_COLLECTION) -> object:
        r = self._request("GET", self._url(f"{collection}/owner.json"), what="reading lock",
                          ok=(200,), passthrough=(404, 403))
        if r.status_code != 200:
            return None
        try:
            return jsonin.loads(r.content[:4096])
        except ValueError:
            return "unreadable"

    def _aside(self, what: str) -> str:
        """A new name in the staging collection (made if need be) to move the lock to."""
        name = f"{STAGING}/{secrets.token_hex(8)}.{what}"
        self._ensure_collections(name)
        return name

    def lock(self, owner: str, *, stale_after: float = LOCK_STALE_AFTER,
             refresh: float | None = None) -> AbstractContextManager[HeldLock]:
        def try_create(body: bytes) -> bool:
            # The lock appears with its record: owner.json goes into a new collection in
            # the staging area, which is then MOVEd to the lock's name without overwrite
            # (atomic: exactly one client gets 201). A lock collection made first and
            # written after looked, while a slow or retried PUT was on its way, like a
            # crashed holder's: a second publisher broke it and both held the lock.
            tmp = f"{STAGING}/{secrets.token_hex(8)}.lock"
            try:
                self._put(f"{tmp}/owner.json", lambda: iter([body]), len(body))
                return self._move(tmp, LOCK_COLLECTION, overwrite=False, collection=True)
            finally:
                self._delete_quiet(tmp, collection=True)  # (404 once it was moved)
                with self._mutex:
                    self._collections.discard(tmp)

        def break_stale(seen: object, _body: bytes) -> bool:
            # MOVE without overwrite: of two breakers only one moves it. Aside into the
            # staging collection: a run killed before it deletes it leaves it where
            # remove_stale_temps sweeps (dav_ext lists no dot-names, at the root included)
            aside = self._aside("stale-lock")
            # (404: the holder released it meanwhile; the next attempt takes it)
            if not self._move(LOCK_COLLECTION, aside, overwrite=False, collection=True,
                              missing_ok=True):
                return False
            moved = self._read_lock(aside)
            if moved != seen and moved is not None and not lock_is_stale(
                    moved, now=time.time(), stale_after=stale_after):
                # a fresh lock taken after we looked: give it back
                self._move(aside, LOCK_COLLECTION, overwrite=False, collection=True,
                           missing_ok=True)
                return False
            self._delete_quiet(aside, collection=True)
            return False  # the next attempt creates ours

        def take() -> str | None:
            aside = self._aside("refresh-lock")  # (see break_stale)
            if not self._move(LOCK_COLLECTION, aside, overwrite=False, collection=True,
                              missing_ok=True):
                return None
            return aside

        def rewrite(body: bytes) -> bool:
            # compare-and-swap: never over a record that is not ours (see lock.py; nginx
            # honours no If-Match on PUT or MOVE, only Overwrite: F)
            return swap_record(
                body, take=take, read=self._read_lock,
                give_back=lambda aside: self._move(aside, LOCK_COLLECTION, overwrite=False,
                                                   collection=True, missing_ok=True),
                drop=lambda aside: self._delete_quiet(aside, collection=True),
                create=try_create)

        return self._guarded(origin_lock(
            owner, where=self.url, remove_hint=f"delete {self.url}{LOCK_COLLECTION}/",
            try_create=try_create, read=self._read_lock, break_stale=break_stale,
            release=lambda: self._delete_quiet(LOCK_COLLECTION, collection=True),
            rewrite=rewrite, stale_after=stale_after, refresh=refresh, settle=2.0))

    def public_url(self, key: str) -> str | None:
        base = self.options.public_url or self.url
        return base.rstrip("/") + "/" + quote(check_key(key))

    def __repr__(self) -> str:
        return f"WebDAVOrigin({self.url!r})"
