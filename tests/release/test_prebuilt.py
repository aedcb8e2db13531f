"""`ipxe.prebuilt`: every file taken from the directory (each target, its manifest.json)
follows the rule of every recipe path, and what is published is the file checked."""

from __future__ import annotations

import hashlib
import json
import lzma
import os
from pathlib import Path
from typing import Any

import pytest

from tests.release.conftest import Lab, release
from trustboot.ipxe.inputs import collect_trust

FIRMWARE = b"\xeb\x3c prebuilt firmware " * 200
PREBUILT = "ipxe: {prebuilt: fw, targets: [bin/ipxe.lkrn]}"


pytestmark = pytest.mark.usefixtures("no_ipxe_build")



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
    # the operator may allow that root explicitly; what is published world-readable must
    # be readable by others already (a 0600 file was not meant to be public)
    code, out, err = release(str(recipe), "--allow-outside", str(secret.parent), "--json")
    assert code == 3 and "not readable by others" in err and "chmod o+r" in err, err
    assert not list(lab.origin.iterdir())
    secret.chmod(0o644)
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


# --- the build record (manifest.json) beside prebuilt firmware ---------------------------


def _root_fingerprint(lab: Lab) -> str:
    return collect_trust(lab.pki, [], []).trust[0].fingerprint


def _record(targets: dict[str, bytes], trust: list[str]) -> str:
    return json.dumps({
        "trustboot_ipxe_build": 1, "targets": sorted(targets),
        "trust": [{"sha256": fp} for fp in trust],
        "outputs": [{"target": t, "sha256": hashlib.sha256(data).hexdigest(),
                     "size": len(data), "trust_check": {"trust": {fp: True for fp in trust}}}
                    for t, data in targets.items()]})


def _bios_image(payload: bytes) -> bytes:
    """A BIOS image as iPXE's zbin makes one: an unpacked prefix, then the image packed
    as raw LZMA1 (lc=2, lp=0, pb=0, preset 9e)."""
    filters = [{"id": lzma.FILTER_LZMA1, "lc": 2, "lp": 0, "pb": 0,
                "preset": 9 | lzma.PRESET_EXTREME}]
    packed = lzma.compress(payload, format=lzma.FORMAT_RAW, filters=filters)
    return b"\xeb\x3c prefix " + bytes(range(256)) * 8 + packed


def _published_record(lab: Lab, out: str) -> Any:
    rid = json.loads(out)["release"]
    return json.loads((lab.origin / "releases" / rid / "release.json").read_text())["ipxe"]


def _nothing_published(lab: Lab) -> bool:
    return not (lab.origin / "boot.ipxe").exists() and \
        not list(lab.origin.glob("releases/*/release.json"))


def test_a_build_record_claiming_trust_the_binary_lacks_is_refused(lab: Lab) -> None:
    """The attack: a record listing the published firmware's very sha256 and claiming it
    trusts a root (the next one, in a rotation) that is nowhere in the binary. Signed into
    release.json, `ca rotate root promote --from-origin` would take it as evidence."""
    (_fw(lab) / "ipxe.lkrn").write_bytes(_bios_image(b"no trust anchor here " * 500))
    (lab.dir / "fw" / "manifest.json").write_text(
        _record({"bin/ipxe.lkrn": (lab.dir / "fw/bin/ipxe.lkrn").read_bytes()},
                [_root_fingerprint(lab)]))
    code, _, err = release(str(lab.recipe(ipxe=PREBUILT)))
    assert code == 4, err
    assert "manifest.json" in err and "not in the binary" in err
    assert _nothing_published(lab)


