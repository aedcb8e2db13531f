"""`trustboot verify`: would iPXE's imgverify accept this signature? Offline, iPXE's rules."""

from __future__ import annotations

import datetime as dt
import re
import stat
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustboot.ca.store import CertificateAuthority, load_trusted_roots
from trustboot.cli._common import (
    NonEmptyPath,
    emit_json,
    is_interactive,
    json_option,
    pki_explicit,
    progress,
    warn,
)
from trustboot.cms.certinfo import DEFAULT_IPXE, IpxeVersion
from trustboot.cms.freshness import ReplayWindow, replay_window
from trustboot.cms.sign import hash_file
from trustboot.cms.verify import (
    MAX_SIGNATURE_SIZE,
    TrustAnchor,
    Verdict,
    digest_algorithms,
    fingerprint,
    oversized,
    verify_signature,
)
from trustboot.errors import ConfigError, OperationalError, TrustbootError, VerificationError
from trustboot.fsutil import read_capped
from trustboot.keys.signer import load_certificates
from trustboot.text import clean

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
        return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
    except (ValueError, OverflowError, OSError):
        raise ConfigError(f"--at {text!r} is not a time between years 1 and 9999",
                          hint="use ISO 8601 (2026-01-31T12:00:00Z) or @EPOCH") from None


def _operand_size(path: Path, what: str) -> int:
    """The size of FILE or its .sig, which must be a readable regular file.

    Like `sign`, an operand that is missing, unreadable or not a regular file (a FIFO or
    device would block or never end; a directory) is an I/O failure, exit 1, whether it is
    the image or the signature; option files (--trust, --cert, --crl) are configuration, 3.
    """
    try:
        st = path.stat()
    except OSError as exc:
        reason = "no such file" if isinstance(exc, FileNotFoundError) else exc.strerror
        raise OperationalError(f"cannot read {what} {path}: {reason}",
                               hint=f"check the {what} path") from None
    if not stat.S_ISREG(st.st_mode):
        raise OperationalError(f"cannot read {what} {path}: not a regular file",
                               hint=f"check the {what} path (a regular file, not a "
                               "directory, device, FIFO or socket)")
    return st.st_size


def _read_signature(path: Path) -> bytes | None:
    """The .sig (None: larger than iPXE's 4 MiB, refused unread); never more than the cap."""
    if _operand_size(path, "signature") > MAX_SIGNATURE_SIZE:
        return None
    try:
        return read_capped(path, MAX_SIGNATURE_SIZE, "signature")
    except ConfigError as exc:  # replaced or grown since the check above: still I/O
        raise OperationalError(exc.message, hint=exc.hint) from None


MAX_CERT_FILE = 1 << 20


def _certificates(path: Path, what: str) -> list[x509.Certificate]:
    """load_certificates() on a regular file of sane size only (/dev/zero, FIFOs refused)."""
    try:
        st = path.stat()
    except OSError:
        st = None  # load_certificates() names the problem
    if st is not None and (not stat.S_ISREG(st.st_mode) or st.st_size > MAX_CERT_FILE):
        raise ConfigError(f"{what} {path} is not a regular file of at most 1 MiB",
                          hint="pass a PEM or DER certificate file")
    return load_certificates(path, what)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def open_ca(pki: Path, *, required: bool) -> CertificateAuthority | None:
    """The CA home in ``pki``, opened once per command: its roots (load_trust) and its
    index (publish.revocation.Revocations) are then one snapshot. None when ``pki``
    holds no CA, or when it does not open and nothing ``required`` it (the default
    --pki beside roots given with --trust: it may be any directory called pki)."""
    if not CertificateAuthority.exists(pki):
        return None
    try:
        return CertificateAuthority.open(pki)
    except TrustbootError:
        if required:
            raise
        return None


def load_trust(specs: tuple[str, ...], pki: Path, *,
               ca: CertificateAuthority | None = None) -> list[TrustAnchor]:
    """--trust files (only the first certificate of each counts, as in iPXE's TRUST=) or
    sha256:HEX fingerprints; without --trust, the pki's root (of ``ca`` when the caller
    opened it already)."""
    items = [s.strip() for spec in specs for s in spec.split(",") if s.strip()]
    if specs and not items:
        # `--trust "$ROOT"` with ROOT unset (a fork's CI job gets no secrets) must not
        # fall back to whatever CA home is in the working directory
        raise ConfigError("--trust names no trust anchor (an empty value: an unset "
                          "variable?)", hint="pass the root certificate iPXE was built "
                          "with (TRUST=), or leave --trust out to trust the CA home's root")
    if not items:
        root = pki / "ca.crt"
        if not root.is_file():
            raise ConfigError(
                "no trust anchors: pass --trust ROOT.crt (what iPXE was built with, TRUST=)",
                hint=f"or run inside a CA home ({root} does not exist)")
        # The pki's roots only after its permissions and index fingerprints were checked
        # (two during a root rotation, as firmware built then trusts both).
        anchors = []
        for cert in (ca.trusted_roots() if ca is not None else load_trusted_roots(pki)):
            der = _der(cert)
            anchors.append(TrustAnchor(fingerprint(der), der,
                                       f'"{cert.subject.rfc4514_string()}"'))
        return anchors
    anchors = []
    for item in items:
        match = _FPR.match(item)
        if not match and item.lower().startswith("sha256:") and not Path(item).exists():
            raise ConfigError(f"--trust {item!r} is not a SHA-256 fingerprint",
                              hint="give sha256: and 64 hex digits (colons allowed), "
                              "or a root certificate file")
        if match and not Path(item).exists():
            hexdigits = match.group(1).replace(":", "")
            if len(hexdigits) != 64:
                raise ConfigError(f"--trust {item!r} is not a SHA-256 fingerprint",
                                  hint="give sha256: and 64 hex digits (colons allowed), "
                                  "or a root certificate file")
            anchors.append(TrustAnchor(bytes.fromhex(hexdigits), None, item))
            continue
        cert = _certificates(Path(item), "trust anchor")[0]
        der = _der(cert)
        anchors.append(TrustAnchor(fingerprint(der), der, f'"{cert.subject.rfc4514_string()}"'))
    return anchors


