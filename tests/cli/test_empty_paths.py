"""Every path option and argument of every command refuses an empty value.

Click turns "" into ".", so `--out "$UNSET"` or `--pki ""` acted on the directory the
command ran in. The command tree is walked here, so a path parameter added later with
plain click.Path (or a new command) fails this test instead of reopening the hole.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from trustboot.cli._common import NonEmptyPath
from trustboot.cli.main import cli


def _commands(cmd: click.Command, path: tuple[str, ...]
              ) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, cmd
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd, info_name=path[-1] if path else "trustboot")
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            assert sub is not None, name
            yield from _commands(sub, (*path, name))


def _path_params() -> list[tuple[tuple[str, ...], click.Command, click.Parameter]]:
    return [(path, cmd, p) for path, cmd in _commands(cli, ())
            for p in cmd.params if isinstance(p.type, click.Path)]


PATH_PARAMS = _path_params()


def _id(case: tuple[tuple[str, ...], click.Command, click.Parameter]) -> str:
    path, _, param = case
    return " ".join((*path, param.opts[0] if isinstance(param, click.Option)
                     else param.human_readable_name))


def test_the_walk_finds_the_path_parameters() -> None:
    """Not vacuous: the tree holds dozens of them, options and arguments alike."""
    assert len(PATH_PARAMS) > 60
    assert any(isinstance(p, click.Argument) for _, _, p in PATH_PARAMS)
    names = {_id(c) for c in PATH_PARAMS}
    assert {"ca init --pki", "sign FILES", "origin nginx-config --root",
            "release RECIPE"} <= names


@pytest.mark.parametrize("case", PATH_PARAMS, ids=_id)
def test_every_path_parameter_is_a_non_empty_path(
        case: tuple[tuple[str, ...], click.Command, click.Parameter]) -> None:
    _, _, param = case
    assert isinstance(param.type, NonEmptyPath), (
        f"{_id(case)} uses plain click.Path: use NonEmptyPath (an empty value would be '.')")


def _argv(path: tuple[str, ...], cmd: click.Command, param: click.Parameter) -> list[str]:
    if isinstance(param, click.Option):
        # first on the line: click converts it before it asks for missing required ones
        return [*path, param.opts[0], ""]
    args: list[click.Parameter] = [p for p in cmd.params if isinstance(p, click.Argument)]
    before = args[:args.index(param)]
    return [*path, *["x" for _ in before], ""]


@pytest.mark.parametrize("case", PATH_PARAMS, ids=_id)
def test_an_empty_value_is_a_usage_error_naming_the_parameter(
        case: tuple[tuple[str, ...], click.Command, click.Parameter], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    path, cmd, param = case
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("TRUSTBOOT_")]:
        monkeypatch.delenv(name)
    r = CliRunner().invoke(cli, _argv(path, cmd, param))
    assert r.exit_code == 2, r.output
    assert "is empty" in r.output and "give the path" in r.output, r.output
    shown = param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
    assert shown in r.output, r.output
    assert list(tmp_path.iterdir()) == []  # nothing was made in the current directory


def test_whitespace_is_as_empty_and_a_real_path_still_works(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["recipe", "check", "  "])
    assert r.exit_code == 2 and "is empty" in r.output, r.output
    r = CliRunner().invoke(cli, ["recipe", "check", str(tmp_path / "absent.yaml")])
    assert r.exit_code != 2, r.output  # past the parameter: the file is looked for
