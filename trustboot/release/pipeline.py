"""`trustboot release`: a recipe to a published, verified boot chain, as named stages.

validate -> plan -> build -> render -> sign -> manifest -> publish -> verify

* validate: the recipe against the machine (paths, signer and its lifetime, origin);
  nothing is created before it passes.
* plan: hash the inputs, derive the release id; ``dry_run`` stops here. On an origin
  that moves objects cheaply (WebDAV, file://), large inputs are uploaded to temporary
  objects by the same read that hashes them (:mod:`trustboot.release.staging`), and the
  signing key is unlocked meanwhile; publish later moves them into place.
* build: iPXE through :mod:`trustboot.ipxe.build` (cached), or prebuilt, or skipped with
  the reason and how to enable it.
* render: the fail-closed entry/menu script (:mod:`trustboot.release.render`).
* sign: kernels, initrds, firmware and the script, with one key unlock.
* manifest: ``release.json`` (the one shape in :mod:`trustboot.publish.manifest`) and
  its detached CMS signature. It is written before the objects because publishing
  uploads it first: it claims the release id on the origin.
* publish: :func:`trustboot.publish.pipeline.publish_release` uploads what is missing,
  reads everything back as iPXE would and switches the entry.
* verify: fetch the live entry and its signature from the public HTTPS URL, as the
  firmware will, and judge them with iPXE's rules and ``--signer``.

The core never prints: ``progress(stage, message)`` reports, ``now`` is the clock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from trustboot import fsutil
from trustboot.cms import sign as cms_sign
from trustboot.cms.digest import hash_bytes
from trustboot.cms.freshness import replay_window
from trustboot.cms.verify import MAX_SIGNATURE_SIZE, verify_signature
from trustboot.errors import OperationalError, TrustbootError, VerificationError
from trustboot.ipxe import build as ipxe_build
from trustboot.ipxe.build import firmware_key
from trustboot.keys.signer import Signer
from trustboot.publish.cache import PublishCache
from trustboot.publish.check import CheckReport, check_origin
from trustboot.publish.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    RELEASES_PREFIX,
    ReleaseManifest,
    SignerSummary,
    parse_manifest,
    release_id_problem,
    release_prefix,
)
from trustboot.publish.origin import Origin, OriginOptions, Staged, open_origin
from trustboot.publish.pipeline import (
    MAX_ENTRY_SIZE,
    LocalObject,
    PublishProgress,
    PublishResult,
    build_manifest,
    holds,
    pending_switch,
    prune,
    publish_release,
    read_manifest,
    read_manifest_data,
)
from trustboot.publish.readback import Trust
from trustboot.release.plan import (
    Plan,
    ReleaseOptions,
    Validated,
    cert_der,
    plan,
    root_anchor,
    validate,
)
from trustboot.release.recipe import ENTRY_SCRIPT, Recipe, input_key
from trustboot.release.render import MenuEntry, render_menu
from trustboot.release.staging import hashed as staged_hashes
from trustboot.release.staging import start_staging

STAGES = ("validate", "plan", "build", "render", "sign", "manifest", "publish", "verify")
Progress = Callable[[str, str], None]


@dataclass
class ReleaseResult:
    release: str
    digest: str
    origin: str
    public_base: str
    entry_url: str
    dry_run: bool
    plan: dict[str, Any]
    stages: list[dict[str, Any]] = field(default_factory=list)
    publish: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    uploaded: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    # release folders without a release.json the retention's prune removed or left
    prune: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    # what the signer's lifetime allows an old copy of this release (cms.freshness)
    replay_window: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"replay_window": self.replay_window, "release": self.release,
                "digest": self.digest, "origin": self.origin,
                "public_base": self.public_base, "entry_url": self.entry_url,
                "dry_run": self.dry_run, "plan": self.plan, "stages": self.stages,
                "publish": self.publish, "uploaded": self.uploaded, "pruned": self.pruned,
                "prune": self.prune, "manifest": self.manifest, "warnings": self.warnings}


def trust_of(v: Validated) -> Trust:
    """What the release's firmware trusts: TRUST= roots, CERT= chain, --signer name."""
    return Trust(roots=tuple(root_anchor(c) for c in v.roots),
                 extra_certs=tuple(cert_der(c) for c in v.extra_certs),
                 signer_name=v.signer_name, revocation=v.revocations)


