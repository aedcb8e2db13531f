"""Publish a release to an origin, prove what it serves, then switch the entry to it.

Layout on the origin::

    releases/<id>/release.json      the manifest: the release id's claim (written first)
    releases/<id>/<key>, <key>.sig  immutable objects
    <entry_path>, <entry_path>.sig  the firmware's fixed entry URL, switched last

Order of a publish, and why:

1. Every local signature is judged with iPXE's rules before anything is uploaded.
2. Under the origin's lock, ``release.json`` is written first. It claims the id: an id whose
   manifest lists other content is refused, and an object found at its key under a claimed
   id can only have been written (atomically, whole) by a run publishing that same content.
   That is how a resumed run skips objects whose size matches on backends that store no
   digest (file://, WebDAV): no digest sidecars, one source of truth. Backends that do store
   a sha256 (S3 metadata) are compared on it as well. Tampering on the origin is caught by
   step 4, which checks every byte anyway.
3. Missing or different objects are uploaded in parallel (atomic per object). An object
   that was staged on the origin while it was hashed (``LocalObject.staged``, see
   ``origin.StagingOrigin``) is moved into place on the server instead, after checking
   that the local file still has the stamp it had while it was read.
4. Every object is read back through its public HTTPS URL as iPXE would, its size and
   sha256 compared, and every .sig judged on the served bytes. Any problem: no switch,
   exit 4, the entry untouched. (An object whose local file this process hashed, still
   with that stamp, is compared with the file byte for byte instead of hashed again:
   readback.Tally; the digests are those of the bytes served either way.)
5. Switch: ``<entry>.sig`` is copied to ``<entry_path>.sig``, then ``<entry>`` to
   ``<entry_path>``, each an atomic replace. A client fetching in between gets the old
   script with the new signature: imgverify fails (the digest does not match), the script
   is never run, and the firmware's retry gets the consistent pair. Then the entry pair is
   fetched and verified again. Which release the entry path now serves is written down
   in ``.trustboot-live.json`` (LIVE_RECORD): two releases can have byte-identical entry
   pairs, and only the record tells them apart.

An interrupted switch: the two replacements are one round trip apart, but a run killed (or
cut off from the origin) exactly between them leaves the new signature beside the old
script. That pair fails imgverify (never boots anything unverified), but it would stay
until the next switch. So before the first replacement the switch is written down in
``.trustboot-switch.json`` at the origin root (release id and entry path), and removed once
both replacements are done. Every later run that takes the origin's lock (publish,
rollback, prune, ``publish repair``) first looks for that record: if the entry pair as
served does not verify, it completes the recorded switch to that release (verified before
the record was written) and checks the pair again; if the pair verifies (the run died
before the first replacement, or after the second), the record is dropped and the live
release stays. A recorded switch back to a release older than another one on the origin,
or one that signed manifests of every release do not show to go forward, is not completed
by a repair: the record is on the origin, anyone who writes there can plant one, and the
live record is no better evidence (see _switch_back).
``origin check`` reports a mismatched pair and names ``publish repair``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from trustboot import jsonin
from trustboot.cms.freshness import format_duration
from trustboot.cms.verify import MAX_SIGNATURE_SIZE, SignerReport, Verdict
from trustboot.errors import ConfigError, OperationalError, TrustbootError, VerificationError
from trustboot.ipxe.syntax import runs_as_script
from trustboot.publish.cache import PublishCache
from trustboot.publish.manifest import (
    DEFAULT_ENTRY_PATH,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    RELEASES_PREFIX,
    ManifestFile,
    ReleaseManifest,
    SignerSummary,
    check_entry_path,
    check_release_id,
    format_time,
    parse_manifest,
    release_id_problem,
    release_key_problem,
    release_prefix,
    resign_id,
)
from trustboot.publish.origin import (
    AgeUnknown,
    NotServed,
    ObjectStat,
    Origin,
    OriginOptions,
    Staged,
    TooLarge,
    check_key,
    redact_url,
    staging_of,
)
from trustboot.publish.readback import (
    EXPIRY_RULES,
    LocalCopy,
    Reader,
    Served,
    Trust,
    hash_chunks,
    judge,
    judge_beside_the_clock,
    signature_hashes,
    tally_chunks,
)
from trustboot.publish.revocation import Revoked
from trustboot.text import clean, shown, shown_names

__all__ = ["LocalObject", "PruneResult", "PublishProgress", "PublishResult", "ReleaseInfo",
           "Trust", "list_releases", "prune", "publish_release", "repair", "repair_switch",
           "rollback", "scan_directory"]

MAX_OBJECT_SIZE = 64 << 30
MAX_ENTRY_SIZE = 16 << 20
MAX_LOCAL_FILES = 10_000
# Objects at least this large are read back as soon as they are uploaded (in parallel with
# the rest of the upload) instead of after all uploads.
EARLY_READBACK_MIN = 4 << 20
# Objects at least this large, published from a file this process hashed, are read back
# by comparing them with that file (readback.Tally); smaller ones are hashed.
LOCAL_COMPARE_MIN = 1 << 20
# How long an early read-back waits before looking again at an object whose ETag was not
# settled (ObjectStat.settled): past the second it was written in, by the origin's clock.
SETTLE_WAIT = 1.05
# The record of a switch in progress (see the module docstring); at the origin root, next
# to the lock, never under releases/.
SWITCH_JOURNAL = ".trustboot-switch.json"
# Which release each entry path was last switched to (release id and the entry pair's
# sha256), rewritten by every switch under the lock. Two releases can have byte-identical
# entry pairs (the same script signed again by the same RSA key): the served bytes alone
# cannot tell which one is live, and `publish list`, rollback, prune and resign need to.
LIVE_RECORD = ".trustboot-live.json"
MAX_LIVE_RECORD = 1 << 20
# Temporary objects of uploads older than this are a killed run's leftovers: removed by
# the next publish or prune (under the lock; the age spares a run whose lock was broken).
STALE_TEMP_AGE = 3600.0


@dataclass(frozen=True)
class LocalObject:
    key: str
    path: Path
    size: int
    sha256: str
    # already uploaded to a temporary object of the origin while it was hashed (a
    # StagingOrigin's stage_file): publishing moves it into place instead of uploading
    staged: Staged | None = field(default=None, compare=False, repr=False)


class PublishProgress(Protocol):
    def phase(self, name: str, total_bytes: int) -> None: ...  # "upload", "readback", ...

    def advance(self, nbytes: int) -> None: ...

    def item(self, key: str, action: str) -> None: ...  # "uploaded", "skipped", "verified"


@dataclass
class PublishResult:
    release: str
    origin: str
    entry: str | None
    entry_path: str | None
    switched: bool = False
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    readback: str = "https"  # "https" (public URL, as iPXE) or "backend" (no public URL)
    # verified by a full read-back in an earlier run, unchanged since (size + ETag)
    readback_cached: list[str] = field(default_factory=list)
    previous_live: str | None = None
    signer: dict[str, Any] | None = None
    bytes_uploaded: int = 0
    # an interrupted switch found and completed first (see repair_switch), or None
    repaired: str | None = None
    # temporary objects of killed uploads, removed (see STALE_TEMP_AGE)
    removed_temps: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "release": self.release, "origin": self.origin, "entry": self.entry,
            "entry_path": self.entry_path, "switched": self.switched,
            "repaired": self.repaired, "removed_temps": self.removed_temps,
            "uploaded": self.uploaded, "skipped": self.skipped, "verified": self.verified,
            "readback": self.readback, "readback_cached": self.readback_cached,
            "previous_live": self.previous_live,
            "signer": self.signer, "bytes_uploaded": self.bytes_uploaded,
        }


@dataclass(frozen=True)
class ReleaseInfo:
    id: str
    created: dt.datetime | None
    signer: str | None
    expiry: dt.datetime | None
    live: bool
    complete: bool
    files: int
    problem: str | None = None
    # the signers of the signature that proves who signed it that are revoked, every one
    # (publish.revocation; a signature may have several signers, iPXE checks them all)
    revoked: tuple[Revoked, ...] = ()
    # signer, signer_serial and expiry are those of a signature as judged (never the
    # manifest's own claim: whoever writes to the origin writes that): release.json.sig,
    # or, when the release has none, its entry script's .sig (``verified_by``); when there
    # is none or it does not verify, they are None and ``unverified`` says why
    signer_serial: str | None = None
    unverified: Fault | None = None
    verified_by: str | None = None  # "manifest" or "entry"
    # the signature's only fault is the clock: its chain ended before this host's clock
    # (or starts after it); the signer is still shown, and still looked up for revocation
    expired: Fault | None = None
    # Whether ``created`` is a signed date: release.json.sig proves it by the one rule
    # repair and resign date releases by (date_proof). Else it is the manifest's claim,
    # which whoever writes to the origin can change (an entry script's .sig signs no
    # date). A release.json.sig that proves its signer but not this date says why in
    # ``created_unproven``; that alone does not change ``state``: iPXE boots such a
    # release, and a lagging clock here makes fresh dates look future ones.
    created_proven: bool = False
    created_unproven: str | None = None

    @property
    def verified(self) -> bool:
        """Who signed it is proven and the signature is good at this clock (revoked or
        not: ``revoked`` says)."""
        return self.problem is None and self.unverified is None and self.expired is None

    @property
    def state(self) -> str:
        """One word for the row: a revoked signer outranks an expired one."""
        if self.problem is not None:
            return "unreadable"
        if self.unverified is not None:
            return "unverified"
        if self.revoked:
            return "revoked"
        return "expired" if self.expired is not None else "verified"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "created": self.created.isoformat() if self.created else None,
                "signer": self.signer, "signer_serial": self.signer_serial,
                "expiry": self.expiry.isoformat() if self.expiry else None,
                "live": self.live, "complete": self.complete, "files": self.files,
                "problem": self.problem,
                "revoked": [r.to_json() for r in self.revoked],
                "verified": self.verified, "verified_by": self.verified_by,
                "created_proven": self.created_proven,
                "created_unproven": self.created_unproven, "state": self.state,
                "unverified": self.unverified.to_json() if self.unverified else None,
                "expired": self.expired.to_json() if self.expired else None}


@dataclass(frozen=True)
class Fault:
    """Why a listing could not tell who signed a release (``unverified``), or why the
    signature that tells it is not good at this clock (``expired``)."""

    rule: str  # manifest-unsigned, manifest-signature-unread, no-trust-anchors, iPXE's...
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "reason": self.reason}


# -- local side -----------------------------------------------------------------------

def scan_directory(directory: Path, *, progress: Callable[[int], None] | None = None,
                   cache: PublishCache | None = None) -> list[LocalObject]:
    """Every regular file under ``directory`` as a LocalObject (hashed).

    Symlinks, devices and FIFOs are refused (a release is files), keys must pass
    check_key, and every file that is not a .sig needs its .sig beside it.
    """
    root = Path(directory)
    # the directory asked for is the input, like sign's and verify's FILE: not there or
    # unreadable is operational (exit 1); what it holds is judged below (exit 3)
    try:
        st = os.stat(root)
    except OSError as exc:
        raise OperationalError(f"cannot read release directory {root}: {exc.strerror}",
                               hint="pass the directory `trustboot sign --out DIR` wrote, "
                                    "with the files beside their .sig") from None
    if not stat.S_ISDIR(st.st_mode):
        raise OperationalError(f"cannot read release directory {root}: not a directory",
                               hint="pass the output directory of `trustboot sign`")

    def unreadable(exc: OSError) -> None:  # os.walk would skip it: a release cut short
        raise OperationalError(f"cannot read {exc.filename} in release directory {root}: "
                               f"{exc.strerror}", hint="make the whole directory readable")

    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        base = Path(dirpath)
        for name in dirnames:
            if (base / name).is_symlink():
                raise ConfigError(f"{base / name} is a symbolic link; a release directory "
                                  "holds regular files only", hint="copy the file in instead")
        for name in filenames:
            path = base / name
            mode = os.lstat(path).st_mode
            if not stat.S_ISREG(mode):
                raise ConfigError(f"{path} is not a regular file (link, device or FIFO)",
                                  hint="a release directory holds regular files only")
            found.append((path.relative_to(root).as_posix(), path))
            if len(found) > MAX_LOCAL_FILES:
                raise ConfigError(f"{root} holds more than {MAX_LOCAL_FILES} files")
    if not found:
        raise ConfigError(f"release directory {root} is empty",
                          hint="sign the boot files first: trustboot sign FILES --out DIR")
    from trustboot.cms.digest import RACY_WINDOW_NS, hash_file, remember

    objects = []
    for key, path in sorted(found):
        check_key(key)
        st = os.lstat(path)
        known = cache.local_digest(path, st) if cache is not None else None
        if known is not None:
            objects.append(LocalObject(key, path, st.st_size, known))
            remember(st, {"sha256": bytes.fromhex(known)})  # the upload need not hash it
            continue
        started = time.time_ns()
        digests, size = hash_file(path, ["sha256"], progress)
        objects.append(LocalObject(key, path, size, digests["sha256"].hex()))
        # (a file changed within the racy window is not remembered: see cms.digest)
        if cache is not None and size == st.st_size and \
                started - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_WINDOW_NS:
            cache.remember_local(path, st, digests["sha256"].hex())
    check_signed(objects)
    return objects


def check_signed(objects: Sequence[LocalObject]) -> None:
    keys = {o.key for o in objects}
    if len(keys) != len(objects):
        raise ConfigError("the release names an object twice")
    missing = sorted(o.key for o in objects if not o.key.endswith(".sig")
                     and o.key != MANIFEST_NAME and o.key + ".sig" not in keys)
    if missing:
        raise ConfigError(
            f"no signature for {', '.join(missing)}: every file of a release needs its .sig",
            hint="sign them: trustboot sign FILE... (iPXE refuses unsigned images)")
    orphans = sorted(o.key for o in objects if o.key.endswith(".sig")
                     and o.key[:-4] not in keys)
    if orphans:
        raise ConfigError(f"signature(s) {', '.join(orphans)} without the file they sign",
                          hint="remove them or add the signed file")


def _local_verify(objects: Sequence[LocalObject], trust: Trust, now: dt.datetime
                  ) -> dict[str, Verdict]:
    """Judge every local signature before anything is uploaded (fail fast, exit 4)."""
    from trustboot.cms.sign import hash_file

    by_key = {o.key: o for o in objects}
    verdicts: dict[str, Verdict] = {}
    failures = []
    for obj in objects:
        sig = by_key.get(obj.key + ".sig")
        if obj.key.endswith(".sig") or sig is None:
            continue
        signature = _read_small(sig.path, MAX_SIGNATURE_SIZE)
        names = sorted(signature_hashes(signature))
        known = obj.staged.digests if obj.staged is not None else {
            "sha256": bytes.fromhex(obj.sha256)}
        # (a staged object's bytes are on the origin: never hash the local file again)
        digests, _ = ({n: known[n] for n in names}, obj.size) if set(names) <= set(known) \
            else hash_file(obj.path, names)
        verdict = judge(signature, digests, trust, now)
        verdicts[obj.key] = verdict
        if not verdict.ok:
            assert verdict.failure is not None
            failures.append(f"{obj.key}: {verdict.failure.message}")
    if failures:
        raise VerificationError(
            "iPXE would refuse local file(s) before publishing: " + "; ".join(failures),
            hint="re-sign with `trustboot sign` (check --pki/--trust/--signer match the "
                 "firmware)", rule="local-signature")
    return verdicts


def _read_small(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise OperationalError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise ConfigError(f"{path} is larger than {limit} bytes")
    return data


def _signer_summary(verdicts: dict[str, Verdict], entry: str | None) -> SignerSummary | None:
    verdict = verdicts.get(entry) if entry else None
    if verdict is None and verdicts:
        verdict = verdicts[sorted(verdicts)[0]]
    if verdict is None or not verdict.signers:
        return None
    s = verdict.signers[0]
    return SignerSummary(subject=s.subject, serial=f"{s.serial:x}",
                         not_after=s.chain_not_after)


def build_manifest(release_id: str, objects: Sequence[LocalObject], *, entry: str | None,
                   now: dt.datetime, origin: str | None, trust: Trust,
                   signer: SignerSummary | None = None,
                   ipxe: dict[str, Any] | None = None,
                   entry_path: str | None = None) -> ReleaseManifest:
    keys = {o.key for o in objects}
    files = tuple(
        ManifestFile(o.key, o.size, o.sha256,
                     o.key + ".sig" if (o.key + ".sig") in keys else None)
        for o in sorted(objects, key=lambda o: o.key)
        if o.key not in (MANIFEST_NAME, MANIFEST_NAME + ".sig"))
    return ReleaseManifest(release=release_id, created=now, files=files, origin=origin,
                           ca_sha256=trust.ca_sha256, signer=signer, entry=entry, ipxe=ipxe,
                           entry_path=entry_path)


# -- origin side ----------------------------------------------------------------------

def default_owner() -> str:
    return f"trustboot publish pid {os.getpid()} on {socket.gethostname()}"


def read_manifest(origin: Origin, release_id: str) -> ReleaseManifest | None:
    read = read_manifest_data(origin, release_id)
    return read[0] if read is not None else None


def read_manifest_data(origin: Origin, release_id: str
                       ) -> tuple[ReleaseManifest, bytes] | None:
    """The release's manifest and the bytes it was parsed from (what its signature is
    judged against: a second read could be answered differently)."""
    key = release_prefix(release_id) + MANIFEST_NAME
    if origin.stat(key) is None:
        return None
    data = b"".join(origin.read(key, max_size=MAX_MANIFEST_BYTES))
    manifest = parse_manifest(data, source=f"{origin.url}{key}")
    if manifest.release != release_id:
        raise VerificationError(f"{origin.url}{key} names release {manifest.release!r}, "
                                f"not {release_id!r}", rule="manifest-release")
    return manifest, data


def release_base_url(origin: Origin, release_id: str) -> str | None:
    url = origin.public_url(release_prefix(release_id) + MANIFEST_NAME)
    return url[: -len(MANIFEST_NAME)] if url else None


def readback_kind(origin: Origin, options: OriginOptions | None = None) -> str:
    """How the read-back reaches what the origin serves: "https" as iPXE does, "http" (only
    with --unsafe-http), "https-unverified" (with --unsafe-no-tls-verify, which the
    read-back obeys too: iPXE would refuse the certificate it took), or "backend" (the
    origin has no public URL)."""
    url = origin.public_url(MANIFEST_NAME)
    if url is None:
        return "backend"
    if urlsplit(url).scheme == "http":
        return "http"
    return "https-unverified" if options is not None and options.unsafe_no_verify else "https"


def make_reader(origin: Origin, trust: Trust, options: OriginOptions | None) -> Reader | None:
    if origin.public_url(MANIFEST_NAME) is None:
        return None
    opts = options or OriginOptions()
    # iPXE trusts its TRUST= roots for HTTPS too; an explicit --ca-file wins.
    ca_pem = None if opts.ca_file else trust.ca_pem()
    return Reader(ca_file=opts.ca_file, ca_pem=ca_pem, unsafe_no_verify=opts.unsafe_no_verify,
                  unsafe_http=opts.unsafe_http, timeout=opts.timeout, retries=opts.retries)


def _served(origin: Origin, reader: Reader | None, key: str, *, max_size: int,
            hash_names: set[str], local: LocalCopy | None = None) -> Served:
    """What the origin serves under ``key``: hashed, or compared with ``local`` (the file
    it was published from, see readback.Tally)."""
    if reader is None:
        size, digests = tally_chunks(origin.read(key, max_size=max_size),
                                     hash_names | {"sha256"}, local)
        if digests is None:  # the file was written meanwhile: read the object again
            return _served(origin, None, key, max_size=max_size, hash_names=hash_names)
        return Served(f"{origin.url}{key}", size, digests)
    url = origin.public_url(key)
    assert url is not None
    return reader.stream(url, max_size=max_size, hash_names=hash_names, local=local)


def _served_bytes(origin: Origin, reader: Reader | None, key: str, max_size: int) -> bytes:
    if reader is None:
        return b"".join(origin.read(key, max_size=max_size))
    url = origin.public_url(key)
    assert url is not None
    return reader.fetch(url, max_size=max_size)


def _served_signature(origin: Origin, reader: Reader | None, key: str) -> bytes:
    """A .sig as served. One larger than iPXE takes is what the origin serves failing
    verification (exit 4, as any other read-back mismatch), not an I/O failure."""
    try:
        return _served_bytes(origin, reader, key, MAX_SIGNATURE_SIZE)
    except TooLarge as exc:
        raise VerificationError(
            f"{exc.message}: iPXE refuses a signature over {MAX_SIGNATURE_SIZE} bytes (it "
            "copies the whole .sig into its heap)",
            hint="the origin serves something else than was published: find out who "
                 "changed it, then publish the release again",
            rule="served-signature", subject=key) from None


def verify_served(origin: Origin, manifest: ReleaseManifest, *, trust: Trust,
                  now: dt.datetime, reader: Reader | None, jobs: int = 4,
                  progress: PublishProgress | None = None,
                  cached: Collection[str] = (),
                  prefetched: Mapping[str, Future[Served | None]] | None = None,
                  signers: dict[str, frozenset[str]] | None = None,
                  local: Mapping[str, LocalCopy] | None = None,
                  reports: dict[str, tuple[SignerReport, ...]] | None = None) -> list[str]:
    """Read back every object of ``manifest``, compare, judge each .sig; VerificationError
    listing every problem, or the keys verified. ``prefetched``: objects whose read-back
    already started (the upload overlaps it, see publish_release), by name. ``signers``,
    if given, receives each signed object's signer certificate fingerprints (hex), and
    ``reports`` its signers as judged (for ``refuse_unfit``).
    ``local``: the files objects were published from, by name (see readback.Tally)."""
    prefix = release_prefix(manifest.release)
    by_name = {f.name: f for f in manifest.files}
    if progress:
        progress.phase("readback", sum(f.size for f in manifest.files))
    sigs: dict[str, bytes] = {}
    problems: list[str] = []
    refused: list[str] = []  # the problems that are a 403: anonymous reads refused
    # the problems that are a certificate out of its validity at ``now``: the bytes are
    # the ones published, the signature has only outlived its chain
    untimely: list[str] = []
    # the problems that are the origin's TLS certificate not verifying (http.tls_failure):
    # nothing was read, so nothing says the origin was changed
    tls: list[VerificationError] = []

    def not_served(exc: NotServed) -> None:
        problems.append(exc.message)
        if exc.status == 403:
            refused.append(exc.message)

    def not_read(exc: VerificationError) -> None:
        problems.append(exc.message)
        if exc.rule == "origin-tls":
            tls.append(exc)

    def fetch_sig(f: ManifestFile) -> None:
        try:
            data = _served_signature(origin, reader, prefix + f.name)
        except NotServed as exc:
            not_served(exc)
            return
        except VerificationError as exc:
            not_read(exc)
            return
        if len(data) != f.size or hashlib.sha256(data).hexdigest() != f.sha256:
            problems.append(f"{prefix}{f.name}: the origin serves other bytes than were "
                            "published")
            return
        sigs[f.name] = data
        if progress:
            progress.advance(len(data))

    def check(f: ManifestFile) -> None:
        sig = sigs.get(f.sig) if f.sig else None
        names = signature_hashes(sig) if sig else {"sha256"}
        if f.name in cached and names == {"sha256"}:
            # unchanged since a full read-back (see cache.py); its .sig was fetched in full
            served = Served(f.name, f.size, {"sha256": bytes.fromhex(f.sha256)})
        else:
            early = (prefetched or {}).get(f.name)
            try:
                got = early.result() if early is not None else None
                if got is not None and names <= set(got.digests):
                    served = got
                else:
                    served = _served(origin, reader, prefix + f.name, max_size=f.size,
                                     hash_names=names, local=(local or {}).get(f.name))
            except NotServed as exc:
                not_served(exc)
                return
            except VerificationError as exc:
                if exc.rule != "origin-tls":
                    raise
                not_read(exc)
                return
            except TooLarge:
                problems.append(f"{prefix}{f.name}: the origin serves more than the "
                                f"{f.size} bytes published")
                return
            if served.size != f.size or served.sha256 != f.sha256:
                problems.append(f"{prefix}{f.name}: the origin serves {served.size} bytes "
                                f"with sha256 {served.sha256[:16]}..., published {f.size} "
                                f"bytes with {f.sha256[:16]}... (changed on the origin after "
                                "upload?)")
                return
            if progress:
                progress.advance(f.size)
        if sig is not None:
            verdict = judge(sig, served.digests, trust, now)
            if not verdict.ok:
                assert verdict.failure is not None
                problem = f"{prefix}{f.name}: iPXE would refuse it: {verdict.failure.message}"
                problems.append(problem)
                if verdict.failure.rule in EXPIRY_RULES:
                    untimely.append(problem)
                return
            if signers is not None:
                signers[f.name] = frozenset(r.sha256 for r in verdict.signers)
            if reports is not None:
                reports[f.name] = verdict.signers
        if progress:
            progress.item(f.name, "verified")

    sig_files = [f for f in manifest.files if f.name.endswith(".sig") and
                 any(g.sig == f.name for g in manifest.files)]
    others = [f for f in manifest.files if f not in sig_files]
    _run_all(fetch_sig, sig_files, jobs)
    if not problems:
        _run_all(check, others, jobs)
    if problems and len(tls) == len(problems):
        # The certificate (often a chain without its intermediate) is what failed, as it
        # would for a booting client: its own rule and hint, not the tampering one.
        first = min(tls, key=lambda e: e.message)
        more = f" (and {len(tls) - 1} more object(s))" if len(tls) > 1 else ""
        raise VerificationError(
            f"release {manifest.release} on {origin.url} could not be read back: "
            f"{first.message}{more}",
            hint=f"nothing was switched; {first.hint}" if first.hint else
                 "nothing was switched",
            rule="origin-tls", subject=first.subject)
    if problems:
        hint = ("nothing was switched; find out who changed the origin, then delete "
                f"releases/{manifest.release}/ there and publish again")
        if len(refused) == len(problems):
            # Nothing changed on the origin: the read-back URL refuses anonymous reads.
            hint = ("nothing was switched; the read-back URL refuses anonymous reads, as "
                    "a booting client would be refused: make --public-url (recipe: "
                    "origin.public_url) serve the objects (for s3:// with --no-public-read: "
                    "a bucket policy, or a CDN "
                    "with origin access), or leave --public-url out to read back from the "
                    "store itself; then publish again")
        elif len(untimely) == len(problems):
            # Nothing changed on the origin: the signer (or its chain) expired, or is not
            # valid yet. Deleting the release and publishing it again would not help.
            hint = "nothing was switched; " + expired_hint(origin, manifest.release)
        raise VerificationError(
            f"release {manifest.release} on {origin.url} is not served as published: "
            + "; ".join(sorted(problems)),
            hint=hint, rule="served-object", subject=manifest.release)
    return sorted(by_name)


def verify_manifest_signature(origin: Origin, release_id: str, *, trust: Trust,
                              now: dt.datetime, reader: Reader | None,
                              reports: dict[str, tuple[SignerReport, ...]] | None = None
                              ) -> bytes:
    """release.json against its detached signature, both as served; returns the bytes
    judged (a caller that parses them reads nothing a second time, which a hostile origin
    could answer differently). ``reports`` receives its signers, as verify_served's."""
    key = release_prefix(release_id) + MANIFEST_NAME
    signature = _served_signature(origin, reader, key + ".sig")
    data = _served_bytes(origin, reader, key, MAX_MANIFEST_BYTES)
    verdict = judge_manifest(signature, data, trust, now)
    if not verdict.ok:
        assert verdict.failure is not None
        raise VerificationError(
            f"{redact_url(origin.url)}{key}: its signature does not verify: "
            f"{verdict.failure.message}",
            hint=expired_hint(origin, release_id) if verdict.failure.rule in EXPIRY_RULES
            else "the release manifest was changed on the origin or signed by a key the "
                 "trusted roots do not cover; publish the release again",
            rule="manifest-signature", subject=key)
    if reports is not None:
        reports[MANIFEST_NAME] = verdict.signers
    return data


