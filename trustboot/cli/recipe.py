"""`trustboot recipe`: the recipe format (its JSON Schema) and a check of one recipe."""

from __future__ import annotations

from pathlib import Path

import click

from trustboot.cli._common import NonEmptyPath, emit_json, json_option
from trustboot.release.recipe import json_schema, load_recipe


@click.group("recipe")
def command() -> None:
    """Release recipes: the format and a quick check."""


@command.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of a release recipe (for editors and CI linters)."""
    emit_json(json_schema())


@command.command("check")
# Not click's dir_okay=False (a usage error, exit 2): a directory is refused as a FIFO or
# a device is, "not a regular file", exit 3, as every file that configures a run.
@click.argument("recipe", type=NonEmptyPath(path_type=Path))
@json_option
def check_cmd(recipe: Path, as_json: bool) -> None:
    """Validate RECIPE's structure and values (files are checked by `release --dry-run`)."""
    r = load_recipe(recipe)
    if as_json:
        emit_json({"recipe": str(recipe), "name": r.name, "ok": True,
                   "entries": [e.name for e in r.entries]})
    else:
        n = len(r.entries)
        click.echo(f"{recipe}: ok ({r.name}, {n} entr{'y' if n == 1 else 'ies'})")
