"""Evidence for `ca rotate root promote`: the live release on an origin (file://, signed
release.json with an iPXE build record) and audit reports of segments."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.audit.test_checks import offer
from trustboot.audit.loaders import identify
from trustboot.audit.model import BootTarget, Fetched, HttpCheck, Observation
from trustboot.audit.policy import policy_from_dict
from trustboot.audit.report import to_json
from trustboot.audit.runner import AuditResult
from trustboot.audit.tftp import FetchResult
from trustboot.cli.publish import build_trust
from trustboot.ipxe.build import BUILD_FORMAT
from trustboot.ipxe.inputs import collect_trust
from trustboot.publish.manifest import MANIFEST_NAME
from trustboot.publish.pipeline import build_manifest, scan_directory

from .conftest import Run, make_ec_ca
from .test_rotation import ca, js

FIRMWARE = b"\0" * 16 + b"PXE->EB:" + b"\0" * 16 + b"firmware trusting both roots"
OLD_FIRMWARE = b"\0" * 16 + b"PXE->EB:" + b"\0" * 16 + b"firmware trusting the old root"
SCRIPT = b"#!ipxe\nchain --autofree boot.ipxe\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def ec_ca(tmp_path_factory: pytest.TempPathFactory, secrets_dir: Path) -> Path:
    return make_ec_ca(tmp_path_factory.mktemp("evidence") / "pki", secrets_dir,
                      [["codesign", "signer"]])


@pytest.fixture
def begun(ec_ca: Path, tmp_path: Path, run: Run, secrets_dir: Path) -> Path:
    """A CA in the "begun" step of a root rotation."""
    dest = tmp_path / "pki"
    shutil.copytree(ec_ca, dest)
    r = ca(run, dest, secrets_dir, "rotate", "root", "begin")
    assert r.exit_code == 0, r.output
    return dest


def build_record(pki: Path, *, next_root: bool = True) -> dict[str, Any]:
    """A build manifest shaped as `trustboot ipxe build` writes it, for FIRMWARE built
    from the pki as it is now (or, ``next_root=False``, trusting only the active root)."""
    trust = collect_trust(pki, [], []).trust
    if not next_root:
        trust = trust[:1]
    return {"trustboot_ipxe_build": BUILD_FORMAT, "targets": ["bin/undionly.kpxe"],
            "trust": [c.to_json() for c in trust],
            "outputs": [{"target": "bin/undionly.kpxe", "sha256": sha(FIRMWARE),
                         "size": len(FIRMWARE),
                         "trust_check": {"trust": {c.fingerprint: True for c in trust}}}]}


def publish(run: Run, pki: Path, secrets: Path, tmp_path: Path, origin: Path, *,
            ipxe: dict[str, Any] | None, release: str = "r1", sign_manifest: bool = True,
            ) -> None:
    """Publish a release (entry script + firmware) whose signed release.json carries
    ``ipxe``, as `trustboot release` does, on a file:// origin."""
    out = tmp_path / f"rel-{release}"
    out.mkdir()
    (out / "boot.ipxe").write_bytes(SCRIPT)
    (out / "undionly.kpxe").write_bytes(FIRMWARE)

    def sign(*names: str) -> None:
        r = run("sign", *(str(out / n) for n in names), "--key", "signer", "--pki", str(pki),
                "--passphrase-file", str(secrets / "key.pass"), "--out", str(out))
        assert r.exit_code == 0, r.output

    sign("boot.ipxe", "undionly.kpxe")
    if sign_manifest:
        trust = build_trust({"trust": (), "pki": pki, "certs": ()})
        manifest = build_manifest(release, scan_directory(out), entry="boot.ipxe",
                                  now=dt.datetime.now(dt.UTC), origin=None, trust=trust,
                                  ipxe=ipxe)
        (out / MANIFEST_NAME).write_bytes(manifest.to_bytes())
        sign(MANIFEST_NAME)
    r = run("publish", str(out), f"file://{origin}", "--release-id", release, "--entry",
            "boot.ipxe", "--pki", str(pki))
    assert r.exit_code == 0, r.output


def promote(run: Run, pki: Path, secrets: Path, *args: str) -> Any:
    return ca(run, pki, secrets, "rotate", "root", "promote", *args, "--json")


