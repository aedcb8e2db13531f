"""UEFI HTTPS Boot under QEMU/OVMF: the firmware itself fetches the signed ipxe.efi over
HTTPS, trusting only our CA (passed as OVMF's ``etc/edk2/https/cacerts``), with Secure
Boot on. Needs TRUSTBOOT_IPXE_SRC, QEMU, OVMF and virt-firmware.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.ipxe.test_real_ipxe import _Handler, _serve
from tests.ipxe.testpki import TestPki, cached_pki
from tests.ipxe_qemu import DONE_MARKER, boot_efi, cache_root, doubled, seen
from trustboot.publish.http import IPXE_CIPHERS, IPXE_LEGACY_CIPHERS
from trustboot.secureboot import efi, keyset

from .conftest import EMBED_MARKER as MARKER
from .test_qemu_secureboot import _sign

pytestmark = [pytest.mark.ipxe, pytest.mark.slow]


@pytest.fixture(scope="module")
def tls_pki() -> TestPki:
    return cached_pki(cache_root() / "pki", "main")


@pytest.fixture(scope="module")
def other_tls_pki() -> TestPki:
    return cached_pki(cache_root() / "pki", "rogue")


def _cacerts(pki: TestPki, out: Path) -> Path:
    root = x509.load_pem_x509_certificate(pki.root.read_bytes())
    out.write_bytes(efi.x509_list([root.public_bytes(serialization.Encoding.DER)],
                                  efi.EFI_GLOBAL_VARIABLE))
    return out


def _with_boot_uri(vars_file: Path, url: str, out: Path) -> Path:
    tool = keyset._virt_fw_vars()
    subprocess.run([tool, "--input", str(vars_file), "--output", str(out),
                    "--set-boot-uri", url], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("served_by", ["our-ca", "other-ca"])
def test_https_boot_of_the_signed_binary(served_by: str, unsigned: dict[str, bytes],
                                         keyset_pki: Path, vars_file: Path, tls_pki: TestPki,
                                         other_tls_pki: TestPki, tmp_path: Path) -> None:
    server_pki = tls_pki if served_by == "our-ca" else other_tls_pki
    # Firmware TLS stacks built without elliptic curves (edk2's default OpensslLib, e.g.
    # Debian 12's OVMF) need plain RSA key exchange: what `origin nginx-config
    # --legacy-ipxe` adds.
    origin = _serve(server_pki, tmp_path, ciphers=":".join(IPXE_CIPHERS + IPXE_LEGACY_CIPHERS))
    # UEFI HTTP Boot sends HEAD, then GET on the same connection: keep it open.
    origin.RequestHandlerClass = type("KeepAlive", (_Handler,), {"protocol_version": "HTTP/1.1"})
    errors: list[str] = []
    # What the firmware's TLS stack did, if it never got as far as a request.
    origin.handle_error = lambda _req, _addr: errors.append(  # type: ignore[method-assign,assignment]
        repr(sys.exc_info()[1]))
    try:
        origin.files = {"/ipxe.efi": _sign(keyset_pki, unsigned["ipxe.efi"])}
        url = f"https://10.0.2.2:{origin.server_address[1]}/ipxe.efi"
        uri_vars = _with_boot_uri(vars_file, url, tmp_path / "vars-uri.fd")
        cacerts = _cacerts(tls_pki, tmp_path / "cacerts.esl")
        console = boot_efi(None, vars_file=uri_vars, secure_boot=True, restrict=False,
                           timeout=240, stop_on=(DONE_MARKER, doubled(DONE_MARKER), "Access Denied",
                                                 "Security Violation"),
                           extra_args=["-fw_cfg",
                                       f"name=etc/edk2/https/cacerts,file={cacerts}"])
    finally:
        origin.shutdown()
        origin.server_close()
    if served_by == "our-ca":
        assert "/ipxe.efi" in origin.requests, (errors, console)
        assert seen(MARKER, console), console
    else:
        assert not seen(MARKER, console), console
        assert "/ipxe.efi" not in origin.requests  # the TLS handshake failed first
