"""Observation + policy → findings. Pure: no I/O, no clock, deterministic order."""

from __future__ import annotations

import enum
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from trustboot.audit import dhcp4
from trustboot.audit.loaders import LoaderInfo
from trustboot.audit.model import (
    LIMIT_REASONS,
    BootTarget,
    Malformed,
    Observation,
    Offer,
    Reply6,
)
from trustboot.audit.policy import Policy
from trustboot.audit.tftp import INCONSISTENCIES, FetchResult


class Severity(enum.IntEnum):
    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown severity {text!r}") from None


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    severity: Severity  # the usual severity; a finding may raise or lower it
    description: str
    remediation: str


_RULES = [
    Rule("rogue-dhcp", "DHCP server not in the authorized list", Severity.HIGH,
         "A DHCP server that the policy does not authorize answered a PXE client. Whoever "
         "answers first decides what the machine boots.",
         "Enable DHCP snooping on the access switches (trust only the uplink/authorized "
         "server ports), find and remove the server, and list legitimate servers in the "
         "policy."),
    Rule("rogue-proxydhcp", "ProxyDHCP / PXE boot server not in the authorized list",
         Severity.CRITICAL,
         "A ProxyDHCP server answers PXE clients with boot parameters only; an unauthorized "
         "one exists to choose what machines boot.",
         "Locate the host by its MAC, remove it, and enable DHCP snooping so that only "
         "trusted ports may send DHCP server messages (UDP 67 and 4011)."),
    Rule("rogue-dhcpv6", "DHCPv6 server not in the authorized list", Severity.HIGH,
         "A DHCPv6 server the policy does not authorize answered a UEFI network boot "
         "Solicit.",
         "Enable DHCPv6 Guard / RA Guard on the switches, remove the server, and list "
         "legitimate DHCPv6 servers (by DUID) in the policy."),
    Rule("multiple-responders", "More than one server answers booting clients",
         Severity.MEDIUM,
         "Several servers answered the same PXE client: a client takes whichever answer "
         "arrives first, so the boot result depends on a race.",
         "Keep one authoritative DHCP/ProxyDHCP service per segment and block the others "
         "with DHCP snooping."),
    Rule("cleartext-boot-url", "Boot file offered over cleartext HTTP", Severity.HIGH,
         "The boot file or script is fetched over http://: anyone on the path can replace "
         "it.",
         "Serve iPXE scripts and images over HTTPS from an iPXE built with TRUST= your "
         "root, and check every image with imgverify."),
    Rule("dhcpv6-cleartext-boot-url", "DHCPv6 boot file URL is cleartext", Severity.HIGH,
         "DHCPv6 option 59 hands UEFI clients an http:// (or tftp://) boot file URL.",
         "Use https:// boot URLs and an iPXE built with embedded trust; enable DHCPv6 Guard."),
    Rule("tftp-boot-file", "Boot file served over TFTP", Severity.MEDIUM,
         "TFTP is cleartext and unauthenticated: a client cannot tell the file it received "
         "from one an attacker substituted.",
         "Keep TFTP to a minimal first stage (iPXE with embedded trust) whose hash you "
         "publish; load everything after it over HTTPS with imgverify."),
    Rule("boot-file-mismatch", "Boot file differs from the published release", Severity.CRITICAL,
         "A file offered under the name of a released file has a different SHA-256 than "
         "the release.",
         "Find out who changed the file on the server, restore the released file, and "
         "rotate any credentials the booted machines hold."),
    Rule("unexpected-boot-file", "Boot file is not part of the published release",
         Severity.HIGH,
         "The segment hands out a boot file whose name and hash are not in the release.",
         "Serve only released files, or add the file to the release so it is signed and "
         "listed."),
    Rule("tftp-writable", "TFTP server accepts uploads", Severity.CRITICAL,
         "The TFTP server accepted a write request from an unauthenticated client: anyone "
         "on the segment can replace boot files.",
         "Disable TFTP writes (e.g. drop tftpd's --create/-c, make the root read-only), "
         "and delete the probe file named in the evidence."),
    Rule("non-ipxe-loader", "Boot chain starts with a loader that cannot verify signatures",
         Severity.MEDIUM,
         "The first-stage loader is not iPXE (or was not recognised as iPXE), so nothing "
         "here shows that the next stages are checked with imgverify.",
         "Chainload an iPXE built with TRUST= your root and IMAGE_TRUST_CMD, and "
         "imgverify every image it loads (or rely on UEFI Secure Boot with signed shims)."),
    Rule("script-without-imgverify", "iPXE script boots without imgverify", Severity.MEDIUM,
         "An iPXE script offered on the segment can boot an image, or hand a kernel an "
         "initrd, that no imgverify checked on some path through it: no imgverify at all, "
         "one whose failure the script skips ('|| goto'), one a goto jumps over, one "
         "after the boot, or a command whose name is computed ('${c} URL' may be chain).",
         "Set 'imgtrust --permanent', then imgverify every image before booting it, "
         "initrds included, each '|| goto' a block that ends in reboot or a halt loop; "
         "serve the script over HTTPS."),
    Rule("ipxe-loop-not-broken", "Server does not break the iPXE chainload loop", Severity.INFO,
         "The server offers the same iPXE binary to iPXE itself (user-class iPXE), so a "
         "client chainloads iPXE forever.",
         "Match user-class iPXE (dnsmasq: dhcp-userclass=set:ipxe,iPXE) and hand iPXE an "
         "https:// script instead of the binary."),
    Rule("malformed-packet", "Malformed boot-protocol packet seen", Severity.LOW,
         "A DHCP/DHCPv6/TFTP packet on the segment could not be decoded. It may be a broken "
         "server or an attempt to exploit client parsers.",
         "Identify the sender by its MAC and IP; enable DHCP snooping so only trusted ports "
         "send server messages."),
    Rule("tftp-path-exposed", "Well-known boot path readable over TFTP", Severity.LOW,
         "A well-known boot configuration or script is readable by anyone over TFTP.",
         "Serve configuration over HTTPS with imgverify instead, or remove paths that are "
         "not needed."),
    Rule("https-unexpected-ca", "HTTPS boot URL does not chain to the expected CA",
         Severity.HIGH,
         "The HTTPS server's certificate chain does not lead to the CA the release was "
         "built to trust: iPXE with TRUST= that CA would refuse it, or the client is pointed "
         "at a different origin.",
         "Serve boot files from an origin whose certificate is issued by the release CA."),
    Rule("unexpected-origin", "Boot URL is not under the expected origin", Severity.HIGH,
         "A boot URL points somewhere other than the release's origin.",
         "Point DHCP option 67/59 (and iPXE scripts) at the published origin."),
    Rule("boot-file-unverified", "Offered boot file could not be fetched and checked",
         Severity.LOW,
         "The audit could not fetch the offered boot file (timeout, error, too large, or "
         "an unresolvable server), so its content is unknown.",
         "Check the server named in the evidence; rerun with a larger --max-file-size or "
         "--follow-timeout if the file is large."),
    Rule("tftp-transfer-inconsistent", "TFTP server sent a file iPXE would assemble "
         "differently from the audit", Severity.HIGH,
         "The server's transfer was one from which iPXE would build other bytes than those "
         "the audit hashed: a block sent again with other content (critical: two versions "
         "of the file were served), blocks out of order, a short block before the announced "
         "size, a file longer or shorter than announced, options changed after they were "
         "set, an unrequested multicast option, or a size 32- and 64-bit clients read "
         "differently. No conforming server does this; one that shows the audit one file "
         "and clients another does.",
         "Treat the server as hostile or compromised: locate it by the address in the "
         "evidence, compare the file on its disk with the release, and serve boot files "
         "only from servers you control, loading later stages over HTTPS with imgverify."),
    Rule("tftp-boot-forbidden", "TFTP boot offered where the policy forbids it", Severity.HIGH,
         "The policy says this segment must not boot over TFTP.",
         "Move clients to UEFI HTTPS boot or an embedded iPXE, and remove the TFTP service."),
    Rule("audit-limit-reached", "The audit reached a limit: it did not see everything",
         Severity.HIGH,
         "A bound that keeps the audit's time and memory finite was reached (a flood, too "
         "many answers from one sender, too many senders, a boot file too large or too slow). "
         "What lay beyond it was not examined, so the absence of other findings does not "
         "mean the segment is clean: a rogue server may be hiding behind the noise.",
         "Find the sender named in the evidence (a flood or many spoofed answers is itself an "
         "attack: enable DHCP snooping and storm control), then rerun; raise "
         "--follow-timeout or --max-file-size for large or slow boot files."),
    Rule("server-identity-conflict", "Authorized server identity claimed by another sender",
         Severity.HIGH,
         "Answers carrying an authorized server's identity came from a sender that is not "
         "that server (another source address or MAC, or a DHCPv6 DUID whose embedded MAC "
         "is not the sender's): someone impersonates the authorized server.",
         "Locate the sender by its MAC, enable DHCP snooping / DHCPv6 Guard, and authorize "
         "servers by MAC as well as IP (and DUID plus MAC for DHCPv6)."),
    Rule("boot-url-local-target", "Boot URL points at the auditing host or a local-only "
         "address", Severity.HIGH,
         "A boot URL or boot server resolves to a loopback, link-local, unspecified, "
         "multicast or this host's own address (e.g. a cloud metadata endpoint). A client "
         "would fetch from itself or a local service; the audit does not fetch it.",
         "Point DHCP option 66/67 and DHCPv6 option 59 at the published origin; find who "
         "set this value."),
    Rule("http-encoded-boot-file", "Boot file served with a Content-Encoding", Severity.MEDIUM,
         "The origin sent the boot file with a Content-Encoding although the audit asked "
         "for identity. iPXE treats unknown encodings as identity and boots the encoded "
         "bytes; the hash checked here is of those bytes.",
         "Serve boot files without Content-Encoding (turn off gzip for them on the origin)."),
    Rule("boot-name-after-nul", "Boot parameter hides bytes after a NUL", Severity.HIGH,
         "A boot file name, boot server or boot URL (DHCP option 66/67, the BOOTP file or "
         "sname field, DHCPv6 option 59) carries bytes after a NUL. Clients read it as a C "
         "string and load the name before the NUL; the bytes after it are seen only by "
         "tools that do not stop there, so they exist to show a reader (or an audit) "
         "another name than the one machines boot.",
         "Find who set this value on the server named in the evidence and remove the bytes "
         "after the NUL; if the server is not yours, remove it and enable DHCP snooping."),
    Rule("no-responders", "No boot server answered", Severity.INFO,
         "No DHCP/ProxyDHCP/DHCPv6 server answered during the listen window.",
         "If servers are expected, check the interface, VLAN and window (--window)."),
    Rule("no-authorized-servers", "No authorized servers in the policy", Severity.INFO,
         "Without a list of authorized servers, responders cannot be told from rogues.",
         "Add authorized_servers to the policy file."),
]
RULES: dict[str, Rule] = {r.id: r for r in _RULES}


