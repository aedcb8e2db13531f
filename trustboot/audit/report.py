"""Findings as a terminal table, JSON, or SARIF 2.1.0. Pure: returns strings and dicts.

This is the report boundary: every string in every format passes through
:mod:`trustboot.audit.text` (control, bidi and other format characters escaped; long values
cut with a marker; lists capped), and the table is pure ASCII, so no output depends on the
locale's encoding and nothing from the network reaches a terminal raw.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import textwrap
from typing import Any

from trustboot import __version__
from trustboot.audit import dhcp4
from trustboot.audit.checks import RULES, Finding, Severity, threshold_reached
from trustboot.audit.model import LIMIT_REASONS, dhcpv6_responders, responders
from trustboot.audit.runner import AuditResult
from trustboot.audit.text import bound, clean

MESSAGE_LIMIT = 600  # characters of one finding's message in the table
CELL_LIMIT = 40  # characters of one table cell
TABLE_ROWS = 60  # responder rows in the table (all of them are in the JSON, capped)
EVIDENCE_ITEMS = 20  # entries of one list in a finding's JSON/SARIF evidence
OBSERVATION_ITEMS = 10000  # entries of one list in the JSON observation (> MAX_OFFERS)

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_LEVEL = {
    Severity.CRITICAL: "error", Severity.HIGH: "error", Severity.MEDIUM: "warning",
    Severity.LOW: "note", Severity.INFO: "note",
}
# GitHub code scanning reads rules' properties.security-severity (CVSS-like 0.0-10.0).
SECURITY_SEVERITY = {
    Severity.CRITICAL: "9.5", Severity.HIGH: "8.0", Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0", Severity.INFO: "0.0",
}


def summary(result: AuditResult, fail_on: Severity | None) -> dict[str, Any]:
    counts = {s.label: 0 for s in Severity}
    for f in result.findings:
        counts[f.severity.label] += 1
    obs = result.observation
    servers = {(o.server_ip, o.src_mac) for o in obs.offers}
    servers6 = dhcpv6_responders(obs.replies6)  # as the report's responders list them
    return {
        "findings": len(result.findings),
        "by_severity": counts,
        "responders": len(servers) + len(servers6),
        "fail_on": fail_on.label if fail_on is not None else "none",
        "failed": threshold_reached(result.findings, fail_on),
        # False: a bound was reached, the segment was not fully examined (also a finding)
        "complete": not obs.limits,
        "limits": dict(obs.limits),
    }


def finding_json(f: Finding) -> dict[str, Any]:
    data: dict[str, Any] = bound(f.to_json(), max_items=EVIDENCE_ITEMS)
    return data


def to_json(result: AuditResult, fail_on: Severity | None) -> dict[str, Any]:
    return {
        "tool": "trustboot audit",
        "version": __version__,
        "started": result.started.isoformat(),
        "finished": result.finished.isoformat(),
        "beyond_window_s": round(result.beyond_window, 3),
        "summary": bound(summary(result, fail_on)),
        "policy": bound(result.policy.to_json(), max_items=OBSERVATION_ITEMS),
        "findings": [finding_json(f) for f in result.findings],
        "observation": bound(result.observation.to_json(), max_items=OBSERVATION_ITEMS),
    }


def _fingerprint(f: Finding) -> str:
    return hashlib.sha256(f"{f.rule}\0{f.subject}".encode()).hexdigest()[:32]


def to_sarif(result: AuditResult, fail_on: Severity | None) -> dict[str, Any]:
    used = sorted({f.rule for f in result.findings})
    rules_index = {rule_id: i for i, rule_id in enumerate(RULES)}
    rules = []
    for rule in RULES.values():
        rules.append({
            "id": rule.id,
            "name": "".join(part.capitalize() for part in rule.id.split("-")),
            "shortDescription": {"text": rule.title},
            "fullDescription": {"text": rule.description},
            "help": {"text": f"Remediation: {rule.remediation}"},
            "defaultConfiguration": {"level": SARIF_LEVEL[rule.severity]},
            "properties": {
                "tags": ["security", "network-boot"],
                "security-severity": SECURITY_SEVERITY[rule.severity],
                "severity": rule.severity.label,
            },
        })
    results = []
    for f in result.findings:
        subject = clean(f.subject, limit=256)
        results.append({
            "ruleId": f.rule,
            "ruleIndex": rules_index[f.rule],
            "level": SARIF_LEVEL[f.severity],
            "message": {"text": clean(f"{f.message}. Remediation: {f.remediation}",
                                      limit=4 * MESSAGE_LIMIT)},
            "locations": [{
                "logicalLocations": [{
                    "name": subject,
                    "fullyQualifiedName": clean(f"{result.observation.interface}/{subject}"),
                    "kind": "resource",
                }],
            }],
            "partialFingerprints": {"trustbootFinding/v1": _fingerprint(f)},
            "properties": {
                "severity": f.severity.label,
                "security-severity": SECURITY_SEVERITY[f.severity],
                "evidence": bound(f.evidence, max_items=EVIDENCE_ITEMS),
            },
        })
    obs = result.observation
    # SARIF's place for "the tool could not do all of its job": one notification per limit
    notifications = [{
        "level": "error",
        "message": {"text": clean(f"limit reached: {n} {LIMIT_REASONS.get(r, r)}")},
        "descriptor": {"id": clean(r, limit=64)},
    } for r, n in obs.limits.items()]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "trustboot",
                "fullName": "trustboot audit",
                "version": __version__,
                "semanticVersion": __version__,
                "rules": rules,
            }},
            "invocations": [{
                "executionSuccessful": True,
                "toolExecutionNotifications": notifications,
                "startTimeUtc": result.started.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "endTimeUtc": result.finished.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "properties": {
                    "interface": clean(obs.interface),
                    "mode": obs.mode,
                    "windowSeconds": obs.window,
                    "notes": bound(obs.notes, max_items=OBSERVATION_ITEMS),
                },
            }],
            "results": results,
            "properties": {"summary": bound(summary(result, fail_on)), "rulesUsed": used},
        }],
    }


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


def _wrap(text: str, width: int, indent: str) -> str:
    text = clean(text, limit=MESSAGE_LIMIT, ascii_only=True)
    return textwrap.fill(text, width=width, initial_indent=indent, subsequent_indent=indent,
                         break_long_words=True, break_on_hyphens=False)


def _cell(value: object) -> str:
    """A table cell: ASCII, cut with a visible marker."""
    text = clean(str(value), ascii_only=True)
    return text if len(text) <= CELL_LIMIT else text[: CELL_LIMIT - 3] + "..."



def _evidence_lines(evidence: dict[str, Any], limit: int = 8) -> list[str]:
    keys = ("server_ip", "source_mac", "message_type", "yiaddr", "siaddr", "sname", "file",
            "option_66_tftp_server", "option_67_bootfile", "option_60_vendor_class",
            "option_59_bootfile_url", "probe_arch", "probe_ipxe", "boot_files", "count",
            "expected_sha256", "detail")
    out = []
    flat: dict[str, Any] = {}
    for k, v in evidence.items():
        if isinstance(v, dict) and k in ("offer", "tftp", "write_probe", "http"):
            flat.update({kk: vv for kk, vv in v.items() if kk not in flat})
        else:
            flat.setdefault(k, v)
    for k in keys:
        if k in flat and flat[k] not in (None, "", []):
            out.append(f"{k}={clean(str(flat[k]), limit=120, ascii_only=True)}")
        if len(out) >= limit:
            break
    return out


def to_table(result: AuditResult, fail_on: Severity | None, *, width: int | None = None) -> str:
    width = width or max(60, min(120, shutil.get_terminal_size((100, 24)).columns))
    obs = result.observation
    s = summary(result, fail_on)
    lines = [
        _wrap(f"trustboot audit on {obs.interface} ({obs.mode}, window {obs.window:g} s): "
              f"{s['responders']} responder(s), {s['findings']} finding(s)", width, ""),
        "",
    ]
    if obs.offers or obs.replies6:
        lines.append("Responders")
        rows = [("ROLE", "SERVER", "MAC", "OFFERED", "BOOT SERVER", "BOOT FILE", "PROBE")]
        seen = set()
        ordered = sorted(obs.offers, key=lambda o: (
            o.port, o.server_ip, o.src_mac, o.arch or "", o.ipxe_probe))
        for o in ordered:
            key = (o.server_ip, o.src_mac, o.boot_server, o.boot_file, o.arch, o.ipxe_probe)
            if key in seen:
                continue
            seen.add(key)
            probe = f"{o.arch}{'+ipxe' if o.ipxe_probe else ''}" if o.probe else "-"
            rows.append((o.role if o.port != 4011 else "pxe:4011", o.server_ip, o.src_mac,
                         o.packet.yiaddr if o.packet.yiaddr != dhcp4.NO_ADDRESS else "-",
                         o.boot_server or "-", o.boot_file or "-", probe))
        for r in obs.replies6:
            addrs = ",".join(r.message.addresses) or "-"
            rows.append(("dhcpv6", r.src_ip, r.src_mac, addrs, "-",
                         ", ".join(t.url for t in r.boot_targets()) or "-",
                         r.probe.arch if r.probe else "-"))
        more = len(rows) - 1 - TABLE_ROWS
        table = [tuple(_cell(c) for c in row) for row in rows[: TABLE_ROWS + 1]]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            cells = [c.ljust(widths[i]) for i, c in enumerate(row)]
            lines.append("  " + "  ".join(cells).rstrip())
        if more > 0:
            lines.append(f"  ... {more} more row(s): see --json")
        loops = [f"{r['server_ip']} {r['ipxe_loop']}" for r in responders(obs)
                 if r["protocol"] == "dhcpv4" and r["role"] == "dhcp"
                 and r["ipxe_loop"] != "unknown"]
        if loops:
            lines.append(_wrap("iPXE chainload loop: " + ", ".join(loops), width, "  "))
        lines.append("")
    if result.findings:
        lines.append("Findings")
        for f in result.findings:
            subject = clean(f.subject, limit=width - 30, ascii_only=True)
            lines.append(f"  [{f.severity.label.upper():8}] {f.rule}: {subject}")
            lines.append(_wrap(f.message, width, "      "))
            ev = _evidence_lines(f.evidence)
            if ev:
                lines.append(_wrap("evidence: " + "; ".join(ev), width, "      "))
            lines.append(_wrap("fix: " + f.remediation, width, "      "))
        lines.append("")
    else:  # not reachable with a limit reached: every limit is a finding
        lines.append("No findings.")
        lines.append("")
    if obs.mode == "passive":
        shown = ", ".join(obs.clients_seen[:10]) or "none"
        extra = f" (+{len(obs.clients_seen) - 10} more)" if len(obs.clients_seen) > 10 else ""
        lines.append(_wrap(f"clients seen asking to boot: {shown}{extra}", width, ""))
    for note in obs.notes[:TABLE_ROWS]:
        lines.append(_wrap(f"note: {note}", width, ""))
    if len(obs.notes) > TABLE_ROWS:
        lines.append(f"note: ... {len(obs.notes) - TABLE_ROWS} more note(s): see --json")
    counts = ", ".join(f"{n} {k}" for k, n in s["by_severity"].items() if n)
    verdict = "FAIL" if s["failed"] else "ok"
    lines.append(f"{verdict}: {counts or 'no findings'} (--fail-on {s['fail_on']})")
    return "\n".join(lines)
