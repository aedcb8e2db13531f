"""`trustboot release RECIPE`: build, sign, render, publish and prove a boot chain.

The release machinery (cryptography, httpx, YAML, ...) is imported when the command runs,
not when it is defined: `trustboot release --help` stays cheap, and its start-up counts
toward every release's wall time.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from trustboot import writers
from trustboot.cli._common import (
    NonEmptyPath,
    emit_json,
    is_interactive,
    json_option,
    passphrase_options,
    passphrase_source,
    warn,
)
from trustboot.ipxe import sandbox
from trustboot.ipxe.source import ENV_SOURCE
from trustboot.text import clean_lines

# trustboot.publish.origin.AMBIENT_ENV and CLIENT_CERT_ENV (a test keeps them equal): that
# module is not imported to build the options, so `release --help` stays cheap
AMBIENT_ENV = "TRUSTBOOT_AMBIENT_CREDENTIALS"
CLIENT_CERT_ENV = "TRUSTBOOT_CLIENT_CERT_ORIGIN"
ORIGIN_CA_ENV = "TRUSTBOOT_ORIGIN_CA_FILE"  # trustboot.release.plan.ORIGIN_CA_ENV


class StageReporter:
    """One line per stage on stderr (a terminal or not); nothing with --json."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = is_interactive()

    def __call__(self, stage: str, message: str) -> None:
        if self.quiet:
            return
        label = click.style(f"{stage:>8}", bold=True) if self.tty else f"{stage:>8}"
        # a stage's message quotes the recipe's paths, URLs and certificates' names
        click.echo(f"{label}  {clean_lines(message)}", err=True)


@click.command("release")
# Not click's dir_okay=False (a usage error, exit 2): a directory is refused as a FIFO or
# a device is, "not a regular file", exit 3, as every file that configures a run.
@click.argument("recipe", type=NonEmptyPath(path_type=Path))
@click.option("--dry-run", is_flag=True,
              help="Validate and print the plan (what is built, signed, uploaded); change "
              "nothing.")
@click.option("--allow-outside", "allow_outside", multiple=True,
              type=NonEmptyPath(path_type=Path, file_okay=False),
              help="Let the recipe's paths (and a file:// origin) resolve under DIR too. "
              "Repeatable. Default: only the recipe's own directory.")
@passphrase_options(what="the signing key")
@click.option("--ipxe-source", type=NonEmptyPath(path_type=Path, file_okay=False),
              envvar=ENV_SOURCE, show_envvar=True,
              help="Build iPXE from this tree when the recipe names no ipxe.source, "
              "ipxe.git or ipxe.prebuilt.")
@click.option("--cache-dir", type=NonEmptyPath(path_type=Path, file_okay=False),
              help="iPXE build cache (default: $TRUSTBOOT_CACHE_DIR/ipxe or "
              "~/.cache/trustboot/ipxe).")
@click.option("--readback-url", metavar="URL",
              help="Read the published release back through URL instead of the recipe's "
              "public_url (a build host that reaches the origin under another name).")
@click.option("--reverify", is_flag=True,
              help="Even when the release is already complete and live, read every object "
              "back and judge every signature again (a re-run normally checks sizes and the "
              "entry only).")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), help="make -j for the build.")
# Only here, never from a recipe: a recipe (from a pull request) must not turn it off.
@click.option(sandbox.UNSAFE_OPTION, "unsafe_unsandboxed", is_flag=True,
              envvar=sandbox.UNSAFE_ENV, show_envvar=True, help=sandbox.UNSAFE_HELP)
# Only here, never from a recipe: its inputs' writers would choose what is signed.
@click.option(writers.UNSAFE_OPTION, "unsafe_shared_inputs", is_flag=True,
              envvar=writers.UNSAFE_ENV, show_envvar=True, help=writers.UNSAFE_HELP)
# Only here, never from a recipe: the recipe chooses the host its credentials go to.
@click.option("--unsafe-unbound-credentials", "unsafe_unbound_credentials", is_flag=True,
              help="Send the recipe's origin.credentials even when they are not bound to "
              "an origin URL ('ORIGIN_URL user:password'), and, without "
              "--ambient-credentials, let the ambient AWS credentials sign the requests of "
              "an s3:// recipe that has none, and, without --client-cert-origin, let the "
              "recipe's origin.client_cert authenticate, and, without --origin-ca-file, "
              "let the recipe's origin.ca_file decide which host that is: they then go to "
              "whatever origin.url (and endpoint) the recipe names. Only for recipes you "
              "trust; "
              "warns on every run.")
