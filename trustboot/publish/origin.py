"""Origins: where a release is stored and served, chosen by the URL's scheme.

One protocol (``Origin``) for every backend, one path rule for every key (``check_key``)
and one registry (``open_origin``):

* ``file:///dir``       -> ``trustboot.publish.fileorigin.FileOrigin``
* ``https://host/path`` -> ``trustboot.publish.webdav.WebDAVOrigin``
* ``s3://bucket/prefix`` -> ``trustboot.publish.s3.S3Origin`` (imported only for s3://,
  so boto3 is only loaded when it is needed)

Each backend class is constructed as ``Cls(url: str, options: OriginOptions)``. Backends
share the lock protocol in ``trustboot.publish.lock.origin_lock`` (give it an atomic
create-if-absent) and report ``ObjectStat.etag`` where they can: the publish pipeline's
read-back memo keys on size + ETag (and ``ObjectStat.settled`` False where a later write
could keep the ETag).

A backend whose temporary objects can be moved into place cheaply on the server (a WebDAV
MOVE, a rename) may also be a ``StagingOrigin``: a large input is uploaded to a temporary
object while it is being hashed, in the same read, before its key is known (the release
id may be a digest of the inputs); once the id and the signatures exist it is moved to
its key. ``staging_of(origin)`` says whether an origin can; one that cannot (S3: a copy
would write the data again) is uploaded after hashing, as before.
``trustboot.publish.stream.StagesUploads`` is the one ``stage_file``: a backend mixes
it in and says only how it stores a stream under a temporary name.
"""

from __future__ import annotations

import builtins
import importlib
import os
import re
import threading
import unicodedata
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import SplitResult, unquote, urlsplit

from trustboot import fsutil
from trustboot.errors import ConfigError, OperationalError
from trustboot.publish.lock import HeldLock
from trustboot.text import shown as _shown  # (a local `shown` below is a URL)

MAX_KEY_LENGTH = 1024
MAX_CREDENTIALS_BYTES = 64 << 10

# A key segment: printable, URL-safe characters only. Keys end up in HTTPS URLs that iPXE
# fetches and in iPXE script lines, so anything needing quoting or percent-encoding is
# refused here rather than escaped in five places.
_SEGMENT = re.compile(r"[A-Za-z0-9._~+=,@-]+")


class NotServed(OperationalError):
    """The origin does not serve this object: an HTTP read got 404/403/410 (``status``),
    or a file origin's object is gone (404). Raised by the read-back Reader and by
    FileOrigin.read, so a caller tells an object deleted since it was listed (its own
    verdict: unread, not served) from an origin that fails to answer (exit 1)."""

    def __init__(self, message: str, *, hint: str | None = None, status: int) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class TooLarge(OperationalError):
    """A read hit its cap: the object is larger than ``max_size``. Raised by every
    origin's ``read`` and by the read-back Reader, so a caller that expects a size (the
    read-back of a published object) tells "serves more than published" by its type."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        # a caller that knows why it read the object says what to do; else this
        super().__init__(message, hint=hint or (
            "trustboot reads objects of this kind only up to that size: check what the "
            "origin holds at that name (replaced by something else, or grown by another "
            "writer)"))


class AgeUnknown(OperationalError):
    """``Origin.folder_age`` could not tell a folder's age because the origin refused a
    listing it needs (an S3 policy without s3:ListBucketMultipartUploads): the message
    names what was refused, the hint the permission. Prune leaves such a folder and says
    so; it does not fail."""


# A listing's bounds over all its requests (each answer has its own cap): a store that
# answers page after page with a new continuation token, or collections inside
# collections, without end held a run forever and filled its memory one capped answer at
# a time. A real origin of 100 releases of 10,000 objects lists one million names.
MAX_LISTED = 1_000_000  # names listed plus requests made
MAX_LISTED_CHARS = 128 << 20  # the names' total length


class ListingBudget:
    """What one listing (``Origin.list``/``list_dirs``, all its pages or collections) may
    take; TooLarge naming ``where`` once it is spent."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._count = 0
        self._chars = 0

    def request(self) -> None:
        """One more page or collection asked for."""
        self._spend(1, 0)

    def name(self, key: str) -> None:
        """One more name listed."""
        self._spend(1, len(key))

    def _spend(self, count: int, chars: int) -> None:
        self._count += count
        self._chars += chars
        if self._count > MAX_LISTED or self._chars > MAX_LISTED_CHARS:
            raise TooLarge(
                f"listing {self.where} did not end within {MAX_LISTED} names and requests "
                f"({MAX_LISTED_CHARS >> 20} MiB of names)",
                hint="the origin keeps answering a listing with more pages or collections: "
                     "check it (a broken or hostile store), or prune its old releases")


