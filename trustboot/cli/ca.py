"""`trustboot ca`: the private CA (init, issue, revoke, crl, list, show, export, check)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustboot.ca import profiles, rotation
from trustboot.ca.store import (
    CRL_DIR,
    CertificateAuthority,
    IssuedEntry,
    IssueResult,
    fingerprint,
    pem,
    utcnow,
)
from trustboot.cli._common import (
    NonEmptyPath,
    emit_json,
    json_option,
    passphrase_options,
    passphrase_source,
    pin_options,
    pin_source,
    pkcs11_generation,
    pkcs11_generation_options,
    warn,
)
from trustboot.cli.publish import origin_access_options
from trustboot.errors import ConfigError, OperationalError, VerificationError
from trustboot.fsutil import (
    PUBLIC_FILE_MODE,
    atomic_write,
    make_output_dir,
    read_capped,
    remove_stale_temps,
)

MAX_CSR_FILE = 1 << 20

pki_option = click.option(
    "--pki", "pki", type=NonEmptyPath(path_type=Path, file_okay=False), envvar="TRUSTBOOT_PKI",
    default=Path("pki"), show_default=True, show_envvar=True,
    help="The CA home directory.",
)


class _CaGroup(click.Group):
    """``ca secureboot`` is ``trustboot secureboot`` (its key set lives in the CA home),
    imported only when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "secureboot"])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "secureboot":
            from trustboot.cli.secureboot import command as secureboot

            return secureboot
        return super().get_command(ctx, cmd_name)


EPILOG = """\b
Examples (ca.pass, key.pass: passphrases, one line each; without the options you are asked):
  trustboot ca init --name "Example Boot" --org Example --passphrase-file ca.pass
  trustboot ca issue codesign release-signer --passphrase-file ca.pass \\
      --key-passphrase-file key.pass
  trustboot ca issue server boot.example.net 192.0.2.10 --passphrase-file ca.pass \\
      --key-passphrase-file key.pass
  trustboot ca list
  trustboot ca show release-signer --json
  trustboot ca export --out trust/
  trustboot ca renew release-signer --days 30 --passphrase-file ca.pass
  trustboot ca revoke release-signer --reason superseded --passphrase-file ca.pass
  trustboot ca check

\b
Exit codes: 0 ok, 1 I/O or a store locked by another run, 3 invalid input, a pki that
fails its checks (permissions, index fingerprints) or a rotation step out of order,
4 a broken operation log (ca check), a signer that can no longer sign, or rotation
evidence that does not show the fleet trusts the next root.
"""


@click.group("ca", cls=_CaGroup, epilog=EPILOG)
def command() -> None:
    """The private CA: root + issuing CA, code-signing, server and client certificates."""


@command.command("init")
@pki_option
@click.option("--name", "common_name", default="trustboot", show_default=True,
              help="CA name (at most 48 characters); subjects become '<name> Root CA' and "
                   "'<name> Issuing CA' (numbered after a rotation).")
@click.option("--org", "organization", help="Organization (O=) for every subject.")
@click.option("--key-type", default="rsa-4096", show_default=True,
              type=click.Choice(profiles.CA_KEY_TYPES), help="Root key type.")
@click.option("--issuing-key-type", type=click.Choice(profiles.CA_KEY_TYPES),
              help="Issuing CA key type (default: same as the root).")
@click.option("--root-days", type=int, default=20 * 365, show_default=True,
              help="Validity of the root certificate in days.")
@click.option("--issuing-days", type=int, default=5 * 365, show_default=True,
              help="Validity of the issuing CA certificate in days.")
@click.option("--crl-url", help="CRL distribution point put into issued certificates.")
@click.option("--ocsp-url",
              help="OCSP responder put into AIA. iPXE then requires an OCSP answer at boot.")
