"""`trustboot release` to a real nginx WebDAV origin over TLS (client-certificate writes):
a release, a second release, a rollback; then `trustboot audit`, run in a network
namespace against the published release manifest, finds the boot-file mismatch when a
rogue DHCP server offers its own undionly.kpxe."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.audit.netns import Segment, missing_tools
from tests.publish.conftest import Nginx, Pki, anon_get
from tests.release.lab import make_lab
from trustboot.cli.main import cli

GOOD_FIRMWARE = b"\xeb\x3c good undionly.kpxe stand-in " * 100
EVIL_FIRMWARE = b"\xeb\x3c evil undionly.kpxe " * 100


def _release(recipe: Path) -> dict[str, object]:
    r = CliRunner().invoke(cli, ["release", str(recipe), "--json"])
    assert r.exit_code == 0, r.output
    data: dict[str, object] = json.loads(r.stdout)
    return data


def test_release_second_release_rollback_and_audit(pki: Pki, nginx: Nginx, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRUSTBOOT_IPXE_SRC", raising=False)
    d = tmp_path / "lab"
    d.mkdir()
    first = _release(make_lab(d, pki, nginx.url, firmware=GOOD_FIRMWARE, images={
        "vmlinuz": b"kernel one " * 3000, "initrd.img": b"initrd " * 1000}))
    r1 = str(first["release"])
    entry1 = anon_get(nginx.url + "boot.ipxe", pki).content
    assert f"releases/{r1}/linux/vmlinuz".encode() in entry1
    assert anon_get(f"{nginx.url}releases/{r1}/undionly.kpxe", pki).content == GOOD_FIRMWARE
    stages = {s["stage"]: s["status"] for s in first["stages"]}  # type: ignore[attr-defined]
    assert stages["build"] == "skipped" and stages["verify"] == "done"

    again = _release(make_lab(d, pki, nginx.url, images={"vmlinuz": b"kernel one " * 3000}))
    assert again["release"] == r1 and again["uploaded"] == []

    second = _release(make_lab(d, pki, nginx.url, images={"vmlinuz": b"kernel two " * 3000}))
    r2 = str(second["release"])
    assert r2 != r1
    assert second["publish"]["previous_live"] == r1  # type: ignore[index]
    assert f"releases/{r2}/".encode() in anon_get(nginx.url + "boot.ipxe", pki).content

    rb = CliRunner().invoke(cli, [
        "publish", "rollback", nginx.url, r1, "--pki", str(pki.dir), "--client-cert",
        "publisher", "--client-key-passphrase-file", str(pki.key_pass), "--json"])
    assert rb.exit_code == 0, rb.output
    assert anon_get(nginx.url + "boot.ipxe", pki).content == entry1

    # The audit, against the manifest the origin serves for the live release.
    reason = missing_tools()
    if reason:
        pytest.skip(f"audit part: {reason}")
    manifest = tmp_path / "release.json"
    manifest.write_bytes(anon_get(f"{nginx.url}releases/{r1}/release.json", pki).content)
    names = {f["name"] for f in json.loads(manifest.read_text())["files"]}
    assert "undionly.kpxe" in names
    workdir = tmp_path / "segment"
    workdir.mkdir()
    rogue_root = workdir / "rogue-tftp"
    rogue_root.mkdir()
    (rogue_root / "undionly.kpxe").write_bytes(EVIL_FIRMWARE)
    with Segment(workdir) as seg:
        rogue = seg.add_host("rogue", 2)
        seg.start_dnsmasq(rogue, "--dhcp-range=192.0.2.200,192.0.2.249,255.255.255.0,10m",
                          "--dhcp-boot=undionly.kpxe", "--enable-tftp",
                          f"--tftp-root={rogue_root}")
        client = seg.add_host("client", 50)
        run = seg.audit(client, "--window", "4", "--json", "--arch", "bios",
                        "--release-manifest", str(manifest))
    assert run.returncode != 70, run.stderr
    findings = run.json["findings"]
    mismatch = [f for f in findings if f["id"] == "boot-file-mismatch"]
    assert mismatch, (run.stderr, [f["id"] for f in findings])
    assert mismatch[0]["subject"] == "tftp://192.0.2.2/undionly.kpxe"
    assert mismatch[0]["evidence"]["expected_sha256"] == [
        hashlib.sha256(GOOD_FIRMWARE).hexdigest()]


def _dry_plan(recipe: Path) -> dict[str, Any]:
    r = CliRunner().invoke(cli, ["release", str(recipe), "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    plan: dict[str, Any] = json.loads(r.stdout)["plan"]
    return plan


def test_dry_run_reads_the_webdav_origin_as_a_real_run(pki: Pki, nginx: Nginx, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A dry run of a release already on the WebDAV origin lists nothing to upload (it
    listed every object), and what it finds changed there is what a real run uploads."""
    monkeypatch.delenv("TRUSTBOOT_IPXE_SRC", raising=False)
    d = tmp_path / "lab"
    d.mkdir()
    recipe = make_lab(d, pki, nginx.url, images={"vmlinuz": b"kernel dry " * 3000,
                                                 "initrd.img": b"initrd dry " * 1000})
    plan = _dry_plan(recipe)
    assert "undionly.kpxe.sig" in plan["upload"]
    done = _release(recipe)
    assert sorted(done["uploaded"]) == plan["upload"]  # type: ignore[call-overload]
    again = _dry_plan(recipe)
    assert again["release"] == plan["release"]
    assert again["upload"] == []  # every object was listed here
    assert plan["on_origin"] == [] and again["on_origin"] == plan["upload"]
    # the prebuilt firmware changed on the origin (another size): only it goes up again
    served = nginx.root / "releases" / plan["release"] / "undionly.kpxe"
    served.write_bytes(b"shorter")
    changed = _dry_plan(recipe)
    assert changed["upload"] == ["undionly.kpxe"]
    assert _release(recipe)["uploaded"] == ["undionly.kpxe"]
