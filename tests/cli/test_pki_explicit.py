"""`pki_explicit`: the one rule that says whether --pki was named (so its CA must open)
or left at the default ./pki (which may be any directory called pki and is passed over)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from trustboot.cli._common import pki_explicit


@click.command()
@click.option("--pki", type=click.Path(path_type=Path), envvar="TRUSTBOOT_PKI",
              default=Path("pki"))
def _probe(pki: Path) -> None:
    click.echo(f"explicit={pki_explicit()}")


@pytest.mark.parametrize(("args", "env", "explicit"), [
    ([], {}, False),
    (["--pki", "elsewhere"], {}, True),
    ([], {"TRUSTBOOT_PKI": "elsewhere"}, True),  # a pipeline's variable names it too
    (["--pki", "pki"], {}, True),  # typed, even when it spells the default
])
def test_named_or_default(args: list[str], env: dict[str, str], explicit: bool,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRUSTBOOT_PKI", raising=False)
    r = CliRunner().invoke(_probe, args, env=env)
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"explicit={explicit}"


def test_outside_a_command_nothing_is_explicit() -> None:
    assert pki_explicit() is False
