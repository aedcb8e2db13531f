"""`trustboot publish`: put a signed release on an origin, prove what it serves, switch to it."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography.hazmat.primitives.serialization import Encoding

from trustboot.cli._common import (
    NonEmptyPath,
    emit_json,
    json_option,
    passphrase_source,
    pki_explicit,
    warn,
)
from trustboot.cli.progress import mib, upload_progress
from trustboot.errors import ConfigError
from trustboot.fsutil import read_capped
from trustboot.publish.origin import (
    Origin,
    OriginOptions,
    check_option_urls,
    load_credentials,
    open_origin,
)
from trustboot.publish.origin import unsafe_warnings as _unsafe_warnings
from trustboot.text import clean

F = TypeVar("F", bound=Callable[..., Any])

EXAMPLES = """\b
Examples:
  # sign the boot files, then publish them as release 2026.11.25 and switch boot.ipxe
  trustboot sign --key boot-signer --out out/ boot.ipxe vmlinuz initrd.img
  cp boot.ipxe vmlinuz initrd.img out/
  trustboot publish out/ https://boot.example.net/ --release-id 2026.11.25 \\
      --entry boot.ipxe --client-cert publisher --signer boot-signer
  # a directory served by any web server
  trustboot publish out/ file:///srv/boot --release-id 2026.11.25 \\
      --public-url https://boot.example.net/
  # an S3-compatible store (credentials from the usual AWS chain)
  trustboot publish out/ s3://boot/prod --endpoint-url https://rgw.example.net \\
      --public-url https://boot.example.net/prod --release-id 2026.11.25
  trustboot publish list https://boot.example.net/ --client-cert publisher
  trustboot publish rollback https://boot.example.net/ 2026.11.24 --client-cert publisher
  trustboot publish prune https://boot.example.net/ --keep 3 --client-cert publisher
  # finish an entry switch that a killed run left half done
  trustboot publish repair https://boot.example.net/ --client-cert publisher

