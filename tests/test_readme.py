"""The README's command examples name commands, options and environment variables that
exist: every `trustboot ...` line of its ```sh blocks (and each inline `trustboot ...`)
resolves to a real (sub)command and each of its options is one that command takes; every
`TRUSTBOOT_*` variable the README names is read by an option or by the code. A renamed
option fails here, not in a user's shell. (The examples themselves are run by the tests of
each command and tests/contract/test_help_examples.py; this only keeps the names honest.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from trustboot.cli.main import cli

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# Shell words that end one command of a line and may start another.
OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "2>", "&"}
# Variables read elsewhere than an option's envvar: the shell, CI, the tests.
NOT_OPTIONS = {"TRUSTBOOT_IPXE_SRC", "TRUSTBOOT_CACHE_DIR", "TRUSTBOOT_PUBLISH_CACHE",
               "TRUSTBOOT_BUILD_TIMEOUT"}


def sh_lines(text: str) -> list[str]:
    """Each line of the ```sh blocks, continuations joined, comments kept out."""
    lines: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M):
        lines.extend(re.sub(r"\\\n\s*", " ", block).splitlines())
    return lines


def commands(text: str) -> list[str]:
    """The sh block lines and the inline `trustboot ...` spans of the prose."""
    return sh_lines(text) + re.findall(r"`(trustboot [^`]+)`", text)


def invocations(line: str) -> list[list[str]]:
    """The trustboot command lines in one shell line (words after `trustboot`, up to a
    pipe, a redirection or a list operator). `[--x]` and `[--a|--b]` are optional
    options as the README writes them; `...` and `<placeholders>` are dropped."""
    line = re.sub(r"\[(-[^\]]*)\]", lambda m: m.group(1).replace("|", " "), line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = []
    current: list[str] | None = None
    skip_next = False
    for word in lexer:
        if skip_next:
            skip_next = False
            continue
        if word in OPERATORS or word == "2":
            skip_next = word in {">", ">>", "<"}
            current = None
            continue
        if current is None:
            if word == "trustboot" or word.endswith("/trustboot"):
                current = []
                commands.append(current)
            continue
        if word == "..." or (word.startswith("<") and word.endswith(">")):
            continue
        current.append(word)
    return commands


def resolve(argv: list[str]) -> tuple[click.Command, list[str], list[str]]:
    """The command ``argv`` runs, its name path, and the option words given to it."""
    cmd: click.Command = cli
    ctx = click.Context(cli)
    path: list[str] = []
    options: list[str] = []
    for word in argv:
        if word == "--":
            break
        if word.startswith("-") and word != "-":
            options.append(word.split("=", 1)[0])
            continue
        if isinstance(cmd, click.Group) and not options:
            sub = cmd.get_command(ctx, word)
            if sub is None and getattr(cmd, "default", None):  # `publish DIR ORIGIN`
                sub = cmd.get_command(ctx, cmd.default)  # type: ignore[attr-defined]
            assert sub is not None, f"`trustboot {shlex.join(argv)}`: no command {word!r}"
            if sub.name == word:
                path.append(word)
            cmd = sub
    return cmd, path, options


def option_names(cmd: click.Command) -> set[str]:
    names = {"-h", "--help"}
    for param in cmd.params:
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def all_commands(cmd: click.Command = cli) -> list[click.Command]:
    found = [cmd]
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            assert sub is not None
            found.extend(all_commands(sub))
    return found


def stale_options(text: str) -> list[str]:
    """Each README example option the command it is given to does not take."""
    problems: list[str] = []
    for line in commands(text):
        for argv in invocations(line):
            cmd, path, options = resolve(argv)
            known = option_names(cmd)
            for option in options:
                if option not in known:
                    problems.append(f"`trustboot {' '.join(path)}` has no {option} "
                                    f"(README: trustboot {shlex.join(argv)})")
    return problems


def stale_variables(text: str) -> list[str]:
    envvars: set[str] = set()
    for cmd in all_commands():
        for param in cmd.params:
            if isinstance(param, click.Option) and param.envvar:
                envvars.update([param.envvar] if isinstance(param.envvar, str)
                               else param.envvar)
    code = "\n".join(p.read_text() for p in (REPO / "trustboot").rglob("*.py"))
    problems = []
    for name in sorted(set(re.findall(r"\bTRUSTBOOT_[A-Z0-9_]*[A-Z0-9]\b", text))):
        if name in envvars:
            continue
        if name in NOT_OPTIONS and re.search(rf"[\"']{name}[\"']", code):
            continue
        problems.append(f"{name}: no option reads it")
    # `TRUSTBOOT_X_ENV`/`_FILE`: the README's short form for two variables
    for prefix in re.findall(r"`(TRUSTBOOT_[A-Z0-9_]+)_ENV`/`_FILE`", text):
        if f"{prefix}_FILE" not in envvars:
            problems.append(f"{prefix}_FILE: no option reads it")
    return problems


def test_readme_examples_name_real_commands_and_options() -> None:
    text = README.read_text()
    assert len([a for line in sh_lines(text) for a in invocations(line)]) > 50
    assert stale_options(text) == []


def test_readme_names_real_environment_variables() -> None:
    assert stale_variables(README.read_text()) == []


@pytest.mark.parametrize(("example", "problem"), [
    ("trustboot sign --key k --hash-algo sha384 f", "has no --hash-algo"),
    ("trustboot ca list [--all|--jsn]", "has no --jsn"),
    ("trustboot publish out/ file:///srv --release-idd 1", "has no --release-idd"),
    ("trustboot ca rotate root promot --confirm-fleet", "no command 'promot'"),
    ("in prose: `trustboot release --pkcs11-modul` names it", "has no --pkcs11-modul"),
])
def test_a_renamed_option_or_command_fails(example: str, problem: str) -> None:
    text = (example if example.startswith("in prose") else
            f"x\n\n```sh\n{example}   # a comment --not-an-option\n```\n")
    try:
        found = "\n".join(stale_options(text))
    except AssertionError as exc:
        found = str(exc)
    assert problem in found


def test_a_renamed_variable_fails() -> None:
    assert stale_variables("set `TRUSTBOOT_SIGNING_KEYS` in CI") == [
        "TRUSTBOOT_SIGNING_KEYS: no option reads it"]
    assert stale_variables("`TRUSTBOOT_PIN_ENV`/`_FILE`") == []