@dataclass
class Finding:
    rule: str
    severity: Severity
    subject: str  # the server, URL or file the finding is about
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return RULES[self.rule].title

    @property
    def remediation(self) -> str:
        return RULES[self.rule].remediation

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.rule, "severity": self.severity.label, "title": self.title,
            "subject": self.subject, "message": self.message, "evidence": self.evidence,
            "remediation": self.remediation,
        }


IPXE_NAME = re.compile(r"(ipxe|undionly|snponly|\.kpxe$|\.kkpxe$|\.kkkpxe$)", re.IGNORECASE)
CLEARTEXT_SCHEMES = ("http", "ftp", "nfs", "tftp")


def _finding(rule: str, subject: str, message: str, evidence: dict[str, Any],
             severity: Severity | None = None) -> Finding:
    return Finding(rule, severity if severity is not None else RULES[rule].severity, subject,
                   message, evidence)


def _server_key(offer: Offer) -> tuple[str, str]:
    return (offer.server_ip, offer.src_mac)


def evaluate(obs: Observation, policy: Policy) -> list[Finding]:
    """All findings for one audit, most severe first (stable within a severity)."""
    findings: list[Finding] = []
    findings += _check_servers(obs, policy)
    findings += _check_dhcpv6(obs, policy)
    findings += _check_boot_urls(obs, policy)
    findings += _check_after_nul(obs)
    findings += _check_fetched(obs, policy)
    findings += _check_tftp_forbidden(obs, policy)
    findings += _check_http(obs, policy)
    findings += _check_loop(obs)
    findings += _check_writes(obs)
    findings += _check_malformed(obs)
    findings += _check_limits(obs)
    if not obs.offers and not obs.replies6:
        findings.append(_finding(
            "no-responders", obs.interface,
            f"nothing answered on {obs.interface} within {obs.window:g} s",
            {"mode": obs.mode, "probes": len(obs.probes)}))
    if not policy.has_authorized and (obs.offers or obs.replies6):
        findings.append(_finding(
            "no-authorized-servers", policy.source or "(no policy)",
            "responders were not checked against an authorized list", {}))
    findings = aggregate(findings)
    findings.sort(key=lambda f: -int(f.severity))  # sort is stable: order kept within a severity
    return findings


