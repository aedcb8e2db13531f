"""``trustboot secureboot``: own UEFI Secure Boot keys, enrollment material, EFI signing."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from trustboot import fsutil
from trustboot.cli._common import (
    NonEmptyPath,
    emit_json,
    json_option,
    passphrase_options,
    passphrase_source,
    pkcs11_generation,
    pkcs11_generation_options,
)
from trustboot.errors import ConfigError, OperationalError
from trustboot.secureboot import authenticode, keyset

pki_option = click.option(
    "--pki", "pki", type=NonEmptyPath(path_type=Path, file_okay=False), envvar="TRUSTBOOT_PKI",
    default="pki", show_default=True, help="CA home (or TRUSTBOOT_PKI).")

MAX_EFI = authenticode.MAX_IMAGE


@click.group("secureboot")
def command() -> None:
    """UEFI Secure Boot with your own keys: PK, KEK and db from the CA home.

    \b
    Examples:
      trustboot secureboot init --name "Example Boot"
      trustboot secureboot export --out sb/ --ovmf-vars /usr/share/OVMF/OVMF_VARS_4M.fd
      trustboot secureboot sign ipxe-build/bin-x86_64-efi/ipxe.efi --out ipxe.signed.efi
      trustboot secureboot verify ipxe.signed.efi
    """


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@command.command("init")
@pki_option
@click.option("--name", required=True, help="Names the certificates: '<name> Secure Boot PK'.")
@click.option("--days", type=int, default=keyset.DEFAULT_DAYS, show_default=True)
@pkcs11_generation_options("the three keys", "pkcs11:token=secureboot")
@passphrase_options(what="the new Secure Boot keys (or the token PIN with --pkcs11)")
@json_option
def init_cmd(pki: Path, name: str, days: int, pkcs11_token: str | None,
             pkcs11_module: Path | None, passphrase_file: Path | None,
             passphrase_env: str | None, as_json: bool) -> None:
    """Create a PK, KEK and db key set (RSA-2048, SHA-256) in PKI/secureboot."""
    pkcs11 = pkcs11_generation(pkcs11_token, pkcs11_module)
    source = passphrase_source(passphrase_file, passphrase_env, confirm=pkcs11 is None)
    ks = keyset.init_keyset(pki, source, name=name, now=_now(), days=days, pkcs11=pkcs11)
    fingerprints = {r: c.fingerprint(hashes.SHA256()).hex() for r, c in ks.certificates.items()}
    if as_json:
        emit_json({"directory": str(ks.directory), "owner_guid": str(ks.owner),
                   "certificates": fingerprints,
                   "pkcs11": {r: ks.pkcs11[r] for r in keyset.ROLES} if ks.pkcs11 else None})
        return
    click.echo(f"Secure Boot key set in {ks.directory} (owner GUID {ks.owner})")
    for role, fp in fingerprints.items():
        click.echo(f"  {role:4} sha256 {fp}")
    click.echo("next: trustboot secureboot export --out DIR   (enrollment material)")


@command.command("export")
@pki_option
@click.option("--out", required=True, type=NonEmptyPath(path_type=Path, file_okay=False))
@click.option("--ovmf-vars", "ovmf_template", type=NonEmptyPath(path_type=Path, dir_okay=False),
              help="Also write OVMF_VARS.secboot.fd from this OVMF VARS template, keys "
                   "enrolled and Secure Boot on (needs virt-firmware).")
@passphrase_options(what="the Secure Boot keys (or their token's PIN)")
@json_option
def export_cmd(pki: Path, out: Path, ovmf_template: Path | None, passphrase_file: Path | None,
               passphrase_env: str | None, as_json: bool) -> None:
    """Write .crt/.cer/.esl/.auth for PK, KEK and db, and an enrollment README."""
    ks = keyset.load_keyset(pki)
    files = keyset.export(ks, out, passphrase_source(passphrase_file, passphrase_env),
                          now=_now(), ovmf_template=ovmf_template)
    if as_json:
        emit_json({"out": str(out), "files": [str(f) for f in files]})
        return
    for f in files:
        click.echo(str(f))


def _read_efi(path: Path) -> bytes:
    return fsutil.read_capped(path, MAX_EFI, "EFI binary")


@command.command("sign")
@pki_option
@click.argument("files", nargs=-1, required=True,
                type=NonEmptyPath(path_type=Path, dir_okay=False))
@click.option("--out", type=NonEmptyPath(path_type=Path),
              help="Output file (one input) or directory (several). Default: FILE.signed.efi "
                   "beside each input.")
@passphrase_options(what="the Secure Boot db key (or its token's PIN)")
@json_option
def sign_cmd(pki: Path, files: tuple[Path, ...], out: Path | None,
             passphrase_file: Path | None, passphrase_env: str | None, as_json: bool) -> None:
    """Sign EFI binaries with the db key (Authenticode, SHA-256)."""
    ks = keyset.load_keyset(pki)
    inputs = [(p, _read_efi(p)) for p in files]
    for path, data in inputs:  # every input is checked before the key is unlocked
        authenticode.prepare_unsigned(data, str(path))
    if out is not None and len(files) > 1 and not out.is_dir():
        raise ConfigError(f"--out {out} must be an existing directory for several files")
    signer = keyset.open_signer(ks, "db", passphrase_source(passphrase_file, passphrase_env),
                                now=_now())
    results = []
    for path, data in inputs:
        signed = keyset.sign_efi(data, str(path), signer)
        target = (out / path.name if out is not None and out.is_dir() else out) if out else \
            path.with_name(path.stem + ".signed" + path.suffix)
        report = authenticode.verify_image(signed, [ks.certificates["db"]], str(target))
        try:
            fsutil.atomic_write(target, signed, mode=0o644)
        except OSError as exc:
            raise OperationalError(f"cannot write {target}: {exc.strerror}") from None
        results.append({"file": str(path), "signed": str(target),
                        "authenticode_sha256": report.image_sha256,
                        "sha256_unsigned": _sha256(data), "sha256_signed": _sha256(signed)})
    if as_json:
        emit_json(results)
        return
    for r in results:
        click.echo(f"{r['signed']}: signed by db (authenticode {r['authenticode_sha256']})")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@command.command("verify")
@pki_option
@click.argument("files", nargs=-1, required=True,
                type=NonEmptyPath(path_type=Path, dir_okay=False))
@click.option("--db", "db_files", multiple=True, type=NonEmptyPath(path_type=Path, dir_okay=False),
              help="db certificate(s) to trust (PEM/DER). Default: the key set's db.crt.")
@json_option
def verify_cmd(pki: Path, files: tuple[Path, ...], db_files: tuple[Path, ...],
               as_json: bool) -> None:
    """Check EFI binaries' Authenticode signatures as firmware with this db would.

    Exit 0 when every file would start, 4 when one would not.
    """
    if db_files:
        trusted = [_load_cert(p) for p in db_files]
    else:
        trusted = [keyset.load_keyset(pki).certificates["db"]]
    reports = []
    for path in files:
        report = authenticode.verify_image(_read_efi(path), trusted, str(path))
        reports.append({"file": str(path), "signer": report.signer_subject,
                        "signer_sha256": report.signer_sha256,
                        "authenticode_sha256": report.image_sha256, "ok": True})
    if as_json:
        emit_json(reports)
        return
    for r in reports:
        click.echo(f"{r['file']}: OK, signed by {r['signer']}")


def _load_cert(path: Path) -> x509.Certificate:
    data = fsutil.read_capped(path, keyset.MAX_CERT, "db certificate")
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise ConfigError(f"{path} is not a certificate (PEM or DER)") from None

