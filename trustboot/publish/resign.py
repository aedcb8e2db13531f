"""Re-sign the live release on an origin with a fresh (short-lived) signer.

iPXE accepts a signature until its chain's earliest notAfter + 12 h 30 min by the client's
clock (:mod:`trustboot.cms.freshness`), so a signer that lives a week, re-signed every day,
bounds how long an old release can be replayed to a booting machine. This module keeps the
live release bootable under that schedule.

Design: a re-signed release is a NEW release id, ``<base>.rs-<signer sha256[:12]>``, never a
change to the old one. Releases are immutable: the generated nginx site serves
``releases/`` with ``Cache-Control: immutable``, a CDN would keep serving replaced
signatures for ever, and ``publish``'s resume and read-back memo rely on an object under a
claimed id never changing. So:

1. Under the origin's lock, find the live release (the one whose entry script and .sig the
   entry path serves) and read every object of it back (as iPXE would, through the public
   URL when there is one): size and sha256 against its manifest, every .sig (and
   release.json.sig) judged with iPXE's rules at ``now``. Anything off: VerificationError
   (exit 4) and nothing is written.
2. If the live release is already signed by this signer: nothing to do (idempotent).
3. Data objects are copied server-side into ``releases/<new>/`` (no download). Scripts that
   name their own release directory (the entry script ``trustboot release`` renders fetches
   ``<base>/releases/<id>/<key>``) get that one path segment rewritten to the new id, which
   is the only change to a signed object's bytes; every signed object gets a new .sig made
   from the digest the read-back just proved. Each new .sig is judged with iPXE's rules
   before anything is uploaded.
4. The .sig objects and rewritten scripts are uploaded, then ``release.json`` (which claims
   the id) and ``release.json.sig``; the new release is read back and verified in full, and
   only then is the entry switched (the same switch as publish and rollback).

A run killed anywhere leaves the old release live. Objects under an id that has no
manifest yet are rewritten by the next run; an id whose manifest exists is checked for the
same structure and signer and then verified and switched to (a resume), never changed;
its signatures, as read back, must all be this signer's alone and no revoked signer's
(the id is predictable: anyone who writes to the origin can plant one). The
old release stays on the origin for rollback until ``publish prune`` removes it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.serialization import Encoding

from trustboot import fsutil
from trustboot.cms.freshness import ReplayWindow, format_duration, replay_window
from trustboot.errors import ConfigError, VerificationError
from trustboot.publish.manifest import (
    MANIFEST_NAME,
    ManifestFile,
    ReleaseManifest,
    SignerSummary,
    check_entry_path,
    format_time,
    parse_manifest,
    release_prefix,
    resign_id,
)
from trustboot.publish.origin import Origin, OriginOptions, redact_url
from trustboot.publish.pipeline import (
    MAX_ENTRY_SIZE,
    STALE_TEMP_AGE,
    PublishProgress,
    ReleaseDates,
    _live_records,
    _run_all,
    default_owner,
    live_release,
    make_reader,
    read_manifest,
    read_manifests_and_bytes,
    refuse_unfit,
    release_base_url,
    repair_switch,
    resigns,
    switch_and_check,
    unproven_dates,
    unread_manifests,
    verify_manifest_signature,
    verify_served,
)
from trustboot.publish.readback import Reader, Trust, judge

if TYPE_CHECKING:
    from trustboot.cms.verify import SignerReport
    from trustboot.keys.signer import KeySource
    from trustboot.secrets import PassphraseSource

__all__ = ["ResignResult", "check_signer_lifetime", "resign_id", "resign_live"]

# ``releases/<id>/`` as a whole path segment in a script (not "myreleases/<id>/")
_REF = re.compile(rb"(?<![A-Za-z0-9._~+=,@-])releases/([A-Za-z0-9][A-Za-z0-9._-]{0,127})/")

Stage = Callable[[str, str], None]


@dataclass
class ResignResult:
    origin: str
    previous: str  # the release that was live
    release: str  # the release live now (== previous when nothing changed)
    changed: bool
    switched: bool = False
    resumed: bool = False  # the new id existed from an interrupted run
    copied: list[str] = field(default_factory=list)
    signed: list[str] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    signer: dict[str, Any] | None = None
    previous_signer: dict[str, Any] | None = None
    replay_window: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    # an interrupted entry switch completed (or dropped) first, as publish does
    repaired: str | None = None
    removed_temps: list[str] = field(default_factory=list)  # of killed uploads
    window: ReplayWindow | None = None  # replay_window, for describe()

    def to_json(self) -> dict[str, Any]:
        return {"origin": self.origin, "previous": self.previous, "release": self.release,
                "changed": self.changed, "switched": self.switched, "resumed": self.resumed,
                "copied": self.copied, "signed": self.signed, "rewritten": self.rewritten,
                "verified": self.verified, "signer": self.signer,
                "previous_signer": self.previous_signer,
                "replay_window": self.replay_window, "warnings": self.warnings,
                "repaired": self.repaired, "removed_temps": self.removed_temps}


def _chain_not_after(source: KeySource) -> dt.datetime:
    return min(c.not_valid_after_utc for c in (source.certificate, *source.chain))


def check_signer_lifetime(source: KeySource, *, now: dt.datetime,
                          min_lifetime: dt.timedelta) -> ReplayWindow:
    """Refuse (exit 4) a signer whose chain ends before ``min_lifetime`` from now, naming the
    command that gives a fresh one; its replay window otherwise."""
    end = _chain_not_after(source)
    window = replay_window(end, now=now, not_before=source.certificate.not_valid_before_utc)
    if end - now >= min_lifetime:
        return window
    # A week by default, but always enough to pass --min-lifetime on the next run.
    days = max(7, -(-min_lifetime // dt.timedelta(days=1)) + 1)
    if source.ref.scheme == "ca":
        name = source.ref.value
        renew = (f"renew it: trustboot ca renew {name} --days {days} (or issue a new one: "
                 f"trustboot ca issue codesign {name}-next --days {days}), then resign again")
    else:
        renew = ("have the CA issue a fresh code-signing certificate for this key "
                 f"(trustboot ca issue codesign NAME --csr ... --days {days}) and pass it")
    left = end - now
    raise VerificationError(
        f"the signer {source.certificate.subject.rfc4514_string()} (chain) expires on "
        f"{end.isoformat()}, {max(left.days, 0)} days {int(left.total_seconds() % 86400)//3600}"
        f" hours from now: sooner than --min-lifetime ({format_duration(min_lifetime)}) "
        "[rule: signer-lifetime]", hint=renew, rule="signer-lifetime",
        subject=source.certificate.subject.rfc4514_string())


def _summary(source: KeySource) -> SignerSummary:
    cert = source.certificate
    return SignerSummary(subject=cert.subject.rfc4514_string(),
                         serial=f"{cert.serial_number:x}", not_after=_chain_not_after(source))


def _sig_names(m: ReleaseManifest) -> set[str]:
    return {f.sig for f in m.files if f.sig}


def _rewrites(m: ReleaseManifest) -> list[ManifestFile]:
    """Signed scripts that may name their release directory: the entry and any *.ipxe."""
    return [f for f in m.files if f.sig and (f.name == m.entry or f.name.endswith(".ipxe"))
            and f.size <= MAX_ENTRY_SIZE]


def _rewrite(data: bytes, old: str, new: str) -> tuple[bytes, set[str]]:
    """``releases/<old>/`` -> ``releases/<new>/``; the other release ids it names."""
    others = {m.group(1).decode() for m in _REF.finditer(data)} - {old}
    out = _REF.sub(lambda m: b"releases/" + new.encode() + b"/" if m.group(1) == old.encode()
                   else m.group(0), data)
    return out, others


def resign_live(origin: Origin, source: KeySource, secrets: PassphraseSource, *,
                trust: Trust, now: dt.datetime, workdir: Path,
                min_lifetime: dt.timedelta = dt.timedelta(days=1),
                entry_path: str = "boot.ipxe", jobs: int = 4,
                options: OriginOptions | None = None,
                progress: PublishProgress | None = None,
                stage: Stage = lambda _s, _m: None, owner: str | None = None) -> ResignResult:
    """Re-sign the release ``entry_path`` serves with ``source`` (see the module docstring).

    ``workdir``: a private directory for the new signatures (the caller removes it).
    ``stage(name, message)`` reports steps; ``progress`` drives byte-level bars.
    """
    from trustboot.cms.sign import Hashed, preflight, sign_files, sign_hashed

    check_entry_path(entry_path)
    # a doomed signer is refused before any secret is asked for or any byte fetched
    window = check_signer_lifetime(source, now=now, min_lifetime=min_lifetime)
    preflight(source, now=now)
    new_sha = hashlib.sha256(source.certificate.public_bytes(Encoding.DER)).hexdigest()
    summary = _summary(source)
    fsutil.ensure_private_dir(workdir)
    reader = make_reader(origin, trust, options)
    try:
        with origin.lock(owner or default_owner()):
            # as publish does: a switch a killed run left half done would make the entry
            # pair match no release, and temporaries of killed uploads go; a recorded
            # switch back to an older release (or one signed manifests do not show to
            # go forward) is refused there, rule unrecorded-rollback, before anything is
            # re-signed
            # the releases' dates, read once for repair's check and the live one's
            dates = ReleaseDates(origin, trust=trust, now=now, reader=reader)
            repair = repair_switch(origin, trust=trust, now=now, reader=reader, jobs=jobs,
                                   dates=dates)
            removed_temps = origin.remove_stale_temps(STALE_TEMP_AGE)
            read, problems = read_manifests_and_bytes(origin)
            manifests = [m for m, _ in read]
            live_id = live_release(origin, manifests, entry_path)
            if live_id is None:
                unread_manifests(origin, entry_path, problems, "nothing re-signed")
                raise ConfigError(
                    f"{origin.url}: {entry_path} serves no release published there",
                    hint="publish a release first (trustboot publish / trustboot release); "
                         "resign only re-signs the live one")
            old, old_data = next((m, d) for m, d in read if m.release == live_id)
            rolled_back = _refuse_unrecorded_rollback(origin, entry_path, old, old_data,
                                                      manifests, dates=dates)
            result = ResignResult(origin=origin.url, previous=live_id, release=live_id,
                                  changed=False, signer=summary.to_json(),
                                  previous_signer=old.signer.to_json() if old.signer else None,
                                  replay_window=window.to_json(), window=window,
                                  repaired=repair.detail if repair.action != "none" else None,
                                  removed_temps=removed_temps)
            if rolled_back is not None:
                result.warnings.append(rolled_back)
            stage("verify", f"reading back live release {live_id} "
                  f"({len(old.files)} objects)")
            signed_by: dict[str, frozenset[str]] = {}
            reports: dict[str, tuple[SignerReport, ...]] = {}
            result.verified = verify_served(origin, old, trust=trust, now=now, reader=reader,
                                            jobs=jobs, progress=progress, signers=signed_by,
                                            reports=reports)
            old_prefix = release_prefix(live_id)
            claims = _proven_claims(origin, old, live_id, trust, now, reader, result,
                                    reports)
            # Fresh signatures over what a revoked signer signed (a stolen key's release,
            # switched live by whoever holds it) would keep it booting past the revoked
            # certificate's expiry, every night: the one bound short-lived signers give.
            where = redact_url(origin.url)
            # (not its expiry: giving an expiring release fresh signatures is resign's job)
            refuse_unfit(trust, reports, doing=f"re-sign release {live_id}", now=now,
                         revoked_hint="make a release a current signer signed live instead "
                                      f"(`trustboot publish rollback {where} ID`; `trustboot "
                                      f"publish list {where}` marks the others REVOKED), or "
                                      "check the files and publish them again, signed by a "
                                      "current signer", expired_hint=None)
            # The manifest's claim only spares the reads when it names another signer: what
            # decides is who made the signatures the firmware will verify.
            if old.signer is not None and old.signer.serial == summary.serial and \
                    _signed_only_by(old, signed_by, new_sha):
                stage("resign", f"release {live_id} is already signed by this signer: "
                      "nothing to do")
                return result
            if old.signer is not None and summary.not_after < old.signer.not_after:
                result.warnings.append(
                    f"the new signer's chain expires {summary.not_after:%Y-%m-%d %H:%M}Z, "
                    f"before the live release's ({old.signer.not_after:%Y-%m-%d %H:%M}Z): "
                    "it stops booting then unless re-signed again (intended for a "
                    "short-lived signer)")
            new_id = resign_id(live_id, new_sha)
            result.release, result.changed = new_id, True
            new_prefix = release_prefix(new_id)
            sig_names = _sig_names(old)

            # the scripts, as served, checked against the manifest the read-back proved
            scripts: dict[str, bytes] = {}
            for f in _rewrites(old):
                data = b"".join(origin.read(old_prefix + f.name, max_size=f.size))
                if hashlib.sha256(data).hexdigest() != f.sha256:
                    raise VerificationError(
                        f"{origin.url}{old_prefix}{f.name} changed while being re-signed",
                        hint="another writer is changing the origin; find out who, then "
                             "run resign again", rule="served-object", subject=f.name)
                new_data, others = _rewrite(data, live_id, new_id)
                for other in sorted(others):
                    result.warnings.append(
                        f"{f.name} also fetches from releases/{other}/, which resign does "
                        "not re-sign: those signatures keep their old expiry")
                if new_data != data:
                    scripts[f.name] = new_data
                elif f.name == old.entry:
                    result.warnings.append(
                        f"the entry script {f.name} names no releases/{live_id}/ to point at "
                        f"{new_id}: it is re-signed unchanged, so whatever it fetches (a "
                        "relative or ${...} URL?) keeps its old signatures and their expiry")
            unchanged = [f for f in old.files if f.name not in sig_names
                         and f.name not in scripts]
            result.rewritten = sorted(scripts)

            existing = read_manifest(origin, new_id)
            if existing is not None:
                _check_resumable(existing, old, scripts, summary, new_id, origin.url, claims)
                new = existing
                result.resumed = True
                stage("resign", f"release {new_id} exists (an interrupted run): resuming")
                _copy_missing(origin, old_prefix, new_prefix, unchanged, result, jobs)
            else:
                stage("sign", f"signing {sum(1 for f in old.files if f.sig)} objects of "
                      f"{live_id} as {new_id}")
                hashed: list[Hashed] = []
                for f in old.files:
                    if f.sig is None:
                        continue
                    path = workdir / f.name
                    fsutil.make_dirs(path.parent, 0o700)
                    data_ = scripts.get(f.name)
                    if data_ is not None:
                        fsutil.atomic_write(path, data_)
                        hashed.append(Hashed(path, len(data_),
                                             {"sha256": hashlib.sha256(data_).digest()}))
                    else:
                        hashed.append(Hashed(path, f.size,
                                             {"sha256": bytes.fromhex(f.sha256)}))
                with source.open(secrets) as signer:
                    signed = sign_hashed(hashed, signer, now=now)
                    # each new .sig is read once: judged, described and uploaded from here
                    sigs = {s.signature_path: s.signature_path.read_bytes() for s in signed}
                    # judged as the firmware will (its roots, CERT=, --signer) before upload
                    failures = []
                    made: dict[str, tuple[SignerReport, ...]] = {}
                    for s in signed:
                        sig = sigs[s.signature_path]
                        verdict = judge(sig, {"sha256": bytes.fromhex(s.sha256)}, trust, now)
                        name = s.path.relative_to(workdir).as_posix()
                        made[name] = verdict.signers
                        if not verdict.ok:
                            assert verdict.failure is not None
                            failures.append(f"{name}: {verdict.failure.message}")
                    if failures:
                        raise VerificationError(
                            "iPXE would refuse the new signatures: " + "; ".join(failures[:5]),
                            hint="the new signer must chain to a root the firmware trusts "
                                 "(--trust) and match --signer", rule="new-signature")
                    # the new signer itself, before anything is uploaded: the pki was asked
                    # when the key was resolved, but not --crl (a job with the roots and
                    # the CA's published CRL only)
                    # (its lifetime was checked before anything: check_signer_lifetime)
                    refuse_unfit(trust, made, doing=f"sign release {new_id}", now=now,
                                 revoked_hint=REVOKED_NEW_SIGNER_HINT, expired_hint=None)
                    new = _new_manifest(old, new_id, signed, sigs, workdir, scripts, summary,
                                        now, release_base_url(origin, new_id), claims,
                                        entry_path)
                    manifest_path = workdir / MANIFEST_NAME
                    fsutil.atomic_write(manifest_path, new.to_bytes())
                    sign_files([manifest_path], signer, now=now)
                _copy_missing(origin, old_prefix, new_prefix, unchanged, result, jobs)
                # signatures and rewritten scripts, then the manifest (the id's claim) and
                # its signature: a run killed before the claim is redone from scratch
                uploads = [workdir / name for name in sorted(scripts)]
                uploads += [s.signature_path for s in signed]

                def put(path: Path) -> None:
                    data = sigs[path] if path in sigs else path.read_bytes()
                    origin.put_bytes(new_prefix + path.relative_to(workdir).as_posix(), data,
                                     sha256=hashlib.sha256(data).hexdigest())

                _run_all(put, uploads, jobs)
                result.signed = sorted(s.path.relative_to(workdir).as_posix() for s in signed)
                put(manifest_path)
            # Read back before the manifest is signed: a resumed id's objects are whatever
            # the origin holds under a predictable name (an origin writer with a stolen
            # key can plant it), and its manifest names the new signer whoever signed them.
            stage("verify", f"reading back {new_id} ({len(new.files)} objects)")
            new_by: dict[str, frozenset[str]] = {}
            new_reports: dict[str, tuple[SignerReport, ...]] = {}
            result.verified = verify_served(origin, new, trust=trust, now=now, reader=reader,
                                            jobs=jobs, progress=progress, signers=new_by,
                                            reports=new_reports)
            _refuse_other_signers(new, new_by, new_sha, new_reports, origin.url, source)
            if origin.stat(new_prefix + MANIFEST_NAME + ".sig") is None or not result.resumed:
                if result.resumed:
                    _sign_served_manifest(origin, new_id, new, source, secrets, workdir, now)
                else:
                    data = (workdir / (MANIFEST_NAME + ".sig")).read_bytes()
                    origin.put_bytes(new_prefix + MANIFEST_NAME + ".sig", data,
                                     sha256=hashlib.sha256(data).hexdigest())
            verify_manifest_signature(origin, new_id, trust=trust, now=now, reader=reader,
                                      reports=new_reports)
            refuse_unfit(trust, new_reports, doing=f"make release {new_id} live", now=now,
                         revoked_hint=REVOKED_NEW_SIGNER_HINT, expired_hint=None)
            if progress:
                progress.phase("switch", 0)
            switch_and_check(origin, new, entry_path=entry_path, trust=trust, now=now,
                              reader=reader)
            result.switched = True
            stage("switch", f"{entry_path} switched from {live_id} to {new_id}")
            return result
    finally:
        if reader is not None:
            reader.close()


REVOKED_NEW_SIGNER_HINT = (
    "re-sign with a current signer (`trustboot ca issue codesign NAME --days 7`, then "
    "`trustboot resign ORIGIN --key NAME`); if a release of that id is on the origin and "
    "no run of yours made it, find out who wrote it and delete it")


def _refuse_other_signers(new: ReleaseManifest, signed_by: Mapping[str, frozenset[str]],
                          cert_sha256: str, reports: Mapping[str, Sequence[SignerReport]],
                          url: str, source: KeySource) -> None:
    """Every signature of the re-signed release as served must be this signer's alone.
    A resumed id was only checked for its files and its manifest's claim (the signer's
    serial): .sig files another key made (a stolen one, or the old release's, so no
    fresh expiry) verify as well, and were made live under this signer's name."""
    others = sorted(name for name in signed_by if signed_by[name] != frozenset({cert_sha256}))
    if not others and _signed_only_by(new, signed_by, cert_sha256):
        return
    who = sorted({r.common_name or r.subject for name in others for r in reports.get(name, ())})
    raise VerificationError(
        f"release {new.release} on {url} is not signed only by the new signer "
        f"{source.certificate.subject.rfc4514_string()}: {', '.join(others[:5])} "
        f"verif{'y' if len(others) > 1 else 'ies'} with {', '.join(who[:5]) or 'another signer'};"
        " not made live",
        hint="a resumed re-sign must hold this signer's signatures: delete releases/"
             f"{new.release}/ on the origin (find out who wrote it) and run resign again",
        rule="resign-signer", subject=new.release)


