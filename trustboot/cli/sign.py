"""`trustboot sign`: detached CMS signatures that iPXE's imgverify accepts.

Only parsing and printing here: the workflow is trustboot.cms.workflow.sign_paths, which
the release pipeline calls too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from trustboot.cli._common import (
    NonEmptyPath,
    emit_json,
    is_interactive,
    json_option,
    passphrase_options,
    passphrase_source,
    pin_options,
    pin_source,
    progress,
    signing_cert_options,
    warn,
)
from trustboot.errors import ConfigError
from trustboot.keys.algorithms import HashAlgorithm
from trustboot.keys.ref import parse_ref
from trustboot.text import clean

if TYPE_CHECKING:
    from trustboot.cms.sign import ProgressFactory

# The signing modules (cryptography, asn1crypto, iPXE's rules) are imported when the command
# runs, not to build its options: `--help` and usage errors stay fast in CI loops.
HASH_NAMES = tuple(h.value for h in HashAlgorithm)
DEFAULT_IPXE = "2.0.0"  # trustboot.cms.certinfo.DEFAULT_IPXE (a test keeps them equal)

# Files above this size get a progress bar on a terminal.
PROGRESS_THRESHOLD = 64 << 20


def _progress_factory(enabled: bool) -> ProgressFactory | None:
    if not enabled:
        return None
    return lambda path, size: progress(size, f"hashing {path.name}",
                                       enabled=size >= PROGRESS_THRESHOLD)


def _read_files_from(source: str) -> list[Path]:
    from trustboot.cms.workflow import MAX_FILE_LIST_BYTES, read_file_list
    from trustboot.fsutil import read_capped

    if source == "-":
        return read_file_list(sys.stdin.buffer.read(MAX_FILE_LIST_BYTES + 1), "stdin")
    return read_file_list(read_capped(Path(source), MAX_FILE_LIST_BYTES, "file list"), source)


EPILOG = """\b
Examples:
  export TRUSTBOOT_PKI=pki
  trustboot sign vmlinuz initrd.img boot.ipxe --key release-signer --passphrase-env TB_PW
  trustboot sign --key file:keys/sign.key --signing-cert sign.crt --signing-chain chain.pem \\
      --hash sha384 --out dist/ --manifest dist/manifest.json vmlinuz
  find dist -type f ! -name '*.sig' | trustboot sign --key release-signer \\
      --passphrase-env TB_PW --files-from - --json > signed.json
  trustboot sign vmlinuz --key 'pkcs11:token=release;object=codesign' --pin-file pin.txt \\
      --pkcs11-module /usr/lib/softhsm/libsofthsm2.so

