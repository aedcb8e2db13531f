"""Issue 14 without a network: the sanitizer, limits as findings in every format, aggregation,
spoofing whatever giaddr says, DUID-embedded MACs, local targets, abandonable workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.audit import packets
from tests.audit.test_checks import ROGUE_MAC, observe, offer, policy, reply6, rules
from trustboot.audit import dhcp6
from trustboot.audit.checks import AGGREGATE_ABOVE, Severity, evaluate
from trustboot.audit.follow import FollowConfig, Follower, find_host, forbidden_address
from trustboot.audit.model import HttpCheck, Malformed, Reply6
from trustboot.audit.policy import Policy
from trustboot.audit.report import to_json, to_sarif, to_table
from trustboot.audit.runner import AuditResult
from trustboot.audit.text import bound, clean

SCHEMA = json.loads((Path(__file__).parent / "sarif-2.1.0-subset.schema.json").read_text())
REPO = Path(__file__).resolve().parents[2]


# -- the one sanitizer ------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "shown"), [
    ("a\x1b[2Jb", "a\\x1b[2Jb"),
    ("\x9b31m", "\\x9b31m"),  # C1 CSI
    ("evil\u202etxt.exe", "evil\\u202etxt.exe"),  # right-to-left override
    ("a\u200bb\u2066c", "a\\u200bb\\u2066c"),  # zero width space, bidi isolate
    ("line\u2028sep", "line\\u2028sep"),
    ("caf\u00e9", "caf\u00e9"),  # printable non-ASCII stays in JSON
])
def test_clean_escapes_controls_and_format_characters(raw: str, shown: str) -> None:
    assert clean(raw) == shown
    assert clean(raw, ascii_only=True).isascii()


def test_clean_cuts_with_a_marker_and_bound_caps_trees() -> None:
    assert clean("x" * 600, limit=512) == "x" * 512 + "...[88 more chars]"
    tree = bound({"k\x1b": ["\u202e" * 3] * 80, "n": {"deep": "y" * 1000}})
    assert tree["k\\x1b"][-1] == "...[30 more items]" and len(tree["k\\x1b"]) == 51
    assert tree["n"]["deep"].endswith("...[488 more chars]")
    assert "\u202e" not in json.dumps(tree, ensure_ascii=False)


# -- limits are high findings in every format -------------------------------------------------


def _result(obs_fields: dict[str, object] | None = None, pol: Policy | None = None
            ) -> AuditResult:
    obs = observe(**(obs_fields or {}))
    pol = pol if pol is not None else policy()
    now = datetime(2024, 6, 1, tzinfo=UTC)
    return AuditResult(obs, evaluate(obs, pol), pol, now, now)


def test_a_reached_limit_is_a_high_finding_everywhere() -> None:
    obs_fields: dict[str, object] = {"offers": [offer()]}
    result = _result(obs_fields)
    result.observation.limit("kernel-drops", count=1234)
    result.observation.limit("per-server-cap", "192.0.2.1 (02:74:62:00:00:01)")
    result.findings = evaluate(result.observation, result.policy)
    limit = [f for f in result.findings if f.rule == "audit-limit-reached"]
    assert {f.subject for f in limit} == {"eth0: kernel-drops", "eth0: per-server-cap"}
    assert all(f.severity == Severity.HIGH for f in limit)
    data = to_json(result, Severity.HIGH)
    assert data["summary"]["complete"] is False and data["summary"]["failed"] is True
    assert data["summary"]["limits"] == {"kernel-drops": 1234, "per-server-cap": 1}
    sarif = to_sarif(result, Severity.HIGH)
    jsonschema.validate(sarif, SCHEMA)
    notes = sarif["runs"][0]["invocations"][0]["toolExecutionNotifications"]
    assert {n["descriptor"]["id"] for n in notes} == {"kernel-drops", "per-server-cap"}
    assert "audit-limit-reached" in {r["ruleId"] for r in sarif["runs"][0]["results"]}
    table = to_table(result, Severity.HIGH)
    assert "[HIGH    ] audit-limit-reached: eth0: kernel-drops" in table
    assert "No findings" not in table and table.splitlines()[-1].startswith("FAIL")


def test_a_quiet_segment_with_a_limit_is_not_clean() -> None:
    result = _result()
    result.observation.limit("server-count-cap", "192.0.2.99 (02:00:00:00:00:99)")
    result.findings = evaluate(result.observation, result.policy)
    assert {f.rule for f in result.findings} == {"audit-limit-reached", "no-responders"}
    assert to_json(result, Severity.HIGH)["summary"]["failed"] is True


# -- report amplification -------------------------------------------------------------------


def test_many_servers_make_one_bounded_finding() -> None:
    offers = [offer(server=f"198.51.100.{i % 250}", mac=f"02:fa:00:00:{i // 256:02x}:"
                    f"{i % 256:02x}", file="A" * 255) for i in range(600)]
    result = _result({"offers": offers})
    [rogues] = [f for f in result.findings if f.rule == "rogue-dhcp"]
    assert rogues.evidence["count"] == 600 and len(rogues.evidence["examples"]) == 3
    assert len(rogues.evidence["subjects"]) == 25 and rogues.evidence["subjects_omitted"] == 575
    text = json.dumps(to_json(result, None))
    assert len(text) < 4 * 1024 * 1024
    table = to_table(result, None, width=100)
    responders, findings = table.split("\nFindings\n")
    assert max(len(line) for line in findings.splitlines()) <= 100
    assert max(len(line) for line in responders.splitlines()) <= 7 * 42  # cells cut at 40
    assert "... 540 more row(s): see --json" in table
    assert len(json.dumps(to_sarif(result, None))) < 256 * 1024


def test_aggregation_starts_above_twenty_and_keeps_probe_answerers_first() -> None:
    def rogues(n: int, *, probed_last: bool = False) -> list[Any]:
        out = [offer(server=f"198.51.100.{i}", mac=f"02:fa:00:00:00:{i:02x}", probe=False)
               for i in range(n)]
        if probed_last:  # the rogue that answered our own probe, behind a flood
            out.append(offer(server="203.0.113.66", mac=ROGUE_MAC))
        return out

    at_limit = rules(observe(offers=rogues(AGGREGATE_ABOVE)))["rogue-dhcp"]
    assert len(at_limit) == AGGREGATE_ABOVE  # each its own finding
    [one] = rules(observe(offers=rogues(30, probed_last=True)))["rogue-dhcp"]
    assert one.evidence["count"] == 31
    assert one.evidence["subjects"][0] == f"203.0.113.66 ({ROGUE_MAC})"
    assert one.evidence["examples"][0]["answered_probes"] == ["bios"]


def test_malformed_senders_are_counted_beyond_the_evidence_kept() -> None:
    kept = Malformed("dhcpv4", "option 67 length 200 runs past the end", "192.0.2.9",
                     "02:74:62:00:00:09", "0201", 300, 0.2)
    obs = observe(malformed=[kept],
                  malformed_counts={"dhcpv4 192.0.2.9 02:74:62:00:00:09": 500,
                                    "dhcpv6 fe80::9 02:74:62:00:00:0a": 7})
    found = {f.subject: f for f in rules(obs)["malformed-packet"]}
    assert found["192.0.2.9 (02:74:62:00:00:09)"].evidence["count"] == 500
    assert found["fe80::9 (02:74:62:00:00:0a)"].evidence["count"] == 7


def test_an_http_boot_file_that_could_not_be_fetched_is_unverified() -> None:
    failed = HttpCheck("https://boot.example/boot.ipxe", ok=False, status=404, error="HTTP 404")
    [unverified] = rules(observe(http=[failed]))["boot-file-unverified"]
    assert unverified.subject == "https://boot.example/boot.ipxe"
    assert unverified.message.endswith("HTTP 404")


def test_table_cells_are_cut_with_a_marker() -> None:
    result = _result({"offers": [offer(server="192.0.2.2", mac=ROGUE_MAC, file="B" * 200)]})
    table = to_table(result, None, width=100)
    assert "B" * 37 + "..." in table and "B" * 41 not in table.split("Findings")[0]


# -- spoofing ---------------------------------------------------------------------------------


def test_spoofed_server_identifier_is_caught_whatever_giaddr_says() -> None:
    by_ip = policy(authorized_servers=[{"ip": "192.0.2.1", "role": "dhcp"}])
    relayed = offer(mac=ROGUE_MAC)
    relayed.src_ip = "192.0.2.66"
    relayed.packet.giaddr = "192.0.2.254"  # the sender's word: proves nothing
    [rogue] = rules(observe(offers=[relayed]), by_ip)["rogue-dhcp"]
    assert "192.0.2.66" in rogue.evidence["spoofed_server_identifier"]
    # ... unless the sender is an authorized relay agent
    with_relay = policy(authorized_servers=[
        {"ip": "192.0.2.1", "role": "dhcp"},
        {"ip": "192.0.2.66", "mac": ROGUE_MAC, "role": "relay"}])
    assert "rogue-dhcp" not in rules(observe(offers=[relayed]), with_relay)
    # "any" does not vouch for relaying
    any_role = policy(authorized_servers=[{"ip": "192.0.2.1"}, {"ip": "192.0.2.66"}])
    assert "rogue-dhcp" in rules(observe(offers=[relayed]), any_role)


def test_an_ip_only_authorization_seen_from_two_macs_is_a_conflict() -> None:
    by_ip = policy(authorized_servers=[{"ip": "192.0.2.1", "role": "dhcp"}])
    found = rules(observe(offers=[offer(), offer(mac=ROGUE_MAC)]), by_ip)
    [conflict] = found["server-identity-conflict"]
    assert conflict.severity == Severity.HIGH
    assert conflict.evidence["source_macs"] == ["02:74:62:00:00:01", ROGUE_MAC]
    assert "server-identity-conflict" not in rules(observe(offers=[offer()]), by_ip)


def _advert_from(sender_mac: bytes, duid_mac: bytes) -> Reply6:
    raw = packets.advertise(xid=1, client_duid=dhcp6.duid_ll(b"\x02" * 6), url=None,
                            server_mac=duid_mac)
    return Reply6(dhcp6.parse(raw), "fe80::9", ":".join(f"{b:02x}" for b in sender_mac), 0.1)


def test_duid_only_authorization_checks_the_embedded_mac() -> None:
    auth = bytes.fromhex("027462000001")
    by_duid = policy(authorized_servers=[{"duid": dhcp6.duid_ll(auth).hex(), "role": "dhcpv6"}])
    spoof = _advert_from(bytes.fromhex("027462000003"), auth)
    found = rules(observe(replies6=[spoof]), by_duid)
    [conflict] = found["server-identity-conflict"]
    assert "embeds MAC 02:74:62:00:00:01" in conflict.evidence["spoofed_duid"]
    assert "server-identity-conflict" not in rules(
        observe(replies6=[_advert_from(auth, auth)]), by_duid)
    # DUID and MAC in the policy (the README's form): the spoofer is simply unauthorized
    safe = policy(authorized_servers=[{"duid": dhcp6.duid_ll(auth).hex(),
                                       "mac": "02:74:62:00:00:01", "role": "dhcpv6"}])
    [rogue] = rules(observe(replies6=[spoof]), safe)["rogue-dhcpv6"]
    assert "spoofed_duid" in rogue.evidence
    assert "rogue-dhcpv6" not in rules(observe(replies6=[reply6(None)]), safe)


# -- local targets ------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "why"), [
    ("127.0.0.1", "loopback"), ("0x7f.0.0.1", "loopback"), ("0177.0.0.01", "loopback"),
    ("+127.0.0.1", "loopback"), ("%31%32%37.0.0.1", "loopback"),
    ("4294967423.0.0.1", "loopback"),  # 32-bit iPXE wraps 2**32 + 127 to 127
    ("2130706433", "loopback"), ("0x7f.1", "loopback"), ("127.1", "loopback"),  # C library
    ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"), ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("0.1.2.3", "unspecified"),  # "this network" (0/8): not unspecified to ipaddress
    ("224.0.0.1", "multicast/broadcast"), ("255.255.255.255", "multicast/broadcast"),
])
def test_every_spelling_of_a_local_address_is_refused(host: str, why: str) -> None:
    found = find_host(host, None, frozenset(), device=None, source=None,
                      deadline=time.monotonic() + 1)
    assert found.refusal is not None and f"({why})" in found.refusal, found
    assert not found.lookups


def test_ordinary_addresses_are_allowed_and_own_ones_refused() -> None:
    assert forbidden_address("192.0.2.1") is None
    assert forbidden_address("2001:db8::1") is None
    assert forbidden_address("192.0.2.50", {"192.0.2.50"}) == "an address of the auditing host"


def test_a_name_with_any_local_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # a DNS answer with a public address first and a loopback one after: the connection
    # may go to either, so every address is vetted, not only the first
    from trustboot.audit import dns

    def answer(name: str, ns: dns.Nameservers, **_: object) -> list[dns.Lookup]:
        return [dns.Lookup(ns.servers[0], name, "A", rcode="NOERROR",
                           addresses=["192.0.2.1", "127.0.0.1"])]

    monkeypatch.setattr(dns, "resolve", answer)
    found = find_host("boot.example", dns.Nameservers(("192.0.2.53",), 4, "DHCPv4 option 6"),
                      frozenset(), device=None, source=None, deadline=time.monotonic() + 1)
    assert found.refusal == ("boot.example is 127.0.0.1 (loopback) as DNS server 192.0.2.53 "
                             "answered")


def test_a_refused_target_is_a_finding_not_a_fetch() -> None:
    found = rules(observe(http=[HttpCheck("http://127.1/x", refused="127.1 is 127.0.0.1 "
                                          "(loopback)", error="not fetched")]))
    [local] = found["boot-url-local-target"]
    assert local.severity == Severity.HIGH and "loopback" in local.message
    assert "boot-file-unverified" not in found


def test_encoded_boot_file_is_a_finding() -> None:
    check = HttpCheck("https://boot.example/x", ok=True, status=200, size=10, sha256="b" * 64,
                      content_encoding="gzip")
    [enc] = rules(observe(http=[check]))["http-encoded-boot-file"]
    assert enc.severity == Severity.MEDIUM


# -- abandonable workers -----------------------------------------------------------------------


def test_a_tftp_boot_server_on_a_local_address_is_refused_not_fetched() -> None:
    obs = observe()
    follower = Follower(FollowConfig(device=None, timeout=0.5), policy(), obs)
    follower.on_offer(offer(server="127.0.0.1", file="x.kpxe"))
    follower.finish(2.0)
    assert [(h.url, h.refused) for h in obs.http] == [
        ("tftp://127.0.0.1/x.kpxe", "127.0.0.1 (loopback)")]
    assert not obs.fetched


def test_targets_beyond_max_targets_are_a_reached_limit() -> None:
    obs = observe()
    follower = Follower(FollowConfig(device=None, timeout=0.2, max_targets=2), policy(), obs,
                        deadline=time.monotonic() + 0.5)
    for i in range(3):  # TEST-NET addresses: each fetch times out quickly
        follower.on_offer(offer(file=f"https://192.0.2.{i + 10}/boot.ipxe"))
    follower.finish(1.0)
    assert obs.limits["follow-targets"] == 1
    assert obs.limit_samples["follow-targets"] == ["https://192.0.2.12/boot.ipxe"]


def test_fetches_cut_by_a_bound_are_reached_limits() -> None:
    """A transfer cut at max_size or still running at its deadline (TFTP), or an HTTP
    fetch cut either way: what lay beyond was not examined, so each is a reached limit."""
    from trustboot.audit.model import BootTarget, Fetched
    from trustboot.audit.tftp import FetchResult

    def tftp_result(name: str, *, truncated: bool = False, deadline_reached: bool = False
                    ) -> Fetched:
        target = BootTarget("tftp", "192.0.2.1", name, f"tftp://192.0.2.1/{name}")
        return Fetched(target, FetchResult("192.0.2.1", name, size=10, truncated=truncated,
                                           deadline_reached=deadline_reached), None)

    obs = observe()
    follower = Follower(FollowConfig(device=None, timeout=0.5), policy(), obs)
    results = [tftp_result("big.efi", truncated=True), tftp_result("slow.efi",
                                                                    deadline_reached=True),
               HttpCheck("https://192.0.2.1/huge", limit="size-cap", error="too big")]
    for i, result in enumerate(results):
        follower._submit(f"url:{i}", lambda value=result, **_: value)
    follower.finish(2.0)
    assert obs.limits == {"size-cap": 2, "fetch-deadline": 1}
    assert obs.limit_samples["fetch-deadline"] == ["tftp://192.0.2.1/slow.efi"]


def test_a_stuck_fetch_is_abandoned_and_reported(tmp_path: Path) -> None:
    obs = observe()
    follower = Follower(FollowConfig(device=None, timeout=0.5), policy(), obs,
                        deadline=time.monotonic() + 0.5)
    release = threading.Event()

    def hang(**_: object) -> None:  # a transfer that ignores its deadline
        release.wait(30)

    follower._submit("url:http://192.0.2.2/hang", hang)
    start = time.monotonic()
    follower.finish(0.6)
    assert time.monotonic() - start < 1.5
    assert obs.limits == {"follow-deadline": 1}
    assert obs.limit_samples["follow-deadline"] == ["http://192.0.2.2/hang"]
    release.set()


def test_a_stuck_worker_never_keeps_the_process_alive() -> None:
    code = (
        "import time, threading\n"
        "from trustboot.audit.follow import _Workers\n"
        "w = _Workers(2)\n"
        "w.submit(lambda: time.sleep(60))\n"
        "time.sleep(0.2)\n"
        "w.abandon()\n"
    )
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30, cwd=REPO,
                   env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert time.monotonic() - start < 10
