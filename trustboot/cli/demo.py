"""`trustboot demo` (placeholder until its issue lands)."""

from __future__ import annotations

import click

from trustboot.errors import ConfigError


@click.command("demo")
def command() -> None:
    """Not available yet."""
    raise ConfigError("'trustboot demo' is not implemented in this build")
