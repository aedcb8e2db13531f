"""`trustboot verify`: would iPXE's imgverify accept this signature? Offline, iPXE's rules."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustboot.ca.store import load_trusted_root
from trustboot.cli._common import emit_json, is_interactive, json_option, progress, warn
from trustboot.cms.certinfo import DEFAULT_IPXE, IpxeVersion
from trustboot.cms.sign import hash_file
from trustboot.cms.verify import (
    MAX_SIGNATURE_SIZE,
    TrustAnchor,
    digest_algorithms,
    fingerprint,
    verify_signature,
)
from trustboot.errors import ConfigError, OperationalError, VerificationError
from trustboot.keys.signer import load_certificates

_FPR = re.compile(r"^(?:sha256:)?([0-9a-fA-F:]{64,95})$")


def parse_time(text: str) -> dt.datetime:
    """ISO 8601 (UTC if no offset), ``@EPOCH``, or ``now``."""
    raw = text.strip()
    if raw == "now":
        return dt.datetime.now(dt.UTC)
    try:
        if raw.startswith("@"):
            return dt.datetime.fromtimestamp(int(raw[1:]), dt.UTC)
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--at {text!r} is not a time",
                          hint="use ISO 8601 (2026-01-31T12:00:00Z) or @EPOCH") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _read_signature(path: Path) -> bytes:
    """The .sig, read no further than iPXE's limit: a larger one is refused unread."""
    try:
        with path.open("rb") as fh:
            return fh.read(MAX_SIGNATURE_SIZE + 1)
    except OSError as exc:
        raise OperationalError(f"cannot read signature {path}: {exc.strerror}",
                               hint="check the signature path") from None


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def load_trust(specs: tuple[str, ...], pki: Path) -> list[TrustAnchor]:
    """--trust files (only the first certificate of each counts, as in iPXE's TRUST=) or
    sha256:HEX fingerprints; without --trust, the pki's root."""
    items = [s.strip() for spec in specs for s in spec.split(",") if s.strip()]
    if not items:
        root = pki / "ca.crt"
        if not root.is_file():
            raise ConfigError(
                "no trust anchors: pass --trust ROOT.crt (what iPXE was built with, TRUST=)",
                hint=f"or run inside a CA home ({root} does not exist)")
        # The pki's root only after its permissions and index fingerprint were checked.
        cert = load_trusted_root(pki)
        der = _der(cert)
        return [TrustAnchor(fingerprint(der), der, f'"{cert.subject.rfc4514_string()}"')]
    anchors = []
    for item in items:
        match = _FPR.match(item)
        if match and not Path(item).exists():
            hexdigits = match.group(1).replace(":", "")
            if len(hexdigits) != 64:
                raise ConfigError(f"--trust {item!r} is not a SHA-256 fingerprint",
                                  hint="give sha256: and 64 hex digits (colons allowed), "
                                  "or a root certificate file")
            anchors.append(TrustAnchor(bytes.fromhex(hexdigits), None, item))
            continue
        cert = load_certificates(Path(item), "trust anchor")[0]
        der = _der(cert)
        anchors.append(TrustAnchor(fingerprint(der), der, f'"{cert.subject.rfc4514_string()}"'))
    return anchors


@click.command("verify")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--sig", "sig_path", type=click.Path(path_type=Path, dir_okay=False),
              help="The detached signature (default: FILE.sig).")
@click.option("--trust", "trust", multiple=True, metavar="ROOT[,ROOT]",
              help="Trusted root certificate file(s), or sha256:HEX, as iPXE's TRUST= "
              "(default: the pki's ca.crt).")
@click.option("--cert", "certs", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Extra certificates built into iPXE with CERT= (repeatable).")
@click.option("--signer", "signer", metavar="NAME",
              help="As imgverify --signer: the signer's common name or SAN DNS/IP.")
@click.option("--at", "at", metavar="TIME", default="now", show_default=True,
              help="The client's clock (ISO 8601 or @EPOCH).")
@click.option("--ipxe-version", "ipxe_version", default=str(DEFAULT_IPXE), show_default=True,
              help="Target iPXE (1.21.1: RSA only; 2.0.0: ECDSA P-256/P-384; master).")
@click.option("--pki", "pki", type=click.Path(path_type=Path, file_okay=False),
              envvar="TRUSTBOOT_PKI", default=Path("pki"), show_default=True,
              help="CA home whose root is trusted when --trust is not given.")
@json_option
def command(file: Path, sig_path: Path | None, trust: tuple[str, ...], certs: tuple[Path, ...],
            signer: str | None, at: str, ipxe_version: str, pki: Path, as_json: bool) -> None:
    """Check FILE's signature exactly as iPXE's imgverify would.

    Exit 0 if iPXE would accept it, 4 if not (the rule, certificate and fix are named).
    """
    try:
        version = IpxeVersion.parse(ipxe_version)
    except ValueError as exc:
        raise ConfigError(str(exc), hint="e.g. --ipxe-version 2.0.0") from None
    now = parse_time(at)
    anchors = load_trust(trust, pki)
    extra = [_der(c) for path in certs for c in load_certificates(path, "--cert file")]
    sig_path = sig_path or file.with_name(file.name + ".sig")
    signature = _read_signature(sig_path)
    if not file.is_file():
        raise OperationalError(f"cannot read image {file}: no such file",
                               hint="check the image path")
    names = sorted(digest_algorithms(signature, version))
    size = file.stat().st_size
    digests: dict[str, bytes] = {}
    if names:  # none: the signature is unreadable and is refused without the image's digest
        with progress(size, f"hashing {file.name}",
                      enabled=not as_json and is_interactive()) as update:
            digests, size = hash_file(file, names, update)
    verdict = verify_signature(signature, digests, trust=anchors, now=now, signer_name=signer,
                               extra_certs=extra, ipxe_version=version)
    if as_json:
        emit_json({"file": str(file), "signature": str(sig_path), "size": size,
                   "at": now.isoformat(), "ipxe_version": str(version)} | verdict.to_json())
    else:
        for w in verdict.warnings:
            warn(f"{w.message}\n  hint: {w.remedy}")
    if verdict.failure is not None:
        f = verdict.failure
        raise VerificationError(f"{file}: iPXE would reject {sig_path.name}: {f.message} "
                                f"[rule: {f.rule}]", hint=f.remedy, rule=f.rule,
                                subject=f.certificate)
    if not as_json:
        for s in verdict.signers:
            click.echo(f"OK {file}: signed by \"{s.common_name}\" ({s.digest_algorithm}, "
                       f"{s.signature_algorithm}); iPXE {version} accepts it until "
                       f"{s.chain_not_after.isoformat()} (chain expiry)")