@pytest.mark.parametrize("record, message", [
    ('{"note": "not a build manifest"}', "not a manifest of `trustboot ipxe build`"),
    ("not JSON", "is not valid JSON"),
    ("other sha256", "another sha256 than the file published"),
    ("more targets", "not the firmware published"),
])
def test_a_build_record_of_other_binaries_is_refused(lab: Lab, record: str,
                                                     message: str) -> None:
    (_fw(lab) / "ipxe.lkrn").write_bytes(FIRMWARE)
    if record == "other sha256":
        record = _record({"bin/ipxe.lkrn": b"other firmware"}, [])
    elif record == "more targets":
        record = _record({"bin/ipxe.lkrn": FIRMWARE, "bin/undionly.kpxe": b"unpublished"}, [])
    (lab.dir / "fw" / "manifest.json").write_text(record)
    code, _, err = release(str(lab.recipe(ipxe=PREBUILT)))
    assert code == 4, err
    assert message in err
    assert _nothing_published(lab)


def _record_with(extra: str) -> str:
    """A record true of FIRMWARE with one more top-level member, written as raw JSON."""
    return _record({"bin/ipxe.lkrn": FIRMWARE}, [])[:-1] + f", {extra}}}"


@pytest.mark.parametrize("extra, message", [
    # 5000 levels made Python's parser raise RecursionError: exit 70 (the message depends
    # on how deep the interpreter's parser goes)
    ('"note": ' + "[" * 5000 + "]" * 5000, "nested"),
    # these passed the check, were copied into release.json and failed after signing,
    # naming a temporary file instead of this one
    ('"note": ' + "[" * 100 + "]" * 100, "nested deeper than 16 levels"),
    ('"note": NaN', "NaN is not a JSON number"),
    ('"source": ' + "[" * 30 + "]" * 30, "nested deeper than 16 levels"),
])
def test_a_hostile_build_record_is_refused_naming_it(lab: Lab, extra: str,
                                                     message: str) -> None:
    (_fw(lab) / "ipxe.lkrn").write_bytes(FIRMWARE)
    record = lab.dir / "fw" / "manifest.json"
    record.write_text(_record_with(extra))
    code, _, err = release(str(lab.recipe(ipxe=PREBUILT)), "--json")
    assert code == 4, err
    assert f"the iPXE build record {record} is not valid JSON" in err and message in err
    assert "release.json" not in err
    assert _nothing_published(lab)


def test_a_build_record_with_terminal_escapes_is_not_signed(lab: Lab) -> None:
    """`ca rotate root promote --from-origin` refuses a record whose trust or outputs hold
    control characters (they reach `ca status` and messages): the release refuses to sign
    one, naming the file, instead of publishing evidence that fails later."""
    fp = _root_fingerprint(lab)
    firmware = b"MZ" + b"\x90" * 3000 + bytes.fromhex(fp)  # the anchor is really there
    (_fw(lab) / "ipxe.lkrn").write_bytes(firmware)
    doc = json.loads(_record({"bin/ipxe.lkrn": firmware}, [fp]))
    doc["trust"][0]["subject"] = "CN=\x1b[2Jroot"  # (json.dumps writes it as \u001b)
    record = lab.dir / "fw" / "manifest.json"
    record.write_text(json.dumps(doc))
    code, _, err = release(str(lab.recipe(ipxe=PREBUILT)), "--json")
    assert code == 4, err
    assert f"the iPXE build record {record} holds control characters at " \
        "/trust/0/subject" in err
    assert _nothing_published(lab)

def test_only_the_keys_ipxe_build_writes_are_signed_into_the_release(lab: Lab) -> None:
    (_fw(lab) / "ipxe.lkrn").write_bytes(FIRMWARE)
    doc = json.loads(_record({"bin/ipxe.lkrn": FIRMWARE}, []))
    doc["note"] = {"promote": "anything"}
    doc["outputs"][0]["extra"] = ["unchecked"]
    doc["cache_key"] = "k"
    (lab.dir / "fw" / "manifest.json").write_text(json.dumps(doc))
    code, out, err = release(str(lab.recipe(ipxe=PREBUILT)), "--json")
    assert code == 0, err
    record = _published_record(lab, out)
    assert set(record) == {"trustboot_ipxe_build", "targets", "trust", "outputs", "cache_key"}
    assert [set(o) for o in record["outputs"]] == [{"target", "sha256", "size", "trust_check"}]