\b
Exit codes: 0 published, 1 origin/network failure, 3 bad input, 4 the origin serves
something iPXE would refuse (nothing was switched).
"""


def origin_options(func: F) -> F:
    """Options every command that talks to an origin takes."""
    func = origin_access_options(func)
    return click.option("--pki", type=NonEmptyPath(path_type=Path, file_okay=False),
                        envvar="TRUSTBOOT_PKI", show_envvar=True, default=Path("pki"),
                        show_default=True,
                        help="CA home: its ca.crt is the default TLS trust and iPXE root.",
                        )(func)


def origin_access_options(func: F) -> F:
    """The origin options without --pki, for commands that have their own (the pki's
    ca.crt stays the default TLS trust: see build_options)."""
    opts = [
        click.option("--ca-file", type=NonEmptyPath(path_type=Path, dir_okay=False),
                     help="CA certificate(s) trusted for the origin's TLS (default: the "
                          "pki's ca.crt; never the system store)."),
        click.option("--client-cert", "client_cert_name", metavar="NAME",
                     help="TLS client certificate NAME from the pki (`ca issue client`)."),
        click.option("--client-cert-file", type=NonEmptyPath(path_type=Path, dir_okay=False),
                     help="TLS client certificate (PEM) outside the pki."),
        click.option("--client-key-file", type=NonEmptyPath(path_type=Path, dir_okay=False),
                     help="Its private key (PEM, may be encrypted)."),
        click.option("--client-key-passphrase-file", type=NonEmptyPath(path_type=Path,
                                                                     dir_okay=False),
                     help="Passphrase of the client key, first line of this file."),
        click.option("--client-key-passphrase-env", metavar="NAME",
                     help="Passphrase of the client key, from environment variable NAME."),
        click.option("--credentials-file", type=NonEmptyPath(path_type=Path, dir_okay=False),
                     help="Credentials, a 0600 file: user:password or bearer:TOKEN for "
                     "https:// origins, ACCESS_KEY_ID:SECRET for s3:// (else boto3's usual "
                     "chain: env, profile, instance role); after 'ORIGIN_URL ' they are "
                     "bound to that origin and refused for any other."),
        click.option("--credentials-env", metavar="NAME",
                     help="The same credentials from environment variable NAME."),
        click.option("--endpoint-url", metavar="URL", help="S3 endpoint (https://...)."),
        click.option("--public-url", metavar="URL",
                     help="HTTPS base URL clients fetch from (default for https:// origins: "
                          "the origin URL). The read-back follows its redirects as iPXE "
                          "does (at most 5 hops, https:// only)."),
        click.option("--no-public-read", "no_public_read", is_flag=True,
                     help="s3:// only: do not give objects the public-read ACL (a bucket "
                          "policy or a CDN with origin access serves them; the read-back "
                          "uses --public-url, else authenticated reads)."),
        click.option("--timeout", type=float, default=30.0, show_default=True,
                     help="Seconds per network operation."),
        click.option("--retries", type=click.IntRange(0, 20), default=4, show_default=True,
                     help="Retries on connection errors and 5xx."),
        click.option("--unsafe-http", is_flag=True,
                     help="Allow plain http:// (warns on every run)."),
        click.option("--unsafe-no-tls-verify", "unsafe_no_verify", is_flag=True,
                     help="Do not verify the origin's TLS certificate (warns on every run)."),
        click.option("--unsafe-shared-origin", "unsafe_shared_origin", is_flag=True,
                     help="file:// only: publish into directories other users own or can "
                          "write (warns on every run)."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def anchor_options(func: F) -> F:
    """What the firmware trusts (--trust, --cert): the anchors every signature is judged
    with, by the commands that make a release live and by `publish list`."""
    opts = [
        click.option("--trust", "trust", multiple=True, metavar="ROOT[,ROOT]",
                     help="Roots iPXE was built with (TRUST=); default: the pki's ca.crt."),
        click.option("--cert", "certs", multiple=True,
                     type=NonEmptyPath(path_type=Path, dir_okay=False),
                     help="Extra certificates built into iPXE with CERT= (repeatable)."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def trust_options(func: F) -> F:
    opts = [
        anchor_options,
        click.option("--signer", metavar="NAME",
                     help="As imgverify --signer: the expected signer's name."),
        click.option("--entry-path", default="boot.ipxe", show_default=True,
                     help="The firmware's fixed entry object on the origin."),
        click.option("--jobs", type=click.IntRange(1, 32), default=4, show_default=True,
                     help="Parallel uploads and read-backs."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def crl_option(help_text: str) -> Callable[[F], F]:
    return click.option("--crl", "crl", type=NonEmptyPath(path_type=Path, dir_okay=False),
                        help="A CRL from the signers' CA (e.g. its published crl.pem): "
                        + help_text)


def revocation_options(func: F) -> F:
    """What a command that makes a release live asks about revoked signers (iPXE reads no
    CRL: trustboot.publish.revocation)."""
    opts = [
        crl_option("a release it revokes a signer of is not made live (as with a "
                   "revocation in the --pki CA index, which is asked as well)."),
        click.option("--unsafe-allow-revoked-signer", "unsafe_allow_revoked_signer",
                     is_flag=True,
                     help="Make live a release a revoked certificate signed (warned about). "
                     "iPXE does not check revocation: it boots such a release."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def open_pki_ca(kw: dict[str, Any], *, gate: bool = True) -> Any:
    """The --pki CA home (None when there is none), opened once for the trusted roots and
    the revocation view. A pki given with --pki, or the source of a gate's trusted roots
    (no --trust), must open: the gate fails closed. The default one is passed over when
    it does not open and nothing else depends on it (roots given with --trust, or
    ``gate`` False: `publish list`, which then verifies nothing and says so): it may be
    any directory called pki."""
    from trustboot.cli.verify import open_ca

    trust_source = gate and "trust" in kw and not kw["trust"]
    return open_ca(kw["pki"], required=pki_explicit() or trust_source)


def load_revocations(kw: dict[str, Any], ca: Any) -> Any:
    """The revocation view of ``ca`` (open_pki_ca) and --crl."""
    from trustboot.publish.revocation import Revocations

    return Revocations.load(ca=ca, crl=kw.get("crl"),
                            allow=bool(kw.get("unsafe_allow_revoked_signer")), warn=warn)


def build_options(kw: dict[str, Any]) -> OriginOptions:
    # the URLs first: a malformed one is refused before a passphrase is asked for
    check_option_urls(OriginOptions(endpoint_url=kw.get("endpoint_url"),
                                    public_url=kw.get("public_url"),
                                    unsafe_http=kw["unsafe_http"]))
    pki: Path = kw["pki"]
    ca_file = kw.get("ca_file")
    if ca_file is None and (pki / "ca.crt").is_file():
        ca_file = pki / "ca.crt"
    cert = kw.get("client_cert_file")
    key = kw.get("client_key_file")
    if kw.get("client_cert_name"):
        if cert or key:
            raise ConfigError("give --client-cert NAME or --client-cert-file/--client-key-file")
        name = kw["client_cert_name"]
        if "/" in name or name.startswith("."):
            raise ConfigError(f"--client-cert {name!r} is not a certificate name")
        cert, key = pki / "issued" / f"{name}.crt", pki / "private" / f"{name}.key"
        if not cert.is_file():
            raise ConfigError(f"no client certificate {name} in {pki}",
                              hint=f"trustboot ca issue client {name}")
    if (cert is None) != (key is None):
        raise ConfigError("--client-cert-file needs --client-key-file (and vice versa)")
    passphrase = None
    if key is not None and b"ENCRYPTED" in read_capped(Path(key), 1 << 20, "client key")[:200]:
        source = passphrase_source(kw.get("client_key_passphrase_file"),
                                   kw.get("client_key_passphrase_env"),
                                   option="--client-key-passphrase")
        passphrase = source(f"client key {key}")
    credentials = load_credentials(file=kw.get("credentials_file"), env=kw.get("credentials_env"))
    options = OriginOptions(
        ca_file=ca_file, client_cert=cert, client_key=key, client_key_passphrase=passphrase,
        credentials=credentials, endpoint_url=kw.get("endpoint_url"),
        public_url=kw.get("public_url"), unsafe_http=kw["unsafe_http"],
        unsafe_no_verify=kw["unsafe_no_verify"], timeout=kw["timeout"], retries=kw["retries"],
        public_read=not kw.get("no_public_read", False),
        unsafe_shared_origin=kw.get("unsafe_shared_origin", False))
    for message in _unsafe_warnings(options):
        warn(message)
    return options


# build_trust's "the caller did not open the CA home": None is an answer (there is none,
# or a default one did not open), and opening again would be a second snapshot
NOT_OPENED: Any = object()


def build_trust(kw: dict[str, Any], ca: Any = NOT_OPENED) -> Any:
    """The roots, --cert files and revocation view of a command, from the --pki CA home
    opened once: ``ca`` when the caller opened it (open_pki_ca; None included), else
    here."""
    from trustboot.cli.verify import load_trust
    from trustboot.keys.signer import load_certificates
    from trustboot.publish.readback import Trust
    from trustboot.publish.revocation import UNSAFE_FLAG

    if ca is NOT_OPENED:
        ca = open_pki_ca(kw)
    anchors = load_trust(kw["trust"], kw["pki"], ca=ca)
    extra = tuple(c.public_bytes(Encoding.DER) for p in kw["certs"]
                  for c in load_certificates(p, "--cert file"))
    if kw.get("unsafe_allow_revoked_signer"):  # on every run, whatever it lets through
        warn(f"{UNSAFE_FLAG}: a release signed by a revoked certificate may be made live; "
             "iPXE does not check revocation and boots it")
    return Trust(tuple(anchors), extra, kw.get("signer"), revocation=load_revocations(kw, ca))


def open_cli_origin(url: str, kw: dict[str, Any], *, create_root: bool = False
                    ) -> tuple[Origin, OriginOptions]:
    """``create_root``: a file:// origin's directory may be created (publish only)."""
    options = dataclasses.replace(build_options(kw), create_root=create_root)
    return open_origin(url, options), options


