"""A hardened nginx site for a boot origin (``trustboot origin nginx-config``).

What it enforces, and why:

* TLS with a server certificate from the private CA; TLS 1.2 (iPXE's maximum) and 1.3, with
  only the AEAD/CBC suites iPXE implements (``http.IPXE_CIPHERS``), forward secrecy first.
* Anonymous GET/HEAD of published objects (booting clients have no credentials), never of
  dot-files (upload temp files, the publish lock).
* WebDAV writes (PUT, DELETE, MKCOL, COPY, MOVE) and PROPFIND only for a client presenting a
  certificate that chains to the CA (``ssl_verify_client optional`` + a map on the method and
  ``$ssl_client_verify``), with ``writers`` only one of those common names: anything else
  gets 403. With ``client_crl`` (``ssl_crl``), a revoked one is refused too; without it,
  revoking a publisher does not stop it writing.
* No symbolic links followed under the root, no directory listing, no gzip (iPXE hashes
  the bytes as sent), boot MIME types, ``releases/`` immutable and cacheable, the entry
  script and its signature never cached.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from trustboot.errors import ConfigError
from trustboot.publish.http import IPXE_CIPHERS, IPXE_LEGACY_CIPHERS
from trustboot.publish.manifest import check_entry_path

# a wildcard only as nginx takes one: "*.example.net" ("*" alone fails nginx -t)
_SERVER_NAME = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]+\]")
_LISTEN = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]:|([0-9.]+):|\*:)?([0-9]{1,5})")
_SIZE = re.compile(r"[0-9]{1,6}[kKmMgG]?")
_WRITER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a certificate name of the CA


@dataclass(frozen=True)
class NginxSite:
    server_names: tuple[str, ...]
    root: Path
    certificate: Path  # leaf + issuing CA (PEM), e.g. from `trustboot ca issue server`
    key: Path
    client_ca: Path  # the CA (chain.pem) client certificates must chain to
    listen: tuple[str, ...] = ("443",)
    key_password_file: Path | None = None
    entry_path: str = "boot.ipxe"
    body_temp_dir: Path | None = None  # same file system as root: PUT ends in a rename
    max_body_size: str = "8g"
    legacy_ipxe: bool = False  # also offer RSA key exchange (iPXE before ECDHE support)
    ipv6: bool = True
    # CRLs (PEM) of every CA in client_ca (nginx ssl_crl): without it a revoked
    # publisher certificate can still write
    client_crl: Path | None = None
    # common names of the client certificates that may write: without, any client
    # certificate of the CA can, the one `ipxe build --client-cert` puts in every boot
    # image included
    writers: tuple[str, ...] = ()
    # without writers, refused unless this says every client certificate may write
    unsafe_any_client_writes: bool = False


NO_WRITER_WARNING = ("no --writer: every client certificate of the CA can write to this "
                     "origin, one built into iPXE (ipxe build --client-cert) included")
NO_CRL_WARNING = ("no --client-crl (ssl_crl): a revoked publisher certificate can still "
                  "write to this origin")


_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.S)


def client_crl_problems(crl_pem: bytes, client_ca_pem: bytes, now: dt.datetime, *,
                        warn_within: dt.timedelta = dt.timedelta(days=7)
                        ) -> tuple[list[str], list[str]]:
    """(errors, warnings) of ``crl_pem`` as nginx's ssl_crl for ``client_ca_pem``. nginx
    wants a current CRL from every CA of a client's chain, the root's included: one
    missing, or past its nextUpdate, and it refuses every client certificate."""
    from cryptography import x509

    try:
        cas = x509.load_pem_x509_certificates(client_ca_pem)
    except ValueError as exc:
        return [f"the client CA file is not PEM certificates: {exc}"], []
    crls = []
    for block in _PEM_CRL.findall(crl_pem):
        try:
            crls.append(x509.load_pem_x509_crl(block))
        except ValueError as exc:
            return [f"holds a CRL that does not parse: {exc}"], []
    if not crls:
        return ["holds no PEM CRL"], []
    errors, warnings = [], []
    for ca in cas:
        name = ca.subject.rfc4514_string()
        mine = [c for c in crls if c.issuer == ca.subject
                and c.is_signature_valid(ca.public_key())]  # type: ignore[arg-type]
        if not mine:
            errors.append(f"has no CRL signed by {name}")
            continue
        ends = max(c.next_update_utc or now for c in mine)
        if ends <= now:
            errors.append(f"the CRL of {name} is out of date (nextUpdate {ends:%Y-%m-%d %H:%M}Z)")
        elif ends - now < warn_within:
            warnings.append(f"the CRL of {name} expires {ends:%Y-%m-%d %H:%M}Z: refresh it "
                            "and reload nginx before then, or every publisher is refused")
    return errors, warnings


def _path(value: Path, what: str) -> str:
    text = str(value)
    if not text.startswith("/") or any(c in text for c in ' ;{}"\'#$\\') or \
            any(ord(c) < 0x21 or ord(c) > 0x7E for c in text):
        raise ConfigError(f"{what} {text!r} must be an absolute path without spaces, quotes "
                          "or nginx syntax characters", hint="nginx paths are unquoted here")
    # '..' would defeat the check that nothing of nginx's own lies under --root
    if ".." in text.split("/"):
        raise ConfigError(f"{what} {text!r} holds a '..' segment",
                          hint="give the path without '..'")
    return text


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _outside_root(root: str, paths: dict[str, str]) -> None:
    """What nginx reads its TLS and client trust from, and its upload temp files, must not
    be served: under --root anyone could download the key (and its passphrase) or an
    upload in flight, and any publisher could PUT its own client CA or an empty CRL."""
    if root == "/":
        raise ConfigError("--root / would serve the whole file system to anyone, and let "
                          "publishers write anywhere nginx may",
                          hint="serve a directory of its own, e.g. --root /srv/boot")
    for what, path in paths.items():
        if _under(path, root):
            raise ConfigError(
                f"{what} {path} is inside --root {root}: anonymous clients could download "
                "it and publishers overwrite it",
                hint=f"keep it outside {root} (e.g. /etc/trustboot/, and uploads in "
                     "a sibling such as /srv/.dav-tmp)")


def _check_listen(listen: str) -> None:
    """PORT, ADDR:PORT or [V6]:PORT that nginx accepts: a port out of range or an
    address that is not one rendered a site that nginx -t refused at deploy time."""
    match = _LISTEN.fullmatch(listen)
    problem = None if match else "expected PORT, ADDR:PORT or [V6]:PORT"
    if match:
        v6, v4, port = match.groups()
        try:
            if v6 is not None:
                ipaddress.IPv6Address(v6)
            elif v4 is not None:
                ipaddress.IPv4Address(v4)
        except ValueError:
            problem = f"{v6 or v4} is not an IP address"
        if not 1 <= int(port) <= 65535:
            problem = f"port {port} is not 1-65535"
    if problem:
        raise ConfigError(f"--listen {listen!r}: {problem}",
                          hint="e.g. --listen 443 or --listen 192.0.2.10:443")


def render(site: NginxSite) -> str:
    """The site (a ``map`` and a ``server`` block, for /etc/nginx/sites-enabled/)."""
    if not site.server_names:
        raise ConfigError("at least one --server-name is needed")
    for name in site.server_names:
        if not _SERVER_NAME.fullmatch(name):
            raise ConfigError(f"--server-name {name!r} is not a host name")
    for listen in site.listen:
        _check_listen(listen)
    size = site.max_body_size
    # nginx reads 0 as "no limit": one upload could then fill the disk
    if not _SIZE.fullmatch(size) or int(size.rstrip("kKmMgG")) == 0:
        raise ConfigError(f"--max-body-size {size!r}: expected a size above 0, e.g. 8g",
                          hint="nginx takes 0 as no limit at all")
    entry = check_entry_path(site.entry_path)
    root = _path(site.root, "--root")
    cert = _path(site.certificate, "--cert")
    key = _path(site.key, "--key")
    client_ca = _path(site.client_ca, "--client-ca")
    ciphers = ":".join(IPXE_CIPHERS + (IPXE_LEGACY_CIPHERS if site.legacy_ipxe else ()))
    # default_server: a client sending no SNI (an IP-literal URL) is verified in the
    # default server's TLS context; were that another site's, a client certificate from
    # the CA *it* trusts would read here as $ssl_client_verify SUCCESS and could write
    listens = []
    for listen in site.listen:
        listens.append(f"    listen {listen} ssl default_server;")
        if site.ipv6 and listen.isdigit():
            listens.append(f"    listen [::]:{listen} ssl default_server;")
    password_file = (_path(site.key_password_file, "--key-password-file")
                     if site.key_password_file else None)
    temp_dir = _path(site.body_temp_dir, "--body-temp-dir") if site.body_temp_dir else None
    crl_file = _path(site.client_crl, "--client-crl") if site.client_crl else None
    _outside_root(root, {k: v for k, v in (
        ("--cert", cert), ("--key", key), ("--key-password-file", password_file),
        ("--client-ca", client_ca), ("--client-crl", crl_file),
        ("--body-temp-dir", temp_dir)) if v is not None})
    password = f"    ssl_password_file {password_file};\n" if password_file else ""
    temp = f"    client_body_temp_path {temp_dir};\n" if temp_dir else ""
    if crl_file is not None:
        # nginx checks a CRL for every CA of the client's chain, root included, and
        # refuses every client once one is past its nextUpdate: refresh it, then reload
        crl = (f"    # one CRL per CA of {client_ca}; refresh before nextUpdate, then reload\n"
               f"    ssl_crl {crl_file};\n")
    else:
        crl = f"    # WARNING: {NO_CRL_WARNING}\n"
    names = " ".join(site.server_names)
    for writer in site.writers:
        if not _WRITER.fullmatch(writer):
            raise ConfigError(f"--writer {writer!r} is not a certificate name",
                              hint="the NAME of `trustboot ca issue client NAME`")
    if not site.writers and not site.unsafe_any_client_writes:
        # one built into iPXE is in every boot image: anyone could PUT, DELETE and MOVE
        raise ConfigError(
            "no --writer: every client certificate of the CA could write to this origin, "
            "one built into iPXE (ipxe build --client-cert) included, whose key is in every "
            "boot image anyone can download",
            hint="name the publishers: --writer publisher (the NAME of `trustboot ca issue "
                 "client NAME`, repeatable); --unsafe-any-client-writes lets every client "
                 "certificate of the CA write")
    # map variables are global to nginx, and a second map of the same name silently
    # replaces the first: two sites (staging, production) shared the last one's rules
    tag = hashlib.sha256(repr(site).encode()).hexdigest()[:12]
    if site.writers:
        # $ssl_client_s_dn is RFC 2253, the certificate's last RDN first: CN=NAME(,O=...)
        alternatives = "|".join(re.escape(w) for w in site.writers)
        client = (
            "# Publishers: a verified client certificate whose common name is a --writer\n"
            "# (not any of the CA's: one built into iPXE is in every boot image).\n"
            f'map "$ssl_client_verify|$ssl_client_s_dn" $trustboot_client_{tag} {{\n'
            "    default NONE;\n"
            f'    "~^SUCCESS\\|CN=({alternatives})(,|$)" SUCCESS;\n'
            "}\n\n")
        verdict = f"$trustboot_client_{tag}"
    else:
        client = f"# WARNING: {NO_WRITER_WARNING}\n\n"
        verdict = "$ssl_client_verify"
    headers = ('        add_header X-Content-Type-Options nosniff always;\n')
    return f"""\