@dataclass(frozen=True)
class ObjectStat:
    size: int
    sha256: str | None  # hex, when the backend knows it (stored metadata); else None
    etag: str | None = None
    # False when a later change could leave ``etag`` as it is: a WebDAV server whose
    # ETag is the modification time in whole seconds (nginx: mtime-size) answered within
    # the second the object was last written. Only a settled ETag may stand for bytes
    # read back earlier (the early read-back's re-check, the publish cache).
    settled: bool = True


@dataclass(frozen=True)
class Credentials:
    """HTTP credentials for an origin; never from argv (a file or a named env variable)."""

    scheme: str  # "basic" | "bearer"
    secret: str  # the password or the token
    username: str | None = None  # basic only
    source: str = ""  # where they came from, for messages (never the secret)
    # The origin URL these credentials are bound to (a leading "URL " in the secret):
    # open_origin refuses any other origin, so a changed recipe or option cannot send
    # them elsewhere. None: unbound (usable with any origin).
    scope: str | None = None
    # An s3:// binding's S3 endpoint (the URL after the binding: "s3://b/p https://rgw
    # KEY:SECRET"): the requests they sign go to the endpoint, not to the s3:// URL, so
    # a binding without one covers only the default endpoint (no --endpoint-url).
    endpoint: str | None = None

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return (f"Credentials(scheme={self.scheme!r}, source={self.source!r}, "
                f"scope={self.scope!r}, endpoint={self.endpoint!r})")


@dataclass(frozen=True)
class OriginOptions:
    """Everything a backend may need; built by the CLI or a release recipe."""

    ca_file: Path | None = None  # TLS trust for the origin (default: the pki's ca.crt)
    client_cert: Path | None = None  # TLS client auth (PEM cert)
    client_key: Path | None = None  # its key (PEM; may be encrypted)
    client_key_passphrase: bytes | None = None
    credentials: Credentials | None = None  # basic/bearer, from a file or an env var name
    endpoint_url: str | None = None  # s3 endpoint (https)
    public_url: str | None = None  # the HTTPS base URL clients (iPXE) fetch from
    unsafe_http: bool = False  # --unsafe-http: allow http:// (warns every run)
    unsafe_no_verify: bool = False  # --unsafe-no-tls-verify (warns every run)
    timeout: float = 30.0
    retries: int = 4
    # s3:// only: give objects the canned ACL public-read (booting clients fetch straight
    # from the store). False for a bucket behind a CDN with origin access / a bucket policy.
    public_read: bool = True
    # file:// only: create the origin directory when it is missing. Only a publish does;
    # listing, rollback, prune, repair, re-signing and a dry run never create one (a
    # mistyped path must not leave a directory behind).
    create_root: bool = True
    # file:// only: --unsafe-shared-origin: publish into directories other users own or
    # can write (warns every run)
    unsafe_shared_origin: bool = False

    def __repr__(self) -> str:  # the passphrase and credentials never reach a log
        return (f"OriginOptions(ca_file={self.ca_file!r}, client_cert={self.client_cert!r}, "
                f"endpoint_url={self.endpoint_url!r}, public_url={self.public_url!r}, "
                f"unsafe_http={self.unsafe_http}, unsafe_no_verify={self.unsafe_no_verify})")