@click.option("--ambient-credentials", "ambient_credentials", envvar=AMBIENT_ENV,
              show_envvar=True, metavar="'S3_URL [ENDPOINT]'",
              help="The one s3:// origin (and S3 endpoint) that boto3's own credentials "
              "(AWS_* variables, AWS_PROFILE, an instance or container role) may sign for "
              "when the recipe gives no origin.credentials, e.g. 's3://boot/prod "
              "https://rgw.example.net'. Without it such a recipe is refused: it chooses "
              "its bucket and endpoint.")
@click.option("--client-cert-origin", "client_cert_origin", envvar=CLIENT_CERT_ENV,
              show_envvar=True, metavar="'ORIGIN_URL NAME'",
              help="The origin the CA's TLS client certificate NAME may authenticate to when "
              "the recipe names it (origin.client_cert), e.g. "
              "'https://dav.example.net/boot/ publisher'. Without it such a recipe is "
              "refused: it chooses its origin.url.")
# Only here, never from a recipe: who else may change what is published.
@click.option("--unsafe-shared-origin", "unsafe_shared_origin", is_flag=True,
              help="file:// origins: publish into directories other users own or can write "
              "(they can then replace what was verified); warns on every run.")
# Only here, never from a recipe: the CA that decides who receives the credentials.
@click.option("--origin-ca-file", "origin_ca_file",
              type=NonEmptyPath(path_type=Path, dir_okay=False), envvar=ORIGIN_CA_ENV,
              show_envvar=True,
              help="The CA (PEM) that authenticates the origin's TLS certificate, in place "
              "of the recipe's origin.ca_file. Needed when the recipe names a ca_file and "
              "the run authenticates to the origin (origin.credentials, an s3:// origin's "
              "credentials, origin.client_cert): the recipe must not choose which host "
              "receives them.")
@click.option("--pkcs11-module", type=NonEmptyPath(path_type=Path, dir_okay=False),
              envvar="TRUSTBOOT_PKCS11_MODULE", show_envvar=True,
              help="PKCS#11 module (.so) for a pkcs11: signer (a recipe may not name one).")
@click.option("--crl", "crl", type=NonEmptyPath(path_type=Path, dir_okay=False),
              help="A CRL from the signer's CA (e.g. its published crl.pem): a signer it "
              "revokes is refused before anything is uploaded (exit 4), as publish "
              "refuses it; the CA home's index is asked as well.")