def status(run: Run, pki: Path, secrets: Path) -> dict[str, Any]:
    return js(ca(run, pki, secrets, "status", "--json", secret=False))  # type: ignore[no-any-return]


# --- origin ------------------------------------------------------------------------------


def test_origin_evidence_promotes_and_is_recorded(begun: Path, run: Run, secrets_dir: Path,
                                                  tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    publish(run, begun, secrets_dir, tmp_path, origin, ipxe=build_record(begun))
    next_root = status(run, begun, secrets_dir)["next_root"]
    r = promote(run, begun, secrets_dir, "--from-origin", f"file://{origin}")
    assert r.exit_code == 0, r.output
    result = js(r)
    assert result["status"]["step"] == "promoted"
    [ev] = result["evidence"]
    assert ev["kind"] == "origin" and ev["release"] == "r1"
    assert ev["source"].startswith("file://") and ev["root_sha256"] == next_root
    assert next_root in ev["trust"]
    assert ev["firmware"] == [{"target": "bin/undionly.kpxe", "sha256": sha(FIRMWARE)}]
    st = status(run, begun, secrets_dir)
    assert st["step"] == "promoted" and st["evidence"] == [ev]
    last = json.loads((begun / "log.jsonl").read_text().splitlines()[-1])
    assert last["op"] == "rotate-root-promote"
    assert last["evidence"] == [{"kind": "origin", "source": ev["source"], "release": "r1",
                                 "segment": None, "trust": ev["trust"],
                                 "firmware_sha256": [sha(FIRMWARE)]}]
    # the record survives the retire step (ca status shows the last rotation's evidence)
    r = ca(run, begun, secrets_dir, "rotate", "root", "retire", secret=False)
    assert r.exit_code == 0, r.output
    assert status(run, begun, secrets_dir)["evidence"] == [ev]


def test_origin_whose_firmware_lacks_the_next_root_is_refused(
        begun: Path, run: Run, secrets_dir: Path, tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    publish(run, begun, secrets_dir, tmp_path, origin,
            ipxe=build_record(begun, next_root=False))
    r = promote(run, begun, secrets_dir, "--from-origin", f"file://{origin}")
    assert r.exit_code == 4, r.output
    assert "does not trust the next root" in r.output and "(release r1)" not in r.output
    assert status(run, begun, secrets_dir)["step"] == "begun"


def test_tampered_release_manifest_is_refused(begun: Path, run: Run, secrets_dir: Path,
                                              tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    # firmware that does NOT trust the next root, and an origin where someone edits the
    # record to claim it does: the signature must catch it
    publish(run, begun, secrets_dir, tmp_path, origin,
            ipxe=build_record(begun, next_root=False))
    served = origin / "releases" / "r1" / MANIFEST_NAME
    doc = json.loads(served.read_text())
    doc["ipxe"] = build_record(begun)
    served.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    r = promote(run, begun, secrets_dir, "--from-origin", f"file://{origin}")
    assert r.exit_code == 4, r.output
    assert "signature does not verify" in r.output and "manifest-signature" in r.output
    assert status(run, begun, secrets_dir)["step"] == "begun"


@pytest.mark.parametrize("target, firmware", [
    ("bin/undionly.kpxe", b"firmware the release does not serve"),  # another sha256
    ("bin-x86_64-efi/ipxe.efi", FIRMWARE),  # a target the release does not serve
])
def test_origin_record_of_firmware_the_release_does_not_serve_is_refused(
        begun: Path, run: Run, secrets_dir: Path, tmp_path: Path, target: str,
        firmware: bytes) -> None:
    """A signed record (say, written by an older trustboot that signed any manifest.json
    beside prebuilt firmware) vouches only for the firmware objects of its own release."""
    origin = tmp_path / "origin"
    record = build_record(begun)
    record["outputs"][0] |= {"target": target, "sha256": sha(firmware)}
    publish(run, begun, secrets_dir, tmp_path, origin, ipxe=record)
    r = promote(run, begun, secrets_dir, "--from-origin", f"file://{origin}")
    assert r.exit_code == 4, r.output
    assert "is not the firmware object" in r.output
    # the same release.json passed as a file is held to the same rule
    served = origin / "releases" / "r1" / MANIFEST_NAME
    r = promote(run, begun, secrets_dir, "--build-manifest", str(served))
    assert r.exit_code == 4 and "is not the firmware object" in r.output, r.output
    assert status(run, begun, secrets_dir)["step"] == "begun"


def test_origin_record_listing_no_firmware_is_refused(
        begun: Path, run: Run, secrets_dir: Path, tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    publish(run, begun, secrets_dir, tmp_path, origin, ipxe=build_record(begun) | {"outputs": []})
    r = promote(run, begun, secrets_dir, "--from-origin", f"file://{origin}")
    assert r.exit_code == 4 and "lists no firmware of the release" in r.output, r.output


def test_release_without_build_record_or_signature_is_not_evidence(
        begun: Path, run: Run, secrets_dir: Path, tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    publish(run, begun, secrets_dir, tmp_path, origin, ipxe=None)
    r = promote(run, begun, secrets_dir, "--from-origin", f"file://{origin}")
    assert r.exit_code == 3, r.output
    assert "no iPXE build record" in r.output and "--build-manifest" in r.output
    unsigned = tmp_path / "unsigned"
    publish(run, begun, secrets_dir, tmp_path, unsigned, ipxe=None, release="r2",
            sign_manifest=False)
    r = promote(run, begun, secrets_dir, "--from-origin", f"file://{unsigned}")
    assert r.exit_code == 4 and "has no signature" in r.output, r.output
    (tmp_path / "empty").mkdir()
    r = promote(run, begun, secrets_dir, "--from-origin", f"file://{tmp_path / 'empty'}")
    assert r.exit_code == 3 and "serves no release" in r.output, r.output
    # a mistyped origin directory is named as such (and not created)
    r = promote(run, begun, secrets_dir, "--from-origin", f"file://{tmp_path / 'typo'}")
    assert r.exit_code == 1 and "does not exist" in r.output, r.output
    assert not (tmp_path / "typo").exists()
    assert status(run, begun, secrets_dir)["step"] == "begun"


# --- audit reports -----------------------------------------------------------------------


def audit_report(path: Path, firmware: bytes, *, truncated: bool = False,
                 more_offers: tuple[str, ...] = ()) -> Path:
    """A `trustboot audit --json` report made by the audit's own report code: a DHCP
    server offers undionly.kpxe (TFTP) to the PXE probe and an iPXE script URL to the iPXE
    probe; the audit also guessed pxelinux.0 by name."""
    obs = Observation(interface="seg-lab1", mode="active", window=1.0)
    obs.offers = [offer(file="undionly.kpxe"),
                  offer(file="http://192.0.2.1/boot.ipxe", ipxe=True)]
    obs.offers += [offer(file=f, arch="efi-x64") for f in more_offers]
    boot = FetchResult("192.0.2.1", "undionly.kpxe", ok=not truncated, size=len(firmware),
                       sha256=None if truncated else sha(firmware), truncated=truncated,
                       error="deadline" if truncated else None)
    guessed = FetchResult("192.0.2.1", "pxelinux.0", ok=True, size=5, sha256=sha(b"other"))
    obs.fetched = [
        Fetched(BootTarget("tftp", "192.0.2.1", "undionly.kpxe",
                           "tftp://192.0.2.1/undionly.kpxe"), boot, identify(firmware)),
        Fetched(BootTarget("tftp", "192.0.2.1", "pxelinux.0", "tftp://192.0.2.1/pxelinux.0"),
                guessed, identify(b"PXELINUX"), well_known=True)]
    obs.http = [HttpCheck("http://192.0.2.1/boot.ipxe", ok=True, status=200,
                          size=len(SCRIPT), sha256=sha(SCRIPT), loader=identify(SCRIPT))]
    now = dt.datetime.now(dt.UTC)
    pol = policy_from_dict({})
    path.write_text(json.dumps(to_json(AuditResult(obs, [], pol, now, now), None)))
    return path


def test_audit_report_matching_trusted_firmware_is_evidence(
        begun: Path, run: Run, secrets_dir: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(build_record(begun)))
    report = audit_report(tmp_path / "seg1.json", FIRMWARE)
    r = promote(run, begun, secrets_dir, "--audit-report", str(report))
    assert r.exit_code == 3 and "--from-origin" in r.output, r.output  # needs firmware
    r = promote(run, begun, secrets_dir, "--build-manifest", str(manifest), "--audit-report",
                str(report))
    assert r.exit_code == 0, r.output
    kinds = [(e["kind"], e["source"]) for e in js(r)["evidence"]]
    assert kinds == [("build-manifest", str(manifest)), ("audit", str(report))]
    audit = js(r)["evidence"][1]
    assert audit["segment"] == "seg-lab1"
    # the firmware counts; the script offered to iPXE and the guessed pxelinux.0 do not
    assert audit["firmware"] == [{"target": "tftp://192.0.2.1/undionly.kpxe",
                                  "sha256": sha(FIRMWARE)}]
    assert status(run, begun, secrets_dir)["evidence"][1]["kind"] == "audit"


def test_audit_report_of_a_segment_booting_old_firmware_is_refused(
        begun: Path, run: Run, secrets_dir: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(build_record(begun)))
    good = audit_report(tmp_path / "good.json", FIRMWARE)
    old = audit_report(tmp_path / "old.json", OLD_FIRMWARE)
    r = promote(run, begun, secrets_dir, "--build-manifest", str(manifest), "--audit-report",
                str(good), "--audit-report", str(old))
    assert r.exit_code == 4, r.output
    assert "segment seg-lab1" in r.output and "tftp://192.0.2.1/undionly.kpxe" in r.output
    assert "offer from 192.0.2.1" in r.output and sha(OLD_FIRMWARE) in r.output
    cut = audit_report(tmp_path / "cut.json", FIRMWARE, truncated=True)
    r = promote(run, begun, secrets_dir, "--build-manifest", str(manifest), "--audit-report",
                str(cut))
    assert r.exit_code == 4 and "not fetched in full" in r.output, r.output
    doc = json.loads(good.read_text())
    doc["summary"]["complete"] = False
    doc["summary"]["limits"] = {"follow-targets": 3}
    (tmp_path / "bounded.json").write_text(json.dumps(doc))
    r = promote(run, begun, secrets_dir, "--build-manifest", str(manifest), "--audit-report",
                str(tmp_path / "bounded.json"))
    assert r.exit_code == 4 and "follow-targets" in r.output, r.output
    doc = json.loads(good.read_text())
    doc["observation"]["fetched"] = []
    (tmp_path / "empty.json").write_text(json.dumps(doc))
    r = promote(run, begun, secrets_dir, "--build-manifest", str(manifest), "--audit-report",
                str(tmp_path / "empty.json"))
    assert r.exit_code == 4 and "fetched no boot firmware" in r.output, r.output
    (tmp_path / "junk.json").write_text('{"tool": "other"}')
    r = promote(run, begun, secrets_dir, "--build-manifest", str(manifest), "--audit-report",
                str(tmp_path / "junk.json"))
    assert r.exit_code == 3 and "not a `trustboot audit --json` report" in r.output
    assert status(run, begun, secrets_dir)["step"] == "begun"


def test_evidence_with_terminal_escapes_is_refused(
        begun: Path, run: Run, secrets_dir: Path, tmp_path: Path) -> None:
    """The audit escapes every control character it writes; a report carrying raw ones
    (crafted, edited) is refused before its text reaches `ca status` or an error."""
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(build_record(begun)))
    doc = json.loads(audit_report(tmp_path / "seg.json", FIRMWARE).read_text())
    doc["observation"]["interface"] = "seg\x1b]0;owned\x07\x1b[2J"
    (tmp_path / "escapes.json").write_text(json.dumps(doc))
    r = promote(run, begun, secrets_dir, "--build-manifest", str(manifest), "--audit-report",
                str(tmp_path / "escapes.json"))
    assert r.exit_code == 3 and "/observation/interface" in r.output, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output
    record = build_record(begun)
    record["outputs"][0]["target"] = "bin/\x1b[31mundionly.kpxe"
    manifest.write_text(json.dumps(record))
    r = promote(run, begun, secrets_dir, "--build-manifest", str(manifest))
    assert r.exit_code == 3 and "/outputs/0/target" in r.output, r.output
    assert "\x1b" not in r.output
    assert status(run, begun, secrets_dir)["step"] == "begun"


@pytest.mark.parametrize("also_to_ipxe", [False, True])
def test_a_boot_program_starting_with_ipxe_magic_is_not_a_script(
        begun: Path, run: Run, secrets_dir: Path, tmp_path: Path, also_to_ipxe: bool) -> None:
    """A BIOS boot program is raw code: it can start with "#!ipxe" and pass for a script.
    Offered to a firmware (non-iPXE) probe it is executed by the firmware, so it must be
    firmware that trusts the next root, whatever its first bytes say."""
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(build_record(begun)))
    rogue = b"#!ipxe\n" + b"\xeb\xfe" + b"\0" * 64  # a script to identify(), code to a BIOS
    assert identify(rogue).script
    doc = json.loads(audit_report(tmp_path / "seg.json", FIRMWARE).read_text())
    extra = Observation(interface="seg-lab1", mode="active", window=1.0)
    extra.offers = [offer(file="rogue.kpxe")]
    if also_to_ipxe:
        extra.offers.append(offer(file="rogue.kpxe", ipxe=True))
    extra.fetched = [Fetched(
        BootTarget("tftp", "192.0.2.1", "rogue.kpxe", "tftp://192.0.2.1/rogue.kpxe"),
        FetchResult("192.0.2.1", "rogue.kpxe", ok=True, size=len(rogue), sha256=sha(rogue)),
        identify(rogue))]
    now = dt.datetime.now(dt.UTC)
    more = to_json(AuditResult(extra, [], policy_from_dict({}), now, now), None)["observation"]
    doc["observation"]["dhcpv4"] += more["dhcpv4"]
    doc["observation"]["fetched"] += more["fetched"]
    (tmp_path / "rogue.json").write_text(json.dumps(doc))
    r = promote(run, begun, secrets_dir, "--build-manifest", str(manifest), "--audit-report",
                str(tmp_path / "rogue.json"))
    assert r.exit_code == 4, r.output
    assert "tftp://192.0.2.1/rogue.kpxe" in r.output and sha(rogue) in r.output
    assert status(run, begun, secrets_dir)["step"] == "begun"


@pytest.mark.parametrize("bootfile", ["ftp://192.0.2.9/ipxe.efi", "nfs://192.0.2.9/ipxe.efi",
                                      "tftp://boot.example.net/ipxe.efi"])
def test_audit_report_with_an_offered_file_it_never_fetched_is_refused(
        begun: Path, run: Run, secrets_dir: Path, tmp_path: Path, bootfile: str) -> None:
    """A boot file offered under a scheme the audit does not fetch (or from a server named
    by host name) leaves no fetch: the report lists it, and the evidence refuses it rather
    than counting only the firmware that was fetched."""
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(build_record(begun)))
    report = audit_report(tmp_path / "seg.json", FIRMWARE, more_offers=(bootfile,))
    listed = json.loads(report.read_text())["observation"]["not_fetched"]
    assert [n["url"] for n in listed] == [bootfile]
    assert listed[0]["reason"] and listed[0]["offer"]["server_ip"] == "192.0.2.1"
    r = promote(run, begun, secrets_dir, "--build-manifest", str(manifest), "--audit-report",
                str(report))
    assert r.exit_code == 4, r.output
    assert bootfile in r.output and "offered but not fetched" in r.output
    assert "offer from 192.0.2.1" in r.output
    # a report without the list (an older version) cannot show there was none: refused too
    doc = json.loads(audit_report(tmp_path / "good.json", FIRMWARE).read_text())
    assert doc["observation"]["not_fetched"] == []
    del doc["observation"]["not_fetched"]
    (tmp_path / "old.json").write_text(json.dumps(doc))
    r = promote(run, begun, secrets_dir, "--build-manifest", str(manifest), "--audit-report",
                str(tmp_path / "old.json"))
    assert r.exit_code == 4 and "older trustboot" in r.output, r.output
    assert status(run, begun, secrets_dir)["step"] == "begun"


def test_status_reads_evidence_recorded_by_older_versions(begun: Path) -> None:
    """Before evidence records, index.json kept one line of text per evidence."""
    from trustboot.ca import rotation
    from trustboot.ca.store import CertificateAuthority

    authority = CertificateAuthority.open(begun)
    assert authority.state.rotation is not None
    authority.state.rotation |= {"step": "promoted", "evidence": ["manifest.json: trusted"]}
    assert rotation.status(authority).to_json()["evidence"] == [
        {"kind": "legacy", "source": None, "description": "manifest.json: trusted"}]