# How the read-back reached what the origin serves (PublishResult.readback), in words
_READBACK = {"https": "over HTTPS as iPXE", "http": "over plain HTTP: --unsafe-http",
             "https-unverified": "over HTTPS without checking the origin's certificate "
                                 "(--unsafe-no-tls-verify): iPXE may refuse it",
             "backend": "from the backend"}


class PublishGroup(click.Group):
    """`trustboot publish DIR ORIGIN ...` with list/rollback/prune beside it."""

    default = "release"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default, *args]
        return super().parse_args(ctx, args)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        cmd = self.commands[self.default]
        sub = click.Context(cmd, info_name=ctx.info_name, parent=ctx.parent)
        cmd.format_usage(sub, formatter)
        cmd.format_help_text(sub, formatter)
        cmd.format_options(sub, formatter)
        self.format_commands(ctx, formatter)
        cmd.format_epilog(sub, formatter)


@click.group("publish", cls=PublishGroup)
def command() -> None:
    """Publish a signed release to an origin."""


@command.command("release", hidden=True, epilog=EXAMPLES)
# Not click's file_okay=False (a usage error, exit 2): a file given as the release directory
# is an I/O failure, exit 1, as a missing one (scan_directory), like sign's and verify's FILE.
@click.argument("directory", type=NonEmptyPath(path_type=Path))
@click.argument("origin_url", metavar="ORIGIN")
@click.option("--release-id", required=True, help="Release id ([A-Za-z0-9][A-Za-z0-9._-]*).")
@click.option("--entry", default=None,
              help="The release's entry script, switched to --entry-path "
                   "(default: boot.ipxe if the release has one).")