@pkcs11_generation_options("the root and issuing keys", "pkcs11:token=ca")
@passphrase_options(what="the new CA keys (or the token PIN with --pkcs11)")
@json_option
def init_cmd(pki: Path, common_name: str, organization: str | None, key_type: str,
             issuing_key_type: str | None, root_days: int, issuing_days: int,
             crl_url: str | None, ocsp_url: str | None, pkcs11_token: str | None,
             pkcs11_module: Path | None, passphrase_file: Path | None,
             passphrase_env: str | None, as_json: bool) -> None:
    """Create a root CA and an issuing CA under it (never overwrites an existing CA)."""
    pkcs11 = pkcs11_generation(pkcs11_token, pkcs11_module)
    for url, opt in ((crl_url, "--crl-url"), (ocsp_url, "--ocsp-url")):
        if url is not None:
            _check_distribution_url(url, opt)
    # CertificateAuthority.init refuses an existing CA before it asks for a passphrase.
    source = passphrase_source(passphrase_file, passphrase_env, confirm=pkcs11 is None)
    ca, warnings = CertificateAuthority.init(
        pki, source, common_name=common_name, key_type=key_type,
        issuing_key_type=issuing_key_type, root_days=root_days, issuing_days=issuing_days,
        options=profiles.CAOptions(organization=organization, crl_url=crl_url,
                                   ocsp_url=ocsp_url),
        pkcs11=pkcs11,
    )
    for w in warnings:
        warn(w)
    data = {
        "pki": str(pki),
        "root": _cert_summary(ca.root_cert),
        "issuing": _cert_summary(ca.issuing_cert),
    }
    if as_json:
        emit_json(data)
    else:
        click.echo(f"CA created in {pki}")
        click.echo(f"  root     {ca.root_cert.subject.rfc4514_string()}  "
                   f"sha256 {fingerprint(ca.root_cert)}")
        click.echo(f"  issuing  {ca.issuing_cert.subject.rfc4514_string()}  "
                   f"sha256 {fingerprint(ca.issuing_cert)}")
        if pkcs11 is None:
            click.echo(f"Build iPXE with TRUST={pki / 'ca.crt'}; keep {pki / 'private'} "
                       "offline and backed up.")
        else:  # no key file was written: the keys never leave the token
            click.echo(f"Build iPXE with TRUST={pki / 'ca.crt'}; the CA keys stay in the "
                       f"token; keep {pki} backed up.")


@command.group("issue")
def issue_group() -> None:
    """Issue a leaf certificate: codesign NAME | server DNS-or-IP... | client NAME."""


def _issue_options(func: Any) -> Any:
    func = json_option(func)
    func = passphrase_options(prefix="key-", what="the new key")(func)
    func = passphrase_options(what="the issuing CA key")(func)
    func = click.option("--csr", type=NonEmptyPath(path_type=Path, dir_okay=False, exists=True),
                        help="Certify the public key of this CSR instead of generating a key "
                        "(e.g. a key held in an HSM).")(func)
    func = click.option("--pkcs11-key", "pkcs11_key", metavar="URI",
                        help="Certify the key pair in a PKCS#11 token named by this RFC 7512 "
                        "URI (its public key object is read; the private key never leaves "
                        "the token, but first signs a challenge: --pin-file/--pin-env).")(func)
    func = pin_options(func)
    func = click.option("--pkcs11-module", "pkcs11_module",
                        type=NonEmptyPath(path_type=Path, dir_okay=False),
                        envvar="TRUSTBOOT_PKCS11_MODULE", show_envvar=True,
                        help="PKCS#11 module (.so) for --pkcs11-key.")(func)
    func = click.option("--days", type=int, help="Validity in days (profile default).")(func)
    func = click.option("--key-type", default="rsa-3072", show_default=True,
                        type=click.Choice(profiles.LEAF_KEY_TYPES),
                        help="Type of the key generated for the certificate (ECDSA needs "
                        "iPXE 2.0.0; a client key for PRIVKEY= must be RSA).")(func)
    func = pki_option(func)
    return func


def _check_distribution_url(url: str, opt: str) -> None:
    """A CRL or OCSP URL goes into every certificate the CA issues (and iPXE fetches an
    OCSP one at every boot): an http(s) URL with a host, nothing a URI may not hold."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        ok = (parts.scheme in ("http", "https") and bool(parts.hostname)
              and all(0x21 <= ord(c) < 0x7F for c in url))
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{opt} {url!r} is not an http(s) URL with a host (no spaces, "
                          "no characters outside ASCII)",
                          hint=f"e.g. {opt} http://pki.example.net/issuing.crl (percent-"
                               "encode anything else)")


def _do_issue(profile: str, name: str, sans: list[str], pki: Path, key_type: str,
              days: int | None, csr: Path | None, passphrase_file: Path | None,
              passphrase_env: str | None, key_passphrase_file: Path | None,
              key_passphrase_env: str | None, as_json: bool, pkcs11_key: str | None = None,
              pkcs11_module: Path | None = None, pin_file: Path | None = None,
              pin_env: str | None = None) -> None:
    ca = CertificateAuthority.open(pki)
    public_key = None
    if pkcs11_key is not None:
        if csr is not None:
            raise ConfigError("give only one of --csr and --pkcs11-key")
        from trustboot.keys.pkcs11 import proven_public_key
        from trustboot.keys.ref import parse_ref

        ref = parse_ref(pkcs11_key)
        if ref.scheme != "pkcs11":
            raise ConfigError(f"--pkcs11-key {ref} is not a pkcs11: URI",
                              hint="pkcs11:token=T;object=O")
        # Only a key the token proves it holds (it signs a fresh challenge) is certified.
        public_key = proven_public_key(ref, pkcs11_module, pin_source(pin_file, pin_env))
    ca_source = passphrase_source(passphrase_file, passphrase_env)
    key_source = None if (csr or public_key) else passphrase_source(
        key_passphrase_file, key_passphrase_env, confirm=True, option="--key-passphrase")
    result: IssueResult = ca.issue(
        profile, name, ca_source, key_source, sans=sans, key_type=key_type, days=days,
        csr_pem=read_capped(csr, MAX_CSR_FILE, "CSR") if csr else None, public_key=public_key,
        csr_origin=f"CSR {csr}")
    for w in result.warnings:
        warn(w)
    e = result.entry
    if as_json:
        emit_json(e.to_json() | {"cert_path": str(e.cert_path),
                                 "key_path": str(e.key_path) if e.key_file else None})
    else:
        click.echo(f"issued {profile} certificate {name!r} serial {e.serial:x}, valid until "
                   f"{e.not_after[:10]}")
        click.echo(f"  certificate {pki / 'issued' / f'{name}.crt'} (stored as {e.cert_path})")
        if e.key_file:
            click.echo(f"  key         {pki / 'private' / f'{name}.key'} (encrypted, 0600; "
                       f"stored as {e.key_path})")


@issue_group.command("codesign")
@click.argument("name")
@_issue_options
def issue_codesign(name: str, **kw: Any) -> None:
    """A code-signing certificate: keyUsage digitalSignature, EKU codeSigning."""
    _do_issue("codesign", name, [], **kw)


@issue_group.command("client")
@click.argument("name")
@_issue_options
def issue_client(name: str, **kw: Any) -> None:
    """A TLS client certificate (EKU clientAuth), e.g. for iPXE's PRIVKEY= (RSA only)."""
    _do_issue("client", name, [], **kw)


