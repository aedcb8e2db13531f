"""The lint's facts about iPXE, checked against a real iPXE tree ($TRUSTBOOT_IPXE_SRC).

1. trustboot.ipxe.syntax.COMMANDS holds exactly the commands the tree defines, with the
   OPTION_DESC/COMMAND_DESC tables of their source (no QEMU needed).
2. Under QEMU, iPXE behaves as the lint's model says: options after arguments print the
   usage and fail, quotes do not protect '&&', a label line runs its command, ';' carries on
   after a failed imgverify, and an uncaught failure ends the script.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.ipxe.testpki import TestPki, cached_pki
from tests.ipxe_qemu import DONE_MARKER, boot, build_test_ipxe, cache_root, ipxe_src_or_skip
from trustboot.ipxe.lint import lint_script, parse_script
from trustboot.ipxe.source import ENV_SOURCE
from trustboot.ipxe.syntax import COMMANDS, MAX_ARGUMENTS, CommandSpec

_OPT = re.compile(r'OPTION_DESC\s*\(\s*"([^"]+)"\s*,\s*\'(.)\'\s*,\s*(\w+)')
_DESC = re.compile(r"struct \w+ (\w+_cmd)\s*=\s*\w*COMMAND_DESC\s*\(\s*struct \w+\s*,"
                   r"\s*([\w.]+)\s*,\s*(\w+)\s*,\s*(\w+)")
_FUNC = re.compile(r"^(?:static\s+)?int\s+(\w+)\s*\(([^;{]*?)\)\s*\{(.*?)^\}", re.M | re.S)
_VAR = re.compile(r"(\w+)\s*=\s*\{(.*?)^\};", re.M | re.S)
_COMMAND = re.compile(r"^COMMAND\s*\(\s*(\w+)\s*,\s*(\w+)\s*\)", re.M)

Table = tuple[list[tuple[str, str, bool]], int, int]


def _walk_commands(src: Path) -> dict[str, Table | None]:
    """Every command the tree defines (``COMMAND(name, exec)`` anywhere under src/) ->
    (options, min_args, max_args) of the descriptor its exec function parses with, found
    through the functions and descriptor structures it passes it on with (imgsingle_exec,
    ifcommon_exec, digest_exec, ...); None for a command that parses no options (help)."""
    descriptors: dict[str, Table] = {}
    functions: dict[str, str] = {}
    variables: dict[str, str] = {}
    commands: dict[str, str] = {}
    for path in sorted(src.rglob("*.c")):
        raw = path.read_text(errors="replace")
        if "COMMAND" not in raw:
            continue
        text = re.sub(r"/\*.*?\*/", "", raw, flags=re.S)
        arrays: dict[str, list[tuple[str, str, bool]]] = {}
        for m in re.finditer(r"struct option_descriptor (\w+)\[\]\s*=\s*\{(.*?)\};", text,
                             re.S):
            arrays[m.group(1)] = [(a, b, c == "required_argument")
                                  for a, b, c in _OPT.findall(m.group(2))]
        for m in re.finditer(r"union\s*\{(.*?)\}\s*(\w+)\s*=\s*\{(.*?)\n\};", text, re.S):
            full = [(a, b, c == "required_argument") for a, b, c in _OPT.findall(m.group(3))]
            for member, size in re.findall(r"struct option_descriptor (\w+)\[(\d+)\]",
                                           m.group(1)):
                arrays[f"{m.group(2)}.{member}"] = full[:int(size)]
        for name, opts, lo, hi in _DESC.findall(text):
            top = MAX_ARGUMENTS if hi == "MAX_ARGUMENTS" else int(hi)
            descriptors[name] = (arrays[opts], int(lo), top)
        functions.update((m.group(1), m.group(3)) for m in _FUNC.finditer(text))
        variables.update(_VAR.findall(text))
        commands.update(_COMMAND.findall(text))

    def resolve(function: str, seen: frozenset[str]) -> Table | None:
        body = functions[function]
        for ref in re.findall(r"&\s*(\w+)", body):
            if ref in descriptors:
                return descriptors[ref]
            inner = re.findall(r"&\s*(\w+)", variables.get(ref, ""))
            if found := [descriptors[r] for r in inner if r in descriptors]:
                return found[0]
        for call in re.findall(r"(\w+)\s*\(", body):
            if call in functions and call not in seen:
                table = resolve(call, seen | {call})
                if table is not None:
                    return table
        return None

    return {name: resolve(fn, frozenset({fn})) for name, fn in commands.items()}


def test_command_table_matches_the_source() -> None:
    """Every command iPXE defines is in COMMANDS with iPXE's options (long and short names,
    whether each takes a value) and argument range, and COMMANDS holds nothing else: a
    command the table lacks is a lint error on a valid script."""
    import os

    if not os.environ.get(ENV_SOURCE):
        pytest.skip(f"needs an iPXE source tree: set {ENV_SOURCE}")
    root = Path(os.environ[ENV_SOURCE])
    src = root / "src" if (root / "src").is_dir() else root
    tree = _walk_commands(src)
    assert len(tree) > 80 and "imgverify" in tree  # the walk found the commands at all
    mismatches = [f"{name}: in iPXE, not in COMMANDS" for name in sorted(tree - COMMANDS.keys())]
    mismatches += [f"{name}: in COMMANDS, not in iPXE" for name in sorted(COMMANDS.keys() - tree)]
    for name in sorted(tree.keys() & COMMANDS.keys()):
        spec, table = COMMANDS[name], tree[name]
        if table is None:
            # help_exec reads no argv: any words, no options (not even --help)
            assert name == "help" and spec == CommandSpec(max_args=MAX_ARGUMENTS), name
            continue
        options, lo, hi = table
        ours = [(o.long, o.short, o.takes_value) for o in spec.options]
        if (ours, spec.min_args, spec.max_args) != (options, lo, hi):
            mismatches.append(f"{name}: ours {ours} {spec.min_args}-{spec.max_args}, "
                              f"iPXE {options} {lo}-{hi}")
    assert not mismatches, "\n".join(mismatches)


# --- behaviour under QEMU ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> TestPki:
    ipxe_src_or_skip()
    return cached_pki(cache_root() / "pki", "main")


@pytest.mark.ipxe
@pytest.mark.slow
def test_ipxe_runs_scripts_the_way_the_lint_models_them(pki: TestPki) -> None:
    lkrn = build_test_ipxe([pki.root], certs=[pki.issuing])
    data = b"kernel stand-in\n" * 64
    files = {"k": data, "k.sig": pki.sign_bytes(data, "lintreal"), "bad": data + b"x"}
    files["inner.ipxe"] = (b"#!ipxe\nimgfetch tftp://10.0.2.2/bad\n"
                           b"imgverify bad tftp://10.0.2.2/k.sig\necho AFTER-UNCAUGHT-FAILURE\n")
    script = "\n".join([
        "#!ipxe",
        # before imgtrust: the inner script is unsigned on purpose
        "chain tftp://10.0.2.2/inner.ipxe || echo INNER-FAILED",
        "imgtrust --permanent",
        "imgfetch tftp://10.0.2.2/k && imgfetch tftp://10.0.2.2/bad",
        # options after the arguments: usage text, and the command fails
        "imgverify k tftp://10.0.2.2/k.sig --signer boot-signer && echo VERDICT optsafter ok "
        "|| echo VERDICT optsafter fail",
        "imgverify --signer boot-signer k tftp://10.0.2.2/k.sig && echo VERDICT optsfirst ok "
        "|| echo VERDICT optsfirst fail",
        # no quoting: the '&&' inside the quotes runs a second command
        'echo "x && echo INJECTED-RAN"',
        # a label line runs the rest of its line
        ":lab echo LABEL-LINE-RAN",
        # ';' runs the next command whatever imgverify said, and the line succeeds
        "imgverify bad tftp://10.0.2.2/k.sig ; echo SEMICOLON-CONTINUED",
        # goto skips the rest of its own line
        "goto skip ; echo AFTER-GOTO-SAME-LINE",
        "echo SKIPPED-LINE",
        ":skip",
        f"echo {DONE_MARKER}",
        "",
    ])
    console = boot(lkrn, files, script)
    assert DONE_MARKER in console, console
    assert "VERDICT optsafter fail" in console and "Usage:" in console, console
    assert "VERDICT optsfirst ok" in console, console
    assert "INJECTED-RAN" in console
    assert "LABEL-LINE-RAN" in console
    assert "SEMICOLON-CONTINUED" in console and "Could not verify" in console
    assert "AFTER-GOTO-SAME-LINE" not in console and "SKIPPED-LINE" not in console

    # What the lint says about the same constructs.
    found = {(f.line, f.rule) for f in lint_script(script, stage="chained")}
    assert (5, "usage") in found and (9, "soft-verify") in found

    # An uncaught failure ends a script: nothing after it runs, and its caller sees failure.
    assert "AFTER-UNCAUGHT-FAILURE" not in console and "INNER-FAILED" in console, console


@pytest.mark.ipxe
@pytest.mark.slow
def test_ipxe_reads_lines_the_way_the_lint_models_them(pki: TestPki) -> None:
    """Line reading, where a script's text and what iPXE runs differ: a continuation left
    open at the end of the script is never run and the script fails; a backslash left at
    the end after a continuation and an empty line continues again (the label below it is
    swallowed); a NUL ends the line (the '|| ...' after it is not seen)."""
    lkrn = build_test_ipxe([pki.root], certs=[pki.issuing])
    scripts = {
        "dangling.ipxe": b"#!ipxe\necho DANGLING-START\necho DANGLING-LAST-RAN \\\n",
        "double.ipxe": (b"#!ipxe\ngoto target || echo VERDICT double nolabel\n"
                        b"echo DOUBLE-JOINED \\\\\n\n:target echo DOUBLE-LABEL-RAN\n"),
        "nul.ipxe": (b"#!ipxe\nimgverify nosuch tftp://10.0.2.2/nosuch.sig\x00 || echo "
                     b"NUL-CAUGHT\necho NUL-AFTER\n"),
    }
    script = "\n".join([
        "#!ipxe",
        *(f"chain tftp://10.0.2.2/{name} || echo VERDICT {name} failed" for name in scripts),
        f"echo {DONE_MARKER}",
        "",
    ])
    console = boot(lkrn, dict(scripts), script)
    assert DONE_MARKER in console, console
    assert "DANGLING-START" in console and "DANGLING-LAST-RAN" not in console, console
    assert "VERDICT dangling.ipxe failed" in console, console
    assert "VERDICT double nolabel" in console, console
    assert "DOUBLE-JOINED :target echo DOUBLE-LABEL-RAN" in console, console
    assert "NUL-CAUGHT" not in console and "NUL-AFTER" not in console, console
    assert "VERDICT nul.ipxe failed" in console, console

    # The lint reads the same lines.
    texts = {name: data.decode() for name, data in scripts.items()}
    assert {f.rule for f in lint_script(texts["dangling.ipxe"], stage="chained")} >= {
        "dangling-continuation"}
    assert "missing-label" in {f.rule for f in lint_script(texts["double.ipxe"],
                                                           stage="chained")}
    (verify,) = parse_script(texts["nul.ipxe"])[1].commands
    assert verify.words == ("imgverify", "nosuch", "tftp://10.0.2.2/nosuch.sig")


@pytest.mark.ipxe
@pytest.mark.slow
def test_ipxe_never_returns_to_a_script_after_chain_replace(pki: TestPki) -> None:
    """`chain --replace` stops the script and runs the image in its place: when that image
    fails, iPXE returns to the script's caller, not to the '|| goto' after the command (so
    in an embedded script, to the firmware's boot manager)."""
    lkrn = build_test_ipxe([pki.root], certs=[pki.issuing])
    files = {
        "mid.ipxe": (b"#!ipxe\nchain --replace tftp://10.0.2.2/inner.ipxe || goto fail\n"
                     b"echo AFTER-REPLACE\n:fail\necho FAIL-BLOCK-RAN\n"),
        "inner.ipxe": b"#!ipxe\necho INNER-RAN\nexit 1\n",
    }
    script = "\n".join([
        "#!ipxe",
        "chain tftp://10.0.2.2/mid.ipxe || echo VERDICT mid returned failure",
        f"echo {DONE_MARKER}",
        "",
    ])
    console = boot(lkrn, files, script)
    assert DONE_MARKER in console and "INNER-RAN" in console, console
    assert "AFTER-REPLACE" not in console and "FAIL-BLOCK-RAN" not in console, console
    assert "VERDICT mid returned failure" in console, console
    # The lint says the same of an embedded script.
    mid = files["mid.ipxe"].decode().replace("#!ipxe\n", "#!ipxe\nimgtrust --permanent\n")
    assert "fall-through" in {f.rule for f in lint_script(mid)}