@click.option("--no-switch", is_flag=True, help="Upload and verify only; leave the entry.")
@click.option("--full-readback", is_flag=True,
              help="Read back and hash every object, even those a previous run verified and "
                   "that are unchanged (same size and ETag); hash every local file again.")
@trust_options
@revocation_options
@origin_options
@json_option
def release_cmd(directory: Path, origin_url: str, release_id: str, entry: str | None,
                no_switch: bool, full_readback: bool, as_json: bool, **kw: Any) -> None:
    """Upload DIR (signed files and their .sig) to ORIGIN as releases/ID/, read every object
    back over HTTPS as iPXE would and verify it, then switch the entry script.

    ORIGIN is file:///DIR, https://HOST/PATH/ (WebDAV) or s3://BUCKET/PREFIX. Nothing is
    switched unless every served object verifies; a run that was interrupted resumes.
    """
    from trustboot.publish.cache import PublishCache, default_cache_path
    from trustboot.publish.manifest import check_release_id
    from trustboot.publish.pipeline import publish_release, scan_directory

    check_release_id(release_id)
    trust = build_trust(kw)
    cache = None if full_readback else PublishCache(default_cache_path())
    if cache is not None and cache.problem:
        warn(cache.problem)
    objects = scan_directory(directory, cache=cache)
    keys = {o.key for o in objects}
    if entry is None and "boot.ipxe" in keys:
        entry = "boot.ipxe"
    origin, options = open_cli_origin(origin_url, kw, create_root=True)
    with upload_progress(as_json) as bars, origin:
        result = publish_release(origin, release_id, objects, entry=entry,
                                 entry_path=kw["entry_path"], trust=trust, now=utc_now(),
                                 jobs=kw["jobs"], switch=not no_switch, progress=bars,
                                 options=options, cache=cache)
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(f"release {release_id} on {result.origin}: uploaded {len(result.uploaded)} "
               f"object(s) ({mib(result.bytes_uploaded)}), {len(result.skipped)} already "
               "there")
    click.echo(f"verified {len(result.verified)} object(s) as served "
               f"({_READBACK.get(result.readback, result.readback)})"
               + (f"; {len(result.readback_cached)} unchanged since a full read-back"
                  if result.readback_cached else ""))
    if result.repaired:
        click.echo(result.repaired)
    if result.switched:
        was = f" (was {result.previous_live})" if result.previous_live else ""
        click.echo(f"switched {result.entry_path} to {release_id}{was}; verified after the "
                   "switch")
    elif entry is not None and not no_switch:
        click.echo(f"{result.entry_path} already serves {release_id} (verified): nothing "
                   "switched")
    elif entry is None:
        click.echo("no entry script: nothing switched")


