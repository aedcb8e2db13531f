"""Hypothesis against the parsers and the listener: nothing the network sends escapes as an
exception other than MalformedPacket, and whatever decodes can be evaluated and reported."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.audit import packets
from tests.audit.fakelink import FakeLink, listener
from trustboot.audit import dhcp4, dhcp6, frames, loaders, tftp
from trustboot.audit.checks import Severity, evaluate
from trustboot.audit.errors import MalformedPacket
from trustboot.audit.follow import http_check
from trustboot.audit.model import BootTarget, Fetched, Offer
from trustboot.audit.policy import policy_from_dict
from trustboot.audit.report import to_json, to_sarif, to_table
from trustboot.audit.runner import AuditResult
from trustboot.audit.tftp import FetchResult

FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

option = st.tuples(st.integers(0, 255), st.binary(max_size=40)).map(
    lambda t: bytes([t[0], len(t[1])]) + t[1])
# Options that lie about their length, and the interesting codes more often.
lying_option = st.tuples(st.sampled_from([43, 52, 53, 54, 60, 66, 67, 77, 255, 0]),
                         st.integers(0, 255), st.binary(max_size=20)).map(
    lambda t: bytes([t[0], t[1]]) + t[2])
options_blob = st.lists(st.one_of(option, lying_option), max_size=12).map(b"".join)


@st.composite
def bootp_replies(draw: st.DrawFn) -> bytes:
    header = bytearray(draw(st.binary(min_size=236, max_size=236)))
    header[0] = draw(st.sampled_from([1, 2, 2, 2, 3]))
    tail = draw(st.one_of(st.just(dhcp4.MAGIC_COOKIE), st.binary(max_size=4)))
    return bytes(header) + tail + draw(options_blob)


dhcp6_option = st.tuples(st.sampled_from([1, 2, 3, 5, 7, 13, 16, 59, 60, 61, 999]),
                         st.binary(max_size=40)).map(
    lambda t: struct.pack("!HH", t[0], len(t[1])) + t[1])
dhcp6_blob = st.tuples(st.integers(0, 255), st.binary(min_size=3, max_size=33),
                       st.lists(st.one_of(dhcp6_option, st.binary(max_size=6)), max_size=8)
                       ).map(lambda t: bytes([t[0]]) + t[1] + b"".join(t[2]))


def _only_malformed(parse, data: bytes) -> object:  # type: ignore[no-untyped-def]
    try:
        return parse(data)
    except MalformedPacket:
        return None


@FUZZ
@given(st.one_of(st.binary(max_size=600), bootp_replies()))
def test_dhcp4_parser(data: bytes) -> None:
    pkt = _only_malformed(dhcp4.parse, data)
    if isinstance(pkt, dhcp4.Dhcp4Packet):
        json.dumps(pkt.evidence())
        vendor = pkt.pxe_vendor_options()
        if vendor:
            json.dumps(dhcp4.describe_pxe_vendor(vendor))
        offer = Offer(pkt, "192.0.2.1", "02:00:00:00:00:01", 67, 0.0)
        json.dumps(offer.evidence())
        for target in offer.boot_targets():
            assert target.url


@FUZZ
@given(st.one_of(st.binary(max_size=300), dhcp6_blob))
def test_dhcp6_parser(data: bytes) -> None:
    msg = _only_malformed(dhcp6.parse, data)
    if isinstance(msg, dhcp6.Dhcp6Message):
        json.dumps(msg.evidence())
        assert isinstance(msg.server_duid_mac, str | None)


@FUZZ
@given(st.one_of(
    st.binary(max_size=600),
    st.tuples(st.integers(0, 7), st.binary(max_size=100)).map(
        lambda t: struct.pack("!H", t[0]) + t[1]),
))
def test_tftp_parser(data: bytes) -> None:
    _only_malformed(tftp.parse, data)


@FUZZ
@given(st.binary(max_size=5000))
def test_loader_identification(data: bytes) -> None:
    json.dumps(loaders.identify(data).to_json())


@st.composite
def hostile_frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["v4", "v6", "raw", "ip"]))
    if kind == "v4":
        payload = draw(st.one_of(bootp_replies(), st.binary(max_size=400)))
        return packets.offer_frame(payload, sport=draw(st.sampled_from([67, 4011])))
    if kind == "v6":
        return frames.udp6_frame(
            src_mac=packets.SERVER_MAC, dst_mac=b"\x02" * 6, src_ip="fe80::1",
            dst_ip="fe80::2", sport=547, dport=546, payload=draw(dhcp6_blob))
    if kind == "ip":
        return b"\xff" * 12 + draw(st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x81\x00"])) \
            + draw(st.binary(max_size=120))
    return draw(st.binary(max_size=200))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_frames(), max_size=30))
def test_listener_evaluation_and_reports_survive_anything(batch: list[bytes]) -> None:
    link = FakeLink()
    try:
        lst, obs = listener(link, window=0.01, arches=("bios",), dhcpv6=False)
        for frame in batch:
            lst.handle_frame(frame)
        obs.fetched.append(Fetched(
            target=obs.offers[0].boot_targets()[0] if obs.offers and obs.offers[0].boot_targets()
            else BootTarget("tftp", "192.0.2.1", "x", "tftp://192.0.2.1/x"),
            result=FetchResult("192.0.2.1", "x", ok=True, size=3, sha256="0" * 64),
            loader=loaders.identify(batch[0] if batch else b"")))
        policy = policy_from_dict({
            "authorized_servers": [{"ip": "192.0.2.1"}],
            "expected_files": [{"name": "x", "sha256": "1" * 64}],
            "expected_origin": "https://boot.example/",
        })
        findings = evaluate(obs, policy)
        now = datetime.now(UTC)
        result = AuditResult(obs, findings, policy, now, now)
        json.dumps(to_json(result, Severity.HIGH))
        json.dumps(to_sarif(result, Severity.HIGH))
        to_table(result, None, width=80)
    finally:
        link.close()


@pytest.mark.parametrize("url", [
    "http://a" + "b" * 70 + ".example/x",  # a label IDNA refuses
    "https://" + "a" * 300 + "/x",
    "https://xn--a/x",  # punycode that decodes to a control character
])
def test_boot_url_the_network_sent_is_evidence_not_a_crash(url: str) -> None:
    check = http_check(url, policy=policy_from_dict({}), timeout=1.0, max_size=1024)
    assert not check.ok
    assert check.error