@issue_group.command("server")
@click.argument("hosts", nargs=-1, required=True)
@click.option("--name", help="Certificate name in the pki (default: the first host).")
@_issue_options
def issue_server(hosts: tuple[str, ...], name: str | None, **kw: Any) -> None:
    """A TLS server certificate (EKU serverAuth) for the given DNS names and IPs."""
    for h in hosts:
        profiles.parse_san(h)  # validate every host before the name is derived from one
    if name is None:
        name = hosts[0].replace("*", "wildcard")
        try:
            profiles.check_name(name)
        except ConfigError:
            raise ConfigError(f"{hosts[0]!r} cannot be the certificate's name (the first "
                              "host is, unless --name gives one)",
                              hint=f"give a name: --name boot-server {' '.join(hosts)}"
                              ) from None
    _do_issue("server", name, list(hosts), **kw)


@command.command("revoke")
@pki_option
@click.argument("name")
@click.option("--reason", default="unspecified", show_default=True,
              type=click.Choice(CertificateAuthority.REASONS))
@click.option("--serial", metavar="HEX",
              help="Revoke this certificate of NAME (default: its current one).")
@passphrase_options(what="the issuing CA key")
@json_option
def revoke_cmd(pki: Path, name: str, reason: str, serial: str | None,
               passphrase_file: Path | None, passphrase_env: str | None,
               as_json: bool) -> None:
    """Revoke a leaf certificate and publish a new CRL (crl.pem).

    NAME's current certificate is revoked (after `ca renew` an older one may then become
    current); with --reason key_compromise every certificate of NAME with the same key."""
    ca = CertificateAuthority.open(pki)
    entry = ca.revoke(name, passphrase_source(passphrase_file, passphrase_env), reason=reason,
                      serial=_parse_serial(serial) if serial else None)
    crl = ca.crl_listing(entry)
    issuer = ca.issuer_entry(entry)
    if crl is None and issuer is not None \
            and issuer.sha256 != ca.active_entry("issuing").sha256:
        # a CRL must be signed by the certificate's issuer, and that key is not here
        warn(f"serial {entry.serial:x} was issued by the previous issuing CA {issuer.serial:x}, "
             "whose key is not in the CA home: it is revoked in the index (trustboot refuses "
             "to sign with it), but no CRL lists it (crl.pem is the active issuing CA's); "
             "once no current certificate needs that CA, retire it (trustboot ca rotate "
             f"issuing --retire {issuer.serial:x}) so its chain leaves trust and exports")
    if as_json:
        emit_json({**entry.to_json(), "crl": str(crl) if crl else None})
    else:
        click.echo(f"revoked {name!r} serial {entry.serial:x} ({reason}); "
                   + (f"listed in the CRL {crl}" if crl else "on no CRL"))


@command.command("crl")
@pki_option
@click.option("--days", type=int, help="Until nextUpdate (default: 30; with --root, 365).")
@click.option("--root", "root", is_flag=True,
              help="The root's CRL instead (root-crl.pem, signed by the root key): a TLS "
                   "server checking client certificates against CRLs (nginx ssl_crl, "
                   "`origin nginx-config --client-crl`) needs it besides crl.pem.")