@command.command("list")
@click.argument("origin_url", metavar="ORIGIN")
@click.option("--entry-path", default="boot.ipxe", show_default=True,
              help="The firmware's fixed entry object on the origin.")
@anchor_options
@crl_option("a release whose manifest it revokes the signer of is marked REVOKED (as with "
            "a revocation in the --pki CA index, which is asked as well).")
@origin_options
@json_option
def list_cmd(origin_url: str, entry_path: str, as_json: bool, **kw: Any) -> None:
    """Releases on ORIGIN with date, signer, expiry, and which one is live.

    The signer and its expiry are those of each release's release.json.sig, judged with
    iPXE's rules against --trust (default: the pki's ca.crt) as `publish rollback` judges
    it; for a release whose release.json is unsigned (published from a directory), those
    of its entry script's signature, over the script the manifest records ("by its entry
    script's signature"). A signature that verifies but not at this clock shows its
    signer, EXPIRED. REVOKED marks a signer the --pki CA index or --crl revokes (expired
    or not). A release with no such signature, or one that does not verify, is
    UNVERIFIED, with the reason. A date is proven only as repair and resign prove it (a
    date its signer could sign, not after this clock): any other is marked "date
    unproven" (with why) or "date unsigned", the state unchanged. A listing judges only
    these signatures: `publish rollback` judges every object before it switches.
    """
    from trustboot.publish.pipeline import list_releases, pending_switch

    ca = open_pki_ca(kw, gate=False)
    # nothing to judge with (no --trust, no CA home): it still lists, and every release
    # says why it is unverified
    trust = build_trust(kw, ca) if kw["trust"] or ca is not None else None
    origin, _ = open_cli_origin(origin_url, kw)
    with origin:
        infos = list_releases(origin, entry_path=entry_path, trust=trust, now=utc_now())
        pending = pending_switch(origin)
    if pending:  # on stderr: --json output stays the list it always was
        warn(f"{origin.url} has an interrupted entry switch: the live release above may not "
             f"be what boots; finish it with `trustboot publish repair {origin.url}`")
    if as_json:
        emit_json([i.to_json() for i in infos])
        return
    if not infos:
        click.echo(f"no releases on {origin.url}")
    for i in infos:
        mark = "*" if i.live else " "
        created = i.created.strftime("%Y-%m-%d %H:%M") if i.created else "?"
        if i.created is not None and not i.created_proven:
            # the manifest's word only: whoever writes to the origin can change it; a
            # signed one its signer could not sign (future, backdated) says why
            created += (f" (date unproven: {clean(i.created_unproven, limit=200)})"
                        if i.verified_by == "manifest" and i.created_unproven
                        else " (date unsigned)")
        expiry = i.expiry.strftime("%Y-%m-%d") if i.expiry else "-"
        # (an unsigned release.json: its entry script's signature proved who signed)
        by = ", by its entry script's signature" if i.verified_by == "entry" else ""
        signer = (f"{clean(i.signer, limit=200)} (serial {i.signer_serial}{by})"
                  if i.signer else "-")
        state = "" if i.complete else "  INCOMPLETE"
        if i.problem:
            state = f"  UNREADABLE: {i.problem}"
        elif i.unverified is not None:  # never the manifest's claim as if it were true
            state += f"  UNVERIFIED: {clean(i.unverified.reason, limit=400)}"
        if i.revoked:  # iPXE would still boot it: say why it must not be
            state += "  REVOKED: " + "; ".join(f"the signer {r.describe()}"
                                                for r in i.revoked)
        elif i.expired is not None:  # (a revoked signer says more than its expiry)
            state += f"  EXPIRED: {clean(i.expired.reason, limit=400)}"
        click.echo(f"{mark} {i.id:24} {created}  {i.files:3} files  signer "
                   f"{signer}  expires {expiry}{state}")