def origin_options(v: Validated) -> OriginOptions:
    passphrase = None
    if v.client_key_passphrase is not None:
        passphrase = v.client_key_passphrase("the origin's TLS client key")
    return OriginOptions(ca_file=v.origin_ca_file, credentials=v.credentials,
                         endpoint_url=v.endpoint,
                         public_url=v.readback_base, client_cert=v.client_cert,
                         client_key=v.client_key, client_key_passphrase=passphrase,
                         unsafe_shared_origin=v.unsafe_shared_origin)


class _Stages:
    def __init__(self, result: ReleaseResult | None, progress: Progress) -> None:
        self.progress = progress
        self.log: list[dict[str, Any]] = []
        self.result = result
        self.last = time.monotonic()
        self.upload_progress: PublishProgress | None = None
        self.build_progress: ipxe_build.ProgressCallback | None = None

    def done(self, stage: str, status: str, detail: str) -> None:
        now = time.monotonic()
        self.log.append({"stage": stage, "status": status, "detail": detail,
                         "seconds": round(now - self.last, 3)})
        self.last = now
        self.progress(stage, f"{status}: {detail}" if status != "done" else detail)


def run_release(recipe: Recipe, options: ReleaseOptions, *, now: dt.datetime,
                dry_run: bool = False, workdir: Path | None = None,
                progress: Progress = lambda _s, _m: None,
                upload_progress: PublishProgress | None = None,
                build_progress: ipxe_build.ProgressCallback | None = None) -> ReleaseResult:
    """Run every stage; raises a TrustbootError naming the stage's input on failure.
    ``upload_progress`` follows the publish stage's bytes (upload, read-back),
    ``build_progress`` the build stage's make steps (as ``ipxe build`` reports them)."""
    st = _Stages(None, progress)
    st.upload_progress = upload_progress
    st.build_progress = build_progress
    v = validate(recipe, options, now=now, dry_run=dry_run)
    entries = _count(len(recipe.entries), "entry", "entries")
    st.done("validate", "done", f"recipe {recipe.source}: {entries}, "
            f"{len(v.inputs)} files, signer {v.signer_name}")
    cache = PublishCache(options.publish_cache) if options.publish_cache else None
    if cache is not None and cache.problem:
        st.done("validate", "warning", cache.problem)
    if dry_run:
        p = plan(v, now=now, cache=cache, save_cache=False)
        notes = list(v.warnings)
        if v.credentials is not None:
            # A dry run is what a reviewer runs on a recipe from a pull request: it sends
            # no secret to the origin that recipe names, however the secret is bound.
            notes.append(f"a dry run does not send origin.credentials ({v.credentials.source}):"
                         " what it asks the origin, it asks without them")
        if urlsplit(v.origin_url).scheme == "s3":
            # boto3 signs every request with the credentials it finds (the recipe's,
            # else the environment's): an S3 store is not read at all
            p.origin_unreachable = ("not read: a dry run sends no credentials, and "
                                    "every S3 request is signed with them")
        else:
            try:
                read_only = dataclasses.replace(origin_options(v), create_root=False,
                                                credentials=None)
                with open_origin(v.origin_url, read_only) as origin:
                    if "{date}" in recipe.release.id_template:
                        _keep_dated_id(p, origin)
                    # what a real run would find there, so the plan says what it uploads
                    p.on_origin = _already_there(p, origin, now)
            except OperationalError as exc:
                # A dry run still plans when the origin is out of reach (a laptop, a
                # CI job checking a recipe, an origin that reads only to credentials):
                # only the id of the same inputs on an earlier day, and what is already
                # there, are unknown then.
                p.origin_unreachable = exc.message
        result = _planned(p, st, dry_run=True, now=now)
        for note in notes:
            st.done("plan", "note", note)
            result.warnings.append(note)
        return result
    # one origin session for the whole release: staging, manifest, publish, prune
    with contextlib.ExitStack() as stack:
        origin = stack.enter_context(open_origin(v.origin_url, origin_options(v)))
        staging = start_staging(origin, v.inputs, hash_name=v.hash_name, cache=cache,
                                accept=v.published.accept if v.published else None)
        signer = None
        known: dict[Path, Staged] = {}
        if staging is not None:
            stack.callback(staging.close)  # staged objects never placed are deleted
            # the key's unlock (a KDF, or a token login) overlaps the uploads; no bar
            # draws over a passphrase prompt until it is done
            signer = stack.enter_context(_unlocked(v))
            staging.progress.show(upload_progress)
            known = staging.result(cache)
        p = plan(v, now=now, cache=cache, known=staged_hashes(known))
        if "{date}" in recipe.release.id_template:
            _keep_dated_id(p, origin)
        result = _planned(p, st, dry_run=False, now=now)
        for warning in v.warnings:
            st.done("validate", "warning", warning)
            result.warnings.append(warning)
        st.done("plan", "done", f"release {p.release_id}: {len(p.objects) + 1} objects to "
                f"sign and publish to {v.origin_url}"
                + (f" ({len(known)} staged on the origin while hashed)" if known else ""))
        work = workdir if workdir is not None else \
            stack.enter_context(fsutil.work_dir("trustboot-release-"))
        _run_stages(p, options, work, st, result, now, origin=origin, signer=signer,
                    staged=known)
    return result