@passphrase_options(what="the CA key")
@json_option
def crl_cmd(pki: Path, days: int | None, root: bool, passphrase_file: Path | None,
            passphrase_env: str | None, as_json: bool) -> None:
    """Generate a fresh CRL signed by the issuing CA (or, with --root, by the root)."""
    from trustboot.ca.store import ROOT_CRL_DAYS

    ca = CertificateAuthority.open(pki)
    source = passphrase_source(passphrase_file, passphrase_env)
    # `--days 0` is refused (the library's range check), never read as "the default"
    if root:
        path = ca.generate_root_crl(source, days=ROOT_CRL_DAYS if days is None else days)
    else:
        path = ca.generate_crl(source, days=30 if days is None else days)
    if as_json:
        emit_json({"crl": str(path), "crl_number": ca.crl_number})
    else:
        click.echo(f"CRL number {ca.crl_number} written to {path}")


@command.command("list")
@pki_option
@click.option("--all", "show_all", is_flag=True, help="Include revoked and expired.")
@json_option
def list_cmd(pki: Path, show_all: bool, as_json: bool) -> None:
    """Every certificate with status and days to expiry; '*' marks the current one of
    each name (the one that signs) and the active CA certificates."""
    ca = CertificateAuthority.open(pki)
    now = utcnow()
    rows = [e for e in ca.entries if show_all or ca.status_of(e, now) == "valid"]
    if as_json:
        emit_json([_entry_json(ca, e, now) for e in rows])
        return
    header = (f"  {'NAME':<28} {'PROFILE':<9} {'STATUS':<8} {'DAYS':>6}  {'EXPIRES':<10}  "
              "SERIAL")
    click.echo(header)
    for e in rows:
        data = _entry_json(ca, e, now)
        mark = "*" if data["current"] else " "
        click.echo(f"{mark} {e.name:<28} {e.profile:<9} {data['status']:<8} "
                   f"{data['days_left']:>6}  {e.not_after[:10]}  {e.serial:x}")


def _is_current(ca: CertificateAuthority, e: IssuedEntry, now: dt.datetime) -> bool:
    if e.profile in ("root", "issuing"):
        return e.sha256 == ca.active_entry(e.profile).sha256
    return ca.current(e.name, now) is e


def _entry_json(ca: CertificateAuthority, e: IssuedEntry, now: dt.datetime) -> dict[str, Any]:
    return e.to_json(now) | {"status": ca.status_of(e, now),
                             "current": _is_current(ca, e, now)}


def _parse_serial(text: str) -> int:
    try:
        return int(text.removeprefix("0x"), 16)
    except ValueError:
        raise ConfigError(f"--serial {text!r} is not a hexadecimal serial number",
                          hint="copy it from `trustboot ca list --all`") from None


@command.command("show")
@pki_option
@click.argument("name")
@click.option("--pem", "as_pem", is_flag=True,
              help="Print the certificate in PEM (not with --json).")
@json_option
def show_cmd(pki: Path, name: str, as_pem: bool, as_json: bool) -> None:
    """Details of one certificate (root-ca and issuing-ca name the CA certificates)."""
    if as_pem and as_json:
        # two outputs for one stdout: PEM there would break --json's one-document rule
        raise click.UsageError("give only one of --pem and --json (the JSON names the "
                               "certificate's PEM file: cert_file)")
    ca = CertificateAuthority.open(pki)
    entry = ca.get(name)
    cert = entry.load_cert()
    if as_pem:
        click.echo(pem(cert).decode(), nl=False)
        return
    data = _entry_json(ca, entry, utcnow()) | _cert_summary(cert)
    if as_json:
        emit_json(data)
        return
    for key in ("name", "profile", "status", "subject", "issuer", "serial", "not_before",
                "not_after", "days_left", "sha256", "key_type", "extensions", "cert_file",
                "key_file"):
        value = data.get(key)
        if isinstance(value, list):
            click.echo(f"{key + ':':<12}")
            for item in value:
                click.echo(f"  {item}")
        else:
            click.echo(f"{key + ':':<12} {value}")


@command.command("export")
@pki_option
@click.option("--out", type=NonEmptyPath(path_type=Path, file_okay=False), required=True,
              help="Directory to write the public trust material into.")
@click.option("--uefi-tls", is_flag=True,
              help="Also write uefi-cacerts.esl: the root as an EFI signature list, the form "
              "UEFI firmware takes as its HTTPS Boot trust (edk2 'cacerts').")