AGGREGATE_ABOVE = 20  # more findings of one rule and severity than this become one
AGGREGATE_EXAMPLES = 3  # evidence of the first few kept in the aggregate
AGGREGATE_SUBJECTS = 25


def aggregate(findings: list[Finding]) -> list[Finding]:
    """Many findings of one rule and severity (2,000 fake servers) become one that names how
    many there are, lists the first subjects and keeps the first few as evidence."""
    groups: dict[tuple[str, Severity], list[Finding]] = defaultdict(list)
    for f in findings:
        groups[(f.rule, f.severity)].append(f)
    out: list[Finding] = []
    done: set[tuple[str, Severity]] = set()
    for f in findings:
        key = (f.rule, f.severity)
        group = groups[key]
        if len(group) <= AGGREGATE_ABOVE:
            out.append(f)
            continue
        if key in done:
            continue
        done.add(key)
        # Senders that answered our own probes first: a rogue must not drown among the
        # senders of a flood addressed to other clients (stable sort keeps the rest in order).
        group = sorted(group, key=lambda g: not g.evidence.get("answered_probes"))
        subjects = list(dict.fromkeys(g.subject for g in group))
        shown = ", ".join(subjects[:5]) + (f" and {len(subjects) - 5} more"
                                           if len(subjects) > 5 else "")
        out.append(Finding(f.rule, f.severity, f"{len(subjects)} subjects",
                           f"{len(group)} findings of this kind ({shown}); first: "
                           f"{group[0].message}",
                           {"count": len(group), "subjects": subjects[:AGGREGATE_SUBJECTS],
                            "subjects_omitted": max(0, len(subjects) - AGGREGATE_SUBJECTS),
                            "examples": [g.evidence for g in group[:AGGREGATE_EXAMPLES]]}))
    return out


