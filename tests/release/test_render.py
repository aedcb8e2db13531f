"""The rendered entry/menu script: per-architecture menus, every image verified before use,
every failure to the one failure block, clean under both lint stages; hostile values never
reach a script line."""

from __future__ import annotations

import pytest

from trustboot.errors import ConfigError
from trustboot.ipxe.script import lint_script
from trustboot.ipxe.syntax import join_lines, split_commands, split_tokens
from trustboot.release.render import MenuEntry, render_menu

BASE = "https://boot.example.net/"
ENTRIES = (
    MenuEntry("debian-amd64", "Debian 12 (amd64)", ("bios", "x86_64-efi"),
              "debian-amd64/linux", ("debian-amd64/initrd.gz",), "console=ttyS0", True),
    MenuEntry("rescue", "Rescue", ("bios", "x86_64-efi"), "rescue/vmlinuz",
              ("rescue/initrd.img", "rescue/modules.img"), ""),
    MenuEntry("debian-arm64", "Debian 12 (arm64)", ("arm64-efi",), "debian-arm64/linux",
              ("debian-arm64/initrd.gz",), "console=ttyAMA0"),
)


def render(entries: tuple[MenuEntry, ...] = ENTRIES, **kw: object) -> str:
    args: dict[str, object] = dict(release_id="2026.11.25-abcd1234", name="lab",
                                   base_url=BASE, signer="release-signer", title="Lab menu",
                                   timeout=10, entries=entries, on_failure="halt")
    args.update(kw)
    return render_menu(**args)  # type: ignore[arg-type]


def test_multi_arch_menu_is_fail_closed_and_lints_clean() -> None:
    script = render()
    assert lint_script(script, stage="chained") == []
    assert lint_script(script, stage="embedded") == []
    assert "iseq ${platform} pcbios && goto arch_bios ||" in script
    assert "iseq ${platform} efi && iseq ${buildarch} x86_64 && goto arch_x86_64-efi ||" \
        in script
    assert "iseq ${platform} efi && iseq ${buildarch} arm64 && goto arch_arm64-efi ||" in script
    arm = script.split(":arch_arm64-efi")[1].split("\n\n")[0]
    assert "e_debian-arm64" in arm and "e_rescue" not in arm
    bios = script.split(":arch_bios")[1].split("\n\n")[0]
    assert "choose --default e_debian-amd64 --timeout 10000 tb_choice || goto tb_failed" in bios
    url = f"{BASE}releases/2026.11.25-abcd1234/rescue"
    assert (f"imgverify --signer release-signer modules.img {url}/modules.img.sig "
            "|| goto tb_failed") in script
    # Every image fetched is verified before the entry's boot, in order.
    for block in script.split(":entry_")[1:]:
        lines = block.splitlines()
        boot = next(i for i, line in enumerate(lines) if line.startswith("boot "))
        fetched = [line.split()[1] for line in lines[:boot] if line.startswith(("kernel ",
                                                                                 "initrd "))]
        verified = [line.split()[3] for line in lines[:boot] if line.startswith("imgverify")]
        assert [u.rsplit("/", 1)[-1] for u in fetched] == verified


@pytest.mark.parametrize("title", ["--- Lab boot ---", "-", "--name=x", "-n lab", ""])
def test_a_menu_title_that_looks_like_an_option_still_lints_clean(title: str) -> None:
    """iPXE's getopt reads a first word starting with '-' as an option: `menu --- Lab ---`
    failed with its usage text on every boot (the release still said it verified). The
    title goes after '--', which ends the options."""
    script = render(title=title)
    assert lint_script(script, stage="chained") == []
    assert f"menu -- {title} - release 2026.11.25-abcd1234 || goto tb_failed" in script
    assert "menu Lab menu - release" in render()  # an ordinary title: as before


def test_echo_of_text_that_looks_like_an_option() -> None:
    from trustboot.ipxe.script import echo

    assert echo("-n no newline") == "echo -- -n no newline"
    assert echo("trustboot: -n") == "echo trustboot: -n"
    def usage(line: str) -> list[str]:
        return [f.message for f in lint_script(f"#!ipxe\n{line}\n", stage="chained")
                if f.rule == "usage"]

    assert usage(echo("-s x")) == []
    assert usage("echo -s x")  # what iPXE would refuse, as the lint models it


def test_no_line_chains_a_command_other_than_goto_after_a_failure() -> None:
    for _n, line in join_lines(render()):
        for words, term in split_commands(split_tokens(line)):
            if term == "||":
                continue
            assert words[:1] != ["boot"] or term is None or term == "||"
    assert "http://" not in render()


def test_timeout_zero_boots_the_default_without_a_menu() -> None:
    script = render(timeout=0)
    assert "choose" not in script and "goto entry_debian-amd64" in script
    assert lint_script(script, stage="chained") == []


@pytest.mark.parametrize(("field", "value"), [
    ("cmdline", "quiet && boot"), ("cmdline", "a ; shell"), ("cmdline", "${x}"),
    ("title", "x || boot"), ("name", "a b"), ("kernel_key", "a b"),
])
def test_hostile_values_never_reach_the_script(field: str, value: str) -> None:
    e = ENTRIES[0]
    bad = MenuEntry(**{**e.__dict__, field: value})
    with pytest.raises(ConfigError, match="cannot go into an iPXE script"):
        render((bad,))


@pytest.mark.parametrize("kw", [{"signer": "s ; shell"}, {"base_url": "https://x/${a}/"},
                                {"title": "t && boot"}])
def test_hostile_release_values(kw: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="cannot go into an iPXE script"):
        render(ENTRIES, **kw)
