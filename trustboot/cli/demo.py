"""`trustboot demo`: release the demo recipe (embedded by default) in a scratch directory."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from trustboot import fsutil
from trustboot.cli._common import NonEmptyPath, emit_json, json_option
from trustboot.cli.progress import MakeProgress
from trustboot.cli.release import StageReporter
from trustboot.ipxe.source import ENV_SOURCE
from trustboot.release.demo import new_workdir, run_demo
from trustboot.release.recipe import MAX_RECIPE_BYTES, demo_recipe_text


@click.command("demo")
@click.option("--recipe", "recipe_path", type=NonEmptyPath(path_type=Path, dir_okay=False),
              help="Recipe to run (default: the embedded copy of recipes/demo.yaml).")
@click.option("--workdir", type=NonEmptyPath(path_type=Path, file_okay=False),
              help="Where the CA, origin and release go (default: a new temp dir).")
@click.option("--ipxe-source", type=NonEmptyPath(path_type=Path, file_okay=False),
              envvar=ENV_SOURCE, show_envvar=True,
              help="Build iPXE from this tree (default: skipped, with how to enable it).")
@click.option("--cache-dir", type=NonEmptyPath(path_type=Path, file_okay=False),
              help="iPXE build cache to use, e.g. the one ipxe build and release use "
              "(~/.cache/trustboot/ipxe), so a second demo rebuilds only what its new CA "
              "changes. Default: one inside the work directory, so the demo leaves nothing "
              "outside it.")
@json_option
def command(recipe_path: Path | None, workdir: Path | None, ipxe_source: Path | None,
            cache_dir: Path | None, as_json: bool) -> None:
    """Release the demo recipe end to end, on this machine only.

    Creates a CA with a code-signing and a TLS server certificate, generates stand-in
    images, releases them to a file:// origin served over HTTPS on 127.0.0.1, fetches
    the entry script back and verifies it as iPXE would, and shows that a kernel with
    one byte changed is refused. Builds iPXE only with --ipxe-source or TRUSTBOOT_IPXE_SRC.

    \b
    Examples:
      trustboot demo
      trustboot demo --recipe recipes/demo.yaml --workdir demo-out --json
    """
    if recipe_path is not None:
        data = fsutil.read_capped(recipe_path, MAX_RECIPE_BYTES, "recipe")
        try:
            text, source = data.decode("utf-8"), str(recipe_path)
        except UnicodeDecodeError:
            raise click.UsageError(f"{recipe_path} is not UTF-8 text") from None
    else:
        text, source = demo_recipe_text(), "<embedded demo recipe>"
    if workdir is None:
        workdir = new_workdir()
    report = StageReporter(quiet=as_json)
    make = MakeProgress(quiet=as_json)
    try:
        result = run_demo(text, source, workdir, ipxe_source=ipxe_source, step=report,
                          cache_dir=cache_dir, build_progress=make,
                          now=dt.datetime.now(dt.UTC))
    finally:
        make.finish()
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(f"\nDemo release {result.release.release} in {result.workdir / 'origin'}")
    for f in result.files:
        if f["sig"]:
            click.echo(f"  {f['name']:<28} {f['size']:>10} bytes  sha256 "
                       f"{f['sha256'][:16]}…  → {f['sig'].rsplit('/', 1)[-1]}  verified")
    click.echo(f"CA: {result.pki}  root sha256 {result.root_sha256}")
    click.echo(f"Entry script (served while the demo ran): {result.entry_url}")
    click.echo("Note: the demo keeps its generated passphrases in "
               f"{result.workdir / 'secrets'}; a real CA never does.")
