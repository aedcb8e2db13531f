"""`trustboot verify` (placeholder until its issue lands)."""

from __future__ import annotations

import click

from trustboot.errors import ConfigError


@click.command("verify")
def command() -> None:
    """Not available yet."""
    raise ConfigError("'trustboot verify' is not implemented in this build")
