"""`trustboot demo`: run the demo recipe (embedded by default) in a scratch directory."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from trustboot.cli._common import emit_json, json_option
from trustboot.demo import run_demo
from trustboot.recipe import demo_recipe_text, load_recipe, parse_recipe


@click.command("demo")
@click.option("--recipe", "recipe_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Recipe to run (default: the embedded demo recipe).")
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False),
              help="Where to put the CA and the signed release (default: a new temp dir).")
@json_option
def command(recipe_path: Path | None, workdir: Path | None, as_json: bool) -> None:
    """Create a CA, issue a code-signing certificate, sign the recipe's images and an
    iPXE entry script, and verify them the way iPXE will. Needs no network."""
    if recipe_path is not None:
        recipe = load_recipe(recipe_path)
    else:
        recipe = parse_recipe(demo_recipe_text(), "<embedded demo recipe>")
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="trustboot-demo-"))

    def step(message: str) -> None:
        if not as_json:
            click.echo(f"• {message}", err=True)

    result = run_demo(recipe, workdir,
                      recipe_dir=recipe_path.parent if recipe_path else None, step=step)
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(f"\nDemo release in {result.workdir / 'release'}")
    for f in result.files:
        click.echo(f"  {Path(f['path']).name:<16} {f['size']:>10} bytes  sha256 "
                   f"{f['sha256'][:16]}…  → {Path(f['signature']).name}  verified")
    click.echo(f"CA: {result.pki}  root sha256 {result.root_sha256}")
    click.echo(f"Entry script: {result.script}")
    click.echo("Note: the demo keeps its generated passphrases in "
               f"{result.workdir / 'secrets'}; a real CA never does.")