def judge_manifest(signature: bytes, data: bytes, trust: Trust, now: dt.datetime) -> Verdict:
    """release.json's bytes ``data`` against its detached ``signature``, as iPXE would."""
    digests = {name: hashlib.new(name, data).digest() for name in signature_hashes(signature)}
    return judge(signature, digests, trust, now)


def expired_hint(origin: Origin, release_id: str) -> str:
    """What to do when a release on ``origin`` fails only because a certificate of its
    signatures is outside its validity: its bytes are as published, so deleting and
    publishing it again (the tampering hint) would change nothing."""
    where = redact_url(origin.url)
    return (f"the objects of release {release_id} are as published, but a certificate of "
            "their signatures is not valid at this clock: re-sign the release with a "
            f"current signer (`trustboot resign {where} --key NAME` re-signs the live "
            "release; for another one, sign its files again with `trustboot sign --key "
            "NAME` and publish them under a new id), or roll back to a newer release: "
            f"`trustboot publish rollback {where} ID` (`trustboot publish list {where}` "
            "shows each release's expiry); if the certificate is not valid yet, check this "
            "host's clock")


def refuse_unfit(trust: Trust, signed: Mapping[str, Sequence[SignerReport]], *,
                 doing: str, now: dt.datetime, revoked_hint: str,
                 expired_hint: str | None) -> None:
    """Refuse (VerificationError, exit 4) to go on ``doing`` when a signer of ``signed``
    (object name -> its signers as judged) must not be made live, whatever iPXE says:

    - revoked (rule revoked-signer): iPXE reads no CRL, so this is the only place a
      revocation can stop a release from booting (trustboot.publish.revocation); nothing
      to check when ``trust`` carries no revocation view (no pki, no --crl);
    - its chain ended before ``now`` (rule expired; not checked when ``expired_hint`` is
      None: resign, whose job is to give such a release fresh signatures). iPXE accepts
      a certificate until notAfter + 12 h 30 min by the client's clock: a margin for
      clients whose clock is off, not for the server, whose clock is right. A release
      made live after its signer's expiry is an old release replayed past the bound
      short-lived signers give, by trustboot itself (``trustboot sign`` refuses an
      expired certificate the same way, cms.sign.preflight).
    """
    if trust.revocation is not None:
        trust.revocation.enforce(signed, doing=doing, now=now, hint=revoked_hint)
    if expired_hint is None:
        return
    late: dict[tuple[str, dt.datetime], list[str]] = {}
    for name in sorted(signed):
        for r in signed[name]:
            if r.chain_not_after < now:
                late.setdefault((r.common_name or r.subject, r.chain_not_after),
                                []).append(name)
    if not late:
        return
    parts = [f'"{clean(who, limit=200)}" expired (its chain ended on {end.isoformat()}, '
             f"{format_duration(now - end)} ago); it signed {shown_names(names, 5)}"
             for (who, end), names in sorted(late.items(), key=lambda kv: kv[0][1])]
    first = min(late, key=lambda k: k[1])[0]
    raise VerificationError(
        f"refusing to {doing}: the signer {'; the signer '.join(parts)}. iPXE still "
        "accepts it within its 12h30m clock margin, which is for clients whose clock is "
        "off: a release is not made live after its signer's expiry",
        hint=expired_hint, rule="expired", subject=first)


