"""`trustboot audit` on a UEFI HTTPS Boot segment configured the way users configure it:
dnsmasq (real, in a namespace) runs the snippet `trustboot origin dhcp-config --http-boot`
prints, and an HTTPS origin with the test CA serves the signed firmware and the script.

The audit asks as x86-64 UEFI HTTP Boot firmware (and as iPXE), follows the offered
https:// boot URL, checks the TLS chain and hashes the file against the release manifest:
the released file passes; the same URL serving other bytes is a boot-file-mismatch, and an
origin whose certificate does not lead to the expected CA is reported as such.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.audit.conftest import AuditPki, sha256
from tests.audit.netns import AuditRun, Segment, missing_tools
from trustboot.cli.main import cli

pytestmark = [pytest.mark.root, pytest.mark.slow]

FIRMWARE_URL = "https://192.0.2.1/fw/ipxe.efi"
SCRIPT_URL = "https://192.0.2.1/boot.ipxe"
# Stand-ins with the shapes the audit identifies (an EFI PE image, an iPXE script).
FIRMWARE = b"MZ" + b"\x00" * 58 + b"\x40\x00\x00\x00" + b"PE\x00\x00" + bytes(range(256)) * 40
SCRIPT = (b"#!ipxe\nimgtrust --permanent\nkernel https://192.0.2.1/vmlinuz\n"
          b"imgverify vmlinuz https://192.0.2.1/vmlinuz.sig\nboot\n")


@dataclass
class HttpBootSegment:
    seg: Segment
    web: Path  # the origin's document root
    manifest: Path


def _snippet_options() -> list[str]:
    """The generated dnsmasq snippet as dnsmasq command-line options."""
    r = CliRunner().invoke(cli, ["origin", "dhcp-config", "--http-boot",
                                 f"x86_64={FIRMWARE_URL}", "--ipxe-script", SCRIPT_URL,
                                 "--format", "dnsmasq"])
    assert r.exit_code == 0, r.output
    return [f"--{line}" for line in r.output.splitlines() if line and not line.startswith("#")]


@pytest.fixture(scope="module")
def httpboot(tmp_path_factory: pytest.TempPathFactory, test_pki: AuditPki
             ) -> Iterator[HttpBootSegment]:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("audit-httpboot")
    web = work / "web"
    (web / "fw").mkdir(parents=True)
    (web / "fw" / "ipxe.efi").write_bytes(FIRMWARE)
    (web / "boot.ipxe").write_bytes(SCRIPT)
    manifest = work / "release.json"
    manifest.write_text(json.dumps({
        "release": "httpboot-1", "origin": "https://192.0.2.1/",
        "ca_sha256": test_pki.root_sha256,
        "files": [{"name": "fw/ipxe.efi", "sha256": sha256(FIRMWARE), "size": len(FIRMWARE)},
                  {"name": "boot.ipxe", "sha256": sha256(SCRIPT), "size": len(SCRIPT)}],
    }))
    seg = Segment(work)
    try:
        origin = seg.add_host("origin", 1)
        seg.add_host("client", 50)
        seg.start_dnsmasq(origin, "--dhcp-range=192.0.2.100,192.0.2.199,255.255.255.0,10m",
                          *_snippet_options())
        seg.start_server(origin, "https", str(web), str(test_pki.chain_pem),
                         str(test_pki.key_pem))
        yield HttpBootSegment(seg, web, manifest)
    finally:
        seg.close()


def _audit(hb: HttpBootSegment, *extra: str) -> AuditRun:
    run = hb.seg.audit(hb.seg.hosts["client"], "--window", "2", "--arch", "efi-x64-http",
                       "--no-dhcpv6", "--release-manifest", str(hb.manifest), "--json",
                       "--fail-on", "none", *extra)
    assert run.returncode == 0, run.stderr
    return run


def _http(run: AuditRun, url: str) -> dict[str, object]:
    checks = [h for h in run.json["observation"]["http"] if h["url"] == url]
    assert checks, run.json["observation"]["http"]
    check: dict[str, object] = checks[0]
    return check


def _findings_for(run: AuditRun, url: str) -> set[str]:
    return {f["id"] for f in run.json["findings"] if f["subject"] == url}


def test_released_firmware_over_https_passes(httpboot: HttpBootSegment) -> None:
    run = _audit(httpboot)
    # The snippet at work: the firmware gets the binary (vendor class HTTPClient echoed),
    # iPXE gets the script instead of the binary again.
    offers = {o["probe_ipxe"]: o for o in run.json["observation"]["dhcpv4"]}
    boot = {k: o.get("option_67_bootfile") or o["file"] for k, o in offers.items()}
    assert boot == {False: FIRMWARE_URL, True: SCRIPT_URL}, offers
    assert offers[False]["option_60_vendor_class"] == "HTTPClient", offers
    firmware = _http(run, FIRMWARE_URL)
    assert firmware["ok"] and firmware["sha256"] == sha256(FIRMWARE), firmware
    assert firmware["tls_chain_sha256"], firmware
    assert _http(run, SCRIPT_URL)["sha256"] == sha256(SCRIPT)
    for url in (FIRMWARE_URL, SCRIPT_URL):
        found = _findings_for(run, url)
        assert not found & {"boot-file-mismatch", "unexpected-boot-file", "https-unexpected-ca",
                            "boot-file-unverified", "unexpected-origin"}, run.stdout


def test_changed_firmware_on_the_origin_is_a_mismatch(httpboot: HttpBootSegment) -> None:
    path = httpboot.web / "fw" / "ipxe.efi"
    evil = FIRMWARE[:-1] + b"\x00"
    path.write_bytes(evil)
    try:
        run = _audit(httpboot)
    finally:
        path.write_bytes(FIRMWARE)
    assert _http(run, FIRMWARE_URL)["sha256"] == sha256(evil)
    mismatch = [f for f in run.findings("boot-file-mismatch") if f["subject"] == FIRMWARE_URL]
    assert mismatch and mismatch[0]["severity"] == "critical", run.stdout
    assert "boot-file-mismatch" not in _findings_for(run, SCRIPT_URL)


def test_origin_certificate_from_another_ca(httpboot: HttpBootSegment, test_pki: AuditPki,
                                           tmp_path: Path) -> None:
    """The same origin checked against a CA that did not issue its certificate. The file
    is still fetched (unverified) and hashed: what that origin serves is evidence too."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"expected_ca_file: {test_pki.other_root_pem}\n")
    run = _audit(httpboot, "--policy", str(policy))
    assert "https-unexpected-ca" in _findings_for(run, FIRMWARE_URL), run.stdout
    firmware = _http(run, FIRMWARE_URL)
    assert firmware["tls_verified"] is False, firmware
    assert firmware["ok"] and firmware["sha256"] == sha256(FIRMWARE), firmware


