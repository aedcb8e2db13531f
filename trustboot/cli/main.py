"""Entry point: the ``trustboot`` group, global options, and the error-to-exit-code map."""

from __future__ import annotations

import importlib
import json
import traceback
from typing import Any

import click

from trustboot import __version__
from trustboot.errors import ExitCode, TrustbootError

# Each module trustboot.cli.<name> exposes ``command`` (a click command or group).
COMMAND_MODULES = ("ca", "sign", "verify", "ipxe", "audit", "demo", "secureboot")


class TrustbootGroup(click.Group):
    """Maps every TrustbootError to its exit code; anything else is a bug (70).

    Command modules are imported only when their command runs, so `trustboot sign` in a
    CI loop does not pay for the audit's or the iPXE builder's imports.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMAND_MODULES:
            return None
        module = importlib.import_module(f"trustboot.cli.{cmd_name}")
        command: click.Command = module.command
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TrustbootError as exc:
            obj = ctx.find_object(dict) or {}
            if obj.get("debug"):
                traceback.print_exc()
            if obj.get("json_errors"):
                click.echo(json.dumps(exc.to_json()), err=True)
            else:
                click.echo(exc.diagnostics(), err=True)
            ctx.exit(int(exc.exit_code))
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # a bug, not a verdict: never exit 1 or 4 here
            obj = ctx.find_object(dict) or {}
            if obj.get("debug"):
                traceback.print_exc()
            else:
                click.echo(
                    f"internal error: {type(exc).__name__}: {exc}\n"
                    "  hint: this is a bug in trustboot; rerun with --debug for a traceback "
                    "and report it",
                    err=True,
                )
            ctx.exit(int(ExitCode.INTERNAL))


@click.group(cls=TrustbootGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trustboot")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """trustboot: a signed network-boot chain, end to end.

    Exit codes: 0 ok, 1 operational failure, 2 usage, 3 invalid configuration or input,
    4 verification failed, 5 audit findings at or above --fail-on, 70 internal bug.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main() -> None:
    cli(prog_name="trustboot")


if __name__ == "__main__":  # pragma: no cover
    main()