def revoked_rollback_hint(origin: Origin) -> str:
    """The ways out when a release on ``origin`` is refused for a revoked signer."""
    where = redact_url(origin.url)
    # (not `resign`: it refuses to give a revoked signer's release fresh signatures)
    return (f"roll back to a release a current signer signed: `trustboot publish rollback "
            f"{where} ID` (`trustboot publish list {where}` marks the others REVOKED); or "
            "check this release's files and publish them again, signed by a current signer "
            "(`trustboot sign --key NAME`)")


REVOKED_LOCAL_HINT = ("sign the files again with a current signer (`trustboot sign --key "
                      "NAME ...`) and publish those; the certificate was revoked on purpose")


def _run_all(fn: Callable[[Any], None], items: Sequence[Any], jobs: int) -> None:
    if jobs <= 1 or len(items) <= 1:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(fn, item) for item in items]:
            future.result()  # re-raises the first operational error


def live_release(origin: Origin, releases: Sequence[ReleaseManifest], entry_path: str, *,
                 switching_to: str | None = None, by_script: bool = False) -> str | None:
    """The release whose entry script the entry path serves now (by sha256).

    Releases can share a byte-identical entry and signature (the same script signed
    again by the same RSA key); the newest of those is named, except ``switching_to``,
    the release a switch is about to make live, which is named only when no other
    matches (it was live already). ``by_script`` (prune): when the signature served
    beside the script is none of the releases' (the pair broken by hand or by another
    writer; iPXE refuses it), the release whose script it is still counts: the entry
    points at it, and a repair or a rollback needs it."""
    check_key(entry_path)
    st = origin.stat(entry_path)
    # Only an object of the size of some release's entry script can be one (nothing else
    # is read): prune looks at every signed pair of the origin, and a 20 MiB installer
    # image with its .sig beside the releases made every prune fail with TooLarge.
    scripts_of = [(m, e) for m in releases
                  if m.entry and (e := m.file(m.entry)) is not None]
    if st is None or st.size > MAX_ENTRY_SIZE or \
            st.size not in {e.size for _, e in scripts_of}:
        return None
    _, digests = hash_chunks(origin.read(entry_path, max_size=MAX_ENTRY_SIZE), ["sha256"])
    live = digests["sha256"].hex()
    sig_digest = None  # no signature beside it: the script alone decides
    sig_st = origin.stat(entry_path + ".sig")
    if sig_st is not None:
        sig_sizes = {f.size for m, e in scripts_of if e.sig and (f := m.file(e.sig))}
        sig_digest = ""  # one no release has: matches none
        if sig_st.size <= MAX_SIGNATURE_SIZE and sig_st.size in sig_sizes:
            _, sd = hash_chunks(origin.read(entry_path + ".sig",
                                            max_size=MAX_SIGNATURE_SIZE), ["sha256"])
            sig_digest = sd["sha256"].hex()
    matching, scripts = [], []
    for m in sorted(releases, key=lambda m: m.created, reverse=True):
        entry = m.file(m.entry) if m.entry else None
        if entry is None or entry.sha256 != live:
            continue
        scripts.append(m.release)
        sig = m.file(entry.sig) if entry.sig else None
        if sig is None or sig_digest is None or sig.sha256 == sig_digest:
            matching.append(m.release)
    if not matching and by_script:
        matching = scripts
    if len(matching) > 1:
        recorded = _live_records(origin).get(entry_path)
        if isinstance(recorded, dict) and recorded.get("release") in matching \
                and recorded.get("script_sha256") == live:
            return str(recorded["release"])
    # no record (an origin published before it existed, or an entry switched by hand):
    # the newest that matches
    others = [r for r in matching if r != switching_to]
    return next(iter(others or matching), None)


def _live_records(origin: Origin) -> dict[str, Any]:
    """LIVE_RECORD's entries by entry path; empty when absent or unusable (it is only
    ever written by this code; live_release then falls back to the served bytes)."""
    if origin.stat(LIVE_RECORD) is None:
        return {}
    try:
        doc = jsonin.loads(b"".join(origin.read(LIVE_RECORD, max_size=MAX_LIVE_RECORD)))
        entries = doc["entries"]
    except (ValueError, KeyError, TypeError, TooLarge):
        return {}
    return entries if isinstance(entries, dict) else {}


def _recorded_live(origin: Origin, entry_path: str) -> str | None:
    """The release the live record names at ``entry_path``, if it names one."""
    record = _live_records(origin).get(entry_path)
    recorded = record.get("release") if isinstance(record, dict) else None
    return recorded if isinstance(recorded, str) else None


def _record_live(origin: Origin, entry_path: str, release: str, script_sha256: str,
                 sig_sha256: str | None) -> None:
    """Write down that ``entry_path`` serves ``release`` now (caller holds the lock)."""
    entries = _live_records(origin)
    entries[entry_path] = {"release": release, "script_sha256": script_sha256,
                           "sig_sha256": sig_sha256}
    data = json.dumps({"version": 1, "entries": entries}, sort_keys=True).encode()
    origin.put_bytes(LIVE_RECORD, data, sha256=hashlib.sha256(data).hexdigest())


def check_switch_target(origin: Origin, entry_path: str) -> None:
    """Refuse a switch that would replace something else than an entry (caller holds the
    lock): an object already at ``entry_path`` must be an entry pair switched there
    before (LIVE_RECORD names the path) or an iPXE script (an entry from before the
    record, or another tool's). Else it is another object of the origin (firmware under
    fw/, an installer image): the switch would write a script over it and over its .sig,
    and every machine that fetches it would break. (A path ending in .sig, another
    entry's signature, is refused by check_entry_path.)"""
    st = origin.stat(entry_path)
    if st is None or entry_path in _live_records(origin):
        return
    if st.size <= MAX_ENTRY_SIZE:
        head = b"".join(origin.read(entry_path, max_size=MAX_ENTRY_SIZE))
        if runs_as_script(head):
            return
    raise ConfigError(
        f"entry path {entry_path} on {redact_url(origin.url)} holds an object that is not an "
        f"iPXE script ({st.size} bytes: firmware, an image, another tool's file); "
        f"switching would write the entry script over it and {entry_path}.sig; nothing "
        "was switched",
        hint="give the entry a path of its own (recipe: origin.entry, publish: "
             "--entry-path), e.g. menus/NAME.ipxe; if that object is an old entry that may "
             "go, delete it from the origin first")


def switch_and_check(origin: Origin, manifest: ReleaseManifest, *, entry_path: str,
                      trust: Trust, now: dt.datetime, reader: Reader | None) -> None:
    assert manifest.entry is not None
    check_entry_path(entry_path)
    check_switch_target(origin, entry_path)
    prefix = release_prefix(manifest.release)
    entry = manifest.file(manifest.entry)
    assert entry is not None
    if entry.sig is None:
        raise ConfigError(f"entry {manifest.entry} has no signature in the release")
    sig = manifest.file(entry.sig)
    record = json.dumps({"version": 1, "release": manifest.release, "entry_path": entry_path,
                         "script_sha256": entry.sha256,
                         "sig_sha256": sig.sha256 if sig else None}).encode()
    origin.put_bytes(SWITCH_JOURNAL, record, sha256=hashlib.sha256(record).hexdigest())
    # the signature first: a client between the two copies gets old script + new
    # signature, which imgverify refuses (see the module docstring)
    origin.copy_many([(prefix + entry.sig, entry_path + ".sig"),
                      (prefix + entry.name, entry_path)])
    # both replaced (a failure above leaves the record for the next run to finish)
    _record_live(origin, entry_path, manifest.release, entry.sha256,
                 sig.sha256 if sig else None)
    origin.delete(SWITCH_JOURNAL)
    signature = _served_signature(origin, reader, entry_path + ".sig")
    served = _served(origin, reader, entry_path, max_size=MAX_ENTRY_SIZE,
                     hash_names=signature_hashes(signature))
    verdict = judge(signature, served.digests, trust, now)
    if served.sha256 != entry.sha256 or not verdict.ok:
        why = verdict.failure.message if verdict.failure else "other bytes are served"
        raise VerificationError(
            f"after switching {entry_path} to release {manifest.release}, the origin serves "
            f"an entry that fails verification: {why}",
            hint="another writer changed the entry meanwhile, or a cache in front of the "
                 "origin serves a stale copy; run `trustboot publish rollback` or publish again",
            rule="entry-after-switch", subject=entry_path)


def _switch_unless_live(origin: Origin, manifest: ReleaseManifest, result: PublishResult, *,
                        entry_path: str, trust: Trust, now: dt.datetime,
                        reader: Reader | None, progress: PublishProgress | None) -> None:
    """Switch ``entry_path`` to ``manifest``'s release (caller holds the lock, the release
    verified) unless it already serves it: then nothing is copied and ``result.switched``
    stays False. A re-publish (or a rollback) of the live release used to copy the pair
    again and report a switch from the release to itself."""
    result.previous_live = live_release(origin, read_manifests(origin)[0], entry_path,
                                        switching_to=manifest.release)
    # (a switch record a repair left for this run's switch to replace: switch, which
    # removes it)
    if result.previous_live == manifest.release and not pending_switch(origin) and \
            _serves_entry_of(origin, reader, manifest, entry_path, trust=trust, now=now):
        assert manifest.entry is not None
        entry = manifest.file(manifest.entry)
        assert entry is not None and entry.sig is not None
        sig = manifest.file(entry.sig)
        sig_sha256 = sig.sha256 if sig else None
        # (an entry from before the live record, or one matched by its bytes alone: the
        # record is what tells byte-identical releases apart, so it names this one now)
        if _live_records(origin).get(entry_path) != {
                "release": manifest.release, "script_sha256": entry.sha256,
                "sig_sha256": sig_sha256}:
            _record_live(origin, entry_path, manifest.release, entry.sha256, sig_sha256)
        return
    if progress:
        progress.phase("switch", 0)
    switch_and_check(origin, manifest, entry_path=entry_path, trust=trust, now=now,
                      reader=reader)
    result.switched = True