\b
Exit codes: 0 signed, 1 I/O (a FILE missing or not a regular file), 3 configuration or
secret (bad option, key, passphrase or PIN), 4 signer refused (revoked, expired, not
acceptable to iPXE). --json prints the manifest: signer, key, hash, signed_at and files
(path, size, sha256, signature, hash, signer_subject, signer_not_after, chain_not_after).
"""


@click.command("sign", epilog=EPILOG)
# Not click's dir_okay=False: a FILE that is not a regular file, a directory included, is
# refused by check_options (exit 1) as in a --files-from list and in `verify`.
@click.argument("files", nargs=-1, type=NonEmptyPath(path_type=Path))
@click.option("--files-from", "files_from", metavar="LIST", envvar="TRUSTBOOT_SIGN_FILES_FROM",
              show_envvar=True,
              help="Also sign the files listed in LIST, one path per line ('-': stdin).")
@click.option("--key", "key_ref", envvar="TRUSTBOOT_SIGNING_KEY", show_envvar=True,
              required=True, metavar="REF",
              help="Signing key: a CA code-signing certificate NAME (or ca:NAME), "
              "file:PATH with --signing-cert/--signing-chain, or an RFC 7512 pkcs11: URI "
              "(pkcs11:token=T;object=O).")
@click.option("--pki", "pki", type=NonEmptyPath(path_type=Path, file_okay=False),
              envvar="TRUSTBOOT_PKI", show_envvar=True, default=Path("pki"), show_default=True,
              help="The CA home: NAME references, and the revocation check for every key.")
@signing_cert_options(old_names=True)
@passphrase_options(what="the signing key", envvar_prefix="TRUSTBOOT_SIGN_")
@pin_options
@click.option("--pkcs11-module", "pkcs11_module", type=NonEmptyPath(path_type=Path,
              dir_okay=False), envvar="TRUSTBOOT_PKCS11_MODULE", show_envvar=True,
              help="PKCS#11 module (.so) for pkcs11: keys, unless the URI has module-path=.")
@click.option("--hash", "hash_name", type=click.Choice(HASH_NAMES), default="sha256",
              envvar="TRUSTBOOT_SIGN_HASH", show_envvar=True, show_default=True)
@click.option("--out", "out_dir", type=NonEmptyPath(path_type=Path, file_okay=False),
              envvar="TRUSTBOOT_SIGN_OUT", show_envvar=True,
              help="Write signatures here, creating missing directories; an existing "
              "one must be yours and not group/world-writable (default: FILE.sig next to "
              "each file).")
@click.option("--manifest", "manifest", type=NonEmptyPath(path_type=Path, dir_okay=False),
              envvar="TRUSTBOOT_SIGN_MANIFEST", show_envvar=True,
              help="Also write the JSON manifest (as --json prints it) to this file, "
              "creating missing directories (an existing one: as --out).")
@click.option("--expiry-warning-days", type=int, default=30, show_default=True,
              envvar="TRUSTBOOT_EXPIRY_WARNING_DAYS", show_envvar=True,
              help="Warn when the signature's chain expires within this many days.")
@click.option("--ipxe-version", "ipxe_version", default=DEFAULT_IPXE, show_default=True,
              envvar="TRUSTBOOT_IPXE_VERSION", show_envvar=True,
              help="Target iPXE; ECDSA keys need 2.0.0 or later.")
@json_option
def command(files: tuple[Path, ...], files_from: str | None, key_ref: str, pki: Path,
            signing_cert: Path | None, signing_chain: Path | None, passphrase_file: Path | None,
            passphrase_env: str | None, pin_file: Path | None, pin_env: str | None,
            pkcs11_module: Path | None, hash_name: str, out_dir: Path | None,
            manifest: Path | None, expiry_warning_days: int, ipxe_version: str,
            as_json: bool) -> None:
    """Sign FILES for iPXE's imgverify (writes FILE.sig, detached CMS in DER).

    Refuses a signer iPXE would reject or the pki revoked; the key is unlocked (or the
    token logged in to) once for all files. Without a terminal nothing is prompted for:
    secrets come from --passphrase-file/-env, --pin-file/-env or pin-source=.
    """
    from trustboot.cms.digest import HashJob
    from trustboot.cms.workflow import check_options

    paths = list(files)
    if files_from is not None:
        paths += _read_files_from(files_from)
    passphrases = passphrase_source(passphrase_file, passphrase_env)
    pins = pin_source(pin_file, pin_env)
    ref = parse_ref(key_ref)
    # Would unlocking ask on the terminal? Then ask before hashing starts (no bar under it).
    if ref.scheme == "pkcs11":
        from trustboot.keys.pkcs11 import parse_uri

        prompts = (pin_file is None and pin_env is None
                   and parse_uri(ref.value).get("pin-source") is None)
    else:
        prompts = passphrase_file is None and passphrase_env is None
    bars = _progress_factory(not as_json and is_interactive())
    # Without a prompt to wait for, hashing starts now and overlaps the signing stack's
    # imports, the key reference's resolution and the unlock (hashlib drops the GIL); the
    # options are checked first (sign_paths checks them only when it starts the hashing).
    hashing = key_ahead = None
    if not prompts:
        check_options(paths, out_dir=out_dir, manifest=manifest,
                      expiry_warning_days=expiry_warning_days)
        # little data with a file key: hashed here while the key's KDF runs on a thread
        hashing = HashJob(paths, hash_name, progress=bars, here=ref.scheme == "file")
        if ref.scheme == "file":
            # The key's KDF (~50 ms, GIL released) overlaps the imports below too; after
            # the HashJob, which may fork (never with a thread running).
            from trustboot.keys.keyfile import start_signing_key_load

            key_ahead = start_signing_key_load(ref.path, passphrases)
    try:
        from trustboot.cms.certinfo import IpxeVersion
        from trustboot.cms.workflow import sign_paths

        try:
            version = IpxeVersion.parse(ipxe_version)
        except ValueError as exc:
            raise ConfigError(str(exc), hint="e.g. --ipxe-version 2.0.0") from None
        run = sign_paths(
            paths, ref, secrets=passphrases, pins=pins, pki=pki, cert=signing_cert,
            chain=signing_chain,
            hash_name=hash_name, out_dir=out_dir, manifest=manifest, progress=bars,
            ipxe_version=version, expiry_warning_days=expiry_warning_days,
            pkcs11_module=pkcs11_module, on_warning=warn, unlock_first=prompts,
            hashing=hashing, key_ahead=key_ahead, reads=[
                (path, option) for path, option in (
                    (passphrase_file, "--passphrase-file"), (pin_file, "--pin-file"),
                    (Path(files_from) if files_from not in (None, "-") else None,
                     "--files-from")) if path is not None])
    except BaseException:
        if hashing is not None:
            hashing.cancel()
        raise
    if as_json:
        emit_json(run.manifest())
        return
    # one write, not a flushed write per line: 500 of them were ~10 ms of a 0.3 s run
    # (a name from a glob over a directory others write may hold escape sequences)
    click.echo("".join(f"signed {clean(os.fspath(r.path))} -> "
                       f"{clean(os.fspath(r.signature_path))} "
                       f"({r.size} bytes, sha256 {r.sha256[:16]}...)\n"
                       for r in run.results), nl=False)
