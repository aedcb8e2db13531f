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

from dataclasses import dataclass

from trustboot.errors import ConfigError

TERMINATORS = ("&&", "||", ";")
# C isspace() in iPXE: space, \t, \n, \v, \f, \r.
WHITESPACE = " \t\n\v\f\r"
MAX_VALUE = 4096
# What iPXE's script_probe() (src/image/script.c) takes for a script: one of these magics
# (memcmp: case-sensitive, at the very first byte, so no BOM or blank before it) followed
# by an isspace() byte. gPXE's magic still runs.
SCRIPT_MAGICS = (b"#!ipxe", b"#!gpxe")
_SPACE_BYTES = WHITESPACE.encode()


def runs_as_script(head: bytes | str) -> bool:
    """Whether iPXE runs an image starting with ``head`` as a script (its first 7 bytes
    decide). The one test for it: the audit, publish and the lint all ask here. Text is
    taken as its UTF-8 bytes (a character beyond ASCII never matches)."""
    if isinstance(head, str):
        head = head[:7].encode("utf-8", "surrogateescape")
    return head[:6] in SCRIPT_MAGICS and head[6:7] != b"" and head[6] in _SPACE_BYTES


def expands_setting(token: str) -> bool:
    """Whether iPXE's expand_settings() changes ``token``: a '${' with a '}' somewhere
    after it (an unclosed '${' stays as it is)."""
    start = token.find("${")
    return start >= 0 and "}" in token[start + 2:]


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


def read_lines(text: str) -> tuple[list[tuple[int, str]], int | None]:
    """Script lines exactly as iPXE's process_script() reads them: (first line number,
    text) with backslash continuations joined, and the number of a last line left open by
    a continuation (None when there is none).

    iPXE strips a trailing CR and a trailing backslash from the line read so far, not only
    from the newest piece, so a backslash left at the end after a continuation and an empty
    line continues again; a NUL ends the line (it is a C string from there on); no line
    follows a final new line; and a continuation at the very end of the script is never
    run: the script stops there and fails (-EINVAL).
    """
    out: list[tuple[int, str]] = []
    pieces = text.split("\n")
    if len(pieces) > 1 and pieces[-1] == "":
        pieces.pop()  # the loop ends when the data does: no empty line after the last "\n"
    # The line read so far, as its non-empty pieces and how much of each is kept: trimming
    # its last character never copies it (a hostile script of a million continuations, or a
    # run of backslashes eaten one per empty line, must cost time linear in its size).
    parts: list[str] = []
    ends: list[int] = []
    start: int | None = None
    for number, piece in enumerate(pieces, start=1):
        start = start or number
        if piece:
            parts.append(piece)
            ends.append(len(piece))
        if parts and parts[-1][ends[-1] - 1] == "\r":
            _trim(parts, ends)
        if parts and parts[-1][ends[-1] - 1] == "\\":
            _trim(parts, ends)
            if number == len(pieces):
                return out, start
            continue
        line = "".join(part[:end] for part, end in zip(parts, ends, strict=True))
        out.append((start, line.split("\0", 1)[0]))
        parts, ends, start = [], [], None
    return out, None


def _trim(parts: list[str], ends: list[int]) -> None:
    """Drop the last character of the line held as ``parts`` (see read_lines)."""
    ends[-1] -= 1
    if not ends[-1]:
        parts.pop()
        ends.pop()


def join_lines(text: str) -> list[tuple[int, str]]:
    """The lines iPXE runs (see :func:`read_lines`)."""
    return read_lines(text)[0]


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


# --- options, as iPXE's parse_options()/getopt_long() read them -----------------------------
#
# iPXE's getopt (src/core/getopt.c) does not permute: options end at the first word that does
# not start with '-' (or at "--"), so `imgverify img sig --signer x` has four arguments and
# prints the usage text. A required option value is the rest of the word (-sNAME, --signer=N)
# or the next word unless that starts with '-'. Every command also takes -h/--help, which
# prints the usage and fails. Then the argument count must be within the command's range.

MAX_ARGUMENTS = 0xFF  # include/ipxe/parseopt.h


@dataclass(frozen=True)
class Option:
    long: str
    short: str
    takes_value: bool = False


