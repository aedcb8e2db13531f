"""An entry's files may not take a name the boot chain gives its own images: the menu
verifies each image by name (`imgverify --signer S NAME NAME.sig`), and iPXE's find_image
returns the first registered image of that name, so an initrd named tb_entry could have
the menu judge the chained script (tb_entry, fetched by the embedded script) instead."""

from __future__ import annotations

import pytest

from trustboot.errors import ConfigError
from trustboot.release.recipe import parse_recipe
from trustboot.release.render import MenuEntry, render_menu

RECIPE = """\
version: 1
name: r1
signer: {key: s1}
entries:
  - name: linux
    kernel: %s
    initrds: [%s]
"""


@pytest.mark.parametrize(("kernel", "initrd", "line"), [
    ("images/vmlinuz", "images/tb_entry", 7),
    ("images/vmlinuz", "images/tb_entry.sig", 7),
    ("images/tb_entry", "images/initrd.img", 6),
    ("images/vmlinuz", "images/TB_anything", 7),
    ("images/vmlinuz", "images/trustboot.ipxe", 7),
])
def test_a_name_the_chain_keeps_is_refused_at_its_line(kernel: str, initrd: str,
                                                      line: int) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_recipe(RECIPE % (kernel, initrd), "r.yaml")
    assert exc.value.message.startswith(f"r.yaml:{line}: "), exc.value.message
    assert "keeps for its own images" in exc.value.message
    assert exc.value.hint is not None and "rename the file" in exc.value.hint


def test_two_images_of_one_entry_with_one_name_are_refused_at_validation() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_recipe(RECIPE % ("images/vmlinuz", "a/initrd.img, b/initrd.img"), "r.yaml")
    assert exc.value.message.startswith("r.yaml:7: ") and "r.yaml:7" in exc.value.message


def test_names_like_the_chains_but_not_reserved_pass() -> None:
    r = parse_recipe(RECIPE % ("images/vmlinuz", "images/entry, images/tb-entry"), "r.yaml")
    assert [i.raw for i in r.entries[0].initrds] == ["images/entry", "images/tb-entry"]


def test_the_renderer_refuses_them_too() -> None:
    entry = MenuEntry(name="linux", title="Linux", arch=("bios",), kernel_key="linux/vmlinuz",
                      initrd_keys=("linux/tb_entry",), cmdline="", default=True)
    with pytest.raises(ConfigError, match="keeps for its own images"):
        render_menu(release_id="r-1", name="r1", base_url="https://boot.example/",
                    signer="s1", title="t", timeout=5, entries=[entry], on_failure="halt")
