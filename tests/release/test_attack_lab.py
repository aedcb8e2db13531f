"""The attack lab: a release's own firmware (iPXE built by `trustboot release` with the CA's
root) boots Debian's real kernel under QEMU (TCG) from a file:// origin served over HTTPS,
with an initrd whose /init (static busybox) prints a marker and powers off.

The clean release boots to the marker. Each attack is refused and the marker never
appears: a kernel replaced by a validly signed file from another CA, an initrd swapped for
an unsigned one, the menu script edited on the origin, an older release served after its
signer expired (the guest clock set with -rtc), and the origin's TLS certificate from
another CA. Needs TRUSTBOOT_IPXE_SRC (skipped with the reason otherwise)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from tests.conftest import keep_fixture_threads
from tests.ipxe_qemu import boot, cache_root, ipxe_src_or_skip, newc_cpio, real_kernel
from tests.release.conftest import PASSPHRASE
from trustboot.ca.profiles import CAOptions
from trustboot.ca.store import CertificateAuthority
from trustboot.cli.main import cli
from trustboot.cms import sign as cms_sign
from trustboot.keys.keyfile import load_key
from trustboot.keys.ref import KeyRef
from trustboot.keys.signer import open_signer
from trustboot.release.serve import serve_https
from trustboot.secrets import constant

pytestmark = [pytest.mark.ipxe, pytest.mark.slow]

MARKER = "TRUSTBOOT-LAB-INIT-RAN"
EVIL = "TRUSTBOOT-LAB-EVIL-RAN"
STOP = (MARKER, EVIL, "trustboot: halted", "Kernel panic")


def make_initrd(marker: str) -> bytes:
    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        pytest.skip("needs a static busybox: apt-get install busybox-static")
    init = (f"#!/bin/busybox sh\n/bin/busybox echo {marker}\n"
            f"/bin/busybox echo {marker} > /dev/console\n/bin/busybox poweroff -f\n").encode()
    return newc_cpio([
        ("bin", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("dev", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
        ("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes(), (0, 0)),
        ("init", stat.S_IFREG | 0o755, init, (0, 0)),
    ])


@dataclass
class Release:
    dir: Path
    origin: Path
    rid: str
    lkrn: Path
    port: int
    restart: Callable[[CertificateAuthority | None], None]


def _server_material(ca: CertificateAuthority, name: str) -> tuple[bytes, object]:
    entry = ca.get(name)
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM)
                     for c in (entry.load_cert(), ca.issuing_cert))
    return chain, load_key(entry.key_path, constant(PASSPHRASE), "server key")


@pytest.fixture(scope="module")
def rogue_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    pw = constant(PASSPHRASE)
    now = dt.datetime.now(dt.UTC)
    ca, _ = CertificateAuthority.init(tmp_path_factory.mktemp("rogue") / "pki", pw,
                                      common_name="release test CA", key_type="rsa-3072",
                                      options=CAOptions(), now=now)
    ca.issue("codesign", "release-signer", pw, pw, key_type="rsa-3072", now=now)
    ca.issue("server", "origin", pw, pw, sans=["127.0.0.1", "10.0.2.2"], key_type="rsa-3072",
             now=now)
    return ca


@contextlib.contextmanager
def _released(session_ca: Path, base: Path, signer: str, lifetime: str) -> Iterator[Release]:
    src = ipxe_src_or_skip()
    kernel = real_kernel()
    d = base / "lab"
    (d / "images").mkdir(parents=True)
    shutil.copytree(session_ca, d / "pki")
    shutil.copy(kernel, d / "images" / "vmlinuz")
    (d / "images" / "initrd.img").write_bytes(make_initrd(MARKER))
    (d / "pass.txt").write_bytes(PASSPHRASE + b"\n")
    (d / "pass.txt").chmod(0o600)
    origin = d / "origin"
    origin.mkdir()
    good = CertificateAuthority.open(d / "pki")
    stack = contextlib.ExitStack()
    state: dict[str, int] = {}

    def restart(ca: CertificateAuthority | None) -> None:
        stack.close()
        chain, key = _server_material(ca or good, "origin")
        state["port"] = stack.enter_context(serve_https(
            origin, cert_chain_pem=chain, key=key, scratch=base / "scratch",  # type: ignore[arg-type]
            port=state.get("port", 0)))
        keep_fixture_threads("trustboot-https")  # the lab's server, when a test restarts it

    restart(None)
    port = state["port"]
    (d / "lab.yaml").write_text(f"""\
