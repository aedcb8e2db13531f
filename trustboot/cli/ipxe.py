"""`trustboot ipxe`: build iPXE with built-in trust and a fail-closed script; script tools."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import click

from trustboot.cli._common import (
    NonEmptyPath,
    emit_json,
    json_option,
    passphrase_options,
    passphrase_source,
    pki_explicit,
    warn,
)
from trustboot.cli.progress import MakeProgress
from trustboot.errors import ConfigError
from trustboot.fsutil import read_capped
from trustboot.ipxe import build as ipxe_build
from trustboot.ipxe import sandbox
from trustboot.ipxe.config import BuildOptions
from trustboot.ipxe.inputs import collect_trust, load_client_identity
from trustboot.ipxe.lint import STAGES
from trustboot.ipxe.script import (
    DEFAULT_ON_FAILURE,
    ON_FAILURE,
    ChainScript,
    check_script,
    lint_script,
    render_chain_script,
)
from trustboot.ipxe.source import (
    ENV_SOURCE,
    check_commit,
    check_git_url,
    clone_dir,
    clone_pinned,
    open_source,
    resolve_source_dir,
)
from trustboot.ipxe.syntax import runs_as_script
from trustboot.subproc import time_limit
from trustboot.text import clean


@click.group("ipxe")
def command() -> None:
    """Build iPXE that trusts only your root and runs only signed images."""


def _chain_options(func: Any) -> Any:
    options = [
        click.option("--chain", "chain_url", metavar="URL",
                     help="Generate the embedded script: fetch URL (https) and URL.sig, "
                     "imgverify, then execute it."),
        click.option("--chain-sig", metavar="URL", help="Signature URL (default: URL.sig)."),
        click.option("--signer", metavar="NAME",
                     help="imgverify --signer: the code-signing certificate's CN (needed "
                     "with --chain)."),
        click.option("--ntp", "ntp_server", metavar="SERVER",
                     help="Set the clock over NTP before verifying (certificates are checked "
                     "against the client's clock)."),
        click.option("--retries", type=int, default=5, show_default=True,
                     help="Attempts for DHCP and for fetching the entry script."),
        click.option("--retry-delay", type=int, default=5, show_default=True,
                     help="Seconds between attempts."),
        click.option("--on-failure", type=click.Choice(ON_FAILURE),
                     default=DEFAULT_ON_FAILURE, show_default=True,
                     help="What the firmware does once it gives up: halt (stay here), "
                     "reboot (after 60 s), poweroff or shell, each followed by a halt loop. "
                     "'exit' returns to the BIOS, which boots the next device: not "
                     "fail-closed, warns."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _chain_script(
    chain_url: str | None, chain_sig: str | None, signer: str | None, ntp_server: str | None,
    retries: int, retry_delay: int, on_failure: str,
) -> str | None:
    if chain_url is None:
        if chain_sig or signer:
            raise ConfigError("--chain-sig and --signer only make sense with --chain URL")
        return None
    if not signer:
        raise ConfigError(
            "--chain needs --signer NAME",
            hint="pass the common name of the code-signing certificate that signs the "
            "entry script (see `trustboot ca list`)",
        )
    if on_failure == "exit":
        warn("--on-failure exit is not fail-closed: after a failure iPXE returns to the "
             "BIOS/UEFI, which boots the next device (unverified); use halt or reboot")
    return render_chain_script(ChainScript(
        url=chain_url, sig_url=chain_sig, signer=signer, ntp_server=ntp_server,
        dhcp_attempts=retries, fetch_attempts=retries, retry_delay=retry_delay,
        on_failure=on_failure,
    ))


# iPXE scripts are a few KiB; the cap keeps /dev/zero or a huge file from being read.
MAX_SCRIPT_FILE = 1 << 20


def _read_script(path: Path) -> str:
    data = read_capped(path, MAX_SCRIPT_FILE, "script")
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read script {path}: {exc}") from None


@command.command("build")
@click.option("--source", "source_dir", type=NonEmptyPath(path_type=Path, file_okay=False),
              help=f"iPXE source tree (top or src/); default ${ENV_SOURCE}. Never modified.")
@click.option("--git", "git_url", metavar="URL", help="Clone iPXE from URL (needs --commit).")
@click.option("--commit", metavar="SHA", help="The full commit id --git is pinned to.")
@click.option("--pki", type=NonEmptyPath(path_type=Path, file_okay=False), envvar="TRUSTBOOT_PKI",
              default=Path("pki"), show_default=True, show_envvar=True,
              help="CA directory: ca.crt becomes TRUST=, ca.crt and issuing-ca.crt CERT=.")
@click.option("--trust", "trust_files", multiple=True,
              type=NonEmptyPath(path_type=Path, dir_okay=False),
              help="An extra root (one certificate per file), e.g. the next root during "
              "a rotation. Repeatable.")
@click.option("--cert", "cert_files", multiple=True,
              type=NonEmptyPath(path_type=Path, dir_okay=False),
              help="Extra chain certificates to build in (CERT=). Repeatable.")
@click.option("--client-cert", metavar="NAME",
              help="Build in the pki's client certificate NAME and its RSA key for "
              "client-authenticated origins (anyone with the binary can take the key out: "
              "never an origin writer).")
@passphrase_options(what="the client key")
@click.option("--script", "script_file", type=NonEmptyPath(path_type=Path, dir_okay=False),
              help="Embed this #!ipxe script (it is linted: it must be fail-closed).")
@_chain_options
@click.option("--target", "targets", multiple=True, metavar="TARGET",
              help="Build target; repeatable. Default: "
              + ", ".join(ipxe_build.DEFAULT_TARGETS) + ". Also: "
              + ", ".join(t for t in ipxe_build.KNOWN_TARGETS
                          if t not in ipxe_build.DEFAULT_TARGETS)
              + ", and NIC option ROMs bin/VVVVDDDD.rom (PCI vendor and device ID, e.g. "
              "bin/8086100e.rom).")
@click.option("--crosscert", metavar="URL",
              help="Let iPXE fetch missing chain certificates from URL (default: never).")
@click.option("--no-ocsp", is_flag=True,
              help="Do not check OCSP at boot (default: check when a certificate names "
              "a responder, fail-closed).")
@click.option("--serial-console", is_flag=True, help="Also use the first serial port.")
@click.option("--source-date-epoch", type=int,
              help="Build timestamp (default: $SOURCE_DATE_EPOCH, the commit time, or 0).")
@click.option("-o", "--output", "output_dir", type=NonEmptyPath(path_type=Path, file_okay=False),
              default=Path("ipxe-build"), show_default=True,
              help="Where the binaries and manifest.json go.")
@click.option("--cache-dir", type=NonEmptyPath(path_type=Path, file_okay=False),
              help="Build cache (default: $TRUSTBOOT_CACHE_DIR/ipxe or "
              "~/.cache/trustboot/ipxe).")
@click.option("--no-cache", is_flag=True, help="Rebuild even if the same inputs were built.")
@click.option("--clean", is_flag=True, help="Build in a fresh copy even for BIOS targets.")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), help="make -j (default: CPUs).")
@click.option("--make-env", "make_env_names", multiple=True, metavar="NAME",
              help="Also pass environment variable NAME to make (e.g. CCACHE_DIR); make "
              "otherwise sees only PATH, HOME, TMPDIR and the C locale. Repeatable.")
@click.option("--secureboot-sign", "secureboot_sign", type=click.Choice(["db"]),
              help="Sign every EFI output with the CA home's Secure Boot db key "
              "(trustboot secureboot init); the unsigned binary is kept as NAME.unsigned.efi.")
@passphrase_options(prefix="secureboot-", what="the Secure Boot db key")
@click.option(sandbox.UNSAFE_OPTION, "unsafe_unsandboxed", is_flag=True,
              envvar=sandbox.UNSAFE_ENV, show_envvar=True, help=sandbox.UNSAFE_HELP)
@click.option("--unsafe-skip-lint", is_flag=True,
              help="Embed --script even if it is not fail-closed (not recommended).")
@json_option
def build_cmd(
    source_dir: Path | None, git_url: str | None, commit: str | None,
    pki: Path, trust_files: tuple[Path, ...], cert_files: tuple[Path, ...],
    client_cert: str | None, passphrase_file: Path | None, passphrase_env: str | None,
    script_file: Path | None, chain_url: str | None, chain_sig: str | None,
    signer: str | None, ntp_server: str | None, retries: int, retry_delay: int,
    on_failure: str, targets: tuple[str, ...], crosscert: str | None, no_ocsp: bool,
    serial_console: bool, source_date_epoch: int | None, output_dir: Path,
    cache_dir: Path | None, no_cache: bool, clean: bool, jobs: int | None,
    make_env_names: tuple[str, ...], unsafe_skip_lint: bool, secureboot_sign: str | None,
    secureboot_passphrase_file: Path | None, secureboot_passphrase_env: str | None,
    unsafe_unsandboxed: bool, as_json: bool,
) -> None:
    """Build iPXE that trusts only your root and executes only verified images.

    \b
    Examples:
      trustboot ipxe build --source ~/ipxe --chain https://boot.example.com/boot.ipxe \\
          --signer boot-signer
      trustboot ipxe build --target bin/ipxe.lkrn --script boot.ipxe --trust next-root.crt

    Each make run (and each step of a --git fetch) may take TRUSTBOOT_BUILD_TIMEOUT
    seconds (default 3600); past it, it is stopped and the build exits 1.
    """
    target_list = ipxe_build.check_targets(targets or ipxe_build.DEFAULT_TARGETS)
    time_limit()  # an invalid TRUSTBOOT_BUILD_TIMEOUT: refused before any work (exit 3)
    if unsafe_unsandboxed:
        warn(sandbox.UNSAFE_WARNING)
    if git_url is not None:
        # Before anything else runs: the URL reaches git, the commit names a directory.
        if commit is None:
            raise ConfigError("--git URL needs --commit SHA",
                              hint="pin the clone to a full commit id: --commit "
                              "$(git rev-parse v2.0.0^{commit})")
        if source_dir is not None:
            raise ConfigError("--git URL and --source exclude each other",
                              hint="build a local tree with --source DIR, or clone one with "
                              "--git URL --commit SHA")
        git_url = check_git_url(git_url)
        commit = check_commit(commit)
    elif commit is not None:
        raise ConfigError("--commit only makes sense with --git URL",
                          hint="add --git URL to clone that commit, or drop --commit to "
                          "build the tree --source names as it is")
    secret_envs = {name: what for name, what in (
        (passphrase_env, "the client key's passphrase"),
        (secureboot_passphrase_env, "the Secure Boot db key's passphrase")) if name}
    for name in make_env_names:
        if not name or not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise ConfigError(f"--make-env {name!r} is not an environment variable name",
                              hint="pass the name of a variable set in your environment "
                              "(letters, digits and _), e.g. --make-env CCACHE_DIR")
        if name in secret_envs:
            raise ConfigError(f"--make-env {name} would hand {secret_envs[name]} to make",
                              hint="pass another variable")
    # The default ./pki is used only if it is there; an explicit --pki must exist.
    pki_dir: Path | None = pki
    if not pki_explicit() and not (pki / "ca.crt").exists() and trust_files:
        pki_dir = None
    trust = collect_trust(pki_dir, trust_files, cert_files)

    generated = _chain_script(chain_url, chain_sig, signer, ntp_server, retries,
                              retry_delay, on_failure)
    if generated is not None and script_file is not None:
        raise ConfigError("give either --script FILE or --chain URL, not both")
    if generated is not None:
        script = generated
    elif script_file is not None:
        script = _read_script(script_file)
        if not runs_as_script(script):
            raise ConfigError(
                f"{script_file} is not an iPXE script (its first line is not '#!ipxe')",
                hint="iPXE only runs a script whose very first bytes are '#!ipxe' and a "
                     "new line (nothing before them, not even a BOM)",
            )
        if unsafe_skip_lint:
            warn(f"not linting {script_file}: it may boot unverified images")
        else:
            check_script(script, origin=str(script_file))
    else:
        raise ConfigError(
            "no embedded script: without one the firmware would boot unsigned images",
            hint="pass --chain https://HOST/boot.ipxe --signer NAME, or --script FILE",
        )

    # The db key is unlocked before the build, so a wrong passphrase costs no build time.
    sb_signer = None
    if secureboot_sign is not None:
        from trustboot.secureboot import keyset

        if pki_dir is None:
            raise ConfigError("--secureboot-sign needs the CA home with the Secure Boot key "
                              "set (--pki)", hint="trustboot secureboot init --pki DIR")
        sb_signer = keyset.open_signer(
            keyset.load_keyset(pki_dir), "db",
            passphrase_source(secureboot_passphrase_file, secureboot_passphrase_env,
                              option="--secureboot-passphrase"),
            now=datetime.now(UTC))
    client = None
    if client_cert is not None:
        client = load_client_identity(
            pki_dir, client_cert,
            passphrase_source(passphrase_file, passphrase_env, option="--passphrase"),
        )

    if git_url is not None:
        assert commit is not None
        cache = ipxe_build.prepare_cache_dir(cache_dir or ipxe_build.default_cache_dir())
        checkout = clone_pinned(git_url, commit, clone_dir(cache, commit))
        source = open_source(checkout)
    else:
        source = open_source(resolve_source_dir(source_dir))

    if source.ignored_local_config:
        warn(f"ignoring the tree's own config/local/{', '.join(source.ignored_local_config)}: "
             "trustboot builds with its own headers (see the manifest)")
    if source_date_epoch is None:
        env_epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
        if env_epoch.isdigit():
            source_date_epoch = int(env_epoch)
        else:
            source_date_epoch = source.git_commit_time or 0
    request = ipxe_build.BuildRequest(
        source=source,
        targets=target_list,
        trust=trust.trust,
        certs=trust.certs,
        client=client,
        script=script,
        options=BuildOptions(
            crosscert=crosscert, ocsp=not no_ocsp, ntp=ntp_server is not None,
            serial_console=serial_console,
        ),
        source_date_epoch=source_date_epoch,
    )
    progress = MakeProgress(quiet=as_json)
    try:
        result = ipxe_build.build(
            request, output_dir=output_dir, cache_dir=cache_dir, jobs=jobs,
            use_cache=not no_cache, clean=clean, on_progress=progress,
            make_env_names=make_env_names, unsafe_unsandboxed=unsafe_unsandboxed,
        )
    finally:
        progress.finish()
    if sb_signer is not None:
        from trustboot.secureboot.sign_build import sign_outputs

        sign_outputs(result.outputs, result.manifest, output_dir, sb_signer)
    if as_json:
        emit_json({"cached": result.cached, "output_dir": str(output_dir),
                   "outputs": {t: str(p) for t, p in result.outputs.items()},
                   "manifest": result.manifest})
        return
    state = "from cache" if result.cached else "built"
    for entry in cast(list[dict[str, Any]], result.manifest["outputs"]):
        click.echo(f"{entry['target']}  {entry['size']} bytes  sha256 {entry['sha256']}")
    click.echo(f"{len(result.outputs)} target(s) {state}; manifest: "
               f"{output_dir / 'manifest.json'}")
    fps = ", ".join(c.fingerprint[:16] for c in request.trust)
    click.echo(f"trusts only: {fps}")
    if client is not None:
        warn("these binaries contain the client's private key: protect them like the key")


@command.group("script")
def script_group() -> None:
    """Render or lint embedded scripts."""


@script_group.command("render")
@_chain_options
def render_cmd(
    chain_url: str | None, chain_sig: str | None, signer: str | None, ntp_server: str | None,
    retries: int, retry_delay: int, on_failure: str,
) -> None:
    """Print the fail-closed embedded script that --chain URL would build in."""
    if chain_url is None:
        raise ConfigError("render needs --chain URL --signer NAME")
    text = _chain_script(chain_url, chain_sig, signer, ntp_server, retries, retry_delay,
                         on_failure)
    assert text is not None
    click.echo(text, nl=False)


@script_group.command("lint")
@click.argument("script_file", type=NonEmptyPath(path_type=Path, dir_okay=False))
@click.option("--stage", type=click.Choice(STAGES), default="embedded", show_default=True,
              help="embedded: the script built into the firmware (--script). chained: a "
              "script such firmware fetches, verifies and runs (boot.ipxe, menus).")
@json_option
def lint_cmd(script_file: Path, stage: str, as_json: bool) -> None:
    """Check a script by following every path through it as iPXE would run it.

    Findings: any path that boots or executes an image without a successful imgverify of
    it (and of every initrd), commands iPXE would reject (options after arguments, unknown
    options), cleartext fetches, and for --stage embedded a missing 'imgtrust --permanent'
    or any path that ends the script (the BIOS would boot the next device).
    Exit 0 when clean, 3 with the findings listed otherwise.
    """
    text = _read_script(script_file)
    findings = lint_script(text, stage=stage)
    if as_json:
        emit_json({"file": str(script_file), "stage": stage,
                   "findings": [f.to_json() for f in findings]})
    else:
        for finding in findings:
            # a finding quotes the script's words: escaped, so a script from a pull
            # request cannot drive the reviewer's terminal
            click.echo(clean(f"{script_file}:{finding}"))
    if findings:
        raise ConfigError(
            f"{script_file}: {len(findings)} finding(s); the script is not fail-closed",
            hint="fix them, or generate a script with `trustboot ipxe script render`",
        )
    if not as_json:
        click.echo(f"{script_file}: ok")
