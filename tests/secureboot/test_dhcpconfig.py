"""DHCP snippets for UEFI HTTPS Boot, served by a real dnsmasq in network namespaces."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.audit.netns import Segment, missing_tools
from trustboot.errors import ConfigError
from trustboot.publish import dhcpconfig

BIN = "https://boot.example.net/fw/ipxe.efi"
ARM = "https://boot.example.net/fw/arm64/ipxe.efi"
SCRIPT = "https://boot.example.net/boot.ipxe"
CLIENT = Path(__file__).with_name("dhcpclient.py")


@pytest.mark.parametrize("url", [
    "http://boot.example.net/ipxe.efi", "https://a,b/ipxe.efi", "https://h/x#y",
    "https://h/a b", "https://h/a\nb", "https:///nohost", "https://h/\"q",
    # ValueErrors from urlsplit (an internal error, exit 70, before)
    "https://[x/ipxe.efi", "https://[x]/ipxe.efi", "https://h:99999/ipxe.efi",
])
def test_hostile_urls_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        dhcpconfig.HttpBoot({"x86_64": url})


def test_a_url_longer_than_option_67_refused() -> None:
    """Option 67 holds 255 bytes: for a 335-character script URL dnsmasq handed iPXE a
    one-byte garbled file name."""
    long = "https://boot.example.net/" + "s" * 300 + "/boot.ipxe"
    with pytest.raises(ConfigError, match="at most 255"):
        dhcpconfig.HttpBoot({"x86_64": BIN}, long)
    with pytest.raises(ConfigError, match="at most 255"):
        dhcpconfig.HttpBoot({"x86_64": long})
    fits = "https://boot.example.net/" + "a" * 220 + "/ipxe.efi"
    assert fits in dhcpconfig.dnsmasq(dhcpconfig.HttpBoot({"x86_64": fits}))


def test_kea_refuses_a_url_its_file_field_cannot_hold() -> None:
    """Kea's boot-file-name is the 128-byte file field: Kea refused the whole
    configuration at load time over a longer one."""
    url = "https://boot.example.net/" + "a" * 120 + "/ipxe.efi"
    with pytest.raises(ConfigError, match="--http-boot x86_64 URL is 154 characters"):
        dhcpconfig.kea(dhcpconfig.HttpBoot({"x86_64": url}))
    with pytest.raises(ConfigError, match="--ipxe-script"):
        dhcpconfig.kea(dhcpconfig.HttpBoot({"x86_64": BIN}, url))
    assert json.loads(dhcpconfig.kea(dhcpconfig.HttpBoot({"x86_64": BIN})))


def test_kea_leaves_the_file_field_its_nul() -> None:
    """RFC 2131's file field is a NUL-terminated string in 128 bytes: a 128-character
    URL would fill it with no terminator, and a client reads on into the options."""
    base = "https://boot.example.net/"
    full = base + "a" * (128 - len(base) - len("/ipxe.efi")) + "/ipxe.efi"
    assert len(full) == 128
    with pytest.raises(ConfigError, match="at most 127"):
        dhcpconfig.kea(dhcpconfig.HttpBoot({"x86_64": full}))
    fits = full[:len(base)] + full[len(base) + 1:]
    assert json.loads(dhcpconfig.kea(dhcpconfig.HttpBoot({"x86_64": fits})))


def test_unknown_arch_refused() -> None:
    with pytest.raises(ConfigError, match="unknown architecture"):
        dhcpconfig.HttpBoot({"mips": BIN})


def test_kea_snippet_is_json_with_classes() -> None:
    text = dhcpconfig.kea(dhcpconfig.HttpBoot({"x86_64": BIN, "arm64": ARM}, SCRIPT))
    classes = json.loads(text)["client-classes"]
    assert [c["boot-file-name"] for c in classes] == [ARM, BIN, SCRIPT]
    assert "0x0010" in classes[1]["test"] and "0x0013" in classes[0]["test"]
    assert classes[1]["option-data"] == [{"name": "vendor-class-identifier",
                                          "data": "HTTPClient"}]


@pytest.fixture
def segment(tmp_path: Path) -> Iterator[Segment]:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    seg = Segment(tmp_path)
    yield seg
    seg.close()


def _ask(seg: Segment, arch: int, vendor: str, user: str | None = None) -> dict[str, str]:
    client = seg.hosts["client"]
    argv = [sys.executable, str(CLIENT), "eth0", client.mac, str(arch), vendor]
    if user:
        argv.append(user)
    out = subprocess.run(client.argv(argv), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    offer: dict[str, str] = json.loads(out.stdout)
    return offer


def test_dnsmasq_hands_out_the_https_urls(segment: Segment) -> None:
    server = segment.add_host("server", 1)
    segment.add_host("client", 50, ipv4=False)
    snippet = dhcpconfig.dnsmasq(dhcpconfig.HttpBoot({"x86_64": BIN, "arm64": ARM}, SCRIPT))
    options = [f"--{line}" for line in snippet.splitlines() if line and not line.startswith("#")]
    segment.start_dnsmasq(server, "--dhcp-range=192.0.2.100,192.0.2.150,1h", *options)
    x64 = _ask(segment, 16, "HTTPClient:Arch:00016:UNDI:003001")
    assert x64 == {"file": BIN, "vendor_class": "HTTPClient"}, x64
    arm = _ask(segment, 19, "HTTPClient:Arch:00019:UNDI:003001")
    assert arm["file"] == ARM and arm["vendor_class"] == "HTTPClient"
    ipxe = _ask(segment, 16, "HTTPClient:Arch:00016:UNDI:003001", user="iPXE")
    assert ipxe["file"] == SCRIPT, ipxe
    # A PXE (TFTP) client is not handed the HTTPS binary.
    pxe = _ask(segment, 7, "PXEClient:Arch:00007:UNDI:003016")
    assert pxe.get("file", "") not in (BIN, ARM)


def test_cli_dhcp_config(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from trustboot.cli.main import cli

    r = CliRunner().invoke(cli, ["origin", "dhcp-config", "--http-boot", f"x86_64={BIN}",
                                 "--ipxe-script", SCRIPT, "--format", "kea"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["client-classes"][0]["boot-file-name"] == BIN
    bad = CliRunner().invoke(cli, ["origin", "dhcp-config", "--http-boot", BIN])
    assert bad.exit_code == 3 and "ARCH=URL" in bad.output
    twice = CliRunner().invoke(cli, ["origin", "dhcp-config", "--http-boot", f"x86_64={BIN}",
                                     "--http-boot", f"x86_64={ARM}"])
    assert twice.exit_code == 3


def test_ca_export_uefi_tls(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from trustboot.cli.main import cli
    from trustboot.secureboot import efi

    pw = tmp_path / "pw"
    pw.write_text("correct horse battery\n")
    pw.chmod(0o600)
    pki = tmp_path / "pki"
    r = CliRunner().invoke(cli, ["ca", "init", "--pki", str(pki), "--key-type", "ec-p256",
                                 "--passphrase-file", str(pw)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["ca", "export", "--pki", str(pki), "--out", str(tmp_path / "t"),
                                 "--uefi-tls"])
    assert r.exit_code == 0, r.output
    entries = efi.parse_signature_lists((tmp_path / "t" / "uefi-cacerts.esl").read_bytes())
    root = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    assert [e.data for e in entries] == [root.public_bytes(serialization.Encoding.DER)]
    assert entries[0].type == efi.EFI_CERT_X509
