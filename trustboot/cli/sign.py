"""`trustboot sign` (placeholder until its issue lands)."""

from __future__ import annotations

import click

from trustboot.errors import ConfigError


@click.command("sign")
def command() -> None:
    """Not available yet."""
    raise ConfigError("'trustboot sign' is not implemented in this build")
