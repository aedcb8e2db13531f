"""`trustboot ipxe` (placeholder until its issue lands)."""

from __future__ import annotations

import click

from trustboot.errors import ConfigError


@click.command("ipxe")
def command() -> None:
    """Not available yet."""
    raise ConfigError("'trustboot ipxe' is not implemented in this build")