class Origin(Protocol):
    """A storage backend; every key is a relative POSIX path accepted by ``check_key``."""

    url: str  # canonical origin URL (no credentials in it)

    def __enter__(self) -> Origin: ...

    def __exit__(self, *exc: object) -> None: ...  # closes sessions/connections

    def stat(self, key: str) -> ObjectStat | None: ...

    def put_file(self, key: str, path: Path, *, size: int, sha256: str,
                 progress: Callable[[int], None] | None = None) -> None:
        """Atomic per object: a reader sees the old object or the complete new one."""
        ...

    def put_bytes(self, key: str, data: bytes, *, sha256: str) -> None: ...

    def read(self, key: str, *, max_size: int) -> Iterator[bytes]:
        """The object as the backend stores it, in chunks; more than max_size: TooLarge."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (recursive, sorted); '' lists everything."""
        ...

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        """The names of the directories directly under ``prefix`` ('' or a key, with an
        optional trailing '/'), sorted: one listing of that level (a WebDAV PROPFIND
        ``Depth: 1``, S3 ``CommonPrefixes``, one directory read), so its cost grows with the
        directories there, not with the objects below them. Names refused as ``list``
        refuses them (``check_key``, temporary objects, the lock) are left out."""
        ...

    def delete(self, key: str) -> None:
        """Missing is not an error."""
        ...

    def copy(self, src_key: str, dst_key: str) -> None:
        """Atomic replace of ``dst_key`` with the content of ``src_key``."""
        ...

    def copy_many(self, pairs: Sequence[tuple[str, str]]) -> None:
        """``copy`` for each pair, the replacements as close together as the backend
        allows (the entry script and its signature are switched this way)."""
        ...

    def lock(self, owner: str) -> AbstractContextManager[HeldLock]:
        """Exclusive publish lock, refreshed while held; OperationalError naming the
        holder if taken. The origin's writes stop once it is lost (``lock.py``)."""
        ...

    def remove_stale_temps(self, older_than: float) -> builtins.list[str]:
        """Delete temporary objects (of uploads a killed run never finished) older than
        ``older_than`` seconds; the names removed. Called under the lock."""
        ...

    def folder_age(self, prefix: str) -> float | None:
        """Seconds since anything in the folder ``prefix`` (a key with a trailing '/')
        last changed: the newest of its objects, the temporary objects and sub-folders
        in it and the folder itself, judged by the clock ``remove_stale_temps`` judges
        age with. None when that cannot be told (an entry the origin does not date,
        one it does not let us look at) or the folder is not there; AgeUnknown when the
        origin refuses a listing the age needs."""
        ...

    def unlisted(self, prefix: str) -> builtins.list[str]:
        """What the folder ``prefix`` (a key with a trailing '/') holds that ``list``
        leaves out and so that no delete of trustboot's removes: names ``check_key``
        refuses, links and other non-regular files, temporary objects (as their keys,
        sorted; [] when the folder is not there). What the origin hides from every
        listing cannot be told (nginx's dav-ext module leaves dot-files out of PROPFIND
        answers; a DELETE of the collection still takes them)."""
        ...

    def remove_empty_folder(self, prefix: str) -> bool:
        """Remove the folder ``prefix`` if it holds nothing at all (not even names
        ``list`` leaves out); True when it is gone (or never was). Called under the
        lock."""
        ...

    def public_url(self, key: str) -> str | None:
        """The URL iPXE fetches for ``key``, or None if unknown."""
        ...


@dataclass
class Staged:
    """A local file uploaded to a temporary object of an origin and hashed in the same
    read (``StagingOrigin.stage_file``). The temporary object is never served under a
    release key until ``place_staged`` moves it there; a killed run's leftovers are found
    by ``remove_stale_temps``."""

    token: str  # the backend's name for the temporary object
    path: Path
    size: int
    digests: dict[str, bytes]
    stamp: os.stat_result  # the local file's stat when it was read (unchanged to the end)
    done: bool = False  # placed or discarded

    @property
    def sha256(self) -> str:
        return self.digests["sha256"].hex()


@runtime_checkable
class StagingOrigin(Protocol):
    """An origin that can stage a file's bytes while they are hashed (see module doc)."""

    def stage_file(self, path: Path, *, name: str, hash_names: Collection[str],
                   progress: Callable[[int], None] | None = None,
                   cancel: threading.Event | None = None,
                   accept: Callable[[Path, os.stat_result], None] | None = None) -> Staged:
        """Upload ``path`` to a temporary object, hashing it with ``hash_names`` (and
        sha256) in the same read; OperationalError if the file changed while it was read
        (nothing is left on the origin then). ``name``: the key it will get (for the
        temporary object's name). ``accept(path, st)``: called with the opened file's
        stat before a byte is read or sent; raises to refuse it."""
        ...

    def place_staged(self, staged: Staged, key: str) -> None:
        """Move the staged object to ``key`` (an atomic replace, done on the server)."""
        ...

    def discard_staged(self, staged: Staged) -> None:
        """Delete the staged object if it was not placed (errors are ignored: a leftover
        is removed by a later run's ``remove_stale_temps``)."""
        ...


def staging_of(origin: object) -> StagingOrigin | None:
    """``origin`` if it can stage uploads (StagingOrigin), else None."""
    return origin if isinstance(origin, StagingOrigin) else None


