"""The one rule for values in iPXE script lines, checked against a model of iPXE's parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trustboot.errors import ConfigError
from trustboot.ipxe import syntax


@pytest.mark.parametrize("value", [
    "quiet && boot", "a || b", "x ; shell", "${filename}", "#comment", "tail\\",
    "new\nline", "tab\there", "caf\u00e9", "\u202eevil", "",
])
def test_hostile_word_refused(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        syntax.check_word(value, "signer")
    assert "signer" in err.value.message


@pytest.mark.parametrize("value", [
    "quiet && boot", "a || b", "x ; shell", "root=${root}", "a #b", "ends\\",
    "a\nb", "a\rb", "a\tb",
])
def test_hostile_cmdline_refused(value: str) -> None:
    with pytest.raises(ConfigError):
        syntax.check_words(value, "cmdline")


@pytest.mark.parametrize("value", [
    "console=ttyS0 quiet", "root=/dev/sda1 ro", "a;b", "x&&y", "", "ip=dhcp $HOME",
])
def test_ordinary_cmdline_accepted(value: str) -> None:
    assert syntax.check_words(value, "cmdline") == value


def test_split_like_ipxe() -> None:
    toks = syntax.split_tokens("kernel  vmlinuz\tquiet && boot # x ; y")
    assert toks == ["kernel", "vmlinuz", "quiet", "&&", "boot", "#", "x", ";", "y"]
    cmds = syntax.split_commands(toks)
    assert cmds == [(["kernel", "vmlinuz", "quiet"], "&&"), (["boot"], None)]


def test_backslash_joins_lines() -> None:
    assert syntax.join_lines("#!ipxe\nkernel a \\\nboot\necho") == [
        (1, "#!ipxe"), (2, "kernel a boot"), (4, "echo")]


_ALPHABET = st.sampled_from([*"ab=/.-_ ;&|#${}\\\t\n", "&&", "||", "${x}"])


@given(st.lists(_ALPHABET, max_size=12).map("".join))
def test_accepted_cmdline_is_one_command(value: str) -> None:
    """Whatever the rule accepts stays inside the one command it was put in, with no
    expansion and no comment: the parsed line gives back exactly the value's words."""
    try:
        syntax.check_words(value, "cmdline")
    except ConfigError:
        return
    line = f"kernel vmlinuz {value}"
    (only,) = syntax.join_lines(line)
    cmds = syntax.split_commands(syntax.split_tokens(only[1]))
    assert len(cmds) == 1 and cmds[0][1] is None
    assert cmds[0][0] == ["kernel", "vmlinuz", *value.split()]
    assert not any("${" in t for t in cmds[0][0])


@pytest.mark.parametrize("value", ["two words", "tab\there", "new\nline"])
def test_whitespace_is_named_as_the_reason(value: str) -> None:
    """A space or line break in a word is refused for what it does in iPXE (splits the
    word: there is no quoting), not as a mere non-printable character."""
    problem = syntax.word_problem(value)
    assert problem is not None and "whitespace" in problem and "quoting" in problem


def _read_lines_reference(text: str) -> tuple[list[tuple[int, str]], int | None]:
    """read_lines as first written (quadratic: it copied the line at every continuation),
    kept as the model the linear one must agree with."""
    out: list[tuple[int, str]] = []
    pieces = text.split("\n")
    if len(pieces) > 1 and pieces[-1] == "":
        pieces.pop()
    line = ""
    start: int | None = None
    for number, piece in enumerate(pieces, start=1):
        start = start or number
        line += piece
        if line.endswith("\r"):
            line = line[:-1]
        if line.endswith("\\"):
            line = line[:-1]
            if number == len(pieces):
                return out, start
            continue
        out.append((start, line.split("\0", 1)[0]))
        line, start = "", None
    return out, None


@given(st.lists(st.sampled_from(["a", "b ", "\\", "\r", "\n", "\0", "\\\n", "\r\n", "#"]),
                max_size=40).map("".join))
def test_read_lines_agrees_with_the_reference(text: str) -> None:
    assert syntax.read_lines(text) == _read_lines_reference(text)


def test_read_lines_agrees_with_the_reference_on_random_scripts() -> None:
    import random
    rng = random.Random(1234)
    alphabet = "ab \\\r\n\0"
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(60)))
        assert syntax.read_lines(text) == _read_lines_reference(text), repr(text)


@pytest.mark.parametrize("script", [
    "a\\\n" * 250_000 + "end\n",  # a line of a quarter million continuations
    "x" + "\\" * 500_000 + "\n" * 500_000 + "end\n",  # backslashes eaten one per empty line
], ids=["continuations", "backslash-run"])
def test_read_lines_is_linear_in_the_script(script: str) -> None:
    """A hostile boot script (the audit parses what it fetches) must not cost time
    quadratic in its size: the line was copied at every continuation (1 MB: 4 s, 3 MB: 32 s)."""
    import time
    began = time.process_time()
    lines, left_open = syntax.read_lines(script)
    assert time.process_time() - began < 1.0
    assert left_open is None and len(lines) == 1 and lines[0][1].endswith("end")


@pytest.mark.parametrize(("head", "runs"), [
    (b"#!ipxe\n", True), (b"#!gpxe\n", True), (b"#!gpxe ", True), (b"#!ipxe\r\n", True),
    (b"#!ipxe\t", True), (b"#!gpxe\v", True), (b"#!gpxe\f", True),
    # iPXE's script_probe(): memcmp (case-sensitive, from the first byte), then isspace()
    (b"#!gpxeX\n", False), (b"#!GPXE\n", False), (b"#!iPXE\n", False),
    (b"\xef\xbb\xbf#!ipxe\n", False), (b" #!ipxe\n", False), (b"#!ipxe", False),
    (b"#!gpxe\0", False), (b"#!ipxe\xa0", False), (b"", False),
])
def test_runs_as_script_as_ipxe_probes_it(head: bytes, runs: bool) -> None:
    assert syntax.runs_as_script(head) is runs
    assert syntax.runs_as_script(head + b"echo x\n") is runs
    # the lint and the embed checks read text: the same answer
    assert syntax.runs_as_script(head.decode("utf-8", "surrogateescape")) is runs
