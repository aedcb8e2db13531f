"""`trustboot ca`: the private CA (init, issue, revoke, crl, list, show, export, check)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustboot.ca import profiles
from trustboot.ca.store import (
    CertificateAuthority,
    IssueResult,
    fingerprint,
    pem,
    utcnow,
)
from trustboot.cli._common import (
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
from trustboot.errors import ConfigError, OperationalError
from trustboot.fsutil import (
    PUBLIC_FILE_MODE,
    atomic_write,
    make_dirs,
    read_capped,
    remove_stale_temps,
)

MAX_CSR_FILE = 1 << 20

pki_option = click.option(
    "--pki", "pki", type=click.Path(path_type=Path, file_okay=False), envvar="TRUSTBOOT_PKI",
    default=Path("pki"), show_default=True, show_envvar=True,
    help="The CA home directory.",
)


@click.group("ca")
def command() -> None:
    """The private CA: root + issuing CA, code-signing, server and client certificates."""


@command.command("init")
@pki_option
@click.option("--name", "common_name", default="trustboot", show_default=True,
              help="CA name; subjects become '<name> Root CA' and '<name> Issuing CA'.")
@click.option("--org", "organization", help="Organization (O=) for every subject.")
@click.option("--key-type", default="rsa-4096", show_default=True,
              type=click.Choice(profiles.CA_KEY_TYPES), help="Root key type.")
@click.option("--issuing-key-type", type=click.Choice(profiles.CA_KEY_TYPES),
              help="Issuing CA key type (default: same as the root).")
@click.option("--root-days", type=int, default=20 * 365, show_default=True)
@click.option("--issuing-days", type=int, default=5 * 365, show_default=True)
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
        if url is not None and not url.startswith(("http://", "https://")):
            raise ConfigError(f"{opt} {url!r} is not an http(s) URL")
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
        click.echo(f"Build iPXE with TRUST={pki / 'ca.crt'}; keep {pki / 'private'} offline "
                   "and backed up.")


@command.group("issue")
def issue_group() -> None:
    """Issue a leaf certificate: codesign NAME | server DNS-or-IP... | client NAME."""


def _issue_options(func: Any) -> Any:
    func = json_option(func)
    func = passphrase_options(prefix="key-", what="the new key")(func)
    func = passphrase_options(what="the issuing CA key")(func)
    func = click.option("--csr", type=click.Path(path_type=Path, dir_okay=False, exists=True),
                        help="Certify the public key of this CSR instead of generating a key "
                        "(e.g. a key held in an HSM).")(func)
    func = click.option("--pkcs11-key", "pkcs11_key", metavar="URI",
                        help="Certify the key pair in a PKCS#11 token named by this RFC 7512 "
                        "URI (its public key object is read; the private key never leaves "
                        "the token, but first signs a challenge: --pin-file/--pin-env).")(func)
    func = pin_options(func)
    func = click.option("--pkcs11-module", "pkcs11_module",
                        type=click.Path(path_type=Path, dir_okay=False),
                        envvar="TRUSTBOOT_PKCS11_MODULE", show_envvar=True,
                        help="PKCS#11 module (.so) for --pkcs11-key.")(func)
    func = click.option("--days", type=int, help="Validity in days (profile default).")(func)
    func = click.option("--key-type", default="rsa-3072", show_default=True,
                        type=click.Choice(profiles.LEAF_KEY_TYPES))(func)
    func = pki_option(func)
    return func


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
        csr_pem=read_capped(csr, MAX_CSR_FILE, "CSR") if csr else None, public_key=public_key)
    for w in result.warnings:
        warn(w)
    e = result.entry
    if as_json:
        emit_json(e.to_json() | {"cert_path": str(e.cert_path),
                                 "key_path": str(e.key_path) if e.key_file else None})
    else:
        click.echo(f"issued {profile} certificate {name!r} serial {e.serial:x}, valid until "
                   f"{e.not_after[:10]}")
        click.echo(f"  certificate {e.cert_path}")
        if e.key_file:
            click.echo(f"  key         {e.key_path} (encrypted, 0600)")


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
    _do_issue("server", name or hosts[0].replace("*", "wildcard"), list(hosts), **kw)


@command.command("revoke")
@pki_option
@click.argument("name")
@click.option("--reason", default="unspecified", show_default=True,
              type=click.Choice(CertificateAuthority.REASONS))
@passphrase_options(what="the issuing CA key")
@json_option
def revoke_cmd(pki: Path, name: str, reason: str, passphrase_file: Path | None,
               passphrase_env: str | None, as_json: bool) -> None:
    """Revoke a leaf certificate and publish a new CRL (crl.pem)."""
    ca = CertificateAuthority.open(pki)
    entry = ca.revoke(name, passphrase_source(passphrase_file, passphrase_env), reason=reason)
    if as_json:
        emit_json(entry.to_json())
    else:
        click.echo(f"revoked {name!r} serial {entry.serial:x} ({reason}); new CRL "
                   f"{pki / 'crl.pem'}")


@command.command("crl")
@pki_option
@click.option("--days", type=int, default=30, show_default=True, help="Until nextUpdate.")
@passphrase_options(what="the issuing CA key")
@json_option
def crl_cmd(pki: Path, days: int, passphrase_file: Path | None, passphrase_env: str | None,
            as_json: bool) -> None:
    """Generate a fresh CRL signed by the issuing CA."""
    ca = CertificateAuthority.open(pki)
    path = ca.generate_crl(passphrase_source(passphrase_file, passphrase_env), days=days)
    if as_json:
        emit_json({"crl": str(path), "crl_number": ca.crl_number})
    else:
        click.echo(f"CRL number {ca.crl_number} written to {path}")


@command.command("list")
@pki_option
@click.option("--all", "show_all", is_flag=True, help="Include revoked and expired.")
@json_option
def list_cmd(pki: Path, show_all: bool, as_json: bool) -> None:
    """Every certificate with status and days to expiry."""
    ca = CertificateAuthority.open(pki)
    now = utcnow()
    rows = [e for e in ca.entries if show_all or e.effective_status(now) == "valid"]
    if as_json:
        emit_json([e.to_json(now) for e in rows])
        return
    header = f"{'NAME':<28} {'PROFILE':<9} {'STATUS':<8} {'DAYS':>6}  {'EXPIRES':<10}  SERIAL"
    click.echo(header)
    for e in rows:
        data = e.to_json(now)
        click.echo(f"{e.name:<28} {e.profile:<9} {data['status']:<8} {data['days_left']:>6}  "
                   f"{e.not_after[:10]}  {e.serial:x}")


@command.command("show")
@pki_option
@click.argument("name")
@click.option("--pem", "as_pem", is_flag=True, help="Print the certificate in PEM.")
@json_option
def show_cmd(pki: Path, name: str, as_pem: bool, as_json: bool) -> None:
    """Details of one certificate (root-ca and issuing-ca name the CA certificates)."""
    ca = CertificateAuthority.open(pki)
    entry = ca.get(name)
    cert = entry.load_cert()
    if as_pem:
        click.echo(pem(cert).decode(), nl=False)
        return
    data = entry.to_json() | _cert_summary(cert)
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
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Directory to write the public trust material into.")
@click.option("--uefi-tls", is_flag=True,
              help="Also write uefi-cacerts.esl: the root as an EFI signature list, the form "
              "UEFI firmware takes as its HTTPS Boot trust (edk2 'cacerts').")
@json_option
def export_cmd(pki: Path, out: Path, uefi_tls: bool, as_json: bool) -> None:
    """Public trust material: root.pem (one certificate, for iPXE TRUST=), chain.pem
    (issuing + root, what signatures carry), crl.pem and fingerprints."""
    ca = CertificateAuthority.open(pki)
    crl = ca.crl_pem()
    make_dirs(out)
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
    if uefi_tls:
        from trustboot.secureboot import efi

        files["uefi_tls"] = out / "uefi-cacerts.esl"
        contents["uefi_tls"] = efi.x509_list(
            [ca.root_cert.public_bytes(serialization.Encoding.DER)], efi.TRUSTBOOT_OWNER)
    for kind, content in contents.items():
        try:
            atomic_write(files[kind], content, mode=PUBLIC_FILE_MODE)
        except OSError as exc:
            raise OperationalError(f"cannot write {files[kind]}: {exc.strerror}",
                                   hint="choose an --out directory you can write to") from None
    data: dict[str, Any] = {k: str(v) for k, v in files.items()}
    data["root_sha256"] = fingerprint(ca.root_cert)
    data["issuing_sha256"] = fingerprint(ca.issuing_cert)
    data["make_args"] = f"TRUST={files['root']} CERT={files['root']},{files['issuing']}"
    if as_json:
        emit_json(data)
    else:
        for k, v in files.items():
            click.echo(f"{k:<8} {v}")
        click.echo(f"root sha256 {data['root_sha256']}")
        click.echo(f"iPXE: make ... {data['make_args']}")


@command.command("check")
@pki_option
@json_option
def check_cmd(pki: Path, as_json: bool) -> None:
    """Check the store: index, files and signatures agree (exit 3 when they do not)."""
    ca = CertificateAuthority.open(pki)
    problems = ca.check()
    if as_json:
        emit_json({"pki": str(pki), "entries": len(ca.entries), "problems": problems})
    else:
        for p in problems:
            click.echo(f"problem: {p}")
        if not problems:
            click.echo(f"{pki}: {len(ca.entries)} certificates, consistent")
    if problems:
        raise ConfigError(f"the CA in {pki} has {len(problems)} problem(s)",
                          hint="restore the pki from backup")


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