def key_problem(key: object) -> str | None:
    """Why ``key`` is not a safe object key, or None."""
    if not isinstance(key, str):
        return "it is not a string"
    if not key:
        return "it is empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"it is longer than {MAX_KEY_LENGTH} characters"
    if "\x00" in key or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        return "it holds a control character"
    if "\\" in key:
        return "it holds a backslash"
    if key.startswith("/"):
        return "it is absolute"
    if "//" in key or key.endswith("/"):
        return "it has an empty path segment"
    for segment in key.split("/"):
        if segment in (".", ".."):
            return f"it has a {segment!r} segment"
        if not _SEGMENT.fullmatch(segment):
            return (f"segment {_shown(segment)} holds characters outside A-Z a-z 0-9 and "
                    "'._~+=,@-'")
    return None


def check_key(key: str) -> str:
    """``key`` if it is a relative POSIX path that cannot leave the origin; else ConfigError.

    The one path rule for every backend: no '', absolute paths, '.', '..', backslashes,
    control characters, NUL or '//'; only URL- and iPXE-safe characters.
    """
    problem = key_problem(key)
    if problem:
        raise ConfigError(f"object name {key!r} is refused: {problem}",
                          hint="rename the file to letters, digits and '._-' inside the "
                               "release directory")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: '' (everything) or a key, with an optional trailing '/'."""
    if prefix == "":
        return prefix
    check_key(prefix.rstrip("/") if prefix.endswith("/") else prefix)
    return prefix


def join_key(*parts: str) -> str:
    return check_key("/".join(p.strip("/") for p in parts if p.strip("/")))


# What an origin's TLS certificate needs for a client (iPXE, the read-back) to verify it:
# the start of every hint about a certificate that does not.
SERVER_CHAIN_HINT = (
    "the origin must send a server certificate from your CA for this host name (`trustboot "
    "ca issue server`) followed by the issuing CA (the full chain: its certificate file, "
    "then issuing-ca.crt)")


def redact_url(url: str) -> str:
    """``url`` without any user:password@ part (URLs are shown in messages and manifests)."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:  # malformed: drop everything up to the last '@' (a secret may
        scheme, sep, rest = url.partition("://")  # hold '/', so not only the netloc's)
        return scheme + sep + rest.rpartition("@")[2]
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


SHARED_ORIGIN_WARNING = ("--unsafe-shared-origin: other users who can write the origin "
                         "directory can replace what is published after it was verified")


def unsafe_warnings(options: OriginOptions) -> list[str]:
    """Warnings the CLI prints on every run an unsafe option is in effect."""
    out = []
    if options.unsafe_http:
        out.append("--unsafe-http: uploads and read-back may travel over plain HTTP; "
                   "anyone on the path can read and change what is published")
    if options.unsafe_no_verify:
        out.append("--unsafe-no-tls-verify: the origin's TLS certificate is NOT checked; "
                   "anyone on the path can impersonate the origin")
    if options.unsafe_shared_origin:
        out.append(SHARED_ORIGIN_WARNING)
    return out


def _read_secret_file(path: Path) -> bytes:
    """A small private regular file, opened without following a link."""
    return fsutil.read_capped(path, MAX_CREDENTIALS_BYTES, "credentials file",
                              nofollow=True, private=True)


# "ORIGIN_URL " before the secret binds it to that origin (see Credentials.scope).
# For s3:// the S3 endpoint may follow it ("s3://boot/prod https://rgw.example KEY:SECRET").
_SCOPED = re.compile(r"((?:https?|s3)://[^ ]+) +(?:(https?://[^ ]+) +)?([^ ].*)",
                     re.IGNORECASE)
_AFTER_URL = ", a space, then the secret"  # the hint's end for a secret's binding


def parse_credentials(text: str, source: str) -> Credentials:
    """``user:password`` (basic) or ``bearer:TOKEN`` / ``Bearer TOKEN``, one line,
    optionally preceded by the origin URL they are bound to and a space
    (``https://dav.example.net/boot/ user:password``)."""
    value = text.strip("\r\n")
    if "\n" in value or not value.strip():
        raise ConfigError(f"credentials from {source} must be one non-empty line",
                          hint="write 'user:password' for basic auth or 'bearer:TOKEN'")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ConfigError(f"credentials from {source} hold control characters")
    scope = endpoint = None
    scoped = _SCOPED.fullmatch(value)
    if scoped is not None:
        scope, value = _check_scope(scoped.group(1), source), scoped.group(3)
        if scoped.group(2) is not None:
            endpoint = _check_bound_endpoint(
                scope, scoped.group(2), source,
                form="'s3://BUCKET/PREFIX https://ENDPOINT KEY_ID:SECRET'")
    creds = _parse_secret(value, source)
    return Credentials(creds.scheme, creds.secret, username=creds.username, source=source,
                       scope=scope, endpoint=endpoint)