@dataclass(frozen=True)
class _Claims:
    """What the new manifest says beyond its files: only what a signature proved."""

    ca_sha256: str | None
    ipxe: dict[str, Any] | None


def _proven_claims(origin: Origin, old: ReleaseManifest, live_id: str, trust: Trust,
                   now: dt.datetime, reader: Reader | None, result: ResignResult,
                   reports: dict[str, tuple[SignerReport, ...]]) -> _Claims:
    """The live manifest's claims resign may sign again. Its files were proved by the
    read-back, but its iPXE build record (what the firmware trusts: root-promotion
    evidence once signed) and ca_sha256 only by release.json.sig: without one they are
    anybody's words, and the new manifest gets this run's trust and no build record."""
    key = release_prefix(live_id) + MANIFEST_NAME
    if origin.stat(key + ".sig") is None:
        if old.ipxe is not None:
            result.warnings.append(
                f"{key} is not signed: its iPXE build record is not signed into the "
                "re-signed manifest (publish firmware with `trustboot release`, which signs "
                "it)")
        return _Claims(trust.ca_sha256, None)
    data = verify_manifest_signature(origin, live_id, trust=trust, now=now, reader=reader,
                                     reports=reports)
    proven = parse_manifest(data, source=f"{origin.url}{key}")
    if proven != old or proven.ipxe != old.ipxe:
        raise VerificationError(
            f"{origin.url}{key} changed while being re-signed",
            hint="another writer is changing the origin; find out who, then run resign "
                 "again", rule="manifest-changed", subject=key)
    return _Claims(proven.ca_sha256, proven.ipxe)