def _serves_entry_of(origin: Origin, reader: Reader | None, manifest: ReleaseManifest,
                     entry_path: str, *, trust: Trust, now: dt.datetime) -> bool:
    """Whether ``entry_path`` and its .sig, as served, are ``manifest``'s entry script and
    signature byte for byte, and verify as iPXE would (a switch would change nothing)."""
    entry = manifest.file(manifest.entry) if manifest.entry else None
    sig = manifest.file(entry.sig) if entry is not None and entry.sig else None
    if entry is None or sig is None:
        return False
    try:
        script_sha256, sig_sha256, verdict = _judged_pair(
            origin, reader, entry_path, entry_path + ".sig", trust=trust, now=now)
    except (NotServed, OperationalError, VerificationError):
        return False
    return verdict.ok and (script_sha256, sig_sha256) == (entry.sha256, sig.sha256)


@dataclass(frozen=True)
class RepairResult:
    release: str | None  # the release the record names (None: no record)
    # "none", "completed", "dropped" (the pair verified), "invalid", "superseded" (the
    # recorded release no longer verifies; the caller's own switch replaces the pair)
    action: str
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"release": self.release, "action": self.action, "detail": self.detail}


def _judged_pair(origin: Origin, reader: Reader | None, script: str, sig: str, *,
                 trust: Trust, now: dt.datetime) -> tuple[str, str, Verdict]:
    """A script and its signature as served: the sha256 of each and iPXE's verdict."""
    signature = _served_signature(origin, reader, sig)
    served = _served(origin, reader, script, max_size=MAX_ENTRY_SIZE,
                     hash_names=signature_hashes(signature))
    return (served.sha256, hashlib.sha256(signature).hexdigest(),
            judge(signature, served.digests, trust, now))


def _verified_entry(origin: Origin, reader: Reader | None, entry_path: str, *,
                    trust: Trust, now: dt.datetime) -> str | None:
    """The sha256 of the entry script served, if the pair as served verifies; else None."""
    try:
        sha256, _, verdict = _judged_pair(origin, reader, entry_path, entry_path + ".sig",
                                          trust=trust, now=now)
    except (NotServed, OperationalError, VerificationError):
        return None
    return sha256 if verdict.ok else None


def repair_switch(origin: Origin, *, trust: Trust, now: dt.datetime,
                  reader: Reader | None, then_switching: bool = False,
                  jobs: int = 4, dates: ReleaseDates | None = None) -> RepairResult:
    """Finish an entry switch a killed run left half done (caller holds the lock).

    The record names a release that was fully verified before it was written. If the entry
    pair as served does not verify, the switch to that release is completed (and checked
    like any switch); if it verifies, the run died before the first replacement and the
    record is dropped. A record that does not parse is dropped with detail: it is only
    ever written by this code, and the entry pair is judged on every switch anyway.

    The recorded release may have stopped verifying since (its signer's certificate
    expired, an object changed on the origin): before completing the switch the whole
    release is verified as served, as a rollback to it would be; if it fails, nothing is
    switched. A caller that switches the entry itself next (``then_switching``: publish,
    rollback) goes on, its switch replacing the pair and the record; otherwise this is a
    VerificationError naming the release and the way out, the record kept.

    The same holds for a switch back to a release older than another one on the origin
    (_switch_back, rule unrecorded-rollback; not judged by the live record, which is
    origin data too): the record is on the origin, and a repair must not be the way a
    writer there rolls the fleet back. A switch that signed manifests do not show to go
    forward is refused too, whoever runs the repair: `origin check` sends operators
    here, and a repair completing it would roll the fleet back through them; the hint
    names `publish rollback`, which makes it on purpose. ``dates``: the releases'
    dates, when the caller asks them too (resign), so they are read once.
    """
    if origin.stat(SWITCH_JOURNAL) is None:
        return RepairResult(None, "none")
    data = b"".join(origin.read(SWITCH_JOURNAL, max_size=64 << 10))
    try:
        doc = jsonin.loads(data)
        release_id, entry_path = doc["release"], doc["entry_path"]
        if release_id_problem(release_id) or not isinstance(entry_path, str):
            raise ValueError("bad release id or entry path")
        check_entry_path(entry_path)
        read = read_manifest_data(origin, release_id)  # (its bytes date it: _switch_back)
        manifest, manifest_data = read if read is not None else (None, b"")
        if manifest is None or manifest.entry is None:
            raise ValueError(f"release {release_id} has no manifest or no entry")
    except (ValueError, KeyError, TypeError, ConfigError, VerificationError) as exc:
        # (an OperationalError, the origin failing to answer, is not the record's fault:
        # it propagates and the record stays for the next run)
        origin.delete(SWITCH_JOURNAL)
        why = exc.message if isinstance(exc, TrustbootError) else str(exc)
        return RepairResult(None, "invalid", f"dropped an unusable switch record: {why}")
    served = _verified_entry(origin, reader, entry_path, trust=trust, now=now)
    if served is not None:
        entry = manifest.file(manifest.entry)
        finished = entry is not None and served == entry.sha256
        if finished and _recorded_live(origin, entry_path) != release_id:
            assert entry is not None
            # both replaced, maybe killed before the live record was written: write it,
            # unless that makes a switch back trustboot's own (see _switch_back). A live
            # record naming the target already (a run killed after writing it, a
            # rollback meant as one) leaves only the switch record to drop: the origin
            # is then as it would be without one, and is judged as such (resign's
            # unrecorded-rollback check judges the live release as it judges any)
            back = _switch_back(origin, manifest, manifest_data, entry_path, trust=trust,
                                now=now, reader=reader, dates=dates)
            if back is not None:
                if then_switching:  # the record stays until that switch replaces it
                    return RepairResult(release_id, "superseded",
                                        f"{back.message}; this run switches it")
                raise back
            sig = manifest.file(entry.sig) if entry.sig else None
            _record_live(origin, entry_path, release_id, entry.sha256,
                         sig.sha256 if sig else None)
            note = ""
        elif finished:
            # the live record names the target already (a rollback killed before the
            # switch record went): nothing to refuse, but a switch back is said, as
            # resign says it, so the one who runs the repair sees it
            note = _older_note(origin, manifest, manifest_data, trust=trust, now=now,
                               reader=reader, dates=dates)
        else:
            note = ""
        origin.delete(SWITCH_JOURNAL)
        # killed before the first replacement, or after the second (record not removed)
        when = "had finished: it is live" if finished else "had not started"
        return RepairResult(release_id, "dropped",
                            f"{entry_path} and its signature verify; the interrupted switch "
                            f"to {release_id} {when}{note}")
    # The record was written after the release verified, but that was then: its objects
    # may have been changed on the origin since, or its signer's certificate expired.
    # Completing the switch makes the release live, so it is verified now as a rollback
    # to it would be: every object as served, and its signed manifest.
    problem = _recorded_release_problem(origin, manifest, trust=trust, now=now,
                                        reader=reader, jobs=jobs)
    if problem is not None:
        why = f"release {release_id} no longer verifies: {problem}"
        if then_switching:  # the record stays until that switch replaces it
            return RepairResult(release_id, "superseded",
                                f"the interrupted switch of {entry_path} to {release_id} "
                                f"was not finished: {why}; this run switches it")
        where = redact_url(origin.url)
        raise VerificationError(
            f"cannot finish the interrupted switch of {entry_path} to release "
            f"{release_id}: {why}. Nothing changed: {entry_path} and its signature on "
            f"{where} still do not verify together (iPXE refuses them)",
            hint=f"make live a release that verifies: `trustboot publish rollback "
                 f"{where} ID` (ids: `trustboot publish list {where}`), or publish a "
                 "new release signed by a current signer; either replaces the pair "
                 "and the switch record",
            rule="repair-release", subject=release_id)
    back = _switch_back(origin, manifest, manifest_data, entry_path, trust=trust, now=now,
                        reader=reader, dates=dates)
    if back is not None:
        if then_switching:  # the record stays until that switch replaces it
            return RepairResult(release_id, "superseded",
                                f"{back.message}; this run switches it")
        raise back
    switch_and_check(origin, manifest, entry_path=entry_path, trust=trust, now=now,
                      reader=reader)
    return RepairResult(release_id, "completed",
                        f"completed the interrupted switch of {entry_path} to {release_id}")


def _switch_back(origin: Origin, manifest: ReleaseManifest, data: bytes, entry_path: str,
                 *, trust: Trust, now: dt.datetime, reader: Reader | None,
                 dates: ReleaseDates | None) -> VerificationError | None:
    """Whether completing a recorded switch of ``entry_path`` to ``manifest``'s release
    (parsed from ``data``) may go back to a release older than another one on the
    origin: a VerificationError (rule unrecorded-rollback) if it is not to be completed,
    else None.

    The switch record is on the origin: whoever writes there can name an old release and
    break the entry pair, and completing it rewrites the live record, so resign's
    unrecorded-rollback check no longer sees it and the old release gets a fresh replay
    window. The live record is origin data as well, so it is not what the target is
    compared with: a missing, unparsable or target-naming record while a switch is
    pending shows nothing. The reference is every other release on the origin
    (ReleaseDates), dated by its signed manifest where it has one that verifies
    (signed_date): nobody without a signer's key can move such a date up or down. What a
    writer can do to a release without a key (lower its unsigned date, break or delete
    its release.json or .sig) leaves it unproven or unread, and such a release never
    helps show a switch forward.

    - back (refused): the target is older than the newest other release. An unsigned
      date counts here too, the target's or another's: a writer gains nothing by making a
      switch look older, so here it only makes the check stricter;
    - forward (completed): every other release is dated by its signed manifest (none
      unsigned, unread or missing its manifest) and the target's signed date is not
      older than any of theirs; or the target is resign's re-sign of the release the
      live record names (resigns), while every other manifest reads: resign finishing
      its own switch from a release whose manifest is unsigned (`publish DIR`);
    - unproven (neither): refused as well, whoever runs the repair (resign would give
      the release fresh signatures; an operator sent here by `origin check` would roll
      the fleet back without knowing it). The hint names `publish rollback` for the
      switch made on purpose: a publish of unsigned manifests killed mid-switch is
      finished that way (or by running the same publish again).
    A switch to the only release there goes back to nothing: completed. (A finished
    switch the live record already names is not asked here: repair_switch drops it.)"""
    release_id = manifest.release
    dates = dates or ReleaseDates(origin, trust=trust, now=now, reader=reader)
    target, others, unread = dates.around(manifest, data)
    if not others and not unread:
        return None
    recorded = _recorded_live(origin, entry_path)
    if recorded is None or release_id_problem(recorded) or recorded == release_id:
        recorded = None
    newest = max(others, key=lambda d: d.created, default=None)
    where = redact_url(origin.url)
    if newest is not None and target.created < newest.created:
        signed = "their signed manifests" if target.proven and newest.proven else \
            "their manifests"
        which = (", which trustboot last made live there" if newest.release == recorded
                 else ", on the origin")
        return VerificationError(
            f"{where}: a switch of {entry_path} to release {release_id} is recorded as "
            f"interrupted, but release {release_id} is older than {newest.release}{which} "
            f"({signed}: {format_time(target.created)} and {format_time(newest.created)}); "
            "not completed, nothing changed (the switch record is on the origin: whoever "
            "writes there can name an old release)",
            hint=f"if that switch is intended (a rollback, or a publish that was killed), "
                 f"make it: trustboot publish rollback {where} {release_id} (it verifies "
                 f"the release first); otherwise make {newest.release} live again "
                 f"(trustboot publish rollback {where} {newest.release}) and find out who "
                 "wrote the switch record",
            rule="unrecorded-rollback", subject=release_id)
    unproven = unproven_dates(target, others, unread)
    if unproven is None or resigns(target, recorded, unread):
        return None
    undo = recorded or (newest.release if newest is not None else "ID")
    why = (f"release {release_id} cannot be shown to be newer than "
           f"{shown_names(sorted([d.release for d in others] + unread), 5)}: {unproven}")
    return VerificationError(
        f"{where}: a switch of {entry_path} to release {release_id} is recorded as "
        f"interrupted, but {why}; not completed, nothing changed (the switch record is "
        "on the origin: whoever writes there can name an old release)",
        hint=f"if that switch is intended (a rollback, or a publish that was killed), make "
             f"it: trustboot publish rollback {where} {release_id} (it verifies the release "
             f"first); otherwise make {undo} live again (trustboot publish rollback "
             f"{where} {undo}) and find out who wrote the switch record"
             + (f" (ids: trustboot publish list {where})" if undo == "ID" else ""),
        rule="unrecorded-rollback", subject=release_id)


def _older_note(origin: Origin, manifest: ReleaseManifest, data: bytes, *, trust: Trust,
                now: dt.datetime, reader: Reader | None, dates: ReleaseDates | None) -> str:
    """'; release X is older than Y (...)' when ``manifest``'s release (parsed from
    ``data``) is older than the newest other release on the origin (as _switch_back dates
    them), else ''."""
    dates = dates or ReleaseDates(origin, trust=trust, now=now, reader=reader)
    target, others, _ = dates.around(manifest, data)
    newest = max(others, key=lambda d: d.created, default=None)
    if newest is None or target.created >= newest.created:
        return ""
    where = redact_url(origin.url)
    signed = "signed " if target.proven and newest.proven else ""
    return (f"; note: release {manifest.release} is older than {newest.release} (their "
            f"{signed}manifests: {format_time(target.created)} and "
            f"{format_time(newest.created)}): if that rollback was not meant, make "
            f"{newest.release} live again (trustboot publish rollback {where} "
            f"{newest.release})")


def unproven_dates(target: DatedRelease, others: Sequence[DatedRelease],
                   unread: Sequence[str]) -> str | None:
    """Why ``target`` (not older than any of ``others``: the caller asked) cannot be
    shown to be the newest release, or None if it can: only when its date and every
    other release's are proven by signed manifests and no manifest is unread or missing
    (``unread``, from ReleaseDates). An unsigned date, or a release.json that
    does not read or was deleted, is the origin writer's to set: it never helps."""
    unsigned = ([target.release] if not target.proven else []) + \
        [d.release for d in others if not d.proven]
    reasons = []
    if unsigned:
        reasons.append(f"the {MANIFEST_NAME} of {shown_names(unsigned, 5)} has no signature "
                       "that verifies or no date its signer could sign (an unsigned "
                       "manifest's date is anybody's word)")
    if unread:
        reasons.append(f"the {MANIFEST_NAME} of {shown_names(list(unread), 5)} does not read "
                       "or is missing")
    return "; ".join(reasons) or None