EPILOG = """\b
Examples:
  trustboot verify vmlinuz --trust pki/ca.crt --signer release-signer
  trustboot verify initrd.img --sig initrd.img.sig --trust root1.crt,root2.crt \\
      --cert extra-ca.crt --at 2027-06-01T08:00:00Z --ipxe-version 2.0.0 --json

\b
Exit codes: 0 iPXE would accept it, 1 FILE or its signature cannot be read (missing, not a
regular file), 3 bad option or certificate file, 4 iPXE would refuse it. --json prints
file, signature, size, at, ipxe_version, ok, failure, warnings, signers, revoked and
replay_window (also when iPXE would refuse it; exit 4 then).
"""


@click.command("verify", epilog=EPILOG)
# FILE and --sig are checked by _operand_size (exit 1 for any non-regular file, a
# directory included), not by click (exit 2 for a directory only).
@click.argument("file", type=NonEmptyPath(path_type=Path))
@click.option("--sig", "sig_path", type=NonEmptyPath(path_type=Path), metavar="FILE",
              help="The detached signature (default: FILE.sig).")
@click.option("--trust", "trust", multiple=True, metavar="ROOT[,ROOT]",
              help="Trusted root certificate file(s), or sha256:HEX, as iPXE's TRUST= "
              "(default: the pki's ca.crt).")
@click.option("--cert", "certs", multiple=True, metavar="FILE[,FILE]",
              help="Extra certificates built into iPXE with CERT= (comma-separated, as "
              "CERT=, or repeated).")
@click.option("--signer", "signer", metavar="NAME",
              help="As imgverify --signer: the signer's common name or SAN DNS/IP.")
@click.option("--at", "at", metavar="TIME", default="now", show_default=True,
              help="The client's clock (ISO 8601 or @EPOCH).")
@click.option("--ipxe-version", "ipxe_version", default=str(DEFAULT_IPXE), show_default=True,
              help="Target iPXE (1.21.1: RSA only; 2.0.0: ECDSA P-256/P-384; master).")
@click.option("--pki", "pki", type=NonEmptyPath(path_type=Path, file_okay=False),
              envvar="TRUSTBOOT_PKI", show_envvar=True, default=Path("pki"), show_default=True,
              help="CA home whose root is trusted when --trust is not given.")
@click.option("--assume-ocsp-reachable", "ocsp_reachable", is_flag=True,
              help="A chain certificate names an OCSP responder that the booting client can "
              "reach and that answers 'good': predict acceptance (with a warning) instead "
              "of iPXE's rejection when the responder is unreachable.")
@click.option("--crl", "crl_path", type=NonEmptyPath(path_type=Path, dir_okay=False),
              help="A CRL from the signer's CA (e.g. the published crl.pem): a signer it "
              "revokes is warned about (iPXE reads no CRL, so the verdict stays).")
@click.option("--platform", "platform", type=click.Choice(["bios", "efi"]), default=None,
              help="The client's iPXE platform, where it matters: BIOS builds have no IPv6, "
              "so an IPv6 --signer never matches there (default: unknown; it matches, with "
              "a warning).")
@click.option("--strict", "strict", is_flag=True,
              help="Also refuse what iPXE accepts but no honest signing tool writes "
              "(altered skipped fields, mismatched algorithm names, non-DER encodings).")