def _refuse_unrecorded_rollback(origin: Origin, entry_path: str, served: ReleaseManifest,
                                served_data: bytes, manifests: Sequence[ReleaseManifest], *,
                                dates: ReleaseDates) -> str | None:
    """Refuse to re-sign an entry that serves another release than the one trustboot last
    switched it to (pipeline's live record): an older release put back by hand, or by a
    hostile origin. Re-signing it would give it a new replay window each run, the very
    thing resign bounds. A rollback made with trustboot updates the record.
    (``served_data``: the bytes ``served`` was parsed from, what dates it.)

    The record is origin data too. Without a usable one (deleted, unparsable), the
    served release is re-signed only if it is the only release or signed manifests show
    it to be the newest: its own and every other release's (pipeline.unproven_dates; a
    release it re-signs aside, whose content it is). An unsigned date, or a manifest
    that does not read or is missing, is the writer's to set and never helps; `publish
    rollback` records the release otherwise. A record naming the served release is,
    byte for byte, what `publish rollback` leaves, and a rollback is the operator's act
    that resign must keep re-signing (refusing would stop the nightly resign after every
    deliberate rollback on an origin with unsigned manifests): a writer who copies an
    old pair and rewrites the record leaves the same bytes, and only a record the writer
    cannot forge (signed by a key the origin does not hold, or kept off the origin)
    would tell them apart. So that release is re-signed, and the warning returned (None:
    nothing to say) says when it is older than another release or when another
    release's date cannot be told because its release.json was tampered with (a
    signature there that fails, a manifest that does not read or is missing; not one
    never signed), for the nightly log."""
    live_id = served.release
    where = redact_url(origin.url)
    record = _live_records(origin).get(entry_path)
    recorded = record.get("release") if isinstance(record, dict) else None
    entry = served.file(served.entry) if served.entry else None
    if isinstance(recorded, str) and recorded != live_id:
        assert isinstance(record, dict)
        named = next((m for m in manifests if m.release == recorded), None)
        named_entry = named.file(named.entry) if named and named.entry else None
        # byte-identical entries: the record's release is what is served (its manifest
        # says so, not only the record)
        if entry is not None and named_entry is not None and \
                entry.sha256 == named_entry.sha256 == record.get("script_sha256"):
            return None
        raise VerificationError(
            f"{origin.url}{entry_path} serves release {live_id}, but trustboot last switched "
            f"it to {recorded!r}: a rollback trustboot did not make (by hand, or by the "
            "origin); refusing to re-sign it",
            hint=f"if {live_id} is meant to be live, switch it first: trustboot publish "
                 f"rollback {origin.url} {live_id} (then re-sign); otherwise find out who "
                 "changed the entry", rule="unrecorded-rollback")
    live, others, unread = dates.around(served, served_data)
    # a release the live one re-signs has its content: its date says nothing more
    others = [d for d in others if not resigns(live, d.release, unread)]
    newest = max(others, key=lambda d: d.created, default=None)
    older = newest is not None and live.created < newest.created
    if recorded == live_id:
        said = "the live record says a `trustboot publish rollback` made it live; that " \
               "record is on the origin, so if nobody rolled back, find out who changed " \
               "the entry and"
        if older:
            assert newest is not None
            return (f"re-signed release {live_id} is older than {newest.release} (their "
                    f"{'signed ' if live.proven and newest.proven else ''}manifests: "
                    f"{format_time(live.created)} and {format_time(newest.created)}): "
                    f"{said} make {newest.release} live again (trustboot publish rollback "
                    f"{where} {newest.release})")
        # (the live release's own signature aside: the others are what it is judged by)
        # Only a release.json whose signature fails or that does not read is worth the
        # warning: one never signed (plain `publish DIR`) is the normal case, and warning
        # of a rollback every night for it would teach operators to ignore this.
        refuted = [d for d in others if d.refuted]
        unknown = unproven_dates(dataclasses.replace(live, proven=True), refuted, unread) \
            if refuted or unread else None
        if unknown is None:
            return None
        return (f"re-signed release {live_id} cannot be shown to be the newest release "
                f"on the origin ({unknown}); {said} make the newest release live again "
                f"(trustboot publish rollback {where} ID; ids: trustboot publish list "
                f"{where})")
    if not others and not unread:
        return None
    if older:
        assert newest is not None
        why = (f"it is older than {newest.release} ({format_time(live.created)} and "
               f"{format_time(newest.created)})")
    else:
        unknown = unproven_dates(live, others, unread)
        if unknown is None:
            return None
        why = unknown
    raise VerificationError(
        f"{where}: {entry_path} serves release {live_id}, and the record of which release "
        f"trustboot last made live there is missing or unreadable; {live_id} cannot be "
        f"shown to be the newest release on the origin ({why}): refusing to re-sign it "
        "(an old release put back with the record removed would get a fresh replay "
        "window each run)",
        hint=f"if {live_id} is meant to be live, make it live with trustboot, which "
             f"records it: trustboot publish rollback {where} {live_id} (then re-sign); "
             "otherwise find out who changed the entry and the record",
        rule="unrecorded-rollback", subject=live_id)