def resigns(target: DatedRelease, recorded: str | None, unread: Sequence[str]) -> bool:
    """Whether ``target`` is `trustboot resign`'s re-sign of ``recorded``: its id is the
    one resign gives a re-sign of ``recorded`` by the one signer of its signed manifest.
    The id is inside what that signer signed, and resign names it after the signer's own
    certificate, so only resign (or a holder of that key, who can sign any date anyway)
    makes such a release. Its files are not compared with ``recorded``'s: the latter's
    manifest is unsigned whenever this is asked (else its date decides), so a writer
    could make it say anything.

    Never while another release's manifest does not read (``unread``, from
    ReleaseDates): whoever writes to the origin can hide the newer releases' manifests
    and rewrite the live record to name the old release, and a still-valid re-sign of
    it would then be switched back to unattended."""
    return (not unread and recorded is not None and target.proven
            and len(target.signers) == 1 and bool(target.signers[0].sha256)
            and resign_id(recorded, target.signers[0].sha256) == target.release)


@dataclass(frozen=True)
class DatedRelease:
    """A release and when its manifest says it was made: ``proven`` when its
    release.json.sig proves it (signed_date, whose ``signers`` these are), else the
    manifest's claim, which whoever writes to the origin can change."""

    release: str
    created: dt.datetime
    proven: bool
    signers: tuple[SignerReport, ...] = ()
    # a release.json.sig is there but proves nothing (not served, unreadable, or it does
    # not verify): unlike one never signed (plain `publish DIR`), a sign of tampering
    refuted: bool = False


def signed_date(signature: bytes, data: bytes, release_id: str, *, trust: Trust,
                now: dt.datetime, source: str
                ) -> tuple[dt.datetime, tuple[SignerReport, ...]] | None:
    """When release.json (its bytes ``data``) of ``release_id`` says the release was
    made, and who signed that, if ``signature`` proves it; else None (date_proof says
    why)."""
    proof = date_proof(signature, data, release_id, trust=trust, now=now, source=source)
    return None if isinstance(proof, str) else proof


def date_proof(signature: bytes, data: bytes, release_id: str, *, trust: Trust,
               now: dt.datetime, source: str
               ) -> tuple[dt.datetime, tuple[SignerReport, ...]] | str:
    """signed_date, or why ``signature`` proves no date (one rule for repair, resign
    and `publish list`).

    It proves the date it signs (``created``) when that is one its signers could sign:
    - not after ``now``: a date from the future would win every "newer" comparison;
    - within each signer certificate's own validity, exactly (iPXE's 12h30m margin is
      for a client's clock at boot, not for a date the signer writes): a signer issued
      now cannot backdate its release before its notBefore, and a key leaked after its
      certificate ended can only write old dates;
    - the signature verifies in full with iPXE's rules at that date (judge: the whole
      chain as iPXE checks it then, up to the trusted root, as it would have booted);
    and at ``now`` it verifies too, or fails only by the clock (a certificate expired
    since, or not yet valid on this host's clock): an expired signer still proves who
    wrote the date. A revoked signer proves nothing: its key may be in anyone's hands."""
    try:
        manifest = parse_manifest(data, source=source)
    except ConfigError as exc:
        return f"{MANIFEST_NAME} does not parse: {exc.message}"
    created = manifest.created
    if manifest.release != release_id:
        return f"{MANIFEST_NAME} names release {clean(manifest.release)}"
    if created > now:
        return (f"it is dated {format_time(created)}, after this host's clock "
                f"({format_time(now)}): the signing host's clock or this one is wrong")
    digests = {name: hashlib.new(name, data).digest() for name in signature_hashes(signature)}
    today = judge(signature, digests, trust, now).failure
    if today is not None and today.rule not in EXPIRY_RULES:
        return f"its signature does not verify: {today.message}"
    verdict = judge(signature, digests, trust, created)
    if verdict.failure is not None:
        return (f"its signature does not verify at the date it signs, "
                f"{format_time(created)}: {verdict.failure.message}")
    if not verdict.signers:
        return "its signature has no signer"
    outside = [s for s in verdict.signers
               if s.not_before is None or not s.not_before <= created <= s.not_after]
    if outside:
        s = outside[0]
        valid = (f"{format_time(s.not_before)} to {format_time(s.not_after)}"
                 if s.not_before is not None else f"until {format_time(s.not_after)}")
        return (f"it is dated {format_time(created)}, outside its signer "
                f"{clean(s.common_name)}'s validity ({valid})")
    if trust.revocation is not None and trust.revocation.of(verdict.signers, now):
        return "its signer is revoked"
    return created, verdict.signers


def _dated(origin: Origin, manifest: ReleaseManifest, data: bytes, *, trust: Trust,
           now: dt.datetime, reader: Reader | None) -> DatedRelease | None:
    """``manifest``'s release dated by its release.json.sig, judged against ``data``,
    the bytes ``manifest`` was parsed from (a second read could be answered otherwise):
    by the date it proves (signed_date), else by the claim of ``manifest`` (``refuted``
    when a .sig is there). One stat and at most one capped read, the .sig as served
    (``reader``). None when the origin lists a .sig it does not serve as listed (gone
    meanwhile, refused, too large): what it would prove cannot be told, and the caller
    says what that makes the release. The origin failing to answer propagates."""
    release_id = manifest.release
    key = release_prefix(release_id) + MANIFEST_NAME
    if origin.stat(key + ".sig") is None:
        return DatedRelease(release_id, manifest.created, False)
    try:
        signature = _served_signature(origin, reader, key + ".sig")
    except (NotServed, VerificationError):
        return None
    signed = signed_date(signature, data, release_id, trust=trust, now=now,
                         source=f"{origin.url}{key}")
    if signed is None:
        return DatedRelease(release_id, manifest.created, False, refuted=True)
    return DatedRelease(release_id, signed[0], True, signed[1])


def release_date(origin: Origin, manifest: ReleaseManifest, data: bytes, *, trust: Trust,
                 now: dt.datetime, reader: Reader | None) -> DatedRelease:
    """The release a switch or a re-sign is about dated (_dated; ``data``: the bytes
    ``manifest`` was parsed from). Its .sig listed but not served proves nothing about
    it: refuted, its date the claim of ``manifest``."""
    dated = _dated(origin, manifest, data, trust=trust, now=now, reader=reader)
    return dated or DatedRelease(manifest.release, manifest.created, False, refuted=True)


class ReleaseDates:
    """Every release on the origin dated (_dated, from the releases/ listing and the
    manifests as read_manifests_and_bytes reads them), read when first asked and then
    kept: one run asks it for repair's check and then resign's, and the origin's
    releases do not change in between (the caller holds the lock). One stat and at most
    one capped read per release beyond its manifest, the release a switch or re-sign is
    about included (around); a release whose .sig is listed but not served is one whose
    manifest does not read (unread), as one that does not parse. The origin failing to
    answer propagates."""

    def __init__(self, origin: Origin, *, trust: Trust, now: dt.datetime,
                 reader: Reader | None) -> None:
        self._origin, self._trust, self._now, self._reader = origin, trust, now, reader
        # release id -> (the manifest bytes it was dated from, its date; None: its .sig
        # is listed but not served), and the ids whose manifest does not read
        self._read: tuple[dict[str, tuple[bytes, DatedRelease | None]], set[str]] | None \
            = None

    def around(self, manifest: ReleaseManifest, data: bytes
               ) -> tuple[DatedRelease, list[DatedRelease], list[str]]:
        """``manifest``'s release (parsed from ``data``) dated as release_date dates it,
        with every other release dated and the ids of those that do not read (besides).
        Dated once: from the dating of every release when the origin served these very
        bytes for it, else (it answered otherwise since) from ``data`` itself, the bytes
        the caller acts on."""
        dated, _ = self._date_all()
        kept = dated.get(manifest.release)
        if kept is not None and kept[0] == data:
            target = kept[1] or DatedRelease(manifest.release, manifest.created, False,
                                             refuted=True)
        else:
            target = release_date(self._origin, manifest, data, trust=self._trust,
                                  now=self._now, reader=self._reader)
        others, unread = self.besides(manifest.release)
        return target, others, unread

    def besides(self, release_id: str) -> tuple[list[DatedRelease], list[str]]:
        """Every release but ``release_id`` dated, and the ids of those that do not read
        (sorted)."""
        dated, problems = self._date_all()
        unread = problems | {rid for rid, (_, d) in dated.items() if d is None}
        return ([d for rid, (_, d) in dated.items() if d is not None and rid != release_id],
                sorted(unread - {release_id}))

    def _date_all(self) -> tuple[dict[str, tuple[bytes, DatedRelease | None]], set[str]]:
        if self._read is None:
            read, problems = read_manifests_and_bytes(self._origin)
            # (None: not the command's failure, what it would prove is unknown)
            self._read = ({m.release: (data, _dated(self._origin, m, data, trust=self._trust,
                                                    now=self._now, reader=self._reader))
                           for m, data in read}, set(problems))
        return self._read


def _recorded_release_problem(origin: Origin, manifest: ReleaseManifest, *, trust: Trust,
                              now: dt.datetime, reader: Reader | None, jobs: int
                              ) -> str | None:
    """Why ``manifest``'s release as served would not be made live (every object read
    back and judged, the manifest's signature if it has one), or None if it verifies.
    The origin failing to answer propagates (OperationalError: the record stays)."""
    if manifest.entry is None:
        return "it has no entry script"
    entry = manifest.file(manifest.entry)
    if entry is None or entry.sig is None:
        return f"its entry {manifest.entry} has no signature"
    prefix = release_prefix(manifest.release)
    reports: dict[str, tuple[SignerReport, ...]] = {}
    try:
        verify_served(origin, manifest, trust=trust, now=now, reader=reader, jobs=jobs,
                      reports=reports)
        if origin.stat(prefix + MANIFEST_NAME + ".sig") is not None:
            verify_manifest_signature(origin, manifest.release, trust=trust, now=now,
                                      reader=reader, reports=reports)
        refuse_unfit(trust, reports, doing=f"make release {manifest.release} live",
                     now=now, revoked_hint="", expired_hint="")
    except VerificationError as exc:
        return exc.message
    return None


def repair(origin: Origin, *, trust: Trust, now: dt.datetime,
           options: OriginOptions | None = None, owner: str | None = None) -> RepairResult:
    """``trustboot publish repair``: under the lock, finish an interrupted switch."""
    reader = make_reader(origin, trust, options)
    try:
        with origin.lock(owner or default_owner()):
            return repair_switch(origin, trust=trust, now=now, reader=reader)
    finally:
        if reader is not None:
            reader.close()


def _verify_release(origin: Origin, manifest: ReleaseManifest, result: PublishResult,
                    stats: dict[str, ObjectStat | None], *, trust: Trust, now: dt.datetime,
                    reader: Reader | None, jobs: int, progress: PublishProgress | None,
                    cache: PublishCache | None, signed_manifest: bool,
                    prefetched: Mapping[str, Future[Served | None]] | None = None,
                    local: Mapping[str, LocalCopy] | None = None,
                    revoked_hint: str | None = None) -> None:
    """The whole release as served, before any switch (VerificationError if not).
    ``revoked_hint``: also refuse it when a signer is revoked or expired (refuse_unfit),
    with this hint; None when the signers were checked already (publish: the local files')."""
    cached = _cached_names(origin, manifest, cache, stats)
    result.readback_cached = sorted(cached)
    reports: dict[str, tuple[SignerReport, ...]] = {}
    result.verified = verify_served(origin, manifest, trust=trust, now=now, reader=reader,
                                    jobs=jobs, progress=progress, cached=cached,
                                    prefetched=prefetched, local=local, reports=reports)
    _remember(origin, manifest, cache, stats, cached)
    if signed_manifest:
        verify_manifest_signature(origin, manifest.release, trust=trust, now=now,
                                  reader=reader, reports=reports)
    if revoked_hint is not None:
        refuse_unfit(trust, reports, doing=f"make release {manifest.release} live",
                     now=now, revoked_hint=revoked_hint,
                     expired_hint=expired_hint(origin, manifest.release))


