"""`trustboot audit` (placeholder until its issue lands)."""

from __future__ import annotations

import click

from trustboot.errors import ConfigError


@click.command("audit")
def command() -> None:
    """Not available yet."""
    raise ConfigError("'trustboot audit' is not implemented in this build")
