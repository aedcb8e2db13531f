"""A lone surrogate ("\\ud800" in a double-quoted YAML string) is no character: refused
while the recipe is read, at its line, exit 3 (it reached a path or a message as exit 70)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.release.conftest import Lab, release
from trustboot.errors import ConfigError, ExitCode
from trustboot.publish.origin import check_url
from trustboot.release.recipe import parse_recipe

BASE = """\
version: 1
name: r1
signer: {key: s1%s}
%s
entries:
  - name: linux
    kernel: images/vmlinuz
"""


@pytest.mark.parametrize(("signer", "extra", "line"), [
    ("", 'ca: {home: "p\\ud800"}', 4),
    (', passphrase: {file: "pw\\udfff"}', "", 3),
    ("", 'ipxe: {prebuilt: "fw\\ud800"}', 4),
    ("", 'origin: {url: "s3://b\\ud800/p"}', 4),
    ("", 'origin: {url: "https://h/", public_url: "https://h/\\udc80"}', 4),
    ("", '"k\\ud800": 1', 4),
])
def test_a_lone_surrogate_is_refused_at_its_line(signer: str, extra: str, line: int) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_recipe(BASE % (signer, extra), "bad.yaml")
    assert exc.value.exit_code == ExitCode.CONFIG
    assert exc.value.message.startswith(f"bad.yaml:{line}: ")
    assert "surrogate" in exc.value.message


def test_release_of_such_a_recipe_is_exit_3(lab: Lab, no_ipxe_build: None) -> None:
    recipe = lab.recipe(name="s.yaml")
    text = recipe.read_text().replace("ca: {home: pki}", 'ca: {home: "p\\ud800"}')
    recipe.write_text(text)
    for args in (("--dry-run",), ()):
        code, out, err = release(str(recipe), *args)
        assert code == 3, (out, err)
        assert "s.yaml:" in err and "surrogate" in err
    assert not any(lab.origin.iterdir())


def test_check_url_refuses_a_surrogate() -> None:
    with pytest.raises(ConfigError, match="control or format"):
        check_url("s3://b\ud800/p", "origin.url")


def test_a_recipe_file_is_read_from_its_path(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(BASE % ("", 'origin: {url: "s3://b\\ud800/p"}'))
    code, _, err = release(str(tmp_path / "r.yaml"), "--dry-run")
    assert code == 3 and "r.yaml:4:" in err, err