def publish_release(origin: Origin, release_id: str, objects: Sequence[LocalObject], *,
                    entry: str | None, entry_path: str = "boot.ipxe", trust: Trust,
                    now: dt.datetime, jobs: int = 4, switch: bool = True,
                    progress: PublishProgress | None = None,
                    options: OriginOptions | None = None,
                    ipxe: dict[str, Any] | None = None,
                    owner: str | None = None,
                    cache: PublishCache | None = None) -> PublishResult:
    """Upload, read back as iPXE, verify, then switch the entry (see module docstring).

    ``options`` supplies TLS settings for the read-back (default: trust the roots of
    ``trust``, as iPXE does). If ``objects`` contains ``release.json`` (e.g. signed by
    ``trustboot release``), it is used as the manifest and must describe the other objects.
    ``cache`` (see cache.py) lets an unchanged object skip its full read-back; None (the
    default) reads everything back in full.
    """
    check_release_id(release_id)
    check_entry_path(entry_path)
    for o in objects:
        problem = release_key_problem(o.key)
        if problem:
            raise ConfigError(f"{o.path}: cannot publish it as {o.key!r}: {problem}",
                              hint="rename the file to letters, digits and '._-'")
    check_signed(objects)
    keys = {o.key for o in objects}
    if entry is not None and entry not in keys:
        raise ConfigError(f"entry {entry!r} is not a file of the release",
                          hint=f"files: {', '.join(sorted(keys)[:10])}")
    verdicts = _local_verify(objects, trust, now)
    # before anything is uploaded: a revoked signer's release is not published at all
    refuse_unfit(trust, {k: v.signers for k, v in verdicts.items()},
                 doing=f"publish release {release_id}", now=now,
                 revoked_hint=REVOKED_LOCAL_HINT,
                 expired_hint="sign the files again with a current signer (`trustboot sign "
                              "--key NAME ...`; `trustboot ca renew NAME` if it expired) "
                              "and publish those")
    prefix = release_prefix(release_id)
    base = release_base_url(origin, release_id)
    given = next((o for o in objects if o.key == MANIFEST_NAME), None)
    if given is not None:
        manifest = parse_manifest(_read_small(given.path, 4 << 20), source=str(given.path))
        expected = build_manifest(release_id, objects, entry=entry, now=now, origin=base,
                                  trust=trust)
        if not manifest.same_content(expected):
            raise ConfigError(f"{given.path} does not describe the files being published "
                              f"(release {release_id}, entry {entry})",
                              hint="regenerate the manifest together with the files")
        switched_to = entry_path if entry else None
        if manifest.entry_path is not None and manifest.entry_path != switched_to:
            # retention counts a release for the entry path its manifest names: another's
            # would be pruned as, and prune for, the wrong entry
            raise ConfigError(f"{given.path} records the release for entry path "
                              f"{manifest.entry_path!r}, but it is published for "
                              f"{switched_to!r}",
                              hint="publish it with --entry-path "
                                   f"{manifest.entry_path}, or regenerate the manifest")
        manifest_bytes: bytes | None = None
    else:
        manifest = build_manifest(release_id, objects, entry=entry, now=now, origin=base,
                                  trust=trust, signer=_signer_summary(verdicts, entry),
                                  ipxe=ipxe, entry_path=entry_path if entry else None)
        manifest_bytes = manifest.to_bytes()
    result = PublishResult(release=release_id, origin=origin.url, entry=entry,
                           entry_path=entry_path if entry else None,
                           readback=readback_kind(origin, options),
                           signer=manifest.signer.to_json() if manifest.signer else None)
    reader = make_reader(origin, trust, options)
    by_key = {o.key: o for o in objects}
    local = {o.key: copy for o in objects if o.size >= LOCAL_COMPARE_MIN
             and (copy := LocalCopy.of(o.path, o.sha256)) is not None}
    try:
        with origin.lock(owner or default_owner()):
            result.repaired = _repaired(repair_switch(origin, trust=trust, now=now,
                                                      reader=reader, then_switching=switch,
                                                      jobs=jobs))
            result.removed_temps = origin.remove_stale_temps(STALE_TEMP_AGE)
            if switch and entry is not None:
                check_switch_target(origin, entry_path)  # before anything is uploaded
            existing = read_manifest(origin, release_id)
            if existing is not None and not existing.same_content(manifest):
                raise ConfigError(
                    f"release {release_id} already exists on {origin.url} with different "
                    "content; releases are immutable",
                    hint="publish under a new release id (or prune the old one first)")
            claim: Callable[[], None] | None = None
            if existing is None:
                def claim() -> None:
                    if manifest_bytes is not None:
                        origin.put_bytes(prefix + MANIFEST_NAME, manifest_bytes,
                                         sha256=hashlib.sha256(manifest_bytes).hexdigest())
                        result.bytes_uploaded += len(manifest_bytes)
                    else:
                        assert given is not None
                        origin.put_file(prefix + MANIFEST_NAME, given.path, size=given.size,
                                        sha256=given.sha256)
                        result.bytes_uploaded += given.size
                    # uploaded like any object (a dry run lists it: release.plan)
                    result.uploaded.append(MANIFEST_NAME)
            else:
                manifest = existing
            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                early = _EarlyReadback(origin, reader, prefix, by_key, pool, local)
                try:
                    stats = _upload(origin, prefix,
                                    [o for o in objects if o.key != MANIFEST_NAME],
                                    jobs, result, progress, on_uploaded=early.submit,
                                    claim=claim)
                    early.uploads_done()
                    _verify_release(origin, manifest, result, stats, trust=trust, now=now,
                                    reader=reader, jobs=jobs, progress=progress, cache=cache,
                                    signed_manifest=MANIFEST_NAME + ".sig" in keys,
                                    prefetched=early.prefetched, local=local)
                    early.check_unchanged()
                finally:
                    early.cancel()
            if switch and entry is not None:
                _switch_unless_live(origin, manifest, result, entry_path=entry_path,
                                    trust=trust, now=now, reader=reader, progress=progress)
    finally:
        if reader is not None:
            reader.close()
    return result


class _EarlyReadback:
    """Large objects read back as soon as they are in place, while the others still
    upload (the two directions overlap). Each one's size and ETag are noted before its
    read-back and checked again just before the switch, so a change after the read-back
    still stops it; a backend without ETags gets no early read-back. An object whose ETag
    is not settled yet (ObjectStat.settled: written in the second the origin answered in)
    is looked at again once that second is over, in the pool while the upload goes on,
    and read back then if it is settled; once every upload is done (``uploads_done``)
    nothing waits any more: what has not started is read back with the others."""

    def __init__(self, origin: Origin, reader: Reader | None, prefix: str,
                 by_key: Mapping[str, LocalObject], pool: ThreadPoolExecutor,
                 local: Mapping[str, LocalCopy]) -> None:
        self.origin, self.reader, self.prefix = origin, reader, prefix
        self.by_key, self.pool, self.local = by_key, pool, local
        self.prefetched: dict[str, Future[Served | None]] = {}
        self.seen: dict[str, ObjectStat] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()  # the uploads are over: no more waiting to settle

    def submit(self, o: LocalObject) -> None:
        sig = self.by_key.get(o.key + ".sig")
        if sig is None or o.size < EARLY_READBACK_MIN:
            return
        st = self.origin.stat(self.prefix + o.key)
        if st is None or not st.etag:
            return  # nothing cheap to re-check with: read back with the others
        names = signature_hashes(_read_small(sig.path, MAX_SIGNATURE_SIZE))
        future: Future[Served | None]
        if st.settled:
            with self.lock:
                self.seen[o.key] = st
            future = self.pool.submit(self._read, o, names)
        else:
            future = self.pool.submit(self._read_once_settled, o, names)
        with self.lock:
            self.prefetched[o.key] = future

    def _read(self, o: LocalObject, names: set[str]) -> Served | None:
        return _served(self.origin, self.reader, self.prefix + o.key, max_size=o.size,
                       hash_names=names, local=self.local.get(o.key))

    def _read_once_settled(self, o: LocalObject, names: set[str]) -> Served | None:
        """The read-back of an object written in the second the origin answered in, once
        that second is over and its ETag settled; None (read back with the others) when
        the uploads end first or it is still not settled."""
        if self.done.wait(SETTLE_WAIT):
            return None
        st = self.origin.stat(self.prefix + o.key)
        if st is None or not st.etag or not st.settled:
            return None
        with self.lock:
            self.seen[o.key] = st  # taken before the read-back, as for the others
        return self._read(o, names)

    def uploads_done(self) -> None:
        self.done.set()

    def check_unchanged(self) -> None:
        changed = []
        for key, before in sorted(self.seen.items()):
            now = self.origin.stat(self.prefix + key)
            if now is None or (now.size, now.etag) != (before.size, before.etag):
                changed.append(self.prefix + key)
        if changed:
            raise VerificationError(
                f"{', '.join(changed)} changed on {self.origin.url} after being read back "
                "and verified", hint="nothing was switched; find out who writes to the "
                                     "origin, then publish again",
                rule="served-object", subject=changed[0])

    def cancel(self) -> None:
        self.done.set()
        for future in self.prefetched.values():
            future.cancel()


def _repaired(r: RepairResult) -> str | None:
    return r.detail if r.action != "none" else None


def _upload(origin: Origin, prefix: str, objects: Sequence[LocalObject], jobs: int,
            result: PublishResult, progress: PublishProgress | None,
            on_uploaded: Callable[[LocalObject], None] | None = None,
            claim: Callable[[], None] | None = None) -> dict[str, ObjectStat | None]:
    """Upload what is missing or different; the origin's stat of every object after.
    ``on_uploaded(o)`` runs as soon as ``o`` is in place. ``claim`` (writing a new
    release's manifest) runs once the signatures are in place, before anything else is:
    a run killed after the claim leaves them on the origin, and a re-run keeps them
    (release's _Held) where signing again would not match the claim (a token's ECDSA
    signature differs on every signing). They are small, and nothing points at them yet."""
    todo: list[LocalObject] = []
    stats: dict[str, ObjectStat | None] = {}
    stager = staging_of(origin)
    stats.update(_stat_all(origin, prefix, [o.key for o in objects], jobs))
    for o in objects:
        st = stats[o.key]
        if holds(st, o.size, o.sha256):
            result.skipped.append(o.key)
            if o.staged is not None and stager is not None:
                stager.discard_staged(o.staged)
            if progress:
                progress.item(o.key, "skipped")
        else:
            todo.append(o)
    if progress:
        progress.phase("upload", sum(o.size for o in todo if o.staged is None))
    # small objects (signatures, scripts) last, so the large ones start early in parallel;
    # staged ones first of all: a move on the server, then their read-back can start
    todo.sort(key=lambda o: (o.staged is None, -o.size))

    def one(o: LocalObject) -> None:
        if o.staged is not None:
            if stager is None:
                raise ValueError(f"{o.key} was staged on another kind of origin")
            _unchanged_since_staged(o.staged)
            stager.place_staged(o.staged, prefix + o.key)
        else:
            origin.put_file(prefix + o.key, o.path, size=o.size, sha256=o.sha256,
                            progress=progress.advance if progress else None)
        if on_uploaded is not None:
            on_uploaded(o)
        result.uploaded.append(o.key)
        if progress:
            progress.item(o.key, "uploaded")

    rest = todo
    if claim is not None:
        _run_all(one, [o for o in todo if o.key.endswith(".sig")], jobs)
        claim()
        rest = [o for o in todo if not o.key.endswith(".sig")]
    _run_all(one, rest, jobs)
    result.uploaded.sort()
    result.skipped.sort()
    result.bytes_uploaded += sum(o.size for o in todo)
    stats.update(_stat_all(origin, prefix, [o.key for o in todo], jobs))
    return stats


def holds(st: ObjectStat | None, size: int, sha256: str) -> bool:
    """The origin's object is these bytes as far as its stat tells: present, this size
    and, where the backend records it, this sha256. What an upload is skipped on."""
    return st is not None and st.size == size and (st.sha256 is None or st.sha256 == sha256)


def _stat_all(origin: Origin, prefix: str, keys: Sequence[str], jobs: int
              ) -> dict[str, ObjectStat | None]:
    """``origin.stat`` of each key under ``prefix``, ``jobs`` at a time (round trips)."""
    out: dict[str, ObjectStat | None] = {}

    def one(key: str) -> None:
        out[key] = origin.stat(prefix + key)

    _run_all(one, keys, jobs)
    return out


def _unchanged_since_staged(staged: Staged) -> None:
    """The local file still has the stamp it had while it was read and staged: what is
    published is what the release directory holds (as an upload after hashing checks)."""
    from trustboot.cms.digest import file_stamp

    try:
        same = file_stamp(os.stat(staged.path)) == file_stamp(staged.stamp)
    except OSError:
        same = False
    if not same:
        raise OperationalError(
            f"{staged.path} changed after it was read and uploaded; nothing was switched",
            hint="do not modify the release directory during a publish; run it again")


def _cached_names(origin: Origin, manifest: ReleaseManifest, cache: PublishCache | None,
                  stats: dict[str, ObjectStat | None]) -> set[str]:
    """Objects a full read-back verified before and that are unchanged (size + ETag).
    Never the entry script or a signature: those are always fetched in full."""
    if cache is None:
        return set()
    prefix = release_prefix(manifest.release)
    sig_names = {f.sig for f in manifest.files if f.sig}
    out = set()
    for f in manifest.files:
        st = stats.get(f.name)
        if f.name == manifest.entry or f.name in sig_names or f.sig is None or st is None:
            continue
        if holds(st, f.size, f.sha256) and \
                cache.is_verified(origin.url, prefix + f.name, size=st.size, etag=st.etag,
                                  sha256=f.sha256):
            out.add(f.name)
    return out


def _remember(origin: Origin, manifest: ReleaseManifest, cache: PublishCache | None,
              stats: dict[str, ObjectStat | None], cached: set[str]) -> None:
    if cache is None:
        return
    prefix = release_prefix(manifest.release)
    for f in manifest.files:
        st = stats.get(f.name)
        # an unsettled ETag may survive a change (ObjectStat.settled): read back next time
        if st is not None and f.name not in cached and st.size == f.size and st.settled:
            cache.remember_verified(origin.url, prefix + f.name, size=st.size, etag=st.etag,
                                    sha256=f.sha256)
    cache.save()


def read_manifests(origin: Origin) -> tuple[list[ReleaseManifest], dict[str, str]]:
    """Every release manifest on the origin, and problems with the ones that do not parse."""
    read, problems = read_manifests_and_bytes(origin)
    return [m for m, _ in read], problems


def read_manifests_and_bytes(origin: Origin
                             ) -> tuple[list[tuple[ReleaseManifest, bytes]], dict[str, str]]:
    """As read_manifests, with the bytes each manifest was parsed from. A release folder
    without a release.json is a problem too, not skipped: whoever writes to the origin
    could otherwise hide a newer release from every check that dates releases
    (_switch_back, resign) by deleting one file. A publish killed before its manifest,
    or under way, leaves one as well."""
    out, problems = [], {}
    # one listing of releases/ (its directories), not of every object of every release
    for rid in origin.list_dirs(RELEASES_PREFIX + "/"):
        if release_id_problem(rid):
            continue
        try:
            m = read_manifest_data(origin, rid)
        except TrustbootError as exc:
            problems[rid] = exc.message
            continue
        if m is None:
            problems[rid] = MANIFEST_MISSING
        else:
            out.append(m)
    return out, problems