version: 1
name: lab
ca: {{home: pki}}
signer: {{key: {signer}, passphrase: {{file: pass.txt}}}}
ipxe: {{targets: [bin/ipxe.lkrn], serial_console: true, on_failure: halt}}
origin: {{url: 'file://{origin}', public_url: 'https://10.0.2.2:{port}/', ca_file: pki/ca.crt}}
menu: {{title: attack lab, timeout: 1}}
entries:
  - name: linux
    title: Debian kernel
    arch: [bios]
    kernel: images/vmlinuz
    initrds: [images/initrd.img]
    cmdline: console=ttyS0 quiet panic=-1
release: {{id: "lab-{{digest8}}", min_signer_lifetime: {lifetime}}}
""")
    r = CliRunner().invoke(cli, [
        "release", str(d / "lab.yaml"), "--ipxe-source", str(src), "--cache-dir",
        str(cache_root() / "ipxe"), "--readback-url", f"https://127.0.0.1:{port}/", "--json"])
    assert r.exit_code == 0, r.output

    data = json.loads(r.stdout)
    rid = data["release"]
    lkrn = origin / "releases" / rid / "ipxe.lkrn"
    assert lkrn.is_file()
    try:
        yield Release(d, origin, rid, lkrn, port, restart)
    finally:
        stack.close()


@pytest.fixture(scope="module")
def lab_release(session_ca: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Release]:
    with _released(session_ca, tmp_path_factory.mktemp("attack"), "release-signer",
                   "30d") as rel:
        yield rel


def _boot(rel: Release, *, rtc: dt.datetime | None = None) -> str:
    return boot(rel.lkrn, {}, "#!ipxe\necho unused\n", restrict=False, rtc=rtc, timeout=300,
                stop_on=STOP)


@contextlib.contextmanager
def _swapped(path: Path, data: bytes) -> Iterator[None]:
    old = path.read_bytes()
    path.chmod(0o644)
    path.write_bytes(data)
    try:
        yield
    finally:
        path.write_bytes(old)


def _rogue_sign(rogue: CertificateAuthority, path: Path) -> bytes:
    signer, _ = open_signer(KeyRef("ca", "release-signer"), passphrases=constant(PASSPHRASE),
                            pki=rogue.path)
    [signed] = cms_sign.sign_files([path], signer, now=dt.datetime.now(dt.UTC))
    return signed.signature_path.read_bytes()


def test_clean_release_boots_the_real_kernel_to_the_marker(lab_release: Release) -> None:
    console = _boot(lab_release)
    assert MARKER in console, console[-3000:]
    assert f"booting Debian kernel (release {lab_release.rid})" in console


def test_kernel_signed_by_another_ca_is_refused(lab_release: Release,
                                                rogue_ca: CertificateAuthority,
                                                tmp_path: Path) -> None:
    other = tmp_path / "vmlinuz"
    data = real_kernel().read_bytes()
    other.write_bytes(data + b"\0" * 512)  # another valid file, signed by a look-alike CA
    sig = _rogue_sign(rogue_ca, other)
    rel = lab_release.origin / "releases" / lab_release.rid / "linux"
    with _swapped(rel / "vmlinuz", other.read_bytes()), _swapped(rel / "vmlinuz.sig", sig):
        console = _boot(lab_release)
    assert MARKER not in console, console[-3000:]
    assert "a download or signature check failed" in console, console[-3000:]


def test_unsigned_initrd_swap_is_refused(lab_release: Release) -> None:
    rel = lab_release.origin / "releases" / lab_release.rid / "linux"
    with _swapped(rel / "initrd.img", make_initrd(EVIL)):
        console = _boot(lab_release)
    assert MARKER not in console and EVIL not in console, console[-3000:]
    assert "a download or signature check failed" in console, console[-3000:]


def test_menu_script_edited_on_the_origin_is_refused(lab_release: Release) -> None:
    entry = lab_release.origin / "boot.ipxe"
    edited = entry.read_text().replace("quiet panic=-1", "quiet panic=-1 init=/bin/sh")
    with _swapped(entry, edited.encode()):
        console = _boot(lab_release)
    assert MARKER not in console, console[-3000:]
    assert "verifying https://10.0.2.2" in console, console[-3000:]
    assert "booting Debian kernel" not in console


def test_origin_certificate_from_another_ca_is_refused(lab_release: Release,
                                                       rogue_ca: CertificateAuthority) -> None:
    lab_release.restart(rogue_ca)
    try:
        console = _boot(lab_release)
    finally:
        lab_release.restart(None)
    assert MARKER not in console, console[-3000:]
    assert "could not fetch https://10.0.2.2" in console, console[-3000:]


def test_older_release_after_its_signer_expired_is_refused(
        session_ca: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    # short-signer is valid for 10 days: boot the release as a client 20 days from now.
    with _released(session_ca, tmp_path_factory.mktemp("expired"), "short-signer",
                   "1d") as rel:
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=20)
        console = _boot(rel, rtc=later)
    assert MARKER not in console, console[-3000:]
    assert "verifying https://10.0.2.2" in console, console[-3000:]