MAX_BUILD_RECORD_BYTES = 4 << 20


def _prebuilt(p: Plan, out: Path) -> tuple[dict[str, Path], dict[str, Any] | None]:
    """The prebuilt firmware, each file read once from the path validate checked (a link
    put there since is refused) into the private work directory: what is hashed, signed
    and published is that copy, the bytes checked. Then its build record, if any."""
    fw = p.v.firmware
    paths: dict[str, Path] = {}
    contents: dict[str, bytes] = {}  # the bytes checked, for the build record's check
    for target, path in fw.prebuilt_files:
        # the bound of a built binary: what an iPXE image could be
        data = fsutil.read_capped(path, ipxe_build.MAX_OUTPUT_BYTES,
                                  f"prebuilt firmware {target}", nofollow=True)
        if p.firmware_identity is None or \
                hashlib.sha256(data).hexdigest() != p.firmware_identity.get(target):
            raise OperationalError(f"prebuilt firmware {path} changed while the release ran",
                                   hint="run the release again once nothing writes there")
        dest = out / target
        fsutil.make_dirs(dest.parent, fsutil.PRIVATE_DIR_MODE)
        fsutil.atomic_write(dest, data, mode=fsutil.PRIVATE_FILE_MODE)
        paths[target] = dest
        contents[target] = data
    record = None
    if fw.prebuilt_record is not None:
        data = fsutil.read_capped(fw.prebuilt_record, MAX_BUILD_RECORD_BYTES,
                                  "build manifest", nofollow=True)
        # Signed into release.json it is evidence (`ca rotate root promote --from-origin`):
        # the release signs only what it checked on the binaries it publishes.
        record = ipxe_build.load_prebuilt_record(data, contents, str(fw.prebuilt_record))
    return paths, record


def _keep_dated_id(p: Plan, origin: Origin) -> None:
    """The same inputs released on another day keep their id: a re-run uploads nothing."""
    recipe = p.v.recipe
    earlier = _same_digest_id(origin, recipe.release.id_template, recipe.name, p.digest)
    if earlier is not None:
        p.release_id = earlier


def _planned(p: Plan, st: _Stages, *, dry_run: bool, now: dt.datetime) -> ReleaseResult:
    v = p.v
    result = ReleaseResult(release=p.release_id, digest=p.digest, origin=v.origin_url,
                           public_base=v.public_base, entry_url=v.public_base + v.entry_path,
                           dry_run=dry_run, plan=p.to_json(), stages=st.log)
    cert = v.signer.certificate
    result.replay_window = replay_window(
        min(c.not_valid_after_utc for c in (cert, *v.signer.chain)), now=now,
        not_before=cert.not_valid_before_utc).to_json()
    if dry_run:
        if p.origin_unreachable is not None and "{date}" in v.recipe.release.id_template:
            st.done("plan", "warning", f"could not list the origin ({p.origin_unreachable}): "
                    f"release {p.release_id} is provisional, the same inputs may already "
                    "be there under an earlier day's id")
        elif p.origin_unreachable is not None:
            st.done("plan", "warning", f"could not read the origin ({p.origin_unreachable}): "
                    "every object is listed to upload, some may already be there")
        there = f" ({len(p.on_origin)} already on the origin)" if p.on_origin else ""
        st.done("plan", "done", f"release {p.release_id}: {len(p.objects) + 1} objects to "
                f"sign and publish to {v.origin_url}{there}")
    return result