def test_a_build_record_true_of_the_binaries_is_signed_with_this_runs_check(
        lab: Lab) -> None:
    """A record that holds (the fingerprint is in the EFI binary, and in the packed
    payload of the BIOS one, where iPXE's zbin puts it) is kept; each output's
    trust_check is the one this release made, not the one in the file."""
    fp = _root_fingerprint(lab)
    efi = b"MZ" + b"\x90" * 3000 + bytes.fromhex(fp) + b"\x90" * 3000
    bios = _bios_image(b"iPXE image " * 2000 + bytes.fromhex(fp) + b" more code " * 2000)
    assert bytes.fromhex(fp) not in bios
    (_fw(lab) / "undionly.kpxe").write_bytes(bios)
    (lab.dir / "fw" / "bin-x86_64-efi").mkdir()
    (lab.dir / "fw" / "bin-x86_64-efi" / "ipxe.efi").write_bytes(efi)
    (lab.dir / "fw" / "manifest.json").write_text(
        _record({"bin/undionly.kpxe": bios, "bin-x86_64-efi/ipxe.efi": efi}, [fp]))
    code, out, err = release(str(lab.recipe(
        ipxe="ipxe: {prebuilt: fw, targets: [bin/undionly.kpxe, bin-x86_64-efi/ipxe.efi]}")),
        "--json")
    assert code == 0, err
    record = _published_record(lab, out)
    # one more claimed root, in neither binary: refused, naming only that fingerprint
    (lab.dir / "fw" / "manifest.json").write_text(
        _record({"bin/undionly.kpxe": bios, "bin-x86_64-efi/ipxe.efi": efi}, [fp, "ab" * 32]))
    code, _, err = release(str(lab.recipe(
        ipxe="ipxe: {prebuilt: fw, targets: [bin/undionly.kpxe, bin-x86_64-efi/ipxe.efi]}")))
    assert code == 4, err
    assert f"trusts {'ab' * 32}, but" in err and fp not in err
    assert {o["target"]: o["trust_check"] for o in record["outputs"]} == {
        "bin/undionly.kpxe": {"searched": "packed payload", "trust": {fp: True}},
        "bin-x86_64-efi/ipxe.efi": {"searched": "output", "trust": {fp: True}}}


def test_an_entry_named_like_a_firmware_binary_is_refused_before_anything_runs(
        lab: Lab) -> None:
    """It failed with an internal error (exit 70) after signing; now the recipe's line."""
    (_fw(lab) / "ipxe.lkrn").write_bytes(FIRMWARE)
    entries = "entries:\n  - name: ipxe.lkrn\n    kernel: images/vmlinuz\n"
    recipe = lab.recipe(ipxe=PREBUILT, entries=entries)
    for args in (["--dry-run"], []):
        code, _, err = release(str(recipe), *args)
        assert code == 3, err
        assert "r.yaml:" in err and "the name of firmware bin/ipxe.lkrn" in err
    assert not list(lab.origin.iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a link to another user")
def test_a_publish_cache_behind_another_users_link_is_skipped_with_a_warning(
        lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root releasing with a user's cache path (sudo -E keeps XDG_CACHE_HOME): the
    user's link in it is not followed; the release goes on without the memo."""
    cache, victim = tmp_path / "usercache", tmp_path / "victim"
    cache.mkdir()
    victim.mkdir()
    (cache / "trustboot").symlink_to(victim)
    os.lchown(cache / "trustboot", 65534, 65534)
    os.chown(cache, 65534, 65534)
    monkeypatch.setenv("TRUSTBOOT_PUBLISH_CACHE", str(cache / "trustboot" / "c.json"))
    (_fw(lab) / "ipxe.lkrn").write_bytes(FIRMWARE)
    code, _, err = release(str(lab.recipe(ipxe=PREBUILT)))
    assert code == 0, err
    assert err.count("warning: publish cache") == 1, err
    assert list(victim.iterdir()) == []
