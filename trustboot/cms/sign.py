"""Detached CMS signatures that iPXE's ``imgverify`` accepts.

The image is hashed in fixed-size chunks (memory does not grow with the file), the signer
signs the digest, and the SignedData is plain DER: no signed attributes (iPXE checks the
signature over the image digest itself), signer named by issuer and serial, every
certificate of the chain including the root (iPXE's TRUST= holds only fingerprints).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from asn1crypto import algos
from asn1crypto import cms as acms
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trustboot.cms import verify as rules
from trustboot.cms.certinfo import DEFAULT_IPXE, IpxeVersion, verify_raw

# Hashing was defined here first; callers still import it from here.
from trustboot.cms.digest import CHUNK as CHUNK
from trustboot.cms.digest import PARALLEL_MIN_SIZE as PARALLEL_MIN_SIZE
from trustboot.cms.digest import Accept as Accept
from trustboot.cms.digest import Cancelled as Cancelled
from trustboot.cms.digest import Hashed as Hashed
from trustboot.cms.digest import Progress as Progress
from trustboot.cms.digest import ProgressFactory as ProgressFactory
from trustboot.cms.digest import hash_file as hash_file
from trustboot.cms.digest import hash_files as hash_files
from trustboot.cms.forked import PARALLEL_SIGN_MIN as PARALLEL_SIGN_MIN
from trustboot.cms.forked import ForkedBatch, SignAhead
from trustboot.errors import ConfigError, OperationalError, VerificationError
from trustboot.fsutil import (
    SYNCFS_FILESYSTEMS,
    check_owned_dir,
    filesystem_type,
    fsync_dir,
    make_output_dir,
    open_checked_dir,
    quiet_writeback,
    raise_open_files_limit,
    remove_stale_temps,
    syncfs,
    temp_stem,
    write_temp,
)
from trustboot.keys.algorithms import HashAlgorithm
from trustboot.keys.signer import KeySigner, KeySource, Signer
from trustboot.run import first_in_run

HASH_NAMES = tuple(h.value for h in HashAlgorithm)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def der_tlv(tag: int, body: bytes) -> bytes:
    """One DER TLV (definite length): what iPXE's parser and UEFI firmware accept."""
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + body


class SignedDataTemplate:
    """Everything of the SignedData but the signature value, encoded once.

    Signing many files with one signer then costs one signature and a few byte joins per
    file instead of rebuilding (and re-parsing) the certificates every time.
    """

    def __init__(self, certificate: bytes, chain: Sequence[bytes], hash_name: str,
                 algorithm: str) -> None:
        placeholder = build_signed_data(certificate, chain, hash_name, algorithm, b"")
        info = acms.ContentInfo.load(placeholder)
        sd = info["content"]
        si = sd["signer_infos"][0]
        self._head = b"".join(sd[f].dump() for f in (
            "version", "digest_algorithms", "encap_content_info", "certificates"))
        self._si_head = b"".join(si[f].dump() for f in (
            "version", "sid", "digest_algorithm", "signature_algorithm"))
        self._signed_data_oid = info["content_type"].dump()

    def render(self, signature: bytes) -> bytes:
        signer_info = der_tlv(0x30, self._si_head + der_tlv(0x04, signature))
        signed_data = der_tlv(0x30, self._head + der_tlv(0x31, signer_info))
        return der_tlv(0x30, self._signed_data_oid + der_tlv(0xA0, signed_data))


def build_signed_data(
    certificate: bytes, chain: Sequence[bytes], hash_name: str, algorithm: str,
    signature: bytes,
) -> bytes:
    """Assemble the ContentInfo(SignedData) as DER."""
    leaf = ax509.Certificate.load(certificate)
    tbs = leaf["tbs_certificate"]
    if algorithm == "rsa":
        sig_alg = algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15"})
    elif algorithm == "ecdsa":
        sig_alg = algos.SignedDigestAlgorithm({"algorithm": f"{hash_name}_ecdsa"})
    else:
        raise ValueError(f"unknown signature algorithm {algorithm}")
    digest_alg = algos.DigestAlgorithm({"algorithm": hash_name})
    signer_info = acms.SignerInfo({
        "version": "v1",
        "sid": acms.SignerIdentifier({
            "issuer_and_serial_number": acms.IssuerAndSerialNumber({
                "issuer": tbs["issuer"],
                "serial_number": tbs["serial_number"],
            }),
        }),
        "digest_algorithm": digest_alg,
        "signature_algorithm": sig_alg,
        "signature": signature,
    })
    certs = [leaf] + [ax509.Certificate.load(der) for der in chain]
    signed_data = acms.SignedData({
        "version": "v1",
        "digest_algorithms": [digest_alg],
        "encap_content_info": {"content_type": "data"},
        "certificates": certs,
        "signer_infos": [signer_info],
    })
    info = acms.ContentInfo({"content_type": "signed_data", "content": signed_data})
    return bytes(info.dump())


@dataclass(frozen=True)
class Signed:
    """One signed file, as reported in the manifest."""

    path: Path
    size: int
    sha256: str
    hash_name: str
    signature_path: Path
    signer_subject: str
    signer_not_after: dt.datetime
    chain_not_after: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "size": self.size, "sha256": self.sha256,
            "hash": self.hash_name, "signature": str(self.signature_path),
            "signer_subject": self.signer_subject,
            "signer_not_after": self.signer_not_after.isoformat(),
            "chain_not_after": self.chain_not_after.isoformat(),
        }


