"""Two recipes on one origin (production at boot.ipxe, a staging menu beside it, as the
README allows): neither can take the other's entry pair, and neither's retention prunes
the other's releases. A file:// origin served over HTTPS on 127.0.0.1 (the lab)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.release.conftest import Lab, release

pytestmark = pytest.mark.usefixtures("no_ipxe_build")


def _staging(lab: Lab, *, entry: str, retention: int | None = None) -> Path:
    """The staging recipe: the lab's, named staging, at ``entry`` on the same origin."""
    keep = f", retention: {retention}" if retention else ""
    path = lab.recipe(name="staging.yaml",
                      release="release: {id: '{name}-{digest12}', min_signer_lifetime: 30d"
                              + keep + "}")
    text = path.read_text().replace("name: lab\n", "name: staging\n", 1)
    text = text.replace("ca_file: pki/ca.crt}", f"ca_file: pki/ca.crt, entry: {entry}}}")
    path.write_text(text)
    return path


def _files(origin: Path) -> dict[str, bytes]:
    return {str(p.relative_to(origin)): p.read_bytes() for p in sorted(origin.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def test_a_staging_recipe_cannot_take_productions_signature_as_its_entry(lab: Lab) -> None:
    """The review's case: `origin.entry: boot.ipxe.sig` wrote the staging script over
    production's signature (every machine then failed imgverify) and its retention
    deleted production's live release, exit 0. Now the recipe is refused as it is read
    (exit 3, file:line, the fix), dry run or not, and the origin is untouched."""
    code, out, err = release(str(lab.recipe()), "--json")
    assert code == 0, err
    prod = json.loads(out)["release"]
    before = _files(lab.origin)
    staging = _staging(lab, entry="boot.ipxe.sig", retention=1)
    line = next(i for i, text in enumerate(staging.read_text().splitlines(), 1)
                if "origin:" in text)
    for args in ([], ["--dry-run"]):
        code, out, err = release(str(staging), *args)
        assert code == 3, err
        assert f"staging.yaml:{line}: origin.entry 'boot.ipxe.sig' is refused: it ends " \
               "in .sig" in err
        assert "not ending in .sig" in err
    assert _files(lab.origin) == before
    assert f"releases/{prod}/".encode() in (lab.origin / "boot.ipxe").read_bytes()


def _ids(lab: Lab) -> list[str]:
    return sorted(p.name for p in (lab.origin / "releases").iterdir())


def _run(recipe: Path) -> dict[str, Any]:
    code, out, err = release(str(recipe), "--json")
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_one_recipes_retention_never_prunes_another_recipes_releases(lab: Lab) -> None:
    """The review's case: production released twice (its older release is its rollback
    target), then a staging recipe at staging.ipxe with retention 1 deleted it. Now each
    recipe's retention counts the releases of its own entry path only."""
    kernel = lab.dir / "images" / "vmlinuz"
    prod = lab.recipe(release="release: {id: '{name}-{digest12}', retention: 2}")
    first = _run(prod)["release"]
    kernel.write_bytes(b"kernel v2 " * 5000)
    second = _run(prod)["release"]
    staging = _staging(lab, entry="staging.ipxe", retention=1)
    s1 = _run(staging)
    assert s1["pruned"] == []
    assert _ids(lab) == sorted([first, second, s1["release"]])
    kernel.write_bytes(b"kernel v3 " * 5000)
    s2 = _run(staging)
    assert s2["pruned"] == [s1["release"]]  # its own older release
    assert _ids(lab) == sorted([first, second, s2["release"]])
    # production's retention of 2: its third release prunes its first, not staging's
    kernel.write_bytes(b"kernel v4 " * 5000)
    third = _run(prod)
    assert third["pruned"] == [first]
    assert _ids(lab) == sorted([second, third["release"], s2["release"]])
    assert f"releases/{third['release']}/".encode() in (lab.origin / "boot.ipxe").read_bytes()
    assert f"releases/{s2['release']}/".encode() in \
        (lab.origin / "staging.ipxe").read_bytes()
    manifest = json.loads((lab.origin / "releases" / str(s2["release"]) /
                           "release.json").read_text())
    assert manifest["entry_path"] == "staging.ipxe"


def test_a_large_signed_object_beside_the_releases_does_not_fail_the_release(
        lab: Lab) -> None:
    """fw/installer.iso (20 MB) and its .sig at the origin root: a release with retention
    switched live, then failed with exit 1 and `{"error": "TooLarge", "hint": null}`
    (prune read the image as an entry pair). Now it releases, prunes and verifies."""
    (lab.origin / "fw").mkdir()
    with open(lab.origin / "fw/installer.iso", "wb") as fh:
        fh.truncate(20_000_000)
    (lab.origin / "fw/installer.iso.sig").write_bytes(b"0\x82 a signature")
    kernel = lab.dir / "images" / "vmlinuz"
    recipe = lab.recipe(release="release: {id: '{name}-{digest12}', retention: 1}")
    first = _run(recipe)
    assert first["pruned"] == [] and first["warnings"] == []
    kernel.write_bytes(b"kernel v2 " * 5000)
    second = _run(recipe)
    assert second["pruned"] == [first["release"]] and second["warnings"] == []
    assert _ids(lab) == [second["release"]]
    assert [s["status"] for s in second["stages"]][-1] == "done"  # verify


def test_a_prune_that_fails_after_the_switch_is_a_warning_with_the_result(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pruning runs once the entry is switched: whatever makes it fail then, the release
    is live. The run prints its result (exit 0, as for any published and verified
    release), the prune's error and hint as a warning (JSON `warnings`, a `publish`
    warning line on stderr) with the command that prunes later, and the verify stage
    still runs."""
    from trustboot.errors import OperationalError
    from trustboot.release import pipeline

    def failing(*_a: object, **_k: object) -> list[str]:
        raise OperationalError("cannot delete releases/x/vmlinuz: Permission denied",
                               hint="check the origin's permissions")

    monkeypatch.setattr(pipeline, "prune", failing)
    recipe = lab.recipe(release="release: {id: '{name}-{digest12}', retention: 1}")
    code, out, err = release(str(recipe), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["pruned"] == []
    [warning] = doc["warnings"]
    assert f"release {doc['release']} is published and boot.ipxe switched to it" in warning
    assert "Permission denied" in warning and "check the origin's permissions" in warning
    assert f"trustboot publish prune file://{lab.origin}" in warning
    assert "--keep 1 --entry-path boot.ipxe" in warning
    assert [(s["stage"], s["status"]) for s in doc["stages"]][-2:] == [
        ("publish", "warning"), ("verify", "done")]
    code, out, err = release(str(recipe))  # the re-run, without --json: on stderr
    assert code == 0, err
    assert "publish  warning: release" in err and "live at" in out