@json_option
def command(file: Path, sig_path: Path | None, trust: tuple[str, ...], certs: tuple[str, ...],
            signer: str | None, at: str, ipxe_version: str, pki: Path, ocsp_reachable: bool,
            crl_path: Path | None, platform: str | None, strict: bool, as_json: bool
            ) -> None:
    """Check FILE's signature exactly as iPXE's imgverify would.

    Exit 0 if iPXE would accept it, 4 if not (the rule, certificate and fix are named).
    Warnings name what iPXE accepts but should not be there; --strict refuses those.
    """
    try:
        version = IpxeVersion.parse(ipxe_version)
    except ValueError as exc:
        raise ConfigError(str(exc), hint="e.g. --ipxe-version 2.0.0") from None
    now = parse_time(at)
    # the pki counts when it was given, or when it is the source of the roots
    ca = open_ca(pki, required=not trust or pki_explicit())
    anchors = load_trust(trust, pki, ca=ca)
    cert_paths = [Path(s.strip()) for spec in certs for s in spec.split(",") if s.strip()]
    extra = [_der(c) for path in cert_paths for c in _certificates(path, "--cert file")]
    # The image first: a mistyped FILE is named as such, not as its missing FILE.sig (and
    # a directory such as '.' or '/' is refused before FILE.sig is derived from its name).
    size = _operand_size(file, "image")
    sig_path = sig_path or file.with_name(file.name + ".sig")
    signature = _read_signature(sig_path)
    verdict: Verdict
    if signature is None:
        verdict = oversized()
    else:
        names = sorted(digest_algorithms(signature, version))
        digests: dict[str, bytes] = {}
        if names:  # none: the signature is unreadable and is refused without the digest
            with progress(size, f"hashing {file.name}",
                          enabled=not as_json and is_interactive()) as update:
                digests, size = hash_file(file, names, update)
        verdict = verify_signature(signature, digests, trust=anchors, now=now,
                                   signer_name=signer, extra_certs=extra,
                                   ipxe_version=version,
                                   assume_ocsp_reachable=ocsp_reachable, strict=strict,
                                   ipv6=None if platform is None else platform == "efi")
    revoked = _revoked(ca, crl_path, verdict, now)
    window = _replay_window(verdict, now)
    if as_json:
        emit_json({"file": str(file), "signature": str(sig_path), "size": size,
                   "at": now.isoformat(), "ipxe_version": str(version)} | verdict.to_json()
                  | {"revoked": revoked,
                     "replay_window": window.to_json() if window else None})
    else:
        for w in verdict.warnings:
            warn(f"{w.message}\n  hint: {w.remedy}")
        for r in revoked:
            warn(f"{r['message']}\n  hint: {r['remedy']}")
    if verdict.failure is not None:
        f = verdict.failure
        raise VerificationError(f"{file}: iPXE would reject {sig_path.name}: {f.message} "
                                f"[rule: {f.rule}]", hint=f.remedy, rule=f.rule,
                                subject=f.certificate)
    if not as_json:
        for s in verdict.signers:
            click.echo(f"OK {clean(str(file))}: signed by \"{clean(s.common_name)}\" "
                       f"({s.digest_algorithm}, "
                       f"{s.signature_algorithm}); iPXE {version} accepts it until "
                       f"{s.chain_not_after.isoformat()} (chain expiry)")
        if window is not None:
            click.echo(f"   {window.describe()}")


def _replay_window(verdict: Verdict, now: dt.datetime) -> ReplayWindow | None:
    """What the signature allows from ``now`` (the --at clock): its earliest-ending signer."""
    if not verdict.signers or verdict.failure is not None:
        return None
    first = min(verdict.signers, key=lambda s: s.chain_not_after)
    return replay_window(first.chain_not_after, now=now, not_before=first.not_before)


REVOKED_REMEDY = ("rotate the signer: issue a new signing certificate, re-sign every image, "
                  "and if the revoked key may be compromised rebuild the firmware with a new "
                  "root (TRUST=) so that its signatures stop verifying")


def _revoked(ca: CertificateAuthority | None, crl_path: Path | None, verdict: Verdict,
             now: dt.datetime) -> list[dict[str, str | None]]:
    """The signers the CA index (the certificate revoked, or its key revoked as compromised
    with another certificate) or the --crl revoke: a warning, not a verdict, as iPXE reads
    no CRL. The same lookup as publish's gate (publish.revocation.Revocations), so verify
    never calls clean what publish would refuse. An unrelated pki never speaks about a
    foreign signer (it must know the certificate, or its key as compromised)."""
    from trustboot.cms.revocation import reason_name
    from trustboot.publish.revocation import Revocations

    if not verdict.signers:
        return []
    revocations = Revocations.load(ca=ca, crl=crl_path, warn=warn)
    home = ca.path if ca is not None else None  # (the index speaks only when there is one)
    found: list[dict[str, str | None]] = []
    for r in revocations.of(verdict.signers, now):
        who = f'"{clean(r.signer, limit=200)}" (' + (f"{r.name}, " if r.name else "") \
            + f"serial {r.serial:x})"
        if r.by_crl:
            said = (f"is revoked by {crl_path} since {r.revoked_at}"
                    + f" ({reason_name(r.reason)})")
        elif r.via is not None:
            said = (f"has the key revoked as compromised with certificate {r.via} in "
                    f"{home}"
                    + (f" at {r.revoked_at}" if r.revoked_at else ""))
        else:
            said = (f"was revoked in {home}"
                    + (f" at {r.revoked_at}" if r.revoked_at else ""))
        found.append({
            "name": r.name or r.signer, "serial": f"{r.serial:x}",
            "revoked_at": r.revoked_at or "", "reason": reason_name(r.reason), "via": r.via,
            "message": f"the signer {who} {said}; iPXE does not read CRLs, so it still "
                       "accepts this signature",
            "remedy": REVOKED_REMEDY,
        })
    return found