def _run_stages(p: Plan, options: ReleaseOptions, work: Path, st: _Stages,
                result: ReleaseResult, now: dt.datetime, *, origin: Origin,
                signer: Signer | None, staged: Mapping[Path, Staged]) -> None:
    v = p.v
    # (fsutil.work_dir refused a TMPDIR others could move it out of: the firmware is
    # built into it and hashed later)
    fsutil.ensure_private_dir(work)
    stage = work / "stage"
    fsutil.ensure_private_dir(stage)

    # build
    fw = v.firmware
    firmware_paths: dict[str, Path] = {}
    ipxe_manifest: dict[str, Any] | None = None
    if fw.mode == "build":
        assert fw.request is not None
        built = ipxe_build.build(fw.request, output_dir=work / "firmware",
                                 cache_dir=options.cache_dir, jobs=options.jobs,
                                 on_progress=st.build_progress,
                                 unsafe_unsandboxed=options.unsafe_unsandboxed_build)
        firmware_paths = dict(built.outputs)
        ipxe_manifest = built.manifest
        st.done("build", "done", f"iPXE {', '.join(fw.targets)} "
                f"({'from the cache' if built.cached else 'built'})")
    elif fw.mode == "prebuilt":
        firmware_paths, ipxe_manifest = _prebuilt(p, work / "firmware")
        st.done("build", "skipped", f"prebuilt firmware from {fw.prebuilt_dir}")
    else:
        st.done("build", "skipped", fw.reason)

    # render
    script = _script(p)
    script_path = stage / ENTRY_SCRIPT
    fsutil.atomic_write(script_path, script.encode())
    st.done("render", "done", f"{ENTRY_SCRIPT}: "
            f"{_count(len(v.recipe.entries), 'entry', 'entries')}, "
            f"{len(script.splitlines())} lines")

    # sign: every object is linked into the stage under its key, so each .sig lands
    # beside it (inputs are never copied: a 512 MiB initrd is hashed once, in plan)
    local: dict[str, Path] = {}
    for obj in p.objects:
        src = obj["path"] if obj["path"] is not None else firmware_paths.get(obj["target"])
        if src is None:
            continue
        dest = stage / obj["key"]
        fsutil.make_dirs(dest.parent, 0o700)
        # (an input was resolved and checked in validate; firmware is in the work dir)
        dest.symlink_to(Path(src).absolute())
        local[obj["key"]] = dest
    hashed = [p.hashed[Path(o["path"])] for o in p.objects if o["path"] is not None]
    relinked = [cms_sign.Hashed(local[o["key"]], h.size, h.digests)
                for o, h in zip([o for o in p.objects if o["path"] is not None], hashed,
                                strict=True)]
    others = [local[o["key"]] for o in p.objects if o["path"] is None
              and o["key"] in local] + [script_path]
    trust = trust_of(v)
    # each staged input under its first key (another key of the same file is uploaded)
    staged_keys: dict[str, Staged] = {}
    for o in p.objects:
        if o["path"] in staged and not any(s is staged[o["path"]] for s in staged_keys.values()):
            staged_keys[o["key"]] = staged[o["path"]]
    existing = read_manifest(origin, p.release_id)
    wanted = {o["key"]: o["sha256"] for o in p.objects if o["sha256"] is not None}
    wanted.update({k: cms_sign.hash_file(path, ["sha256"])[0]["sha256"].hex()
                   for k, path in local.items() if k not in wanted})
    wanted[ENTRY_SCRIPT] = hashlib.sha256(script.encode()).hexdigest()
    if existing is not None and not options.reverify and _already_live(
            origin, existing, wanted, v.entry_path):
        # Same id, same content, every object in place and the entry switched to it:
        # nothing to sign or upload. The entry is still fetched and judged below.
        st.done("sign", "skipped", f"release {p.release_id} is already published")
        st.done("manifest", "unchanged", f"{MANIFEST_NAME} on the origin lists the same "
                f"{len(existing.files)} objects")
        st.done("publish", "unchanged", f"all {len(existing.files)} objects present with "
                f"their published sizes; {v.entry_path} already serves {p.release_id}")
        result.manifest = existing.to_json()
        result.publish = {"release": p.release_id, "uploaded": [], "switched": False,
                          "unchanged": True, "skipped": [f.name for f in existing.files]}
    else:
        with contextlib.nullcontext(signer) if signer is not None else _unlocked(v) as key:
            _sign_and_publish(p, v, st, result, origin, origin_options(v), trust, relinked,
                              others, stage, ipxe_manifest, existing, now, signer=key,
                              staged=staged_keys)
    keep = v.recipe.release.retention
    if keep is not None:
        # Never the live release (publish just made it live) nor the newest `keep`. The
        # release is live by now: a prune that fails does not undo it, so it is a warning
        # (the result is still printed, the entry still checked), not the run's error.
        try:
            pruned = prune(origin, keep=keep, entry_path=v.entry_path)
            result.pruned, result.prune = pruned.deleted, pruned.to_json()
            for line in pruned.lines():
                st.done("publish", "note", line)
            for message in pruned.warnings:
                result.warnings.append(message)
                st.done("publish", "warning", message)
        except TrustbootError as exc:
            warning = (f"release {p.release_id} is published and {v.entry_path} switched to "
                       f"it, but pruning older releases (release.retention: {keep}) failed: "
                       f"{exc.message.rstrip('.')}. "
                       + (f"{exc.hint.rstrip('.')}. " if exc.hint else "")
                       + f"Prune later: trustboot publish prune {v.origin_url} --keep {keep}"
                       f" --entry-path {v.entry_path} (with the origin options this recipe "
                       "gives: credentials, --client-cert, --ca-file)")
            result.warnings.append(warning)
            st.done("publish", "warning", warning)

    # verify: what the firmware will fetch first, from where it will fetch it
    entry_url = v.public_base + v.entry_path
    check_entry(v.readback_base + v.entry_path, trust, script.encode(),
                ca_file=v.origin_ca_file, now=now)
    st.done("verify", "done", f"{entry_url} and its signature verify as iPXE "
            f"(--signer {v.signer_name})")