@json_option
def export_cmd(pki: Path, out: Path, uefi_tls: bool, as_json: bool) -> None:
    """Public trust material: root.pem (one certificate, for iPXE TRUST=), chain.pem
    (issuing + root, what signatures carry), crl.pem, crls/ (the CRLs of previous issuing
    CAs, for leaves they issued) and fingerprints; once `ca crl --root` made the root's
    CRL, also root-crl.pem and chain-crl.pem (the CRLs of both CAs of chain.pem: nginx's
    ssl_crl, `origin nginx-config --client-crl`)."""
    ca = CertificateAuthority.open(pki)
    crl = ca.crl_pem()
    root_crl = ca.root_crl_pem()
    previous_crls = ca.previous_crl_pems()
    make_output_dir(out, "export directory")  # others could swap the root before use
    remove_stale_temps(out)  # of an export killed an hour or more ago
    files = {
        "root": out / "root.pem",
        "issuing": out / "issuing-ca.pem",
        "chain": out / "chain.pem",
        "crl": out / "crl.pem",
    }
    contents = {
        "root": pem(ca.root_cert),
        "issuing": pem(ca.issuing_cert),
        "chain": b"".join(pem(c) for c in ca.chain()),
        "crl": crl,
    }
    for name in ("root-crl.pem", "chain-crl.pem"):
        if root_crl is None and (out / name).is_file() and not (out / name).is_symlink():
            (out / name).unlink()  # a CRL of another CA home must not be handed on
    if root_crl is not None:
        files["root_crl"] = out / "root-crl.pem"
        files["chain_crl"] = out / "chain-crl.pem"
        contents["root_crl"] = root_crl
        contents["chain_crl"] = crl + root_crl
    # During a root rotation firmware must trust both roots: the other one goes into its
    # own file (iPXE's TRUST= takes one certificate per file).
    step = rotation.status(ca)
    other = "root_next" if step.step == "begun" else "root_previous"
    others = ca.trusted_roots()[1:]
    for cert in others:
        files[other] = out / f"{other.replace('_', '-')}.pem"
        contents[other] = pem(cert)
    stale = out / ("root-previous.pem" if other == "root_next" else "root-next.pem")
    for leftover in [stale] + ([] if others else [out / "root-next.pem",
                                                  out / "root-previous.pem"]):
        if leftover.is_file() and not leftover.is_symlink():
            leftover.unlink()  # a retired root must not stay in an export someone builds from
    if uefi_tls:
        from trustboot.secureboot import efi

        files["uefi_tls"] = out / "uefi-cacerts.esl"
        contents["uefi_tls"] = efi.x509_list(
            [c.public_bytes(serialization.Encoding.DER) for c in ca.trusted_roots()],
            efi.TRUSTBOOT_OWNER)
    crl_dir = out / CRL_DIR
    if previous_crls or crl_dir.exists() or crl_dir.is_symlink():
        make_output_dir(crl_dir, "export directory")
        remove_stale_temps(crl_dir)
        for leftover in crl_dir.glob("*.pem"):
            if leftover.name not in previous_crls and leftover.is_file() \
                    and not leftover.is_symlink():
                leftover.unlink()  # no longer a CRL of this CA home
    written = {**{files[k]: c for k, c in contents.items()},
               **{crl_dir / name: c for name, c in previous_crls.items()}}
    for path, content in written.items():
        try:
            atomic_write(path, content, mode=PUBLIC_FILE_MODE)
        except OSError as exc:
            raise OperationalError(f"cannot write {path}: {exc.strerror}",
                                   hint="choose an --out directory you can write to") from None
    data: dict[str, Any] = {k: str(v) for k, v in files.items()}
    data["crls"] = [str(crl_dir / name) for name in previous_crls]
    data["root_sha256"] = fingerprint(ca.root_cert)
    data["issuing_sha256"] = fingerprint(ca.issuing_cert)
    data["trust_sha256"] = [fingerprint(c) for c in ca.trusted_roots()]
    data["rotation"] = step.step
    trust = ",".join(str(files[k]) for k in ("root", other) if k in files)
    # iPXE's TRUST= keeps only fingerprints: every trusted root's bytes go in CERT= too.
    data["make_args"] = f"TRUST={trust} CERT={trust},{files['issuing']}"
    if as_json:
        emit_json(data)
    else:
        for k, v in files.items():
            click.echo(f"{k:<8} {v}")
        for name in previous_crls:
            click.echo(f"{'crl':<8} {crl_dir / name} (a previous issuing CA's)")
        click.echo(f"root sha256 {data['root_sha256']}")
        click.echo(f"iPXE: make ... {data['make_args']}")