@json_option
def command(recipe: Path, dry_run: bool, allow_outside: tuple[Path, ...],
            passphrase_file: Path | None, passphrase_env: str | None,
            ipxe_source: Path | None, cache_dir: Path | None, readback_url: str | None,
            reverify: bool, jobs: int | None, unsafe_unsandboxed: bool,
            unsafe_shared_inputs: bool, unsafe_unbound_credentials: bool,
            ambient_credentials: str | None,
            client_cert_origin: str | None, unsafe_shared_origin: bool,
            origin_ca_file: Path | None, pkcs11_module: Path | None, crl: Path | None,
            as_json: bool) -> None:
    """Release RECIPE: validate -> plan -> build iPXE -> render the menu -> sign ->
    manifest -> publish -> verify what the origin serves, as iPXE.

    The release id comes from a digest of the inputs, so running the same recipe again
    uploads nothing. A signer whose chain expires before release.min_signer_lifetime is
    refused. `trustboot recipe schema` prints the recipe format.

    \b
    Examples:
      trustboot release recipes/multiarch.yaml --allow-outside pki --dry-run
      trustboot release recipes/multiarch.yaml --allow-outside pki \\
          --origin-ca-file pki/ca.crt --passphrase-env TB_SIGNER_PW --json
      trustboot release lab/boot.yaml --allow-outside /srv/images --ipxe-source ~/ipxe

    \b
    Exit codes: 0 published and verified, 1 origin or I/O failure, 3 invalid recipe,
    4 a signature, the signer's lifetime or what the origin serves failed verification.
    """
    from trustboot.cli.progress import MakeProgress, upload_progress
    from trustboot.publish.cache import default_cache_path
    from trustboot.publish.origin import (
        SHARED_ORIGIN_WARNING,
        parse_ambient_binding,
        parse_client_cert_binding,
    )
    from trustboot.release.pipeline import run_release
    from trustboot.release.plan import ReleaseOptions
    from trustboot.release.recipe import load_recipe

    if unsafe_unsandboxed:
        warn(sandbox.UNSAFE_WARNING)
    if unsafe_shared_inputs:
        warn(writers.UNSAFE_WARNING)
    if unsafe_unbound_credentials:
        warn("--unsafe-unbound-credentials: the recipe's origin.credentials may be sent "
             "unbound (and, without them, an s3:// origin's requests signed with the "
             "ambient AWS credentials, or its writes authenticated with the CA's client "
             "certificate its origin.client_cert names), to whatever origin.url and "
             "endpoint it names, checked with the CA its origin.ca_file names; a changed "
             "recipe can send them to a host of its choosing")
    if unsafe_shared_origin:
        warn(SHARED_ORIGIN_WARNING)
    binding = None
    if ambient_credentials is not None:
        binding = parse_ambient_binding(
            ambient_credentials,
            _given_by("ambient_credentials", AMBIENT_ENV, "--ambient-credentials"))
    cert_binding = None
    if client_cert_origin is not None:
        cert_binding = parse_client_cert_binding(
            client_cert_origin,
            _given_by("client_cert_origin", CLIENT_CERT_ENV, "--client-cert-origin"))
    r = load_recipe(recipe)
    passphrases = None
    explicit = passphrase_file is not None or passphrase_env is not None
    if explicit or is_interactive():
        passphrases = passphrase_source(passphrase_file, passphrase_env)
    options = ReleaseOptions(allow_outside=allow_outside, passphrases=passphrases,
                             passphrases_explicit=explicit,
                             ipxe_source=ipxe_source, cache_dir=cache_dir, jobs=jobs,
                             readback_url=readback_url, reverify=reverify,
                             publish_cache=None if reverify else default_cache_path(),
                             pkcs11_module=pkcs11_module,
                             unsafe_unsandboxed_build=unsafe_unsandboxed,
                             unsafe_shared_inputs=unsafe_shared_inputs,
                             unsafe_unbound_credentials=unsafe_unbound_credentials,
                             ambient_credentials=binding,
                             client_cert_origin=cert_binding, origin_ca_file=origin_ca_file,
                             secret_files=(passphrase_file,) if passphrase_file else (),
                             unsafe_shared_origin=unsafe_shared_origin, crl=crl)
    make = MakeProgress(quiet=as_json)  # a build of minutes shows it is alive, as ipxe build
    with upload_progress(as_json) as bars:
        try:
            result = run_release(r, options, now=dt.datetime.now(dt.UTC), dry_run=dry_run,
                                 progress=StageReporter(quiet=as_json), upload_progress=bars,
                                 build_progress=make)
        finally:
            make.finish()
    if as_json:
        emit_json(result.to_json())
        return
    if dry_run:
        p = result.plan
        provisional = ""
        if p.get("release_id_provisional") and p.get("origin_unreachable"):
            provisional = "; the id is provisional: the origin could not be listed"
        elif p.get("release_id_provisional"):
            provisional = "; the id is provisional until the pinned iPXE tree is cloned"
        _say(f"release {p['release']} (dry run: nothing was built, signed or uploaded)"
                   + provisional)
        _say(f"  origin:   {p['origin']}  (entry {p['public_base']}{p['entry_path']})")
        _say(f"  signer:   {p['signer']['ref']} ({p['signer']['subject']}, until "
                   f"{p['signer']['not_after']})")
        fw = p["firmware"]
        _say(f"  firmware: {fw['mode']} {', '.join(fw['targets'])}"
                   + (f" — {fw['reason']}" if fw["reason"] else ""))
        _say(f"  sign:     {', '.join(p['sign']) or 'nothing: the origin holds every signature'}")
        there = p.get("on_origin")
        unknown = " (the origin was not read: some may already be there)"
        _say(f"  upload:   {len(p['upload'])} objects under releases/{p['release']}/"
             + (unknown if there is None else ""))
        if there:  # what a real run finds in place and does not upload again
            _say(f"  on origin: {len(there)} already there with the same content: "
                 + ", ".join(there))
        _echo_window(result.replay_window)
        return
    pub = result.publish or {}
    _say(f"release {result.release}: {len(result.uploaded)} uploaded, "
               f"{len(pub.get('skipped', []))} unchanged; live at {result.entry_url}")
    _echo_window(result.replay_window)


def _say(text: str) -> None:
    """A line for a person: what it quotes from the recipe, its files and certificates
    (paths, URLs, subjects) cannot drive the terminal."""
    click.echo(clean_lines(text))


def _given_by(param: str, envvar: str, option: str) -> str:
    """Where the value of ``param`` came from, for messages: its variable or its option."""
    source = click.get_current_context().get_parameter_source(param)
    return f"environment variable {envvar}" if source == ParameterSource.ENVIRONMENT \
        else option


def _echo_window(window: dict[str, Any] | None) -> None:
    if window:
        # the one wording of the window (ReplayWindow.describe), from the result's JSON
        from trustboot.cms.freshness import ReplayWindow

        not_after = dt.datetime.fromisoformat(window["signer_not_after"])
        before = window.get("signer_not_before")
        described = ReplayWindow(
            not_after=not_after,
            now=not_after - dt.timedelta(seconds=window["remaining_seconds"]),
            not_before=dt.datetime.fromisoformat(before) if before else None).describe()
        _say(f"  {described}; a short-lived signer and `trustboot resign` bound it")