def _check_limits(obs: Observation) -> list[Finding]:
    """Every bound reached is a high finding: the audit did not see everything."""
    out: list[Finding] = []
    for reason, count in obs.limits.items():
        samples = obs.limit_samples.get(reason, [])
        what = LIMIT_REASONS.get(reason, reason)
        out.append(_finding(
            "audit-limit-reached", f"{obs.interface}: {reason}",
            f"{count} {what}" + (f"; e.g. {', '.join(samples)}" if samples else "")
            + ": the segment was not fully examined",
            {"limit": reason, "count": count, "examples": samples}))
    return out


def _offers_boot(offer: Offer) -> bool:
    return bool(offer.boot_file)


def _check_servers(obs: Observation, policy: Policy) -> list[Finding]:
    out: list[Finding] = []
    by_server: dict[tuple[str, str], list[Offer]] = defaultdict(list)
    for offer in obs.offers:
        by_server[_server_key(offer)].append(offer)
    for (ip, mac), offers in by_server.items():
        if not policy.has_authorized:
            break
        role = "proxydhcp" if all(o.is_proxy for o in offers) else "dhcp"
        # A server identifier (option 54) is whatever the sender wrote: an authorized
        # server sends from the address it names, or its answer comes through a relay the
        # policy authorizes (role relay). giaddr is the sender's word too: it proves nothing.
        spoofed = [o for o in offers if o.src_ip != o.server_ip
                   and not policy.authorized_match(role="relay", ip=o.src_ip, mac=o.src_mac)]
        if policy.authorized_match(role=role, ip=ip, mac=mac) and not spoofed:
            continue
        boots = [o for o in offers if _offers_boot(o)]
        sample = spoofed[0] if spoofed else boots[0] if boots else offers[0]
        evidence = sample.evidence()
        if spoofed:
            evidence["spoofed_server_identifier"] = (
                f"option 54 says {sample.server_ip}, the packet came from {sample.src_ip}")
        evidence["answered_probes"] = sorted(
            {f"{o.arch}{'+ipxe' if o.ipxe_probe else ''}" for o in offers if o.probe})
        boot_files = sorted({o.boot_file for o in offers if o.boot_file})
        evidence["boot_files"] = boot_files
        evidence["authorized"] = [a.label() for a in policy.authorized]
        if role == "proxydhcp":
            out.append(_finding(
                "rogue-proxydhcp", f"{ip} ({mac})",
                f"unauthorized ProxyDHCP server {ip} ({mac}) offers boot file(s) "
                f"{', '.join(boot_files) or '(via PXE menu)'}", evidence))
        else:
            sev = Severity.CRITICAL if boots else Severity.HIGH
            what = (f"and boot file(s) {', '.join(boot_files)}" if boots
                    else "with no boot file")
            offered = sorted({o.packet.yiaddr for o in offers
                              if o.packet.yiaddr != dhcp4.NO_ADDRESS})
            out.append(_finding(
                "rogue-dhcp", f"{ip} ({mac})",
                f"unauthorized DHCP server {ip} ({mac}) offers address(es) "
                f"{', '.join(offered) or '(none)'} {what}", evidence, sev))
    out += _identity_conflicts(by_server, policy)
    # Multiple responders: more than one server answered the same kind of client.
    per_probe: dict[tuple[str, bool], set[tuple[str, str]]] = defaultdict(set)
    booting: dict[tuple[str, bool], set[tuple[str, str]]] = defaultdict(set)
    for offer in obs.offers:
        if offer.probe is None or offer.port == dhcp4.PXE_PORT:
            continue
        client = (offer.probe.arch, offer.probe.ipxe)
        per_probe[client].add(_server_key(offer))
        if _offers_boot(offer) or offer.is_proxy:
            booting[client].add(_server_key(offer))
    servers = sorted({s for group in per_probe.values() for s in group})
    if obs.mode == "passive":
        servers = sorted(by_server)
    if len(servers) > 1:
        max_booting = max((len(v) for v in booting.values()), default=0)
        if obs.mode == "passive":
            max_booting = len({_server_key(o) for o in obs.offers
                               if _offers_boot(o) or o.is_proxy})
        sev = Severity.MEDIUM if max_booting > 1 else Severity.LOW
        out.append(_finding(
            "multiple-responders", obs.interface,
            f"{len(servers)} servers answered booting clients "
            f"({max_booting} of them with boot parameters)",
            {"servers": [{"ip": ip, "mac": mac,
                          "roles": sorted({o.role for o in by_server[(ip, mac)]})}
                         for ip, mac in servers]}, sev))
    return out