def test_origin_that_switches_certificate_after_the_probe(test_pki: AuditPki,
                                                          tmp_path: Path) -> None:
    """The chain is checked again on the connection that fetches the file: an origin (or a
    man in the middle) that shows the release CA's certificate to the audit's TLS probe
    and another CA's to the GET must not get its body accepted as the boot file."""
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    body = tmp_path / "ipxe.efi"
    body.write_bytes(FIRMWARE)  # the released bytes: only the chain is wrong
    manifest = tmp_path / "release.json"
    manifest.write_text(json.dumps({
        "release": "httpboot-1", "origin": "https://192.0.2.1/",
        "ca_sha256": test_pki.root_sha256,
        "files": [{"name": "fw/ipxe.efi", "sha256": sha256(FIRMWARE), "size": len(FIRMWARE)}],
    }))
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"release_manifest: {manifest}\nexpected_ca_file: {test_pki.root_pem}\n")
    with Segment(tmp_path) as seg:
        origin = seg.add_host("origin", 1)
        client = seg.add_host("client", 50)
        # two handshakes for the probe (chain, then verification), the GET third
        seg.start_server(origin, "https-switch", str(body), "2", str(test_pki.chain_pem),
                         str(test_pki.key_pem), str(test_pki.other_chain_pem),
                         str(test_pki.other_key_pem))
        seg.start_server(origin, "rogue", "eth0", "urls", FIRMWARE_URL)
        run = seg.audit(client, "--window", "1.5", "--arch", "efi-x64", "--no-dhcpv6",
                        "--json", "--fail-on", "none", "--policy", str(policy))
    assert run.returncode == 0, run.stderr
    check = _http(run, FIRMWARE_URL)
    assert not check["ok"] and check["sha256"] is None, check
    assert "CERTIFICATE_VERIFY_FAILED" in str(check["error"]), check
    found = _findings_for(run, FIRMWARE_URL)
    assert "boot-file-unverified" in found, run.stdout
    assert "https-unexpected-ca" in found, run.stdout
