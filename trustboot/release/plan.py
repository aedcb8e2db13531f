"""Validate a recipe against the machine, then plan the release: what is built, signed and
uploaded, under which id. Nothing here writes anything.

``validate`` resolves every path (inside the recipe's directory unless allowed), the signer
(without unlocking its key), the signer's remaining lifetime, the firmware source and the
origin. ``plan`` hashes the inputs and derives the release id from a digest over them (the
inputs, never the time), so the same recipe and files give the same id and a re-run
uploads nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from trustboot.cms import sign as cms_sign
from trustboot.cms import verify as rules
from trustboot.errors import ConfigError, VerificationError
from trustboot.ipxe import build as ipxe_build
from trustboot.ipxe import syntax
from trustboot.ipxe.build import firmware_key
from trustboot.ipxe.config import BuildOptions, Certificate, load_single_certificate
from trustboot.ipxe.inputs import collect_trust
from trustboot.ipxe.script import (
    DEFAULT_ON_FAILURE,
    ChainScript,
    check_https_url,
    render_chain_script,
)
from trustboot.keys.ref import KeyRef
from trustboot.keys.signer import KeySource, resolve_signer
from trustboot.publish.cache import PublishCache
from trustboot.publish.manifest import MANIFEST_NAME, check_entry_path, check_release_id
from trustboot.publish.origin import (
    AMBIENT_ENV,
    CLIENT_CERT_ENV,
    AmbientBinding,
    ClientCertBinding,
    Credentials,
    check_ambient_scope,
    check_client_cert_scope,
    check_credentials_scope,
    check_key,
    load_credentials,
    redact_url,
)
from trustboot.publish.revocation import Revocations
from trustboot.release.recipe import (
    ENTRY_SCRIPT,
    EntrySpec,
    Recipe,
    RecipePath,
    SecretRef,
    fill_id,
    input_key,
    origin_dir,
    resolve_path,
)
from trustboot.secrets import PassphraseSource, from_env, from_file
from trustboot.subproc import time_limit
from trustboot.text import clean

# Bump when the rendered bytes for the same inputs change, so the id changes with them.
RELEASE_FORMAT = 1
PREBUILT_RECORD = "manifest.json"  # `ipxe build -o DIR` writes its build record there


@dataclass(frozen=True)
class ReleaseOptions:
    """What the caller (CLI, demo, tests) adds to a recipe. Paths given here are trusted
    (they come from the operator, not from the recipe)."""

    allow_outside: tuple[Path, ...] = ()
    passphrases: PassphraseSource | None = None
    # The operator named the signing key's passphrase source for this run
    # (--passphrase-file/--passphrase-env): it wins over the recipe's signer.passphrase.
    passphrases_explicit: bool = False
    ipxe_source: Path | None = None
    origin_url: str | None = None
    public_url: str | None = None
    origin_ca_file: Path | None = None
    # Where this host reaches the public base when its name differs here (split horizon,
    # or a VM's view of the host): read-back and the final check go there instead.
    readback_url: str | None = None
    ca_home: Path | None = None
    cache_dir: Path | None = None
    jobs: int | None = None
    environ: Mapping[str, str] | None = None
    # A re-run of a complete, live release normally checks sizes and the entry only;
    # reverify reads every object back and judges every signature again.
    reverify: bool = False
    # trustboot.publish.cache: inputs unchanged since an earlier run are not hashed again
    publish_cache: Path | None = None
    # the PKCS#11 module for a pkcs11: signer (a recipe may not name one: it is code)
    pkcs11_module: Path | None = None
    # run the iPXE tree's make outside the sandbox (operator only: no recipe key sets it)
    unsafe_unsandboxed_build: bool = False
    # accept recipe inputs that users other than root and us can change (operator only,
    # --unsafe-shared-inputs): they then choose what the release signs
    unsafe_shared_inputs: bool = False
    # send the recipe's origin.credentials even when they are not bound to an origin URL,
    # and, with no ambient_credentials binding, let the ambient AWS credentials sign for
    # an s3:// recipe without them (operator only, --unsafe-unbound-credentials: the
    # recipe chooses origin.url and origin.endpoint)
    unsafe_unbound_credentials: bool = False
    # the s3:// origin (and endpoint) boto3's own credentials (AWS_* variables, profile,
    # instance role) may sign for when a recipe gives no origin.credentials (operator
    # only: --ambient-credentials / TRUSTBOOT_AMBIENT_CREDENTIALS); None: not at all
    ambient_credentials: AmbientBinding | None = None
    # the origin the CA's TLS client certificate a recipe names (origin.client_cert) may
    # authenticate to (operator only: --client-cert-origin / TRUSTBOOT_CLIENT_CERT_ORIGIN);
    # None: not at all, unless unsafe_unbound_credentials
    client_cert_origin: ClientCertBinding | None = None
    # files the operator gave this run as secrets (--passphrase-file): no recipe input may
    # be one of them (the recipe's own secret files are found from the recipe)
    secret_files: tuple[Path, ...] = ()
    # a file:// origin in directories other users own or can write (operator only,
    # --unsafe-shared-origin): they could replace what was verified
    unsafe_shared_origin: bool = False
    # a CRL of the signers' CA (--crl): a signer it revokes is refused before anything is
    # uploaded, as publish refuses it (the CA home's index is asked when the key resolves)
    crl: Path | None = None


@dataclass(frozen=True)
class InputFile:
    key: str
    path: Path
    role: str  # kernel | initrd | firmware
    where: str


@dataclass(frozen=True)
class Published:
    """What a file the release publishes (world-readable, and signed) may not be: anything
    under the CA home (its keys, its index, its passphrase files), the same file as a
    secret the run reads (a passphrase or credentials file, the signing or TLS client key),
    or a file others may not read (its owner did not mean it to be public). Checked when
    the recipe is validated, and again on the descriptor that is read (``accept``): a file
    swapped since is refused before a byte of it is hashed or sent."""

    ca_home: Path  # resolved
    # (st_dev, st_ino) -> what the run reads it as
    secrets: Mapping[tuple[int, int], str] = field(default_factory=dict)
    # the recipe's directory and the --allow-outside roots (resolved): the directories
    # below them on an input's way are the recipe's choice, and must be open to others
    roots: tuple[Path, ...] = ()
    # the resolved path of each file the recipe names, -> (what, its recipe line)
    names: Mapping[Path, tuple[str, str]] = field(default_factory=dict)

    def check_path(self, path: Path, what: str, where: str) -> None:
        """``path`` (resolved) as validate sees it."""
        if path == self.ca_home or path.is_relative_to(self.ca_home):
            raise ConfigError(
                f"{where}: {what} {path} lies in the CA home {self.ca_home}: the release "
                "would publish it world-readable, and the CA home holds the CA's private "
                "keys and passphrase files",
                hint="publish files kept outside the CA home (copy a public certificate "
                     "elsewhere if it really is meant to be published)")
        self._check_way(path, what, where)
        try:
            st = os.stat(path)
        except OSError:
            return  # hashing reports it, with its context
        self.check_stat(path, st, what, where)

    def _check_way(self, path: Path, what: str, where: str) -> None:
        """A file open to all in a directory others may not enter (0700: ~/.aws, a CI
        secrets directory) is private all the same. Only the directories between the
        root the recipe may use and the file: those above a root are the operator's
        (a 0750 home says nothing about one file in it)."""
        root = max((r for r in self.roots if path.is_relative_to(r)),
                   key=lambda r: len(r.parts), default=None)
        if root is None:
            return
        for directory in reversed(path.parents):
            if directory == root or not directory.is_relative_to(root):
                continue
            try:
                mode = os.stat(directory).st_mode
            except OSError:
                return  # hashing reports it, with its context
            if not mode & stat.S_IXOTH:
                raise ConfigError(
                    f"{where}: {what} {path} lies in {directory}, which other users may "
                    f"not enter (mode {stat.S_IMODE(mode):04o}): what is kept there is "
                    "private, and the release publishes it world-readable",
                    hint=f"if it really is public: chmod o+x {directory}; else fix the "
                         "path in the recipe")

    def check_stat(self, path: Path, st: os.stat_result, what: str, where: str) -> None:
        secret = self.secrets.get((st.st_dev, st.st_ino))
        if secret is not None:
            raise ConfigError(
                f"{where}: {what} {path} is the same file as {secret}, which this run "
                "reads as a secret: the release would publish it world-readable",
                hint="name the file the release is meant to publish; a secret never is one")
        if not st.st_mode & stat.S_IROTH:
            raise ConfigError(
                f"{where}: {what} {path} is not readable by others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}), and the release publishes it "
                "world-readable",
                hint=f"if it really is public: chmod o+r {path}; else fix the path in the "
                     "recipe")

    def accept(self, path: Path, st: os.stat_result) -> None:
        """cms.digest.Accept: ``path`` (an input validate checked) as it was opened."""
        what, where = self.names.get(path, ("input", str(path)))
        self.check_stat(path, st, what, where)


@dataclass(frozen=True)
class Firmware:
    """How the firmware is obtained: built (cached), prebuilt, or skipped (and why)."""

    mode: str  # "build" | "prebuilt" | "skipped"
    targets: tuple[str, ...] = ()
    request: ipxe_build.BuildRequest | None = None
    prebuilt_dir: Path | None = None
    # each prebuilt target's file, resolved once and checked inside the recipe's roots;
    # the build record (manifest.json) beside them, when there is one
    prebuilt_files: tuple[tuple[str, Path], ...] = ()
    prebuilt_record: Path | None = None
    reason: str = ""
    chain_script: str | None = None
    # a dry run with a git-pinned source that is not in the cache yet: nothing is cloned,
    # and the firmware is identified by the pin (the release id is then provisional)
    pinned: tuple[str, str] | None = None  # (git URL, commit)


@dataclass(frozen=True)
class Validated:
    recipe: Recipe
    ca_home: Path
    signer: KeySource
    signer_name: str
    passphrases: PassphraseSource
    roots: tuple[Certificate, ...]
    extra_certs: tuple[Certificate, ...]
    origin_url: str
    public_base: str
    entry_path: str
    origin_ca_file: Path | None
    credentials: Credentials | None
    endpoint: str | None
    client_cert: Path | None
    client_key: Path | None
    client_key_passphrase: PassphraseSource | None
    inputs: tuple[InputFile, ...]
    firmware: Firmware
    readback_base: str = ""
    # what a published input may not be (None: not checked, a Validated built by hand)
    published: Published | None = None
    # what the run should say but not refuse (a dry run's notes on what a real run refuses)
    warnings: tuple[str, ...] = ()
    unsafe_shared_origin: bool = False  # ReleaseOptions.unsafe_shared_origin
    # publish's revocation gate (ReleaseOptions.crl); None: not asked
    revocations: Revocations | None = field(default=None, compare=False)

    @property
    def hash_name(self) -> str:
        return self.recipe.signer.hash

    @property
    def on_failure(self) -> str:
        return self.recipe.ipxe.on_failure if self.recipe.ipxe else DEFAULT_ON_FAILURE


@dataclass
class Plan:
    v: Validated
    release_id: str
    digest: str
    hashed: dict[Path, cms_sign.Hashed]
    objects: list[dict[str, Any]] = field(default_factory=list)
    # a dry run that could not read the origin: why (the id may be an earlier day's
    # there, and what is already there is unknown)
    origin_unreachable: str | None = None
    # a dry run that read the origin: the objects a real run would find there and skip
    on_origin: list[str] | None = None
    # what the id says of the firmware (prebuilt: each target's sha256)
    firmware_identity: Any = None

    @property
    def readback_base(self) -> str:
        return self.v.readback_base

    def to_json(self) -> dict[str, Any]:
        fw = self.v.firmware
        signer = self.v.signer.certificate
        return {
            "release": self.release_id, "digest": self.digest,
            "recipe": self.v.recipe.source, "origin": self.v.origin_url,
            "public_base": self.v.public_base, "entry_path": self.v.entry_path,
            "signer": {"ref": str(self.v.signer.ref), "name": self.v.signer_name,
                       "subject": signer.subject.rfc4514_string(),
                       "not_after": signer.not_valid_after_utc.isoformat()},
            "firmware": {"mode": fw.mode, "targets": list(fw.targets), "reason": fw.reason},
            # the id includes the firmware's build cache key, unknown until it is cloned
            "release_id_provisional": (fw.pinned is not None and fw.request is None)
            or (self.origin_unreachable is not None
                and "{date}" in self.v.recipe.release.id_template),
            "origin_unreachable": self.origin_unreachable,
            "build": list(fw.targets) if fw.mode == "build" else [],
            # what a real run of a new id signs and uploads: the manifest and its
            # signature too (publish_release's claim), as the real run's `uploaded` says
            # (less what it would keep: a signature found on the origin, kept as a run does)
            "sign": [k for k in [o["key"] for o in self.objects] + [ENTRY_SCRIPT, MANIFEST_NAME]
                     if f"{k}.sig" not in (self.on_origin or ())],
            # less what a dry run found on the origin as a real run would (null: the
            # origin was not read, and any of `upload` may already be there)
            "upload": sorted(set(self._all_keys()) - set(self.on_origin or ())),
            "on_origin": self.on_origin,
        }

    def _all_keys(self) -> list[str]:
        """Every object a release of this plan has on the origin."""
        return sorted([o["key"] for o in self.objects]
                      + [f"{o['key']}.sig" for o in self.objects]
                      + [ENTRY_SCRIPT, f"{ENTRY_SCRIPT}.sig",
                         MANIFEST_NAME, f"{MANIFEST_NAME}.sig"])


def _cn(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def _chain_not_after(signer: KeySource) -> dt.datetime:
    return min(c.not_valid_after_utc for c in (signer.certificate, *signer.chain))


def check_lifetime(signer: KeySource, recipe: Recipe, ca_home: Path,
                   now: dt.datetime) -> None:
    """Refuse a signer whose chain ends before the recipe's minimum lifetime: every
    signature of the release stops verifying at boot when any certificate expires."""
    need = recipe.release.min_signer_lifetime
    end = _chain_not_after(signer)
    if end - now >= need:
        return
    if signer.ref.scheme == "ca":
        renew = (f"issue a new code-signing certificate: trustboot ca issue codesign "
                 f"{signer.ref.value}-next --pki {ca_home}, then set signer.key to it "
                 "(and revoke the old one: trustboot ca revoke)")
    else:
        renew = ("have the CA issue a new code-signing certificate for this key "
                 "(trustboot ca issue codesign NAME --csr ...) and update signer.cert")
    left = end - now
    raise VerificationError(
        f"{recipe.signer.where}: the signer's chain expires on {end.isoformat()} "
        f"({max(left.days, 0)} days from now), sooner than release.min_signer_lifetime "
        f"({need.days} days) [rule: signer-lifetime]",
        hint=renew, rule="signer-lifetime", subject=signer.certificate.subject.rfc4514_string())


@contextlib.contextmanager
def _at(recipe: Recipe, where: str) -> Iterator[None]:
    """A ConfigError about a file or value the recipe names, located at ``where`` (the
    recipe's file:line), unless it names a line of the recipe already."""
    try:
        yield
    except ConfigError as exc:
        if exc.message.startswith(f"{recipe.source}:"):
            raise
        raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from None


def _located(source: PassphraseSource, recipe: Recipe, where: str) -> PassphraseSource:
    """``source``, its refusals (a loose mode, an empty file) located at ``where``: the
    file is read only when the key is unlocked, long after the recipe was read."""
    def located(what: str) -> bytes:
        with _at(recipe, where):
            return source(what)
    return located


def _trusted(recipe: Recipe, options: ReleaseOptions, path: Path, what: str, where: str,
             *, tree: bool = False) -> None:
    """Refuse a recipe input (at ``where``) that a user other than root and us can
    change, or rename away, unless the operator passed --unsafe-shared-inputs: whoever
    can would choose what the release signs, publishes or trusts."""
    if options.unsafe_shared_inputs:
        return
    from trustboot import writers

    with _at(recipe, where):
        writers.check_trusted(path, what, tree=tree)


def _secret_source(recipe: Recipe, options: ReleaseOptions,
                   ref: SecretRef | None = None, *,
                   signing_key: bool = False) -> PassphraseSource:
    if signing_key and options.passphrases_explicit and options.passphrases is not None:
        return options.passphrases
    ref = ref or recipe.signer.passphrase
    if ref is not None and ref.env is not None:
        return from_env(ref.env)
    if ref is not None and ref.file is not None:
        return _located(from_file(resolve_path(recipe, ref.file, "passphrase file",
                                               allow_outside=options.allow_outside)),
                        recipe, ref.file.where)
    if options.passphrases is not None:
        return options.passphrases
    raise ConfigError(f"{recipe.source}: no passphrase source for the signing key",
                      hint="add signer.passphrase {env: NAME} to the recipe, or pass "
                           "--passphrase-file / --passphrase-env")


def _inputs(recipe: Recipe, options: ReleaseOptions) -> list[InputFile]:
    out: dict[str, InputFile] = {}
    allow = options.allow_outside

    def add(entry: EntrySpec, p: RecipePath, role: str) -> None:
        what = f"entries.{entry.name}.{role}"
        path = resolve_path(recipe, p, what, allow_outside=allow)
        _trusted(recipe, options, path, what, p.where)
        key = check_key(input_key(entry, p))
        if key in out and out[key].path != path:
            raise ConfigError(f"{p.where}: {key} names two different files "
                              f"({out[key].path} and {path})", hint="rename one of them")
        out[key] = InputFile(key, path, role, p.where)

    for e in recipe.entries:
        add(e, e.kernel, "kernel")
        for i in e.initrds:
            add(e, i, "initrd")
    return list(out.values())


def _prebuilt_file(recipe: Recipe, prebuilt: RecipePath, name: str,
                   allow: Sequence[Path]) -> Path:
    return resolve_path(recipe, RecipePath(f"{prebuilt.raw}/{name}", prebuilt.where),
                        f"ipxe.prebuilt {name}", allow_outside=allow)


def _firmware(recipe: Recipe, options: ReleaseOptions, v_roots: Sequence[Certificate],
              v_certs: Sequence[Certificate], chain_script: str,
              allow: Sequence[Path], *, dry_run: bool = False) -> Firmware:
    from trustboot.ipxe.source import (
        clone_dir,
        clone_pinned,
        cloned_at,
        find_src_dir,
        open_source,
    )

    spec = recipe.ipxe
    targets = spec.targets if spec else ipxe_build.DEFAULT_TARGETS
    ipxe_build.check_targets(targets)
    if spec is not None and spec.prebuilt is not None:
        d = resolve_path(recipe, spec.prebuilt, "ipxe.prebuilt", allow_outside=allow,
                         kind="dir")
        # Each file by the same rule as every recipe path: a link inside the directory
        # must not publish (and sign) a file from anywhere on the host.
        files = []
        for t in targets:
            if not os.path.lexists(d / t):
                raise ConfigError(f"{spec.prebuilt.where}: prebuilt firmware {t} is not in "
                                  f"{d}", hint="build it with `trustboot ipxe build -o DIR`")
            files.append((t, _prebuilt_file(recipe, spec.prebuilt, t, allow)))
        record = (_prebuilt_file(recipe, spec.prebuilt, PREBUILT_RECORD, allow)
                  if os.path.lexists(d / PREBUILT_RECORD) else None)
        for path in (d, *(f for _, f in files), *([record] if record else [])):
            _trusted(recipe, options, path, "ipxe.prebuilt", spec.prebuilt.where)
        return Firmware("prebuilt", targets, prebuilt_dir=d, prebuilt_files=tuple(files),
                        prebuilt_record=record)
    # What the recipe pins wins; --ipxe-source / TRUSTBOOT_IPXE_SRC only fills a gap.
    will_build = (spec is not None and (spec.source is not None or spec.git is not None)) \
        or options.ipxe_source is not None
    if will_build:
        # refused now, as the other options are, not at the build stage after the uploads
        time_limit()
    unsandboxed = _sandbox_problem(options) if will_build else None
    if unsandboxed is not None and not dry_run:
        # now, not at the build stage: before the clone, the signer's unlock (a prompt)
        # and the uploads of the inputs, which a release that cannot build must not start
        raise unsandboxed
    sandbox_note = None if unsandboxed is None else (
        f"the build would fail: {unsandboxed.message}"
        + (f" ({unsandboxed.hint})" if unsandboxed.hint else ""))
    source_dir: Path | None = None
    if spec is not None and spec.source is not None:
        source_dir = resolve_path(recipe, spec.source, "ipxe.source", allow_outside=allow,
                                  kind="dir")
    elif spec is not None and spec.git is not None and spec.commit is not None:
        cache = options.cache_dir or ipxe_build.default_cache_dir(options.environ)
        if dry_run:
            # touch nothing: use the cached clone if it is there, else only name the pin
            source_dir = cloned_at(spec.git, spec.commit, clone_dir(cache, spec.commit))
            if source_dir is None:
                return Firmware("build", targets, chain_script=chain_script,
                                pinned=(spec.git, spec.commit), reason=sandbox_note or (
                                    f"would clone {spec.git} at {spec.commit} into the "
                                    "iPXE cache and build (not cloned: --dry-run)"))
        else:
            into = clone_dir(ipxe_build.prepare_cache_dir(cache), spec.commit)  # options'
            with _at(recipe, spec.where):  # the recipe's git and commit
                source_dir = clone_pinned(spec.git, spec.commit, into)
    elif options.ipxe_source is not None:
        source_dir = options.ipxe_source
    if source_dir is None:
        return Firmware("skipped", targets, reason=(
            "no iPXE source configured: set ipxe.source (or ipxe.git + ipxe.commit) in the "
            "recipe, pass --ipxe-source DIR, or set TRUSTBOOT_IPXE_SRC, to build firmware "
            "that trusts only this CA; or give ipxe.prebuilt"))
    # a tree the recipe names is refused at its line; --ipxe-source's or the environment's
    # in their own words
    with _at(recipe, spec.source.where) if spec is not None and spec.source is not None \
            else contextlib.nullcontext():
        if spec is not None and spec.source is not None:
            _check_src_inside(recipe, spec.source, source_dir, allow)
            # what is hashed, copied and built: its writers would choose the firmware
            _trusted(recipe, options, find_src_dir(source_dir), "ipxe.source",
                     spec.source.where, tree=True)
        source = open_source(source_dir)
    request = ipxe_build.BuildRequest(
        source=source, targets=targets, trust=tuple(v_roots), certs=tuple(v_certs),
        script=chain_script,
        options=BuildOptions(ntp=bool(spec and spec.ntp),
                             serial_console=bool(spec and spec.serial_console)),
        source_date_epoch=source.git_commit_time or 0)
    return Firmware("build", targets, request=request, chain_script=chain_script,
                    reason=sandbox_note or "")


def _sandbox_problem(options: ReleaseOptions) -> ConfigError | None:
    """Why the iPXE tree's make could not run in the sandbox here (bwrap missing, or
    unable to create its namespaces), or None: also None with --unsafe-unsandboxed-build,
    which runs it without one."""
    if options.unsafe_unsandboxed_build:
        return None
    from trustboot.ipxe import sandbox

    try:
        sandbox.find_bwrap()
    except ConfigError as exc:
        return exc
    return None


def _check_src_inside(recipe: Recipe, path: RecipePath, top: Path,
                      allow: Sequence[Path]) -> None:
    """The src/ of the tree ``ipxe.source`` names (``top``) by the rule ``top`` passed:
    src/ is what is hashed, copied and built, and a src/ that is a symbolic link had a
    recipe build (and the release sign) a tree from anywhere on the build host."""
    from trustboot.ipxe.source import find_src_dir

    if find_src_dir(top) != top:
        resolve_path(recipe, RecipePath(f"{path.raw}/src", path.where), "ipxe.source",
                     allow_outside=allow, kind="dir")


def _public_base(url: str, public: str | None, where: str) -> str:
    base = public
    if base is None and urlsplit(url).scheme == "https":
        base = url
    if base is None:
        raise ConfigError(f"{where}: origin {url} needs public_url: the https:// base URL "
                          "that booting machines fetch the release from",
                          hint="add origin.public_url: https://boot.example.net/")
    check_https_url(base, "origin.public_url")
    syntax.check_word(base, "origin.public_url")
    return base if base.endswith("/") else base + "/"


def _origin_credentials(recipe: Recipe, ref: SecretRef, url: str, endpoint: str | None,
                        options: ReleaseOptions) -> Credentials:
    """The recipe's origin.credentials, checked before anything is sent (a dry run too).

    A recipe comes from a pull request and chooses origin.url (and the CA its TLS
    certificate is checked with): credentials that are not bound to an origin URL would go
    to whatever host it names. So they must be bound, by the secret itself (set by the
    operator, out of the recipe's reach), to the origin they are sent to, unless the
    operator passes --unsafe-unbound-credentials."""
    what = "origin.credentials." + ("env" if ref.env is not None else "file")
    with _at(recipe, f"{ref.where}: {what}"):
        cfile = (resolve_path(recipe, ref.file, what, allow_outside=options.allow_outside)
                 if ref.file else None)
        creds = load_credentials(file=cfile, env=ref.env,
                                 environ=dict(options.environ) if options.environ else None)
        assert creds is not None  # one of file or env (the recipe checked it)
        # bound to another origin: refused here, so a dry run says so too
        check_credentials_scope(url, creds, endpoint=endpoint)
    if creds.scope is None and not options.unsafe_unbound_credentials:
        shown = redact_url(url)
        if urlsplit(url).scheme == "s3":
            binding = f"'{shown} {endpoint + ' ' if endpoint else ''}KEY_ID:SECRET'"
        else:
            binding = f"'{shown} USER:PASSWORD' (or '{shown} bearer:TOKEN')"
        raise ConfigError(
            f"{ref.where}: {what}: the credentials from {creds.source} are not bound to an "
            f"origin, and this recipe chooses where they go (origin.url {shown}); nothing "
            "was sent",
            hint=f"bind them to the origin they are meant for: write the secret as "
                 f"{binding} (a recipe pointing elsewhere is then refused), or, only for "
                 "a recipe you trust, pass --unsafe-unbound-credentials")
    return creds


def _ambient_credentials(recipe: Recipe, url: str, endpoint: str | None, where: str,
                         options: ReleaseOptions, *, dry_run: bool) -> str | None:
    """An s3:// origin without origin.credentials, checked before anything is sent.

    boto3 then signs every request with the credentials it finds itself (AWS_* variables,
    AWS_PROFILE and ~/.aws, a container or instance role: the CI job's), while the recipe
    chooses the bucket and the endpoint: a pull request could have the job's session
    token sent to a host of its choosing, or publish into another bucket those
    credentials may write. So they are used only for the origin the operator bound them
    to (``options.ambient_credentials``), unless --unsafe-unbound-credentials. A dry run
    signs nothing: there an unbound origin is a note (what the real run refuses); a
    binding for another origin is refused in a dry run too, as a bound secret's is."""
    binding = options.ambient_credentials
    if binding is not None:
        with _at(recipe, where):
            check_ambient_scope(url, binding, endpoint=endpoint)
        return None
    if options.unsafe_unbound_credentials:
        return None
    shown = redact_url(url)
    at = f" at origin.endpoint {redact_url(endpoint)}" if endpoint else ""
    why = (f"{where}: origin.url {shown}{at}: the recipe gives no origin.credentials, so "
           "every request would be signed with the ambient AWS credentials (AWS_* "
           "variables, AWS_PROFILE or ~/.aws, a container or instance role); they are not "
           "bound to an origin, and this recipe chooses where they go")
    return _unbound(why, f"bind them to the origin they are meant for: {AMBIENT_ENV}="
                         f"'{shown}{' ' + endpoint if endpoint else ''}' (or "
                         "--ambient-credentials; a recipe pointing elsewhere is then "
                         "refused), or give the recipe origin.credentials bound to it, or, "
                         "only for a recipe you trust, pass --unsafe-unbound-credentials",
                    dry_run=dry_run)


def _client_cert_binding(recipe: Recipe, name: str, url: str, where: str,
                         options: ReleaseOptions, *, dry_run: bool) -> str | None:
    """A recipe's origin.client_cert, checked before anything is sent.

    Every origin that trusts the CA's client certificates takes the writes made with it
    (another team's, production instead of staging), and the recipe chooses origin.url:
    so the certificate authenticates only to the origin the operator bound it to
    (``options.client_cert_origin``), unless --unsafe-unbound-credentials. As for the
    ambient AWS credentials, a dry run of an unbound recipe is not refused: the note
    returned says what the real run refuses (and the dry run presents no certificate);
    a binding for another origin or certificate is refused in a dry run too."""
    binding = options.client_cert_origin
    if binding is not None:
        with _at(recipe, where):
            check_client_cert_scope(url, name, binding)
        return None
    if options.unsafe_unbound_credentials:
        return None
    shown = redact_url(url)
    why = (f"{where}: origin.client_cert {name!r} is not bound to an origin, and this "
           f"recipe chooses where it authenticates (origin.url {shown}): every origin that "
           "trusts the CA's client certificates would take its writes")
    return _unbound(why, f"bind it to the origin it is meant for: {CLIENT_CERT_ENV}="
                         f"'{shown} {name}' (or --client-cert-origin; a recipe pointing "
                         "elsewhere is then refused), or, only for a recipe you trust, pass "
                         "--unsafe-unbound-credentials",
                    dry_run=dry_run, note=". This dry run does not present the certificate")


ORIGIN_CA_OPTION = "--origin-ca-file"
ORIGIN_CA_ENV = "TRUSTBOOT_ORIGIN_CA_FILE"


def _recipe_ca_binding(recipe: Recipe, url: str, creds: bool, client_cert: bool,
                       options: ReleaseOptions, *, dry_run: bool) -> str | None:
    """A recipe's origin.ca_file, when the run authenticates to the origin.

    The operator binds credentials (and the client certificate) to an origin URL; the CA
    that proves a host is that URL must then be the operator's too: with a CA of the
    recipe's choosing, whoever can redirect the name (DNS, on-path) presents a certificate
    of it and receives them. So the operator's --origin-ca-file replaces the recipe's;
    without one, a recipe that names a ca_file and authenticates is refused (unless
    --unsafe-unbound-credentials); without any, validate refuses an https:// or s3://
    origin (no CA to check it with). A dry
    run, which sends no credentials, gets the note of what a real run refuses."""
    o = recipe.origin
    if options.origin_ca_file is not None or o is None or o.ca_file is None \
            or options.unsafe_unbound_credentials:
        return None
    scheme = urlsplit(url).scheme.lower()
    sent = []
    if creds:
        sent.append("origin.credentials")
    elif scheme == "s3":
        sent.append("the ambient AWS credentials")
    if client_cert:
        sent.append(f"the TLS client certificate {o.client_cert!r}")
    if not sent or scheme == "file":
        return None
    why = (f"{o.ca_file.where}: origin.ca_file {o.ca_file.raw!r} comes from the recipe and "
           f"would decide which host receives {' and '.join(sent)} (bound by you to "
           f"{redact_url(url)}): a host with a certificate of the recipe's CA, reached by a "
           "redirected name, would take them")
    return _unbound(why, f"give the origin's CA yourself: {ORIGIN_CA_OPTION} FILE (or "
                         f"{ORIGIN_CA_ENV}=FILE), which replaces the recipe's "
                         "origin.ca_file; or, only for a "
                         "recipe you trust, pass --unsafe-unbound-credentials",
                    dry_run=dry_run, note=". This dry run sends no credentials and "
                    "presents no client certificate")


def _unbound(why: str, hint: str, *, dry_run: bool, note: str = "") -> str:
    """Something a recipe would send to an origin of its choosing, not bound to one
    (``why``; ``hint``: how to bind it): refused (ConfigError, nothing sent), or, in a
    dry run, which sends nothing, the note of what the real run refuses."""
    if dry_run:
        return f"a real run would be refused: {why}. To run it: {hint}{note}"
    raise ConfigError(f"{why}; nothing was sent", hint=hint)


def validate(recipe: Recipe, options: ReleaseOptions, *, now: dt.datetime,
             dry_run: bool = False) -> Validated:
    """Everything that can be checked before anything is created (with ``dry_run``,
    nothing is created at all: a git-pinned iPXE source is not cloned)."""
    allow = options.allow_outside
    if recipe.directory is not None and os.path.exists(recipe.source):
        # the recipe chooses everything below: its writers would choose the release
        _trusted(recipe, options, Path(recipe.source), "recipe", recipe.source)
    inputs = _inputs(recipe, options)  # its own files first: a path escape names them
    ca_home = options.ca_home or resolve_path(recipe, recipe.ca_home, "ca.home",
                                              allow_outside=allow, kind="dir")
    s = recipe.signer
    cert = resolve_path(recipe, s.cert, "signer.cert", allow_outside=allow) if s.cert else None
    chain = (resolve_path(recipe, s.chain, "signer.chain", allow_outside=allow)
             if s.chain else None)
    for given, what in ((cert, "signer.cert"), (chain, "signer.chain")):
        if given is not None:  # the chain the signatures carry, what iPXE is shown
            _trusted(recipe, options, given, what, s.where)
    key = s.key
    if key.scheme == "file":
        # a key file is a recipe path like the others (recipe-relative, inside its root)
        key = KeyRef("file", str(resolve_path(recipe, RecipePath(key.value, s.where),
                                              "signer.key", allow_outside=allow)))
    try:
        pending = resolve_signer(key, pki=ca_home, cert=cert, chain=chain, now=now,
                                 pkcs11_module=options.pkcs11_module)
    except ConfigError as exc:
        raise ConfigError(f"{s.where}: {exc.message}", hint=exc.hint) from None
    subject = pending.certificate.subject.rfc4514_string()
    if clean(subject) != subject:
        # shown in the plan, the manifest and on terminals: refused rather than escaped
        raise ConfigError(f"{s.where}: the signing certificate's subject {clean(subject)} "
                          "holds control, format or other unprintable characters",
                          hint="sign with a certificate of the CA whose subject is plain "
                               "text (trustboot ca issue codesign NAME)")
    check_lifetime(pending, recipe, ca_home, now)
    signer_name = s.name or _cn(pending.certificate)
    if signer_name is None:
        raise ConfigError(f"{s.where}: the signing certificate has no common name",
                          hint="set signer.name to a DNS name of its subjectAltName")
    syntax.check_word(signer_name, "signer name")
    passphrases = _secret_source(recipe, options, signing_key=True)

    # The same trust as `ipxe build --pki`: the root checked against the CA's index, both
    # roots during a root rotation, then the recipe's extra roots.
    extra_roots = []
    for p in recipe.ipxe.extra_roots if recipe.ipxe is not None else ():
        path = resolve_path(recipe, p, "ipxe.extra_roots", allow_outside=allow)
        _trusted(recipe, options, path, "ipxe.extra_roots", p.where)  # the firmware trusts it
        with _at(recipe, p.where):  # each one's refusal at its own line
            extra_roots.append(load_single_certificate(path))  # read once: what is built in
    trust_inputs = collect_trust(ca_home, extra_roots, [])
    roots = list(trust_inputs.trust)
    extra_certs = list(trust_inputs.certs)

    o = recipe.origin
    url = options.origin_url or (o.url if o else None)
    if url is None:
        raise ConfigError(f"{recipe.source}: the recipe has no origin",
                          hint="add origin: {url: ..., public_url: ...}")
    where = o.where if o else recipe.source
    with _at(recipe, where):
        local = origin_dir(url)
    if local is not None and options.origin_url is None:
        target = local.resolve()
        roots_ok = [recipe.directory.resolve()] if recipe.directory else []
        roots_ok += [Path(a).resolve() for a in allow]
        if not any(target == r or target.is_relative_to(r) for r in roots_ok):
            raise ConfigError(f"{where}: origin directory {target} is outside the recipe's "
                              "directory", hint=f"pass --allow-outside {target} if the recipe "
                              "may publish there")
    public = _public_base(url, options.public_url or (o.public_url if o else None), where)
    entry_path = check_entry_path(o.entry if o else "boot.ipxe")  # the recipe checked it
    ca_file = options.origin_ca_file
    if ca_file is None and o is not None and o.ca_file is not None:
        ca_file = resolve_path(recipe, o.ca_file, "origin.ca_file", allow_outside=allow)
        # whose certificates prove the origin to the read-back
        _trusted(recipe, options, ca_file, "origin.ca_file", o.ca_file.where)
    if ca_file is None and urlsplit(url).scheme.lower() in ("https", "s3"):
        # every origin client trusts exactly the CA it is given (publish.http.tls_context),
        # never the system's store: say so here, at the recipe's line, with release's options
        raise ConfigError(
            f"{where}: origin {redact_url(url)} has no CA to check its TLS certificate "
            "with (trustboot never uses the system's trust store)",
            hint="add origin.ca_file: the CA certificate (PEM) that issued the origin's TLS "
                 f"certificate, or pass {ORIGIN_CA_OPTION} FILE (or {ORIGIN_CA_ENV}=FILE)")
    creds = None
    if o is not None and o.credentials is not None:
        creds = _origin_credentials(recipe, o.credentials, url, o.endpoint, options)
    warnings: list[str] = []
    if creds is None and urlsplit(url).scheme.lower() == "s3":
        note = _ambient_credentials(recipe, url, o.endpoint if o else None, where, options,
                                    dry_run=dry_run)
        if note is not None:
            warnings.append(note)

    client_cert = client_key = None
    client_pass: PassphraseSource | None = None
    if o is not None and o.client_cert is not None:
        client_cert = ca_home / "issued" / f"{o.client_cert}.crt"
        client_key = ca_home / "private" / f"{o.client_cert}.key"
        if not client_cert.is_file() or not client_key.is_file():
            raise ConfigError(f"{where}: origin.client_cert {o.client_cert!r} is not a "
                              f"client certificate of the CA in {ca_home}",
                              hint=f"trustboot ca issue client {o.client_cert} --pki {ca_home}")
        note = _client_cert_binding(recipe, o.client_cert, url, where, options,
                                    dry_run=dry_run)
        if note is not None:
            # a dry run of an unbound certificate: what it lists, it lists without it
            # (and its key's passphrase is not asked for)
            warnings.append(note)
            client_cert = client_key = None
        else:
            client_pass = _secret_source(recipe, options, o.client_key_passphrase)
    note = _recipe_ca_binding(recipe, url, creds is not None, client_cert is not None,
                              options, dry_run=dry_run)
    if note is not None:
        # a dry run: it sends no credentials, and presents no certificate either
        warnings.append(note)
        client_cert = client_key = None
        client_pass = None
    published = _published(recipe, options, ca_home, key,
                           (client_cert, client_key) if o is not None and o.client_cert
                           else ())
    for i in inputs:  # before anything is cloned, unlocked or sent
        published.check_path(i.path, f"entries {i.key} ({i.role})", i.where)
    spec = recipe.ipxe
    chain_script = render_chain_script(ChainScript(
        url=public + entry_path, signer=signer_name, ntp_server=spec.ntp if spec else None,
        on_failure=spec.on_failure if spec else DEFAULT_ON_FAILURE))
    firmware = _firmware(recipe, options, roots, extra_certs, chain_script, allow,
                         dry_run=dry_run)
    for fw_target, fw_path in firmware.prebuilt_files:  # published too
        published.check_path(fw_path, f"ipxe.prebuilt {fw_target}",
                             spec.prebuilt.where if spec and spec.prebuilt else where)
    published = dataclasses.replace(published, names={
        **{path: (f"ipxe.prebuilt {t}", spec.prebuilt.where if spec and spec.prebuilt
                  else where) for t, path in firmware.prebuilt_files},
        **{i.path: (f"entries {i.key} ({i.role})", i.where) for i in inputs}})
    return Validated(recipe=recipe, ca_home=ca_home, signer=pending, signer_name=signer_name,
                     passphrases=passphrases, roots=tuple(roots),
                     extra_certs=tuple(extra_certs), origin_url=url, public_base=public,
                     entry_path=entry_path, origin_ca_file=ca_file, credentials=creds,
                     client_cert=client_cert, client_key=client_key,
                     endpoint=o.endpoint if o else None,
                     client_key_passphrase=client_pass,
                     inputs=tuple(inputs), firmware=firmware,
                     readback_base=_public_base(options.readback_url, None, where)
                     if options.readback_url else public, warnings=tuple(warnings),
                     published=published, unsafe_shared_origin=options.unsafe_shared_origin,
                     revocations=Revocations.load(crl=options.crl)
                     if options.crl is not None else None)


def _published(recipe: Recipe, options: ReleaseOptions, ca_home: Path, key: KeyRef,
               client: Sequence[Path | None]) -> Published:
    """What the release's published files may not be (see Published): the secrets this
    run reads, found by file identity (a hard link, or a link, to one is the same file)."""
    secrets: dict[tuple[int, int], str] = {}

    def add(path: Path | None, what: str) -> None:
        if path is None:
            return
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return  # what reads it reports it
        secrets.setdefault((st.st_dev, st.st_ino), what)

    def add_ref(ref: SecretRef | None, what: str) -> None:
        if ref is not None and ref.file is not None and recipe.directory is not None:
            add(recipe.directory / ref.file.raw, f"{what} {ref.file.raw} ({ref.file.where})")

    for given in options.secret_files:
        add(given, f"the passphrase file {given} (--passphrase-file)")
    add_ref(recipe.signer.passphrase, "the signer's passphrase file")
    o = recipe.origin
    if o is not None:
        add_ref(o.credentials, "the origin's credentials file")
        add_ref(o.client_key_passphrase, "the client key's passphrase file")
    if key.scheme == "file":
        add(Path(key.value), f"the signing key {key.value}")
    for c in client:
        add(c, f"the origin's TLS client certificate or key {c}")
    roots = tuple(Path(os.path.realpath(r)) for r in (
        *((recipe.directory,) if recipe.directory is not None else ()),
        *options.allow_outside))
    return Published(ca_home=Path(os.path.realpath(ca_home)), secrets=secrets, roots=roots)


def _firmware_identity(fw: Firmware, toolchain: Callable[[], Mapping[str, str]],
                       accept: cms_sign.Accept | None = None) -> Any:
    if fw.mode == "build" and fw.pinned is not None and fw.request is None:
        return {"git": fw.pinned[0], "commit": fw.pinned[1]}  # a dry run's stand-in
    if fw.mode == "build":
        assert fw.request is not None
        return {"cache_key": ipxe_build.cache_key(fw.request, toolchain())}
    if fw.mode == "prebuilt":
        return {t: cms_sign.hash_file(path, ["sha256"], accept=accept)[0]["sha256"].hex()
                for t, path in fw.prebuilt_files}
    return None


def render_id(template: str, *, name: str, digest: str, now: dt.datetime) -> str:
    return check_release_id(fill_id(template, name=name, digest=digest, now=now))


def _hash_inputs(paths: Sequence[Path], hash_name: str,
                 progress: cms_sign.ProgressFactory | None,
                 cache: PublishCache | None,
                 accept: cms_sign.Accept | None = None) -> dict[Path, cms_sign.Hashed]:
    """Digest the inputs; with ``cache`` (SHA-256 signing only), an input unchanged since
    an earlier run (same device, inode, size, mtime and ctime) is not read again.
    ``accept``: each file as it is opened (or, known to the cache, as it is now)."""
    from trustboot.cms.digest import RACY_WINDOW_NS, file_stamp, remember

    out: dict[Path, cms_sign.Hashed] = {}
    todo: list[tuple[Path, os.stat_result | None]] = []
    for path in paths:
        try:
            st: os.stat_result | None = os.stat(path)
        except OSError:
            st = None  # hash_files reports it with its context
        if st is not None and accept is not None:
            accept(path, st)
        known = (cache.local_digest(path, st) if cache is not None and st is not None
                 and hash_name == "sha256" else None)
        if known is not None and st is not None:
            digests = {"sha256": bytes.fromhex(known)}
            out[path] = cms_sign.Hashed(path, st.st_size, digests)
            remember(st, digests)  # the upload need not hash it either
        else:
            todo.append((path, st))
    started = time.time_ns()
    for h, (path, before) in zip(cms_sign.hash_files([p for p, _ in todo], hash_name,
                                                     progress=progress, accept=accept),
                                 todo, strict=True):
        out[path] = h
        if cache is not None and before is not None and "sha256" in h.digests and \
                started - max(before.st_mtime_ns, before.st_ctime_ns) > RACY_WINDOW_NS:
            with contextlib.suppress(OSError):
                if file_stamp(os.stat(path)) == file_stamp(before):
                    cache.remember_local(path, before, h.digests["sha256"].hex())
    return {path: out[path] for path in paths}


def plan(v: Validated, *, now: dt.datetime,
         progress: cms_sign.ProgressFactory | None = None,
         toolchain: Mapping[str, str] | None = None,
         cache: PublishCache | None = None, save_cache: bool = True,
         known: Mapping[Path, cms_sign.Hashed] | None = None) -> Plan:
    """Hash the inputs, derive the release id and list the objects (``save_cache=False``:
    the cache is read, never written, as a dry run promises). ``known``: inputs already
    hashed (while they were staged on the origin, see release.staging)."""
    paths = list(dict.fromkeys(i.path for i in v.inputs))
    known = known or {}
    hashed = dict(known)
    hashed.update(_hash_inputs([p for p in paths if p not in known], v.hash_name, progress,
                               cache, v.published.accept if v.published else None))
    if cache is not None and save_cache:
        cache.save()
    r = v.recipe

    def tools() -> Mapping[str, str]:
        return toolchain if toolchain is not None else ipxe_build.check_toolchain(
            v.firmware.targets)

    doc = {
        "format": RELEASE_FORMAT, "name": r.name,
        "entries": [{"name": e.name, "title": e.title, "arch": list(e.arch),
                     "cmdline": e.cmdline, "default": e.default} for e in r.entries],
        "inputs": {i.key: hashed[i.path].digests["sha256"].hex() for i in v.inputs},
        "menu": {"title": r.menu.title, "timeout": r.menu.timeout},
        "signer": v.signer.certificate.fingerprint(hashes.SHA256()).hex(),
        "signer_name": v.signer_name, "hash": v.hash_name,
        "roots": [c.fingerprint for c in v.roots],
        "firmware": _firmware_identity(v.firmware, tools,
                                       v.published.accept if v.published else None),
        "public_base": v.public_base, "entry_path": v.entry_path,
        "on_failure": v.on_failure,
    }
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    release_id = render_id(r.release.id_template, name=r.name, digest=digest, now=now)
    p = Plan(v=v, release_id=release_id, digest=digest, hashed=hashed,
             firmware_identity=doc["firmware"])
    for i in v.inputs:
        h = hashed[i.path]
        p.objects.append({"key": i.key, "path": i.path, "role": i.role, "size": h.size,
                          "sha256": h.digests["sha256"].hex()})
    for t in v.firmware.targets if v.firmware.mode != "skipped" else ():
        p.objects.append({"key": firmware_key(t), "path": None, "role": "firmware",
                          "target": t, "size": None, "sha256": None})
    return p


def root_anchor(cert: Certificate) -> rules.TrustAnchor:
    return rules.TrustAnchor(rules.fingerprint(cert.der), cert.der, cert.subject)


def cert_der(cert: Certificate) -> bytes:
    return cert.der