def preflight(signer: Signer | KeySource, *, now: dt.datetime,
              ipxe_version: IpxeVersion = DEFAULT_IPXE) -> rules.Verdict:
    """Refuse a signer iPXE would reject (chain judged against its own root at ``now``).

    Stricter than the client on time: a certificate outside its validity right now is
    refused even if iPXE's 12h30m margin would still take it.
    """
    cert = signer.certificate
    for c in [cert, *signer.chain]:
        if c.not_valid_after_utc < now:
            raise VerificationError(
                f"certificate {c.subject.rfc4514_string()} expired on "
                f"{c.not_valid_after_utc.isoformat()}; refusing to sign [rule: expired]",
                hint="renew it (trustboot ca issue) and sign with the new certificate",
                rule="expired", subject=c.subject.rfc4514_string())
        if c.not_valid_before_utc > now:
            raise VerificationError(
                f"certificate {c.subject.rfc4514_string()} is not valid before "
                f"{c.not_valid_before_utc.isoformat()}; refusing to sign [rule: not-yet-valid]",
                hint="wait, or reissue it with an earlier notBefore",
                rule="not-yet-valid", subject=c.subject.rfc4514_string())
    chain = [_der(c) for c in signer.chain]
    if not chain or signer.chain[-1].subject != signer.chain[-1].issuer:
        raise VerificationError(
            f"the chain of {cert.subject.rfc4514_string()} does not end at a root "
            "certificate; iPXE needs the root's bytes in the signature [rule: chain-incomplete]",
            hint="pass the issuers, root included (--signing-chain chain.pem)",
            rule="chain-incomplete", subject=cert.subject.rfc4514_string())
    root = rules.TrustAnchor(rules.fingerprint(chain[-1]), chain[-1])
    verdict = rules.check_signer(_der(cert), chain, trust=[root], now=now,
                                 ipxe_version=ipxe_version)
    if verdict.failure is not None:
        f = verdict.failure
        raise VerificationError(
            f"refusing to sign: iPXE would reject this signer: {f.message} [rule: {f.rule}]",
            hint=f.remedy, rule=f.rule, subject=f.certificate)
    return verdict


def sign_digest(signer: Signer, digest: bytes, hash_name: str) -> bytes:
    """The DER .sig for an image whose ``hash_name`` digest is ``digest``."""
    hash_name = HashAlgorithm.parse(hash_name)
    signature = signer.sign_digest(digest, hash_name)
    return build_signed_data(_der(signer.certificate), [_der(c) for c in signer.chain],
                             hash_name, signer.algorithm, signature)


def signature_path(path: Path, out_dir: Path | None) -> Path:
    return Path(_signature_text(os.fspath(path),
                                None if out_dir is None else os.fspath(out_dir)))


def _signature_text(path: str, out_dir: str | None) -> str:
    """signature_path on path strings (a Path's text, normalised): FILE.sig beside FILE,
    or in ``out_dir``; check_targets calls it per FILE without making a Path."""
    if out_dir is None:
        return path + ".sig"
    name = os.path.basename(path) + ".sig"
    return name if out_dir == "." else os.path.join(out_dir, name)


def check_targets(paths: Sequence[Path], out_dir: Path | None, *,
                  manifest: Path | None = None, reads: Sequence[tuple[Path, str]] = (),
                  homes: Sequence[tuple[Path, str]] = ()) -> None:
    """Refuse outputs that would replace an input or each other: two FILEs signed into
    one .sig, a .sig that is itself one of the FILEs (`sign a a.sig` hashed a.sig, then
    replaced it with a's signature), a ``manifest`` that is a FILE or a .sig, and any
    output onto one of ``reads``, the other files the run reads (its key, certificate,
    chain, secret file, file list: `--manifest sign.key` replaced the key with JSON), or
    inside one of ``homes`` (the CA home: `--manifest pki/index.json` broke the CA).
    ``reads`` and ``homes`` are (path, what it is) pairs, for the message.

    Compared as directory entries (the real parent directory and the name), as the
    outputs are written (a rename replaces the entry, never what a link there points
    to): `a` and `/abs/a` are the same; one realpath per directory, not per file. A
    read file is protected both where it was named and where a link there leads."""
    # Strings, not Path objects: pathlib's parent, join and hashing were most of the
    # ~18 us per file this took idle (500 files: 9-17 ms of a 0.3 s run), now ~8 us.
    real: dict[str, str] = {}

    def entry(path: Path | str) -> tuple[str, str]:
        parent, name = os.path.split(os.fspath(path))  # a Path's text is normalised
        if (where := real.get(parent)) is None:
            where = real[parent] = os.path.realpath(parent or ".")
        return where, name

    protected: dict[tuple[str, str], str] = {}
    for path, what in reads:
        protected[entry(path)] = f"{what} {path}"
        resolved = Path(os.path.realpath(path))
        protected.setdefault((str(resolved.parent), resolved.name), f"{what} {path}")
    within = [(os.path.realpath(home), f"{what} {home}") for home, what in homes]

    inside: dict[str, str | None] = {}  # a real directory -> the home it is in, if any

    def check_kept(target: Path | str, where: tuple[str, str], output: str) -> None:
        if where in protected:
            raise ConfigError(f"{output} {target} would replace {protected[where]}, which "
                              "this run reads", hint="write the signatures (--out) or the "
                              "manifest elsewhere")
        if where[0] not in inside:
            inside[where[0]] = next((what for home, what in within
                                     if os.path.commonpath([home, where[0]]) == home), None)
        if (what := inside[where[0]]) is not None:
            raise ConfigError(f"{output} {target} is inside {what}, which trustboot "
                              "keeps", hint="write the signatures (--out) or the "
                              "manifest outside it")

    inputs = {entry(path): path for path in paths}
    # ... and by the file each input leads to: `lnk -> a.sig` is another entry, but
    # signing `a lnk` hashed the old a.sig and then replaced it (a lnk.sig of nothing);
    # and by each link on the way (`lnk -> a.sig -> file`: the rename replaces the link
    # a.sig, and lnk then leads to the new signature)
    leads_to: dict[tuple[int, int], Path] = {}
    for path in paths:
        for hop in _chain_identities(path):
            leads_to.setdefault(hop, path)
    seen: dict[tuple[str, str], Path] = {}
    out = os.fspath(out_dir) if out_dir is not None else None
    for path in paths:
        target = _signature_text(os.fspath(path), out)  # a Path only for a message
        where = entry(target)
        if where in seen:
            raise ConfigError(f"{path} and {seen[where]} would both be signed into {target}",
                              hint="sign them in separate calls or without --out")
        if where in inputs:
            raise ConfigError(f"{inputs[where]} is one of the files to sign and would be "
                              f"replaced by the signature of {path}",
                              hint="sign it in a separate call, or write the signatures "
                                   "elsewhere with --out")
        if (ident := _identity(target, follow=False)) is not None and ident in leads_to:
            raise ConfigError(f"{leads_to[ident]} is one of the files to sign and leads to "
                              f"{target}, which the signature of {path} would replace",
                              hint="sign it in a separate call, or write the signatures "
                                   "elsewhere with --out")
        check_kept(target, where, "the signature")
        seen[where] = path
    if manifest is not None:
        where = entry(manifest)
        check_kept(manifest, where, "--manifest")
        if where in inputs:
            raise ConfigError(f"--manifest {manifest} is one of the files to sign: the "
                              "manifest would replace it", hint="choose another manifest path")
        if (ident := _identity(manifest, follow=False)) is not None and ident in leads_to:
            raise ConfigError(f"{leads_to[ident]} is one of the files to sign and leads to "
                              f"--manifest {manifest}, which would replace it",
                              hint="choose another manifest path")
        if where in seen:
            raise ConfigError(f"--manifest {manifest} is where the signature of "
                              f"{seen[where]} goes", hint="choose another manifest path")