# (what a release folder without release.json reports: a publish killed before writing
# it, one under way, or the manifest removed)
MANIFEST_MISSING = (f"manifest missing: the folder has no {MANIFEST_NAME} (a publish killed "
                    "or still under way, or the file removed)")


def unread_manifests(origin: Origin, entry_path: str, problems: dict[str, str],
                     outcome: str) -> None:
    """When no release is found live at ``entry_path`` and some manifests did not read
    (``problems``, from read_manifests): an OperationalError naming the first, as the
    entry may be that release's (an origin too slow, a broken file). Saying the entry is
    no release's (a configuration error) sent the user after the wrong problem."""
    if problems:
        rid, problem = sorted(problems.items())[0]
        raise OperationalError(
            f"cannot tell which release {origin.url}{entry_path} boots: the manifest of "
            f"release {rid} could not be read ({problem}); {outcome}",
            hint=f"`trustboot publish list {origin.url}` shows every release that does not "
                 "read; fix the origin (or remove that release), then run this again")


def pending_switch(origin: Origin) -> bool:
    """Whether an entry switch was recorded and never finished (a run killed between the
    two replacements): until repaired, the entry pair may not verify."""
    return origin.stat(SWITCH_JOURNAL) is not None


NO_TRUST_ANCHORS = Fault(
    "no-trust-anchors", "no trust anchors to judge its signature with (--trust ROOT, or "
    "--pki with a CA home)")


@dataclass(frozen=True)
class _Proven:
    """Who signed a release, as a signature judged by `publish list` proves it."""

    signers: tuple[SignerReport, ...]
    by: str  # "manifest" (release.json.sig) or "entry" (the entry script's .sig)
    expired: Fault | None  # the signature's only fault is the clock
    # release.json's date: proven by its .sig (date_proof), else why not (None: the
    # entry script's .sig, which signs no date)
    created_unproven: str | None = None
    created_proven: bool = False


def list_releases(origin: Origin, *, entry_path: str = "boot.ipxe", trust: Trust | None,
                  now: dt.datetime) -> list[ReleaseInfo]:
    """Releases with date, signer, expiry, completeness and which one is live.

    Who signed a release is what its release.json.sig says, judged with iPXE's rules
    against ``trust`` at ``now`` (as publish and rollback judge it); a release without
    one (published from a directory: only `release` and `resign` sign the manifest) is
    judged by its entry script and the entry's .sig, as the firmware judges it, the
    script's bytes held to the sha256 the manifest records. A signature whose only fault
    is the clock still names its signer (``expired``). Whether that signer is revoked is
    asked of ``trust.revocation``. Its date is proven by date_proof alone, the rule
    repair and resign date releases by. release.json's own signer field is never shown:
    whoever writes to the origin writes it. No such signature, or one that does not
    verify, lists as ``unverified`` (None ``trust``: nothing to judge with). At most two
    reads per release more than its manifest, for objects the origin's listing has."""
    read, problems = read_manifests_and_bytes(origin)
    live = live_release(origin, [m for m, _ in read], entry_path)
    present = set(origin.list("releases/"))
    infos = []
    for m, data in read:
        prefix = release_prefix(m.release)
        complete = all(prefix + f.name in present for f in m.files)
        base = ReleaseInfo(id=m.release, created=m.created, signer=None, expiry=None,
                           live=m.release == live, complete=complete, files=len(m.files))
        if prefix + MANIFEST_NAME + ".sig" in present:
            proven = _manifest_signers(origin, m.release, data, trust, now, m.created)
        else:
            proven = _entry_signers(origin, m, present, trust, now)
        if isinstance(proven, Fault):
            infos.append(dataclasses.replace(base, unverified=proven))
            continue
        signed = proven.signers
        first = signed[0]
        # an expired signer is looked up too: an operator ruling out rollback targets
        # must see that it was revoked, not only that it expired
        revoked = trust.revocation.of(signed, now) if trust and trust.revocation else []
        end = min(s.chain_not_after for s in signed)
        expired = proven.expired
        if expired is None and end < now:  # iPXE's margin accepts it, the gates do not
            expired = Fault("expired", f"its chain ended on {end.isoformat()}: iPXE still "
                            "accepts it within its 12h30m clock margin, publish and "
                            "rollback do not")
        infos.append(dataclasses.replace(
            base, signer=first.subject, signer_serial=f"{first.serial:x}", expiry=end,
            revoked=tuple(revoked), verified_by=proven.by,
            expired=expired, created_proven=proven.created_proven,
            created_unproven=proven.created_unproven))
    for rid, problem in problems.items():
        infos.append(ReleaseInfo(rid, None, None, None, False, False, 0, problem,
                                 unverified=Fault("manifest-unreadable", problem)))
    return sorted(infos, key=lambda i: (i.created or dt.datetime.min.replace(tzinfo=dt.UTC),
                                        i.id))


def _listed_read(origin: Origin, key: str, *, max_size: int, rule: str, what: str,
                 too_large: Fault) -> bytes | Fault:
    """An object a listing judges, read once and capped at ``max_size`` (``too_large``
    past it). Whatever the origin serves there (too large, gone meanwhile, unreadable) is
    that release's answer (``rule``), not the listing's failure."""
    try:
        return b"".join(origin.read(key, max_size=max_size))
    except TooLarge:
        return too_large
    except TrustbootError as exc:
        return Fault(rule, f"cannot read {what}: {exc.message}")


def _sig_too_large(rule: str, name: str) -> Fault:
    return Fault(rule, f"{name} is larger than {MAX_SIGNATURE_SIZE} bytes, more than iPXE "
                 "takes")


def _proven_by(signature: bytes, digests: dict[str, bytes], trust: Trust, now: dt.datetime,
               *, what: str, by: str, signed_at: dt.datetime | None = None
               ) -> _Proven | Fault:
    """The signers ``signature`` (``what``, for the reason) proves over an object hashed
    to ``digests``: iPXE's verdict at ``now``, or, when the clock is its only fault, the
    verdict beside it (judge_beside_the_clock, at ``signed_at`` when the object states
    when it was signed) with ``expired`` set."""
    verdict, untimely = judge_beside_the_clock(signature, digests, trust, now,
                                               signed_at=signed_at)
    if (untimely is not None and signed_at is not None and verdict.failure is not None
            and verdict.failure.rule in EXPIRY_RULES):
        # a date an expired signer was not valid at proves nothing (a key leaked after it
        # expired signs any date), so neither does it prove the signer (and date_proof
        # proves no such date either)
        return Fault("created-outside-validity", f"its {what} verifies only at another "
                     f"date than the {signed_at.isoformat()} {MANIFEST_NAME} says it was "
                     "created, which lies outside its signer's validity: "
                     f"{verdict.failure.message}")
    if verdict.failure is not None:
        return Fault(verdict.failure.rule, f"its {what} does not verify: "
                     f"{verdict.failure.message}")
    if not verdict.signers:  # (iPXE verifies every signer: a verdict without one is none)
        return Fault("no-signatures", f"its {what} has no signer")
    expired = None
    if untimely is not None:
        expired = Fault(untimely.rule, f"its {what} verifies but not at this clock: "
                        f"{untimely.message}")
    return _Proven(verdict.signers, by, expired)


def _manifest_signers(origin: Origin, release_id: str, data: bytes, trust: Trust | None,
                      now: dt.datetime, created: dt.datetime) -> _Proven | Fault:
    """The signers of release.json (its bytes ``data``, dated ``created``) as its .sig,
    which the origin's listing has, proves them; else why not. One read."""
    if trust is None:
        return NO_TRUST_ANCHORS
    name = MANIFEST_NAME + ".sig"
    key = release_prefix(release_id) + name
    signature = _listed_read(origin, key, max_size=MAX_SIGNATURE_SIZE,
                             rule="manifest-signature-unread", what=name,
                             too_large=_sig_too_large("manifest-signature-unread", name))
    if isinstance(signature, Fault):
        return signature
    digests = {h: hashlib.new(h, data).digest() for h in signature_hashes(signature)}
    proven = _proven_by(signature, digests, trust, now, what=name, by="manifest",
                        signed_at=created)
    if isinstance(proven, Fault):
        return proven
    # the date by repair's and resign's rule, not by who signed: a signer valid now
    # proves who signed a backdated or future-dated manifest, never that date
    dated = date_proof(signature, data, release_id, trust=trust, now=now,
                       source=f"{origin.url}{key}")
    if isinstance(dated, str):
        return dataclasses.replace(proven, created_unproven=dated)
    return dataclasses.replace(proven, created_proven=True)


def _entry_signers(origin: Origin, m: ReleaseManifest, present: set[str],
                   trust: Trust | None, now: dt.datetime) -> _Proven | Fault:
    """Who signed a release whose release.json has no signature: the signers of its
    entry script's .sig (what the firmware verifies), over the script's bytes, which must
    be the ones the manifest records (that ties the script to this release). Two reads
    at most, each capped; none when the listing ``present`` lacks either object."""
    unsigned = f"{MANIFEST_NAME} has no signature ({MANIFEST_NAME}.sig)"
    entry = m.file(m.entry) if m.entry is not None else None
    if entry is None:
        return Fault("manifest-unsigned", f"{unsigned} and the release has no entry script "
                     "to judge instead: who signed it cannot be told")
    if entry.sig is None:
        return Fault("manifest-unsigned", f"{unsigned} and its entry script "
                     f"{clean(entry.name)} has none either: who signed it cannot be told")
    prefix = release_prefix(m.release)
    gone = [n for n in (entry.name, entry.sig) if prefix + n not in present]
    if gone:
        return Fault("entry-missing", f"{unsigned} and the origin lacks its entry "
                     f"{shown_names([clean(n) for n in gone], 2)}: who signed it cannot "
                     "be told")
    if trust is None:
        return NO_TRUST_ANCHORS
    signature = _listed_read(origin, prefix + entry.sig, max_size=MAX_SIGNATURE_SIZE,
                             rule="entry-signature-unread", what=clean(entry.sig),
                             too_large=_sig_too_large("entry-signature-unread",
                                                      clean(entry.sig)))
    if isinstance(signature, Fault):
        return signature
    # never more than the manifest records: a larger object is not the one published
    cap = min(entry.size, MAX_ENTRY_SIZE)
    script = _listed_read(
        origin, prefix + entry.name, max_size=cap, rule="entry-unread",
        what=f"its entry script {clean(entry.name)}",
        too_large=Fault("entry-changed", f"its entry script {clean(entry.name)} is larger "
                        f"than the {entry.size} bytes {MANIFEST_NAME} records: changed on "
                        "the origin") if cap == entry.size else
        Fault("entry-unread", f"its entry script {clean(entry.name)} is larger than "
              f"{MAX_ENTRY_SIZE} bytes, more than an entry script may be"))
    if isinstance(script, Fault):
        return script
    sha256 = hashlib.sha256(script).hexdigest()
    if sha256 != entry.sha256:
        return Fault("entry-changed", f"its entry script {clean(entry.name)} is not the "
                     f"one {MANIFEST_NAME} records ({len(script)} bytes with sha256 "
                     f"{sha256[:16]}..., recorded {entry.size} bytes with "
                     f"{entry.sha256[:16]}...): changed on the origin")
    digests = {h: hashlib.new(h, script).digest() for h in signature_hashes(signature)}
    return _proven_by(signature, digests, trust, now,
                      what=f"entry script's signature {clean(entry.sig)}", by="entry")


def rollback(origin: Origin, release_id: str, *, entry_path: str = "boot.ipxe",
             trust: Trust, now: dt.datetime, jobs: int = 4,
             progress: PublishProgress | None = None, options: OriginOptions | None = None,
             owner: str | None = None, cache: PublishCache | None = None) -> PublishResult:
    """Switch the entry back to ``release_id``, after verifying it like a publish."""
    check_release_id(release_id)
    check_entry_path(entry_path)
    reader = make_reader(origin, trust, options)
    try:
        with origin.lock(owner or default_owner()):
            repaired = _repaired(repair_switch(origin, trust=trust, now=now, reader=reader,
                                               then_switching=True, jobs=jobs))
            manifest = read_manifest(origin, release_id)
            if manifest is None:
                raise ConfigError(f"release {release_id} does not exist on {origin.url}",
                                  hint="see `trustboot publish list ORIGIN`")
            if manifest.entry is None:
                raise ConfigError(f"release {release_id} has no entry script to switch to")
            check_switch_target(origin, entry_path)
            result = PublishResult(release=release_id, origin=origin.url,
                                   entry=manifest.entry, entry_path=entry_path,
                                   readback=readback_kind(origin, options),
                                   signer=manifest.signer.to_json() if manifest.signer
                                   else None, repaired=repaired)
            prefix = release_prefix(release_id)
            stats = {f.name: origin.stat(prefix + f.name) for f in manifest.files}
            _verify_release(origin, manifest, result, stats, trust=trust, now=now,
                            reader=reader, jobs=jobs, progress=progress, cache=cache,
                            signed_manifest=origin.stat(prefix + MANIFEST_NAME + ".sig")
                            is not None, revoked_hint=revoked_rollback_hint(origin))
            _switch_unless_live(origin, manifest, result, entry_path=entry_path, trust=trust,
                                now=now, reader=reader, progress=None)
            return result
    finally:
        if reader is not None:
            reader.close()


def _entry_pairs(keys: Collection[str]) -> list[str]:
    """The paths of the entry pairs among ``keys`` (a script with its .sig beside it).

    Pairs inside a release's directory are its objects, not entries; one directly under
    releases/ is an entry (refused today, check_entry_path, but an origin may have one
    from before) and protects its release like any other."""
    inside = re.compile(re.escape(RELEASES_PREFIX) + "/[^/]+/")
    return sorted(k[:-4] for k in keys if k.endswith(".sig") and k[:-4] in keys
                  and not inside.match(k))


