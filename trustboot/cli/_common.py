"""Options and output helpers shared by the command modules."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from trustboot import secrets
from trustboot.errors import ConfigError
from trustboot.text import clean_lines

F = TypeVar("F", bound=Callable[..., Any])


def json_option(func: F) -> F:
    """``--json``: machine-readable output on stdout, nothing else there."""

    def callback(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        obj = ctx.ensure_object(dict)
        obj["json_errors"] = value
        return value

    return click.option(
        "--json", "as_json", is_flag=True, callback=callback, expose_value=True,
        help="Machine-readable JSON on stdout (errors as JSON on stderr).",
    )(func)


class NonEmptyPath(click.Path):
    """The type of every path option and argument: a click.Path that refuses an empty
    value. Click turns "" into ".", so `--out "$UNSET"` or `--pki ""` silently acted on
    the directory the command ran in (wrote there, served it, trusted what it held)."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, (str, bytes)) and not value.strip():
            self.fail("is empty (an unset shell variable?): give the path, or '.' for "
                      "the current directory", param, ctx)
        return super().convert(value, param, ctx)


class HiddenAliasOption(click.Option):
    """An option whose later names are old spellings that still work but are not shown:
    ``--help`` lists only the first name."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        shown, self.opts = self.opts, self.opts[:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown


def signing_cert_options(*, old_names: bool) -> Callable[[F], F]:
    """``--signing-cert`` / ``--signing-chain`` (parameters ``signing_cert`` and
    ``signing_chain``): the code-signing certificate of a ``file:``/``pkcs11:`` key, one
    spelling for sign and resign. ``old_names``: also take sign's first spellings,
    ``--cert``/``--chain``, hidden (resign cannot: there ``--cert`` means CERT=, as in
    verify and publish)."""

    def names(new: str, old: str) -> tuple[str, ...]:
        return (new, old) if old_names else (new,)

    def decorate(func: F) -> F:
        func = click.option(
            *names("--signing-chain", "--chain"), "signing_chain", cls=HiddenAliasOption,
            type=NonEmptyPath(path_type=Path, dir_okay=False), envvar="TRUSTBOOT_SIGNING_CHAIN",
            show_envvar=True,
            help="Issuers of the signing certificate, root included (PEM bundle); default: "
            "the pki's chain when the pki issued it.")(func)
        func = click.option(
            *names("--signing-cert", "--cert"), "signing_cert", cls=HiddenAliasOption,
            type=NonEmptyPath(path_type=Path, dir_okay=False), envvar="TRUSTBOOT_SIGNING_CERT",
            show_envvar=True,
            help="Signing certificate of a file: key (and of a pkcs11: key when the token "
            "holds none); a NAME key takes it from the pki.")(func)
        return func

    return decorate


def pki_explicit() -> bool:
    """Whether ``--pki`` was given (on the command line or by TRUSTBOOT_PKI) rather than
    left at its default ./pki: a pki someone named must open (the check fails closed),
    while the default one may be any directory called pki and is passed over."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.get_parameter_source("pki") not in {
        ParameterSource.DEFAULT, None}


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def is_interactive() -> bool:
    return sys.stderr.isatty()


def warn(message: str) -> None:
    # a warning may quote a certificate's or an origin's text (see TrustbootError.diagnostics)
    click.echo(f"warning: {clean_lines(message)}", err=True)


def passphrase_options(prefix: str = "", what: str = "the key",
                       envvar_prefix: str | None = None) -> Callable[[F], F]:
    """``--{prefix}passphrase-file`` and ``--{prefix}passphrase-env`` (never the value itself).

    ``envvar_prefix`` (e.g. "TRUSTBOOT_SIGN_") also reads them from ``{envvar_prefix}
    PASSPHRASE_FILE`` / ``..._ENV``: where a pipeline keeps the file or variable name.
    """

    def env(name: str) -> str | None:
        return f"{envvar_prefix}{name}" if envvar_prefix else None

    def decorate(func: F) -> F:
        func = click.option(
            f"--{prefix}passphrase-env", f"{prefix.replace('-', '_')}passphrase_env",
            metavar="NAME", help=f"Read the passphrase for {what} from environment variable NAME.",
            envvar=env("PASSPHRASE_ENV"), show_envvar=envvar_prefix is not None,
        )(func)
        func = click.option(
            f"--{prefix}passphrase-file", f"{prefix.replace('-', '_')}passphrase_file",
            type=NonEmptyPath(path_type=Path, dir_okay=False),
            help=f"Read the passphrase for {what} from the first line of this file.",
            envvar=env("PASSPHRASE_FILE"), show_envvar=envvar_prefix is not None,
        )(func)
        return func

    return decorate


def pkcs11_generation_options(keys: str, example: str) -> Callable[[F], F]:
    """``--pkcs11 URI`` (generate ``keys`` inside that token) and ``--pkcs11-module``."""

    def decorate(func: F) -> F:
        func = click.option(
            "--pkcs11-module", "pkcs11_module", envvar="TRUSTBOOT_PKCS11_MODULE",
            type=NonEmptyPath(path_type=Path, dir_okay=False), show_envvar=True,
            help="PKCS#11 module (.so) for --pkcs11.")(func)
        func = click.option(
            "--pkcs11", "pkcs11_token", metavar="URI",
            help=f"Generate {keys} inside this PKCS#11 token (RFC 7512 URI, e.g. {example}); "
                 "the passphrase options then give its PIN.")(func)
        return func

    return decorate