def _script(p: Plan) -> str:
    """The release's entry script (deterministic: a dry run renders the same bytes)."""
    v = p.v
    entries = [MenuEntry(
        name=e.name, title=e.title, arch=e.arch,
        kernel_key=input_key(e, e.kernel),
        initrd_keys=tuple(input_key(e, i) for i in e.initrds),
        cmdline=e.cmdline, default=e.default) for e in v.recipe.entries]
    return render_menu(release_id=p.release_id, name=v.recipe.name, base_url=v.public_base,
                       signer=v.signer_name, title=v.recipe.menu.title,
                       timeout=v.recipe.menu.timeout, entries=entries,
                       on_failure=v.on_failure)


def _sign_and_publish(p: Plan, v: Validated, st: _Stages, result: ReleaseResult,
                      origin: Origin, opts: OriginOptions, trust: Trust,
                      relinked: list[cms_sign.Hashed], others: list[Path], stage: Path,
                      ipxe_manifest: dict[str, Any] | None,
                      existing: ReleaseManifest | None, now: dt.datetime, *,
                      signer: Signer, staged: Mapping[str, Staged]) -> None:
    held = _Held(origin, p.release_id, existing, signer, trust, v.hash_name, now)
    fresh = [h for h in relinked if not held.reuse(h, stage)]
    fresh_others = others if existing is None else [
        f for f in others if not held.reuse(cms_sign.hash_files([f], v.hash_name)[0], stage)]
    signed = cms_sign.sign_hashed(fresh, signer, hash_name=v.hash_name, now=now) \
        if fresh else []
    if fresh_others:
        signed += cms_sign.sign_files(fresh_others, signer, hash_name=v.hash_name, now=now)
    signed += held.signed
    st.done("sign", "done", f"{len(signed) - len(held.signed)} files signed by "
            f"{v.signer_name} ({v.hash_name})"
            + (f", {len(held.signed)} signatures the origin holds for this release kept"
               if held.signed else ""))
    objects = [dataclasses.replace(o, staged=staged.get(o.key))
               for o in _local_objects(stage, signed)]
    manifest, manifest_bytes, vouched = _manifest(p, objects, trust, ipxe_manifest,
                                                  existing, now, origin)
    manifest_path = stage / MANIFEST_NAME
    fsutil.atomic_write(manifest_path, manifest_bytes)
    manifest_hashed = cms_sign.hash_files([manifest_path], v.hash_name)[0]
    if held.reuse(manifest_hashed, stage):
        signed_manifest = held.signed[-1:]
    elif vouched:
        signed_manifest = cms_sign.sign_hashed([manifest_hashed], signer,
                                               hash_name=v.hash_name, now=now)
    else:
        raise VerificationError(
            f"release {p.release_id}: the {MANIFEST_NAME} the origin holds claims what "
            "this run does not (its iPXE build record, CA, signer or origin differ) and "
            "has no signature of this signer: this run will not sign it",
            hint="find out who changed it on the origin; then publish under a new release "
                 f"id, or prune release {p.release_id} and run again",
            rule="manifest-claims", subject=release_prefix(p.release_id) + MANIFEST_NAME)
    objects += _local_objects(stage, signed_manifest)
    st.done("manifest", "done" if existing is None else "unchanged",
            f"{MANIFEST_NAME} for {len(manifest.files)} objects, signed")
    result.manifest = manifest.to_json()
    published: PublishResult = publish_release(
        origin, p.release_id, objects, entry=ENTRY_SCRIPT, entry_path=v.entry_path,
        trust=trust, now=now, options=opts, ipxe=ipxe_manifest, progress=st.upload_progress)
    result.publish = published.to_json()
    result.uploaded = published.uploaded
    # (--reverify of the live release: publish_release verifies it and switches nothing)
    entry = (f"{v.entry_path} switched to {p.release_id}" if published.switched else
             f"{v.entry_path} already serves {p.release_id}: nothing switched")
    st.done("publish", "done", f"{len(published.uploaded)} uploaded, "
            f"{len(published.skipped)} already there, {len(published.verified)} read back "
            f"and verified; {entry}")


