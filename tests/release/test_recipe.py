"""Recipes: every shipped recipe validates; every broken or hostile recipe fails with its
file:line, a fix, and exit 3 (never a traceback)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from trustboot.cli.main import cli
from trustboot.errors import ConfigError, ExitCode
from trustboot.release.recipe import (
    RECIPE,
    RecipePath,
    demo_recipe_text,
    json_schema,
    load_recipe,
    parse_recipe,
    resolve_path,
)
from trustboot.release.yamlspec import Field, Node, Str, load_yaml

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
version: 1
name: r1
signer: {key: s1}
entries:
  - name: linux
    kernel: images/vmlinuz
    initrds: [images/initrd.img]
    cmdline: console=ttyS0 quiet
"""


def _err(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        parse_recipe(text, "bad.yaml")
    assert exc.value.exit_code == ExitCode.CONFIG
    return exc.value


def test_embedded_demo_matches_repo_copy() -> None:
    assert demo_recipe_text() == (REPO / "recipes" / "demo.yaml").read_text()


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.entries
    # The printed schema accepts it too (the same table drives both).
    jsonschema.validate(yaml.safe_load(path.read_text()), json_schema())


def test_schema_command_prints_a_valid_json_schema() -> None:
    r = CliRunner().invoke(cli, ["recipe", "schema"])
    assert r.exit_code == 0
    schema = json.loads(r.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["required"]) == {"version", "name", "signer", "entries"}
    assert schema["properties"]["entries"]["items"]["additionalProperties"] is False
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**yaml.safe_load(GOOD), "publish": 1}, schema)