def pkcs11_generation(token: str | None, module: Path | None) -> tuple[str, Path] | None:
    """The (token URI, module) of ``--pkcs11``/``--pkcs11-module``, checked; None without."""
    if token is None:
        return None
    from trustboot.keys.pkcs11 import generation_token

    return generation_token(token, module)


def pin_options(func: F) -> F:
    """``--pin-file`` / ``--pin-env``: a token PIN (pkcs11: keys), never the value itself."""
    func = click.option("--pin-env", "pin_env", metavar="NAME", envvar="TRUSTBOOT_PIN_ENV",
                        show_envvar=True,
                        help="Read the token PIN from environment variable NAME.")(func)
    func = click.option("--pin-file", "pin_file", type=NonEmptyPath(path_type=Path,
                        dir_okay=False), envvar="TRUSTBOOT_PIN_FILE", show_envvar=True,
                        help="Read the token PIN (pkcs11: keys) from the first line of "
                        "this file.")(func)
    return func


def pin_source(pin_file: Path | None, pin_env: str | None) -> secrets.PassphraseSource:
    """The token PIN from --pin-file, --pin-env, or a hidden prompt on a terminal."""
    return _secret_source(
        pin_file, env=pin_env, option="--pin", kind="PIN", confirm=False,
        label=lambda what: f"{what[:1].upper()}{what[1:]}",
        needed=lambda what: f"{what} is needed",
        hint="use --pin-file FILE, --pin-env NAME, or pin-source= in the URI")


def passphrase_source(
    file: Path | None, env: str | None, *, confirm: bool = False, option: str = "--passphrase"
) -> secrets.PassphraseSource:
    """Build the callback from options, or a hidden prompt when on a terminal."""
    return _secret_source(
        file, env=env, option=option, kind="passphrase", confirm=confirm,
        label=lambda what: f"Passphrase for {what}",
        needed=lambda what: f"a passphrase for {what} is needed",
        hint=f"use {option}-file FILE or {option}-env NAME")


def _one_of(file: Path | None, env: str | None, option: str
            ) -> tuple[Path | None, str | None]:
    """``{option}-file`` and ``{option}-env`` exclude each other, with click's precedence
    across the pair: one typed on the command line wins over the other's environment
    variable (a pipeline's default, e.g. TRUSTBOOT_SIGN_PASSPHRASE_FILE, must not break
    a run that names its secret explicitly). Both from the same place is an error that
    says where each came from."""
    if file is None or env is None:
        return file, env
    ctx = click.get_current_context(silent=True)
    base = option.lstrip("-").replace("-", "_")
    names = (f"{base}_file", f"{base}_env")
    sources = [ctx.get_parameter_source(n) if ctx else None for n in names]
    typed = [s is ParameterSource.COMMANDLINE for s in sources]
    if typed == [True, False]:
        return file, None
    if typed == [False, True]:
        return None, env
    variables = [_envvar(ctx, n) if s is ParameterSource.ENVIRONMENT else None
                 for n, s in zip(names, sources, strict=True)]
    if ctx is not None and variables[0] and variables[1]:
        raise ConfigError(
            f"both {variables[0]} and {variables[1]} are set in the environment (they give "
            f"{option}-file and {option}-env, which exclude each other)",
            hint=f"unset one of them (`unset {variables[1]}`), or give the one you mean on "
                 "the command line: it wins over the other's variable")
    where = " (both on the command line)" if typed == [True, True] else ""
    raise ConfigError(f"give only one of {option}-file and {option}-env{where}",
                      hint=f"keep one of them: a file ({option}-file FILE) or a variable "
                           f"holding the secret ({option}-env NAME)")


def _envvar(ctx: click.Context | None, name: str) -> str | None:
    """The environment variable that gave parameter ``name`` its value."""
    for param in ctx.command.params if ctx else ():
        if param.name == name and isinstance(param, click.Option):
            if isinstance(param.envvar, str):
                return param.envvar
            # a list: the first one set is the one click read
            return next((v for v in param.envvar or () if os.environ.get(v)), None)
    return None


def _secret_source(file: Path | None, *, env: str | None, option: str, kind: str,
                   confirm: bool, label: Callable[[str], str], needed: Callable[[str], str],
                   hint: str) -> secrets.PassphraseSource:
    """One rule for passphrases and PINs: a file, an environment variable, or a hidden
    prompt on a terminal (never argv)."""
    file, env = _one_of(file, env, option)
    if file is not None:
        return secrets.from_file(file, f"{kind} file")
    if env is not None:
        return secrets.from_env(env)

    def prompt(what: str) -> bytes:
        if not sys.stdin.isatty():
            raise ConfigError(f"{needed(what)} and there is no terminal to ask on", hint=hint)
        try:
            value: str = click.prompt(label(what), hide_input=True,
                                      confirmation_prompt=confirm, err=True)
        except UnicodeError:
            # The codec's message gives byte positions inside the secret: never show it.
            raise ConfigError(f"the {kind} typed for {what} is not valid in this "
                              "terminal's encoding",
                              hint=f"use {option}-file FILE (any bytes but NUL)") from None
        if not value:
            raise ConfigError(f"empty {kind}")
        typed = value.encode("utf-8", "surrogateescape")
        secrets.refuse_nul(typed, f"the {kind} typed for {what}")
        return typed

    return prompt


ProgressCallback = Callable[[int], None]


@contextmanager
def progress(total: int, label: str, *, enabled: bool) -> Iterator[ProgressCallback]:
    """A progress bar on stderr when it is a terminal and output is not JSON; else silent."""
    if not enabled or not is_interactive():
        yield lambda _n: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update