# The operator's binding of boto3's own credential chain to one s3:// origin (see
# AmbientBinding); `trustboot release --ambient-credentials` reads it by default.
AMBIENT_ENV = "TRUSTBOOT_AMBIENT_CREDENTIALS"
_AMBIENT_FORM = f"{AMBIENT_ENV}='s3://BUCKET/PREFIX https://ENDPOINT'"


@dataclass(frozen=True)
class AmbientBinding:
    """The s3:// origin (and S3 endpoint) whose requests boto3's own credential chain
    (AWS_* variables, AWS_PROFILE and ~/.aws, a container or instance role: the "ambient"
    credentials) may sign when no credentials are given: written as a bound secret is,
    without the secret ('s3://BUCKET/PREFIX [https://ENDPOINT]'). A recipe chooses its
    origin URL and endpoint; the operator's binding says which one the job's own
    credentials are for. Nothing in it is secret."""

    scope: str
    endpoint: str | None = None  # None: only the default endpoint (AWS S3), as for secrets
    source: str = ""  # where it came from, for messages


def parse_ambient_binding(text: str, source: str) -> AmbientBinding:
    """'s3://BUCKET/PREFIX' or 's3://BUCKET/PREFIX https://ENDPOINT' (one line)."""
    what = f"the ambient AWS credentials (bound by {source})"
    value = text.strip()
    if not _one_line(value):
        raise ConfigError(f"{source} must be one line: the s3:// origin URL the ambient AWS "
                          "credentials are for, then its endpoint", hint=f"write {_AMBIENT_FORM}")
    words = value.split()
    if len(words) > 2 or urlsplit(words[0]).scheme.lower() != "s3" or (
            len(words) == 2 and urlsplit(words[1]).scheme.lower() not in ("https", "http")):
        # never shown: a secret written here by mistake must not reach a log
        raise ConfigError(f"{source} is not 's3://BUCKET/PREFIX [https://ENDPOINT]': it binds "
                          "the ambient AWS credentials to an s3:// origin and holds no secret",
                          hint=f"write {_AMBIENT_FORM} (the credentials themselves come "
                               "from AWS_* variables, the profile or the instance role)")
    scope = _check_scope(words[0], source, what=what, then="")
    endpoint = None
    if len(words) == 2:
        endpoint = _check_bound_endpoint(scope, words[1], source, form=_AMBIENT_FORM,
                                         what=what, then="")
    return AmbientBinding(scope, endpoint, source)


# The operator's binding of the CA home's TLS client certificate NAME (a recipe's
# origin.client_cert) to the origin it may authenticate to (see ClientCertBinding);
# `trustboot release --client-cert-origin` reads it by default.
CLIENT_CERT_ENV = "TRUSTBOOT_CLIENT_CERT_ORIGIN"
_CLIENT_CERT_FORM = f"{CLIENT_CERT_ENV}='https://HOST/PATH/ NAME'"


@dataclass(frozen=True)
class ClientCertBinding:
    """The origin URL the CA's TLS client certificate ``name`` may authenticate to when a
    recipe names it (origin.client_cert): written as a bound secret is, with the
    certificate's name in the secret's place ('https://HOST/PATH/ NAME'). Every origin
    that trusts the CA's client certificates takes writes made with it, and a recipe
    chooses origin.url; the operator's binding says which origin the certificate is for.
    Nothing in it is secret."""

    scope: str
    name: str
    source: str = ""  # where it came from, for messages


def parse_client_cert_binding(text: str, source: str) -> ClientCertBinding:
    """'https://HOST/PATH/ NAME' (one line): the origin, then the certificate's name."""
    from trustboot.ca.profiles import check_name

    value = text.strip()
    words = value.split()
    try:
        named = len(words) == 2 and bool(check_name(words[1]))
    except ConfigError:  # a name `ca issue client` refuses, so no certificate of the CA's
        named = False
    if (not _one_line(value) or not named
            or urlsplit(words[0]).scheme.lower() not in ("https", "http")):
        # never shown: a secret written here by mistake must not reach a log
        raise ConfigError(f"{source} is not 'https://HOST/PATH/ NAME': it binds the TLS "
                          "client certificate NAME of the CA to the origin it may "
                          "authenticate to, and holds no secret",
                          hint=f"write {_CLIENT_CERT_FORM} (NAME as in `trustboot ca issue "
                               "client NAME` and the recipe's origin.client_cert)")
    name = words[1]
    scope = _check_scope(words[0], source, what=f"the client certificate {name} (bound by "
                         f"{source})", then="", are="is")
    return ClientCertBinding(scope, name, source)


