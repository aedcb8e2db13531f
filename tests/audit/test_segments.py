"""`trustboot audit` against real servers in network namespaces (root; CI runs these).

Each segment is audited a few times with short windows (the servers run with --no-ping);
the runs are cached per session so the positive and negative assertions share them.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.audit.conftest import (
    EVIL_IPXE,
    GOOD_IPXE,
    AuditPki,
    sha256,
    write_policy,
)
from tests.audit.netns import AuditRun, Segment, missing_tools
from trustboot.audit import dhcp4

pytestmark = [pytest.mark.root, pytest.mark.slow]
SCHEMA = Path(__file__).parent / "sarif-2.1.0-subset.schema.json"
WINDOW = "2"


def ids(run: AuditRun) -> set[str]:
    return {f["id"] for f in run.json["findings"]}


def by_id(run: AuditRun, rule: str) -> list[dict[str, Any]]:
    return run.findings(rule)


# -- cached runs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_run(clean_segment: Segment, test_pki: AuditPki,
              tmp_path_factory: pytest.TempPathFactory) -> AuditRun:
    policy = write_policy(tmp_path_factory.mktemp("clean-policy") / "policy.yaml", test_pki)
    run = clean_segment.audit(clean_segment.hosts["client"], "--window", WINDOW, "--json",
                              "--policy", str(policy), "--probe-writes", "--enumerate-tftp")
    assert run.returncode == 0, run.stderr
    return run


@pytest.fixture(scope="module")
def hostile_run(hostile_segment: Segment, test_pki: AuditPki,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[AuditRun, Path]:
    d = tmp_path_factory.mktemp("hostile-policy")
    policy = write_policy(d / "policy.yaml", test_pki)
    sarif = d / "audit.sarif"
    run = hostile_segment.audit(hostile_segment.hosts["client"], "--window", WINDOW, "--json",
                                "--policy", str(policy), "--probe-writes", "--enumerate-tftp",
                                "--sarif", str(sarif))
    return run, sarif


@pytest.fixture(scope="module")
def passive_run(hostile_segment: Segment, test_pki: AuditPki,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[AuditRun, AuditRun]:
    policy = write_policy(tmp_path_factory.mktemp("passive-policy") / "policy.yaml", test_pki)
    trigger: dict[str, AuditRun] = {}

    def trigger_client() -> None:
        import time

        time.sleep(0.7)  # let the passive listener start first
        trigger["run"] = hostile_segment.audit(
            hostile_segment.hosts["client2"], "--window", "1", "--no-follow", "--arch", "bios",
            "--no-dhcpv6", "--fail-on", "none", "--json")

    thread = threading.Thread(target=trigger_client)
    thread.start()
    run = hostile_segment.audit(hostile_segment.hosts["client"], "--window", "3", "--passive",
                                "--json", "--policy", str(policy), "--fail-on", "none")
    thread.join()
    return run, trigger["run"]


# -- clean segment: the negatives ----------------------------------------------------------


def test_clean_segment_finds_the_authorized_server_for_every_arch(clean_run: AuditRun) -> None:
    offers = clean_run.json["observation"]["dhcpv4"]
    assert {o["server_ip"] for o in offers} == {"192.0.2.1"}
    assert {o["probe_arch"] for o in offers} == set(dhcp4.ARCHES)  # every client arch
    plain = [o for o in offers if not o["probe_ipxe"]]
    assert {o["option_67_bootfile"] for o in plain} == {"undionly.kpxe"}
    assert all(o["siaddr"] == "192.0.2.1" and o["yiaddr"].startswith("192.0.2.1")
               for o in plain)
    v6 = clean_run.json["observation"]["dhcpv6"]
    assert v6 and {r["option_59_bootfile_url"] for r in v6} == {"https://[2001:db8::1]/boot.ipxe"}


def test_responder_summary(clean_run: AuditRun) -> None:
    [v4] = [r for r in clean_run.json["observation"]["responders"] if r["protocol"] == "dhcpv4"]
    assert (v4["server_ip"], v4["server_mac"], v4["role"]) == ("192.0.2.1", "02:74:62:00:00:01",
                                                               "dhcp")
    assert v4["ipxe_loop"] == "broken"
    assert all(a.startswith("192.0.2.1") for a in v4["offered_addresses"])
    assert {b["option_67"] for b in v4["boot"]} == {"undionly.kpxe",
                                                    "https://192.0.2.1/boot.ipxe"}
    [v6] = [r for r in clean_run.json["observation"]["responders"] if r["protocol"] == "dhcpv6"]
    assert v6["boot_urls"] == ["https://[2001:db8::1]/boot.ipxe"]


def test_clean_segment_has_no_finding_above_low(clean_run: AuditRun) -> None:
    worst = {f["severity"] for f in clean_run.json["findings"]}
    assert worst <= {"info", "low"}, clean_run.json["findings"]
    for rule in ("rogue-dhcp", "rogue-proxydhcp", "rogue-dhcpv6", "multiple-responders",
                 "cleartext-boot-url", "dhcpv6-cleartext-boot-url", "boot-file-mismatch",
                 "unexpected-boot-file", "tftp-writable", "non-ipxe-loader",
                 "script-without-imgverify", "ipxe-loop-not-broken", "malformed-packet",
                 "https-unexpected-ca", "unexpected-origin"):
        assert not by_id(clean_run, rule), rule


def test_tftp_boot_file_matching_the_release_is_low(clean_run: AuditRun) -> None:
    [finding] = by_id(clean_run, "tftp-boot-file")
    assert finding["severity"] == "low"
    assert finding["evidence"]["tftp"]["sha256"] == sha256(GOOD_IPXE)
    assert finding["evidence"]["loader"]["kind"] == "ipxe"


def test_https_chain_verified_and_content_matches(clean_run: AuditRun, test_pki: AuditPki) -> None:
    http = {h["url"]: h for h in clean_run.json["observation"]["http"]}
    for url in ("https://192.0.2.1/boot.ipxe", "https://[2001:db8::1]/boot.ipxe"):
        assert http[url]["ok"], http[url]
        assert http[url]["tls_verified"] is True
        assert test_pki.root_sha256 in http[url]["tls_chain_sha256"]
        assert http[url]["loader"]["imgverify"] is True


def test_dnsmasq_tftp_refuses_the_write_probe(clean_run: AuditRun) -> None:
    [probe] = clean_run.json["observation"]["tftp_write_probes"]
    assert probe["server"] == "192.0.2.1"
    assert probe["writable"] is False and "refused" in probe["detail"]


def test_https_unexpected_ca(clean_segment: Segment, test_pki: AuditPki, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "authorized_servers: [{ip: 192.0.2.1, role: dhcp}]\n"
        f"expected_ca_file: {test_pki.other_root_pem}\n"
    )
    run = clean_segment.audit(clean_segment.hosts["client"], "--window", "1", "--json",
                              "--policy", str(policy), "--arch", "bios", "--no-dhcpv6")
    assert run.returncode == 5, run.stderr  # high finding, default --fail-on high
    [finding] = by_id(run, "https-unexpected-ca")
    assert finding["severity"] == "high"
    assert finding["subject"] == "https://192.0.2.1/boot.ipxe"
    assert finding["evidence"]["http"]["tls_verified"] is False


# -- hostile segment: the positives --------------------------------------------------------


def test_hostile_segment_fails_with_exit_5(hostile_run: tuple[AuditRun, Path]) -> None:
    run, _ = hostile_run
    assert run.returncode == 5, run.stderr
    assert "worst critical" in run.stderr


def test_rogue_dhcp_server(hostile_run: tuple[AuditRun, Path]) -> None:
    run, _ = hostile_run
    [rogue] = [f for f in by_id(run, "rogue-dhcp") if f["subject"].startswith("192.0.2.2 ")]
    assert rogue["severity"] == "critical"
    assert rogue["subject"] == "192.0.2.2 (02:74:62:00:00:02)"
    ev = rogue["evidence"]
    assert ev["server_ip"] == "192.0.2.2" and ev["source_mac"] == "02:74:62:00:00:02"
    assert ev["yiaddr"].startswith("192.0.2.2")
    assert "undionly.kpxe" in ev["boot_files"]


def test_rogue_proxydhcp_answers_on_4011(hostile_run: tuple[AuditRun, Path]) -> None:
    run, _ = hostile_run
    [proxy] = by_id(run, "rogue-proxydhcp")
    assert proxy["subject"].startswith("192.0.2.3 ")
    offers = [o for o in run.json["observation"]["dhcpv4"] if o["server_ip"] == "192.0.2.3"]
    assert any(o["role"] == "proxydhcp" and o["yiaddr"] == "0.0.0.0"
               and o["option_60_vendor_class"] == "PXEClient" for o in offers)
    answer = [o for o in offers if o["source_port"] == 4011]
    assert answer and answer[0]["file"] == "pxelinux.0"


def test_rogue_dhcpv6_with_cleartext_url(hostile_run: tuple[AuditRun, Path]) -> None:
    run, _ = hostile_run
    [rogue6] = by_id(run, "rogue-dhcpv6")
    assert rogue6["severity"] == "critical"
    assert rogue6["evidence"]["source_mac"] == "02:74:62:00:00:04"
    [clear6] = by_id(run, "dhcpv6-cleartext-boot-url")
    assert clear6["subject"] == "http://[2001:db8::4]/boot.efi"
    assert clear6["evidence"]["option_59_bootfile_url"] == "http://[2001:db8::4]/boot.efi"


def test_multiple_responders(hostile_run: tuple[AuditRun, Path]) -> None:
    run, _ = hostile_run
    [multi] = by_id(run, "multiple-responders")
    assert multi["severity"] == "medium"
    # 192.0.2.9 answers with broken packets, which iPXE still takes (see below)
    assert {s["ip"] for s in multi["evidence"]["servers"]} == {
        "192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.9"}


def test_cleartext_boot_url_and_unexpected_origin(hostile_run: tuple[AuditRun, Path]) -> None:
    run, _ = hostile_run
    subjects = {f["subject"] for f in by_id(run, "cleartext-boot-url")}
    assert "http://192.0.2.2/evil.efi" in subjects  # DHCPv4 option 67 for x86-64 UEFI
    assert "http://192.0.2.6/evil.ipxe" in subjects  # inside a TFTP-exposed iPXE script
    origin = {f["subject"] for f in by_id(run, "unexpected-origin")}
    assert "http://192.0.2.2/evil.efi" in origin
    assert "https://192.0.2.1/boot.ipxe" not in origin


def test_boot_file_mismatch_on_rogue_tftp(hostile_run: tuple[AuditRun, Path]) -> None:
    run, _ = hostile_run
    [mismatch] = by_id(run, "boot-file-mismatch")
    assert mismatch["severity"] == "critical"
    assert mismatch["subject"] == "tftp://192.0.2.6/undionly.kpxe"
    assert mismatch["evidence"]["tftp"]["sha256"] == sha256(EVIL_IPXE)
    assert mismatch["evidence"]["expected_sha256"] == [sha256(GOOD_IPXE)]
    tftp = {f["subject"]: f["severity"] for f in by_id(run, "tftp-boot-file")}
    assert tftp["tftp://192.0.2.6/undionly.kpxe"] == "medium"
    assert tftp["tftp://192.0.2.1/undionly.kpxe"] == "low"


def test_writable_tftp(hostile_run: tuple[AuditRun, Path], hostile_segment: Segment) -> None:
    run, _ = hostile_run
    [writable] = by_id(run, "tftp-writable")
    assert writable["subject"] == "tftp://192.0.2.6/"
    probe = writable["evidence"]["write_probe"]
    assert probe["confirmed"] is True
    assert (hostile_segment.workdir / "tftpw-root" / probe["filename"]).exists()
    refused = [w for w in run.json["observation"]["tftp_write_probes"] if not w["writable"]]
    assert {w["server"] for w in refused} >= {"192.0.2.1", "192.0.2.3"}


def test_unsigned_chain_hints(hostile_run: tuple[AuditRun, Path]) -> None:
    run, _ = hostile_run
    [loader] = by_id(run, "non-ipxe-loader")
    assert loader["subject"] == "tftp://192.0.2.3/pxelinux.0"
    assert loader["evidence"]["loader"]["kind"] == "pxelinux"
    [unexpected] = by_id(run, "unexpected-boot-file")
    assert unexpected["subject"] == "tftp://192.0.2.3/pxelinux.0"
    [script] = by_id(run, "script-without-imgverify")
    assert script["subject"] == "tftp://192.0.2.6/boot.ipxe"


def test_ipxe_loop_not_broken(hostile_run: tuple[AuditRun, Path]) -> None:
    run, _ = hostile_run
    loops = by_id(run, "ipxe-loop-not-broken")
    assert {f["subject"] for f in loops} == {"192.0.2.2 (02:74:62:00:00:02)"}
    assert loops[0]["severity"] == "info"
    assert loops[0]["evidence"]["ipxe_offer"]["probe_ipxe"] is True
    summary = {r["server_ip"]: r for r in run.json["observation"]["responders"]
               if r["protocol"] == "dhcpv4"}
    assert summary["192.0.2.2"]["ipxe_loop"] == "not-broken"
    assert summary["192.0.2.1"]["ipxe_loop"] == "broken"
    assert summary["192.0.2.3"]["role"] == "proxydhcp"
    assert summary["192.0.2.3"]["boot"][0]["option_43"]["boot_menu"]


def test_well_known_tftp_paths(hostile_run: tuple[AuditRun, Path]) -> None:
    run, _ = hostile_run
    exposed = {f["subject"] for f in by_id(run, "tftp-path-exposed")}
    assert {"tftp://192.0.2.6/pxelinux.cfg/default", "tftp://192.0.2.6/boot.ipxe"} <= exposed
    # dnsmasq's root on the authorized server holds boot.ipxe too (it is also served by HTTPS)
    assert "tftp://192.0.2.1/undionly.kpxe" not in exposed  # offered file: reported once


def test_a_broken_last_option_does_not_hide_a_rogue(hostile_run: tuple[AuditRun, Path]
                                                    ) -> None:
    """192.0.2.9 offers 192.0.2.77 in replies whose last option runs past the end, or whose
    overloaded file field is garbage: iPXE takes them (it stops at the cut, and ignores
    option 52), so the audit reports a rogue DHCP server, not only a malformed packet."""
    run, _ = hostile_run
    [rogue] = [f for f in by_id(run, "rogue-dhcp") if f["subject"].startswith("192.0.2.9 ")]
    assert rogue["severity"] in ("high", "critical")
    assert "192.0.2.77" in rogue["message"]
    assert by_id(run, "malformed-packet")  # and the broken packets stay evidence


def test_malformed_packets_are_evidence(hostile_run: tuple[AuditRun, Path]) -> None:
    run, _ = hostile_run
    [malformed] = by_id(run, "malformed-packet")
    assert malformed["subject"] == "192.0.2.9 (02:74:62:00:00:09)"
    assert malformed["evidence"]["count"] >= 3
    reasons = " | ".join(p["reason"] for p in malformed["evidence"]["packets"])
    assert "runs past the end" in reasons and "too short" in reasons
    assert all(p["head_hex"] for p in malformed["evidence"]["packets"])


def test_sarif_file_validates(hostile_run: tuple[AuditRun, Path]) -> None:
    run, sarif_path = hostile_run
    sarif = json.loads(sarif_path.read_text())
    jsonschema.validate(sarif, json.loads(SCHEMA.read_text()))
    results = sarif["runs"][0]["results"]
    assert len(results) == len(run.json["findings"])
    rules = [r["id"] for r in sarif["runs"][0]["tool"]["driver"]["rules"]]
    assert all(rules[r["ruleIndex"]] == r["ruleId"] for r in results)
    assert {r["level"] for r in results} >= {"error", "warning", "note"}


def test_beyond_window_is_bounded(hostile_run: tuple[AuditRun, Path]) -> None:
    run, _ = hostile_run
    assert run.json["beyond_window_s"] < 5.0


# -- passive mode ------------------------------------------------------------------------------


def test_passive_mode_sees_servers_without_sending(passive_run: tuple[AuditRun, AuditRun]) -> None:
    run, trigger = passive_run
    obs = run.json["observation"]
    assert obs["mode"] == "passive"
    assert obs["probes"] == [] and obs["fetched"] == [] and obs["tftp_write_probes"] == []
    trigger_macs = {p["mac"] for p in trigger.json["observation"]["probes"]}
    assert any(c.split()[0] in trigger_macs for c in obs["clients_seen"])
    rules = ids(run)
    assert {"rogue-dhcp", "rogue-proxydhcp", "multiple-responders"} <= rules
    assert "tftp-boot-file" not in rules  # nothing was fetched


# -- an empty segment ----------------------------------------------------------------------------


def test_empty_segment_reports_no_responders(tmp_path: Path) -> None:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    with Segment(tmp_path) as seg:
        client = seg.add_host("client", 50)
        sarif_run = seg.audit(client, "--window", "0.5", "--format", "sarif")
        assert sarif_run.returncode == 0, sarif_run.stderr
        sarif = json.loads(sarif_run.stdout)
        jsonschema.validate(sarif, json.loads(SCHEMA.read_text()))
        assert [r["ruleId"] for r in sarif["runs"][0]["results"]] == ["no-responders"]
        table = seg.audit(client, "--window", "0.5", "--fail-on", "info")
        assert table.returncode == 5
        assert "[INFO    ] no-responders: eth0" in table.stdout
        assert table.stdout.splitlines()[-1].startswith("FAIL: 1 info")
