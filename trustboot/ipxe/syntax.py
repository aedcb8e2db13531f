"""iPXE's command-line syntax, and the one rule for values that go into a script line.

iPXE reads a script a line at a time (a trailing backslash joins the next line), splits
each line on whitespace (C ``isspace``) with no quoting at all, ends a command at a token
that is exactly ``&&``, ``||`` or ``;``, treats a token starting with ``#`` as the start of
a comment, and expands ``${name}`` inside every token (from settings a DHCP server may
control). A value that reaches a script line therefore must not hold any of those: it
could chain a second command (``quiet && boot``), cut the line short, or pull in text
chosen by whoever answers DHCP. Every generator in trustboot checks values with
:func:`check_word` / :func:`check_words` and nothing else, so the rule lives in one place.
"""

from __future__ import annotations

from trustboot.errors import ConfigError

TERMINATORS = ("&&", "||", ";")
# C isspace() in iPXE: space, \t, \n, \v, \f, \r.
WHITESPACE = " \t\n\v\f\r"
MAX_VALUE = 4096


def split_tokens(line: str) -> list[str]:
    """Tokens of one (already joined) script line, exactly as iPXE's split_command."""
    out: list[str] = []
    word: list[str] = []
    for ch in line:
        if ch in WHITESPACE:
            if word:
                out.append("".join(word))
                word = []
        else:
            word.append(ch)
    if word:
        out.append("".join(word))
    return out


def split_commands(tokens: list[str]) -> list[tuple[list[str], str | None]]:
    """Split tokens into commands, each with the terminator that follows it (None at the end
    of the line). A ``#`` token ends the line, as in iPXE's command_terminator()."""
    commands: list[tuple[list[str], str | None]] = []
    current: list[str] = []
    for tok in tokens:
        if tok.startswith("#"):
            break
        if tok in TERMINATORS:
            commands.append((current, tok))
            current = []
        else:
            current.append(tok)
    commands.append((current, None))
    return commands


def join_lines(text: str) -> list[tuple[int, str]]:
    """Script lines as iPXE reads them: (first line number, text) with backslash
    continuations joined."""
    out: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        out.append((start, pending + line))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def word_problem(value: str) -> str | None:
    """Why ``value`` cannot be one token of an iPXE command line, or None if it can."""
    if not value:
        return "it is empty"
    if len(value) > MAX_VALUE:
        return f"it is longer than {MAX_VALUE} characters"
    for ch in value:
        if ch in WHITESPACE:
            return "it holds whitespace (iPXE splits words on it and has no quoting)"
        if not 0x21 <= ord(ch) <= 0x7E:
            return f"it holds the character {ch!r} (only printable ASCII is allowed)"
    if value in TERMINATORS:
        return f"{value!r} ends an iPXE command and starts the next one"
    if value.startswith("#"):
        return "a word starting with '#' starts a comment in iPXE"
    if "${" in value:
        return "'${' expands an iPXE setting (DHCP can set those)"
    if value.endswith("\\"):
        return "a trailing backslash joins the next script line"
    return None


def words_problem(value: str) -> str | None:
    """Why ``value`` cannot be a run of words separated by single spaces (a kernel command
    line, a ``set`` value, an ``echo`` text), or None if it can."""
    if len(value) > MAX_VALUE:
        return f"it is longer than {MAX_VALUE} characters"
    for ch in value:
        if ch != " " and ch in WHITESPACE:
            return f"it holds {ch!r} (a new line or control character)"
    for word in value.split(" "):
        if not word:
            continue
        problem = word_problem(word)
        if problem:
            return f"word {word!r}: {problem}"
    return None


_HINT = ("iPXE has no quoting: a value may not hold '&&', '||' or ';' as a word, '${', a "
         "word starting with '#', control characters or non-ASCII text; percent-encode URLs")


def check_word(value: str, what: str) -> str:
    """``value`` as one token of a script line, or a ConfigError naming ``what``."""
    problem = word_problem(value)
    if problem:
        raise ConfigError(f"{what} {value!r} cannot go into an iPXE script: {problem}",
                          hint=_HINT)
    return value


def check_words(value: str, what: str, *, allow_empty: bool = True) -> str:
    """``value`` as space-separated words of a script line, or a ConfigError."""
    problem = words_problem(value)
    if problem is None and not allow_empty and not value.strip():
        problem = "it is empty"
    if problem:
        raise ConfigError(f"{what} {value!r} cannot go into an iPXE script: {problem}",
                          hint=_HINT)
    return value