def _one_line(value: str) -> bool:
    """A binding's value: something, on one line, without control characters."""
    return bool(value) and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)


def _check_bound_endpoint(scope: str, endpoint: str, source: str, *, form: str,
                          what: str | None = None, then: str = _AFTER_URL) -> str:
    """The S3 endpoint written after an s3:// binding: scheme://host[:port] only."""
    endpoint = _check_scope(endpoint, source, what=what, then=then)
    if urlsplit(scope).scheme.lower() != "s3" or urlsplit(endpoint).path not in ("", "/"):
        raise ConfigError(f"{what or f'credentials from {source}'}: only an s3:// binding is "
                          "followed by an endpoint, and that is scheme://host[:port] only",
                          hint=f"write {form}")
    return endpoint


def _check_scope(url: str, source: str, *, what: str | None = None,
                 then: str = _AFTER_URL, are: str = "are") -> str:
    """A binding's URL, which must be an origin URL (``what``: who is bound to it)."""
    bad = ConfigError(
        f"{what or f'credentials from {source}'} {are} bound to {redact_url(url)!r}, which "
        "is not an origin URL", hint="write the origin's URL (scheme, host, path; nothing "
        f"after ? or #, no user@){then}")
    try:
        parts = split_url(url, "the binding")
    except ConfigError:
        raise bad from None
    if (not parts.hostname or parts.username is not None or parts.password is not None
            or parts.query or parts.fragment):
        raise bad
    return url


def _parse_secret(value: str, source: str) -> Credentials:
    lower = value.lower()
    for prefix in ("bearer:", "bearer "):
        if lower.startswith(prefix):
            token = value[len(prefix):].strip()
            if not token:
                raise ConfigError(f"credentials from {source}: the bearer token is empty")
            return Credentials("bearer", token, source=source)
    user, sep, password = value.partition(":")
    if not sep or not user:
        raise ConfigError(f"credentials from {source} are not 'user:password' or "
                          "'bearer:TOKEN'", hint="write one line: user:password")
    return Credentials("basic", password, username=user, source=source)


def split_url(url: str, what: str) -> SplitResult:
    """``urlsplit(url)`` with its host and port checked: a malformed URL (a broken IPv6
    literal, two ports, a port out of range, characters that NFKC turns into '/', '?',
    '#' or '@') is a ConfigError naming ``what``, not a ValueError from deep inside."""
    try:
        parts = urlsplit(url)
        parts.hostname  # noqa: B018 - each raises ValueError on a malformed URL
        parts.port  # noqa: B018
    except ValueError as exc:
        # the parser's text quotes the netloc, which may hold a user:password@
        reason = "a malformed host or port" if "@" in url else str(exc)
        raise ConfigError(f"{what} is not a valid URL: {reason}",
                          hint="check the host and the port") from None
    return parts


def check_url(url: str, what: str, *, schemes: Collection[str] | None = None) -> SplitResult:
    """The one rule for a URL given as input (an S3 endpoint, a public URL, a recipe's
    origin): no whitespace, control, format or surrogate characters, a valid host and port
    (split_url), a host unless file://, no user:password@ (credentials come from a file or
    an environment variable: a URL is shown in messages and JSON and written into
    manifests), no query or fragment, and a scheme among ``schemes`` if given. Every
    message names ``what`` and shows the URL through redact_url."""
    shown = redact_url(url)
    if not url or any(c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Cs")
                      for c in url):
        raise ConfigError(f"{what} {shown!r} is empty or holds whitespace, control or "
                          "format characters", hint="give the URL as plain text")
    parts = split_url(url, f"{what} {shown!r}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{what} {shown!r} holds credentials",
                          hint="give them with --credentials-file or --credentials-env "
                               "(recipe: origin.credentials), never in the URL")
    if schemes is not None and parts.scheme not in schemes:
        raise ConfigError(f"{what} {shown!r} has the scheme {parts.scheme or '(none)'!r}, "
                          f"not one of {', '.join(sorted(schemes))}")
    if parts.scheme != "file" and not parts.hostname:
        raise ConfigError(f"{what} {shown!r} has no host")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ConfigError(f"{what} {shown!r} may not have a query or fragment")
    return parts