class _Held:
    """The signatures the origin already holds for this release id (a run killed after
    claiming it, or a release switched back to by re-running its recipe), kept instead of
    signing again: a release is immutable, and an ECDSA signature from a token differs on
    every signing. Kept only when it is the one the claimed manifest records, signs
    exactly this file's bytes and verifies as iPXE would, by this run's signer."""

    def __init__(self, origin: Origin, release_id: str, existing: ReleaseManifest | None,
                 signer: Signer, trust: Trust, hash_name: str, now: dt.datetime) -> None:
        self.origin, self.existing, self.signer = origin, existing, signer
        self.trust, self.hash_name, self.now = trust, hash_name, now
        self.prefix = release_prefix(release_id)
        self.signed: list[cms_sign.Signed] = []

    def reuse(self, item: cms_sign.Hashed, stage: Path) -> bool:
        """True (and the signature written beside ``item``) when the origin's is kept."""
        if self.existing is None:
            return False
        sha256 = item.digests["sha256"].hex()
        der = _held_signature(self.origin, self.existing, item.path.relative_to(stage)
                              .as_posix(), item, trust=self.trust, hash_name=self.hash_name,
                              certificate=self.signer.certificate, now=self.now)
        if der is None:
            return False
        target = cms_sign.signature_path(item.path, None)
        fsutil.atomic_write(target, der)
        cert = self.signer.certificate
        self.signed.append(cms_sign.Signed(
            path=item.path, size=item.size, sha256=sha256, hash_name=self.hash_name,
            signature_path=target, signer_subject=cert.subject.rfc4514_string(),
            signer_not_after=cert.not_valid_after_utc,
            chain_not_after=min(c.not_valid_after_utc for c in (cert, *self.signer.chain))))
        return True


def _held_signature(origin: Origin, existing: ReleaseManifest, key: str,
                    item: cms_sign.Hashed, *, trust: Trust, hash_name: str,
                    certificate: x509.Certificate, now: dt.datetime) -> bytes | None:
    """The signature of ``key`` (whose bytes ``item`` digests) that the origin holds for
    ``existing``'s release, when a run keeps it instead of signing again (_Held): the one
    the manifest records for exactly these bytes (none is recorded for the manifest
    itself), verifying as iPXE would, by ``certificate`` alone. None: signed again."""
    sha256 = item.digests["sha256"].hex()
    if key == MANIFEST_NAME:
        recorded = None  # the manifest does not list its own signature
    else:
        f = existing.file(key)
        sig = existing.file(f.sig) if f is not None and f.sig else None
        if f is None or sig is None or f.sha256 != sha256 or f.size != item.size:
            return None
        recorded = sig.sha256
    name = release_prefix(existing.release) + key + ".sig"
    try:  # one GET: a missing signature fails it like any other unreadable one
        der = b"".join(origin.read(name, max_size=MAX_SIGNATURE_SIZE))
    except OperationalError:
        return None  # missing or unreadable now: signed again; publish judges the origin
    if recorded is not None and hashlib.sha256(der).hexdigest() != recorded:
        return None
    verdict = verify_signature(der, {hash_name: item.digests[hash_name]},
                               trust=trust.roots, now=now, signer_name=trust.signer_name,
                               extra_certs=trust.extra_certs)
    cert_sha256 = hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()
    if not verdict.ok or [r.sha256 for r in verdict.signers] != [cert_sha256]:
        return None
    return der