def test_good_recipe_defaults() -> None:
    r = parse_recipe(GOOD, "good.yaml")
    assert r.entries[0].arch == ("bios", "x86_64-efi")
    assert r.entries[0].initrds == (RecipePath("images/initrd.img", "good.yaml:7"),)
    assert r.release.id_template == "{date}-{digest8}"
    assert r.release.min_signer_lifetime.days == 30
    assert r.ca_home.raw == "pki" and r.origin is None and r.ipxe is None


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("", "bad.yaml", "empty"),
        ("a: &x [1, 2]\nb: *x\n", "bad.yaml:1", "anchors and aliases"),
        ("version: 1\nx: !!python/object/apply:os.system [id]\n", "bad.yaml:2", "YAML tag"),
        (GOOD.replace("version: 1", "version: 2"), "bad.yaml:1", "out of range"),
        (GOOD.replace("version: 1", "version: '1'"), "bad.yaml:1", "must be an integer"),
        (GOOD + "publish: true\n", "bad.yaml:9", "unknown key 'publish'"),
        # YAML 1.1 forms other readers take otherwise, and tags on plain values
        (GOOD + "a: 017\n", "bad.yaml:9", "'017' is an integer only in YAML 1.1"),
        (GOOD + "a: 0x10\n", "bad.yaml:9", "is an integer only in YAML 1.1"),
        (GOOD + "a: 1:30\n", "bad.yaml:9", "is an integer only in YAML 1.1"),
        (GOOD + "a: 1_000\n", "bad.yaml:9", "is an integer only in YAML 1.1"),
        (GOOD + "a: on\n", "bad.yaml:9", "'on' is true or false only in YAML 1.1"),
        (GOOD + "a: !!int '5'\n", "bad.yaml:9", "YAML tag tag:yaml.org,2002:int"),
        (GOOD + "a: !!bool 'false'\n", "bad.yaml:9", "YAML tag tag:yaml.org,2002:bool"),
        (GOOD + "a: 2026-11-27\n", "bad.yaml:9", "'2026-11-27' is read as a date"),
        (GOOD.replace("name: r1", "name: /abs"), "bad.yaml:2", "not allowed"),
        (GOOD.replace("name: r1\n", ""), "bad.yaml:1", "needs 'name'"),
        (GOOD.replace("{key: s1}", "{key: s1, colour: red}"), "bad.yaml:3",
         "unknown key 'colour' in signer"),
        (GOOD.replace("{key: s1}", "{name: s1}"), "bad.yaml:3", "signer needs 'key'"),
        (GOOD.replace("{key: s1}", "{key: 'bogus:x'}"), "bad.yaml:3", "unknown key reference"),
        (GOOD.replace("{key: s1}", "{key: 'file:k.pem'}"), "bad.yaml:3", "needs cert"),
        (GOOD.replace("{key: s1}", "{key: s1, hash: md5}"), "bad.yaml:3", "not one of"),
        (GOOD.replace("{key: s1}", "{key: s1, passphrase: {env: A, file: b}}"), "bad.yaml:3",
         "exactly one of file or env"),
        (GOOD.replace("{key: s1}", "{key: s1, passphrase: {env: 'A B'}}"), "bad.yaml:3",
         "not allowed"),
        (GOOD.replace("{key: s1}", "{key: s1, name: 'a ; shell'}"), "bad.yaml:3",
         "cannot go into an iPXE script"),
        (GOOD + "ca: [pki]\n", "bad.yaml:9", "ca must be a mapping"),
        (GOOD + "ca: {home: ''}\n", "bad.yaml:9", "non-empty string"),
        (GOOD + "ipxe: {targets: [bin/evil.efi]}\n", "bad.yaml:9", "not one of"),
        (GOOD + "ipxe: {targets: []}\n", "bad.yaml:9", "needs 1 to"),
        (GOOD + "ipxe: {git: https://x/y}\n", "bad.yaml:9", "needs ipxe.commit"),
        (GOOD + "ipxe: {git: '--upload-pack=touch pwned', commit: " + "a" * 40 + "}\n",
         "bad.yaml:9", "not allowed"),
        (GOOD + "ipxe: {source: src, prebuilt: fw}\n", "bad.yaml:9", "one of source"),
        (GOOD + "ipxe: {commit: xyz, git: 'https://a/b'}\n", "bad.yaml:9", "not allowed"),
        (GOOD + "ipxe: {on_failure: boot}\n", "bad.yaml:9", "not one of"),
        (GOOD + "ipxe: {ntp: 'pool ; shell'}\n", "bad.yaml:9", "not allowed"),
        (GOOD + "ipxe: {serial_console: 'yes'}\n", "bad.yaml:9", "true or false"),
        (GOOD + "origin: {entry: boot.ipxe}\n", "bad.yaml:9", "origin needs 'url'"),
        (GOOD + "origin: {url: 'ftp://x/'}\n", "bad.yaml:9", "not allowed"),
        (GOOD + "origin: {url: 'https://u:pw@x/'}\n", "bad.yaml:9", "holds credentials"),
        (GOOD + "origin: {url: 'https://[zz/'}\n", "bad.yaml:9", "not a valid URL"),
        (GOOD + "origin: {url: 'https://x:1:2/'}\n", "bad.yaml:9", "not a valid URL"),
        (GOOD + "origin: {url: 'https://u:pw@x\uff0fy/'}\n", "bad.yaml:9", "not a valid URL"),
        (GOOD + "origin: {url: 'https://x/', public_url: 'https://[zz/'}\n", "bad.yaml:9",
         "not a valid URL"),
        (GOOD + "origin: {url: 'https://x/', public_url: 'http://x/'}\n", "bad.yaml:9",
         "not allowed"),
        (GOOD + "origin: {url: 'https://x/', public_url: 'https://x:99999/'}\n", "bad.yaml:9",
         "not a valid URL"),
        (GOOD + "origin: {url: 'https://x/', public_url: 'https://x/?q=1'}\n", "bad.yaml:9",
         "query or fragment"),
        (GOOD + "origin: {url: 's3://b/p', endpoint: 'https://k:s3cret@x/'}\n", "bad.yaml:9",
         "holds credentials"),
        (GOOD + "origin: {url: 's3://b/p', endpoint: 'http://x'}\n", "bad.yaml:9",
         "not allowed"),
        (GOOD + "origin: {url: 's3://b/p', endpoint: 'https://k:s3cret@[::1/'}\n",
         "bad.yaml:9", "not a valid URL"),
        (GOOD + "origin: {url: 'https://x/', public_url: 'https://x/${net0/ip}/'}\n",
         "bad.yaml:9", "cannot go into an iPXE script"),
        (GOOD + "origin: {url: 'https://x/', entry: ../boot.ipxe}\n", "bad.yaml:9",
         "not allowed"),
        (GOOD + "origin: {url: 'https://x/', entry: releases/live.ipxe}\n", "bad.yaml:9",
         "inside releases/"),
        (GOOD + "menu: {timeout: -1}\n", "bad.yaml:9", "out of range"),
        (GOOD + "menu: {timeout: 99999}\n", "bad.yaml:9", "out of range"),
        (GOOD + "menu: {title: 'a && boot'}\n", "bad.yaml:9", "cannot go into an iPXE script"),
        (GOOD.replace("name: linux", "name: 'a b'"), "bad.yaml:5", "not allowed"),
        (GOOD.replace("    kernel: images/vmlinuz\n", ""), "bad.yaml:5", "needs 'kernel'"),
        (GOOD.replace("initrds: [images/initrd.img]", "initrds: images/initrd.img"),
         "bad.yaml:7", "must be a list"),
        (GOOD + "  - {name: linux, kernel: k}\n", "bad.yaml:9", "listed twice"),
        (GOOD.replace("cmdline: console=ttyS0 quiet", "arch: [ppc64]"), "bad.yaml:8",
         "not one of"),
        (GOOD.replace("cmdline: console=ttyS0 quiet", "default: 1"), "bad.yaml:8",
         "true or false"),
        (GOOD + "  - {name: b, kernel: k, default: true}\n  - {name: c, kernel: k, default: "
         "true}\n", "bad.yaml:5", "more than one entry"),
        ("version: 1\nname: r\nsigner: {key: s}\nentries: []\n", "bad.yaml:4", "needs 1 to"),
        (GOOD + "release: {id: '{date}'}\n", "bad.yaml:9", "no {digest}"),
        (GOOD + "release: {id: '{digest8}-{whoami}'}\n", "bad.yaml:9", "unknown field"),
        (GOOD + "release: {id: '../{digest8}'}\n", "bad.yaml:9", "not allowed"),
        (GOOD + "release: {id: '-{digest8}'}\n", "bad.yaml:9", "makes ids that are refused"),
        (GOOD + "release: {id: '.{date}-{digest8}'}\n", "bad.yaml:9",
         "makes ids that are refused"),
        (GOOD + "release: {id: '{name}-{digest}-{digest}'}\n", "bad.yaml:9",
         "makes ids that are refused"),
        (GOOD + "release: {min_signer_lifetime: soon}\n", "bad.yaml:9", "not a duration"),
        (GOOD + "release: {retention: 0}\n", "bad.yaml:9", "out of range"),
        (GOOD + "demo: {generate: [{path: x, size: 3TiB}]}\n", "bad.yaml:9", "not a size"),
        ("version: 1\nversion: 1\n", "bad.yaml:2", "appears twice"),
        ("[1, 2\n", "bad.yaml", "not valid YAML"),
        ("- 1\n- 2\n", "bad.yaml:1", "must be a mapping"),
        ("? [a]\n: 1\n", "bad.yaml:1", "keys must be plain strings"),
    ],
)
def test_broken_recipes_name_file_and_line(text: str, where: str, message: str) -> None:
    exc = _err(text)
    assert message in exc.message, exc.message
    assert exc.message.startswith(where + ":") or exc.message.startswith(where + " ") \
        or exc.message == where, exc.message