def check_web_url(url: str, what: str, *, unsafe_http: bool = False) -> SplitResult:
    """check_url for a URL requests are sent to (an S3 endpoint, the public URL the
    read-back fetches as iPXE): https://, plain http:// only with ``unsafe_http``."""
    parts = check_url(url, what)
    if parts.scheme not in ("https", "http"):
        raise ConfigError(f"{what} {redact_url(url)!r} is not an https:// URL",
                          hint="for example https://boot.example.net/")
    if parts.scheme == "http" and not unsafe_http:
        raise ConfigError(f"{what} {redact_url(url)} is plain HTTP: what travels over it "
                          "could be read and changed on the path",
                          hint="use https://, or pass --unsafe-http if you really must")
    return parts


def check_option_urls(options: OriginOptions) -> None:
    """The URLs of ``options`` (endpoint, public URL), before any request or upload."""
    if options.endpoint_url is not None:
        check_web_url(options.endpoint_url, "--endpoint-url", unsafe_http=options.unsafe_http)
    if options.public_url is not None:
        check_web_url(options.public_url, "--public-url", unsafe_http=options.unsafe_http)


def _origin_parts(url: str) -> tuple[str, str, list[str]]:
    """(scheme, host[:port] with the default port made explicit, path segments)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port or {"https": 443, "http": 80}.get(scheme)
    return scheme, f"{host}:{port}" if port else host, [s for s in parts.path.split("/") if s]


def _escapes(segment: str) -> bool:
    """True when a server may read ``segment`` as more than one plain name: a dot
    segment, also percent-encoded or before ';params' (servlet containers drop those),
    or one holding an encoded '/' or '\\' (nginx decodes %2F, then resolves the '..' it
    makes) or a '%' still after decoding (a proxy in front may decode twice); also
    after NFKC (some servers fold a fullwidth full stop or solidus into '.' and '/')."""
    decoded = unicodedata.normalize("NFKC", unquote(segment))
    return decoded.split(";", 1)[0] in (".", "..", "") or any(c in decoded for c in "/\\%")


def credentials_cover(scope: str, url: str) -> bool:
    """True when credentials bound to ``scope`` may go to origin ``url``: same scheme and
    host (and port), and the origin's path is the scope's path or below it."""
    try:
        s_scheme, s_host, s_path = _origin_parts(scope)
        u_scheme, u_host, u_path = _origin_parts(url)
        parts = urlsplit(url)
    except ValueError:
        return False  # a malformed URL covers nothing
    # "boot/../elsewhere" starts with "boot" but is not below it: no segment a server
    # could resolve to somewhere else counts as covered
    if any(_escapes(seg) for seg in u_path):
        return False
    if parts.username is not None or parts.password is not None:
        return False  # a user@ part (parsers disagree on such URLs): never covered
    return (s_scheme, s_host) == (u_scheme, u_host) and u_path[:len(s_path)] == s_path


def _endpoint_of(endpoint: str | None) -> tuple[str, str] | None:
    if endpoint is None:
        return None
    scheme, host, _path = _origin_parts(endpoint)
    return scheme, host


def check_credentials_scope(url: str, creds: Credentials | None, *,
                            endpoint: str | None = None) -> None:
    """Refuse credentials bound to another origin than ``url`` (before any request);
    for s3://, also to another S3 endpoint than ``endpoint`` (None: the default)."""
    if creds is None or creds.scope is None:
        return
    _check_bound(url, endpoint, creds.scope, creds.endpoint,
                 what=f"credentials from {creds.source}",
                 rebind=f"'{creds.scope} {endpoint or 'https://ENDPOINT'} KEY_ID:SECRET'",
                 other="give the credentials meant for this origin")


def check_ambient_scope(url: str, binding: AmbientBinding, *,
                        endpoint: str | None = None) -> None:
    """Refuse to let boto3's own credentials sign for ``url`` at ``endpoint`` when the
    operator bound them (``binding``) to another origin or endpoint."""
    here = f"{redact_url(url)}{' ' + redact_url(endpoint) if endpoint else ''}"
    _check_bound(url, endpoint, binding.scope, binding.endpoint,
                 what=f"the ambient AWS credentials (bound by {binding.source})",
                 rebind=f"{AMBIENT_ENV}='{binding.scope} {endpoint or 'https://ENDPOINT'}'",
                 other=f"bind them to this origin if it is the one they are for: "
                       f"{AMBIENT_ENV}='{here}'")