# Linux follows at most 40 links in one lookup (ELOOP beyond)
_MAX_LINKS = 40


def _chain_identities(path: Path) -> list[tuple[int, int]]:
    """(device, inode) of ``path``'s entry, of each link its last component leads through
    and of the file at the end: every entry a rename could replace to change what
    ``path`` reads. One lstat for a path that is no link."""
    idents: list[tuple[int, int]] = []
    current = os.fspath(path)
    for _ in range(_MAX_LINKS + 1):
        try:
            st = os.lstat(current)
        except (OSError, ValueError):
            break
        idents.append((st.st_dev, st.st_ino))
        if not stat.S_ISLNK(st.st_mode):
            return idents
        try:
            current = os.path.join(os.path.dirname(current), os.readlink(current))
        except OSError:
            break
    # a dangling or looping chain, or one longer than Linux follows: what it reads, if any
    if (end := _identity(path)) is not None:
        idents.append(end)
    return idents


def _identity(path: Path | str, *, follow: bool = True) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` leads to, or (not ``follow``) of what the
    entry holds, a link itself (what a rename onto it replaces); None when missing."""
    try:
        st = os.stat(path, follow_symlinks=follow)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def open_signature_dirs(paths: Sequence[Path], out_dir: Path | None,
                        dirs: TargetDirs) -> None:
    """Without ``out_dir``: each FILE's directory, opened into ``dirs``, refused (exit 3)
    unless only root and we can change it and every directory above it (the rule of
    --out). Another user who could swap it for a link after FILE was read had root
    write NAME.sig wherever root can (a root-only directory's live kernel.sig)."""
    if out_dir is not None:
        return
    # each stays open for the whole run: check the limit of open files first, not at the
    # 1000th directory (EMFILE)
    directories = len(dict.fromkeys(path.parent for path in paths))
    needed = directories + OTHER_FDS
    limit = raise_open_files_limit(needed)
    if limit < needed:
        raise ConfigError(
            f"the {len(paths)} files to sign are in {directories} directories, and a run "
            f"without --out keeps each open: {needed} open files with the run's others, "
            f"more than the limit of open files allows ({limit}, ulimit -n)",
            hint="write the signatures into one directory with --out DIR, split the list "
                 "over several runs, or raise the limit (ulimit -n, as root: ulimit -Hn)")
    for path in paths:
        if dirs.fd(path.parent) is None:
            dirs.open_checked(path.parent, f"the directory of {path}:",
                              hint="write the signatures to a directory only root and you "
                                   "can change with --out DIR")


# What a run may have open besides its target directories: standard streams, the files
# being hashed, forked signers' and hashers' pipes, key and certificate files.
OTHER_FDS = 64


def sign_files(
    paths: Sequence[Path],
    signer: Signer,
    *,
    hash_name: str = "sha256",
    out_dir: Path | None = None,
    now: dt.datetime,
    progress: ProgressFactory | None = None,
    ipxe_version: IpxeVersion = DEFAULT_IPXE,
) -> list[Signed]:
    """Preflight the signer, hash every file, sign, and write each FILE.sig.

    ``progress(path, size)`` is entered around each file's hashing; the callback it yields
    is fed with byte counts.
    """
    report = preflight(signer, now=now, ipxe_version=ipxe_version).signers[0]
    check_targets(paths, out_dir)
    hashed = hash_files(paths, hash_name, progress=progress)
    return _sign(hashed, signer, report, hash_name=hash_name, out_dir=out_dir, now=now,
                 ipxe_version=ipxe_version)


def sign_hashed(
    hashed: Sequence[Hashed],
    signer: Signer,
    *,
    hash_name: str = "sha256",
    out_dir: Path | None = None,
    now: dt.datetime,
    ipxe_version: IpxeVersion = DEFAULT_IPXE,
    preflighted: rules.Verdict | None = None,
    ahead: SignAhead | None = None,
    dirs: TargetDirs | None = None,
) -> list[Signed]:
    """Sign already-digested files; write the .sig files only once all were signed.

    ``preflighted``: what :func:`preflight` returned at ``now`` for a signer with this
    signer's certificate and chain, the caller having run :func:`check_targets` on these
    paths and ``out_dir`` too; neither is done again (each costs milliseconds per run).
    ``ahead``: these digests' signatures begun earlier with the signer's key (see
    cms.forked.SignAhead), taken instead of signing again when they are this signer's.
    ``dirs``: the target directories the caller opened (and checked), see TargetDirs.
    """
    if preflighted is None:
        report = preflight(signer, now=now, ipxe_version=ipxe_version).signers[0]
        check_targets([h.path for h in hashed], out_dir)
    else:
        report = preflighted.signers[0]
    if ahead is not None and not (
            isinstance(signer, KeySigner) and signer.holds(ahead.key)
            and ahead.serves(hash_name, [h.digests[hash_name] for h in hashed])):
        ahead = None  # another key's or other files': dropped by the caller
    return _sign(hashed, signer, report, hash_name=hash_name, out_dir=out_dir, now=now,
                 ipxe_version=ipxe_version, ahead=ahead, dirs=dirs)


def _sign(
    hashed: Sequence[Hashed], signer: Signer, report: rules.SignerReport, *, hash_name: str,
    out_dir: Path | None, now: dt.datetime, ipxe_version: IpxeVersion,
    ahead: SignAhead | None = None, dirs: TargetDirs | None = None,
) -> list[Signed]:
    """sign_hashed() once the signer passed preflight and the targets were checked."""
    with contextlib.ExitStack() as stack:
        if dirs is None:  # the caller opened none: ours for this call
            dirs = stack.enter_context(TargetDirs())
        return _sign_into(hashed, signer, report, hash_name=hash_name, out_dir=out_dir,
                          now=now, ipxe_version=ipxe_version, ahead=ahead, dirs=dirs)


def _sign_into(
    hashed: Sequence[Hashed], signer: Signer, report: rules.SignerReport, *, hash_name: str,
    out_dir: Path | None, now: dt.datetime, ipxe_version: IpxeVersion,
    ahead: SignAhead | None, dirs: TargetDirs,
) -> list[Signed]:
    """_sign() with the target directories ``dirs`` (those not in it yet are opened)."""
    chain = [_der(c) for c in signer.chain]
    root = rules.TrustAnchor(rules.fingerprint(chain[-1]), chain[-1])
    template = SignedDataTemplate(_der(signer.certificate), chain, hash_name, signer.algorithm)
    public_key = signer.certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    subject = signer.certificate.subject.rfc4514_string()
    # The signer verified each signature with this certificate's key already: the same
    # check again would cost ~30 us per file, as much as all the rest of its handling.
    verified = isinstance(signer, KeySigner) and signer.checks_each_signature

    def checked(index: int, signature: bytes, *, trusted: bool = verified) -> bytes:
        """The .sig for file ``index``, once its signature verified (``trusted``: it was,
        with this certificate's key or one equal to it)."""
        item = hashed[index]
        der = template.render(signature)
        # Belt and braces: what is about to be published verifies under iPXE's rules (in
        # full once; after that only the signature value differs between files).
        if index == 0:
            check = rules.verify_signature(der, item.digests, trust=[root], now=now,
                                           ipxe_version=ipxe_version)
            failure = check.failure.message if check.failure else None
        elif trusted:
            failure = None
        else:
            failure = None if verify_raw(public_key, signer.algorithm, hash_name, signature,
                                         digest=item.digests[hash_name]) else "bad signature"
        if failure is not None:
            raise VerificationError(
                f"the signature made for {item.path} does not verify: {failure}",
                hint="this is unexpected: the signer (or its token) misbehaves; report it",
                rule="self-check")
        return der

    targets = [signature_path(h.path, out_dir) for h in hashed]

    def entry(index: int) -> Signed:
        item = hashed[index]
        return Signed(
            path=item.path, size=item.size, sha256=item.digests["sha256"].hex(),
            hash_name=hash_name, signature_path=targets[index],
            signer_subject=subject, signer_not_after=report.not_after,
            chain_not_after=report.chain_not_after,
        )

    results: list[tuple[Signed, bytes] | None] = [None] * len(hashed)
    # Where the directories exist, each .sig goes to its temp file as soon as it is signed
    # (filesystem waits overlap the signing); a --out still to be created is made only once
    # everything was signed, so a failure leaves nothing behind.
    streaming = out_dir is None or out_dir.is_dir()
    if out_dir is not None and streaming:
        check_owned_dir(out_dir, "--out directory")  # see make_output_dir
    if streaming:
        dirs.open_all(t.parent for t in targets)
    # Temp names a forked signer writes to (this process must find them to rename or, on
    # failure, remove them without being told): random per run, then the file's index.
    run_tag = os.urandom(6).hex()
    temps = [t.with_name(f".{temp_stem(t.name)}.{run_tag}.{i}.tmp")
             for i, t in enumerate(targets)]
    _remove_stale_temps(targets, dirs)

    with StagedWrites(files=len(targets), dirs=dirs) as staged:

        def signed(index: int, signature: bytes) -> None:
            results[index] = item = (entry(index), checked(index, signature))
            if streaming:
                staged.add(item[0].signature_path, item[1])

        def in_worker(index: int, signature: bytes) -> bytes:
            # In a forked signer, on its own core: check, encode and (streaming) write.
            der = checked(index, signature)
            if not streaming:
                return der
            # Not synced here: that is one journal commit per file per worker; this
            # process's writer threads sync many at once (StagedWrites.adopt).
            write_temp(targets[index], der, name=temps[index].name, sync=False,
                       dir_fd=dirs.fd(targets[index].parent))
            return b""

        def from_worker(index: int, _signature: bytes, der: bytes) -> None:
            results[index] = (entry(index), der)
            if streaming:
                staged.adopt(targets[index], temps[index])

        if ahead is not None:
            writes: list[tuple[Path, bytes, Path]] = []

            def from_ahead(index: int, signature: bytes) -> None:
                # checked with the key's public half, which KeySigner found equal to the
                # certificate's
                results[index] = item = (entry(index), checked(index, signature,
                                                               trusted=True))
                if streaming:
                    # to the writer threads in batches: a hand-off per file costs more
                    # than the write of a .sig itself
                    writes.append((targets[index], item[1], temps[index]))
                    if len(writes) >= NAMED_BATCH:
                        staged.add_named(writes)
                        writes.clear()

            ahead.collect(from_ahead)
            if writes:
                staged.add_named(writes)
            for i, done_already in enumerate(list(results)):
                if done_already is None:  # a forked signer failed: signed here instead
                    signed(i, signer.sign_digest(hashed[i].digests[hash_name], hash_name))
        else:
            if streaming:
                staged.remove_on_abort(temps)
            sign_many(signer, [h.digests[hash_name] for h in hashed], hash_name,
                      on_signed=signed, worker_step=WorkerStep(in_worker, from_worker))
        done = [r for r in results if r is not None]
        if not streaming:
            assert out_dir is not None
            # 0755 whatever the umask; then ours and not writable by others (as at the
            # start: one made meanwhile by someone else is refused)
            make_output_dir(out_dir, "--out directory")
            dirs.open_all([out_dir])
            for item, der in done:
                staged.add(item.signature_path, der)
        staged.commit()
    return [item for item, _ in done]


def _remove_stale_temps(targets: Sequence[Path], dirs: TargetDirs) -> None:
    """Temp files of these targets that a killed run left, an hour old or more (the
    directories are the user's: only names our targets' temps would have). Each directory
    once per run (trustboot.run): what a killed run left is an hour old or more, so a
    second look in the same run finds nothing new."""
    by_dir: dict[Path, set[str]] = {}
    for target in targets:
        by_dir.setdefault(target.parent, set()).add(target.name)
    for directory, names in by_dir.items():
        if not first_in_run(f"stale-temps:{os.path.abspath(directory)}"):
            continue
        with contextlib.suppress(OSError):  # unreadable: the signing will say so
            remove_stale_temps(directory, targets=names, dir_fd=dirs.fd(directory))


@dataclass(frozen=True)
class WorkerStep:
    """What a forked signer does with each signature it made, on its own core, and how
    this process takes the result: ``run(index, signature)`` returns bytes that reach
    ``take(index, signature, result)`` here. A signature made in this process goes to
    sign_many's ``on_signed`` instead. ``run`` raising stops that worker: the rest of its
    share is then signed here (so the error is raised here)."""

    run: Callable[[int, bytes], bytes]
    take: Callable[[int, bytes, bytes], None]


def sign_many(signer: Signer, digests: Sequence[bytes], hash_name: str, *,
              on_signed: Callable[[int, bytes], None] | None = None,
              worker_step: WorkerStep | None = None) -> list[bytes]:
    """One signature per digest; ``on_signed(index, signature)`` is called as each arrives
    (so the caller writes while the rest is signed), or, for one a forked signer made,
    ``worker_step`` runs there and its result is taken here (see WorkerStep).

    An in-memory key signs a large batch on every core: cryptography holds the GIL while it
    signs and checks (an RSA-2048 signature costs ~0.3 ms of CPU; an ECDSA P-256 one less,
    but its check ~0.1 ms, and the encoding and writing of each file as much again), so the
    batch is split over forked children (which inherit the unlocked key, never write it
    anywhere, and exit at once) that stream their signatures back; this process only
    collects them. ECDSA signatures are deterministic (RFC 6979): no random state is shared
    between the children. Small batches stay serial, as does any process with other threads
    running (forking those is unsafe). A token signs serially too, overlapped with the
    handling of the previous signature (_sign_overlapped)."""
    result: list[bytes | None] = [None] * len(digests)

    def got(index: int, signature: bytes) -> None:
        result[index] = signature
        if on_signed is not None:
            on_signed(index, signature)

    cores = os.cpu_count() or 1
    # A worker step that writes files waits on the disk: twice as many workers keep the
    # cores busy meanwhile.
    workers = min(cores * (2 if worker_step is not None else 1), 8)
    if not isinstance(signer, KeySigner) and on_signed is not None and len(digests) > 1:
        _sign_overlapped(signer, digests, hash_name, got)
        return [r for r in result if r is not None]
    if (len(digests) < PARALLEL_SIGN_MIN or cores < 2 or not isinstance(signer, KeySigner)
            or threading.active_count() > 1 or not hasattr(os, "fork")):
        for i, digest in enumerate(digests):
            got(i, signer.sign_digest(digest, hash_name))
        return [r for r in result if r is not None]

    def one(index: int) -> tuple[bytes, bytes]:
        signature = signer.sign_digest(digests[index], hash_name)
        return signature, worker_step.run(index, signature) if worker_step else b""

    def take(index: int, signature: bytes, extra: bytes) -> None:
        if worker_step is None:
            got(index, signature)
            return
        result[index] = signature
        worker_step.take(index, signature, extra)

    ForkedBatch(len(digests), one, workers).collect(take)
    for i, value in enumerate(result):  # a child failed: its share is signed here instead
        if value is None:
            got(i, signer.sign_digest(digests[i], hash_name))
    return [r for r in result if r is not None]


def _sign_overlapped(signer: Signer, digests: Sequence[bytes], hash_name: str,
                     got: Callable[[int, bytes], None]) -> None:
    """Serial signing by a token: this thread alone talks to the token (its session is not
    shared, and python-pkcs11 initialises the module for one thread at a time), while one
    other thread handles signature N (check, encode, hand to the writer) during the token's
    signature N+1, whose call releases the GIL."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="trustboot-signed") as handler:
        pending: Future[None] | None = None
        for i, digest in enumerate(digests):
            signature = signer.sign_digest(digest, hash_name)
            if pending is not None:
                pending.result()  # one in flight at most; its error stops the signing
            pending = handler.submit(got, i, signature)
        if pending is not None:
            pending.result()


T = TypeVar("T")

# Threads writing .sig files with a fsync each (see StagedWrites). None when one syncfs
# replaces the fsyncs: creating files in a directory then waits for no disk, and handing
# the work to threads only adds hand-offs and contention on the directory's lock (500
# files on 2 cores, interleaved runs: 8 threads cost ~7 % more CPU than 2, and 2 threads
# ~5 % more than the caller's thread writing each file as its signature arrives).
WRITE_THREADS = 8


class TargetDirs:
    """The directories .sig files go to, each opened once: their temp files are made,
    synced, renamed, linked and removed through these descriptors (``dir_fd``), never by
    a path looked up again, so a link another user swaps in on the way after the check
    leads nowhere (trustboot sign without --out: each FILE's directory, checked by
    :meth:`open_checked`). Paths not under one of them are used as they are. A context
    manager that closes them; forked signers inherit them."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def __enter__(self) -> TargetDirs:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def open_checked(self, directory: Path, what: str, *, hint: str) -> None:
        """Open ``directory`` once, refused unless only root and we can change it and
        what is above it (fsutil.open_checked_dir)."""
        if directory not in self._fds:
            self._fds[directory] = open_checked_dir(directory, what, hint=hint)

    def open_all(self, directories: Iterable[Path]) -> None:
        """Open each of ``directories`` not open yet, as it is (the caller checked it)."""
        for directory in dict.fromkeys(directories):
            if directory in self._fds:
                continue
            try:
                self._fds[directory] = os.open(directory, os.O_RDONLY | os.O_DIRECTORY
                                               | os.O_CLOEXEC)
            except OSError as exc:
                raise _cannot_write(directory, exc, "check the output directory; nothing "
                                    "was replaced") from None

    def fd(self, directory: Path) -> int | None:
        return self._fds.get(directory)

    def at(self, path: Path) -> tuple[str | Path, int | None]:
        """(name, its directory's descriptor), or (path, None) outside them: the
        arguments of an ``os`` call with ``dir_fd``."""
        fd = self._fds.get(path.parent)
        return (path, None) if fd is None else (path.name, fd)

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


def write_all(items: Sequence[tuple[Path, bytes]]) -> None:
    """Atomically write many small files: each is either absent/old or complete."""
    with StagedWrites(files=len(items)) as staged:
        for path, data in items:
            staged.add(path, data)
        staged.commit()


class StagedWrites:
    """Files written to temp names beside their targets as their contents become known,
    then renamed into place together by ``commit()`` once every one was written and
    fsynced; leaving the block without a commit removes the temp files. Each target is
    either untouched or complete (fsutil.atomic_write's guarantee), each directory synced
    once.

    With a fsync per file the work runs in WRITE_THREADS threads: creating, syncing and
    renaming are filesystem waits that release the GIL, and concurrent fsyncs share the
    journal's commits. With one syncfs (below) nothing waits for the disk before it, and
    the caller's thread writes each file as it comes.
    Measured for 500 files on a shared, busy ext4: 0.5-1.6 s, against 1.3-2.2 s with one
    syncfs() (which also waits for every other process's dirty data on that filesystem: up
    to 1.6 s alone) and 2-3 s with fsyncs one after the other.

    So one syncfs() per filesystem replaces the fsyncs only when little else waits to be
    written (fsutil.quiet_writeback, checked before the first write) and there are at least
    SYNCFS_MIN_FILES files (``files``): each fsync pays a cache flush of its own (a round
    trip to the host's disk in a VM; a journal commit each on ext4 without concurrency):
    500 of them took about 0.08 s of a 0.5 s run on a 2-core VM. Only on filesystems
    whose syncfs is as strong as the fsyncs (fsutil.SYNCFS_FILESYSTEMS); temps elsewhere,
    or where syncfs(2) is missing, are fsynced one by one at commit instead.
    """

    def __init__(self, *, files: int = 0, dirs: TargetDirs | None = None) -> None:
        # the targets' directories as opened by the caller (see TargetDirs)
        self._dirs = dirs if dirs is not None else TargetDirs()
        # decided before anything is written: a fsync per file, or one syncfs at commit
        self._at_once = files >= SYNCFS_MIN_FILES and quiet_writeback()
        # Threads start on the first job given them: after sign_many has forked, never before.
        self._pool: ThreadPoolExecutor | None = None
        self._targets: list[Path] = []
        self._made: list[Future[Path]] = []
        # Adopted temps are synced in batches: a job per file costs more in thread
        # hand-offs than the fsync waits it overlaps.
        self._pending: list[tuple[Path, Path]] = []
        self._batches: list[tuple[list[tuple[Path, Path]], Future[None]]] = []
        self._maybe: list[Path] = []
        # jobs of add_named, each to the (target, temp) pairs it wrote
        self._named: list[Future[list[tuple[Path, Path]]]] = []
        self._committed = False

    def __enter__(self) -> StagedWrites:
        return self

    def _submit(self, job: Callable[..., T], *args: Any, threaded: bool,
                **kwargs: Any) -> Future[T]:
        """``job(*args, **kwargs)`` on the writer threads (``threaded``: where it waits for
        the disk, a fsync per file), or here and now (see WRITE_THREADS)."""
        if threaded:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=WRITE_THREADS,
                                                thread_name_prefix="trustboot-write")
            return self._pool.submit(job, *args, **kwargs)
        done: Future[T] = Future()
        try:
            done.set_result(job(*args, **kwargs))
        except Exception as exc:  # kept for commit(), as a thread's would be
            done.set_exception(exc)
        return done

    def add(self, target: Path, data: bytes) -> None:
        self._targets.append(target)
        self._made.append(self._submit(write_temp, target, data, sync=not self._at_once,
                                       dir_fd=self._dirs.fd(target.parent),
                                       threaded=not self._at_once))

    def add_named(self, items: Sequence[tuple[Path, bytes, Path]]) -> None:
        """Several (target, data, temp) written by one job: each temp, a name beside its
        target, created exclusively (never through a link; a name someone else took
        first, which they can in a shared directory, gives way to a random one) and synced
        as add() does; then renamed by commit() like the others, removed without one.
        With a fsync per file, one hand-off to the writer threads for many small files
        (whose creation may wait on a busy filesystem there rather than in the caller's
        thread); with one syncfs, written here and now."""
        self._named.append(self._submit(_write_named, list(items), not self._at_once,
                                        self._dirs, threaded=not self._at_once))

    def adopt(self, target: Path, temp: Path) -> None:
        """A temp file someone else wrote beside ``target``: synced here, then renamed onto
        it by commit() like the others, removed without one."""
        self._pending.append((target, temp))
        if len(self._pending) >= ADOPT_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._pending and not self._at_once:  # else synced with the others at commit
            batch, self._pending = self._pending, []
            self._batches.append((batch, self._submit(_sync_all, batch, self._dirs,
                                                      threaded=True)))

    def remove_on_abort(self, temps: Iterable[Path]) -> None:
        """Temp files that may exist (written by a process that was stopped before saying
        so): removed, where present, if the block is left without a commit."""
        self._maybe.extend(temps)

    def commit(self) -> None:
        self._flush()
        failed = _first_error(self._made, self._targets)
        jobs: list[Future[Any]] = [job for _, job in self._batches]
        for done in jobs + list(self._named):
            error = done.exception()
            if failed is None and isinstance(error, _PathError):
                failed = (error.target, error.error)
            elif failed is None and error is not None:
                raise error
        if failed is not None:
            raise _cannot_write(failed[0], failed[1], "check the output directory; nothing "
                                "was replaced")
        pairs = [(target, fut.result()) for target, fut in zip(self._targets, self._made,
                                                                strict=True)]
        pairs += [pair for batch, _ in self._batches for pair in batch] + self._pending
        pairs += [pair for job in self._named for pair in job.result()]
        # Every FILE.sig or none: a target that cannot be replaced (a directory in its
        # place, a directory we cannot write) fails the run before the first rename ...
        _check_replaceable([target for target, _ in pairs], self._dirs)
        if self._at_once:
            self._sync_at_once(pairs)
        # ... and one that fails anyway (changed since) puts back those already replaced,
        # from hard links to them made just before (which a killed run leaves as temps
        # that the stale-temp sweep removes: same name pattern)
        replaced: list[tuple[Path, Path | None, bool]] = []
        try:
            # on the threads where the writes were (a fsync each), as the writes' waits
            # overlap
            self._in_batches(lambda batch: _rename_all(batch, replaced, self._dirs), pairs,
                             RENAME_BATCH, "check the output directory; nothing was "
                             "replaced (those renamed before it were put back)",
                             threaded=not self._at_once)
        except BaseException as exc:
            lost = _restore(replaced, self._dirs)
            if lost and isinstance(exc, OperationalError):
                # the hint's "put back" is not true of these: say which
                raise OperationalError(
                    f"{exc.message}; and {len(lost)} signature(s) replaced before it could "
                    f"not be put back: {', '.join(map(str, lost))}",
                    hint="check the output directory; those now hold this run's "
                         "signatures (or are gone, where they were new): sign them "
                         "again or restore them from elsewhere") from None
            raise
        renamed = {temp for _, temp in pairs}
        for temp in self._maybe:  # written by a worker that then failed: signed here again
            if temp not in renamed:
                _remove_maybe(temp, self._dirs)
        for directory in dict.fromkeys(target.parent for target, _ in pairs):
            fd = self._dirs.fd(directory)
            try:
                if fd is None:
                    fsync_dir(directory)
                else:
                    os.fsync(fd)
            except OSError as exc:
                raise _cannot_write(directory, exc, "check the output directory") from None
        self._committed = True
        for _, backup, _existed in replaced:
            if backup is not None:
                _remove_maybe(backup, self._dirs)

    def _sync_at_once(self, pairs: Sequence[tuple[Path, Path]]) -> None:
        """Every temp in ``pairs`` durable before any rename: one syncfs() per filesystem
        they are on where that is as strong as a fsync each (fsutil.SYNCFS_FILESYSTEMS),
        a fsync each elsewhere or where syncfs is missing."""
        devices: dict[Path, int] = {}
        for directory in dict.fromkeys(temp.parent for _, temp in pairs):
            fd = self._dirs.fd(directory)
            try:
                devices[directory] = (os.stat(directory) if fd is None
                                      else os.fstat(fd)).st_dev
            except OSError as exc:
                raise _cannot_write(directory, exc, "check the output directory; nothing "
                                    "was replaced") from None
        synced: set[int] = set()
        for directory, dev in devices.items():
            if dev in synced or filesystem_type(dev) not in SYNCFS_FILESYSTEMS:
                continue
            try:
                if not syncfs(directory):
                    break  # no syncfs at all
            except OSError as exc:
                raise _cannot_write(directory, exc, "check the output directory and its "
                                    "disk; nothing was replaced") from None
            synced.add(dev)
        rest = [pair for pair in pairs if devices[pair[1].parent] not in synced]
        self._in_batches(lambda batch: _sync_all(batch, self._dirs), rest, ADOPT_BATCH,
                         "check the output directory; nothing was replaced", threaded=True)

    def _in_batches(self, job: Callable[[Sequence[tuple[Path, Path]]], None],
                    pairs: Sequence[tuple[Path, Path]], size: int, hint: str, *,
                    threaded: bool) -> None:
        """``job`` over ``pairs``, ``size`` at a time (on the writer threads if
        ``threaded``, see _submit); once every batch is over (none still at work while the
        caller cleans up), the first failure is raised for the target it names, with
        ``hint``."""
        futures = [self._submit(job, pairs[i:i + size], threaded=threaded)
                   for i in range(0, len(pairs), size)]
        errors = [future.exception() for future in futures]  # waits for each
        for error in errors:
            if isinstance(error, _PathError):
                raise _cannot_write(error.target, error.error, hint)
            if error is not None:
                raise error

    def __exit__(self, *_exc: object) -> None:
        try:
            if not self._committed:
                for fut in self._made:
                    if fut.exception() is None:  # waits for it
                        with contextlib.suppress(FileNotFoundError):
                            _unlink(fut.result(), self._dirs)
                for _, done in self._batches:
                    done.exception()  # waits for it
                for job in self._named:
                    if job.exception() is None:  # waits for it; a failed one cleaned up
                        for _, temp in job.result():
                            with contextlib.suppress(FileNotFoundError):
                                _unlink(temp, self._dirs)
                for temp in [t for _, t in self._pending] + [
                        t for batch, _ in self._batches for _, t in batch] + self._maybe:
                    _remove_maybe(temp, self._dirs)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)


def _unlink(path: Path, dirs: TargetDirs) -> None:
    name, fd = dirs.at(path)
    os.unlink(name, dir_fd=fd)


def _remove_maybe(temp: Path, dirs: TargetDirs) -> None:
    """Remove a temp file a worker may have written. Its name is visible to anyone who
    can list the directory: what is there may be another user's (a sticky directory
    refuses, a directory in its place cannot be unlinked), which is not ours to remove
    and no reason to fail a run whose signatures are in place."""
    with contextlib.suppress(OSError):
        _unlink(temp, dirs)


# Adopted temp files synced per job, files written per job, renames per job (see
# StagedWrites).
ADOPT_BATCH = 32
NAMED_BATCH = 32
RENAME_BATCH = 64
# Fewer files than this are fsynced one by one: one syncfs is no cheaper than a few fsyncs.
SYNCFS_MIN_FILES = 16


class _PathError(Exception):
    """An OSError in a batch job, with the target it was for."""

    def __init__(self, target: Path, error: OSError) -> None:
        super().__init__(str(error))
        self.target, self.error = target, error


def _write_named(batch: Sequence[tuple[Path, bytes, Path]],
                 sync: bool, dirs: TargetDirs) -> list[tuple[Path, Path]]:
    """StagedWrites.add_named's job: the (target, temp) pairs written; on failure, none
    left behind and a _PathError for the target."""
    written: list[tuple[Path, Path]] = []
    try:
        for target, data, temp in batch:
            fd = dirs.fd(target.parent)
            try:
                try:
                    made = write_temp(target, data, name=temp.name, sync=sync, dir_fd=fd)
                except FileExistsError:  # taken: in a shared directory, perhaps not by us
                    made = write_temp(target, data, sync=sync, dir_fd=fd)
            except OSError as exc:
                raise _PathError(target, exc) from None
            written.append((target, made))
    except BaseException:
        for _, made in written:
            _remove_maybe(made, dirs)
        raise
    return written


def _sync_all(batch: Sequence[tuple[Path, Path]], dirs: TargetDirs) -> None:
    for target, temp in batch:
        name, dir_fd = dirs.at(temp)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _PathError(target, exc) from None


def _rename_all(pairs: Sequence[tuple[Path, Path]],
                replaced: list[tuple[Path, Path | None, bool]], dirs: TargetDirs) -> None:
    """Rename each temp onto its target, first keeping an existing target under a backup
    name beside it (_keep_old); each done is added to ``replaced`` as (target, backup or
    None, whether there was an old target), for _restore (list.append is atomic: batches
    on several threads share it)."""
    for target, temp in pairs:
        # temp, target and backup are in one directory: its descriptor, or none
        to, fd = dirs.at(target)
        try:
            backup, existed = _keep_old(target, temp, dirs)
            try:
                os.replace(dirs.at(temp)[0], to, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                if backup is not None:
                    _remove_maybe(backup, dirs)
                raise
        except OSError as exc:
            raise _PathError(target, exc) from None
        replaced.append((target, backup, existed))


# link() errors that say "no hard link here", not "no file": protected_hardlinks (another
# user's file we cannot write: EPERM), filesystems without hard links (vfat, some FUSE and
# SMB mounts: EPERM, EOPNOTSUPP), a file at its link count limit (EMLINK). The rename is
# still allowed: the old .sig is kept by a copy instead.
_NO_HARD_LINK = frozenset({errno.EPERM, errno.EACCES, errno.EXDEV, errno.EOPNOTSUPP,
                           errno.EMLINK, errno.ENOTSUP})


def _keep_old(target: Path, temp: Path, dirs: TargetDirs) -> tuple[Path | None, bool]:
    """Keep ``target``'s current file under a backup name beside it, for _restore:
    (backup or None, whether there was a file). A hard link where one can be made, else
    a copy (_copy_old); None with True when neither can be made: the run goes on, and
    only a failed commit (which could not put it back) says so."""
    to, fd = dirs.at(target)
    name = temp.with_name(temp.name.removesuffix(".tmp") + ".old.tmp")
    for _ in range(2):
        try:
            os.link(to, dirs.at(name)[0], src_dir_fd=fd, dst_dir_fd=fd,
                    follow_symlinks=False)
            return name, True
        except FileNotFoundError:
            return None, False  # nothing to keep: a new .sig, removed by _restore
        except FileExistsError:  # taken: in a shared directory, perhaps not by us
            name = _random_backup(target)
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINK:
                raise
            return _copy_old(target, dirs)
    return None, True  # both names taken: no backup


def _random_backup(target: Path) -> Path:
    """A new backup name beside ``target``: a temp's pattern (the stale-temp sweep's)."""
    return target.with_name(f".{temp_stem(target.name)}.{os.urandom(8).hex()}.old.tmp")


def _copy_old(target: Path, dirs: TargetDirs) -> tuple[Path | None, bool]:
    """_keep_old by a copy of ``target`` (a regular file of at most a signature's size,
    never read through a link; a link is copied as a link) under a new temp name beside
    it, with its read and write bits: (the copy or None when it cannot be made, whether
    there was a file)."""
    to, fd = dirs.at(target)
    try:
        st = os.stat(to, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None, False
    except OSError:
        return None, True
    try:
        if stat.S_ISLNK(st.st_mode):
            points = os.readlink(to, dir_fd=fd)
            name = _random_backup(target)
            os.symlink(points, dirs.at(name)[0], dir_fd=fd)
            return name, True
        src = os.open(to, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                      dir_fd=fd)
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode) or st.st_size > rules.MAX_SIGNATURE_SIZE:
                return None, True  # no .sig: too large to hold here, not ours to copy
            chunks: list[bytes] = []
            left = rules.MAX_SIGNATURE_SIZE + 1  # one past the cap: catches growth
            while left > 0 and (chunk := os.read(src, left)):
                chunks.append(chunk)
                left -= len(chunk)
            data = b"".join(chunks)
        finally:
            os.close(src)
        if len(data) > rules.MAX_SIGNATURE_SIZE:
            return None, True
        # only this run reads it back, and only before it exits: no fsync. Read and
        # write bits only: the copy is ours (root's, when root signs) with another
        # user's bytes, and their setuid bit kept on it made a root setuid binary.
        return write_temp(target, data, mode=stat.S_IMODE(st.st_mode) & 0o666,
                          sync=False, dir_fd=fd), True
    except OSError:
        return None, True


def _check_replaceable(targets: Sequence[Path], dirs: TargetDirs) -> None:
    """Refuse, before any rename, a target a rename cannot replace: one that is not a
    regular file (or a link, which the rename replaces), a directory we cannot write, or
    (a sticky directory, as /tmp) another user's file there."""
    me = os.geteuid()
    held_by: dict[Path, os.stat_result] = {}
    for target in targets:
        parent = target.parent
        name, fd = dirs.at(target)
        if parent not in held_by:
            try:
                held_by[parent] = os.stat(parent) if fd is None else os.fstat(fd)
            except OSError as exc:
                raise _cannot_write(target, exc, "check the output directory; nothing "
                                    "was replaced") from None
            if not os.access(parent if fd is None else ".", os.W_OK | os.X_OK, dir_fd=fd):
                raise OperationalError(
                    f"cannot write {target}: {parent} is not writable",
                    hint="choose a writable directory (--out DIR); nothing was replaced")
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise _cannot_write(target, exc, "check the output directory; nothing was "
                                "replaced") from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise OperationalError(
                f"cannot replace {target}: it is {kind}",
                hint=f"remove it (rm -r {target}) or write the signatures elsewhere with "
                     "--out; nothing was replaced")
        held = held_by[parent]
        if held.st_mode & stat.S_ISVTX and me not in (0, held.st_uid, st.st_uid):
            raise OperationalError(
                f"cannot replace {target}: it is uid {st.st_uid}'s, in the sticky "
                f"directory {parent}", hint="write the signatures elsewhere with --out; "
                                            "nothing was replaced")


def _restore(replaced: Sequence[tuple[Path, Path | None, bool]],
             dirs: TargetDirs) -> list[Path]:
    """Undo ``replaced`` (see _rename_all): each target back to its backup, or removed
    where there was none before. Best effort: returns the targets that could not be put
    back (no backup could be kept, or the backup is gone or would not move), which stay
    as they are."""
    lost: list[Path] = []
    for target, backup, existed in reversed(replaced):
        to, fd = dirs.at(target)
        try:
            if backup is not None:
                os.replace(dirs.at(backup)[0], to, src_dir_fd=fd, dst_dir_fd=fd)
            elif existed:
                lost.append(target)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(to, dir_fd=fd)
        except OSError:
            lost.append(target)
    return lost[::-1]


def _first_error(futures: Sequence[Future[Any]], targets: Sequence[Path],
                 ) -> tuple[Path, BaseException] | None:
    """Wait for every future; the target of the first that failed, with its error."""
    failed = None
    for target, fut in zip(targets, futures, strict=True):
        error = fut.exception()
        if error is not None and failed is None:
            failed = (target, error)
    return failed


def _cannot_write(path: Path, exc: BaseException, hint: str) -> BaseException:
    """The error for a failed write: an OperationalError for an OSError, else ``exc``."""
    if not isinstance(exc, OSError):
        return exc
    return OperationalError(f"cannot write {path}: {exc.strerror}", hint=hint)