@pytest.mark.ipxe
@pytest.mark.slow
def test_ipxe_set_and_inc_can_fail(pki: TestPki) -> None:
    """`set` with a typed setting whose (expanded) value does not parse, and `inc` of a
    setting in a scope that does not exist, fail: the lint explores them both ways."""
    lkrn = build_test_ipxe([pki.root], certs=[pki.issuing])
    script = "\n".join([
        "#!ipxe",
        "set tb_x:ipv4 ${filename} && echo VERDICT set ok || echo VERDICT set failed",
        "inc net9/tb_y && echo VERDICT inc ok || echo VERDICT inc failed",
        "set tb_z:int32 0 && echo VERDICT literal ok || echo VERDICT literal failed",
        f"echo {DONE_MARKER}",
        "",
    ])
    console = boot(lkrn, {}, script)
    assert DONE_MARKER in console, console
    assert "VERDICT set failed" in console and "VERDICT inc failed" in console, console
    assert "VERDICT literal ok" in console, console


@pytest.mark.ipxe
@pytest.mark.slow
def test_ipxe_refuses_the_literal_values_the_lint_flags(pki: TestPki) -> None:
    """Every literal `set` of test_lint.LITERAL_SETS: a real iPXE stores exactly those the
    lint (setting_types) accepts."""
    from tests.ipxe.test_lint import LITERAL_SETS
    from trustboot.ipxe.setting_types import setting_problem

    lkrn = build_test_ipxe([pki.root], certs=[pki.issuing])
    lines = ["#!ipxe"]
    for i, (words, _) in enumerate(LITERAL_SETS):
        lines.append(f"set {words} && echo VERDICT {i} ok || echo VERDICT {i} failed")
    console = boot(lkrn, {}, "\n".join([*lines, f"echo {DONE_MARKER}", ""]))
    assert DONE_MARKER in console, console
    for i, (words, stored) in enumerate(LITERAL_SETS):
        real = f"VERDICT {i} ok" in console
        assert real != (f"VERDICT {i} failed" in console), (words, console)
        assert real == stored, f"iPXE {'stores' if real else 'refuses'} 'set {words}'"
        assert (setting_problem("set", words.split()) is None) == real, words


