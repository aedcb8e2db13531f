"""`ipxe.prebuilt`: every file taken from the directory (each target, its manifest.json)
follows the rule of every recipe path, and what is published is the file checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.release.conftest import Lab
from trustboot.cli.main import cli

FIRMWARE = b"\xeb\x3c prebuilt firmware " * 200
PREBUILT = "ipxe: {prebuilt: fw, targets: [bin/ipxe.lkrn]}"


@pytest.fixture(autouse=True)
def _no_ipxe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TRUSTBOOT_IPXE_SRC", raising=False)
    monkeypatch.setenv("TRUSTBOOT_CACHE_DIR", str(tmp_path / "cache"))


def release(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, ["release", *args])
    return r.exit_code, r.stdout, r.stderr


def _fw(lab: Lab) -> Path:
    d = lab.dir / "fw" / "bin"
    d.mkdir(parents=True)
    return d


def _secret(tmp_path: Path, name: str, data: bytes) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    path = outside / name
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_a_prebuilt_target_linked_outside_is_refused(lab: Lab, tmp_path: Path) -> None:
    secret = _secret(tmp_path, "secret", b"host secret " * 100)
    (_fw(lab) / "ipxe.lkrn").symlink_to(secret)
    recipe = lab.recipe(ipxe=PREBUILT)
    for args in (["--dry-run"], []):
        code, _, err = release(str(recipe), *args)
        assert code == 3, err
        assert "r.yaml:" in err and "ipxe.prebuilt bin/ipxe.lkrn" in err
        assert "outside the recipe's directory" in err
    assert not list(lab.origin.iterdir())
    # the operator may allow that root explicitly
    code, out, err = release(str(recipe), "--allow-outside", str(secret.parent), "--json")
    assert code == 0, err
    rid = json.loads(out)["release"]
    assert (lab.origin / "releases" / rid / "ipxe.lkrn").read_bytes() == secret.read_bytes()


def test_a_prebuilt_manifest_linked_outside_is_refused(lab: Lab, tmp_path: Path) -> None:
    (_fw(lab) / "ipxe.lkrn").write_bytes(FIRMWARE)
    (lab.dir / "fw" / "manifest.json").symlink_to(
        _secret(tmp_path, "x.json", b'{"private": "outside the recipe"}'))
    code, _, err = release(str(lab.recipe(ipxe=PREBUILT)))
    assert code == 3, err
    assert "ipxe.prebuilt manifest.json" in err and "outside the recipe's directory" in err
    assert not list(lab.origin.iterdir())


def test_a_prebuilt_target_that_is_not_a_regular_file_is_refused(lab: Lab) -> None:
    (_fw(lab) / "ipxe.lkrn").mkdir()
    code, _, err = release(str(lab.recipe(ipxe=PREBUILT)), "--dry-run")
    assert code == 3 and "not a regular file" in err, err


def test_a_link_inside_the_directory_publishes_its_target_copied_once(lab: Lab) -> None:
    """A link that stays inside is fine: its target's bytes are published."""
    fw = _fw(lab)
    (lab.dir / "fw" / "real.lkrn").write_bytes(FIRMWARE)
    (fw / "ipxe.lkrn").symlink_to("../real.lkrn")
    code, out, err = release(str(lab.recipe(ipxe=PREBUILT)), "--json")
    assert code == 0, err
    data = json.loads(out)
    rel = lab.origin / "releases" / data["release"]
    assert (rel / "ipxe.lkrn").read_bytes() == FIRMWARE
    assert not (rel / "ipxe.lkrn").is_symlink()