def _identity_conflicts(by_server: dict[tuple[str, str], list[Offer]], policy: Policy
                        ) -> list[Finding]:
    """An authorized IP answered from more than one MAC: one of them impersonates it (an
    entry without a MAC cannot say which, so each sender is named)."""
    out: list[Finding] = []
    macs: dict[str, list[str]] = defaultdict(list)
    for ip, mac in by_server:
        macs[ip].append(mac)
    for ip, senders in macs.items():
        if len(senders) < 2:
            continue
        entries = [a for a in policy.authorized if a.ip is not None and a.mac is None
                   and a.role != "relay" and a.matches(role=a.role, ip=ip)]
        if not entries:
            continue
        out.append(_finding(
            "server-identity-conflict", ip,
            f"authorized server {ip} ({entries[0].label()}) answered from {len(senders)} "
            f"MACs: {', '.join(sorted(senders))}; the policy names no MAC, so it cannot tell "
            "the server from an impersonator",
            {"server_ip": ip, "source_macs": sorted(senders),
             "authorized": [a.label() for a in entries]}))
    return out


def _duid_spoofed(reply: Reply6) -> str | None:
    """Why a DHCPv6 answer's identity does not fit its sender (DUID-LL/LLT embed a MAC)."""
    embedded = reply.message.server_duid_mac
    if embedded is not None and embedded != reply.src_mac.lower():
        return (f"server DUID {reply.message.server_duid} embeds MAC {embedded}, the "
                f"Advertise came from {reply.src_mac}")
    return None


def _check_dhcpv6(obs: Observation, policy: Policy) -> list[Finding]:
    out: list[Finding] = []
    # Authorization and the DUID check run once per sender (DUID, address, MAC), not per
    # DUID: a rogue copying the authorized server's DUID and answering after it is a sender
    # of its own. Findings are per responder (DUID, MAC), as the report lists responders:
    # one server answers from its link-local and its global address alike, and a second
    # address of one responder is added to its finding's evidence.
    seen: set[tuple[str, str, str]] = set()
    judged: dict[tuple[str, str, str], Finding] = {}  # (rule, DUID, MAC) -> its finding
    urls_done: set[tuple[str, str, str]] = set()
    # senders authorized by an entry that names no MAC, per DUID (see below)
    unpinned: dict[str, list[Reply6]] = defaultdict(list)
    conflicted: set[str] = set()
    for reply in obs.replies6:
        duid = reply.message.server_duid or ""
        if reply.sender not in seen:
            seen.add(reply.sender)
            entry = policy.authorized_match(
                role="dhcpv6", ip=reply.src_ip, mac=reply.src_mac,
                duid=reply.message.server_duid) if policy.has_authorized else None
            spoofed = _duid_spoofed(reply)
            urls = [t.url for t in reply.boot_targets()]
            url = f"boot URL{'s' if len(urls) > 1 else ''} {', '.join(urls)}" if urls else ""
            if entry is not None and entry.mac is None and duid:
                unpinned[duid].append(reply)
            finding = None
            if entry is not None and spoofed is not None and entry.mac is None:
                # authorized by DUID alone, but the DUID's own MAC is not the sender's
                conflicted.add(duid)
                finding = _finding(
                    "server-identity-conflict", f"{reply.src_ip} ({reply.src_mac})",
                    f"DHCPv6 answer carries authorized DUID {reply.message.server_duid} "
                    f"from another sender: {spoofed}",
                    {**reply.evidence(), "spoofed_duid": spoofed,
                     "authorized": entry.label()})
            elif policy.has_authorized and entry is None:
                evidence = reply.evidence()
                if spoofed is not None:
                    evidence["spoofed_duid"] = spoofed
                finding = _finding(
                    "rogue-dhcpv6", f"{reply.src_ip} (DUID {reply.message.server_duid})",
                    f"unauthorized DHCPv6 server {reply.src_ip} answered"
                    + (f" with {url}" if url else ""),
                    evidence, Severity.CRITICAL if url else Severity.HIGH)
            if finding is not None:
                earlier = judged.get((finding.rule, duid, reply.src_mac))
                if earlier is None:
                    judged[(finding.rule, duid, reply.src_mac)] = finding
                    out.append(finding)
                else:
                    also = earlier.evidence.setdefault("also_from", [])
                    if len(also) < 16:
                        also.append(reply.src_ip)
                    if finding.severity > earlier.severity:
                        earlier.severity = finding.severity
                        earlier.message = finding.message
        for target in reply.boot_targets():
            url = target.url
            if (duid, reply.src_mac, url) in urls_done:
                continue
            urls_done.add((duid, reply.src_mac, url))
            if target.scheme in CLEARTEXT_SCHEMES:
                out.append(_finding(
                    "dhcpv6-cleartext-boot-url", url,
                    f"DHCPv6 server {reply.src_ip} hands out the cleartext boot URL {url}",
                    reply.evidence()))
    # An authorized DUID (a DUID-EN or DUID-UUID holds no MAC to compare) answering from
    # more than one MAC, under an entry naming none: one of them impersonates the server,
    # as for an authorized DHCPv4 address answering from two MACs.
    for duid, replies in unpinned.items():
        macs = sorted({r.src_mac for r in replies})
        if len(macs) < 2 or duid in conflicted:
            continue
        out.append(_finding(
            "server-identity-conflict", f"DUID {duid}",
            f"authorized DHCPv6 DUID {duid} answered from {len(macs)} MACs: "
            f"{', '.join(macs)}; the policy names no MAC, so it cannot tell the server from "
            "an impersonator",
            {"server_duid": duid, "source_macs": macs,
             "source_ips": sorted({r.src_ip for r in replies})}))
    return out


