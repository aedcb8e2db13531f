"""Boot URL host names on a real segment (root; CI runs these): resolved with the DNS server
the offer names, over the audited interface, never with the auditor's own resolver.

One segment: an HTTPS origin (192.0.2.1) serving a tampered boot script, a hostile DNS
server (192.0.2.53, with a second address 192.0.2.54 to spoof from) whose answers depend on
the name asked, a rogue DHCP server offering one https:// URL per behaviour with option 6
pointing at that DNS server, and a second rogue offering a name without option 6. The
auditor's own resolver (its /etc/resolv.conf in the namespace) is a logging DNS server on
its loopback: no question may reach it.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.audit.conftest import EVIL_SCRIPT, GOOD_SCRIPT, AuditPki, sha256
from tests.audit.netns import AuditRun, Segment, missing_tools

pytestmark = [pytest.mark.root, pytest.mark.slow]

ZONE = "boot.test"
KINDS = ("good", "cname", "longcname", "local", "self", "silent", "nx", "servfail", "spoof",
         "pointers", "truncated")
NO_DNS_URL = f"https://good.{ZONE}/nodns.ipxe"
FOLLOW_TIMEOUT = 3.0
WINDOW = 2.0


def url(kind: str) -> str:
    return f"https://{kind}.{ZONE}/boot.ipxe"


@dataclass
class DnsRun:
    run: AuditRun
    dns_log: Path  # questions the offered DNS server got
    host_log: Path  # questions the auditor's own resolver got (must stay empty)

    def http(self, address: str) -> dict[str, Any]:
        found = [h for h in self.run.json["observation"]["http"] if h["url"] == address]
        assert len(found) == 1, self.run.json["observation"]["http"]
        check: dict[str, Any] = found[0]
        return check

    def finding_ids(self, address: str) -> set[str]:
        return {f["id"] for f in self.run.json["findings"] if f["subject"] == address}


@pytest.fixture(scope="module")
def dns_run(tmp_path_factory: pytest.TempPathFactory, test_pki: AuditPki) -> Iterator[DnsRun]:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("audit-dns")
    web = work / "web"
    web.mkdir()
    (web / "boot.ipxe").write_bytes(EVIL_SCRIPT)  # not the released script
    (web / "nodns.ipxe").write_bytes(GOOD_SCRIPT)
    manifest = work / "release.json"
    manifest.write_text(json.dumps({
        "release": "dns-1", "files": [
            {"name": "boot.ipxe", "sha256": sha256(GOOD_SCRIPT), "size": len(GOOD_SCRIPT)}]}))
    dns_log, host_log = work / "dns.log", work / "host-resolver.log"
    seg = Segment(work, prefix=f"hd{secrets.token_hex(3)}")
    etc = Path("/etc/netns")
    created_etc = not etc.exists()
    resolv_dir = etc / f"{seg.prefix}-client"
    try:
        origin = seg.add_host("origin", 1)
        seg.start_server(origin, "https", str(web), str(test_pki.chain_pem),
                         str(test_pki.key_pem))
        dns_host = seg.add_host("dns", 53)
        subprocess.run(dns_host.argv(["ip", "addr", "add", "192.0.2.54/24", "dev", "eth0"]),
                       check=True, timeout=30)
        seg.start_server(dns_host, "dns", "192.0.2.53", str(dns_log), "192.0.2.54")
        rogue = seg.add_host("rogue", 2)
        seg.start_server(rogue, "rogue", "eth0", "urls-dns", "192.0.2.53",
                         *[url(k) for k in KINDS])
        nodns = seg.add_host("nodns", 3)
        seg.start_server(nodns, "rogue", "eth0", "urls", NO_DNS_URL)
        # `ip netns exec` puts /etc/netns/NS/resolv.conf over /etc/resolv.conf: the
        # auditor's own resolver is a logging DNS server on the client's loopback
        resolv_dir.mkdir(parents=True)
        (resolv_dir / "resolv.conf").write_text("nameserver 127.0.0.1\noptions attempts:1\n")
        client = seg.add_host("client", 50)
        seg.start_server(client, "dns", "127.0.0.1", str(host_log))
        # positive control: the host's resolver in that namespace does reach the logger
        probe = subprocess.run(client.argv([
            sys.executable, "-c",
            "import socket; print(socket.getaddrinfo('control.example', 80)[0][4][0])"]),
            capture_output=True, text=True, timeout=30)
        assert probe.stdout.strip() == "192.0.2.1", probe
        assert "control.example" in host_log.read_text()
        host_log.write_text("")
        run = seg.audit(client, "--window", str(WINDOW), "--follow-timeout",
                        str(FOLLOW_TIMEOUT), "--arch", "bios", "--no-dhcpv6",
                        "--no-ipxe-probe", "--release-manifest", str(manifest), "--json",
                        "--fail-on", "none")
        assert run.returncode == 0, run.stderr
        yield DnsRun(run, dns_log, host_log)
    finally:
        seg.close()
        shutil.rmtree(resolv_dir, ignore_errors=True)
        if created_etc:
            try:
                etc.rmdir()  # only if empty: never what someone else put there since
            except OSError:
                pass


def test_no_question_reaches_the_auditor_s_own_resolver(dns_run: DnsRun) -> None:
    assert dns_run.host_log.read_text() == ""
    asked = dns_run.dns_log.read_text().splitlines()
    assert asked, "the offered DNS server was never asked"
    # from the audited interface's address, each question a type A (a DHCPv4 client)
    assert all(line.split()[0] == "192.0.2.50" and line.split()[4] == "1" for line in asked)
    # each name's question (and its repeats) has its own random source port and id
    by_name = {line.split()[3]: (line.split()[1], line.split()[2]) for line in asked}
    assert len(by_name) >= len(KINDS), asked
    assert len({port for port, _id in by_name.values()}) == len(by_name), asked
    assert len({qid for _port, qid in by_name.values()}) == len(by_name), asked


def test_a_name_the_offered_server_resolves_is_fetched_and_judged(dns_run: DnsRun) -> None:
    check = dns_run.http(url("good"))
    assert check["ok"] and check["address"] == "192.0.2.1", check
    assert check["sha256"] == sha256(EVIL_SCRIPT)
    [asked] = check["dns"]
    assert asked["server"] == "192.0.2.53" and asked["addresses"] == ["192.0.2.1"], asked
    assert "boot-file-mismatch" in dns_run.finding_ids(url("good"))
    offers = [o for o in dns_run.run.json["observation"]["dhcpv4"]
              if o.get("option_67_bootfile") == url("good")]
    assert offers and offers[0]["option_6_dns_servers"] == ["192.0.2.53"], offers


def test_a_cname_chain_in_the_answer_is_followed(dns_run: DnsRun) -> None:
    check = dns_run.http(url("cname"))
    assert check["ok"] and check["address"] == "192.0.2.1", check
    assert check["dns"][0]["cnames"] == [f"c1.cname.{ZONE}", f"c2.cname.{ZONE}"]
    long = dns_run.http(url("longcname"))
    assert not long["ok"] and "a CNAME chain longer than 8" in long["error"], long


@pytest.mark.parametrize(("kind", "address", "why"), [
    ("local", "127.0.0.1", "loopback"), ("self", "192.0.2.50", "an address of the auditing host"),
])
def test_an_answer_pointing_at_the_auditor_is_refused(dns_run: DnsRun, kind: str,
                                                      address: str, why: str) -> None:
    check = dns_run.http(url(kind))
    assert check["status"] is None and not check["ok"], check
    assert check["refused"] == (f"{kind}.{ZONE} is {address} ({why}) as DNS server "
                                "192.0.2.53 answered"), check
    assert "boot-url-local-target" in dns_run.finding_ids(url(kind))


@pytest.mark.parametrize(("kind", "reason"), [
    ("nx", "NXDOMAIN"), ("servfail", "SERVFAIL"), ("silent", "no answer before the deadline"),
])
def test_unresolvable_names_are_not_fetched(dns_run: DnsRun, kind: str, reason: str) -> None:
    check = dns_run.http(url(kind))
    assert check["error"] == (f"not fetched: {kind}.{ZONE} could not be resolved with the "
                              f"offered DNS server 192.0.2.53 ({reason})"), check
    assert "boot-file-unverified" in dns_run.finding_ids(url(kind))


def test_a_silent_server_is_bounded_by_the_follow_deadline(dns_run: DnsRun) -> None:
    check = dns_run.http(url("silent"))
    assert check["limit"] == "fetch-deadline", check
    assert check["dns"][0]["elapsed_s"] <= FOLLOW_TIMEOUT + WINDOW + 0.5, check
    # python start-up and teardown on a busy machine, plus the window and follow time
    assert dns_run.run.wall < WINDOW + FOLLOW_TIMEOUT + 10, dns_run.run.wall


def test_answers_from_elsewhere_or_with_another_id_are_ignored(dns_run: DnsRun) -> None:
    check = dns_run.http(url("spoof"))
    assert check["ok"] and check["address"] == "192.0.2.1", check
    assert check["dns"][0]["ignored"] == 3, check


@pytest.mark.parametrize(("kind", "reason"), [
    ("pointers", "compression pointer does not point backwards"),
    ("truncated", "truncated answer (TC bit set)"),
])
def test_malformed_answers_are_malformed_packets(dns_run: DnsRun, kind: str,
                                                 reason: str) -> None:
    check = dns_run.http(url(kind))
    assert not check["ok"] and check["dns"][0]["malformed"] == reason, check
    packets = [p for p in dns_run.run.json["observation"]["malformed"]
               if p["protocol"] == "dns" and p["reason"] == reason]
    assert packets and packets[0]["source_ip"] == "192.0.2.53", packets
    assert any(f["id"] == "malformed-packet" and "dns" in f["message"]
               for f in dns_run.run.json["findings"])


def test_a_name_offered_without_a_dns_server_is_not_fetched(dns_run: DnsRun) -> None:
    check = dns_run.http(NO_DNS_URL)
    assert check["error"] == (f"not fetched: good.{ZONE} is a host name and the offer gave no "
                              "DNS server (DHCPv4 option 6): a client could not resolve it "
                              "either"), check
    assert check["dns"] == [] and check["status"] is None
    assert "boot-file-unverified" in dns_run.finding_ids(NO_DNS_URL)


def test_questions_leave_only_by_the_audited_interface(tmp_path: Path) -> None:
    """The offered DNS server is reachable from the auditor only through its second
    interface (its management network, say): the question must not go there. Bound to
    the audited interface, where that address has no route, the name is not resolved."""
    from tests.audit.test_hostile import _second_link

    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    log = tmp_path / "dns.log"
    with Segment(tmp_path, prefix=f"hd{secrets.token_hex(3)}") as seg:
        rogue = seg.add_host("rogue", 3)
        client = seg.add_host("client", 50)
        other = _second_link(seg, "client", "other")
        seg.start_server(other, "dns", "198.51.100.2", str(log))
        seg.start_server(rogue, "rogue", "eth0", "urls-dns", "198.51.100.2", url("good"))
        run = seg.audit(client, "--window", "1.5", "--follow-timeout", "2", "--arch", "bios",
                        "--no-dhcpv6", "--no-ipxe-probe", "--json", "--fail-on", "none")
    assert run.returncode == 0, run.stderr
    assert not log.exists() or log.read_text() == "", log.read_text()
    [check] = [h for h in run.json["observation"]["http"] if h["url"] == url("good")]
    assert not check["ok"] and check["address"] is None, check
    assert "could not be resolved with the offered DNS server 198.51.100.2" in check["error"]
