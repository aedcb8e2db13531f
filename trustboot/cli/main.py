"""Entry point: the ``trustboot`` group, global options, and the error-to-exit-code map."""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from trustboot import __version__
from trustboot.errors import ConfigError, ExitCode, OperationalError, TrustbootError
from trustboot.interrupt import Interrupted, cleanup_on_signals
from trustboot.run import run_scope

# Each module trustboot.cli.<name> exposes ``command`` (a click command or group).
COMMAND_MODULES = ("ca", "sign", "verify", "ipxe", "audit", "demo", "publish", "origin",
                   "release", "recipe", "resign", "secureboot")


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

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        """With --json anywhere on the command line, click's own errors (usage, exit 2) are
        JSON on stderr too, like every other error; otherwise click reports them."""
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or not _wants_json(argv):
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        try:
            rc = super().main(argv, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            hint = None
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                hint = f"see '{exc.ctx.command_path} --help'"
            _json_error("UsageError", exc.format_message(), hint, exc.exit_code)
            sys.exit(exc.exit_code)
        except click.Abort:
            _json_error("Aborted", "aborted", None, 1)
            sys.exit(1)
        sys.exit(rc if isinstance(rc, int) and not isinstance(rc, bool) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            # SIGTERM/SIGHUP/SIGINT unwind the command (temp trees removed, make killed),
            # then end the process as the signal would have (see trustboot.interrupt).
            # run_scope: what a command needs once (a PKCS#11 module) is set up once
            with cleanup_on_signals(), run_scope():
                try:
                    return super().invoke(ctx)
                except Interrupted as exc:
                    _report_interrupted(ctx, exc)
                    raise
        except TrustbootError as exc:
            _report(ctx, exc)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:
            # the reader went away (`| head`): not a bug; end quietly as SIGPIPE ends a tool
            _drop_stdout()
            ctx.exit(128 + signal.SIGPIPE)
        except KeyboardInterrupt:
            if (ctx.find_object(dict) or {}).get("json_errors"):
                _json_error("Interrupted", "interrupted", None, 130)
            else:
                click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # a bug, not a verdict: never exit 1 or 4 here
            if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
                _report(ctx, _environment_error(exc))  # a full disk is not a bug
            if isinstance(exc, OSError) and exc.errno in _PATH_ERRNOS:
                _report(ctx, _path_error(exc))  # a path given too long is bad input
            obj = ctx.find_object(dict) or {}
            hint = ("this is a bug in trustboot; rerun with --debug for a traceback and "
                    "report it")
            if obj.get("debug"):
                _print_traceback()
            if obj.get("json_errors"):
                _json_error("InternalError", f"{type(exc).__name__}: {exc}", hint,
                            int(ExitCode.INTERNAL))
            elif not obj.get("debug"):
                click.echo(f"internal error: {type(exc).__name__}: {exc}\n  hint: {hint}",
                           err=True)
            ctx.exit(int(ExitCode.INTERNAL))


# Write failures the machine causes, not trustboot: reported as operational (exit 1).
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG,
                                 errno.EROFS})


# Paths the system refuses, wherever a check met them first: bad input (exit 3). A name
# too long reaches here from pathlib's is_file()/exists(); ELOOP mostly from an open with
# O_NOFOLLOW meeting a symbolic link where trustboot never makes one.
_PATH_ERRNOS = {
    errno.ENAMETOOLONG: ("a name in it is longer than the filesystem allows (255 bytes), "
                         "or all of it longer than 4096", "use a shorter path"),
    errno.ELOOP: ("a symbolic link is where none is expected (or the path loops through "
                  "links)", "check who created the link, and remove it"),
}


def _path_error(exc: OSError) -> ConfigError:
    from trustboot.text import clean  # (only here: every command imports this module)

    where = f"the path {clean(os.fsdecode(exc.filename))}" if exc.filename else "a path"
    problem, hint = _PATH_ERRNOS[exc.errno or 0]
    return ConfigError(f"cannot use {where}: {problem}", hint=hint)