def _check_boot_urls(obs: Observation, policy: Policy) -> list[Finding]:
    """Cleartext and off-origin URLs in DHCPv4 offers (and the HTTPS ones' origin in v6)."""
    out: list[Finding] = []
    done: set[tuple[str, str]] = set()
    for offer in obs.offers:
        for target in offer.boot_targets():
            if target.scheme == "tftp":
                continue
            key = (target.url, offer.server_ip)
            if key in done:
                continue
            done.add(key)
            if target.scheme in ("http", "ftp", "nfs"):
                out.append(_finding(
                    "cleartext-boot-url", target.url,
                    f"{offer.role} server {offer.server_ip} offers the cleartext boot URL "
                    f"{target.url}" + (" to iPXE" if offer.ipxe_probe else ""),
                    offer.evidence()))
    if policy.origins:
        urls: list[tuple[str, dict[str, Any]]] = []
        for offer in obs.offers:
            urls += [(t.url, offer.evidence()) for t in offer.boot_targets()
                     if t.scheme in ("http", "https")]
        for reply in obs.replies6:
            urls += [(t.url, reply.evidence()) for t in reply.boot_targets()
                     if t.scheme in ("http", "https")]
        reported: set[str] = set()
        for url, evidence in urls:
            if url in reported or policy.under_origin(url):
                continue
            reported.add(url)
            out.append(_finding(
                "unexpected-origin", url,
                f"boot URL {url} is not under the expected origin "
                f"{' or '.join(policy.origins)}",
                {**evidence, "expected_origins": list(policy.origins)}))
    return out


def _check_after_nul(obs: Observation) -> list[Finding]:
    """Boot parameters with bytes after a NUL: clients use what comes before it."""
    out: list[Finding] = []
    done: set[tuple[str, str, str]] = set()
    for offer in obs.offers:
        pkt = offer.packet
        for where, (count, tail) in pkt.after_nul.items():
            key = (f"{offer.server_ip} {offer.src_mac}", where, tail)
            if key in done:
                continue
            done.add(key)
            # An option has its own length: a NUL inside it is only there to end what
            # clients read early. The fixed-size header fields are NUL-padded, and a sloppy
            # server may leave stale bytes there: less sure, one step lower.
            sev = Severity.MEDIUM if where.endswith(" field") else Severity.HIGH
            out.append(_finding(
                "boot-name-after-nul", f"{offer.server_ip} ({offer.src_mac})",
                f"{offer.role} server {offer.server_ip} sends {where} with {count} bytes "
                f"after a NUL ({dhcp4.shown(tail, 64)!r}): clients stop at the NUL",
                offer.evidence(), sev))
    for reply in obs.replies6:
        for count, tail in reply.message.url_tails:
            key = (" ".join(reply.sender), "option 59", tail)
            if key in done:
                continue
            done.add(key)
            out.append(_finding(
                "boot-name-after-nul", f"{reply.src_ip} ({reply.src_mac})",
                f"DHCPv6 server {reply.src_ip} sends option 59 with {count} bytes after "
                f"a NUL ({dhcp4.shown(tail, 64)!r}): clients stop at the NUL",
                reply.evidence()))
    return out


def _check_content(
    subject: str, name: str, sha: str | None, policy: Policy, evidence: dict[str, Any]
) -> list[Finding]:
    out: list[Finding] = []
    if sha is None or not policy.expected_files:
        return out
    if policy.expected_by_sha(sha):
        return out
    named = policy.expected_by_name(name)
    if named:
        evidence = {**evidence, "expected_sha256": [f.sha256 for f in named],
                    "expected_source": named[0].source}
        out.append(_finding(
            "boot-file-mismatch", subject,
            f"{subject} has SHA-256 {sha}, not the released {named[0].sha256}", evidence))
    else:
        out.append(_finding(
            "unexpected-boot-file", subject,
            f"{subject} (SHA-256 {sha}) is not among the {len(policy.expected_files)} "
            "expected files", {**evidence,
                               "expected_names": sorted({f.name for f in policy.expected_files})}))
    return out