@dataclass(frozen=True)
class CommandSpec:
    options: tuple[Option, ...] = ()
    min_args: int = 0
    max_args: int = MAX_ARGUMENTS


def _o(long: str, short: str, value: bool = False) -> Option:
    return Option(long, short, value)


_IMG = (_o("name", "n", True), _o("timeout", "t", True), _o("quiet", "q"), _o("autofree", "a"))
_IMGEXEC = (*_IMG, _o("replace", "r"))
_SAN = (_o("drive", "d", True), _o("no-describe", "n"), _o("keep", "k"),
        _o("filename", "f", True), _o("extra", "e", True), _o("label", "l", True),
        _o("uuid", "u", True))
_IFCONF = (_o("configurator", "c", True), _o("timeout", "t", True))
_DIGEST = CommandSpec((_o("set", "s", True),), min_args=1)
_FETCH = (_o("timeout", "t", True), _o("quiet", "q"))

# Every command of iPXE's source (each COMMAND() under src/: core/exec.c, image/script.c,
# hci/shell.c, hci/commands/*.c, arch/x86/hci/commands/*.c, crypto/mishmash/cmd_*.c) with
# the option table and argument range its exec function parses with; tests/ipxe/
# test_lint_real.py checks this against a tree, both ways. Which of them a build has is up
# to its config (config/general.h, the platform: startpxe/stoppxe and cpuid are x86 only,
# shim does something only on EFI, fdt where the platform has device trees); the table does
# not model builds: a command a build lacks fails ("not found") like any command can.
COMMANDS: dict[str, CommandSpec] = {
    "echo": CommandSpec((_o("n", "n"),)),
    "exit": CommandSpec(max_args=1),
    "isset": CommandSpec(min_args=1, max_args=1),
    "iseq": CommandSpec(min_args=2, max_args=2),
    "sleep": CommandSpec(min_args=1, max_args=1),
    "goto": CommandSpec(min_args=1, max_args=1),
    "prompt": CommandSpec((_o("key", "k", True), _o("timeout", "t", True))),
    "shell": CommandSpec(max_args=0),
    "help": CommandSpec(max_args=MAX_ARGUMENTS),  # takes no options table at all
    "imgfetch": CommandSpec(_IMG, min_args=1),
    "module": CommandSpec(_IMG, min_args=1),
    "initrd": CommandSpec(_IMG, min_args=1),
    "imgselect": CommandSpec(_IMG, min_args=1),
    "imgload": CommandSpec(_IMG, min_args=1),
    "kernel": CommandSpec(_IMG, min_args=1),
    "imgexec": CommandSpec(_IMGEXEC),
    "chain": CommandSpec(_IMGEXEC),
    "boot": CommandSpec(_IMGEXEC),
    "imgargs": CommandSpec(_IMG, min_args=1),
    "imgstat": CommandSpec(),
    "imgfree": CommandSpec(),
    "imgtrust": CommandSpec((_o("allow", "a"), _o("permanent", "p")), max_args=0),
    "imgverify": CommandSpec((_o("signer", "s", True), _o("keep", "k"),
                              _o("timeout", "t", True), _o("quiet", "q")),
                             min_args=2, max_args=2),
    "imgextract": CommandSpec((_o("name", "n", True), _o("keep", "k"), _o("timeout", "t", True),
                               _o("quiet", "q")), min_args=1, max_args=1),
    "imgdecrypt": CommandSpec((_o("name", "n", True), _o("keep", "k"), _o("timeout", "t", True),
                               _o("quiet", "q")), min_args=2, max_args=2),
    "dhcp": CommandSpec(_IFCONF),
    "ifconf": CommandSpec(_IFCONF),
    "ifopen": CommandSpec(),
    "ifclose": CommandSpec(),
    "ifstat": CommandSpec(),
    "iflinkwait": CommandSpec((_o("timeout", "t", True),)),
    "autoboot": CommandSpec(),
    "pxebs": CommandSpec(min_args=2, max_args=2),
    "ntp": CommandSpec(min_args=1, max_args=1),
    "show": CommandSpec((_o("quiet", "q"),), min_args=1, max_args=1),
    "set": CommandSpec(min_args=1),
    "clear": CommandSpec(min_args=1, max_args=1),
    "read": CommandSpec((_o("timeout", "t", True),), min_args=1, max_args=1),
    "inc": CommandSpec(min_args=1, max_args=2),
    "config": CommandSpec(max_args=1),
    "reboot": CommandSpec((_o("warm", "w"), _o("setup", "s")), max_args=0),
    "poweroff": CommandSpec(max_args=0),
    "sanhook": CommandSpec(_SAN[:2], min_args=1),
    "sanboot": CommandSpec(_SAN),
    "sanunhook": CommandSpec(_SAN[:1], max_args=0),
    "certstat": CommandSpec((_o("subject", "s", True),), max_args=0),
    "certstore": CommandSpec((_o("subject", "s", True), _o("keep", "k")), max_args=1),
    "certfree": CommandSpec((_o("subject", "s", True),), max_args=0),
    "menu": CommandSpec((_o("name", "n", True), _o("delete", "d"))),
    "form": CommandSpec((_o("name", "n", True), _o("delete", "d"))),
    "item": CommandSpec((_o("menu", "m", True), _o("form", "f", True), _o("key", "k", True),
                         _o("default", "d"), _o("secret", "s"), _o("gap", "g"))),
    "choose": CommandSpec((_o("menu", "m", True), _o("default", "d", True),
                           _o("timeout", "t", True), _o("retimeout", "r", True),
                           _o("keep", "k")), min_args=1, max_args=1),
    "present": CommandSpec((_o("form", "f", True), _o("keep", "k")), max_args=0),
    "params": CommandSpec((_o("name", "n", True), _o("method", "m", True), _o("delete", "d")),
                          max_args=0),
    "param": CommandSpec((_o("params", "p", True), _o("header", "H")), min_args=1),
    "md5sum": _DIGEST,
    "sha1sum": _DIGEST,
    # crypto/mishmash/cmd_*.c: digest_exec(), as md5sum
    "md4sum": _DIGEST,
    "sha224sum": _DIGEST,
    "sha256sum": _DIGEST,
    "sha384sum": _DIGEST,
    "sha512sum": _DIGEST,
    "nslookup": CommandSpec(min_args=2, max_args=2),
    "ping": CommandSpec((_o("size", "s", True), _o("timeout", "t", True),
                         _o("count", "c", True), _o("quiet", "q")), min_args=1, max_args=1),
    "route": CommandSpec(max_args=0),
    "ipstat": CommandSpec(max_args=0),
    "nstat": CommandSpec(max_args=0),
    "vcreate": CommandSpec((_o("tag", "t", True), _o("priority", "p", True)),
                           min_args=1, max_args=1),
    "vdestroy": CommandSpec(min_args=1, max_args=1),
    "time": CommandSpec(min_args=1),
    "sync": CommandSpec((_o("timeout", "t", True),), max_args=0),
    "login": CommandSpec(max_args=0),
    "cpuid": CommandSpec((_o("ext", "e"), _o("amd", "a"), _o("ecx", "c")),
                         min_args=1, max_args=1),
    "imgmem": CommandSpec((_o("name", "n", True),), min_args=2, max_args=2),
    "imgset": CommandSpec((_o("keep", "k"), *_FETCH), min_args=2, max_args=2),
    "fdt": CommandSpec(_FETCH, max_args=1),
    "console": CommandSpec((_o("x", "x", True), _o("y", "y", True), _o("left", "l", True),
                            _o("right", "r", True), _o("top", "t", True),
                            _o("bottom", "b", True), _o("depth", "d", True),
                            _o("picture", "p", True), _o("keep", "k")), max_args=0),
    "colour": CommandSpec((_o("basic", "b", True), _o("rgb", "r", True)),
                          min_args=1, max_args=1),
    "cpair": CommandSpec((_o("foreground", "f", True), _o("background", "b", True)),
                         min_args=1, max_args=1),
    "pciscan": CommandSpec(min_args=1, max_args=1),
    "usbscan": CommandSpec(min_args=1, max_args=1),
    "iwstat": CommandSpec(),
    "iwlist": CommandSpec(),
    "ibstat": CommandSpec(max_args=0),
    "fcstat": CommandSpec(max_args=0),
    "fcels": CommandSpec((_o("port", "p", True), _o("id", "i", True)), min_args=1, max_args=1),
    "lotest": CommandSpec((_o("mtu", "m", True), _o("broadcast", "b")), min_args=2, max_args=2),
    "profstat": CommandSpec(max_args=0),
    "gdbstub": CommandSpec(min_args=1),
    "startpxe": CommandSpec(),
    "stoppxe": CommandSpec(max_args=0),
    "shim": CommandSpec((_o("timeout", "t", True), _o("quiet", "q"), _o("require-loader", "l"),
                         _o("allow-pxe", "p"), _o("allow-sbat", "s")), max_args=1),
}

