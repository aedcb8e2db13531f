"""The signing workflow, shared by `trustboot sign` and the release pipeline.

Validate every option, resolve the key reference, refuse a signer iPXE would reject (or the
pki revoked) before any secret is asked for, unlock the key (or log in to the token) once
while the files are hashed, sign, write every .sig atomically, then the manifest. Nothing
here prints or prompts: secrets come from callbacks, warnings go to ``on_warning``.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trustboot.cms.digest import HashJob, ProgressFactory
from trustboot.errors import ConfigError, OperationalError
from trustboot.keys.algorithms import HashAlgorithm, KeyAlgorithm
from trustboot.keys.ref import KeyRef, parse_ref
from trustboot.run import run_scope
from trustboot.secrets import PassphraseSource

if TYPE_CHECKING:
    from trustboot.cms.certinfo import IpxeVersion
    from trustboot.cms.forked import SignAhead
    from trustboot.cms.sign import Signed, TargetDirs
    from trustboot.keys.keyfile import KeyLoad

# This module imports only the standard library and light trustboot modules at load time:
# a caller validates options and starts a HashJob first, and the signing stack
# (cryptography, asn1crypto, iPXE's rules) is imported inside sign_paths while it hashes.

MAX_EXPIRY_WARNING_DAYS = 36500
# A --files-from list larger than this is not a list of files.
MAX_FILE_LIST_BYTES = 64 << 20

Warn = Callable[[str], None]


@dataclass
class SignRun:
    """What one signing run did: the signed files and the manifest written for them."""

    ref: KeyRef
    signer_subject: str
    hash: HashAlgorithm
    signed_at: dt.datetime
    results: list[Signed]
    warnings: list[str] = field(default_factory=list)

    def manifest(self) -> dict[str, Any]:
        return {"signer": self.signer_subject, "key": str(self.ref), "hash": self.hash.value,
                "signed_at": self.signed_at.isoformat(),
                "files": [r.to_json() for r in self.results]}


def check_options(
    paths: Sequence[Path], *, out_dir: Path | None, manifest: Path | None,
    expiry_warning_days: int,
) -> None:
    """Refuse bad options before any work: nothing is written when one is wrong."""
    from trustboot.fsutil import check_owned_dir, check_parents

    if not paths:
        raise ConfigError("no files to sign", hint="pass FILES or --files-from LIST")
    if not 0 <= expiry_warning_days <= MAX_EXPIRY_WARNING_DAYS:
        raise ConfigError(
            f"--expiry-warning-days {expiry_warning_days} is out of range",
            hint=f"use 0 to {MAX_EXPIRY_WARNING_DAYS} days")
    for path in paths:
        if not path.is_file():  # also refuses FIFOs and devices, which could block or not end
            raise OperationalError(f"cannot sign {path}: not a readable regular file",
                                   hint="check the path")
    # an existing output directory must be ours and not writable by others (the rule of
    # every --out, fsutil.make_output_dir): they could swap what we write before it is used
    if out_dir is not None:
        _check_can_create_dir(out_dir, "--out")
        check_parents(out_dir, "--out directory")
        if out_dir.is_dir():
            check_owned_dir(out_dir, "--out directory")
    if manifest is not None:
        if manifest.is_dir():
            raise OperationalError(f"--manifest {manifest} is a directory",
                                   hint="name the manifest file itself")
        check_parents(manifest.parent, "--manifest directory")
        if manifest.parent.is_dir():
            check_owned_dir(manifest.parent, "--manifest directory")
        # Like --out, missing directories are created (0755), once the signatures exist.
        parent = manifest.parent
        _check_can_create_dir(parent, "--manifest")
        if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
            raise OperationalError(f"cannot write manifest {manifest}: {parent} is not writable",
                                   hint="choose a writable directory")


def _check_can_create_dir(path: Path, option: str) -> None:
    """``path`` is a directory, or the nearest existing ancestor is one we can write in."""
    current = path
    while not current.exists() and current != current.parent:
        if current.is_symlink():  # a dangling link: mkdir would fail on it
            break
        current = current.parent
    if not current.is_dir():
        raise OperationalError(f"{option} {path}: {current} is not a directory",
                               hint=f"choose another {option} directory")
    if current != path and not os.access(current, os.W_OK | os.X_OK):
        raise OperationalError(f"{option} {path}: cannot create it in {current}",
                               hint="choose a writable directory")


def read_file_list(data: bytes, origin: str) -> list[Path]:
    """Paths from a --files-from list: one per line, blank lines ignored."""
    if len(data) > MAX_FILE_LIST_BYTES:
        raise ConfigError(f"file list {origin} is larger than {MAX_FILE_LIST_BYTES >> 20} MiB",
                          hint="split it over several calls")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"file list {origin} is not UTF-8",
                          hint="one path per line, UTF-8") from None
    if "\0" in text:
        raise ConfigError(f"file list {origin} contains a NUL byte",
                          hint="one path per line (newline-separated, not -print0)")
    # Lines end at "\n" alone (a "\r" before it is dropped: a list written on Windows):
    # str.splitlines() also splits at \v, \f, \x1c-\x1e, U+0085, U+2028 and U+2029,
    # which a file name may hold, and would sign pieces of a name instead of the file.
    lines = (line.removesuffix("\r") for line in text.split("\n"))
    return [Path(line) for line in lines if line.strip()]


def sign_paths(
    paths: Sequence[Path],
    key_ref: KeyRef | str,
    *,
    secrets: PassphraseSource,
    pins: PassphraseSource | None = None,
    pki: Path | None = None,
    cert: Path | None = None,
    chain: Path | None = None,
    hash_name: HashAlgorithm | str = HashAlgorithm.SHA256,
    out_dir: Path | None = None,
    manifest: Path | None = None,
    now: dt.datetime | None = None,
    progress: ProgressFactory | None = None,
    ipxe_version: IpxeVersion | None = None,
    expiry_warning_days: int = 30,
    pkcs11_module: Path | None = None,
    on_warning: Warn | None = None,
    unlock_first: bool = False,
    hashing: HashJob | None = None,
    key_ahead: KeyLoad | None = None,
    reads: Sequence[tuple[Path, str]] = (),
) -> SignRun:
    """Sign ``paths`` with the key ``key_ref`` names; every FILE.sig or none is written.

    ``secrets`` answers passphrase requests (key files), ``pins`` PIN requests (tokens;
    defaults to ``secrets``). ``unlock_first``: ask for the secret before hashing (when it
    comes from a prompt, so a progress display does not run under it); otherwise the key is
    unlocked while the files are hashed. ``hashing``: a HashJob the caller started earlier
    for the same files and hash (so hashing overlaps its imports), after passing the same
    arguments to :func:`check_options` (here they are checked only without one); cancelled
    on failure. ``key_ahead``: the unlocking of a ``file:`` key the caller began earlier
    with ``secrets`` (keys.keyfile.start_signing_key_load, so the KDF overlaps its
    imports), after starting ``hashing`` (a HashJob forks only while no other thread
    runs); used when it is this reference's key file, and finished before this returns or
    raises either way; with ``hashing`` and enough files, the signatures are begun with
    that key before the reference is resolved (see :func:`_sign_ahead`). ``reads``: other
    files the caller read for this run (a secret file, the file list), as (path, option):
    no output may replace them, nor the key, certificate, chain or module files, nor go
    inside ``pki``.
    """
    paths = list(paths)
    hash_alg = HashAlgorithm.parse(hash_name)
    if hashing is None:
        check_options(paths, out_dir=out_dir, manifest=manifest,
                      expiry_warning_days=expiry_warning_days)
    now = now or dt.datetime.now(dt.UTC)
    ref = parse_ref(key_ref) if isinstance(key_ref, str) else key_ref
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        if on_warning is not None:
            on_warning(message)

    if hashing is not None and (hashing.paths != paths or hashing.hash != hash_alg):
        raise ValueError("the hashing job was started for other files or another hash")
    ahead = _sign_ahead(hashing, key_ahead) if ref.scheme == "file" else None
    job = hashing
    dirs: TargetDirs | None = None
    try:
        from trustboot.cms.certinfo import DEFAULT_IPXE
        from trustboot.cms.sign import (
            TargetDirs,
            check_targets,
            open_signature_dirs,
            preflight,
            sign_hashed,
        )

        dirs = TargetDirs()  # the .sig files' directories, each opened once
        from trustboot.keys.signer import PendingSigner, resolve_signer

        ipxe_version = ipxe_version or DEFAULT_IPXE
        # one run: a token's module is initialised once for resolving and signing
        with run_scope():
            source = resolve_signer(ref, pki=pki, cert=cert, chain=chain, now=now,
                                    pkcs11_module=pkcs11_module)
            # Refuse a doomed signer before asking for its secret (an ECDSA key for an
            # iPXE older than 2.0.0 included: verify's unsupported-algorithm rule).
            verdict = preflight(source, now=now, ipxe_version=ipxe_version)
            for finding in verdict.warnings:
                warn(f"{finding.message}\n  hint: {finding.remedy}")
            if ref.scheme == "pkcs11":
                from trustboot.keys.pkcs11 import files_named

                reads = [*reads, *files_named(ref.value)]
            kept = [*reads, *[(p, what) for p, what in (
                (ref.path if ref.scheme == "file" else None, "the key file"),
                (cert, "--signing-cert"), (chain, "--signing-chain"),
                (pkcs11_module, "--pkcs11-module")) if p is not None]]
            check_targets(paths, out_dir, manifest=manifest, reads=kept,
                          homes=[(pki, "the CA home")] if pki is not None
                          and (pki / "index.json").is_file() else [])
            open_signature_dirs(paths, out_dir, dirs)  # without --out, each FILE's
            if key_ahead is not None and not (isinstance(source, PendingSigner)
                                              and source.adopt(key_ahead)):
                key_ahead.wait()  # another key's: no thread may run when signing forks
            wants_pin = source.secret_kind == "pin"  # noqa: S105 - a kind, not a secret
            secret = pins if (pins is not None and wants_pin) else secrets
            with ExitStack() as stack:
                if job is None and not unlock_first:
                    # Hash on a second core while the key's KDF (or the token login) runs.
                    job = HashJob(paths, hash_alg, progress=progress)
                # little data, hashed here while the key's KDF runs (once: what is signed
                # is what this read)
                hashed = job.result() if job is not None and job.inline else None
                signer = stack.enter_context(source.open(secret))
                # The key is unlocked now (or a token session open): no forked hashers, which
                # would each hold a copy of it.
                if hashed is None:
                    hashed = job.result() if job is not None else HashJob(
                        paths, hash_alg, progress=progress, fork=False).result()
                # The opened signer holds the source's certificate and chain: its preflight
                # and the targets' check above stand.
                same = (signer.certificate == source.certificate
                        and tuple(signer.chain) == tuple(source.chain))
                results = sign_hashed(hashed, signer, hash_name=hash_alg, out_dir=out_dir,
                                      now=now, ipxe_version=ipxe_version,
                                      preflighted=verdict if same else None, ahead=ahead,
                                      dirs=dirs)
    except BaseException:
        if job is not None:
            job.cancel()  # stop reading files nobody will sign
        if key_ahead is not None:
            key_ahead.wait()  # not used: still, no thread of ours outlives the call
        raise
    finally:
        if dirs is not None:
            dirs.close()
        if ahead is not None:
            ahead.close()  # taken, or dropped: no signer process outlives the call
    ends = min(r.chain_not_after for r in results)
    if ends - now < dt.timedelta(days=expiry_warning_days):
        warn(f"these signatures stop verifying on {ends.isoformat()} "
             f"({(ends - now).days} days): iPXE checks the chain against the client's clock "
             "at boot; renew the signing certificate and re-sign before then")
    if signer.algorithm == KeyAlgorithm.ECDSA:
        warn("ECDSA signatures verify only in iPXE 2.0.0 and later")
    run = SignRun(ref, signer.certificate.subject.rfc4514_string(), hash_alg, now, results,
                  warnings)
    if manifest is not None:
        import json

        from trustboot.fsutil import atomic_write, make_output_dir

        make_output_dir(manifest.parent, "--manifest directory")  # 0755, as --out
        try:
            atomic_write(manifest,
                         (json.dumps(run.manifest(), indent=2, sort_keys=True) + "\n").encode())
        except OSError as exc:
            raise OperationalError(f"cannot write manifest {manifest}: {exc.strerror}",
                                   hint="check the directory; the signatures were written"
                                   ) from None
    return run


# What signing imports after _sign_ahead's fork, leaves first: imported while the key
# unlocks instead (tests/cms/test_sign_ahead.py keeps the list to modules signing imports).
_SIGNING_STACK = (
    "asn1crypto.core", "asn1crypto.algos", "asn1crypto.keys", "asn1crypto.x509",
    "asn1crypto.cms", "cryptography.x509", "trustboot.cms._asn1", "trustboot.cms.certinfo",
    "trustboot.cms.verify", "trustboot.fsutil", "trustboot.cms.sign", "trustboot.ca.profiles",
    "trustboot.ca.store", "trustboot.keys.signer",
)


def _sign_ahead(hashing: HashJob | None, key_ahead: KeyLoad | None) -> SignAhead | None:
    """Many small files, a key file unlocked without a prompt, both begun by the caller:
    the signatures are made from now on, on every core, while the signing stack is
    imported and the signer and targets are checked (about a third of a run of 500 small
    files); nothing is written before those checks pass (cms.forked.SignAhead). The
    imports begin here, while the key is still being unlocked (a wait of ~50 ms that
    left a core idle), and go on after the fork. None
    where sign_many would not fork either, where the key or a file failed (the error is
    raised where it is without this head start), or where the files are large: their
    hashing would then be waited for here, and a signer the checks refuse is refused
    while they are still being hashed."""
    import threading

    from trustboot.cms.forked import AHEAD_MAX_BYTES, PARALLEL_SIGN_MIN

    cores = os.cpu_count() or 1
    if (hashing is None or key_ahead is None or len(hashing.paths) < PARALLEL_SIGN_MIN
            or hashing.total > AHEAD_MAX_BYTES or cores < 2 or not hasattr(os, "fork")):
        return None
    if hashing.inline:  # little data, hashed here first: the KDF has the other core
        try:
            hashing.result()
        except Exception:  # raised again by sign_paths, where it belongs
            return None
    # The unlock is what the signers wait for: meanwhile this thread imports what it
    # needs after the fork, one module at a time (so the fork waits for one at most).
    import importlib

    for name in _SIGNING_STACK:
        if not key_ahead.running():
            break
        importlib.import_module(name)
    key = key_ahead.loaded()
    try:
        hashed = hashing.result()
    except Exception:  # raised again by sign_paths, where it belongs
        return None
    if key is None or threading.active_count() > 1:  # forking with threads is unsafe
        return None
    from trustboot.cms.forked import SignAhead

    return SignAhead(key, [h.digests[hashing.hash.value] for h in hashed], hashing.hash,
                     workers=min(cores, 8))