@command.command("check")
@pki_option
@json_option
def check_cmd(pki: Path, as_json: bool) -> None:
    """Check the store (index, files and signatures agree, and no two code-signing names
    differ only in case, which iPXE's --signer does not tell apart: exit 3 when they do
    not), the hash chain of the operation log (exit 4 at the first broken entry) and that index.json
    agrees with the signed CRLs and the log (exit 4 when it does not)."""
    ca = CertificateAuthority.open(pki)
    conflicts = ca.index_conflicts()
    problems = [p for p in ca.check() if p not in conflicts]
    log = ca.check_log()
    if as_json:
        emit_json({"pki": str(pki), "entries": len(ca.entries), "problems": problems,
                   "conflicts": conflicts, "log": log.to_json()})
    else:
        for p in conflicts:
            click.echo(f"conflict: {p}")
        for p in problems:
            click.echo(f"problem: {p}")
        if log.legacy:
            click.echo(f"log: {log.legacy} unchained legacy entries (lines 1-{log.legacy}) "
                       "predate the hash chain; it starts at line "
                       f"{log.legacy + 1}")
        if log.problem:
            click.echo(f"log: line {log.problem.line}: {log.problem.kind}: "
                       f"{log.problem.message}")
        else:
            click.echo(f"log: {log.lines} entries, chain intact; head seq {log.head_seq} "
                       f"sha256 {log.head_sha256} (record it elsewhere to protect the end of "
                       "the log)")
        if not problems and not conflicts:
            click.echo(f"{pki}: {len(ca.entries)} certificates, consistent")
    if conflicts:
        raise VerificationError(
            f"{pki / 'index.json'} disagrees with the CA's signed CRLs or its log.jsonl: "
            f"{conflicts[0]}",
            hint="index.json or log.jsonl was edited, cut or restored from an old copy: "
            "restore the copies that match from a backup; CA writes refuse until then "
            "(`ca crl` from this index could drop a revocation)",
            rule="index-conflict")
    if log.problem:
        raise VerificationError(
            f"the operation log {pki / 'log.jsonl'} was changed after it was written: first "
            f"broken entry at line {log.problem.line} ({log.problem.kind})",
            hint="compare it with a backup of log.jsonl; entries from that line on cannot be "
            "trusted (the certificates themselves are checked against index.json)",
            rule="log-chain")
    if problems:
        raise ConfigError(f"the CA in {pki} has {len(problems)} problem(s)",
                          hint="each problem above names its remedy: what a killed run left "
                          "is repaired by the next CA write (e.g. `trustboot ca crl`); "
                          "anything else, restore the pki from a backup")


@command.command("renew")
@click.argument("name")
@click.option("--days", type=int, help="Validity in days (profile default).")
@click.option("--rekey", is_flag=True, help="Generate a new key (default: keep the key).")
@click.option("--key-type", type=click.Choice(profiles.LEAF_KEY_TYPES),
              help="Key type of the new key with --rekey (default: the current one's).")
@pki_option
@passphrase_options(what="the issuing CA key")
@passphrase_options(prefix="key-", what="the new key (with --rekey)")
@json_option
def renew_cmd(name: str, days: int | None, rekey: bool, key_type: str | None, pki: Path,
              passphrase_file: Path | None, passphrase_env: str | None,
              key_passphrase_file: Path | None, key_passphrase_env: str | None,
              as_json: bool) -> None:
    """A new certificate for the leaf NAME from the active issuing CA, with the same key or
    a new one (--rekey). The previous certificate stays valid until it expires or is
    revoked; the new one becomes current: signing as NAME uses it."""
    ca = CertificateAuthority.open(pki)
    key_source = passphrase_source(key_passphrase_file, key_passphrase_env, confirm=True,
                                   option="--key-passphrase") if rekey else None
    result = ca.renew(name, passphrase_source(passphrase_file, passphrase_env), key_source,
                      days=days, rekey=rekey, key_type=key_type)
    for w in result.warnings:
        warn(w)
    e = result.entry
    name = e.name  # as stored: the name may have been typed in another case
    if as_json:
        emit_json(e.to_json() | {"cert_path": str(pki / "issued" / f"{name}.crt"),
                                 "rekey": rekey, "current": True})
    else:
        click.echo(f"renewed {e.profile} certificate {name!r}: serial {e.serial:x}, valid until "
                   f"{e.not_after[:10]}{' (new key)' if rekey else ' (same key)'}")
        click.echo(f"  certificate {pki / 'issued' / f'{name}.crt'} (now current)")


@command.command("status")
@pki_option
@json_option
def status_cmd(pki: Path, as_json: bool) -> None:
    """Where the CA stands: active root and issuing CA, the step of a root rotation, and
    what comes next."""
    ca = CertificateAuthority.open(pki)
    st = rotation.status(ca)
    if as_json:
        emit_json({"pki": str(pki)} | st.to_json())
        return
    click.echo(f"root rotation step: {st.step}")
    click.echo(f"  {st.description}")
    click.echo(f"  active root     sha256 {st.active_root}")
    click.echo(f"  active issuing  sha256 {st.active_issuing}")
    if st.next_root:
        click.echo(f"  next root       sha256 {st.next_root}")
    if st.previous_root:
        click.echo(f"  previous root   sha256 {st.previous_root}")
    for record in st.evidence:
        click.echo(f"  evidence ({record.get('kind')}): {record.get('description')}")
    click.echo(f"next: {st.next_step}")


@command.group("rotate")
def rotate_group() -> None:
    """Rotate CA certificates: `issuing` (one step) or `root` (begin, promote, retire)."""