@pytest.mark.ipxe
@pytest.mark.slow
def test_ipxe_fails_and_keeps_images_where_the_lint_says(pki: TestPki) -> None:
    """What a review found the model had wrong, under a real iPXE: `boot` with no image
    selected succeeds; imgstat, ifstat, certstat and config with arguments that name
    nothing fail; `certstore --keep` of a file that is no certificate leaves it
    registered (and without --keep, removes it)."""
    lkrn = build_test_ipxe([pki.root], certs=[pki.issuing])
    files = {"extra.cpio": b"not a certificate\n" * 8, "other.cpio": b"nor this\n" * 8}
    checks = [
        ("boot", "nosel"),
        ("imgstat nosuchimage", "imgstat"),
        ("ifstat net7", "ifstat"),
        ("certstat --subject nosuch.example", "certstat"),
        ("config nosuchscope", "config"),
        ("certstore --keep tftp://10.0.2.2/extra.cpio", "keep"),
        ("certstore tftp://10.0.2.2/other.cpio", "nokeep"),
    ]
    script = "\n".join([
        "#!ipxe",
        *(f"{cmd} && echo VERDICT {tag} ok || echo VERDICT {tag} failed"
          for cmd, tag in checks),
        "imgstat extra.cpio && echo VERDICT kept yes || echo VERDICT kept no",
        "imgstat other.cpio && echo VERDICT dropped no || echo VERDICT dropped yes",
        f"echo {DONE_MARKER}",
        "",
    ])
    console = boot(lkrn, files, script)
    assert DONE_MARKER in console, console
    assert "No image selected" in console and "VERDICT nosel ok" in console, console
    for tag in ("imgstat", "ifstat", "certstat", "config", "keep", "nokeep"):
        assert f"VERDICT {tag} failed" in console, (tag, console)
    assert "VERDICT kept yes" in console and "VERDICT dropped yes" in console, console
