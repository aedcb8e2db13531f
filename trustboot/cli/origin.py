"""`trustboot origin`: a hardened nginx site for an origin, and a check of what it serves."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click

from trustboot.cli._common import NonEmptyPath, emit_json, json_option, warn
from trustboot.errors import ConfigError, ExitCode, OperationalError, VerificationError


@click.group("origin")
def command() -> None:
    """Set up and check an HTTPS boot origin.

    \b
    Examples:
      trustboot ca issue server boot.example.net
      trustboot origin nginx-config --server-name boot.example.net \\
          --cert /etc/trustboot/server.pem --key /etc/trustboot/server.key \\
          --key-password-file /etc/trustboot/server.pass \\
          --client-ca /etc/trustboot/chain.pem --root /srv/boot \\
          --client-crl /etc/trustboot/trust/chain-crl.pem --writer publisher \\
          > /etc/nginx/sites-enabled/trustboot
      trustboot origin check https://boot.example.net/boot.ipxe --signer boot-signer
      trustboot origin dhcp-config --http-boot x86_64=https://boot.example.net/fw/ipxe.efi \\
          --ipxe-script https://boot.example.net/boot.ipxe
    """


@command.command("dhcp-config")
@click.option("--http-boot", "http_boot", multiple=True, required=True, metavar="ARCH=URL",
              help="UEFI HTTPS Boot: the signed iPXE binary's URL for ARCH (x86_64, arm64, "
              "x86). Repeatable.")
@click.option("--ipxe-script", metavar="URL",
              help="Hand iPXE (user class iPXE) this script instead of the binary again.")
@click.option("--format", "fmt", type=click.Choice(["dnsmasq", "kea"]), default="dnsmasq",
              show_default=True, help="DHCP server the snippet is for.")
def dhcp_config(http_boot: tuple[str, ...], ipxe_script: str | None, fmt: str) -> None:
    """Print DHCP server snippets for UEFI HTTPS Boot of the signed iPXE (no TFTP).

    Firmware announcing vendor class HTTPClient gets the HTTPS URL of the binary for its
    architecture (option 93), with HTTPClient echoed back (firmware ignores offers without
    it). Serve the binary signed for Secure Boot and give the firmware our CA as its TLS
    trust (`trustboot ca export --uefi-tls`).
    """
    from trustboot.publish import dhcpconfig

    binaries: dict[str, str] = {}
    for item in http_boot:
        arch, sep, url = item.partition("=")
        if not sep:
            raise ConfigError(f"--http-boot {item!r} is not ARCH=URL",
                              hint="e.g. --http-boot x86_64=https://boot.example.net/ipxe.efi")
        if arch in binaries:
            raise ConfigError(f"--http-boot names {arch} twice")
        binaries[arch] = url
    config = dhcpconfig.HttpBoot(binaries, ipxe_script)
    click.echo(dhcpconfig.dnsmasq(config) if fmt == "dnsmasq" else dhcpconfig.kea(config),
               nl=False)


@command.command("nginx-config")
@click.option("--server-name", "server_names", multiple=True, required=True,
              help="Host name(s) the certificate is for (repeatable).")
@click.option("--root", type=NonEmptyPath(path_type=Path), default=Path("/srv/trustboot"),
              show_default=True, help="Directory served (the WebDAV root).")
@click.option("--cert", type=NonEmptyPath(path_type=Path), required=True,
              help="Server certificate + issuing CA (PEM), from `trustboot ca issue server`.")
@click.option("--key", type=NonEmptyPath(path_type=Path), required=True,
              help="Its private key (PEM).")
@click.option("--key-password-file", type=NonEmptyPath(path_type=Path),
              help="File with the key's passphrase (nginx ssl_password_file).")
@click.option("--client-ca", type=NonEmptyPath(path_type=Path), required=True,
              help="CA chain (PEM) that writers' client certificates must chain to "
                   "(the pki's chain.pem).")
@click.option("--client-crl", type=NonEmptyPath(path_type=Path),
              help="CRLs (PEM) of every CA in --client-ca, the root's included (nginx "
                   "ssl_crl): refuses revoked publisher certificates. Refresh it and reload "
                   "nginx before its nextUpdate: nginx refuses every client after it.")
@click.option("--writer", "writers", multiple=True, metavar="NAME",
              help="Only client certificates of this common name may write (the NAME of "
                   "`ca issue client NAME`; repeatable). Required, unless "
                   "--unsafe-any-client-writes.")
@click.option("--unsafe-any-client-writes", is_flag=True,
              help="Without --writer: let every client certificate of the CA write (one "
                   "built into iPXE, whose key is in every boot image, included); warns.")
@click.option("--listen", multiple=True, default=("443",), show_default=True,
              help="PORT, ADDR:PORT or [V6]:PORT (repeatable).")
@click.option("--no-ipv6", is_flag=True, help="Do not add [::]:PORT for a bare port.")
@click.option("--entry-path", default="boot.ipxe", show_default=True,
              help="The entry script (served with Cache-Control: no-store).")
@click.option("--body-temp-dir", type=NonEmptyPath(path_type=Path),
              help="Upload temp directory; on the same file system as --root.")
@click.option("--max-body-size", default="8g", show_default=True,
              help="Largest object accepted (nginx client_max_body_size; 0, no limit, is refused).")
@click.option("--legacy-ipxe", is_flag=True,
              help="Also offer RSA key exchange suites, for iPXE builds before ECDHE.")
def nginx_config(server_names: tuple[str, ...], root: Path, cert: Path, key: Path,
                 key_password_file: Path | None, client_ca: Path, listen: tuple[str, ...],
                 no_ipv6: bool, entry_path: str, body_temp_dir: Path | None,
                 max_body_size: str, legacy_ipxe: bool, client_crl: Path | None,
                 writers: tuple[str, ...], unsafe_any_client_writes: bool) -> None:
    """Print a hardened nginx site: TLS for iPXE, anonymous GET, writes with a client cert."""
    from trustboot.publish.nginx import NO_CRL_WARNING, NO_WRITER_WARNING, NginxSite, render

    site = NginxSite(server_names=server_names, root=root.absolute(),
                     certificate=cert.absolute(), key=key.absolute(),
                     key_password_file=key_password_file.absolute() if key_password_file
                     else None, client_ca=client_ca.absolute(), listen=listen,
                     entry_path=entry_path, ipv6=not no_ipv6,
                     body_temp_dir=body_temp_dir.absolute() if body_temp_dir else None,
                     max_body_size=max_body_size, legacy_ipxe=legacy_ipxe,
                     client_crl=client_crl.absolute() if client_crl else None,
                     writers=writers, unsafe_any_client_writes=unsafe_any_client_writes)
    text = render(site)
    if not writers:
        warn(NO_WRITER_WARNING + "; see `trustboot origin nginx-config --help`")
    if client_crl is None:
        warn(NO_CRL_WARNING + "; see `trustboot origin nginx-config --help`")
    else:
        _check_client_crl(client_crl, client_ca)
    click.echo(text, nl=False)


def _check_client_crl(client_crl: Path, client_ca: Path) -> None:
    """The CRL file against the client CA chain, when both can be read here (the config
    may be rendered for another machine): a missing or stale CRL makes nginx refuse
    every publisher."""
    from trustboot.cli.publish import utc_now
    from trustboot.fsutil import read_capped
    from trustboot.publish.nginx import client_crl_problems

    try:
        crl, ca = (read_capped(client_crl, 64 << 20, "CRL file"),
                   read_capped(client_ca, 1 << 20, "client CA file"))
    except (ConfigError, OperationalError) as exc:
        warn(f"--client-crl not checked: {exc.message}")
        return
    errors, warnings = client_crl_problems(crl, ca, utc_now())
    if errors:
        raise ConfigError(
            f"--client-crl {client_crl}: {'; '.join(errors)} (nginx would refuse every "
            f"client certificate chaining to {client_ca})",
            hint="trustboot ca crl --root (once), then trustboot ca export --out DIR: "
                 "DIR/chain-crl.pem holds the CRLs of both CAs of chain.pem")
    for message in warnings:
        warn(f"--client-crl {client_crl}: {message}")


@command.command("check")
@click.argument("url")
@click.option("--pki", type=NonEmptyPath(path_type=Path, file_okay=False),
              envvar="TRUSTBOOT_PKI", show_envvar=True, default=Path("pki"), show_default=True,
              help="CA home: its ca.crt is the default TLS trust and iPXE root.")
@click.option("--ca-file", type=NonEmptyPath(path_type=Path, dir_okay=False),
              help="CA for the origin's TLS (default: the iPXE roots, as iPXE does).")
@click.option("--trust", "trust", multiple=True, metavar="ROOT[,ROOT]",
              help="Roots iPXE was built with (TRUST=); default: the pki's ca.crt.")
@click.option("--cert", "certs", multiple=True, type=NonEmptyPath(path_type=Path, dir_okay=False),
              help="Extra certificates built into iPXE with CERT=.")
@click.option("--signer", metavar="NAME", help="As imgverify --signer.")
@click.option("--warn-days", type=click.IntRange(0), default=30, show_default=True,
              help="Warn when a certificate expires within this many days.")
@click.option("--fail-within", type=click.IntRange(0), metavar="DAYS",
              help="Exit 4 when the live release's signatures stop verifying (signer chain "
                   "notAfter) within DAYS: for cron/monitoring, before clients refuse it.")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds per network operation.")
@json_option
def check(url: str, as_json: bool, **kw: Any) -> None:
    """Fetch URL and URL.sig as iPXE would: TLS version, cipher, chain, iPXE's verdict,
    and the replay window the entry's signer gives (its notAfter + iPXE's 12h30m margin).

    Exit 0 if iPXE would boot it, 4 if not (or, with --fail-within, if its signer expires
    within that many days), 1 if there was nothing to judge (the origin unreachable, the
    entry not served).
    """
    from trustboot.cli.publish import build_trust, utc_now
    from trustboot.publish.check import check_origin

    trust = build_trust(kw)
    report = check_origin(url, trust=trust, ca_file=kw.get("ca_file"), now=utc_now(),
                          warn_days=kw["warn_days"], timeout=kw["timeout"])
    if as_json:
        emit_json(report.to_json())
    else:
        click.echo(f"{url}")
        click.echo(f"  TLS:    {report.tls_version or '-'} {report.cipher or ''}")
        for c in report.chain:
            click.echo(f"  cert:   {c['subject']} (until {c['not_after'][:10]})")
        if report.served_from and report.served_from != url:
            click.echo(f"  served from: {report.served_from} (redirected)")
        if report.sha256:
            click.echo(f"  entry:  {report.size} bytes, sha256 {report.sha256}")
        for s in report.signers:
            click.echo(f"  signer: {s['subject']} (chain until {s['chain_not_after'][:16]})")
        if report.replay_window:
            window = report.replay_window
            click.echo(f"  replay: {window['text']} (refused from "
                       f"{window['refused_after'][:19]} by the client's clock)")
        # nothing fetched is no verdict: 'REFUSES' would read as an exit-4 refusal
        verdict = ("accepts" if report.ok else "REFUSES"
                   if report.failure_exit == ExitCode.VERIFICATION else "not judged")
        click.echo(f"  iPXE:   {verdict}")
        for w in report.warnings:
            warn(w)
    error = report.error()
    if error is not None:
        raise error
    days = kw.get("fail_within")
    ends = report.signer_not_after
    if days is not None and ends is not None and ends - utc_now() < dt.timedelta(days=days):
        raise VerificationError(
            f"{url}: the live release's signatures stop verifying on {ends:%Y-%m-%d %H:%M}Z "
            f"(+12h30m margin), within {days} days [rule: signer-expiring]",
            hint=_resign_hint(url, report.signers, days), rule="signer-expiring",
            subject=url)


def _resign_hint(url: str, signers: list[dict[str, Any]], days: int) -> str:
    """The commands that fix a signer running out: filled in with this origin, the live
    signer's name and a lifetime that passes the same --fail-within again."""
    name = next((str(s["common_name"]) for s in signers if s.get("common_name")), "NAME")
    origin = url[: url.rfind("/") + 1]
    return (f"re-sign it with a fresh signer: trustboot ca renew {name} --days "
            f"{max(7, days + 1)}, then trustboot resign {origin} --key {name}")