def check_client_cert_scope(url: str, name: str, binding: ClientCertBinding) -> None:
    """Refuse to authenticate to ``url`` with the client certificate ``name`` unless the
    operator's ``binding`` is for that certificate and covers that origin."""
    here = f"{CLIENT_CERT_ENV}='{redact_url(url)} {name}'"
    if name != binding.name:
        raise ConfigError(
            f"{binding.source} binds the client certificate {binding.name}, not {name} "
            "(origin.client_cert)",
            hint="check origin.client_cert (a changed recipe must not authenticate with "
                 f"another certificate), or bind this one if it is meant for this origin: "
                 f"{here}")
    _check_bound(url, None, binding.scope, None,
                 what=f"the client certificate {name} (bound by {binding.source})",
                 are="is", rebind=here,
                 other=f"bind it to this origin if it is the one it is for: {here}")


def _check_bound(url: str, endpoint: str | None, scope: str, bound_endpoint: str | None, *,
                 what: str, rebind: str, other: str, are: str = "are") -> None:
    """The one rule for a binding (a secret's, or the ambient credentials'): ``url`` at
    or below ``scope``, and for s3:// the same endpoint (None: the default one)."""
    if credentials_cover(scope, url) and urlsplit(url).scheme.lower() == "s3":
        try:
            same = _endpoint_of(bound_endpoint) == _endpoint_of(endpoint)
        except ValueError:
            same = False
        if same:
            return
        raise ConfigError(
            f"{what} {are} bound to {scope} at "
            f"{redact_url(bound_endpoint) if bound_endpoint else 'the default S3 endpoint'}"
            f", not at {redact_url(endpoint) if endpoint else 'the default S3 endpoint'}",
            hint="check the endpoint (a changed recipe or option must not have the store's "
                 f"requests signed for another server), or bind them to this one: {rebind}")
    if credentials_cover(scope, url):
        return
    raise ConfigError(
        f"{what} {are} bound to origin {redact_url(scope)}, not to {redact_url(url)}",
        hint="check the origin URL (a changed recipe or option must not send credentials "
             f"elsewhere), or {other}")


def load_credentials(*, file: Path | None = None, env: str | None = None,
                     environ: dict[str, str] | None = None) -> Credentials | None:
    """Credentials from a private file or a named environment variable (never argv)."""
    if file is not None and env is not None:
        raise ConfigError("give credentials as a file or an environment variable, not both")
    if file is not None:
        try:
            text = _read_secret_file(file).decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"credentials file {file} is not UTF-8 text") from None
        return parse_credentials(text, f"file {file}")
    if env is not None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env):
            raise ConfigError(f"{env!r} is not an environment variable name")
        value = (environ if environ is not None else dict(os.environ)).get(env)
        if value is None:
            raise ConfigError(f"environment variable {env} is not set",
                              hint=f"export {env}='user:password' (or 'bearer:TOKEN')")
        return parse_credentials(value, f"environment variable {env}")
    return None


# scheme -> "module:Class"; imported on use so s3:// alone pulls in boto3.
_BACKENDS: dict[str, str] = {
    "file": "trustboot.publish.fileorigin:FileOrigin",
    "https": "trustboot.publish.webdav:WebDAVOrigin",
    "http": "trustboot.publish.webdav:WebDAVOrigin",
    "s3": "trustboot.publish.s3:S3Origin",
}


def open_origin(url: str, options: OriginOptions) -> Origin:
    """The backend for ``url`` by scheme; plain http:// only with ``unsafe_http``."""
    if not isinstance(url, str) or not url or any(ord(c) < 0x21 for c in url):
        raise ConfigError(f"origin URL {url!r} is empty or holds whitespace/control characters")
    scheme = split_url(url, f"origin {redact_url(url)!r}").scheme.lower()
    if scheme not in _BACKENDS:
        raise ConfigError(
            f"origin {redact_url(url)!r} has an unsupported scheme {scheme or '(none)'!r}",
            hint="use file:///DIR, https://HOST/PATH/ (WebDAV) or s3://BUCKET/PREFIX")
    if scheme == "http" and not options.unsafe_http:
        raise ConfigError(
            f"origin {redact_url(url)} is plain HTTP: anyone on the path could change what "
            "is published", hint="use https://, or pass --unsafe-http if you really must")
    check_option_urls(options)
    check_credentials_scope(url, options.credentials, endpoint=options.endpoint_url)
    module_name, _, cls_name = _BACKENDS[scheme].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"the {scheme}:// backend is not available: {exc}",
                          hint="install trustboot with its optional dependencies "
                               "(pip install 'trustboot[s3]' for s3://)") from None
    factory: Callable[[str, OriginOptions], Origin] = getattr(module, cls_name)
    return factory(url, options)
