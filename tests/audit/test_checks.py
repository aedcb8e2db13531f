"""Policy → findings, without a network: each finding type positive and negative."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from tests.audit import packets
from trustboot.audit import dhcp4, dhcp6
from trustboot.audit.checks import RULES, Severity, evaluate, threshold_reached
from trustboot.audit.loaders import identify
from trustboot.audit.model import (
    BootTarget,
    Fetched,
    HttpCheck,
    Malformed,
    Observation,
    Offer,
    Probe,
    Reply6,
    ipxe_loop_status,
)
from trustboot.audit.policy import Policy, policy_from_dict
from trustboot.audit.tftp import FetchResult, WriteResult

AUTH_MAC = "02:74:62:00:00:01"
ROGUE_MAC = "02:74:62:00:00:02"
IPXE = b"\0" * 16 + b"PXE->EB:" + b"\0" * 16
GOOD_SHA = hashlib.sha256(IPXE).hexdigest()

POLICY = {
    "authorized_servers": [
        {"name": "core", "ip": "192.0.2.1", "mac": AUTH_MAC, "role": "dhcp"},
        {"mac": AUTH_MAC, "role": "dhcpv6"},
    ],
    "expected_files": [{"name": "undionly.kpxe", "sha256": GOOD_SHA},
                       {"name": "boot.ipxe", "sha256": "b" * 64}],
    "expected_origin": "https://boot.example/",
    "expected_ca_sha256": "c" * 64,
}


def policy(**changes: Any) -> Policy:
    return policy_from_dict({**POLICY, **changes})


_xid = iter(range(1, 10_000))


def offer(*, server: str = "192.0.2.1", mac: str = AUTH_MAC, file: str = "undionly.kpxe",
          arch: str = "bios", ipxe: bool = False, yiaddr: str = "192.0.2.100",
          siaddr: str | None = None, vendor: str | None = None, port: int = 67,
          probe: bool = True) -> Offer:
    xid = next(_xid)
    options = [(67, file.encode())] if file else []
    if vendor:
        options.append((60, vendor.encode()))
    raw = packets.dhcp_reply(xid=xid, chaddr=b"\x02" * 6, yiaddr=yiaddr,
                             siaddr=siaddr or server, server_id=server, options=options)
    p = Probe("dhcpv4", arch, ipxe, "02:02:02:02:02:02", xid) if probe else None
    return Offer(dhcp4.parse(raw), server, mac, port, 0.1, p)


def reply6(url: str | None, mac: bytes = bytes.fromhex("027462000001")) -> Reply6:
    raw = packets.advertise(xid=1, client_duid=dhcp6.duid_ll(b"\x02" * 6), url=url,
                            server_mac=mac)
    mac_text = dhcp4.mac_text(mac)
    return Reply6(dhcp6.parse(raw), "fe80::1", mac_text, 0.1,
                  Probe("dhcpv6", "efi-x64", False, "02:02:02:02:02:02", 1))


def fetched(server: str, path: str, data: bytes | None, *, well_known: bool = False,
            error: str = "timed out") -> Fetched:
    target = BootTarget("tftp", server, path, f"tftp://{server}/{path}")
    if data is None:
        return Fetched(target, FetchResult(server, path, error=error), None, well_known)
    result = FetchResult(server, path, ok=True, size=len(data),
                         sha256=hashlib.sha256(data).hexdigest(), head=data)
    return Fetched(target, result, identify(data), well_known)


def observe(**fields: Any) -> Observation:
    obs = Observation(interface="eth0", mode=fields.pop("mode", "active"), window=2.0)
    for key, value in fields.items():
        setattr(obs, key, value)
    return obs


def rules(obs: Observation, pol: Policy | None = None) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for f in evaluate(obs, pol if pol is not None else policy()):
        out.setdefault(f.rule, []).append(f)
    return out


def good_segment() -> Observation:
    return observe(
        offers=[offer(), offer(ipxe=True, file="https://boot.example/boot.ipxe")],
        fetched=[fetched("192.0.2.1", "undionly.kpxe", IPXE)],
        http=[HttpCheck("https://boot.example/boot.ipxe", ok=True, status=200, size=3,
                        sha256="b" * 64, tls_chain_sha256=["d" * 64, "c" * 64],
                        loader=identify(b"#!ipxe\nimgtrust --permanent\n"))],
        replies6=[reply6("https://boot.example/boot.ipxe")],
    )


def test_a_well_run_segment_only_reports_the_tftp_first_stage() -> None:
    found = rules(good_segment())
    assert set(found) == {"tftp-boot-file"}
    [tftp] = found["tftp-boot-file"]
    assert tftp.severity == Severity.LOW and "matches released undionly.kpxe" in tftp.message


def test_every_rule_has_remediation_and_a_description() -> None:
    for rule in RULES.values():
        assert rule.remediation and rule.description and rule.title


# -- servers -------------------------------------------------------------------------------------


def test_rogue_dhcp_offering_a_boot_file_is_critical() -> None:
    found = rules(observe(offers=[offer(), offer(server="192.0.2.2", mac=ROGUE_MAC,
                                                 file="evil.kpxe", yiaddr="192.0.2.200")]))
    [rogue] = found["rogue-dhcp"]
    assert rogue.severity == Severity.CRITICAL
    assert rogue.evidence["server_ip"] == "192.0.2.2" and rogue.evidence["yiaddr"] == "192.0.2.200"
    assert rogue.evidence["boot_files"] == ["evil.kpxe"]
    assert rogue.evidence["option_67_bootfile"] == "evil.kpxe"


def test_rogue_dhcp_without_boot_file_is_high() -> None:
    found = rules(observe(offers=[offer(server="192.0.2.2", mac=ROGUE_MAC, file="")]))
    assert found["rogue-dhcp"][0].severity == Severity.HIGH


def test_authorized_ip_from_another_mac_is_a_rogue() -> None:
    found = rules(observe(offers=[offer(mac=ROGUE_MAC)]))
    assert found["rogue-dhcp"][0].subject == f"192.0.2.1 ({ROGUE_MAC})"


def test_spoofed_server_identifier_is_not_authorized() -> None:
    by_ip = policy(authorized_servers=[{"ip": "192.0.2.1"}])
    spoof = offer(mac=ROGUE_MAC)
    spoof.src_ip = "192.0.2.66"  # option 54 still says 192.0.2.1
    [rogue] = rules(observe(offers=[spoof]), by_ip)["rogue-dhcp"]
    assert "192.0.2.66" in rogue.evidence["spoofed_server_identifier"]


def test_no_follow_means_no_unverified_findings() -> None:
    obs = observe(offers=[offer()], followed=False)
    assert "boot-file-unverified" not in rules(obs)
    assert "boot-file-unverified" in rules(observe(offers=[offer()]))


def test_authorization_by_ip_only_or_mac_only() -> None:
    by_ip = policy(authorized_servers=[{"ip": "192.0.2.1"}])
    assert "rogue-dhcp" not in rules(observe(offers=[offer(mac=ROGUE_MAC)]), by_ip)
    by_mac = policy(authorized_servers=[{"mac": ROGUE_MAC.upper()}])
    assert "rogue-dhcp" not in rules(observe(offers=[offer(server="192.0.2.9", mac=ROGUE_MAC)]),
                                     by_mac)


def test_an_entry_with_a_duid_authorizes_no_dhcpv4_server() -> None:
    # all fields given must match: a DHCPv4 answer shows no DUID, so an entry naming one
    # (with the server's IP, role any) does not vouch for it
    ip_and_duid = policy(authorized_servers=[{"ip": "192.0.2.1", "duid": "00030001" + "02" * 6}])
    assert "rogue-dhcp" in rules(observe(offers=[offer()]), ip_and_duid)


def test_role_restricts_authorization() -> None:
    proxy = offer(server="192.0.2.1", file="", yiaddr="0.0.0.0", vendor="PXEClient")
    found = rules(observe(offers=[proxy]))  # 192.0.2.1 is authorized as dhcp only
    assert found["rogue-proxydhcp"][0].severity == Severity.CRITICAL
    allowed = policy(authorized_servers=[{"ip": "192.0.2.1", "role": "proxydhcp"}])
    assert "rogue-proxydhcp" not in rules(observe(offers=[proxy]), allowed)
    # authorized as ProxyDHCP, it also hands out addresses: that is a DHCP server the
    # policy did not authorize (one answer as a proxy does not vouch for the others)
    both = observe(offers=[proxy, offer(server="192.0.2.1")])
    assert rules(both, allowed)["rogue-dhcp"][0].subject == f"192.0.2.1 ({AUTH_MAC})"


def test_no_policy_means_no_rogue_verdict_but_an_info() -> None:
    found = rules(observe(offers=[offer(server="192.0.2.2", mac=ROGUE_MAC)]), Policy())
    assert "rogue-dhcp" not in found and "no-authorized-servers" in found


def test_rogue_dhcpv6() -> None:
    found = rules(observe(replies6=[reply6("https://boot.example/x",
                                           mac=bytes.fromhex("027462000004"))]))
    assert found["rogue-dhcpv6"][0].severity == Severity.CRITICAL
    assert "rogue-dhcpv6" not in rules(observe(replies6=[reply6("https://boot.example/x")]))


def test_multiple_responders() -> None:
    two = observe(offers=[offer(), offer(server="192.0.2.2", mac=ROGUE_MAC)])
    assert rules(two)["multiple-responders"][0].severity == Severity.MEDIUM
    address_only = observe(offers=[offer(), offer(server="192.0.2.2", mac=ROGUE_MAC, file="")])
    assert rules(address_only)["multiple-responders"][0].severity == Severity.LOW
    assert "multiple-responders" not in rules(observe(offers=[offer(), offer(ipxe=True)]))


# -- URLs ----------------------------------------------------------------------------------------


def test_cleartext_boot_url() -> None:
    found = rules(observe(offers=[offer(ipxe=True, file="http://boot.example/boot.ipxe")]))
    [clear] = found["cleartext-boot-url"]
    assert clear.severity == Severity.HIGH and clear.subject == "http://boot.example/boot.ipxe"
    assert clear.evidence["option_67_bootfile"] == "http://boot.example/boot.ipxe"
    assert "cleartext-boot-url" not in rules(good_segment())



@pytest.mark.parametrize("url", ["ftp://boot.example/boot.ipxe", "nfs://boot.example/boot.ipxe"])
def test_every_cleartext_scheme_in_an_offer_is_reported(url: str) -> None:
    [clear] = rules(observe(offers=[offer(ipxe=True, file=url)]))["cleartext-boot-url"]
    assert clear.subject == url


def test_dhcpv6_cleartext_boot_url() -> None:
    found = rules(observe(replies6=[reply6("http://[2001:db8::1]/x.efi")]))
    assert found["dhcpv6-cleartext-boot-url"][0].subject == "http://[2001:db8::1]/x.efi"
    assert "dhcpv6-cleartext-boot-url" not in rules(observe(replies6=[reply6(None)]))
    for url in ("tftp://[2001:db8::1]/x.efi", "ftp://[2001:db8::1]/x.efi",
                "nfs://[2001:db8::1]/x.efi"):
        found = rules(observe(replies6=[reply6(url)]))
        assert found["dhcpv6-cleartext-boot-url"][0].subject == url


def test_unexpected_origin() -> None:
    found = rules(observe(offers=[offer(ipxe=True, file="https://boot.example.evil/x")]))
    assert found["unexpected-origin"][0].subject == "https://boot.example.evil/x"
    ok = rules(observe(offers=[offer(ipxe=True, file="https://boot.example/a/b")]))
    assert "unexpected-origin" not in ok
    sub = policy(expected_origin="https://boot.example/releases")
    assert "unexpected-origin" in rules(
        observe(offers=[offer(ipxe=True, file="https://boot.example/releases2/x")]), sub)
    # another port of the origin's host is another origin (another server may listen there)
    port = rules(observe(offers=[offer(ipxe=True, file="https://boot.example:8443/a/b")]))
    assert port["unexpected-origin"][0].subject == "https://boot.example:8443/a/b"
    # so is the origin's host over plain http (besides being cleartext)
    plain = rules(observe(offers=[offer(ipxe=True, file="http://boot.example/a/b")]))
    assert plain["unexpected-origin"][0].subject == "http://boot.example/a/b"
    # a DHCPv6 boot URL (option 59) is held to the origin too
    v6 = rules(observe(replies6=[reply6("https://boot.example.evil/x.efi")]))
    assert v6["unexpected-origin"][0].subject == "https://boot.example.evil/x.efi"


def test_a_split_boot_file_option_is_checked_as_ipxe_reads_it() -> None:
    # RFC 3396 joins repeated options; iPXE reads only the first instance. Joined, the URL
    # lies under the expected origin; iPXE fetches https://boot.ex/ (another host).
    raw = packets.dhcp_reply(xid=1, chaddr=b"\x02" * 6, server_id="192.0.2.1",
                             options=[(67, b"https://boot.ex"), (67, b"ample/boot.ipxe")])
    split = Offer(dhcp4.parse(raw), "192.0.2.1", AUTH_MAC, 67, 0.1,
                  Probe("dhcpv4", "bios", True, "02:02:02:02:02:02", 1))
    assert split.packet.bootfile_option == "https://boot.example/boot.ipxe"
    found = rules(observe(offers=[split]))
    assert [f.subject for f in found["unexpected-origin"]] == ["https://boot.ex"]
    assert found["unexpected-origin"][0].evidence["option_67_first_instance"] == \
        "https://boot.ex"


def test_an_overloaded_file_field_is_checked_as_ipxe_reads_it() -> None:
    # iPXE ignores option 52 and boots the file field's text; read as options (RFC 2132)
    # it is harmless junk, so the cleartext URL was never seen.
    raw = packets.dhcp_reply(xid=1, chaddr=b"\x02" * 6, server_id="192.0.2.1",
                             file=b"http://evil.example/x.efi", options=[(52, b"\x01")])
    over = Offer(dhcp4.parse(raw), "192.0.2.1", AUTH_MAC, 67, 0.1,
                 Probe("dhcpv4", "bios", True, "02:02:02:02:02:02", 1))
    assert over.packet.file == "" and over.packet.ipxe_file == "http://evil.example/x.efi"
    found = rules(observe(offers=[over]))
    assert [f.subject for f in found["cleartext-boot-url"]] == ["http://evil.example/x.efi"]
    assert "unexpected-origin" in found


def reply6_urls(*urls: bytes, mac: str = AUTH_MAC) -> Reply6:
    """An Advertise from ``mac`` with one option 59 per URL, each exactly as given."""
    raw = packets.advertise(xid=1, client_duid=dhcp6.duid_ll(b"\x02" * 6), url=None,
                            server_mac=bytes.fromhex(mac.replace(":", "")))
    raw += b"".join(packets.opt6(dhcp6.OPT_BOOTFILE_URL, u) for u in urls)
    return Reply6(dhcp6.parse(raw), "fe80::1", mac, 0.1,
                  Probe("dhcpv6", "efi-x64", False, "02:02:02:02:02:02", 1))


def raw_offer(option67: bytes, *, file: bytes = b"", server: str = "192.0.2.1",
              mac: str = AUTH_MAC, ipxe: bool = False) -> Offer:
    """An offer whose option 67 holds exactly ``option67`` (NULs and high bytes too)."""
    xid = next(_xid)
    raw = packets.dhcp_reply(xid=xid, chaddr=b"\x02" * 6, siaddr=server, server_id=server,
                             file=file, options=[(67, option67)] if option67 else [])
    return Offer(dhcp4.parse(raw), server, mac, 67, 0.1,
                 Probe("dhcpv4", "bios", ipxe, "02:02:02:02:02:02", xid))


def test_boot_targets_are_what_clients_load_not_the_escaped_text() -> None:
    [cut] = raw_offer(b"undionly.kpxe\0junk").boot_targets()
    assert (cut.url, cut.path, cut.wire_name) == (
        "tftp://192.0.2.1/undionly.kpxe", "undionly.kpxe", b"undionly.kpxe")
    [high] = raw_offer(b"/b\xe9d\\.efi").boot_targets()
    assert (high.url, high.path) == ("tftp://192.0.2.1//b\\xe9d\\\\.efi", "b\\xe9d\\\\.efi")
    assert high.wire_name == b"b\xe9d\\.efi"  # the bytes, not their display
    [field_name] = raw_offer(b"", file=b"\xe9vil.kpxe\0junk").boot_targets()
    assert field_name.wire_name == b"\xe9vil.kpxe"
    [url] = raw_offer(b"https://boot.example/b\xe9 d.ipxe\0http://x/").boot_targets()
    assert url.url == "https://boot.example/b\\xe9 d.ipxe"
    assert url.wire_url == "https://boot.example/b%E9%20d.ipxe"  # as iPXE's uri_encode
    assert (url.scheme, url.server) == ("https", "boot.example")
    [plain] = offer().boot_targets()  # an ordinary name is judged as before
    assert plain == BootTarget("tftp", "192.0.2.1", "undionly.kpxe",
                               "tftp://192.0.2.1/undionly.kpxe")
    assert plain.wire_name == b"undionly.kpxe" and plain.raw_name is None


def test_the_file_clients_load_is_judged_and_the_hidden_text_is_a_finding() -> None:
    """The reviewer's case: the audit fetched 'undionly.kpxe\\x00junk' (not found: a low
    'unverified') while clients load a tampered undionly.kpxe."""
    hiding = raw_offer(b"undionly.kpxe\0junk")
    found = rules(observe(offers=[hiding], fetched=[
        fetched("192.0.2.1", "undionly.kpxe", IPXE + b"patched")]))
    [mismatch] = found["boot-file-mismatch"]
    assert mismatch.subject == "tftp://192.0.2.1/undionly.kpxe"
    assert "boot-file-unverified" not in found
    [hidden] = found["boot-name-after-nul"]
    assert hidden.severity == Severity.HIGH and "option 67 with 4 bytes" in hidden.message
    assert hidden.evidence["after_nul"] == {"option 67": "junk"}
    # a header field is NUL-padded, and stale bytes there may be a sloppy server's
    field_junk = rules(observe(offers=[raw_offer(b"", file=b"a.kpxe\0old.kpxe")]))
    assert field_junk["boot-name-after-nul"][0].severity == Severity.MEDIUM
    v6 = reply6_urls(b"https://boot.example/x\0y")
    [hidden6] = rules(observe(replies6=[v6]))["boot-name-after-nul"]
    assert hidden6.severity == Severity.HIGH and "option 59" in hidden6.message
    for ok in (offer(), raw_offer(b"undionly.kpxe\0"), raw_offer(b"", file=b"pxelinux.0")):
        assert "boot-name-after-nul" not in rules(observe(offers=[ok]))
    assert "boot-name-after-nul" not in rules(good_segment())


def test_every_dhcpv6_boot_url_instance_is_judged() -> None:
    """A second option 59 was invisible: EDK2 boots the last one, the audit read the first."""
    two = reply6_urls(b"https://boot.example/ok.efi", b"http://boot.example.evil/x.efi")
    found = rules(observe(replies6=[two]))
    assert [f.subject for f in found["dhcpv6-cleartext-boot-url"]] == [
        "http://boot.example.evil/x.efi"]
    assert [f.subject for f in found["unexpected-origin"]] == [
        "http://boot.example.evil/x.efi"]
    assert "option 59 sent 2 times" in " ".join(
        found["unexpected-origin"][0].evidence["anomalies"])
    assert [t.url for t in two.boot_targets()] == [
        "https://boot.example/ok.efi", "http://boot.example.evil/x.efi"]
    rogue = reply6_urls(b"https://boot.example/ok.efi", b"https://boot.example/b.efi",
                        mac=ROGUE_MAC)
    [r] = rules(observe(replies6=[rogue]))["rogue-dhcpv6"]
    assert "boot URLs https://boot.example/ok.efi, https://boot.example/b.efi" in r.message
    # one good URL, or the same URL twice, is judged as before
    for ok in (reply6_urls(b"https://boot.example/ok.efi"),
               reply6_urls(b"https://boot.example/ok.efi", b"https://boot.example/ok.efi")):
        judged = rules(observe(replies6=[ok]))
        assert not {"dhcpv6-cleartext-boot-url", "unexpected-origin"} & set(judged)


def test_every_dhcpv6_boot_url_is_followed() -> None:
    from trustboot.audit.follow import FollowConfig, Follower

    obs = observe()
    follower = Follower(FollowConfig(device=None, timeout=0.5), policy(), obs)
    follower.on_reply6(reply6_urls(b"http://127.0.0.1/first.efi", b"http://[::1]/last.efi"))
    follower.finish(2.0)
    assert [h.url for h in obs.http] == ["http://127.0.0.1/first.efi", "http://[::1]/last.efi"]
    assert all(h.refused for h in obs.http)  # local: refused, never fetched


def test_a_dhcp4_boot_option_split_across_an_overloaded_field_is_judged_as_edk2_reads_it(
        ) -> None:
    file_field = packets.opt(67, b"ample/boot.ipxe") + b"\xff"
    raw = packets.dhcp_reply(xid=1, chaddr=b"\x02" * 6, server_id="192.0.2.1",
                             file=file_field, options=[(52, b"\x01"), (67, b"https://boot.ex")])
    split = Offer(dhcp4.parse(raw), "192.0.2.1", AUTH_MAC, 67, 0.1,
                  Probe("dhcpv4", "efi-x64", False, "02:02:02:02:02:02", 1))
    found = rules(observe(offers=[split]))
    assert "https://boot.ex" in [f.subject for f in found["unexpected-origin"]]


def test_https_unexpected_ca() -> None:
    bad = HttpCheck("https://boot.example/boot.ipxe", ok=True, sha256="b" * 64,
                    tls_chain_sha256=["d" * 64, "e" * 64])
    assert rules(observe(http=[bad]))["https-unexpected-ca"][0].severity == Severity.HIGH
    failed = HttpCheck("https://boot.example/boot.ipxe", ok=False, tls_verified=False,
                       tls_error="does not verify")
    assert "https-unexpected-ca" in rules(observe(http=[failed]))
    assert "https-unexpected-ca" not in rules(good_segment())


# -- files ---------------------------------------------------------------------------------------


def test_tftp_boot_file_severity_depends_on_the_hash() -> None:
    unknown = rules(observe(offers=[offer()], fetched=[fetched("192.0.2.1", "undionly.kpxe",
                                                               IPXE + b"x")]))
    assert unknown["tftp-boot-file"][0].severity == Severity.MEDIUM
    known = rules(observe(offers=[offer()], fetched=[fetched("192.0.2.1", "undionly.kpxe",
                                                             IPXE)]))
    assert known["tftp-boot-file"][0].severity == Severity.LOW


def test_boot_file_mismatch_and_unexpected_file() -> None:
    found = rules(observe(offers=[offer(), offer(file="other.efi")], fetched=[
        fetched("192.0.2.1", "undionly.kpxe", IPXE + b"patched"),
        fetched("192.0.2.1", "other.efi", IPXE + b"other")]))
    [mismatch] = found["boot-file-mismatch"]
    assert mismatch.severity == Severity.CRITICAL
    assert mismatch.evidence["expected_sha256"] == [GOOD_SHA]
    assert mismatch.evidence["offer"]["option_67_bootfile"] == "undionly.kpxe"
    assert found["unexpected-boot-file"][0].subject == "tftp://192.0.2.1/other.efi"
    assert "boot-file-mismatch" not in rules(good_segment())


def test_tftp_forbidden_by_policy() -> None:
    obs = observe(offers=[offer()], fetched=[fetched("192.0.2.1", "undionly.kpxe", IPXE)])
    [forbidden] = rules(obs, policy(tftp_allowed=False))["tftp-boot-forbidden"]
    assert forbidden.subject == "tftp://192.0.2.1/undionly.kpxe"
    assert forbidden.evidence["tftp"]["ok"] and forbidden.evidence["offered_by"] == [
        "192.0.2.1"]
    assert "tftp-boot-forbidden" not in rules(obs)


@pytest.mark.parametrize("how", ["fetch failed", "no-follow", "passive", "dhcpv6"])
def test_an_offered_tftp_boot_file_is_forbidden_unfetched(how: str) -> None:
    """tftp_allowed: false was enforced only for files fetched successfully: a server that
    refused the audit (or --no-follow, or passive mode) made the policy silent."""
    obs = {
        "fetch failed": observe(offers=[offer()],
                                fetched=[fetched("192.0.2.1", "undionly.kpxe", None)]),
        "no-follow": observe(offers=[offer()], followed=False),
        "passive": observe(mode="passive", offers=[offer(probe=False)]),
        "dhcpv6": observe(replies6=[reply6("tftp://[2001:db8::1]/x.efi")]),
    }[how]
    [forbidden] = rules(obs, policy(tftp_allowed=False))["tftp-boot-forbidden"]
    assert forbidden.severity == Severity.HIGH and "policy forbids" in forbidden.message
    assert forbidden.subject.startswith("tftp://")
    assert "tftp-boot-forbidden" not in rules(obs)  # allowed: nothing to say


def test_a_segment_booting_only_over_https_breaks_no_tftp_ban() -> None:
    https_only = observe(offers=[offer(ipxe=True, file="https://boot.example/boot.ipxe")],
                         replies6=[reply6("https://boot.example/boot.ipxe")], followed=False)
    assert "tftp-boot-forbidden" not in rules(https_only, policy(tftp_allowed=False))


def test_unfetchable_boot_file_is_unverified() -> None:
    obs = observe(offers=[offer()], fetched=[fetched("192.0.2.1", "undionly.kpxe", None)])
    assert rules(obs)["boot-file-unverified"][0].message.endswith("timed out")
    by_name = observe(offers=[offer(siaddr="0.0.0.0", file="x.efi")])
    by_name.offers[0].packet.options[66] = b"tftp.example"
    assert "not an IP address" in rules(by_name)["boot-file-unverified"][0].message


@pytest.mark.parametrize(("kind", "severity"), [
    ("conflicting-block", Severity.CRITICAL), ("short-block", Severity.HIGH),
    ("size-mismatch", Severity.HIGH), ("out-of-order", Severity.HIGH)])
def test_an_inconsistent_transfer_is_never_a_match_nor_merely_unverified(
        kind: str, severity: Severity) -> None:
    """The audit's in-order view held the released bytes, but iPXE would assemble the
    transfer differently: the finding is high (critical for two versions of a block),
    never "matches released" nor "could not fetch" (both low), so the default
    --fail-on high fails the audit."""
    result = FetchResult("192.0.2.1", "undionly.kpxe", size=len(IPXE), head=IPXE,
                         error="server 192.0.2.1 sent block 1 twice", inconsistent=kind,
                         announced_size=len(IPXE))
    obs = observe(offers=[offer()], fetched=[Fetched(
        BootTarget("tftp", "192.0.2.1", "undionly.kpxe", "tftp://192.0.2.1/undionly.kpxe"),
        result, identify(IPXE))])
    findings = evaluate(obs, policy())
    found = {f.rule: f for f in findings}
    assert found["tftp-transfer-inconsistent"].severity == severity
    assert "sent block 1 twice" in found["tftp-transfer-inconsistent"].message
    assert found["tftp-transfer-inconsistent"].evidence["tftp"]["inconsistent"] == kind
    assert found["tftp-transfer-inconsistent"].evidence["offer"]["option_67_bootfile"] \
        == "undionly.kpxe"
    assert not {"tftp-boot-file", "boot-file-unverified", "boot-file-mismatch"} & set(found)
    assert threshold_reached(findings, Severity.HIGH)


def test_an_inconsistent_well_known_path_is_reported_too() -> None:
    result = FetchResult("192.0.2.6", "pxelinux.cfg/default", size=512,
                         error="short block", inconsistent="short-block")
    obs = observe(fetched=[Fetched(BootTarget(
        "tftp", "192.0.2.6", "pxelinux.cfg/default", "tftp://192.0.2.6/pxelinux.cfg/default"),
        result, None, well_known=True)])
    found = rules(obs)
    assert found["tftp-transfer-inconsistent"][0].severity == Severity.HIGH
    assert "tftp-path-exposed" in found


def test_tftp_writable() -> None:
    yes = WriteResult("192.0.2.6", "probe.txt", writable=True, confirmed=True, detail="stored")
    no = WriteResult("192.0.2.1", "probe.txt", detail="refused: TFTP error 4")
    found = rules(observe(writes=[yes, no]))
    [w] = found["tftp-writable"]
    assert w.severity == Severity.CRITICAL and w.subject == "tftp://192.0.2.6/"
    assert "tftp-writable" not in rules(observe(writes=[no]))


def test_unsigned_chain_hints() -> None:
    pxelinux = b"PXELINUX 6.04" + b"\0" * 10
    found = rules(observe(offers=[offer(file="pxelinux.0")],
                          fetched=[fetched("192.0.2.1", "pxelinux.0", pxelinux)]))
    assert found["non-ipxe-loader"][0].severity == Severity.MEDIUM
    script = b"#!ipxe\nkernel http://x/vmlinuz\nboot\n"
    found = rules(observe(offers=[offer(file="boot.ipxe")],
                          fetched=[fetched("192.0.2.1", "boot.ipxe", script)]))
    assert "script-without-imgverify" in found
    assert found["cleartext-boot-url"][0].subject == "http://x/vmlinuz"
    script = b"#!ipxe\nimgtrust --permanent\nkernel ftp://x/vmlinuz\nchain tftp://x/next.ipxe\n"
    found = rules(observe(offers=[offer(file="boot.ipxe")],
                          fetched=[fetched("192.0.2.1", "boot.ipxe", script)]))
    assert {f.subject for f in found["cleartext-boot-url"]} == {"ftp://x/vmlinuz",
                                                                  "tftp://x/next.ipxe"}
    assert "non-ipxe-loader" not in rules(good_segment())


def test_ipxe_loop_not_broken() -> None:
    looping = observe(offers=[offer(), offer(ipxe=True)],
                      fetched=[fetched("192.0.2.1", "undionly.kpxe", IPXE)])
    [loop] = rules(looping)["ipxe-loop-not-broken"]
    assert loop.severity == Severity.INFO
    assert loop.evidence["ipxe_offer"]["probe_ipxe"] is True
    assert "ipxe-loop-not-broken" not in rules(good_segment())
    # the same non-iPXE file for both is not a loop
    other = observe(offers=[offer(file="pxelinux.0"), offer(file="pxelinux.0", ipxe=True)])
    assert "ipxe-loop-not-broken" not in rules(other)


def test_ipxe_loop_status() -> None:
    assert ipxe_loop_status([offer(), offer(ipxe=True, file="https://x/b.ipxe")]) == "broken"
    assert ipxe_loop_status([offer(), offer(ipxe=True)]) == "not-broken"
    assert ipxe_loop_status([offer()]) == "no-answer-to-ipxe"
    assert ipxe_loop_status([offer(probe=False)]) == "unknown"


def test_well_known_path_exposed() -> None:
    obs = observe(offers=[offer()], fetched=[
        fetched("192.0.2.1", "undionly.kpxe", IPXE),
        fetched("192.0.2.1", "pxelinux.cfg/default", b"DEFAULT x\n", well_known=True)])
    [exposed] = rules(obs)["tftp-path-exposed"]
    assert exposed.subject == "tftp://192.0.2.1/pxelinux.cfg/default"
    assert "tftp-path-exposed" not in rules(good_segment())
    # read in part (cut at the well-known size cap, or the server stopped): still exposed
    partial = fetched("192.0.2.1", "boot.ipxe", None, well_known=True)
    partial.result.size, partial.result.truncated = 4096, True
    [cut] = rules(observe(offers=[offer()], fetched=[partial]))["tftp-path-exposed"]
    assert cut.subject == "tftp://192.0.2.1/boot.ipxe" and "4096 bytes" in cut.message


def test_malformed_packets() -> None:
    bad = Malformed("dhcpv4", "option 67 length 200 runs past the end", "192.0.2.9",
                    "02:74:62:00:00:09", "0201", 300, 0.2)
    [m] = rules(observe(malformed=[bad, bad]))["malformed-packet"]
    assert m.evidence["count"] == 2 and m.subject == "192.0.2.9 (02:74:62:00:00:09)"
    assert "malformed-packet" not in rules(good_segment())


def test_no_responders() -> None:
    assert "no-responders" in rules(observe())
    assert "no-responders" not in rules(good_segment())


def test_passive_multiple_responders_without_probes() -> None:
    obs = observe(mode="passive", offers=[offer(probe=False),
                                          offer(server="192.0.2.2", mac=ROGUE_MAC, probe=False)])
    found = rules(obs)
    assert {"rogue-dhcp", "multiple-responders"} <= set(found)
    assert "boot-file-unverified" not in found  # passive mode fetches nothing


# -- ordering and threshold ----------------------------------------------------------------------


def test_findings_sorted_by_severity_and_fail_on() -> None:
    findings = evaluate(observe(offers=[offer(server="192.0.2.2", mac=ROGUE_MAC),
                                        offer(ipxe=True, file="http://x/y")]), policy())
    severities = [f.severity for f in findings]
    assert severities == sorted(severities, reverse=True)
    assert threshold_reached(findings, Severity.CRITICAL)
    assert not threshold_reached(findings, None)
    assert not threshold_reached([f for f in findings if f.severity < Severity.HIGH],
                                 Severity.HIGH)


@pytest.mark.parametrize("text", ["info", "LOW", "Medium", "high", "critical"])
def test_severity_parse(text: str) -> None:
    assert Severity.parse(text).label == text.lower()


def test_an_authorized_duid_with_no_mac_in_it_answering_from_two_macs_conflicts() -> None:
    """A DUID-EN holds no MAC to compare with the sender's: the same DUID from a second MAC,
    under an entry naming none, is the impersonation the DHCPv4 check finds for an IP."""
    duid = bytes.fromhex("00020000ab11") + b"server-one"

    def advert(mac: str, ip: str) -> Reply6:
        raw = (bytes([dhcp6.ADVERTISE]) + b"\0\0\1"
               + packets.opt6(dhcp6.OPT_CLIENTID, dhcp6.duid_ll(b"\x02" * 6))
               + packets.opt6(dhcp6.OPT_SERVERID, duid))
        return Reply6(dhcp6.parse(raw), ip, mac, 0.1)

    by_duid = policy(authorized_servers=[{"duid": duid.hex(), "role": "dhcpv6"}])
    one = advert(AUTH_MAC, "fe80::1")
    [conflict] = rules(observe(replies6=[one, advert(ROGUE_MAC, "fe80::2")]),
                       by_duid)["server-identity-conflict"]
    assert conflict.evidence["source_macs"] == [AUTH_MAC, ROGUE_MAC]
    assert "server-identity-conflict" not in rules(observe(replies6=[one, one]), by_duid)


def test_one_dhcpv6_server_answering_from_two_addresses_is_one_responder() -> None:
    """dnsmasq answers from its link-local and its global address: one responder, one
    finding (naming both), though each address is checked against the policy."""
    from datetime import UTC, datetime

    from trustboot.audit.model import responders
    from trustboot.audit.report import summary
    from trustboot.audit.runner import AuditResult

    local = reply6("https://[2001:db8::66]/x.efi", mac=bytes.fromhex("027462000009"))
    glob = reply6("https://[2001:db8::66]/x.efi", mac=bytes.fromhex("027462000009"))
    glob.src_ip = "2001:db8::9"
    obs = observe(replies6=[local, glob])
    [rogue] = rules(obs)["rogue-dhcpv6"]
    assert rogue.evidence["also_from"] == ["2001:db8::9"]
    [v6] = [r for r in responders(obs) if r["protocol"] == "dhcpv6"]
    assert v6["server_ips"] == ["2001:db8::9", "fe80::1"]
    now = datetime.now(UTC)
    assert summary(AuditResult(obs, [], policy(), now, now), None)["responders"] == 1
