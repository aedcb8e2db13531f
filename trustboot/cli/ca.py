"""`trustboot ca` (placeholder until its issue lands)."""

from __future__ import annotations

import click

from trustboot.errors import ConfigError


@click.command("ca")
def command() -> None:
    """Not available yet."""
    raise ConfigError("'trustboot ca' is not implemented in this build")