def _environment_error(exc: OSError) -> OperationalError:
    """An OSError no code path mapped (writing stdout, most often: `> file` on a full
    disk) as an operational error naming what could not be written."""
    what = f"cannot write {exc.filename}" if exc.filename else "cannot write the output"
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        _drop_stdout()  # what is still buffered would fail again at exit
        what = "cannot write to standard output"
    return _write_failed(what, exc)


def _write_failed(what: str, exc: BaseException) -> OperationalError:
    """The one wording of a write the machine refused (a full disk, a closed stream)."""
    return OperationalError(f"{what}: {getattr(exc, 'strerror', None) or exc}",
                            hint="free space (or fix the device) where it goes, then run "
                                 "again")


def _report(ctx: click.Context, exc: TrustbootError) -> NoReturn:
    obj = ctx.find_object(dict) or {}
    if obj.get("debug"):
        _print_traceback()
    if obj.get("json_errors"):
        click.echo(json.dumps(exc.to_json()), err=True)
    else:
        click.echo(exc.diagnostics(), err=True)
    ctx.exit(int(exc.exit_code))


def _print_traceback() -> None:
    import traceback  # only for --debug: 3-4 ms of every run otherwise

    traceback.print_exc()


def _report_interrupted(ctx: click.Context, exc: Interrupted) -> None:
    if exc.signum == signal.SIGINT:
        return  # reported as KeyboardInterrupt, once the signal is delivered again
    message = f"interrupted by {exc.name}; cleaned up"
    if (ctx.find_object(dict) or {}).get("json_errors"):
        _json_error("Interrupted", message, None, 128 + exc.signum)
    else:
        click.echo(message, err=True)


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test runner's)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _wants_json(argv: Sequence[str]) -> bool:
    """``--json`` before any ``--`` (after it, it would be a file name)."""
    for arg in argv:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def _json_error(kind: str, message: str, hint: str | None, code: int) -> None:
    click.echo(json.dumps({"error": kind, "message": message, "hint": hint,
                           "exit_code": code}), err=True)


@click.group(cls=TrustbootGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trustboot")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """trustboot: a signed network-boot chain, end to end.

    Exit codes: 0 ok, 1 operational failure, 2 usage, 3 invalid configuration or input,
    4 verification failed, 5 audit findings at or above --fail-on, 70 internal bug,
    130 interrupted; SIGTERM/SIGHUP end it with the signal, after cleaning up; a closed
    output pipe (| head) ends it quietly with 141.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main() -> None:
    try:
        cli(prog_name="trustboot")
    except SystemExit as exc:
        _exit_now(exc.code)
    except OSError as exc:  # outside a command (`--version > /dev/full`)
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        error = _environment_error(exc)
        click.echo(error.diagnostics(), err=True)
        _exit_now(int(error.exit_code))
    _exit_now(0)


def _exit_now(code: object) -> NoReturn:
    """End the process once the command is done, without the interpreter's teardown.

    Freeing every module and object one by one costs 30-40 ms, the largest fixed cost
    of a short command after the imports (a CI loop of `trustboot sign`, `verify`). What
    the teardown would do that matters is done here: the atexit handlers (temp trees of
    ``weakref.finalize``, a test's hooks) and flushing stdout/stderr. Commands write
    their files with explicit closes and syncs (fsutil), never through objects left for
    the garbage collector. With a non-daemon thread still running (a library's), the
    normal exit waits for it instead; daemon threads end with the process either way.
    """
    import atexit
    import threading

    status = _status(code)
    if any(t.is_alive() and not t.daemon and t is not threading.main_thread()
           for t in threading.enumerate()):
        sys.exit(status)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # the reader went away (`| head`): as SIGPIPE would end it
            status = status or 128 + signal.SIGPIPE
        except (OSError, ValueError) as exc:  # a full disk, a closed stream
            if stream is sys.stdout:
                _drop_stdout()
                error = _write_failed("cannot write to standard output", exc)
                with contextlib.suppress(OSError, ValueError):
                    sys.stderr.write(error.diagnostics() + "\n")
                    sys.stderr.flush()
            status = status or int(ExitCode.OPERATIONAL)
    os._exit(status)


def _status(code: object) -> int:
    """The exit status ``sys.exit(code)`` would give (a message is printed, then 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    main()