# the digest commands (md5sum, sha256sum ...: digest_exec(), one option table)
DIGEST_COMMANDS = frozenset(name for name, spec in COMMANDS.items() if spec is _DIGEST)


@dataclass(frozen=True)
class ParsedCommand:
    """One command as iPXE's option parser reads it."""

    name: str
    options: dict[str, str | None]  # long name -> value (None for a flag)
    args: tuple[str, ...]
    problem: str | None = None  # why iPXE prints the usage text and fails

    def has(self, long: str) -> bool:
        return long in self.options


def parse_command(words: list[str] | tuple[str, ...]) -> ParsedCommand:
    """Parse ``words`` (command first) the way iPXE's reparse_options() does.

    Unknown commands get ``problem`` set ("command not found" fails at boot too), and so
    does a name iPXE computes at run time (``${c} ...``), which is not known here."""
    name = words[0]
    spec = COMMANDS.get(name)
    if spec is None:
        why = (f"the command name '{name}' is computed at run time (iPXE expands it before "
               "it looks the command up)" if expands_setting(name)
               else f"'{name}': command not found")
        return ParsedCommand(name, {}, tuple(words[1:]), why)
    if name == "help":
        return ParsedCommand(name, {}, tuple(words[1:]))
    table = (*spec.options, Option("help", "h"))
    options: dict[str, str | None] = {}

    def fail(why: str) -> ParsedCommand:
        return ParsedCommand(name, options, tuple(words[1:]), why)

    i, n = 1, len(words)
    while i < n:
        word = words[i]
        if not word.startswith("-"):
            break
        if word.startswith("--"):
            text = word[2:]
            i += 1
            if not text:
                break  # "--" ends the options
            for opt in table:
                if not text.startswith(opt.long):
                    continue
                rest = text[len(opt.long):]
                if rest and not rest.startswith("="):
                    continue  # trailing garbage: not this option
                value = rest[1:] if rest else None
                if opt.takes_value and value is None:
                    if i < n and not words[i].startswith("-"):
                        value = words[i]
                        i += 1
                    else:
                        return fail(f'option "{opt.long}" requires an argument')
                if not opt.takes_value and value is not None:
                    return fail(f'option "{opt.long}" takes no argument')
                if opt.long == "help":
                    return fail("--help prints the usage text and fails")
                options[opt.long] = value
                break
            else:
                return fail(f'unrecognised option "--{text}"')
            continue
        pos = 1
        while True:
            ch = word[pos] if pos < len(word) else ""
            match = next((o for o in table if o.short == ch), None) if ch else None
            if match is None:
                return fail(f'unrecognised option "-{ch}"')
            if match.short == "h":
                return fail("-h prints the usage text and fails")
            pos += 1
            if pos < len(word):
                if match.takes_value:
                    options[match.long] = word[pos:]
                    i += 1
                    break
                options[match.long] = None
                continue
            i += 1
            if match.takes_value:
                if i < n and not words[i].startswith("-"):
                    options[match.long] = words[i]
                    i += 1
                else:
                    return fail(f'option "{match.short}" requires an argument')
            else:
                options[match.long] = None
            break
    args = tuple(words[i:])
    if not spec.min_args <= len(args) <= spec.max_args:
        if spec.max_args == spec.min_args:
            want = f"exactly {spec.min_args}"
        elif spec.max_args == MAX_ARGUMENTS:
            want = f"at least {spec.min_args}"
        else:
            want = f"{spec.min_args} to {spec.max_args}"
        why = f"'{name}' takes {want} argument(s) after its options, got {len(args)}"
        if any(a.startswith("-") for a in args):
            why += " (iPXE reads options only before the first argument)"
        return ParsedCommand(name, options, args, why)
    return ParsedCommand(name, options, args)