def _new_manifest(old: ReleaseManifest, new_id: str, signed: list[Any],
                  sigs: dict[Path, bytes], workdir: Path, scripts: dict[str, bytes],
                  signer: SignerSummary, now: dt.datetime, base: str | None,
                  claims: _Claims, entry_path: str) -> ReleaseManifest:
    by_name: dict[str, tuple[int, str]] = {}
    for s in signed:
        name = s.path.relative_to(workdir).as_posix()
        sig = sigs[s.signature_path]
        by_name[name + ".sig"] = (len(sig), hashlib.sha256(sig).hexdigest())
        if name in scripts:
            by_name[name] = (s.size, s.sha256)
    files = tuple(ManifestFile(f.name, *by_name.get(f.name, (f.size, f.sha256)), sig=f.sig)
                  for f in old.files)
    return ReleaseManifest(release=new_id, created=now, files=files, origin=base,
                           ca_sha256=claims.ca_sha256, signer=signer, entry=old.entry,
                           ipxe=claims.ipxe, entry_path=entry_path)  # retained for it


def _signed_only_by(m: ReleaseManifest, signed_by: Mapping[str, frozenset[str]],
                    cert_sha256: str) -> bool:
    """Every signed object of ``m`` verified (in the read-back that filled ``signed_by``)
    with this certificate (by fingerprint) as its only signer."""
    signed = [f for f in m.files if f.sig]
    return bool(signed) and all(signed_by.get(f.name) == frozenset({cert_sha256})
                                for f in signed)


