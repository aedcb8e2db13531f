"""The lint's model of iPXE: paths through labels, goto, &&, || and ;, options as iPXE's
getopt reads them, the stages, and a property test against a concrete interpreter."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from trustboot.cli.main import cli
from trustboot.errors import ConfigError
from trustboot.ipxe import script as S
from trustboot.ipxe.lint import lint_script, parse_script, unguarded_boot, uri_name
from trustboot.ipxe.syntax import join_lines, parse_command, split_tokens

HEAD = "#!ipxe\nimgtrust --permanent\n"
FAILED = ":failed\necho stopped\n:halt\nsleep 60 || goto halt\ngoto halt\n"
KERNEL = "kernel https://b/vmlinuz console=ttyS0 || goto failed\n"
VERIFY_K = "imgverify vmlinuz https://b/vmlinuz.sig || goto failed\n"
INITRD = "initrd https://b/initrd.img || goto failed\n"
VERIFY_I = "imgverify initrd.img https://b/initrd.img.sig || goto failed\n"
BOOT = "boot || goto failed\n"
GOOD = HEAD + KERNEL + VERIFY_K + INITRD + VERIFY_I + BOOT + FAILED


def rules(text: str, stage: str = "embedded") -> set[str]:
    return {f.rule for f in lint_script(text, stage=stage)}


def test_good_script_is_clean_in_both_stages() -> None:
    assert lint_script(GOOD) == []
    assert lint_script(GOOD, stage="chained") == []


# --- the three scripts from the issue: each boots an unverified image -----------------------


@pytest.mark.parametrize("stage", ["embedded", "chained"])
def test_semicolon_after_imgverify_carries_on(stage: str) -> None:
    text = GOOD.replace(VERIFY_K, "imgverify vmlinuz https://b/vmlinuz.sig ; echo ok\n")
    found = lint_script(text, stage=stage)
    assert {"soft-verify", "unverified-exec"} <= {f.rule for f in found}
    boot = next(f for f in found if f.rule == "unverified-exec")
    assert boot.line == 7 and "'imgverify' fails" in boot.message  # names the path


@pytest.mark.parametrize("stage", ["embedded", "chained"])
def test_quotes_do_not_protect_a_separator(stage: str) -> None:
    text = GOOD.replace(BOOT, 'echo "x && initrd https://evil/i"\n' + BOOT)
    found = {f.rule: f for f in lint_script(text, stage=stage)}
    assert "unverified-image" in found
    assert "'i\"'" in found["unverified-image"].message  # the name iPXE gives it


@pytest.mark.parametrize("stage", ["embedded", "chained"])
def test_goto_on_failure_to_a_label_that_boots(stage: str) -> None:
    text = GOOD.replace(VERIFY_K, "imgverify vmlinuz https://b/vmlinuz.sig || goto go\n:go\n")
    found = lint_script(text, stage=stage)
    assert "unverified-exec" in {f.rule for f in found}
    assert "(goto go)" in next(f for f in found if f.rule == "unverified-exec").message


def test_a_label_line_runs_its_own_command() -> None:
    # ":go boot" is a label *and* a command: iPXE runs the rest of the line.
    text = GOOD.replace(VERIFY_K, "imgverify vmlinuz https://b/vmlinuz.sig || goto go\n")
    text = text.replace(BOOT, ":go boot || goto failed\n")
    assert "unverified-exec" in rules(text)
    assert parse_script(":go boot\n")[0].label == "go"
    assert parse_script(":go boot\n")[0].commands[0].words == ("boot",)


def test_backslash_continuation_joins_a_command_onto_the_line() -> None:
    text = GOOD.replace(BOOT, "echo hi \\\n && initrd https://evil/x\n" + BOOT)
    assert "unverified-image" in rules(text)


@pytest.mark.parametrize("end", ["reboot \\\n", "reboot \\"])
def test_a_continuation_open_at_the_end_never_runs(end: str) -> None:
    # iPXE stops at the end of the data while still reading the line (-EINVAL): the
    # fail-closed 'reboot' never runs and the embedded script falls through.
    text = GOOD.replace(FAILED, ":failed\n" + end)
    assert rules(GOOD.replace(FAILED, ":failed\nreboot\n")) == set()
    found = {f.rule: f for f in lint_script(text)}
    assert {"dangling-continuation", "fall-through"} <= found.keys()
    assert found["dangling-continuation"].line == 9


def test_a_backslash_left_after_an_empty_line_continues_again() -> None:
    # iPXE strips the backslash from the line read so far: "echo x \\", then an empty
    # line, still ends in a backslash and swallows the label line after it.
    text = GOOD.replace(FAILED, "echo bye \\\\\n\n:failed reboot\n")
    assert join_lines(text)[-1] == (8, "echo bye :failed reboot")
    assert "missing-label" in rules(text)


@pytest.mark.parametrize("cmd", ["chain --replace", "boot -r", "imgexec --replace"])
def test_replace_never_comes_back_to_the_embedded_script(cmd: str) -> None:
    # imgexec --replace stops the script and runs the image in its place: a failing image
    # returns to the firmware, so the '|| goto failed' after it never runs.
    text = GOOD.replace(BOOT, f"{cmd} vmlinuz || goto failed\n")
    found = {f.rule: f for f in lint_script(text)}
    assert set(found) == {"fall-through"} and found["fall-through"].line == 7
    assert "--replace" in found["fall-through"].message
    assert rules(text, stage="chained") == set()  # the firmware handles a chained failure


def test_an_image_extracted_from_an_unverified_archive_is_unverified() -> None:
    # imgextract registers a new image (trusted only if its source was) and discards the
    # source: freeing the source does not make the extracted initrd verified.
    extract = ("imgfetch https://b/initrd.img.gz || goto failed\n"
               "imgextract initrd.img.gz || goto failed\n")
    text = GOOD.replace(INITRD + VERIFY_I, extract)
    found = {f.rule: f for f in lint_script(text)}
    assert "unverified-image" in found and "'initrd.img'" in found["unverified-image"].message
    # Verified before extraction: the extracted image is trusted too (archive.c).
    verified = ("imgfetch https://b/initrd.img.gz || goto failed\n"
                "imgverify initrd.img.gz https://b/initrd.img.gz.sig || goto failed\n"
                "imgextract --name initrd.img initrd.img.gz || goto failed\n")
    assert rules(GOOD.replace(INITRD + VERIFY_I, verified)) == set()


def test_a_decrypted_image_is_no_longer_verified() -> None:
    # imgdecrypt changes the image in place and clears its trusted flag (cms.c).
    text = GOOD.replace(BOOT, "imgdecrypt initrd.img https://b/initrd.env || goto failed\n"
                        + BOOT)
    assert "unverified-image" in rules(text)


# (token, the name iPXE gives the image it downloads), traced in iPXE's core/uri.c
# (parse_uri, uri_decode, resolve_path), core/image.c (image_set_uri) and core/basename.c.
IPXE_NAMES = [
    ("https://b/rel/vmlinuz", "vmlinuz"),
    ("https://b/rel/initrd.img/", ""),  # basename() after a trailing '/'
    ("https://b/rel/initrd%2Eimg", "initrd.img"),  # the path is percent-decoded
    ("https://b/rel/a%2Fb", "b"),  # ... before basename()
    ("https://b/rel/v%00z", "v"),  # a decoded NUL ends the C string
    ("https://b/rel/v%+41", "v\x04" + "1"),  # iPXE's strtoul takes a sign: "%+4" is 0x04
    ("https://b/rel/v%zz", "v%zz"),  # not hex: kept
    ("https://b/rel/vmlinuz?x=1/y", "vmlinuz"),  # the query is not part of the path
    ("https://b/rel/vmlinuz#a/b", "vmlinuz"),  # nor the fragment
    ("https:vmlinuz", "vmlinuz"),  # opaque: the basename of the opaque part
    ("urn:a:b/c", "c"),
    ("x1:a/b", "b"),  # a digit is no scheme character: a relative path
    ("https://b", None),  # no path: "imgN"
    ("https://b/", ""),
    ("?x", None),  # relative with no path: the name of the script's own URL
    ("..", ""),  # resolve_path() drops leading "./" and "../"
    ("./initrd.img", "initrd.img"),
    ("initrd.img", "initrd.img"),
]


@pytest.mark.parametrize("token, name", IPXE_NAMES)
def test_images_are_named_as_ipxe_names_them(token: str, name: str | None) -> None:
    assert uri_name(token) == name


@pytest.mark.parametrize("stage", ["embedded", "chained"])
@pytest.mark.parametrize("url, token", [
    ("https://evil/initrd.img/", "initrd.img"),  # named '': imgverify downloads another
    ("https://evil/initrd%2Eimg", "initrd%2Eimg"),  # named initrd.img, verified by spelling
])
def test_an_initrd_named_differently_from_its_url_is_caught(stage: str, url: str,
                                                             token: str) -> None:
    # The reviewer's scripts: 'imgverify TOKEN' finds no image of that name, downloads
    # TOKEN relative to the script's URL and verifies that; the attacker's initrd stays
    # registered, unverified, and 'boot' hands it to the kernel.
    text = GOOD.replace(INITRD + VERIFY_I, f"initrd {url} || goto failed\n"
                        f"imgverify {token} https://b/initrd.img.sig || goto failed\n")
    found = lint_script(text, stage=stage)
    assert {"unverified-image", "image-name"} <= {f.rule for f in found}, found
    assert any(f.rule == "image-name" and f.line == 5 and url in f.message for f in found)
    assert any(f.rule == "unverified-image" and f.line == 7 for f in found)


@pytest.mark.parametrize("command", ["initrd", "imgfetch", "module", "kernel", "chain"])
def test_a_fetch_not_named_after_its_last_segment_is_flagged(command: str) -> None:
    found = {f.rule: f for f in lint_script(GOOD.replace(
        BOOT, f"{command} https://b/x/initrd.img/ || goto failed\n" + BOOT))}
    assert "image-name" in found and "names it ''" in found["image-name"].message
    # with an explicit --name, the URL's spelling does not decide the name
    named = GOOD.replace(INITRD, "initrd --name initrd.img https://b/initrd%2Eimg/ || "
                         "goto failed\n")
    assert rules(named) == set()
    # a query string is dropped as anyone expects: not flagged
    assert rules(GOOD.replace(INITRD, "initrd https://b/initrd.img?v=2 || goto failed\n")) \
        == set()


def test_lint_cli_refuses_the_trailing_slash_initrd(tmp_path: Path) -> None:
    f = tmp_path / "boot.ipxe"
    f.write_text("#!ipxe\nkernel https://b/rel/vmlinuz\n"
                 "imgverify vmlinuz https://b/rel/vmlinuz.sig || goto fail\n"
                 "initrd https://evil/initrd.img/\n"
                 "imgverify initrd.img https://b/rel/initrd.img.sig || goto fail\n"
                 "boot\n:fail\nreboot\n")
    code, out, _ = _run("ipxe", "script", "lint", "--stage", "chained", str(f), "--json")
    assert code == 3
    assert {"image-name", "unverified-image"} <= {x["rule"] for x in json.loads(out)["findings"]}


@pytest.mark.parametrize("line", ["set next:ipv4 ${filename}", "inc net9/tries",
                                  "clear ${name}", "set url https://b/${x}/y"])
def test_a_set_that_can_fail_ends_the_embedded_script(line: str) -> None:
    # set/inc/clear fail when the value does not parse for its type or the scope does not
    # exist; an expanded value is whatever DHCP says.
    text = GOOD.replace(KERNEL, f"{line}\n" + KERNEL)
    assert "fall-through" in rules(text)
    assert rules(GOOD.replace(KERNEL, f"{line} || goto failed\n" + KERNEL)) == set()
    assert rules(GOOD.replace(KERNEL, "set tries:int32 0\ninc tries\n" + KERNEL)) == set()


# `set NAME:TYPE VALUE` with a literal value: (words, iPXE stores it). Checked against a
# real iPXE by test_lint_real.test_ipxe_refuses_the_literal_values_the_lint_flags.
LITERAL_SETS = [
    ("tb_a:ipv4 notanip", False), ("tb_b:ipv4 10.0.0.1", True),
    ("tb_c:ipv4 0x0a.1.2.3", True), ("tb_d:ipv4 10.0.0", False),
    ("tb_e:uint8 12abc", False), ("tb_f:uint8 0x", True), ("tb_g:int32 -5", True),
    ("tb_h:int32 1 2", False), ("tb_i:uint16 70000", True),
    ("tb_j:hex 0a:1b", True), ("tb_k:hex 0a1b", False), ("tb_l:hex 0a:", False),
    ("tb_m:hexhyp 0a-1b", True), ("tb_n:hexraw 0a1", False), ("tb_o:hexraw 0A1b", True),
    ("tb_p:uuid 01234567-89ab-cdef-0123-456789abcdef", True), ("tb_q:uuid 0123", False),
    ("tb_r:guid 0123456789abcdef0123456789abcdef", True),
    ("tb_s:base64 aGk=", True), ("tb_t:base64 a=b", False), ("tb_u:base64 aGk", False),
    ("tb_v:nosuchtype 1", False), ("tb_w:string not an ip", True),
    ("tb_x:busdevfn 1", False), ("tb_y:uristring %zz", True), ("tb_z:ipv4", True),
    ("next-server notanip", False), ("priority 1x", False), ("tb_0 notanip", True),
]


@pytest.mark.parametrize("words, stored", LITERAL_SETS)
def test_a_literal_value_that_cannot_parse_is_flagged(words: str, stored: bool) -> None:
    """`set x:ipv4 notanip` always fails in iPXE ("Could not store"): flagged, and the
    command is modelled as failing (the embedded script ends there)."""
    text = GOOD.replace(KERNEL, f"set {words}\n" + KERNEL)
    found = {f.rule: f.message for f in lint_script(text)}
    if stored:
        assert found == {}
        return
    assert set(found) == {"setting-value", "fall-through"}
    assert words.split()[0] in found["setting-value"]
    # even with '|| goto', the set is flagged: it can never succeed
    caught = GOOD.replace(KERNEL, f"set {words} || goto failed\n" + KERNEL)
    assert rules(caught) == {"setting-value"}


def test_an_expanded_value_is_not_judged_and_clear_checks_the_type() -> None:
    assert rules(GOOD.replace(KERNEL, "set x:ipv4 ${next-server} || goto failed\n"
                              + KERNEL)) == set()
    assert rules(GOOD.replace(KERNEL, "clear x:ipv5 || goto failed\n" + KERNEL)) \
        == {"setting-value"}
    assert rules(GOOD.replace(KERNEL, "clear x:ipv4\n" + KERNEL)) == set()


def test_a_nul_ends_the_line() -> None:
    # A script line is a C string in iPXE: nothing after a NUL is seen, '|| goto' included.
    text = GOOD.replace(VERIFY_K, VERIFY_K.replace(" ||", "\0 ||"))
    assert parse_script(text)[3].commands[0].terminator is None
    assert "fall-through" in rules(text)


def test_goto_target_must_end_fail_closed() -> None:
    # `|| goto LABEL` is accepted only when LABEL's block cannot end or boot.
    ends = GOOD.replace(FAILED, ":failed\necho stopped\n")
    assert "fall-through" in rules(ends)
    assert "fall-through" not in rules(ends, stage="chained")
    exits = GOOD.replace(FAILED, ":failed\nexit 1\n")
    assert "fall-through" in rules(exits)
    poweroff = GOOD.replace(FAILED, ":failed\npoweroff\n")  # poweroff can fail
    assert "fall-through" in rules(poweroff)
    assert rules(GOOD.replace(FAILED, ":failed\npoweroff || goto failed\n")) == set()
    assert rules(GOOD.replace(FAILED, ":failed\nreboot\n")) == set()
    missing = GOOD.replace(FAILED, "")
    assert "missing-label" in rules(missing)


def test_verify_then_and_or_goto_is_fail_closed() -> None:
    text = GOOD.replace(VERIFY_K, "imgverify vmlinuz https://b/vmlinuz.sig && echo ok "
                        "|| goto failed\n")
    assert rules(text) == set()


def test_uncaught_failure_in_embedded_script_falls_through() -> None:
    text = GOOD.replace(VERIFY_K, "imgverify vmlinuz https://b/vmlinuz.sig\n")
    found = lint_script(text)
    assert [f.rule for f in found] == ["fall-through"]
    assert found[0].line == 4 and "next device" in found[0].message
    assert lint_script(text, stage="chained") == []  # the firmware handles imgexec failing


def test_sanboot_and_autoboot_bypass_signatures() -> None:
    assert "sanboot" in rules(GOOD.replace(BOOT, "sanboot --no-describe || goto failed\n"))
    assert "autoboot" in rules(GOOD.replace(BOOT, "autoboot || goto failed\n"))


def test_chain_of_a_fresh_url_is_unverified() -> None:
    assert "unverified-exec" in rules(GOOD.replace(BOOT, "chain https://b/next.ipxe || goto "
                                                         "failed\n"), "chained")


def test_verified_then_replaced_image_is_unverified() -> None:
    # A second fetch under the same name registers a new, unverified image next to it.
    text = GOOD.replace(BOOT, "initrd https://b/initrd.img || goto failed\n" + BOOT)
    assert "unverified-image" in rules(text)


def test_imgfree_clears_unverified_images() -> None:
    text = GOOD.replace(KERNEL, "imgfetch https://b/junk || goto failed\nimgfree\n" + KERNEL)
    assert rules(text) == set()


def test_computed_goto_reaches_every_label() -> None:
    text = GOOD.replace(VERIFY_K, "choose target || goto failed\ngoto ${target} || goto failed"
                        "\n:skip\n" + BOOT + VERIFY_K)
    assert "unverified-exec" in rules(text)


def test_trust_is_required_first_only_in_the_embedded_stage() -> None:
    text = GOOD.replace("imgtrust --permanent\n", "")
    assert {"trust-missing"} <= rules(text)
    assert rules(text, "chained") == set()
    late = GOOD.replace("imgtrust --permanent\n", "").replace(BOOT, "imgtrust --permanent\n"
                                                              + BOOT)
    assert "trust-first" in rules(late)
    assert "trust-allow" in rules(GOOD.replace(BOOT, "imgtrust --allow\n" + BOOT), "chained")


# --- options as iPXE's parser reads them (item 10) -------------------------------------------


@pytest.mark.parametrize("line,problem", [
    ("imgverify vmlinuz https://b/vmlinuz.sig --signer release-signer", "4"),
    ("imgverify --signer", "requires an argument"),
    ("imgverify --signer -k a b", "requires an argument"),
    ("imgverify --sign x a b", 'unrecognised option "--sign"'),
    ("imgverify --keep=yes a b", "takes no argument"),
    ("imgverify -x a b", 'unrecognised option "-x"'),
    ("imgverify a", "exactly 2"),
    ("imgtrust --permanent now", "exactly 0"),
    ("kernel", "at least 1"),
    ("goto", "exactly 1"),
    ("echo -e hi", 'unrecognised option "-e"'),
    ("echo - hi", 'unrecognised option "-"'),
    ("boot --help", "usage"),
    ("frobnicate x", "command not found"),
])
def test_usage_errors_iPXE_would_print(line: str, problem: str) -> None:
    parsed = parse_command(line.split())
    assert parsed.problem is not None and problem in parsed.problem, parsed
    text = GOOD.replace(BOOT, line + " || goto failed\n" + BOOT)
    assert rules(text) & {"usage", "unknown-command"}


@pytest.mark.parametrize("line,options,args", [
    ("imgverify --signer release-signer a b", {"signer": "release-signer"}, ("a", "b")),
    ("imgverify --signer=release-signer -k a b", {"signer": "release-signer", "keep": None},
     ("a", "b")),
    ("imgverify -srelease-signer -kq a b", {"signer": "release-signer", "keep": None,
                                            "quiet": None}, ("a", "b")),
    ("imgverify -ks x a b", {"keep": None, "signer": "x"}, ("a", "b")),
    ("kernel --name k https://b/v quiet --verbose", {"name": "k"},
     ("https://b/v", "quiet", "--verbose")),  # after the first argument, '-' is an argument
    ("imgfetch -- -odd-name", {}, ("-odd-name",)),
    ("echo -n", {"n": None}, ()),
    ("boot", {}, ()),
])
def test_options_parse_like_ipxe(line: str, options: dict[str, str | None],
                                 args: tuple[str, ...]) -> None:
    parsed = parse_command(line.split())
    assert parsed.problem is None, parsed.problem
    assert parsed.options == options and parsed.args == args


# --- commands the table once lacked: a valid script using them got "command not found" -------

NEW_COMMANDS_VALID = [
    "console --picture https://b/logo.png --left 32 --right 32 --top 32 --bottom 48",
    "console -x 1024 -y 768 -d 32",
    "colour --basic 1 --rgb 0x336699 4",
    "colour -b 0 0",
    "cpair --foreground 7 --background 4 2",
    "pciscan tb_pci",
    "usbscan tb_usb",
    "fcstat",
    "fcels --port p0 --id 0x010203 plogi",
    "ibstat",
    "iwstat net0",
    "iwlist",
    "lotest --mtu 1500 -b net0 net1",
    "profstat",
    "startpxe net0",
    "stoppxe",
    "md4sum vmlinuz",
    "sha256sum --set tb_sum vmlinuz initrd.img",
    "sha224sum vmlinuz", "sha384sum vmlinuz", "sha512sum -s tb_sum vmlinuz",
    "imgset tb_x https://b/x.txt",
    "fdt",
]


@pytest.mark.parametrize("stage", ["embedded", "chained"])
@pytest.mark.parametrize("line", NEW_COMMANDS_VALID)
def test_valid_uses_of_the_added_commands_lint_clean(line: str, stage: str) -> None:
    assert parse_command(line.split()).problem is None
    text = GOOD.replace(BOOT, line + " || goto failed\n" + BOOT)
    assert lint_script(text, stage=stage) == []


@pytest.mark.parametrize("line,problem", [
    ("console --picture", "requires an argument"),
    ("console --colour 1", 'unrecognised option "--colour"'),
    ("console https://b/logo.png", "exactly 0"),
    ("colour 4 --basic 1", "exactly 1"),
    ("colour", "exactly 1"),
    ("cpair --fg 7 2", 'unrecognised option "--fg"'),
    ("pciscan", "exactly 1"),
    ("usbscan a b", "exactly 1"),
    ("fcels --port", "requires an argument"),
    ("ibstat net0", "exactly 0"),
    ("lotest net0", "exactly 2"),
    ("profstat x", "exactly 0"),
    ("stoppxe net0", "exactly 0"),
    ("imgmem 0x100000", "exactly 2"),
    ("imgmem --keep 0x100000 4096", 'unrecognised option "--keep"'),
    ("imgset https://b/x.txt", "exactly 2"),
    ("fdt a.dtb b.dtb", "0 to 1"),
    ("sha256sum", "at least 1"),
    ("gdbstub", "at least 1"),
])
def test_misused_added_commands_print_their_usage(line: str, problem: str) -> None:
    parsed = parse_command(line.split())
    assert parsed.problem is not None and problem in parsed.problem, parsed
    found = lint_script(GOOD.replace(BOOT, line + " || goto failed\n" + BOOT))
    assert "usage" in {f.rule for f in found} and "unknown-command" not in {
        f.rule for f in found}, found


# --- the renderer API ------------------------------------------------------------------------


def test_renderer_pieces() -> None:
    assert S.verify("vmlinuz", "https://b/vmlinuz.sig", signer="release-signer") == (
        "imgverify --signer release-signer vmlinuz https://b/vmlinuz.sig || goto tb_failed")
    assert S.verify("a", "a.sig", signer="${tb_signer}").startswith(
        "imgverify --signer ${tb_signer} a a.sig")
    assert S.or_fail("initrd https://b/i") == "initrd https://b/i || goto tb_failed"
    block = S.failure_block("reboot")
    assert block[0] == ":tb_failed" and "reboot" in block and block[-1] == "goto tb_halt"
    script = "\n".join([S.MAGIC, "imgtrust --permanent",
                        S.or_fail(S.command("kernel", "https://b/vmlinuz", "quiet")),
                        S.verify("vmlinuz", "https://b/vmlinuz.sig", signer="s"),
                        S.or_fail("boot"), *S.failure_block(), ""])
    assert lint_script(script) == []
    assert lint_script(script, stage="chained") == []


@pytest.mark.parametrize("call", [
    lambda: S.verify("vmlinuz", "x.sig", signer="boot-signer ; shell"),
    lambda: S.verify("vmlinuz", "x.sig", signer="${net0/signer}"),  # DHCP-controlled
    lambda: S.verify("vmlinuz;", "&&"),
    lambda: S.command("kernel", "vmlinuz", "quiet && boot"),
    lambda: S.command("kernel", "#x"),
    lambda: S.echo("done || shell"),
    lambda: S.echo("line\nshell"),
    lambda: S.set_setting("tb_url", "https://x/${y}"),
    lambda: S.failure_block("boot-anyway"),
    lambda: S.check_https_url("https://b/x || shell", "url"),
])
def test_renderer_refuses_hostile_values(call: object) -> None:
    with pytest.raises(ConfigError):
        call()  # type: ignore[operator]


# --- the CLI ---------------------------------------------------------------------------------


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_render_refuses_an_injected_signer() -> None:
    code, out, err = _run("ipxe", "script", "render", "--chain", "https://b/boot.ipxe",
                          "--signer", "boot-signer ; shell")
    assert code == 3 and out == "" and "signer name" in err


def test_render_default_halts_and_exit_warns() -> None:
    code, out, err = _run("ipxe", "script", "render", "--chain", "https://b/boot.ipxe",
                          "--signer", "boot-signer")
    assert code == 0 and "goto tb_halt" in out and "\nexit" not in out and err == ""
    code, out, err = _run("ipxe", "script", "render", "--chain", "https://b/boot.ipxe",
                          "--signer", "boot-signer", "--on-failure", "exit")
    assert code == 0 and "exit 1" in out and "not fail-closed" in err


def test_lint_stage_option(tmp_path: Path) -> None:
    f = tmp_path / "boot.ipxe"
    f.write_text(GOOD.replace("imgtrust --permanent\n", ""))
    code, out, _ = _run("ipxe", "script", "lint", str(f), "--json")
    assert code == 3 and "trust-missing" in {x["rule"] for x in json.loads(out)["findings"]}
    code, out, _ = _run("ipxe", "script", "lint", str(f), "--stage", "chained", "--json")
    assert code == 0 and json.loads(out) == {"file": str(f), "stage": "chained",
                                             "findings": []}


def test_lint_refuses_devices_fifos_and_huge_files(tmp_path: Path) -> None:
    code, _, err = _run("ipxe", "script", "lint", "/dev/zero")
    assert code == 3 and "not a regular file" in err
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, _, err = _run("ipxe", "script", "lint", str(fifo))  # would block forever on main
    assert code == 3 and "not a regular file" in err
    big = tmp_path / "big.ipxe"
    big.write_bytes(b"#!ipxe\n" + b"#" * (2 << 20))
    code, _, err = _run("ipxe", "script", "lint", str(big))
    assert code == 3 and "larger than" in err


# --- property: the model against a concrete interpreter --------------------------------------
#
# The interpreter below follows iPXE's C code directly (process_script, system, execv) on
# concrete runs, taking both branches wherever a command may succeed or fail. Scripts are
# generated with forward gotos only, so every run ends and all runs can be enumerated.

_CMDS = ["imgfetch https://h/A", "imgfetch https://h/B", "imgverify A https://h/A.sig",
         "imgverify B https://h/B.sig", "boot A", "iseq x y", "echo ok", "exit", "reboot",
         "imgfree"]


@st.composite
def _scripts(draw: st.DrawFn) -> str:
    n = draw(st.integers(2, 5))
    lines = [HEAD.rstrip("\n")]
    for i in range(n):
        words: list[str] = []
        for k in range(draw(st.integers(1, 2))):
            if k:
                words.append(draw(st.sampled_from(["&&", "||", ";"])))
            if draw(st.integers(0, 5)) == 0:
                words.append(f"goto L{draw(st.integers(i + 1, n + 1))}")  # may not exist
            else:
                words.append(draw(st.sampled_from(_CMDS)))
        if draw(st.booleans()):
            words.append(draw(st.sampled_from(["&&", "||", ";"])))  # a trailing empty command
        label = f":L{i} " if draw(st.booleans()) else ""
        lines.append(label + " ".join(words))
    return "\n".join(lines) + "\n"


def _concrete(text: str) -> tuple[bool, bool]:
    """(some run boots with an unverified image registered, some run ends the script)."""
    joined = join_lines(text)
    if text.endswith("\n") and joined and not joined[-1][1]:
        joined.pop()
    lines: list[tuple[str | None, list[str]]] = []
    for _, raw in joined:
        rest, label = raw.lstrip(), None
        if rest.startswith(":"):
            head, _, rest = rest[1:].partition(" ")
            label = head
        lines.append((label, split_tokens(rest)))
    labels: dict[str, int] = {}
    for i, (lab, _) in enumerate(lines):
        if lab is not None:
            labels.setdefault(lab, i)
    seen = {"unverified": False, "ends": False}
    Images = list[tuple[str, bool, int]]

    def acquire(name: str, imgs: Images, site: int) -> list[tuple[int | None, Images]]:
        for idx, (n, _, _) in enumerate(imgs):
            if n == name:
                return [(idx, imgs)]
        base = name.rsplit("/", 1)[-1]
        return [(len(imgs), [*imgs, (base, False, site)]), (None, imgs)]

    def command(argv: list[str], imgs: Images, site: int
                ) -> list[tuple[bool, Images, str | int | None]]:
        name = argv[0]
        if name == "goto":
            return [(True, imgs, labels[argv[1]])] if argv[1] in labels else [(False, imgs,
                                                                                None)]
        if name == "exit":
            return [(True, imgs, "exit")]
        if name == "reboot":
            return [(True, imgs, "halt")]
        if name in ("echo", "imgtrust"):
            return [(True, imgs, None)]
        if name == "imgfree":
            return [(True, [], None)]
        if name == "iseq":
            return [(True, imgs, None), (False, imgs, None)]
        if name == "imgfetch":
            img = (argv[1].rsplit("/", 1)[-1], False, site)
            added = imgs if img in imgs else [*imgs, img]
            return [(True, added, None), (False, imgs, None)]
        if name == "imgverify":
            out: list[tuple[bool, Images, str | int | None]] = []
            for idx, got in acquire(argv[1], imgs, site):
                if idx is None:
                    out.append((False, got, None))
                    continue
                out.append((False, got, None))  # signature missing or not valid
                n, _, s = got[idx]
                out.append((True, [*got[:idx], (n, True, s), *got[idx + 1:]], None))
            return out
        if name == "boot":
            out = []
            for idx, got in acquire(argv[1], imgs, site):
                if idx is None:
                    out.append((False, got, None))
                    continue
                if not all(v for _, v, _ in got):
                    seen["unverified"] = True
                out += [(True, got, None), (False, got, None)]
            return out
        raise AssertionError(name)

    def run_line(li: int, imgs: Images) -> None:
        if li >= len(lines):
            seen["ends"] = True
            return
        run_cmds(li, 0, True, True, imgs)

    def run_cmds(li: int, pos: int, process: bool, ok: bool, imgs: Images) -> None:
        tokens = lines[li][1]
        end = pos
        while end < len(tokens) and not tokens[end].startswith("#") and tokens[end] not in (
                "&&", "||", ";"):
            end += 1
        argv = tokens[pos:end]
        term = tokens[end] if end < len(tokens) and not tokens[end].startswith("#") else None
        if not process:
            results: list[tuple[bool, Images, str | int | None]] = [(ok, imgs, None)]
        elif not argv:
            results = [(True, imgs, None)]
        else:
            results = command(argv, imgs, li)
        for rok, rimgs, ctl in results:
            if isinstance(ctl, int):
                run_line(ctl, rimgs)
            elif ctl == "exit":
                seen["ends"] = True
            elif ctl == "halt":
                pass
            elif term is None:
                if rok:
                    run_line(li + 1, rimgs)
                else:
                    seen["ends"] = True
            else:
                go = {"&&": rok, "||": not rok, ";": True}[term]
                run_cmds(li, end + 1, go, rok, rimgs)

    run_line(0, [])
    return seen["unverified"], seen["ends"]


@settings(max_examples=150, deadline=None)
@given(_scripts())
def test_model_agrees_with_a_concrete_interpreter(text: str) -> None:
    unverified, ends = _concrete(text)
    found = rules(text)
    assert unverified == bool(found & {"unverified-exec", "unverified-image"}), (text, found)
    assert ends == ("fall-through" in found), (text, found)


# --- commands the model once took for infallible or inert (found by a review) ---------------

FETCH_ONLY = ("imgfetch https://b/boot.efi || goto failed\n"
              "imgverify boot.efi https://b/boot.efi.sig || goto failed\n")


@pytest.mark.parametrize("exec_line", ["boot || goto failed\n", "imgexec || goto failed\n",
                                       "boot || goto failed\nexit\n"])
def test_an_exec_with_no_image_selected_succeeds_and_the_script_goes_on(exec_line: str) -> None:
    """`imgfetch` selects nothing; `boot` with nothing selected prints "No image selected"
    and returns success (imgsingle_exec), so the embedded script runs off its end and the
    firmware boots the next device. The model had it fail into the '|| goto'."""
    text = HEAD + "goto start\n" + FAILED + ":start\n" + FETCH_ONLY + exec_line
    found = lint_script(text)
    assert "fall-through" in {f.rule for f in found}
    end = next(f for f in found if f.rule == "fall-through")
    assert "'boot' fails" not in end.message and "'imgexec' fails" not in end.message


@pytest.mark.parametrize("line", ["imgstat nosuchimage", "ifstat net7", "ifstat",
                                  "certstat --subject nosuch.example", "config nosuchscope",
                                  "shell"])
def test_commands_that_can_fail_end_the_embedded_script(line: str) -> None:
    text = GOOD.replace(BOOT, f"{line}\n{BOOT}")
    assert "fall-through" in rules(text), line
    assert "fall-through" not in rules(GOOD.replace(BOOT, f"{line} ||\n{BOOT}")), line


@pytest.mark.parametrize("stage", ["embedded", "chained"])
def test_certstore_keep_leaves_an_unverified_image(stage: str) -> None:
    """certstore acquires its argument as an image; with --keep it stays registered,
    unverified, even when it held no certificate: the kernel gets it as an initrd."""
    kept = GOOD.replace(BOOT, "certstore --keep https://b/extra.cpio || echo not a cert\n"
                        + BOOT)
    assert "unverified-image" in rules(kept, stage)
    dropped = GOOD.replace(BOOT, "certstore https://b/extra.cpio || echo not a cert\n" + BOOT)
    assert "unverified-image" not in rules(dropped, stage)
    # without --keep even an image registered before is unregistered
    gone = GOOD.replace(BOOT, "certstore initrd.img || echo not a cert\n" + BOOT)
    assert lint_script(gone, stage=stage) == []


@pytest.mark.parametrize("stage", ["embedded", "chained"])
def test_a_shim_must_be_verified_like_any_image(stage: str) -> None:
    """On EFI the shim runs in place of a kernel the firmware will not load, and imgtrust
    checks only the kernel."""
    shim = "shim https://b/shimx64.efi || goto failed\n"
    assert "unverified-image" in rules(GOOD.replace(KERNEL, shim + KERNEL), stage)
    verified = shim + "imgverify shimx64.efi https://b/shimx64.efi.sig || goto failed\n"
    assert lint_script(GOOD.replace(KERNEL, verified + KERNEL), stage=stage) == []
    assert "cleartext" in rules(GOOD.replace(KERNEL, shim.replace("https", "http")
                                                 + KERNEL), stage)


def test_the_shell_failure_action_stays_fail_closed() -> None:
    block = "\n".join(S.failure_block("shell"))
    assert lint_script(HEAD + KERNEL + VERIFY_K + BOOT + block.replace("tb_failed", "failed")
                       + "\n") == []


@pytest.mark.parametrize("stage", ["embedded", "chained"])
def test_a_kernel_that_fails_to_select_stays_registered(stage: str) -> None:
    """`kernel URL` downloads and registers the image before selecting it; a selection
    that fails (no executable type) leaves it registered and unverified."""
    # on success the script halts; only the failed selection goes on to boot
    text = GOOD.replace(KERNEL, "kernel https://b/other.efi && goto failed || echo no\n"
                        + KERNEL)
    assert "unverified-image" in rules(text, stage)


# --- added commands that fetch or make images, or change settings ----------------------------


@pytest.mark.parametrize("stage", ["embedded", "chained"])
@pytest.mark.parametrize("line,name", [
    ("imgmem --name blob 0x100000 4096", "blob"),
    ("imgmem 0x100000 4096", "0x100000"),
    ("fdt https://b/board.dtb", "board.dtb"),
    ("console --picture https://b/logo.png --keep", "logo.png"),
    ("imgset --keep tb_x https://b/x.txt", "x.txt"),
])
def test_an_image_an_added_command_leaves_must_be_verified(line: str, name: str,
                                                          stage: str) -> None:
    """imgmem makes an image of whatever is in memory (named --name or the address); fdt
    keeps its device tree registered for the kernel; console --picture and imgset keep
    theirs with --keep. imgtrust checks none of them: each needs its own imgverify."""
    text = GOOD.replace(BOOT, f"{line} || goto failed\n{BOOT}")
    found = {f.rule: f for f in lint_script(text, stage=stage)}
    assert "unverified-image" in found and f"'{name}'" in found["unverified-image"].message
    verify = f"imgverify {name} https://b/{name}.sig || goto failed\n"
    assert lint_script(text.replace(BOOT, verify + BOOT), stage=stage) == []
    # the audit's walk of a served script says the same
    served = unguarded_boot(HEAD + KERNEL + VERIFY_K + f"{line}\nboot\n")
    assert served is not None and served.rule == "unverified-image", served
    assert unguarded_boot(HEAD + KERNEL + VERIFY_K + f"{line}\n{verify}boot\n") is None


@pytest.mark.parametrize("line", ["imgset trust https://b/fingerprints",
                                  "imgset crosscert https://b/url.txt", "pciscan trust",
                                  "usbscan net0/crosscert"])
def test_added_commands_that_write_a_trust_setting_are_flagged(line: str) -> None:
    assert "trust-setting" in rules(GOOD.replace(BOOT, f"{line} || goto failed\n{BOOT}"))


@pytest.mark.parametrize("line", ["imgset tb_x http://b/x.txt", "fdt tftp://b/board.dtb",
                                  "console --picture http://b/logo.png"])
def test_added_commands_fetching_cleartext_are_flagged(line: str) -> None:
    assert "cleartext" in rules(GOOD.replace(BOOT, f"{line} || goto failed\n{BOOT}"))


@pytest.mark.parametrize("stage", ["embedded", "chained"])
def test_gdbstub_is_a_boot_no_signature_guards(stage: str) -> None:
    """A debugger attached through gdbstub can write memory and run anything."""
    text = GOOD.replace(BOOT, f"gdbstub udp net0 || goto failed\n{BOOT}")
    assert "gdbstub" in rules(text, stage)
    served = unguarded_boot(HEAD + "gdbstub udp net0\n")
    assert served is not None and served.rule == "gdbstub", served


@pytest.mark.parametrize("stage", ["embedded", "chained"])
@pytest.mark.parametrize("body,line", [("${c} https://x/y\n", 3),
                                       ("set c chain\n${c} https://x/y\n", 4),
                                       ("ch${n}ain https://x/y\n", 3)])
def test_a_computed_command_name_is_not_called_not_found(body: str, line: int,
                                                         stage: str) -> None:
    """iPXE expands the command word before it looks it up: '${c}' is no unknown
    command, it is one the lint cannot know. The finding (rule, line) stays."""
    found = lint_script(HEAD + body, stage=stage)
    [finding] = [f for f in found if f.rule == "unknown-command"]
    assert finding.line == line
    assert "computed at run time" in finding.message, finding
    assert "not found" not in finding.message, finding
    # a '${' with no closing brace is not expanded: that name is not found
    [plain] = [f for f in lint_script(HEAD + "${c https://x/y\n", stage=stage)
               if f.rule == "unknown-command"]
    assert "'${c': command not found" in plain.message


@pytest.mark.parametrize("stage", ["embedded", "chained"])
@pytest.mark.parametrize("command", ["md5sum", "sha1sum", "sha256sum", "sha512sum"])
def test_a_digest_leaves_the_image_it_fetched_registered(command: str, stage: str) -> None:
    """digest_exec() acquires each argument and keeps it: `md5sum URL` leaves an
    unverified download registered, which the kernel gets as an initrd."""
    line = f"{command} --set tb_sum vmlinuz https://b/extra.cpio || goto failed\n"
    found = {f.rule: f for f in lint_script(GOOD.replace(BOOT, line + BOOT), stage=stage)}
    assert "'extra.cpio'" in found["unverified-image"].message
    served = unguarded_boot(HEAD + KERNEL + VERIFY_K + line + "boot\n")
    assert served is not None and served.rule == "unverified-image", served
    assert "cleartext" in rules(GOOD.replace(BOOT, line.replace("https", "http") + BOOT),
                                stage)
    # an image already registered (and verified) is only read
    read = f"{command} vmlinuz initrd.img || goto failed\n"
    assert lint_script(GOOD.replace(BOOT, read + BOOT), stage=stage) == []


def test_an_empty_option_value_is_an_option_as_ipxe_takes_it() -> None:
    """iPXE tests the option's pointer, not its text: `console --keep --picture=` fetches
    "" (the script's own URL again, whatever the server answers now) and keeps it, and
    `--name=` names an image "", which no imgverify reaches. The model took the empty
    values as absent and called such a script clean (a review booted a real iPXE: three
    unverified images registered)."""
    script = (
        "#!ipxe\n"
        "imgtrust --permanent\n"
        "console --keep --picture= || echo no picture\n"
        "imgmem --name= 0x100000 0x1000\n"
        "imgverify 0x100000 https://boot.example/mem.sig || goto fail\n"
        "kernel --name k https://boot.example/k\n"
        "imgverify k https://boot.example/k.sig || goto fail\n"
        "initrd --name= https://boot.example/initrd.img\n"
        "imgverify initrd.img https://boot.example/initrd.img.sig || goto fail\n"
        "boot k || goto fail\n"
        ":fail\n"
        "reboot\n")
    assert unguarded_boot(script) is not None
    assert "unverified-image" in {f.rule for f in lint_script(script, stage="chained")}
    for line in ("console --keep --picture=", "imgmem --name= 0x100000 0x1000",
                 "initrd --name= https://boot.example/initrd.img"):
        one = ("#!ipxe\nimgtrust --permanent\n"
               "kernel --name k https://boot.example/k\n"
               "imgverify k https://boot.example/k.sig || goto fail\n"
               f"{line} || goto fail\nboot k || goto fail\n:fail\nreboot\n")
        assert "unverified-image" in {f.rule for f in lint_script(one, stage="chained")}, line


@pytest.mark.parametrize("line", ["sha256sum --set trust https://boot.example/root.der",
                                  "sha1sum --set=crosscert https://boot.example/c.der",
                                  "choose --default 00 trust", "nslookup trust boot.example"])
def test_every_command_that_writes_a_trust_setting_is_flagged(line: str) -> None:
    """A digest's --set (a SHA-256 of a DER certificate is a `trust` fingerprint), choose's
    and nslookup's setting word write settings too: only set/imgset and the like were
    checked, so `sha256sum --set trust URL` linted clean."""
    script = ("#!ipxe\nimgtrust --permanent\n"
              f"{line} || goto fail\n"
              "imgfetch https://boot.example/next.ipxe\n"
              "imgverify next.ipxe https://boot.example/next.ipxe.sig || goto fail\n"
              "chain --autofree next.ipxe || goto fail\n:fail\nreboot\n")
    assert "trust-setting" in {f.rule for f in lint_script(script, stage="chained")}
