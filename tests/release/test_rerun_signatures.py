"""A release id that is on the origin but not live (a killed run, or a rollback since) is
published again by re-running its recipe. Its signatures must then be the ones the origin
already holds: an ECDSA signature differs on every signing, and a release is immutable."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.release.conftest import PASSPHRASE, SIGNER, Lab, origin_lost_after_the_claim
from trustboot.ca.store import CertificateAuthority
from trustboot.cli.main import cli
from trustboot.secrets import constant

pytestmark = pytest.mark.usefixtures("no_ipxe_build")


def _release(recipe: Path) -> tuple[int, dict[str, object], str]:
    r = CliRunner().invoke(cli, ["release", str(recipe), "--json"])
    return r.exit_code, json.loads(r.stdout) if r.exit_code == 0 else {}, r.stderr


def _ec_recipe(lab: Lab) -> Path:
    pw = constant(PASSPHRASE)
    CertificateAuthority.open(lab.pki).issue("codesign", "ec-signer", pw, pw,
                                             key_type="ec-p256", now=dt.datetime.now(dt.UTC))
    text = lab.recipe().read_text().replace(f"key: {SIGNER},", "key: ec-signer,")
    recipe = lab.dir / "ec.yaml"
    recipe.write_text(text)
    return recipe


def test_ecdsa_release_switched_back_to_by_rerunning_its_recipe(lab: Lab) -> None:
    recipe = _ec_recipe(lab)
    kernel = lab.dir / "images" / "vmlinuz"
    first_kernel = kernel.read_bytes()
    code, first, err = _release(recipe)
    assert code == 0, err
    kernel.write_bytes(b"another kernel " * 3000)
    code, second, err = _release(recipe)
    assert code == 0, err
    assert second["release"] != first["release"]
    kernel.write_bytes(first_kernel)  # back to the first release's inputs: the same id
    code, again, err = _release(recipe)
    assert code == 0, err
    assert again["release"] == first["release"]
    assert again["uploaded"] == []  # every object (signatures too) was already there
    live = (lab.origin / "boot.ipxe").read_bytes()
    assert live == (lab.origin / "releases" / str(first["release"]) / "boot.ipxe").read_bytes()


def test_ecdsa_release_killed_after_claiming_its_id_completes_on_rerun(lab: Lab) -> None:
    recipe = _ec_recipe(lab)
    with origin_lost_after_the_claim():
        r = CliRunner().invoke(cli, ["release", str(recipe)])
    assert r.exit_code == 1, r.stderr
    assert list((lab.origin / "releases").glob("*/release.json"))  # the id is claimed
    assert not (lab.origin / "boot.ipxe").exists()
    code, data, err = _release(recipe)
    assert code == 0, err
    rid = str(data["release"])
    assert (lab.origin / "boot.ipxe").read_bytes() == \
        (lab.origin / "releases" / rid / "boot.ipxe").read_bytes()


def test_rerun_republishes_the_claimed_manifest_as_it_is_on_the_origin(lab: Lab) -> None:
    """The same inputs released again while another release is live: the release.json the
    origin holds is the one published and reported, whatever changed in fields outside the
    release's content (here the prebuilt firmware's build record, not part of the id)."""
    fw = lab.dir / "fw" / "bin"
    fw.mkdir(parents=True)
    (fw / "undionly.kpxe").write_bytes(b"\xeb\x3c firmware " * 200)
    recipe = lab.recipe(ipxe="ipxe: {prebuilt: fw, targets: [bin/undionly.kpxe]}")
    kernel = lab.dir / "images" / "vmlinuz"
    first_kernel = kernel.read_bytes()
    code, first, err = _release(recipe)
    assert code == 0, err
    rid = str(first["release"])
    claimed = (lab.origin / "releases" / rid / "release.json").read_bytes()
    kernel.write_bytes(b"another kernel " * 3000)
    code, _, err = _release(recipe)
    assert code == 0, err
    kernel.write_bytes(first_kernel)
    # a build record for the same binary (checked against it), written after the release
    (lab.dir / "fw" / "manifest.json").write_text(json.dumps({
        "trustboot_ipxe_build": 1, "trust": [], "note": "written after the release",
        "outputs": [{"target": "bin/undionly.kpxe",
                     "sha256": hashlib.sha256((fw / "undionly.kpxe").read_bytes()).hexdigest()}]}))
    code, again, err = _release(recipe)
    assert code == 0, err
    assert again["release"] == rid
    assert (lab.origin / "releases" / rid / "release.json").read_bytes() == claimed
    assert again["manifest"] == json.loads(claimed)


def test_a_rerun_never_signs_claims_the_origin_wrote_into_the_manifest(lab: Lab) -> None:
    """Someone who can write the origin but has no signing key edits a claimed release's
    release.json outside its content (the iPXE build record: root-promotion evidence once
    signed; ca_sha256) and removes its signature. Re-running that release's recipe must
    not sign those claims: the run is refused and release.json.sig is not replaced."""
    kernel = lab.dir / "images" / "vmlinuz"
    first_kernel = kernel.read_bytes()
    code, first, err = _release(lab.recipe())
    assert code == 0, err
    rid = str(first["release"])
    kernel.write_bytes(b"another kernel " * 3000)
    code, _, err = _release(lab.recipe())
    assert code == 0, err
    manifest = lab.origin / "releases" / rid / "release.json"
    forged = json.loads(manifest.read_text())
    forged["ca_sha256"] = "ab" * 32
    forged["ipxe"] = {"note": "forged: the fleet trusts the new root"}
    manifest.write_text(json.dumps(forged, indent=2, sort_keys=True) + "\n")
    sig = manifest.with_name("release.json.sig")
    sig.unlink()
    kernel.write_bytes(first_kernel)
    code, _, err = _release(lab.recipe())
    assert code == 4, err
    assert "release.json" in err and "not sign" in err
    assert not sig.exists()