def _check_resumable(existing: ReleaseManifest, old: ReleaseManifest,
                     scripts: dict[str, bytes], signer: SignerSummary, new_id: str,
                     url: str, claims: _Claims) -> None:
    """The id exists: it must be this re-sign of this release (same objects, same bytes
    apart from signatures, this signer, the same claims), else it is someone else's and
    is left alone (its name is predictable: anyone who can write to the origin can plant
    a manifest there, which a resume would otherwise sign)."""
    sigs = _sig_names(old)
    want = {f.name: (f.size, f.sha256) for f in old.files if f.name not in sigs}
    want.update({k: (len(v), hashlib.sha256(v).hexdigest()) for k, v in scripts.items()})
    have = {f.name: (f.size, f.sha256) for f in existing.files if f.name not in sigs}
    same = (have == want and {f.name for f in existing.files} == {f.name for f in old.files}
            and existing.entry == old.entry and existing.signer is not None
            and existing.signer.serial == signer.serial
            and existing.ca_sha256 == claims.ca_sha256 and existing.ipxe == claims.ipxe)
    if not same:
        raise ConfigError(
            f"release {new_id} already exists on {url} with other content or another signer; "
            "releases are immutable",
            hint=f"inspect it (trustboot publish list), delete releases/{new_id}/ if it is "
                 "not needed, and run resign again")