def _already_there(p: Plan, origin: Origin, now: dt.datetime) -> list[str]:
    """The objects of the plan that a real run would find on the origin and not upload,
    judged as it judges them. An object whose bytes the plan knows (inputs, prebuilt
    firmware, the entry script): present with its size and, where the backend records
    it, its sha256 (publish's upload). A signature: only one the run would keep
    (_held_signature). release.json: only when it claims exactly these objects and
    signatures, and its signature only when kept as well. Firmware built by the run
    (not built in a dry run) and its signature are never counted."""
    v = p.v
    prefix = release_prefix(p.release_id)
    items: dict[str, cms_sign.Hashed] = {
        o["key"]: p.hashed[Path(o["path"])] for o in p.objects if o["path"] is not None}
    if v.firmware.mode == "prebuilt":
        accept = v.published.accept if v.published else None
        for target, path in v.firmware.prebuilt_files:
            h = cms_sign.hash_files([path], v.hash_name, accept=accept)[0]
            # only the bytes the id was made of: a real run refuses others (_prebuilt)
            if p.firmware_identity.get(target) == h.digests["sha256"].hex():
                items[firmware_key(target)] = h
    script = _script(p).encode()
    items[ENTRY_SCRIPT] = cms_sign.Hashed(Path(ENTRY_SCRIPT), len(script),
                                          hash_bytes(script, v.hash_name))
    there = [k for k, h in items.items()
             if holds(origin.stat(prefix + k), h.size, h.digests["sha256"].hex())]
    read = read_manifest_data(origin, p.release_id)
    if read is None:
        return sorted(there)
    existing, data = read
    trust = trust_of(v)

    def held(key: str, item: cms_sign.Hashed) -> bytes | None:
        return _held_signature(origin, existing, key, item, trust=trust,
                               hash_name=v.hash_name, certificate=v.signer.certificate,
                               now=now)

    objects = []
    for key, h in items.items():
        objects.append(LocalObject(key, h.path, h.size, h.digests["sha256"].hex()))
        der = held(key, h)
        if der is not None:
            there.append(key + ".sig")
            objects.append(LocalObject(key + ".sig", Path(key + ".sig"), len(der),
                                       hashlib.sha256(der).hexdigest()))
    # every object of the release, each with its kept signature: then the manifest the
    # run would make has the claim's content, and the run uses the origin's (_manifest)
    planned = {o["key"] for o in p.objects} | {ENTRY_SCRIPT}
    if set(items) == planned and len(objects) == 2 * len(planned) and existing.same_content(
            build_manifest(p.release_id, objects, entry=ENTRY_SCRIPT, now=now, origin=None,
                           trust=trust)):
        there.append(MANIFEST_NAME)
        claim = cms_sign.Hashed(Path(MANIFEST_NAME), len(data), hash_bytes(data, v.hash_name))
        if held(MANIFEST_NAME, claim) is not None:
            there.append(MANIFEST_NAME + ".sig")
    return sorted(there)


def _already_live(origin: Origin, existing: ReleaseManifest, wanted: dict[str, str],
                  entry_path: str) -> bool:
    """The release on the origin has exactly these objects, all present with their sizes,
    and the entry path serves its script and signature (nothing to sign, upload or switch)."""
    unsigned = {f.name: f.sha256 for f in existing.files if f.sig is not None}
    if unsigned != wanted:
        return False
    prefix = release_prefix(existing.release)
    for f in existing.files:
        if not holds(origin.stat(prefix + f.name), f.size, f.sha256):
            return False
    entry = existing.file(ENTRY_SCRIPT)
    sig = existing.file(entry.sig) if entry is not None and entry.sig else None
    # the pair, not the script alone: a switch killed between its two moves leaves this
    # script beside another release's signature (recorded: publish repairs it first)
    if entry is None or sig is None or pending_switch(origin):
        return False
    for key, want, cap in ((entry_path, entry.sha256, MAX_ENTRY_SIZE),
                           (entry_path + ".sig", sig.sha256, MAX_SIGNATURE_SIZE)):
        if origin.stat(key) is None:
            return False
        if hashlib.sha256(b"".join(origin.read(key, max_size=cap))).hexdigest() != want:
            return False
    return True


