"""`trustboot resign`: re-sign the live release on an origin with a fresh signer.

Only parsing and printing: the workflow is trustboot.publish.resign.resign_live.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from trustboot.cli._common import (
    NonEmptyPath,
    emit_json,
    json_option,
    passphrase_options,
    passphrase_source,
    pin_options,
    pin_source,
    signing_cert_options,
)
from trustboot.cli.progress import upload_progress
from trustboot.cli.publish import (
    build_trust,
    open_cli_origin,
    open_pki_ca,
    origin_options,
    revocation_options,
    trust_options,
    utc_now,
)
from trustboot.cli.release import StageReporter
from trustboot.fsutil import work_dir

EPILOG = """\b
Examples:
  # a fresh 7-day certificate every day, then re-sign what is live (systemd timer / CI:
  # docs/freshness.md); the replay window is then at most 7d 12h30m
  trustboot ca renew boot-signer --days 7 --passphrase-file ca.pass
  trustboot resign https://boot.example.net/ --key boot-signer --signer boot-signer \\
      --passphrase-file key.pass --client-cert publisher --min-lifetime 6d --json
  trustboot resign file:///srv/boot --key file:sign.key --signing-cert sign.crt \\
      --public-url https://boot.example.net/ --min-lifetime 3d

\b
Exit codes: 0 re-signed (or already signed by this signer), 1 origin/network failure,
3 bad input or no live release, 4 the live release does not verify as published or a
revoked certificate signed it (nothing was changed), the new signer expires before
--min-lifetime, or iPXE would refuse the new signatures.
"""


@click.command("resign", epilog=EPILOG)
@click.argument("origin_url", metavar="ORIGIN")
@click.option("--key", "key_ref", envvar="TRUSTBOOT_SIGNING_KEY", show_envvar=True,
              required=True, metavar="REF",
              help="The fresh signer: a CA code-signing certificate NAME (or ca:NAME), "
              "file:PATH with --signing-cert, or a pkcs11: URI.")
@signing_cert_options(old_names=False)
@passphrase_options(what="the signing key", envvar_prefix="TRUSTBOOT_SIGN_")
@pin_options
@click.option("--pkcs11-module", type=NonEmptyPath(path_type=Path, dir_okay=False),
              envvar="TRUSTBOOT_PKCS11_MODULE", show_envvar=True,
              help="PKCS#11 module for pkcs11: keys.")
@click.option("--min-lifetime", default="1d", show_default=True, metavar="DURATION",
              help="Refuse a signer whose chain expires sooner (days, or 12h, 3d, 2w).")
@trust_options
@revocation_options
@origin_options
@json_option
def command(origin_url: str, key_ref: str, signing_cert: Path | None,
            signing_chain: Path | None, passphrase_file: Path | None,
            passphrase_env: str | None, pin_file: Path | None, pin_env: str | None,
            pkcs11_module: Path | None, min_lifetime: str, as_json: bool,
            **kw: Any) -> None:
    """Re-sign the release ORIGIN serves live with a fresh signer, as a new release.

    Every object of the live release is read back and verified first (size, sha256 and
    signature as iPXE judges it); then its objects are copied on the origin into a new
    release id (<id>.rs-<signer>), with new signatures and manifest (and the release
    directory in its scripts' URLs rewritten), read back, and the entry switched. The old
    release stays for rollback. Running it again with the same signer changes nothing.
    """
    from trustboot.ca.store import CertificateAuthority, log_lines
    from trustboot.keys.ref import parse_ref
    from trustboot.keys.signer import OpenedCa, resolve_signer
    from trustboot.publish.resign import resign_live
    from trustboot.release.recipe import parse_lifetime

    lifetime = parse_lifetime(int(min_lifetime) if min_lifetime.isdigit() else min_lifetime,
                              "--min-lifetime")
    ref = parse_ref(key_ref)
    now = utc_now()
    # the CA home once, for the roots, the revocation gate and the new signer's key; its
    # log counted before its index is read (CertificateAuthority.index_behind_log)
    lines = log_lines(kw["pki"]) if CertificateAuthority.exists(kw["pki"]) else 0
    ca = open_pki_ca(kw)
    trust = build_trust(kw, ca)
    source = resolve_signer(ref, pki=kw["pki"], cert=signing_cert, chain=signing_chain,
                            now=now, pkcs11_module=pkcs11_module,
                            opened=OpenedCa(ca, lines) if ca is not None else None)
    secrets = (pin_source(pin_file, pin_env) if source.secret_kind == "pin"  # noqa: S105
               else passphrase_source(passphrase_file, passphrase_env))
    origin, options = open_cli_origin(origin_url, kw)
    with work_dir("trustboot-resign-") as work, upload_progress(as_json) as bars, origin:
        result = resign_live(origin, source, secrets, trust=trust, now=now,
                             workdir=work / "sigs", min_lifetime=lifetime,
                             entry_path=kw["entry_path"], jobs=kw["jobs"],
                             options=options, progress=bars,
                             stage=StageReporter(quiet=as_json))
    if as_json:
        emit_json(result.to_json())
        return
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    if not result.changed:
        click.echo(f"{result.previous} on {result.origin} is already signed by this signer; "
                   "nothing changed")
    else:
        click.echo(f"re-signed {result.previous} as {result.release} on {result.origin}: "
                   f"{len(result.signed)} signature(s), {len(result.copied)} object(s) copied, "
                   f"{len(result.rewritten)} script(s) pointed at the new release; "
                   f"{kw['entry_path']} switched")
    if result.repaired:
        click.echo(f"repaired first: {result.repaired}", err=True)
    if result.window is not None:
        click.echo(result.window.describe())
