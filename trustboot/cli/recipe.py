"""`trustboot recipe`: the recipe format (its JSON Schema) and a check of one recipe."""

from __future__ import annotations

from pathlib import Path

import click

from trustboot.cli._common import emit_json, json_option
from trustboot.release.recipe import json_schema, load_recipe


@click.group("recipe")
def command() -> None:
    """Release recipes: the format and a quick check."""


@command.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of a release recipe (for editors and CI linters)."""
    emit_json(json_schema())


@command.command("check")
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))
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
