"""Detached CMS signatures that iPXE's ``imgverify`` accepts.

The image is hashed in fixed-size chunks (memory does not grow with the file), the signer
signs the digest, and the SignedData is plain DER: no signed attributes (iPXE checks the
signature over the image digest itself), signer named by issuer and serial, every
certificate of the chain including the root (iPXE's TRUST= holds only fingerprints).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from trustboot.cms.digest import Cancelled as Cancelled
from trustboot.cms.digest import Hashed as Hashed
from trustboot.cms.digest import Progress as Progress
from trustboot.cms.digest import ProgressFactory as ProgressFactory
from trustboot.cms.digest import hash_file as hash_file
from trustboot.cms.digest import hash_files as hash_files
from trustboot.errors import ConfigError, OperationalError, VerificationError
from trustboot.fsutil import atomic_write, fsync_dir, make_dirs, write_temp
from trustboot.keys.algorithms import HashAlgorithm
from trustboot.keys.signer import KeySigner, KeySource, Signer

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
            hint="pass the issuers, root included (--chain chain.pem)",
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
    return (out_dir / f"{path.name}.sig") if out_dir is not None else path.with_name(
        path.name + ".sig")


def check_targets(paths: Sequence[Path], out_dir: Path | None) -> None:
    seen: dict[Path, Path] = {}
    for path in paths:
        target = signature_path(path, out_dir)
        if target in seen:
            raise ConfigError(f"{path} and {seen[target]} would both be signed into {target}",
                              hint="sign them in separate calls or without --out")
        seen[target] = path


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
) -> list[Signed]:
    """Sign already-digested files; write the .sig files only once all were signed."""
    report = preflight(signer, now=now, ipxe_version=ipxe_version).signers[0]
    check_targets([h.path for h in hashed], out_dir)
    return _sign(hashed, signer, report, hash_name=hash_name, out_dir=out_dir, now=now,
                 ipxe_version=ipxe_version)


def _sign(
    hashed: Sequence[Hashed], signer: Signer, report: rules.SignerReport, *, hash_name: str,
    out_dir: Path | None, now: dt.datetime, ipxe_version: IpxeVersion,
) -> list[Signed]:
    """sign_hashed() once the signer passed preflight and the targets were checked."""
    chain = [_der(c) for c in signer.chain]
    root = rules.TrustAnchor(rules.fingerprint(chain[-1]), chain[-1])
    template = SignedDataTemplate(_der(signer.certificate), chain, hash_name, signer.algorithm)
    public_key = signer.certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    subject = signer.certificate.subject.rfc4514_string()

    signatures = sign_many(signer, [h.digests[hash_name] for h in hashed], hash_name)

    def one(index: int) -> tuple[Signed, bytes]:
        item = hashed[index]
        signature = signatures[index]
        der = template.render(signature)
        # Belt and braces: what is about to be published verifies under iPXE's rules (in
        # full once; after that only the signature value differs between files).
        if index == 0:
            check = rules.verify_signature(der, item.digests, trust=[root], now=now,
                                           ipxe_version=ipxe_version)
            failure = check.failure.message if check.failure else None
        else:
            failure = None if verify_raw(public_key, signer.algorithm, hash_name, signature,
                                         digest=item.digests[hash_name]) else "bad signature"
        if failure is not None:
            raise VerificationError(
                f"the signature made for {item.path} does not verify: {failure}",
                hint="this is unexpected: the signer (or its token) misbehaves; report it",
                rule="self-check")
        return Signed(
            path=item.path, size=item.size, sha256=item.digests["sha256"].hex(),
            hash_name=hash_name, signature_path=signature_path(item.path, out_dir),
            signer_subject=subject, signer_not_after=report.not_after,
            chain_not_after=report.chain_not_after,
        ), der

    results = [one(i) for i in range(len(hashed))]
    if out_dir is not None:
        make_dirs(out_dir)  # 0755 whatever the umask; OperationalError if not creatable
    write_all([(signed.signature_path, der) for signed, der in results])
    return [s for s, _ in results]


# From this many RSA signatures on, the batch is split over forked processes.
PARALLEL_SIGN_MIN = 64


def sign_many(signer: Signer, digests: Sequence[bytes], hash_name: str) -> list[bytes]:
    """One signature per digest. An in-memory RSA key signs a large batch on every core:
    each signature costs ~1 ms of CPU and cryptography holds the GIL while it signs, so
    the batch is split over forked children (which inherit the unlocked key, never write it
    anywhere, and exit at once). Tokens, ECDSA (fast already) and small batches stay serial,
    as does any process with other threads running (forking those is unsafe)."""
    workers = min(os.cpu_count() or 1, 8)
    if (len(digests) < PARALLEL_SIGN_MIN or workers < 2 or not isinstance(signer, KeySigner)
            or signer.algorithm != "rsa" or threading.active_count() > 1
            or not hasattr(os, "fork")):
        return [signer.sign_digest(d, hash_name) for d in digests]
    chunks = [list(range(i, len(digests), workers)) for i in range(workers)]
    children: list[tuple[int, int, list[int]]] = []
    for chunk in chunks[1:]:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which never returns
            code = 1
            try:
                os.close(read_fd)
                out = b"".join(_frame(signer.sign_digest(digests[i], hash_name))
                               for i in chunk)
                with os.fdopen(write_fd, "wb") as fh:
                    fh.write(out)
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        children.append((pid, read_fd, chunk))
    result: list[bytes | None] = [None] * len(digests)
    for i in chunks[0]:
        result[i] = signer.sign_digest(digests[i], hash_name)
    for pid, read_fd, chunk in children:
        with os.fdopen(read_fd, "rb") as fh:
            data = fh.read()
        _, status = os.waitpid(pid, 0)
        values = _unframe(data) if os.waitstatus_to_exitcode(status) == 0 else []
        if len(values) != len(chunk):  # a child failed: its share is signed here instead
            values = [signer.sign_digest(digests[i], hash_name) for i in chunk]
        for i, value in zip(chunk, values, strict=True):
            result[i] = value
    return [r for r in result if r is not None]


def _frame(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def _unframe(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 4 <= len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        out.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out if pos == len(data) else []


# Threads writing .sig files (see write_all).
WRITE_THREADS = 8


def write_all(items: Sequence[tuple[Path, bytes]]) -> None:
    """Atomically write many small files: each is either absent/old or complete.

    Same guarantee as fsutil.atomic_write (temp file, fsync, rename, directory synced once
    per directory), with the files spread over WRITE_THREADS threads: creating, syncing and
    renaming are filesystem waits that release the GIL, and concurrent fsyncs share the
    journal's commits. Measured for 500 files on a shared, busy ext4: 0.5-1.6 s, against
    1.3-2.2 s for one syncfs() (which also waits for every other process's dirty data on
    that filesystem: up to 1.6 s alone) and 2-3 s for fsyncs one after the other.
    """
    if len(items) == 1:
        path, data = items[0]
        try:
            atomic_write(path, data)
        except OSError as exc:
            raise _cannot_write(path, exc, "check the output directory") from None
        return
    targets = [path for path, _ in items]
    temps: list[Path] = []
    failed: tuple[Path, BaseException] | None = None  # for the error: which file
    replacing = False
    try:
        with ThreadPoolExecutor(max_workers=min(WRITE_THREADS, len(items))) as pool:
            made = [pool.submit(write_temp, path, data) for path, data in items]
            # Wait for every write: keep all the temp files made, so all are cleaned up.
            failed = _first_error(made, targets)
            temps = [fut.result() for fut in made if fut.exception() is None]
            if failed is None:
                replacing = True
                failed = _first_error([pool.submit(os.replace, tmp, target)
                                       for tmp, target in zip(temps, targets, strict=True)],
                                      targets)
        if failed is not None:
            raise failed[1]
        for directory in {path.parent for path in targets}:
            try:
                fsync_dir(directory)
            except OSError as exc:
                failed = (directory, exc)
                raise
    except BaseException as exc:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            where = failed[0] if failed is not None else targets[0]
            raise _cannot_write(where, exc, "check the output directory" + (
                "" if replacing else "; nothing was replaced")) from None
        raise


def _first_error(futures: Sequence[Future[Any]], targets: Sequence[Path],
                 ) -> tuple[Path, BaseException] | None:
    """Wait for every future; the target of the first that failed, with its error."""
    failed = None
    for target, fut in zip(targets, futures, strict=True):
        error = fut.exception()
        if error is not None and failed is None:
            failed = (target, error)
    return failed


def _cannot_write(path: Path, exc: OSError, hint: str) -> OperationalError:
    return OperationalError(f"cannot write {path}: {exc.strerror}", hint=hint)
