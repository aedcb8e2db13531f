"""Table, JSON and SARIF output; the SARIF validated against the 2.1.0 schema (subset)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema

from tests.audit.test_checks import (
    IPXE,
    ROGUE_MAC,
    fetched,
    observe,
    offer,
    policy,
    reply6,
)
from trustboot.audit.checks import RULES, Severity, evaluate
from trustboot.audit.model import Malformed
from trustboot.audit.report import to_json, to_sarif, to_table
from trustboot.audit.runner import AuditResult
from trustboot.audit.tftp import WriteResult

SCHEMA = json.loads((Path(__file__).parent / "sarif-2.1.0-subset.schema.json").read_text())


def busy_result() -> AuditResult:
    obs = observe(
        offers=[offer(), offer(ipxe=True),
                offer(server="192.0.2.2", mac=ROGUE_MAC, file="\x1b[2Jevil.kpxe"),
                offer(server="192.0.2.2", mac=ROGUE_MAC, ipxe=True, file="http://x/y")],
        fetched=[fetched("192.0.2.1", "undionly.kpxe", IPXE),
                 fetched("192.0.2.2", "x", b"PXELINUX")],
        replies6=[reply6("http://[2001:db8::1]/a")],
        writes=[WriteResult("192.0.2.2", "p.txt", writable=True, detail="stored")],
        malformed=[Malformed("dhcpv4", "too short", "192.0.2.9", "02:00:00:00:00:09", "02",
                             1, 0.1)],
        notes=["a note"],
    )
    pol = policy()
    now = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    return AuditResult(obs, evaluate(obs, pol), pol, now, now)


def test_sarif_is_valid_and_complete() -> None:
    result = busy_result()
    sarif = to_sarif(result, Severity.HIGH)
    jsonschema.validate(sarif, SCHEMA, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    run = sarif["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == list(RULES)
    assert all(r["properties"]["security-severity"] for r in rules)
    assert len(run["results"]) == len(result.findings)
    for res in run["results"]:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["message"]["text"] and res["locations"][0]["logicalLocations"][0]["name"]
    levels = {r["ruleId"]: r["level"] for r in run["results"]}
    assert levels["rogue-dhcp"] == "error" and levels["tftp-boot-file"] == "note"
    assert run["properties"]["summary"]["failed"] is True


def test_sarif_of_a_quiet_segment_is_valid() -> None:
    obs = observe()
    now = datetime.now(UTC)
    result = AuditResult(obs, evaluate(obs, policy()), policy(), now, now)
    sarif = to_sarif(result, None)
    jsonschema.validate(sarif, SCHEMA)
    assert [r["ruleId"] for r in sarif["runs"][0]["results"]] == ["no-responders"]


def test_schema_rejects_what_sarif_forbids() -> None:
    bad = to_sarif(busy_result(), None)
    bad["runs"][0]["results"][0]["level"] = "fatal"
    try:
        jsonschema.validate(bad, SCHEMA)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("the schema subset accepted an invalid level")


def test_json_report() -> None:
    data = to_json(busy_result(), Severity.CRITICAL)
    json.dumps(data)
    assert data["summary"]["fail_on"] == "critical" and data["summary"]["failed"] is True
    assert data["summary"]["responders"] == 3
    assert data["summary"]["by_severity"]["critical"] >= 2
    first = data["findings"][0]
    assert set(first) == {"id", "severity", "title", "subject", "message", "evidence",
                          "remediation"}
    assert data["observation"]["tftp_write_probes"][0]["writable"] is True
    assert data["policy"]["authorized_servers"][0]["name"] == "core"


def test_table_report() -> None:
    text = to_table(busy_result(), Severity.HIGH, width=100)
    assert "Responders" in text and "Findings" in text
    assert "[CRITICAL] rogue-dhcp: 192.0.2.2 (02:74:62:00:00:02)" in text
    assert "fix: " in text and "evidence: " in text
    assert "note: a note" in text
    assert text.splitlines()[-1].startswith("FAIL: ")
    assert "\x1b" not in text  # wire strings never reach the terminal raw
    quiet = to_table(AuditResult(observe(), [], policy(), datetime.now(UTC),
                                 datetime.now(UTC)), None)
    assert "No findings." in quiet and quiet.splitlines()[-1] == "ok: no findings (--fail-on none)"