@rotate_group.command("issuing")
@pki_option
@click.option("--days", type=int, help="Validity of the new issuing CA (default 5 years).")
@click.option("--key-type", type=click.Choice(profiles.CA_KEY_TYPES),
              help="Key type (default: the CA's issuing key type).")
@click.option("--retire", "retire_serial", metavar="HEX",
              help="Instead: retire the previous issuing CA with this serial (refused while "
              "a current leaf still depends on it).")
@passphrase_options(what="the CA keys (the root's unlocks the rotation)")
@json_option
def rotate_issuing_cmd(pki: Path, days: int | None, key_type: str | None,
                       retire_serial: str | None, passphrase_file: Path | None,
                       passphrase_env: str | None, as_json: bool) -> None:
    """A new issuing CA under the same root: it issues from now on; leaves of the previous
    one keep verifying with their own chain. Firmware trusts the root: nothing to rebuild."""
    ca = CertificateAuthority.open(pki)
    if retire_serial is not None:
        entry = rotation.retire_issuing(ca, _parse_serial(retire_serial))
        verb = "retired"
    else:
        result = rotation.rotate_issuing(ca, passphrase_source(passphrase_file, passphrase_env),
                                         days=days, key_type=key_type)
        entry = result.created[0]
        # a re-run after a kill finishes that rotation: never a second one unasked
        verb = "finished" if result.already_done else "created"
    if as_json:
        emit_json(entry.to_json() | {"action": verb})
    elif verb == "finished":
        click.echo(f"finished the rotation a killed run began: issuing CA {entry.subject} "
                   f"serial {entry.serial:x} issues new certificates; its CRLs and log "
                   "entry are written (run the command again for another new issuing CA)")
    else:
        click.echo(f"{verb} issuing CA {entry.subject} serial {entry.serial:x}"
                   + (", now issuing new certificates" if verb == "created" else ""))


@rotate_group.group("root")
def rotate_root_group() -> None:
    """Replace the root in three steps: begin, promote, retire (see `ca status`)."""


def _emit_step(result: rotation.StepResult, as_json: bool) -> None:
    st = result.status
    if as_json:
        emit_json({"step": result.step, "already_done": result.already_done,
                   "status": st.to_json(),
                   "created": [e.to_json() for e in result.created],
                   "renewed": [e.to_json() for e in result.renewed],
                   "retired": [e.to_json() for e in result.retired],
                   "evidence": result.evidence})
        return
    if result.already_done:
        click.echo(f"`{result.step}` had already completed; its remaining work is done")
    for e in result.created:
        click.echo(f"created {e.profile} CA {e.subject} sha256 {e.sha256}")
    for record in result.evidence:
        click.echo(f"evidence ({record['kind']}): {record['description']}")
    for e in result.renewed:
        click.echo(f"renewed {e.name} under the new chain: serial {e.serial:x}")
    for e in result.retired:
        click.echo(f"retired {e.profile} CA {e.subject} (kept in the pki as an archive)")
    click.echo(f"root rotation step: {st.step}; next: {st.next_step}")


@rotate_root_group.command("begin")
@pki_option
@click.option("--key-type", type=click.Choice(profiles.CA_KEY_TYPES),
              help="Key type of the next root (default: the CA's).")
@click.option("--issuing-key-type", type=click.Choice(profiles.CA_KEY_TYPES))
@click.option("--root-days", type=int, default=20 * 365, show_default=True,
              help="Validity of the root certificate in days.")
@click.option("--issuing-days", type=int, default=5 * 365, show_default=True,
              help="Validity of the issuing CA certificate in days.")
@passphrase_options(what="the CA keys (the new keys get the same passphrase)")
@json_option
def rotate_root_begin(pki: Path, key_type: str | None, issuing_key_type: str | None,
                      root_days: int, issuing_days: int, passphrase_file: Path | None,
                      passphrase_env: str | None, as_json: bool) -> None:
    """Step 1: create the next root and its issuing CA beside the active ones."""
    ca = CertificateAuthority.open(pki)
    result = rotation.begin_root(ca, passphrase_source(passphrase_file, passphrase_env),
                                 root_days=root_days, issuing_days=issuing_days,
                                 key_type=key_type, issuing_key_type=issuing_key_type)
    _emit_step(result, as_json)