def _loader_findings(subject: str, loader: LoaderInfo | None, evidence: dict[str, Any]
                     ) -> list[Finding]:
    out: list[Finding] = []
    if loader is None:
        return out
    if loader.script and loader.ipxe:
        if not loader.imgverify:
            out.append(_finding(
                "script-without-imgverify", subject,
                f"iPXE script {subject} was not checked for imgverify or imgtrust: "
                f"{loader.not_parsed}" if loader.not_parsed else
                f"iPXE script {subject} can boot an image no imgverify checked: "
                f"{loader.unguarded}",
                {**evidence, "urls_in_script": loader.urls,
                 **({"not_parsed": loader.not_parsed} if loader.not_parsed else {}),
                 **({"unguarded": loader.unguarded} if loader.unguarded else {})}))
        for url in loader.urls:
            if url.lower().startswith(("http://", "ftp://", "tftp://")):
                out.append(_finding(
                    "cleartext-boot-url", url,
                    f"iPXE script {subject} loads {url} over a cleartext protocol",
                    {**evidence, "script": subject}))
    elif not loader.ipxe and loader.kind != "text":
        sev = Severity.LOW if loader.pe_signed else Severity.MEDIUM
        signed = {True: "Authenticode-signed", False: "unsigned", None: "not PE"}[
            loader.pe_signed]
        out.append(_finding(
            "non-ipxe-loader", subject,
            f"{subject} is {loader.description} ({signed}), not iPXE: the audit cannot see "
            "that later stages are verified", {**evidence, "loader": loader.to_json()}, sev))
    return out


def _inconsistent(subject: str, res: FetchResult, evidence: dict[str, Any]) -> Finding:
    """A transfer iPXE would assemble differently: critical when the server sent two
    versions of the same block (it served two files), high otherwise."""
    sev = Severity.CRITICAL if res.inconsistent == "conflicting-block" else Severity.HIGH
    what = INCONSISTENCIES.get(res.inconsistent or "", res.inconsistent or "")
    return _finding("tftp-transfer-inconsistent", subject,
                    f"{subject}: {what}; {res.error}", evidence, sev)


def _check_fetched(obs: Observation, policy: Policy) -> list[Finding]:
    out: list[Finding] = []
    # which offers name each target, decoded once (not once per fetched file)
    offered: dict[BootTarget, list[Offer]] = defaultdict(list)
    for offer in obs.offers:
        for target in offer.boot_targets():
            offered[target].append(offer)
    for fetched in obs.fetched:
        res = fetched.result
        target = fetched.target
        evidence: dict[str, Any] = {"tftp": res.to_json()}
        if fetched.loader is not None:
            evidence["loader"] = fetched.loader.to_json()
        if fetched.well_known:
            if res.inconsistent:
                out.append(_inconsistent(target.url, res, evidence))
            if res.ok or res.size:
                out.append(_finding(
                    "tftp-path-exposed", target.url,
                    f"{target.url} is readable over TFTP ({res.size} bytes)", evidence))
                out += _loader_findings(target.url, fetched.loader, evidence)
            continue
        sources = offered.get(target, [])
        if sources:
            evidence["offer"] = sources[0].evidence()
            evidence["offered_by"] = sorted({o.server_ip for o in sources})
        if res.inconsistent:  # never "matches" nor a mere "unverified": the server misled
            out.append(_inconsistent(target.url, res, evidence))
            continue
        if not res.ok:
            out.append(_finding(
                "boot-file-unverified", target.url,
                f"could not fetch {target.url}: {res.error}", evidence))
            continue
        assert res.sha256 is not None
        expected = policy.expected_by_sha(res.sha256)
        sev = Severity.LOW if expected else Severity.MEDIUM
        what = (f"matches released {expected.name}" if expected
                else "matches no expected file" if policy.expected_files
                else "has no expected hash in the policy")
        out.append(_finding(
            "tftp-boot-file", target.url,
            f"{target.url} ({res.size} bytes, SHA-256 {res.sha256}) is served over "
            f"cleartext, unauthenticated TFTP; it {what}", evidence, sev))
        out += _check_content(target.url, target.path, res.sha256, policy, evidence)
        out += _loader_findings(target.url, fetched.loader, evidence)
    # Offers whose TFTP target was never fetched (unresolvable names, skipped).
    if obs.followed and obs.mode == "active":
        for nf in obs.not_fetched():
            if nf.target.scheme == "tftp":
                out.append(_finding(
                    "boot-file-unverified", nf.target.url,
                    f"{nf.target.url} was not fetched ({nf.reason})", nf.offer))
    return out


def _check_tftp_forbidden(obs: Observation, policy: Policy) -> list[Finding]:
    """With tftp_allowed: false, a TFTP boot file offered is the finding: whether the audit
    could fetch it (a server refusing the audit, --no-follow, passive mode) does not
    change what clients are told to do."""
    if policy.tftp_allowed:
        return []
    sources: dict[BootTarget, list[Offer | Reply6]] = defaultdict(list)
    for offer in obs.offers:
        for target in offer.boot_targets():
            if target.scheme == "tftp":
                sources[target].append(offer)
    for reply in obs.replies6:
        for target in reply.boot_targets():
            if target.scheme == "tftp":
                sources[target].append(reply)
    fetches = {f.target: f.result for f in obs.fetched if not f.well_known}
    out: list[Finding] = []
    for target, offered in sources.items():
        evidence: dict[str, Any] = {
            "offer": offered[0].evidence(),
            "offered_by": sorted({o.server_ip if isinstance(o, Offer) else o.src_ip
                                  for o in offered})}
        if target in fetches:
            evidence["tftp"] = fetches[target].to_json()
        out.append(_finding(
            "tftp-boot-forbidden", target.url,
            f"{target.url} is offered over TFTP, which the policy forbids", evidence))
    return out