def _served_elsewhere(origin: Origin, manifests: Sequence[ReleaseManifest],
                      entry_path: str, keys: Collection[str]) -> set[str]:
    """The releases served by entry pairs at other paths than ``entry_path`` (another
    recipe's entry on a shared origin: a staging menu beside the production one)."""
    served = (live_release(origin, manifests, path, by_script=True)
              for path in _entry_pairs(keys) if path != entry_path)
    return {r for r in served if r is not None}


@dataclass
class PruneResult:
    """What prune did: the releases it deleted, the old releases it left (each with the
    reason), and the release folders without a release.json (a publish killed before
    writing it, or the file removed) it removed or left, each left one with the reason."""

    deleted: list[str] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)
    incomplete_removed: list[str] = field(default_factory=list)
    incomplete_left: dict[str, str] = field(default_factory=dict)
    incomplete_age: float = STALE_TEMP_AGE  # how old a removed one was at least
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"deleted": self.deleted, "warnings": self.warnings,
                "left": [{"release": r, "reason": why} for r, why in sorted(self.left.items())],
                "incomplete_removed": self.incomplete_removed,
                "incomplete_left": [{"release": r, "reason": why} for r, why
                                    in sorted(self.incomplete_left.items())]}

    def lines(self) -> list[str]:
        """One line per old release left and per release folder without a release.json."""
        return ([f"left release {r}: {why}" for r, why in sorted(self.left.items())]
                + self.incomplete_lines())

    def incomplete_lines(self) -> list[str]:
        """One line per release folder without a release.json, removed or left."""
        older = format_duration(dt.timedelta(seconds=self.incomplete_age))
        return ([f"removed incomplete release folder {r} (no {MANIFEST_NAME}, older than "
                 f"{older})" for r in self.incomplete_removed]
                + [f"left incomplete release folder {r} (no {MANIFEST_NAME}): {why}"
                   for r, why in sorted(self.incomplete_left.items())])


def _foreign(origin: Origin, prefix: str) -> str | None:
    """Why the folder ``prefix`` cannot be removed whole by trustboot: the names in it
    that ``list`` leaves out (Origin.unlisted), which no delete of ours takes; None when
    the origin shows none."""
    names = origin.unlisted(prefix)
    if not names:
        return None
    return (f"its folder also holds {shown_names([shown(n) for n in names], 5)}, which "
            "trustboot does not list or write: nothing of it was deleted; move those out "
            f"of {clean(prefix)}, then prune again")


def _delete_release(origin: Origin, release_id: str, result: PruneResult) -> None:
    """Delete the old release ``release_id`` entirely, or leave it whole and say why
    (``result.left``); caller holds the lock.

    Everything the folder holds is found first: the objects ``list`` shows, and what it
    leaves out (_foreign), which no delete of ours takes, so the folder would stay. Such
    a release is left whole, its release.json included, rather than emptied into a
    folder without a manifest that nothing can date (and that blocks every repair of a
    killed switch and every resign until it is gone). Then its objects go, release.json's
    signature and release.json (the id's claim) last: a run cut off in the middle leaves
    a release that still has its manifest, which `publish list` shows incomplete, which a
    rollback refuses (an object is missing: the fleet is never switched to it), and whose
    rest the next prune deletes at once, with no age to wait for or tell."""
    prefix = release_prefix(release_id)
    keys = origin.list(prefix)
    why = _foreign(origin, prefix)
    if why is not None:
        result.left[release_id] = why
        return
    claim = [prefix + MANIFEST_NAME + ".sig", prefix + MANIFEST_NAME]
    order = [k for k in keys if k not in claim] + [k for k in claim if k in keys]
    done = 0
    try:
        for key in order:
            origin.delete(key)
            done += 1
        gone = origin.remove_empty_folder(prefix)
    except OperationalError as exc:
        raise _prune_failed(origin, release_id, order[done:], result, exc) from None
    if gone:
        result.deleted.append(release_id)
    else:
        result.left[release_id] = (
            f"its objects and {MANIFEST_NAME} were deleted, but the folder stays: it holds "
            "names the origin does not list (nginx hides dot-files from WebDAV listings); "
            f"remove {clean(prefix)} by hand")


def _prune_failed(origin: Origin, release_id: str, undone: Sequence[str],
                  result: PruneResult, exc: OperationalError) -> OperationalError:
    """The error of a prune cut off while deleting ``release_id``: exactly what is left
    of it (listed again; ``undone``, the keys not yet deleted, if the origin does not
    answer), what this run deleted before, and that the same prune finishes the job."""
    prefix = release_prefix(release_id)
    try:
        left = origin.list(prefix)
        seen = "left of it"
    except OperationalError:
        left, seen = list(undone), "left of it at least (the origin did not answer a listing)"
    if prefix + MANIFEST_NAME in left:
        state = (f"{seen}: {shown_names(left, 5)}; its {MANIFEST_NAME} is kept (deleted "
                 "last), so it stays a release that `publish list` shows incomplete, that "
                 "no rollback switches to, and that the next prune deletes")
    else:
        state = (f"{seen}: {shown_names(left, 5) if left else 'nothing the origin lists'}; "
                 f"its {MANIFEST_NAME} is gone, so its folder is an incomplete release folder "
                 "the next prune removes once nothing in it changed for "
                 f"{format_duration(dt.timedelta(seconds=result.incomplete_age))}")
    before = (f"; deleted before it: {', '.join(result.deleted)}" if result.deleted
              else "")
    return OperationalError(
        f"pruning release {release_id} from {origin.url} failed: "
        f"{exc.message.rstrip('.')}; {state}{before}",
        hint="fix what the origin refused (its error log says why), then run the same "
             "prune again: it finishes what this run left")


def _named_by_records(origin: Origin) -> set[str]:
    """The releases the live record (any entry path) and the switch record name."""
    named = {r["release"] for r in _live_records(origin).values()
             if isinstance(r, dict) and isinstance(r.get("release"), str)}
    if pending_switch(origin):
        try:
            doc = jsonin.loads(b"".join(origin.read(SWITCH_JOURNAL, max_size=64 << 10)))
            if isinstance(doc, dict) and isinstance(doc.get("release"), str):
                named.add(doc["release"])
        except (ValueError, TooLarge):
            pass  # a record that does not parse names nothing (repair drops it)
    return named


class _ServedEntries:
    """The entry pairs of the origin as served (each script and .sig, by sha256, and the
    scripts' text), read once when first asked: which folders they fetch from."""

    def __init__(self, origin: Origin, keys: Collection[str], entry_path: str) -> None:
        self._origin = origin
        self._paths = sorted(set(_entry_pairs(keys)) | ({entry_path} & set(keys)))
        self._read: tuple[dict[int, set[str]], list[bytes]] | None = None

    def _digests(self) -> tuple[dict[int, set[str]], list[bytes]]:
        if self._read is None:
            by_size: dict[int, set[str]] = {}
            scripts = []
            for path in self._paths:
                for key, cap in ((path, MAX_ENTRY_SIZE), (path + ".sig", MAX_SIGNATURE_SIZE)):
                    st = self._origin.stat(key)
                    if st is None or st.size > cap:
                        continue  # not an entry script or signature trustboot writes
                    try:
                        data = _served_bytes(self._origin, None, key, cap)
                    except TooLarge:
                        continue  # (grown meanwhile: as above)
                    by_size.setdefault(len(data), set()).add(hashlib.sha256(data).hexdigest())
                    if key == path:
                        scripts.append(data)
            self._read = by_size, scripts
        return self._read

    def fetch_from(self, release_id: str, keys: Sequence[str]) -> bool:
        """Whether an entry pair serves an object of the folder (``keys``, its objects)
        or names the folder in its script."""
        by_size, scripts = self._digests()
        folder = f"{RELEASES_PREFIX}/{release_id}/".encode()
        if any(folder in script for script in scripts):
            return True
        for key in keys:
            st = self._origin.stat(key)
            if st is not None and st.size in by_size:
                try:
                    data = _served_bytes(self._origin, None, key, MAX_ENTRY_SIZE)
                except TooLarge:
                    continue  # grown past any entry's size meanwhile: none of them
                if hashlib.sha256(data).hexdigest() in by_size.get(len(data), set()):
                    return True
        return False


def _folder_age(origin: Origin, prefix: str, result: PruneResult) -> float | str:
    """The age of the folder ``prefix`` (Origin.folder_age), or why it cannot be told;
    an origin refusing a listing the age needs adds one warning to ``result``, not an
    error: the other folders and the old releases are still pruned."""
    try:
        age = origin.folder_age(prefix)
    except AgeUnknown as exc:
        hint = (exc.hint or "check the origin's permissions").rstrip(".")
        if not any(hint in w for w in result.warnings):  # once per prune, not per folder
            result.warnings.append(
                f"{exc.message.rstrip('.')}: release folders without a {MANIFEST_NAME} "
                f"are left while their age cannot be told (see incomplete_left); {hint}")
        return f"its age cannot be told: {exc.message.rstrip('.')}"
    if age is None:
        return "its age cannot be told (the origin does not date all it holds)"
    return age


def _remove_incomplete(origin: Origin, problems: Mapping[str, str], keys: Collection[str],
                       entry_path: str, result: PruneResult) -> None:
    """Remove the release folders without a release.json (``problems``: MANIFEST_MISSING)
    that nothing may still need (caller holds the lock): never one the live or switch
    record names or an entry pair serves, never one changed within
    ``result.incomplete_age`` (a publish may be under way), nor one whose age the origin
    cannot tell; those are left, with the reason. Until removed, such a folder is a
    release whose date cannot be told, and every repair of a killed switch and every
    resign without a usable live record is refused (_switch_back, resign)."""
    candidates = sorted(r for r, why in problems.items() if why == MANIFEST_MISSING)
    if not candidates:
        return
    named = _named_by_records(origin)
    served = _ServedEntries(origin, keys, entry_path)
    limit = result.incomplete_age
    for rid in candidates:
        prefix = release_prefix(rid)
        inside = sorted(k for k in keys if k.startswith(prefix))
        age = None
        if rid in named:
            why = "the live record or the switch record names it"
        elif served.fetch_from(rid, inside):
            why = "an entry pair on the origin serves it"
        elif isinstance(age := _folder_age(origin, prefix, result), str):
            why = age
        elif age < limit:
            why = (f"it changed {format_duration(dt.timedelta(seconds=max(age, 0)))} ago, "
                   f"less than {format_duration(dt.timedelta(seconds=limit))} (a publish "
                   "may be under way)")
        elif (foreign := _foreign(origin, prefix)) is not None:
            why = foreign
        else:
            try:
                for key in inside:
                    origin.delete(key)
                if origin.remove_empty_folder(prefix):
                    result.incomplete_removed.append(rid)
                    continue
                why = ("it still holds names the origin does not list (nginx hides "
                       "dot-files from WebDAV listings): remove it by hand")
            except OperationalError as exc:
                # one folder the origin refuses to remove does not fail every prune
                why = (f"removing it failed: {exc.message.rstrip('.')}; fix that on the "
                       "origin, then prune again")
        result.incomplete_left[rid] = why


def prune(origin: Origin, *, keep: int, entry_path: str = "boot.ipxe",
          owner: str | None = None, incomplete_age: float = STALE_TEMP_AGE) -> PruneResult:
    """Delete all but the ``keep`` newest releases of ``entry_path`` (those whose manifest
    says they were published for it, ReleaseManifest.entry_path), never one an entry
    pair of the origin serves (``entry_path``'s, or another's). Another entry path's
    releases are never deleted: on a shared origin, a staging recipe's retention of 1
    deleted production's rollback targets.

    Release folders without a release.json are removed once nothing changed in them for
    ``incomplete_age`` seconds (_remove_incomplete), even while an interrupted switch
    is recorded (then no release is deleted, and the OperationalError names them): such
    a folder is what keeps the repair of that switch refused."""
    if keep < 1:
        raise ConfigError(f"--keep {keep}: keep at least one release")
    check_entry_path(entry_path)
    result = PruneResult(incomplete_age=incomplete_age)
    with origin.lock(owner or default_owner()):
        origin.remove_stale_temps(STALE_TEMP_AGE)
        keys = set(origin.list(""))
        manifests, problems = read_manifests(origin)
        if pending_switch(origin):
            # the live release is ambiguous until the switch is finished
            _remove_incomplete(origin, problems, keys, entry_path, result)
            done = "".join(f"; {line}" for line in result.incomplete_lines())
            raise OperationalError(
                f"{origin.url} has an interrupted entry switch recorded; no release "
                f"pruned{done}",
                hint=f"finish it first: trustboot publish repair {origin.url}")
        live = live_release(origin, manifests, entry_path, by_script=True)
        if live is None and origin.stat(entry_path) is not None:
            unread_manifests(origin, entry_path, problems, "nothing pruned")
            # an entry that is none of the releases' (hand-edited, or another tool's) may
            # still fetch from any of them: which ones cannot be told
            raise ConfigError(
                f"{origin.url}{entry_path} serves none of its releases: cannot tell which "
                "release it boots; nothing pruned",
                hint="check --entry-path (recipe: origin.entry), or switch it to a release "
                     "first: trustboot publish rollback ORIGIN ID")
        elsewhere = _served_elsewhere(origin, manifests, entry_path, keys)
        # A manifest from before entry_path was recorded proves no entry path: it counts
        # as this entry's while no other entry on the origin serves a release (an origin
        # of one recipe, as every origin was then), this one being the default or serving
        # one itself (not a mistyped --entry-path); beside another entry it is kept.
        unproven = not elsewhere and (entry_path == DEFAULT_ENTRY_PATH or live is not None)
        mine = [m for m in manifests
                if m.entry_path == entry_path or (m.entry_path is None and unproven)]
        newest = sorted(mine, key=lambda m: (m.created, m.release), reverse=True)
        keep_ids = {m.release for m in newest[:keep]} | ({live} if live else set())
        keep_ids |= elsewhere
        for m in newest:
            if m.release in keep_ids:
                continue
            _delete_release(origin, m.release, result)
        _remove_incomplete(origin, problems, keys, entry_path, result)
    result.deleted.sort()
    return result