@pytest.mark.parametrize("field", ["url", "public_url", "endpoint"])
@pytest.mark.parametrize("url", ["https://k:s3cret@x/", "https://k:s3cret@x:99999/",
                                 "https://k:s3cret@[::1/"])
def test_recipe_urls_with_credentials_are_refused_unechoed(field: str, url: str) -> None:
    """The rule `trustboot publish` applies to --public-url and --endpoint-url."""
    origin = {"url": "s3://b/p"} | {field: url}
    exc = _err(GOOD + f"origin: {json.dumps(origin)}\n")
    assert exc.message.startswith("bad.yaml:9: "), exc.message
    assert "s3cret" not in exc.message and f"origin.{field}" in exc.message, exc.message


# Names that collide with the release's own objects pass nothing: refused with the line
# that makes them, before anything is hashed or signed.
@pytest.mark.parametrize("text, where, message", [
    (GOOD.replace("name: linux", "name: release.json"), "bad.yaml:6",
     "'release.json/vmlinuz', inside 'release.json', the name of the release manifest"),
    (GOOD.replace("name: linux", "name: boot.ipxe"), "bad.yaml:6",
     "'boot.ipxe/vmlinuz', inside 'boot.ipxe', the name of the release's entry script"),
    (GOOD.replace("name: linux", "name: release.json.sig"), "bad.yaml:6",
     "inside 'release.json.sig'"),
    (GOOD.replace("name: linux", "name: ipxe.lkrn")
     + "ipxe: {prebuilt: fw, targets: [bin/ipxe.lkrn]}\n", "bad.yaml:6",
     "inside 'ipxe.lkrn', the name of firmware bin/ipxe.lkrn"),
    # the default targets are reserved too (built from --ipxe-source, they are published)
    (GOOD.replace("name: linux", "name: undionly.kpxe.sig"), "bad.yaml:6",
     "the name of firmware bin/undionly.kpxe"),
    (GOOD.replace("images/vmlinuz", "images/.vmlinuz"), "bad.yaml:6",
     "'linux/.vmlinuz', which is refused: a name starting with '.' is hidden"),
    (GOOD.replace("images/initrd.img", "images/vmlinuz.sig"), "bad.yaml:7",
     "'linux/vmlinuz.sig', the name of entries.linux.kernel"),
])
def test_object_names_that_collide_are_refused_with_their_line(text: str, where: str,
                                                              message: str) -> None:
    exc = _err(text)
    assert exc.message.startswith(where + ":"), exc.message
    assert message in exc.message, exc.message
    assert exc.hint is not None and "rename" in exc.hint


