"""`trustboot sign`: detached CMS signatures that iPXE's imgverify accepts."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric import ec

from trustboot.cli._common import (
    emit_json,
    is_interactive,
    json_option,
    passphrase_options,
    passphrase_source,
    progress,
    warn,
)
from trustboot.cms.certinfo import DEFAULT_IPXE, IpxeVersion
from trustboot.cms.sign import (
    HASH_NAMES,
    Hashed,
    ProgressFactory,
    check_targets,
    hash_files,
    preflight,
    sign_hashed,
)
from trustboot.errors import ConfigError, OperationalError
from trustboot.fsutil import atomic_write
from trustboot.keys.ref import parse_ref
from trustboot.keys.signer import PendingSigner, Signer, resolve_signer
from trustboot.secrets import PassphraseSource

# Files above this size get a progress bar on a terminal.
PROGRESS_THRESHOLD = 64 << 20


def _progress_factory(enabled: bool) -> ProgressFactory | None:
    if not enabled:
        return None
    return lambda path, size: progress(size, f"hashing {path.name}",
                                       enabled=size >= PROGRESS_THRESHOLD)


def _unlock_while_hashing(
    pending: PendingSigner, passphrases: PassphraseSource, files: list[Path], hash_name: str,
    bars: ProgressFactory | None,
) -> tuple[Signer, list[Hashed]]:
    """Hash on a second core while the key's KDF runs; stop hashing if unlocking fails."""
    cancel = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(hash_files, files, hash_name, progress=bars, cancel=cancel)
        try:
            signer = pending.unlock(passphrases)
        except BaseException:
            cancel.set()
            raise
        return signer, future.result()


@click.command("sign")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(path_type=Path, dir_okay=False))
@click.option("--key", "key_ref", envvar="TRUSTBOOT_SIGNING_KEY", show_envvar=True,
              required=True, metavar="REF",
              help="Signing key: a CA code-signing certificate NAME (or ca:NAME), or "
              "file:PATH with --cert/--chain. pkcs11: URIs are reserved.")
@click.option("--pki", "pki", type=click.Path(path_type=Path, file_okay=False),
              envvar="TRUSTBOOT_PKI", default=Path("pki"), show_default=True,
              help="The CA home (for NAME references).")
@click.option("--cert", "cert", type=click.Path(path_type=Path, dir_okay=False),
              help="Signing certificate (file: keys).")
@click.option("--chain", "chain", type=click.Path(path_type=Path, dir_okay=False),
              help="Issuer certificates, root included (PEM bundle).")
@passphrase_options(what="the signing key")
@click.option("--hash", "hash_name", type=click.Choice(HASH_NAMES), default="sha256",
              show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Write signatures here (default: FILE.sig next to each file).")
@click.option("--manifest", "manifest", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the JSON manifest to this file.")
@click.option("--expiry-warning-days", type=int, default=30, show_default=True,
              help="Warn when the signature's chain expires within this many days.")
@click.option("--ipxe-version", "ipxe_version", default=str(DEFAULT_IPXE), show_default=True,
              help="Target iPXE; ECDSA keys need 2.0.0 or later.")
@json_option
def command(files: tuple[Path, ...], key_ref: str, pki: Path, cert: Path | None,
            chain: Path | None, passphrase_file: Path | None, passphrase_env: str | None,
            hash_name: str, out_dir: Path | None, manifest: Path | None,
            expiry_warning_days: int, ipxe_version: str, as_json: bool) -> None:
    """Sign FILES for iPXE's imgverify (writes FILE.sig, detached CMS in DER).

    Refuses a signer iPXE would reject; the key is unlocked once for all files.
    """
    try:
        version = IpxeVersion.parse(ipxe_version)
    except ValueError as exc:
        raise ConfigError(str(exc), hint="e.g. --ipxe-version 2.0.0") from None
    for path in files:
        if not path.is_file():
            raise OperationalError(f"cannot sign {path}: not a readable file",
                                   hint="check the path")
    now = dt.datetime.now(dt.UTC)
    ref = parse_ref(key_ref)
    pending = resolve_signer(ref, pki=pki, cert=cert, chain=chain, now=now)
    if isinstance(pending.certificate.public_key(), ec.EllipticCurvePublicKey) \
            and not version.ecdsa:
        raise ConfigError(f"ECDSA signatures need iPXE >= 2.0.0 (target: {version})",
                          hint="use an RSA key, or --ipxe-version 2.0.0 for newer builds")
    # Refuse a doomed signer before asking for its passphrase or reading any file.
    for finding in preflight(pending, now=now, ipxe_version=version).warnings:
        warn(f"{finding.message}\n  hint: {finding.remedy}")
    check_targets(list(files), out_dir)
    passphrases = passphrase_source(passphrase_file, passphrase_env)
    bars = _progress_factory(not as_json and is_interactive())
    if passphrase_file is None and passphrase_env is None:
        # A prompt may come: ask first, then hash with a progress bar.
        signer = pending.unlock(passphrases)
        hashed = hash_files(list(files), hash_name, progress=bars)
    else:
        signer, hashed = _unlock_while_hashing(pending, passphrases, list(files), hash_name,
                                               bars)
    results = sign_hashed(hashed, signer, hash_name=hash_name, out_dir=out_dir, now=now,
                          ipxe_version=version)
    ends = min(r.chain_not_after for r in results)
    if ends - now < dt.timedelta(days=expiry_warning_days):
        warn(f"these signatures stop verifying on {ends.isoformat()} "
             f"({(ends - now).days} days): iPXE checks the chain against the client's clock "
             "at boot; renew the signing certificate and re-sign before then")
    if signer.algorithm == "ecdsa":
        warn("ECDSA signatures verify only in iPXE 2.0.0 and later")
    doc = {"signer": signer.certificate.subject.rfc4514_string(), "key": str(ref),
           "hash": hash_name, "signed_at": now.isoformat(),
           "files": [r.to_json() for r in results]}
    if manifest is not None:
        try:
            atomic_write(manifest, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
        except OSError as exc:
            raise OperationalError(f"cannot write manifest {manifest}: {exc.strerror}",
                                   hint="check the directory") from None
    if as_json:
        emit_json(doc)
        return
    for r in results:
        click.echo(f"signed {os.fspath(r.path)} -> {os.fspath(r.signature_path)} "
                   f"({r.size} bytes, sha256 {r.sha256[:16]}...)")