def _same_digest_id(origin: Origin, template: str, name: str, digest: str) -> str | None:
    """An id on the origin made from ``template`` with this digest, on any date."""
    values = {"name": re.escape(name), "date": r"\d{8}", "digest8": digest[:8],
              "digest12": digest[:12], "digest": digest}
    parts = re.split(r"(\{\w+\})", template)
    pattern = "".join(values[x[1:-1]] if x.startswith("{") else re.escape(x) for x in parts)
    # the ids (one listing of releases/, not of every object of every release), then the
    # manifest of the newest matching one that has it
    matches = [i for i in origin.list_dirs(RELEASES_PREFIX + "/")
               if re.fullmatch(pattern, i) and not release_id_problem(i)]
    for rid in sorted(matches, reverse=True):
        if origin.stat(release_prefix(rid) + MANIFEST_NAME) is not None:
            return rid
    return None


def _unlocked(v: Validated) -> contextlib.AbstractContextManager[Signer]:
    """The signer, unlocked (or logged in to its token) once for the whole release and
    closed when the release is done."""
    return v.signer.open(v.passphrases)


def _local_objects(stage: Path, signed: list[cms_sign.Signed]) -> list[LocalObject]:
    out = []
    for s in signed:
        key = s.path.relative_to(stage).as_posix()
        # an input is linked into the stage: upload the file itself (a backend may open
        # it with O_NOFOLLOW, as the S3 one does)
        path = Path(os.readlink(s.path)) if s.path.is_symlink() else s.path
        out.append(LocalObject(key, path, s.size, s.sha256))
        sig = s.signature_path.read_bytes()
        out.append(LocalObject(key + ".sig", s.signature_path, len(sig),
                               hashlib.sha256(sig).hexdigest()))
    return out


def _manifest(p: Plan, objects: list[LocalObject], trust: Trust,
              ipxe: dict[str, Any] | None, existing: ReleaseManifest | None,
              now: dt.datetime, origin: Origin) -> tuple[ReleaseManifest, bytes, bool]:
    """The release's manifest, its bytes, and whether this run vouches for every claim
    in them. When the origin already holds a manifest with the same content (the id's
    claim), it is used byte for byte: it is what the origin serves and what is reported
    (its notes, e.g. the prebuilt firmware's build record, may differ from this run's;
    they are not part of the id). Its claims beyond its time are this run's own, or only
    kept under the signature the origin holds (anyone who can write the origin could have
    written them: a signed build record is root-promotion evidence)."""
    cert = p.v.signer.certificate
    chain_end = min(c.not_valid_after_utc for c in (cert, *p.v.signer.chain))
    signer = SignerSummary(subject=cert.subject.rfc4514_string(),
                           serial=f"{cert.serial_number:x}", not_after=chain_end)
    fresh = build_manifest(p.release_id, objects, entry=ENTRY_SCRIPT, now=now,
                           origin=f"{p.v.public_base}releases/{p.release_id}/", trust=trust,
                           signer=signer, ipxe=ipxe, entry_path=p.v.entry_path)
    if existing is not None and existing.same_content(fresh):
        key = release_prefix(p.release_id) + MANIFEST_NAME
        data = b"".join(origin.read(key, max_size=MAX_MANIFEST_BYTES))
        claimed = parse_manifest(data, source=f"{origin.url}{key}")
        if claimed.release == p.release_id and claimed.same_content(fresh):
            own = (claimed.origin, claimed.ca_sha256, claimed.signer, claimed.ipxe) == \
                (fresh.origin, fresh.ca_sha256, fresh.signer, fresh.ipxe)
            return claimed, data, own
    return fresh, fresh.to_bytes(), True


def check_entry(entry_url: str, trust: Trust, expected: bytes | None, *,
                ca_file: Path | None, now: dt.datetime) -> CheckReport:
    """`origin check` on ``entry_url``: a TLS 1.2 handshake as iPXE makes it, then the
    script and its .sig fetched and judged with iPXE's rules (roots, chain, --signer).
    VerificationError when iPXE would refuse, or when the script is not ``expected``;
    OperationalError when there was nothing to judge (unreachable, not served)."""
    report = check_origin(entry_url, trust=trust, ca_file=ca_file, now=now)
    error = report.error(rule="served-entry")
    if error is not None:
        raise error
    if expected is not None and report.sha256 != hashlib.sha256(expected).hexdigest():
        raise VerificationError(
            f"{entry_url} serves another script than this release's",
            hint="another release was switched in meanwhile; run the release again",
            rule="served-entry", subject=entry_url)
    return report


__all__ = [
    "STAGES",
    "ReleaseOptions",
    "ReleaseResult",
    "check_entry",
    "firmware_key",
    "run_release",
]


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"