def test_recipe_check_refuses_a_colliding_name(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(GOOD.replace("name: linux", "name: release.json"))
    r = CliRunner().invoke(cli, ["recipe", "check", str(recipe)])
    assert r.exit_code == 3 and f"{recipe}:6:" in r.output and "release.json" in r.output, \
        r.output


# Issue 8 items 2 and 3: values that would reach the signed script must be refused, with
# the line, because iPXE has no quoting and splits commands on these.
@pytest.mark.parametrize("cmdline", [
    "quiet && boot", "quiet ; shell", "quiet || boot", "x=${net0/ip}", "a\nchain http://e/x",
    "quiet # comment", "a\tb", "root=\u00e9", "x\\",
])
def test_hostile_cmdline_is_refused_with_its_line(cmdline: str) -> None:
    text = GOOD.replace("cmdline: console=ttyS0 quiet", f"cmdline: {json.dumps(cmdline)}")
    exc = _err(text)
    assert exc.message.startswith("bad.yaml:8: "), exc.message
    assert "cannot go into an iPXE script" in exc.message
    assert "no quoting" in (exc.hint or "")


@pytest.mark.parametrize("title", ["a && boot", "x ; y", "${x}", "t\nimgtrust"])
def test_hostile_entry_title_is_refused(title: str) -> None:
    text = GOOD.replace("    cmdline:", f"    title: {json.dumps(title)}\n    cmdline:")
    assert "cannot go into an iPXE script" in _err(text).message


def test_5000_digit_integer_and_deep_nesting_are_config_errors(tmp_path: Path) -> None:
    exc = _err(GOOD + "menu: {timeout: " + "9" * 5000 + "}\n")
    assert exc.message.startswith("bad.yaml:9: ") and "out of range" in exc.message
    exc = _err("a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nesting deeper" in exc.message and exc.message.startswith("bad.yaml:1")
    exc = _err("a:\n" + "".join("  " * i + "- \n" for i in range(1, 200)))
    assert "nesting deeper" in exc.message
    # Through the CLI: exit 3 with the message, not 70.
    for body in (GOOD + "menu: {timeout: " + "9" * 5000 + "}\n",
                 "a: " + "{b: " * 5000 + "1" + "}" * 5000 + "\n"):
        f = tmp_path / "r.yaml"
        f.write_text(body)
        r = CliRunner().invoke(cli, ["release", str(f), "--dry-run"])
        assert r.exit_code == 3, r.output
        assert "internal error" not in r.output


def test_alias_bomb_is_refused_fast() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]" for i in range(1, 30)]
    assert "anchors and aliases" in _err("\n".join(lines)).message


def test_a_megabyte_of_tiny_values_is_refused_fast() -> None:
    """Within the 1 MiB cap, `x: [0,0,0,...]` (400,000 values) took PyYAML about a minute
    and ~370 MB before the unknown key was even looked at: now the count of values stops
    the parse early, with the line where it went over."""
    import time

    text = "version: 1\nx: [" + ",".join("0" for _ in range(400_000)) + "]\n"
    assert len(text) < 1 << 20
    start = time.monotonic()
    exc = _err(text)
    assert "more than 20000 values" in exc.message and exc.message.startswith("bad.yaml:2")
    assert time.monotonic() - start < 20
    # the largest recipe the table allows (64 entries of 32 initrds each) is not near it
    entry = ("  - name: e{i}\n    title: t\n    kernel: k\n    cmdline: c\n"
             "    initrds: [" + ", ".join(f"i{n}" for n in range(32)) + "]\n")
    big = GOOD.split("entries:")[0] + "entries:\n" + "".join(
        entry.format(i=i) for i in range(64))
    parse_recipe(big, "big.yaml")


def test_unreadable_recipe_files(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (1 << 20) + b"\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_recipe(big)
    # refused by its size before it is read: a sparse 64 MiB file costs no memory
    import tracemalloc

    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as fh:
        fh.truncate(64 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="larger than"):
            load_recipe(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_recipe(binary)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    for special in ("/dev/zero", str(tmp_path)):
        with pytest.raises(ConfigError, match=r"not a regular file|directory"):
            load_recipe(Path(special))
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_recipe(fifo)  # must not block
    r = CliRunner().invoke(cli, ["release", "/dev/zero", "--dry-run"])
    assert r.exit_code == 3 and "not a regular file" in r.output


# --- paths: inside the recipe's directory after resolving symlinks -------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    d = tmp_path / "recipes"
    (d / "images").mkdir(parents=True)
    (d / "images" / "vmlinuz").write_bytes(b"k")
    (tmp_path / "secret.txt").write_text("secret")
    (d / "images" / "link").symlink_to(tmp_path / "secret.txt")
    (d / "images" / "inner").symlink_to("vmlinuz")
    return d


def _recipe_in(tree: Path, text: str = GOOD) -> object:
    f = tree / "r.yaml"
    f.write_text(text)
    return load_recipe(f)


@pytest.mark.parametrize(("raw", "message"), [
    ("../secret.txt", "outside the recipe's directory"),
    ("/etc/shadow", "outside the recipe's directory"),
    ("images/link", "outside the recipe's directory"),  # a symlink that escapes
    ("images/missing", "does not exist"),
    ("images", "not a regular file"),
])
def test_path_rules(tree: Path, raw: str, message: str) -> None:
    recipe = _recipe_in(tree)
    with pytest.raises(ConfigError) as exc:
        resolve_path(recipe, RecipePath(raw, "r.yaml:6"), "entries.linux.kernel")  # type: ignore[arg-type]
    assert exc.value.message.startswith("r.yaml:6: ") and message in exc.value.message
    if "outside" in message:
        assert "--allow-outside" in (exc.value.hint or "")


def test_path_inside_and_allowed_outside(tree: Path) -> None:
    recipe = _recipe_in(tree)
    inner = resolve_path(recipe, RecipePath("images/inner", "x"), "k")  # type: ignore[arg-type]
    assert inner == (tree / "images" / "vmlinuz").resolve()
    outside = resolve_path(recipe, RecipePath("../secret.txt", "x"), "k",  # type: ignore[arg-type]
                           allow_outside=[tree.parent])
    assert outside.read_text() == "secret"


def test_release_refuses_etc_shadow_before_creating_anything(tree: Path) -> None:
    text = GOOD.replace("kernel: images/vmlinuz", "kernel: /etc/shadow")
    f = tree / "r.yaml"
    f.write_text(text)
    r = CliRunner().invoke(cli, ["release", str(f), "--dry-run"])
    assert r.exit_code == 3, r.output
    assert "r.yaml:6: entries.linux.kernel '/etc/shadow' resolves to" in r.output
    assert "outside the recipe's directory" in r.output
    assert not (tree / "pki").exists()


def test_recipe_check_command() -> None:
    r = CliRunner().invoke(cli, ["recipe", "check", str(REPO / "recipes" / "multiarch.yaml"),
                                 "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["entries"] == ["debian-amd64", "rescue-amd64", "debian-arm64"]
    r = CliRunner().invoke(cli, ["recipe", "check", str(REPO / "recipes" / "webdav.yaml")])
    assert r.exit_code == 0 and r.stdout.endswith(": ok (webdav-example, 1 entry)\n"), r.output


def test_release_help_examples_run_as_shown() -> None:
    # the multiarch recipe's CA home is ../pki: its examples need --allow-outside pki, and
    # a continued example line stays a shell continuation in the help text
    out = CliRunner().invoke(cli, ["release", "--help"]).output
    assert "recipes/multiarch.yaml --allow-outside pki --dry-run\n" in out
    assert "--allow-outside pki \\\n        --origin-ca-file pki/ca.crt --passphrase-env " \
           "TB_SIGNER_PW --json" in out


# A value of the wrong type (or out of bounds) is named with its file:line and comes with a
# hint: what the key holds, what it takes, and a line that would be accepted.
@pytest.mark.parametrize(
    ("text", "where", "hint"),
    [
        (GOOD + "menu: {timeout: soon}\n", "bad.yaml:9",
         "seconds before the default entry boots; write a whole number from 0 to 3600, "
         "e.g. `timeout: 10`"),
        (GOOD + "menu: {timeout: 99999}\n", "bad.yaml:9", "e.g. `timeout: 10`"),
        (GOOD.replace("version: 1", "version: '1'"), "bad.yaml:1", "e.g. `version: 1`"),
        (GOOD + "ipxe: {serial_console: 'yes'}\n", "bad.yaml:9",
         "write true or false, e.g. `serial_console: true`"),
        (GOOD.replace("initrds: [images/initrd.img]", "initrds: images/initrd.img"),
         "bad.yaml:7", "write a list (`[a, b]`, or one `- item` per line), "
         "e.g. `initrds: [images/initrd.img]`"),
        (GOOD.replace("{key: s1}", "s1"), "bad.yaml:3",
         "e.g. `signer: {key: boot-signer}`"),
        (GOOD + "ca: {home: 5}\n", "bad.yaml:9", "write text, e.g. `home: pki`"),
        (GOOD.replace("cmdline: console=ttyS0 quiet", "arch: [ppc64]"), "bad.yaml:8",
         "write one of bios, x86_64-efi, arm64-efi, e.g. `- bios`"),
        (GOOD + "release: {min_signer_lifetime: [30]}\n", "bad.yaml:9",
         "e.g. `min_signer_lifetime: 30d`"),
        ("- 1\n", "bad.yaml:1", "e.g. `version: 1`"),
    ],
)
def test_type_errors_say_what_value_is_expected(text: str, where: str, hint: str) -> None:
    exc = _err(text)
    assert exc.message.startswith(where + ":"), exc.message
    assert hint in (exc.hint or ""), exc.hint


def _fields(f: Field, what: str) -> list[tuple[str, Field]]:
    out = [(what, f)]
    if f.item is not None:
        out += _fields(f.item, f"{what}[0]")
    for key, sub in f.fields.items():
        out += _fields(sub, key if what == "the recipe" else f"{what}.{key}")
    return out


FIELDS = _fields(RECIPE, "the recipe")


@pytest.mark.parametrize(("what", "field"), FIELDS, ids=[w for w, _ in FIELDS])
def test_every_key_has_a_type_hint_whose_example_it_accepts(what: str, field: Field) -> None:
    """No key's wrong-type error goes without a hint, and the example in it is a value the
    key really takes (a hint that is refused in turn would be worse than none)."""
    wrong = "text" if field.kind in ("list", "map") else ["a list"]
    with pytest.raises(ConfigError) as exc:
        field.check(Node(wrong, "bad.yaml:1"), what)
    assert "e.g. `" in (exc.value.hint or ""), exc.value.hint
    example = load_yaml(f"v: {field.sample()}\n", "example.yaml").value["v"]
    field.check(example, what)


def test_a_free_text_field_cannot_be_declared_without_an_example() -> None:
    with pytest.raises(ValueError, match="needs an example"):
        Str("a label")
    assert Str("a label", example="boot").sample() == "boot"
    assert Str(enum=("a", "b")).sample() == "a"