PROMOTE_HELP = """Step 2: the next root becomes active; current leaves are re-certified under it.

\b
Evidence that the fleet's firmware trusts the next root (at least one; recorded in
index.json, the op log and `ca status --json`):
  --build-manifest FILE  `ipxe build`'s manifest.json (or a release.json carrying it): its
                         trust must list the next root, its trust check must find it.
  --from-origin URL      the release LIVE on a publish origin: its release.json and
                         release.json.sig are read as served (TLS: the pki's ca.crt or
                         --ca-file, never the system store), the signature judged with the
                         CA's roots, and its iPXE build record checked by the same rule.
  --audit-report FILE    a `trustboot audit --json` report of one segment, next to the
                         firmware evidence above: every boot file the audit was offered
                         and fetched (TFTP files named by DHCP/ProxyDHCP offers, HTTP(S)
                         boot URLs of DHCPv4 option 67 / DHCPv6 option 59) must be, by
                         sha256, an output of a build that trusts the next root. Scripts
                         (e.g. the iPXE script offered to iPXE) and well-known names the
                         audit guessed do not count; a boot file not fetched in full, an
                         audit that stopped at a bound or did not follow, or one with no
                         boot file refuses the promotion.
  --confirm-fleet        you checked it another way.

\b
Exit codes: 0 promoted, 1 origin/network failure, 3 bad input or out of order,
4 the evidence does not show the fleet trusts the next root.
"""


@rotate_root_group.command("promote", help=PROMOTE_HELP)
@pki_option
@click.option("--build-manifest", "manifests", multiple=True,
              type=NonEmptyPath(path_type=Path, dir_okay=False),
              help="Evidence: manifest.json of the deployed firmware's `ipxe build` (or its "
              "release.json); must list the next root in its trust. Repeatable.")
@click.option("--from-origin", "origins", multiple=True, metavar="URL",
              help="Evidence: the iPXE build record of the release live on this publish "
              "origin (signed release.json). Repeatable.")
@click.option("--entry-path", default="boot.ipxe", show_default=True,
              help="With --from-origin: the firmware's entry object on the origin.")
@click.option("--audit-report", "audit_reports", multiple=True,
              type=NonEmptyPath(path_type=Path, dir_okay=False),
              help="Evidence per segment: `trustboot audit --json` report whose offered boot "
              "files must all be firmware of the builds above. Repeatable.")
@click.option("--confirm-fleet", is_flag=True,
              help="Evidence: you checked that the whole fleet runs firmware trusting the "
              "next root.")
@origin_access_options
@passphrase_options(what="the CA keys")
@json_option
def rotate_root_promote(pki: Path, manifests: tuple[Path, ...], origins: tuple[str, ...],
                        entry_path: str, audit_reports: tuple[Path, ...], confirm_fleet: bool,
                        passphrase_file: Path | None, passphrase_env: str | None,
                        as_json: bool, **kw: Any) -> None:
    ca = CertificateAuthority.open(pki)
    found = []
    st = rotation.status(ca)
    if origins and st.step == "begun" and st.next_root:
        from trustboot.ca.evidence import origin_evidence
        from trustboot.cli.publish import build_trust, open_cli_origin

        trust = build_trust({"trust": (), "pki": pki, "certs": ()})
        now = utcnow()
        for url in origins:
            origin, options = open_cli_origin(url, kw | {"pki": pki})
            with origin:
                found.append(origin_evidence(origin, st.next_root, trust=trust, now=now,
                                             options=options, entry_path=entry_path))
    result = rotation.promote_root(ca, passphrase_source(passphrase_file, passphrase_env),
                                   confirm_fleet=confirm_fleet, manifests=list(manifests),
                                   evidence=found, audit_reports=list(audit_reports))
    _emit_step(result, as_json)


@rotate_root_group.command("retire")
@pki_option
@json_option
def rotate_root_retire(pki: Path, as_json: bool) -> None:
    """Step 3: retire the previous root (out of trust and exports, kept archived)."""
    ca = CertificateAuthority.open(pki)
    _emit_step(rotation.retire_root(ca), as_json)


def _cert_summary(cert: x509.Certificate) -> dict[str, Any]:
    spec = profiles.key_spec_of(cert.public_key())
    exts = []
    for ext in cert.extensions:
        name = getattr(ext.oid, "_name", None) or ext.oid.dotted_string
        exts.append(f"{name}{' (critical)' if ext.critical else ''}: {_ext_value(ext.value)}")
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": f"{cert.serial_number:x}",
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "days_left": (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).days,
        "sha256": fingerprint(cert),
        "key_type": spec.label,
        "extensions": exts,
    }


def _ext_value(value: x509.ExtensionType) -> str:
    if isinstance(value, x509.BasicConstraints):
        return f"CA:{str(value.ca).upper()}" + (
            f", pathlen:{value.path_length}" if value.path_length is not None else "")
    if isinstance(value, x509.KeyUsage):
        names = ["digital_signature", "key_encipherment", "key_cert_sign", "crl_sign"]
        return ", ".join(n for n in names if getattr(value, n))
    if isinstance(value, x509.ExtendedKeyUsage):
        return ", ".join(getattr(o, "_name", o.dotted_string) for o in value)
    if isinstance(value, x509.SubjectAlternativeName):
        return ", ".join(str(v.value) for v in value)
    if isinstance(value, x509.SubjectKeyIdentifier):
        return value.digest.hex()
    if isinstance(value, x509.AuthorityKeyIdentifier):
        return (value.key_identifier or b"").hex()
    return type(value).__name__