@command.command("rollback")
@click.argument("origin_url", metavar="ORIGIN")
@click.argument("release_id", metavar="RELEASE")
@trust_options
@revocation_options
@origin_options
@json_option
def rollback_cmd(origin_url: str, release_id: str, as_json: bool, **kw: Any) -> None:
    """Switch the entry back to RELEASE, after verifying it as served (like a publish)."""
    from trustboot.publish.cache import PublishCache, default_cache_path
    from trustboot.publish.pipeline import rollback

    trust = build_trust(kw)
    cache = PublishCache(default_cache_path())
    if cache.problem:
        warn(cache.problem)
    origin, options = open_cli_origin(origin_url, kw)
    with upload_progress(as_json) as bars, origin:
        result = rollback(origin, release_id, entry_path=kw["entry_path"], trust=trust,
                          now=utc_now(), jobs=kw["jobs"], progress=bars, options=options,
                          cache=cache)
    if as_json:
        emit_json(result.to_json())
        return
    if not result.switched:
        click.echo(f"verified {len(result.verified)} object(s); {result.entry_path} already "
                   f"serves {release_id}: nothing switched")
        return
    was = f" (was {result.previous_live})" if result.previous_live else ""
    click.echo(f"verified {len(result.verified)} object(s); switched {result.entry_path} to "
               f"{release_id}{was}")


@command.command("repair")
@click.argument("origin_url", metavar="ORIGIN")
@trust_options
@revocation_options
@origin_options
@json_option
def repair_cmd(origin_url: str, as_json: bool, **kw: Any) -> None:
    """Finish an entry switch that an interrupted run left half done.

    A run killed between replacing the entry's signature and the entry script leaves a
    pair that fails verification (iPXE refuses it). The switch was recorded on the origin
    first: this completes it (any publish, rollback or prune does the same before its own
    work), or drops the record when the pair still verifies. The recorded release is read
    back and verified in full first, as a rollback to it would be: when it no longer
    verifies (its signer expired, an object changed on the origin), nothing is switched
    (exit 4): roll back to a release that verifies, or publish a new one. A recorded
    switch back to a release older than another one on the origin (by their signed
    manifests; the live record is origin data too) is not completed either (exit 4, rule
    unrecorded-rollback: anyone who writes to the origin can plant the record); run
    `trustboot publish rollback ORIGIN ID` if that rollback is meant.
    """
    from trustboot.publish.pipeline import repair

    trust = build_trust(kw)
    origin, options = open_cli_origin(origin_url, kw)
    with origin:
        result = repair(origin, trust=trust, now=utc_now(), options=options)
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(result.detail or f"no interrupted switch on {origin.url}")


@command.command("prune")
@click.argument("origin_url", metavar="ORIGIN")
@click.option("--keep", type=click.IntRange(1), required=True,
              help="Keep this many newest releases of --entry-path (the live one is always "
                   "kept, and another entry path's releases are never deleted).")
@click.option("--entry-path", default="boot.ipxe", show_default=True,
              help="The firmware's fixed entry object on the origin.")
@origin_options
@json_option
def prune_cmd(origin_url: str, keep: int, entry_path: str, as_json: bool, **kw: Any) -> None:
    """Delete old releases of --entry-path from ORIGIN, never a live one.

    Release folders without a release.json (a publish killed before writing it) are
    removed once nothing in them changed for an hour, unless an entry or the live or
    switch record needs them; each one removed or left is reported.
    """
    from trustboot.publish.pipeline import prune

    origin, _ = open_cli_origin(origin_url, kw)
    with origin:
        result = prune(origin, keep=keep, entry_path=entry_path)
    for message in result.warnings:
        warn(message)
    if as_json:
        emit_json(result.to_json())
        return
    deleted = result.deleted
    click.echo(f"deleted {len(deleted)} release(s)" + (f": {', '.join(deleted)}"
                                                        if deleted else ""))
    for line in result.lines():
        click.echo(line)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