def _copy_missing(origin: Origin, old_prefix: str, new_prefix: str,
                  files: list[ManifestFile], result: ResignResult, jobs: int) -> None:
    """Server-side copies of the unchanged objects; one present with the right size was
    copied by an earlier run (the read-back after catches anything else)."""
    todo = [f for f in files
            if (st := origin.stat(new_prefix + f.name)) is None or st.size != f.size
            or (st.sha256 is not None and st.sha256 != f.sha256)]
    _run_all(lambda f: origin.copy(old_prefix + f.name, new_prefix + f.name), todo, jobs)
    result.copied = sorted(f.name for f in todo)


def _sign_served_manifest(origin: Origin, release_id: str, checked: ReleaseManifest,
                          source: KeySource, secrets: PassphraseSource, workdir: Path,
                          now: dt.datetime) -> None:
    """release.json.sig for a manifest a killed run wrote but did not sign yet: only if
    the bytes read now still say what ``checked`` (judged by _check_resumable) said."""
    from trustboot.cms.sign import sign_files

    key = release_prefix(release_id) + MANIFEST_NAME
    data = b"".join(origin.read(key, max_size=4 << 20))
    served = parse_manifest(data, source=f"{origin.url}{key}")
    if served != checked or served.ipxe != checked.ipxe:  # (ipxe is not compared by ==)
        raise VerificationError(
            f"{origin.url}{key} changed while resign ran; not signed",
            hint="find out who else writes to the origin, then run resign again",
            rule="manifest-changed")
    path = workdir / MANIFEST_NAME
    fsutil.atomic_write(path, data)
    with source.open(secrets) as signer:
        sign_files([path], signer, now=now)
    sig = (workdir / (MANIFEST_NAME + ".sig")).read_bytes()
    origin.put_bytes(key + ".sig", sig, sha256=hashlib.sha256(sig).hexdigest())