# trustboot boot origin for {names}
# Generated by `trustboot origin nginx-config`. Reads are anonymous (booting clients);
# writes need a client certificate from the CA in {client_ca}.

{client}# 0 = allowed. Anonymous: GET/HEAD of paths with no dot-file segment. With a verified
# client certificate: reads and the WebDAV methods trustboot publish uses.
map "$request_method|$uri|{verdict}" $trustboot_denied_{tag} {{
    default 1;
    "~^(GET|HEAD)\\|(/[^./|][^/|]*)+\\|[^|]*$" 0;
    "~^(GET|HEAD|PUT|DELETE|MKCOL|COPY|MOVE|PROPFIND|OPTIONS)\\|[^|]*\\|SUCCESS$" 0;
}}

server {{
{chr(10).join(listens)}
    server_name {names};
    server_tokens off;

    ssl_certificate {cert};
    ssl_certificate_key {key};
{password}    # iPXE speaks TLS 1.2 at most, with these suites (src/crypto/mishmash)
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers {ciphers};
    ssl_prefer_server_ciphers on;
    ssl_ecdh_curve X25519:prime256v1:secp384r1;
    ssl_session_tickets off;

    # writers authenticate with a client certificate from our CA
    ssl_client_certificate {client_ca};
    ssl_verify_client optional;
    ssl_verify_depth 3;
{crl}
    root {root};
    # nothing under the root is a link (publishers cannot make one): one planted there
    # (releases -> /etc) would serve what it points to
    disable_symlinks on from=$document_root;
    autoindex off;
    gzip off;
    charset off;
    etag on;
    client_max_body_size {site.max_body_size};
{temp}
    default_type application/octet-stream;
    types {{
        text/plain ipxe;
        application/pkcs7-signature sig;
        application/json json;
        application/octet-stream efi kpxe lkrn iso img cpio gz xz zst;
    }}

    if ($trustboot_denied_{tag}) {{
        return 403;
    }}

    dav_methods PUT DELETE MKCOL COPY MOVE;
    dav_ext_methods PROPFIND OPTIONS;
    create_full_put_path on;
    dav_access user:rw group:r all:r;

    location / {{
{headers}        add_header Cache-Control "no-cache" always;
    }}

    # releases are immutable: cache them anywhere
    location ^~ /releases/ {{
{headers}        add_header Cache-Control "public, max-age=31536000, immutable" always;
    }}

    # the entry script and its signature change on every switch: never cache them
    location = /{entry} {{
{headers}        add_header Cache-Control "no-store" always;
    }}
    location = /{entry}.sig {{
{headers}        add_header Cache-Control "no-store" always;
    }}
}}
"""