def _check_http(obs: Observation, policy: Policy) -> list[Finding]:
    out: list[Finding] = []
    for check in obs.http:
        evidence: dict[str, Any] = {"http": check.to_json()}
        if check.refused is not None:
            out.append(_finding(
                "boot-url-local-target", check.url,
                f"boot URL {check.url} was not fetched: {check.refused}", evidence))
            continue
        if check.content_encoding is not None:
            out.append(_finding(
                "http-encoded-boot-file", check.url,
                f"{check.url} came with Content-Encoding {check.content_encoding} although "
                "identity was asked for", evidence))
        if check.url.lower().startswith("https://") and policy.ca_sha256:
            if check.tls_verified is False or (
                check.tls_verified is None and check.tls_chain_sha256
                and policy.ca_sha256 not in check.tls_chain_sha256
            ):
                out.append(_finding(
                    "https-unexpected-ca", check.url,
                    f"{check.url}: the server's chain does not lead to CA {policy.ca_sha256}"
                    + (f" ({check.tls_error})" if check.tls_error else ""),
                    {**evidence, "expected_ca_sha256": policy.ca_sha256}))
        if check.ok and check.sha256:
            name = BootTarget.from_url(check.url).path
            out += _check_content(check.url, name, check.sha256, policy, evidence)
            out += _loader_findings(check.url, check.loader, evidence)
        elif not check.ok:
            out.append(_finding(
                "boot-file-unverified", check.url,
                f"could not fetch {check.url}: {check.error or check.tls_error}", evidence))
    return out


def _check_loop(obs: Observation) -> list[Finding]:
    """Same server, same arch: does iPXE (user-class iPXE) get something other than iPXE?"""
    out: list[Finding] = []
    plain: dict[tuple[str, str, str], Offer] = {}
    ipxe: dict[tuple[str, str, str], Offer] = {}
    for offer in obs.offers:
        if offer.probe is None or offer.port == dhcp4.PXE_PORT or not offer.boot_file:
            continue
        key = (offer.server_ip, offer.src_mac, offer.probe.arch)
        (ipxe if offer.probe.ipxe else plain).setdefault(key, offer)
    reported: set[tuple[str, str]] = set()
    for key, first in plain.items():
        second = ipxe.get(key)
        if second is None or second.boot_file != first.boot_file:
            continue
        loaders = [f.loader for f in obs.fetched
                   if f.loader is not None and f.target in second.boot_targets()]
        is_ipxe = any(ld.ipxe and not ld.script for ld in loaders) or (
            not loaders and bool(IPXE_NAME.search(second.boot_file)))
        if not is_ipxe or (key[0], second.boot_file) in reported:
            continue
        reported.add((key[0], second.boot_file))
        out.append(_finding(
            "ipxe-loop-not-broken", f"{key[0]} ({key[1]})",
            f"server {key[0]} hands iPXE ({key[2]}) the same file {second.boot_file!r} it "
            "hands the PXE ROM: iPXE would chainload itself forever",
            {"pxe_offer": first.evidence(), "ipxe_offer": second.evidence()}))
    return out


def _check_writes(obs: Observation) -> list[Finding]:
    return [
        _finding("tftp-writable", f"tftp://{w.server}/",
                 f"TFTP server {w.server} accepted an upload: {w.detail}",
                 {"write_probe": w.to_json()})
        for w in obs.writes if w.writable
    ]


def _check_malformed(obs: Observation) -> list[Finding]:
    out: list[Finding] = []
    by_sender: dict[str, list[Malformed]] = defaultdict(list)
    for m in obs.malformed:
        by_sender[f"{m.protocol} {m.src_ip} {m.src_mac}"].append(m)
    # every sender counted, also those whose packets were not kept as evidence
    for key in dict.fromkeys([*by_sender, *obs.malformed_counts]):
        proto, ip, mac = key.split(" ", 2)
        items = by_sender.get(key, [])
        count = max(len(items), obs.malformed_counts.get(key, 0))
        reason = items[0].reason if items else "(evidence not kept)"
        out.append(_finding(
            "malformed-packet", f"{ip} ({mac})",
            f"{count} malformed {proto} packet(s) from {ip} ({mac}): {reason}",
            {"count": count, "packets": [m.evidence() for m in items[:5]]}))
    return out


def threshold_reached(findings: list[Finding], fail_on: Severity | None) -> bool:
    return fail_on is not None and any(f.severity >= fail_on for f in findings)


__all__ = ["RULES", "Finding", "Rule", "Severity", "evaluate", "threshold_reached"]
