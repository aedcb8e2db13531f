"""The release manifest: one shape, written by publish/release, read by publish and audit.

Stored as ``releases/<id>/release.json`` (optionally with a detached CMS signature
``release.json.sig``)::

    {"version": 1, "release": "<id>", "origin": "https://..." | null,
     "created": "<ISO8601Z>", "ca_sha256": "<hex>" | null,
     "signer": {"subject": "...", "serial": "<hex>", "not_after": "<ISO8601Z>"} | null,
     "entry": "boot.ipxe" | null,
     "entry_path": "menus/staging.ipxe",  (optional)
     "ipxe": {...build manifest...} | null,
     "files": [{"name": "vmlinuz", "size": N, "sha256": "<hex>", "sig": "vmlinuz.sig"}, ...]}

``files`` lists every object of the release (the .sig files too, with ``"sig": null``)
except release.json and its own signature. Names are release-relative keys (check_key).
``entry_path`` is the path on the origin the release was published for (the entry its
script is switched to): retention (prune) counts a release only for that entry path, so
one recipe's retention never prunes another's releases on a shared origin. Manifests
written before it existed have none: nothing proves whose they are (see pipeline.prune).
Parsing is strict: unknown keys, wrong types and duplicate names are refused, because a
manifest read back from an origin is input like any other.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from trustboot import jsonin
from trustboot.errors import ConfigError
from trustboot.publish.origin import key_problem, redact_url
from trustboot.text import clean, shown, shown_names

MANIFEST_VERSION = 1
MANIFEST_NAME = "release.json"
MAX_MANIFEST_BYTES = 4 << 20
MAX_FILES = 10_000
RELEASES_PREFIX = "releases"
DEFAULT_ENTRY_PATH = "boot.ipxe"

_RELEASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SERIAL = re.compile(r"[0-9a-f]{1,64}")
_TOP_KEYS = {"version", "release", "origin", "created", "ca_sha256", "signer", "entry",
             "entry_path", "ipxe", "files"}
_FILE_KEYS = {"name", "size", "sha256", "sig"}
_SIGNER_KEYS = {"subject", "serial", "not_after"}


def release_key_problem(name: object) -> str | None:
    """Why ``name`` cannot be an object of a release: the key rule, and no dot-files (the
    origin hides them: upload temps and the lock live there)."""
    problem = key_problem(name)
    if problem is None and isinstance(name, str) and any(
            seg.startswith(".") for seg in name.split("/")):
        problem = "a name starting with '.' is hidden by the origin"
    return problem


ENTRY_PATH_HINT = ("use a path of its own, outside releases/ and not ending in .sig, e.g. "
                   "boot.ipxe or menus/staging.ipxe")


def entry_path_problem(path: object) -> str | None:
    """Why ``path`` cannot be an entry path (where iPXE's embedded script chains to): the
    key rule, not a dot-file (the origin hides those and keeps its own records there), not
    under releases/, which holds only releases: prune and `publish list` read
    everything there as a release's object, so an entry pair there would not protect the
    release it serves; and not a name ending in .sig: that is a signature's name (the
    switch writes PATH.sig beside PATH), and an entry switched to ``boot.ipxe.sig``
    wrote its script over another entry's signature, which iPXE then refused.
    (What the origin already holds at the path is checked at the switch:
    pipeline.check_switch_target.)"""
    problem = release_key_problem(path)
    if problem is None and isinstance(path, str) and (
            path == RELEASES_PREFIX or path.startswith(RELEASES_PREFIX + "/")):
        problem = f"it is inside {RELEASES_PREFIX}/, which holds only the releases"
    if problem is None and isinstance(path, str) and path.endswith(".sig"):
        problem = (f"it ends in .sig, a signature's name (the signature of "
                   f"{path[:-4]!r}, which may be another entry's)")
    return problem


def check_entry_path(path: str) -> str:
    """The one entry-path rule (entry_path_problem), for every command that takes one."""
    problem = entry_path_problem(path)
    if problem:
        raise ConfigError(f"entry path {path!r} is refused: {problem}", hint=ENTRY_PATH_HINT)
    return path


def release_id_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return "it is not a string"
    if not _RELEASE_ID.fullmatch(value):
        return ("a release id is 1-128 characters from A-Z a-z 0-9 '._-', starting with a "
                "letter or digit")
    return None


def check_release_id(value: str) -> str:
    """The one release-id rule: ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``."""
    problem = release_id_problem(value)
    if problem:
        raise ConfigError(f"release id {shown(value)} is refused: {problem}",
                          hint="use e.g. 2026.11.25-1 or a git describe output")
    return value


_RESIGNED = re.compile(r"^(?P<base>.+)\.rs-[0-9a-f]{12}$")
_MAX_ID = 128
_RESIGN_SUFFIX_LEN = len(".rs-") + 12


def resign_id(live_id: str, signer_sha256: str) -> str:
    """The release id `trustboot resign` gives its re-sign of ``live_id`` by the signer
    whose certificate has this sha256 (hex): deterministic, so a rerun after a crash finds
    (and resumes) the same id, and re-signing a re-signed release does not grow the id.
    (Here, beside the other id rules: a repair tells resign's own switch by it.)"""
    m = _RESIGNED.match(live_id)
    base = m.group("base") if m else live_id
    base = base[: _MAX_ID - _RESIGN_SUFFIX_LEN].rstrip("._-") or "r"
    return f"{base}.rs-{signer_sha256[:12]}"


def release_prefix(release_id: str) -> str:
    """``releases/<id>/`` — where a release's objects live on the origin."""
    return f"{RELEASES_PREFIX}/{check_release_id(release_id)}/"


def format_time(value: dt.datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    # Sub-second digits only when there are any: releases published within one second
    # (scripts, tests) still sort in the order they were made.
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if value.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return value.astimezone(dt.UTC).strftime(fmt)


def parse_time(value: object, where: str) -> dt.datetime:
    if not isinstance(value, str) or not re.fullmatch(
            r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z", value):
        raise _bad(where, f"expected an ISO 8601 UTC time like 2026-01-31T12:00:00Z, "
                          f"got {shown(value)}")
    try:
        return dt.datetime.fromisoformat(value[:-1]).replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise _bad(where, str(exc)) from None


@dataclass(frozen=True)
class ManifestFile:
    name: str
    size: int
    sha256: str
    sig: str | None = None  # the name of this file's detached signature, if any

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256, "sig": self.sig}


@dataclass(frozen=True)
class SignerSummary:
    subject: str
    serial: str  # lower-case hex
    not_after: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "serial": self.serial,
                "not_after": format_time(self.not_after)}


@dataclass(frozen=True)
class ReleaseManifest:
    release: str
    created: dt.datetime
    files: tuple[ManifestFile, ...]
    origin: str | None = None
    ca_sha256: str | None = None
    signer: SignerSummary | None = None
    entry: str | None = None
    ipxe: dict[str, Any] | None = field(default=None, compare=False)
    version: int = MANIFEST_VERSION
    # the origin path its entry is switched to; None in manifests from before it was kept
    entry_path: str | None = None

    def __post_init__(self) -> None:
        _validate(self)

    def file(self, name: str) -> ManifestFile | None:
        for f in self.files:
            if f.name == name:
                return f
        return None

    def same_content(self, other: ReleaseManifest) -> bool:
        """Same release, same objects, same entry: times, origin and notes may differ."""
        return (self.release == other.release and self.entry == other.entry
                and sorted(self.files, key=lambda f: f.name)
                == sorted(other.files, key=lambda f: f.name))

    def to_json(self) -> dict[str, Any]:
        doc = {
            "version": self.version, "release": self.release, "origin": self.origin,
            "created": format_time(self.created), "ca_sha256": self.ca_sha256,
            "signer": self.signer.to_json() if self.signer else None,
            "entry": self.entry, "ipxe": self.ipxe,
            "files": [f.to_json() for f in sorted(self.files, key=lambda f: f.name)],
        }
        if self.entry_path is not None:  # (absent, not null: as a manifest without it)
            doc["entry_path"] = self.entry_path
        return doc

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode()


def _bad(where: str, message: str) -> ConfigError:
    return ConfigError(f"release manifest {where}: {message}",
                       hint="the manifest is written by `trustboot publish`/`release`; "
                            "regenerate it instead of editing it")


def _validate(m: ReleaseManifest) -> None:
    if m.version != MANIFEST_VERSION:
        raise _bad("version", f"unsupported version {shown(m.version)} (expected 1)")
    problem = release_id_problem(m.release)
    if problem:
        raise _bad("release", f"{shown(m.release)}: {problem}")
    if m.created.tzinfo is None:
        raise _bad("created", "must be timezone-aware")
    if m.origin is not None:
        try:
            parts = urlsplit(m.origin)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:  # a broken IPv6 literal, a port out of range: from the origin
            raise _bad("origin", f"not a valid URL: {shown(redact_url(m.origin))}") from None
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.username \
                or parts.password or any(ord(c) < 0x21 for c in m.origin) \
                or clean(m.origin) != m.origin:
            # (a manifest comes from the origin: never echo a user:password@ it holds)
            raise _bad("origin", f"expected an https:// URL without credentials, "
                                 f"got {shown(redact_url(m.origin))}")
    if m.ca_sha256 is not None and not _HEX64.fullmatch(m.ca_sha256):
        raise _bad("ca_sha256", "expected 64 lower-case hex digits")
    if len(m.files) > MAX_FILES:
        raise _bad("files", f"more than {MAX_FILES} entries")
    for f in m.files:  # first: the duplicate check below hashes the names
        problem = release_key_problem(f.name)
        if problem:
            raise _bad(f"files[{shown(f.name)}]", problem)
    names = [f.name for f in m.files]
    if len(set(names)) != len(names):
        dup = sorted(n for n, count in collections.Counter(names).items() if count > 1)
        raise _bad("files", f"duplicate name(s) {shown_names(dup)}")
    for f in m.files:
        where = f"files[{shown(f.name)}]"
        if f.name in (MANIFEST_NAME, MANIFEST_NAME + ".sig"):
            raise _bad(where, "the manifest does not list itself")
        if isinstance(f.size, bool) or not isinstance(f.size, int) or f.size < 0:
            raise _bad(where, f"size must be a byte count, got {shown(f.size)}")
        if not isinstance(f.sha256, str) or not _HEX64.fullmatch(f.sha256):
            raise _bad(where, "sha256 must be 64 lower-case hex digits")
        if f.sig is not None and f.sig not in names:
            raise _bad(where, f"its signature {shown(f.sig)} is not in the release")
    if m.entry is not None and m.entry not in names:
        raise _bad("entry", f"{shown(m.entry)} is not one of the release's files")
    if m.entry_path is not None:
        problem = entry_path_problem(m.entry_path)
        if problem:
            raise _bad("entry_path", f"{shown(m.entry_path)}: {problem}")
    if m.signer is not None:
        if not isinstance(m.signer.subject, str) or not _SERIAL.fullmatch(m.signer.serial):
            raise _bad("signer", "expected a subject and a lower-case hex serial")
        if clean(m.signer.subject) != m.signer.subject:  # `publish list` shows it
            raise _bad("signer", "the subject holds control or format characters")


def _obj(value: object, keys: set[str], where: str, *, required: Sequence[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(where, "expected a JSON object")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise _bad(where, f"unknown key(s) {shown_names(unknown)}")
    missing = [k for k in required if k not in value]
    if missing:
        raise _bad(where, f"missing key(s) {', '.join(missing)}")
    return value


def _opt_str(value: object, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _bad(where, f"expected a string or null, got {type(value).__name__}")


def parse_manifest(data: bytes, *, source: str = MANIFEST_NAME) -> ReleaseManifest:
    """Strictly parse a manifest; ConfigError names ``source`` and the offending key."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise _bad(source, "larger than 4 MiB")
    try:
        raw = jsonin.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(source, f"not valid JSON: {exc}") from None
    top = _obj(raw, _TOP_KEYS, source, required=("version", "release", "created", "files"))
    if not isinstance(top["files"], list):
        raise _bad(f"{source}: files", "expected a list")
    files = []
    for i, item in enumerate(top["files"]):
        f = _obj(item, _FILE_KEYS, f"{source}: files[{i}]", required=("name", "size", "sha256"))
        files.append(ManifestFile(name=f["name"], size=f["size"], sha256=f["sha256"],
                                  sig=_opt_str(f.get("sig"), f"{source}: files[{i}].sig")))
    signer = None
    if top.get("signer") is not None:
        s = _obj(top["signer"], _SIGNER_KEYS, f"{source}: signer",
                 required=("subject", "serial", "not_after"))
        signer = SignerSummary(subject=_opt_str(s["subject"], f"{source}: signer") or "",
                               serial=_opt_str(s["serial"], f"{source}: signer") or "",
                               not_after=parse_time(s["not_after"], f"{source}: signer"))
    ipxe = top.get("ipxe")
    if ipxe is not None and not isinstance(ipxe, dict):
        raise _bad(f"{source}: ipxe", "expected an object or null")
    version = top["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise _bad(f"{source}: version", "expected an integer")
    try:
        return ReleaseManifest(
            version=version, release=top["release"],
            created=parse_time(top["created"], f"{source}: created"),
            files=tuple(files), origin=_opt_str(top.get("origin"), f"{source}: origin"),
            ca_sha256=_opt_str(top.get("ca_sha256"), f"{source}: ca_sha256"),
            signer=signer, entry=_opt_str(top.get("entry"), f"{source}: entry"), ipxe=ipxe,
            entry_path=_opt_str(top.get("entry_path"), f"{source}: entry_path"))
    except ConfigError as exc:
        raise ConfigError(exc.message.replace("release manifest ",
                                              f"release manifest {source}: ", 1),
                          hint=exc.hint) from None
