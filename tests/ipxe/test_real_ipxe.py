"""A real iPXE from $TRUSTBOOT_IPXE_SRC, built by trustboot and booted under QEMU.

Skipped with the reason when no tree (or QEMU/toolchain) is there. The first build takes a
few minutes; later runs reuse the cache (see tests/ipxe_qemu.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import ssl
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.ipxe.testpki import TestPki, cached_pki
from tests.ipxe_qemu import (
    DONE_MARKER,
    HARNESS_EMBED,
    boot,
    boot_efi,
    build_test_ipxe,
    cache_root,
    chain_firmware,
)
from trustboot.cli.main import cli
from trustboot.ipxe import build as B
from trustboot.ipxe.config import BuildOptions, load_certificates, load_single_certificate
from trustboot.ipxe.source import open_source

pytestmark = [pytest.mark.ipxe, pytest.mark.slow]

ENTRY = b"#!ipxe\necho MARKER-SIGNED-ENTRY-RAN\necho " + DONE_MARKER.encode() + b"\n"


@pytest.fixture(scope="module")
def rogue(real_src: Path) -> TestPki:
    # Same names, same signer CN, different keys: only the trust anchor tells them apart.
    return cached_pki(cache_root() / "pki", "rogue")


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def _chain_valid_from(real_pki: TestPki) -> datetime:
    """The latest notBefore in the signing chain: before it, iPXE must refuse."""
    from cryptography import x509

    return max(x509.load_pem_x509_certificate(p.read_bytes()).not_valid_before_utc
               for p in (real_pki.root, real_pki.issuing, real_pki.leaf))


def _verdict(name: str, command: str) -> str:
    return f"{command} && echo VERDICT {name} ok || echo VERDICT {name} fail"


def test_harness_firmware_verifies_and_refuses(real_src: Path, real_pki: TestPki,
                                               rogue: TestPki) -> None:
    lkrn = build_test_ipxe([real_pki.root], certs=[real_pki.issuing])
    kernel = hashlib.sha512(b"k").digest() * 32768  # 2 MiB stand-in for a kernel
    files = {
        "vmlinuz": kernel,
        "vmlinuz.sig": real_pki.sign_bytes(kernel, "vmlinuz"),
        "vmlinuz.bad": _flip(kernel, 1_000_000),
        "entry.ipxe": ENTRY,
        "entry.ipxe.sig": real_pki.sign_bytes(ENTRY, "entry"),
        "entry.bad": _flip(ENTRY, 10),
        "rogue.ipxe": ENTRY,
        "rogue.ipxe.sig": rogue.sign_bytes(ENTRY, "rogue"),
    }
    script = "\n".join([
        "#!ipxe",
        "imgtrust --permanent",
        "imgfetch tftp://10.0.2.2/vmlinuz && imgfetch tftp://10.0.2.2/vmlinuz.sig",
        _verdict("kernel", "imgverify --signer boot-signer vmlinuz vmlinuz.sig"),
        "imgfetch tftp://10.0.2.2/vmlinuz.bad",
        _verdict("kernel-flipped", "imgverify vmlinuz.bad vmlinuz.sig"),
        "imgfetch tftp://10.0.2.2/rogue.ipxe && imgfetch tftp://10.0.2.2/rogue.ipxe.sig",
        _verdict("untrusted", "imgverify rogue.ipxe rogue.ipxe.sig"),
        _verdict("exec-unverified", "imgexec rogue.ipxe"),
        "imgfetch tftp://10.0.2.2/entry.bad && imgfetch tftp://10.0.2.2/entry.ipxe.sig",
        _verdict("entry-flipped", "imgverify entry.bad entry.ipxe.sig"),
        "imgfetch tftp://10.0.2.2/entry.ipxe",
        _verdict("wrong-signer", "imgverify --signer someone-else entry.ipxe entry.ipxe.sig"),
        _verdict("entry", "imgverify --signer boot-signer entry.ipxe entry.ipxe.sig"),
        "imgexec entry.ipxe",  # prints the marker, then the done marker
        "",
    ])
    console = boot(lkrn, files, script)
    verdicts = dict(
        line.split()[1:3] for line in console.splitlines() if line.startswith("VERDICT ")
    )
    assert verdicts == {
        "kernel": "ok",
        "kernel-flipped": "fail",
        "untrusted": "fail",
        "exec-unverified": "fail",  # imgtrust --permanent: nothing unverified runs
        "entry-flipped": "fail",
        "wrong-signer": "fail",
        "entry": "ok",
    }, console
    assert "MARKER-SIGNED-ENTRY-RAN" in console
    assert DONE_MARKER in console


def test_trustboot_sign_output_verifies_in_real_ipxe(
    real_src: Path, real_pki: TestPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signatures made by `trustboot sign` (not openssl) against the same firmware."""
    from cryptography.hazmat.primitives import serialization

    from trustboot.keys.keyfile import write_key

    key = serialization.load_pem_private_key(real_pki.leaf_key.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    write_key(tmp_path / "keys" / "leaf.key", key, b"signing passphrase")
    monkeypatch.setenv("TB_TEST_SIGN_PASS", "signing passphrase")
    entry = tmp_path / "entry.ipxe"
    entry.write_bytes(ENTRY)
    result = CliRunner().invoke(cli, [
        "sign", str(entry), "--key", f"file:{tmp_path / 'keys' / 'leaf.key'}",
        "--cert", str(real_pki.leaf), "--chain", str(real_pki.chain),
        "--passphrase-env", "TB_TEST_SIGN_PASS",
    ])
    assert result.exit_code == 0, result.output
    sig = (tmp_path / "entry.ipxe.sig").read_bytes()
    lkrn = build_test_ipxe([real_pki.root], certs=[real_pki.issuing])
    console = boot(lkrn, {"entry.ipxe": ENTRY, "entry.ipxe.sig": sig,
                          "flipped.ipxe": _flip(ENTRY, 12)}, "\n".join([
        "#!ipxe",
        "imgtrust --permanent",
        "imgfetch tftp://10.0.2.2/flipped.ipxe",
        _verdict("flipped", "imgverify --keep flipped.ipxe tftp://10.0.2.2/entry.ipxe.sig"),
        "imgfetch tftp://10.0.2.2/entry.ipxe",
        _verdict("entry", "imgverify --signer boot-signer entry.ipxe "
                 "tftp://10.0.2.2/entry.ipxe.sig"),
        "imgexec entry.ipxe",
        "",
    ]))
    assert "VERDICT flipped fail" in console, console
    assert "VERDICT entry ok" in console, console
    assert "MARKER-SIGNED-ENTRY-RAN" in console


def test_untrusted_root_firmware_refuses_our_signatures(
    real_src: Path, real_pki: TestPki, rogue: TestPki
) -> None:
    # The same chain, but firmware that trusts only the rogue root.
    lkrn = build_test_ipxe([rogue.root], certs=[rogue.issuing])
    console = boot(lkrn, {"entry.ipxe": ENTRY, "entry.ipxe.sig": real_pki.sign_bytes(ENTRY, "e2")},
                   f"""#!ipxe
imgtrust --permanent
imgfetch tftp://10.0.2.2/entry.ipxe && imgfetch tftp://10.0.2.2/entry.ipxe.sig
imgverify entry.ipxe entry.ipxe.sig && echo VERDICT ours ok || echo VERDICT ours fail
echo {DONE_MARKER}
""")
    assert "VERDICT ours fail" in console, console
    assert "MARKER-SIGNED-ENTRY-RAN" not in console


def test_client_clock_before_the_chain_is_valid_refuses(real_src: Path, real_pki: TestPki) -> None:
    # iPXE allows 12 h 30 min of clock error. A client whose clock is two days before the
    # chain's notBefore must refuse; one that is 6 h slow (the CA is backdated a day) accepts.

    lkrn = build_test_ipxe([real_pki.root], certs=[real_pki.issuing])
    files = {"entry.ipxe": ENTRY, "entry.ipxe.sig": real_pki.sign_bytes(ENTRY, "clock")}
    script = "\n".join([
        "#!ipxe",
        "imgfetch tftp://10.0.2.2/entry.ipxe",
        _verdict("clock", "imgverify --keep entry.ipxe tftp://10.0.2.2/entry.ipxe.sig"),
        f"echo {DONE_MARKER}",
        "",
    ])
    now = datetime.now(UTC)
    early = boot(lkrn, files, script, rtc=_chain_valid_from(real_pki) - timedelta(days=2))
    assert "VERDICT clock fail" in early, early
    slow = boot(lkrn, files, script, rtc=now - timedelta(hours=6))
    assert "VERDICT clock ok" in slow, slow


# --- the product: `trustboot ipxe build --chain` over HTTPS ---------------------------------


class _Origin(http.server.ThreadingHTTPServer):
    files: Mapping[str, bytes] = {}
    requests: list[str]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Origin

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:  # UEFI HTTP Boot asks for the size first
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        self.server.requests.append(self.path)
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def _serve(real_pki: TestPki, tmp_path: Path, *, client_auth: bool = False, port: int = 0,
           ciphers: str | None = None) -> _Origin:
    chain, key = real_pki.server_credentials("10.0.2.2")
    (tmp_path / "server.pem").write_bytes(chain)
    (tmp_path / "server.key").write_bytes(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # what iPXE speaks
    ctx.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if client_auth:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(real_pki.chain)
    try:
        server = _Origin(("127.0.0.1", port), _Handler)
    except OSError:  # a fixed port in use: any port (the firmware is then rebuilt)
        server = _Origin(("127.0.0.1", 0), _Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def origin(real_pki: TestPki, tmp_path: Path) -> Iterator[_Origin]:
    server = _serve(real_pki, tmp_path)
    yield server
    server.shutdown()
    server.server_close()


def test_cli_built_firmware_chains_only_a_verified_entry_script(
    real_src: Path, real_pki: TestPki, rogue: TestPki, origin: _Origin, tmp_path: Path
) -> None:
    lkrn = chain_firmware(real_src, real_pki.dir, f"https://10.0.2.2:{origin.server_address[1]}/boot.ipxe",
                          tmp_path / "fw")
    stops = (DONE_MARKER, "Could not verify", "stopping")
    cases = {
        "good": {"/boot.ipxe": ENTRY, "/boot.ipxe.sig": real_pki.sign_bytes(ENTRY, "h1")},
        "flipped": {"/boot.ipxe": _flip(ENTRY, 12), "/boot.ipxe.sig": real_pki.sign_bytes(ENTRY)},
        "untrusted": {"/boot.ipxe": ENTRY, "/boot.ipxe.sig": rogue.sign_bytes(ENTRY, "h2")},
        "unsigned": {"/boot.ipxe": ENTRY},
    }
    consoles = {}
    for name, files in cases.items():
        origin.files = files
        origin.requests.clear()
        consoles[name] = boot(lkrn, {}, "#!ipxe\n", restrict=False, stop_on=stops,
                              timeout=120)
        assert "/boot.ipxe" in origin.requests, (name, consoles[name])
    assert "MARKER-SIGNED-ENTRY-RAN" in consoles["good"], consoles["good"]
    for name in ("flipped", "untrusted", "unsigned"):
        assert "MARKER-SIGNED-ENTRY-RAN" not in consoles[name], (name, consoles[name])
    assert "Could not verify" in consoles["flipped"]
    assert "Could not verify" in consoles["untrusted"]
    # no signature to fetch: bounded retries, then it says so and stops
    assert "could not fetch https://10.0.2.2" in consoles["unsigned"]
    assert "stopping" in consoles["unsigned"]


class _NtpServer:
    """Answers SNTP on 127.0.0.1:123 (the guest's 10.0.2.2:123) with the host's time."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind(("127.0.0.1", 123))
        except PermissionError:
            self.sock.close()
            pytest.skip("needs root to serve NTP on port 123; CI runs as root")
        self.answer = True
        self.queries = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import struct
        import time

        while True:
            try:
                data, peer = self.sock.recvfrom(512)
            except OSError:
                return
            self.queries += 1
            if not self.answer or len(data) < 48:
                continue
            now = time.time() + 2208988800  # NTP era starts 1900
            stamp = struct.pack("!II", int(now), int((now % 1) * 2**32))
            reply = (bytes([0x24, 1, 4, 0xEC]) + bytes(8) + b"LOCL"
                     + stamp + data[40:48] + stamp + stamp)  # ref, originate, receive, xmit
            self.sock.sendto(reply, peer)

    def close(self) -> None:
        import socket

        # wakes the thread in recvfrom (closing alone does not): it ends with the test
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)
        self.sock.close()


def test_cli_ntp_sets_the_clock_before_verifying(
    real_src: Path, real_pki: TestPki, origin: _Origin, tmp_path: Path
) -> None:
    """--ntp: a client whose clock is before the chain's notBefore verifies once NTP has set
    the clock; with no NTP answer it is fail-closed: it fetches and runs nothing."""

    ntp = _NtpServer()
    try:
        port = origin.server_address[1]
        out = tmp_path / "fw"
        result = CliRunner().invoke(cli, [
            "ipxe", "build", "--source", str(real_src), "--pki", str(real_pki.dir),
            "--target", "bin/ipxe.lkrn", "--serial-console", "--ntp", "10.0.2.2",
            "--chain", f"https://10.0.2.2:{port}/boot.ipxe", "--signer", "boot-signer",
            "--retries", "1", "--retry-delay", "1",
            "--cache-dir", str(cache_root() / "ipxe"), "-o", str(out),
        ])
        assert result.exit_code == 0, result.output
        lkrn = out / "bin/ipxe.lkrn"
        origin.files = {"/boot.ipxe": ENTRY, "/boot.ipxe.sig": real_pki.sign_bytes(ENTRY, "ntp")}
        stops = (DONE_MARKER, "Could not verify", "stopping")
        slow = _chain_valid_from(real_pki) - timedelta(days=2)
        synced = boot(lkrn, {}, "#!ipxe\n", rtc=slow, restrict=False, stop_on=stops,
                      timeout=120)
        assert ntp.queries >= 1
        assert "NTP failed" not in synced, synced
        assert "MARKER-SIGNED-ENTRY-RAN" in synced, synced
        ntp.answer = False
        unsynced = boot(lkrn, {}, "#!ipxe\n", rtc=slow, restrict=False, stop_on=stops,
                        timeout=180)
        assert "no time from NTP server 10.0.2.2" in unsynced, unsynced
        # it never fetched or verified anything against its wrong clock
        assert "trustboot: verifying" not in unsynced and "could not fetch" not in unsynced
        assert "MARKER-SIGNED-ENTRY-RAN" not in unsynced
    finally:
        ntp.close()


# A fixed port keeps this firmware (its --chain URL names the port) cached across runs.
CLIENT_ORIGIN_PORT = 47444


def _cached_client(real_pki: TestPki, cn: str) -> tuple[Any, Any]:
    """The same client certificate across runs (it is part of the firmware's cache key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    crt, key_file = real_pki.dir / f"client-{cn}.crt", real_pki.dir / f"client-{cn}.key"
    if not crt.exists() or not key_file.exists():
        cert, key = real_pki.client_credentials(cn)
        key_file.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return (x509.load_pem_x509_certificate(crt.read_bytes()),
            serialization.load_pem_private_key(key_file.read_bytes(), None))


def test_client_certificate_origin(
    real_src: Path, real_pki: TestPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--client-cert: the firmware authenticates to an origin that requires it; firmware
    without the client key cannot fetch from it. A fresh build (the key never enters a
    shared tree), so this takes a few minutes."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from trustboot.keys.keyfile import write_key

    store = tmp_path / "pki"
    (store / "issued").mkdir(parents=True)
    (store / "ca.crt").write_bytes(real_pki.root.read_bytes())
    (store / "issuing-ca.crt").write_bytes(real_pki.issuing.read_bytes())
    cert, key = _cached_client(real_pki, "boot-client-1")
    (store / "issued" / "boot-client-1.crt").write_bytes(cert.public_bytes(Encoding.PEM))
    write_key(store / "private" / "boot-client-1.key", key, b"correct horse battery")
    monkeypatch.setenv("TB_TEST_CLIENT_PASS", "correct horse battery")
    (tmp_path / "origin").mkdir()
    server = _serve(real_pki, tmp_path / "origin", client_auth=True, port=CLIENT_ORIGIN_PORT)
    try:
        port = server.server_address[1]
        server.files = {"/boot.ipxe": ENTRY, "/boot.ipxe.sig": real_pki.sign_bytes(ENTRY, "cc")}
        out = tmp_path / "fw"
        result = CliRunner().invoke(cli, [
            "ipxe", "build", "--source", str(real_src), "--pki", str(store),
            "--client-cert", "boot-client-1", "--passphrase-env", "TB_TEST_CLIENT_PASS",
            "--target", "bin/ipxe.lkrn", "--serial-console",
            "--chain", f"https://10.0.2.2:{port}/boot.ipxe", "--signer", "boot-signer",
            "--retries", "1", "--retry-delay", "1",
            "--cache-dir", str(cache_root() / "ipxe"), "-o", str(out),
        ])
        assert result.exit_code == 0, result.output
        lkrn = out / "bin/ipxe.lkrn"
        assert oct(lkrn.stat().st_mode & 0o777) == "0o600"  # it holds the key
        stops = (DONE_MARKER, "Could not verify", "stopping")
        console = boot(lkrn, {}, "#!ipxe\n", restrict=False, stop_on=stops, timeout=120)
        assert "MARKER-SIGNED-ENTRY-RAN" in console, console
        # the harness firmware trusts the same root but has no client key
        plain = build_test_ipxe([real_pki.root], certs=[real_pki.issuing])
        console = boot(plain, {}, "\n".join([
            "#!ipxe",
            _verdict("noclient", f"imgfetch https://10.0.2.2:{port}/boot.ipxe"),
            f"echo {DONE_MARKER}", "",
        ]), restrict=False)
        assert "VERDICT noclient fail" in console, console
    finally:
        server.shutdown()
        server.server_close()


# A fixed origin port keeps the EFI firmware (whose --chain URL names it) cached across runs.
EFI_ORIGIN_PORT = 47443


def test_default_efi_targets_chain_only_a_verified_entry_script(
    real_src: Path, real_pki: TestPki, tmp_path: Path
) -> None:
    """The default targets under OVMF: ipxe.efi from a disk, snponly.efi PXE-booted (with an
    unsigned autoexec.ipxe on the TFTP server, which iPXE 2.0 fetches and must not run)."""
    server = _serve(real_pki, tmp_path, port=EFI_ORIGIN_PORT)
    try:
        port = server.server_address[1]
        out = tmp_path / "fw"
        result = CliRunner().invoke(cli, [
            "ipxe", "build", "--source", str(real_src), "--pki", str(real_pki.dir),
            "--chain", f"https://10.0.2.2:{port}/boot.ipxe", "--signer", "boot-signer",
            "--retries", "2", "--retry-delay", "1",
            "--cache-dir", str(cache_root() / "ipxe"), "-o", str(out), "--json",
        ])
        assert result.exit_code == 0, result.output
        manifest = json.loads(result.stdout)["manifest"]
        checks = {o["target"]: o["trust_check"]["searched"] for o in manifest["outputs"]}
        assert checks == {"bin-x86_64-efi/ipxe.efi": "output",
                          "bin-x86_64-efi/snponly.efi": "output",
                          "bin/undionly.kpxe": "linked image"}
        stops = (DONE_MARKER, "Could not verify", "stopping", "AUTOEXEC-RAN")
        server.files = {"/boot.ipxe": ENTRY, "/boot.ipxe.sig": real_pki.sign_bytes(ENTRY, "efi")}
        disk = boot_efi(out / "bin-x86_64-efi/ipxe.efi", restrict=False, stop_on=stops)
        assert "MARKER-SIGNED-ENTRY-RAN" in disk, disk
        autoexec = {"autoexec.ipxe": b"#!ipxe\necho AUTOEXEC-RAN\n"}
        net = boot_efi(out / "bin-x86_64-efi/snponly.efi", pxe=True, tftp=autoexec,
                       restrict=False, stop_on=stops)
        assert "MARKER-SIGNED-ENTRY-RAN" in net, net
        assert "AUTOEXEC-RAN" not in net
        server.files = {"/boot.ipxe": _flip(ENTRY, 12),
                        "/boot.ipxe.sig": server.files["/boot.ipxe.sig"]}
        flipped = boot_efi(out / "bin-x86_64-efi/ipxe.efi", restrict=False, stop_on=stops)
        assert "Could not verify" in flipped, flipped
        assert "MARKER-SIGNED-ENTRY-RAN" not in flipped
    finally:
        server.shutdown()
        server.server_close()


# --- reproducibility ------------------------------------------------------------------------


def _request(real_src: Path, real_pki: TestPki, targets: tuple[str, ...]) -> B.BuildRequest:
    return B.BuildRequest(
        source=open_source(real_src), targets=targets,
        trust=(load_single_certificate(real_pki.root),),
        certs=tuple(load_certificates(real_pki.issuing)),
        script=HARNESS_EMBED, options=BuildOptions(serial_console=True),
    )


def test_bios_media_targets_carry_the_trust(real_src: Path, real_pki: TestPki,
                                            tmp_path: Path) -> None:
    # ISO and USB wrap the compressed image; the check looks in the linked image they wrap.
    targets = ("bin/ipxe.iso", "bin/ipxe.usb", "bin/undionly.kpxe")
    res = B.build(_request(real_src, real_pki, targets), output_dir=tmp_path / "out",
                  cache_dir=cache_root() / "ipxe")
    outputs: Any = res.manifest["outputs"]
    for out in outputs:
        check = out["trust_check"]
        assert check["searched"] == "linked image"
        assert list(check["trust"]) == [load_single_certificate(real_pki.root).fingerprint]
        assert all(check["trust"].values()) and all(check["certs"].values())
        assert (tmp_path / "out" / out["target"]).stat().st_size == out["size"]
    # Published as prebuilt firmware (no linked image at hand), the release finds the same
    # trust in the packed payload of each output.
    record: Any = B.check_prebuilt_record(
        res.manifest, {t: p.read_bytes() for t, p in res.outputs.items()}, "manifest.json")
    for out in record["outputs"]:
        assert out["trust_check"] == {"searched": "packed payload", "trust": {
            load_single_certificate(real_pki.root).fingerprint: True}}


def test_lkrn_is_reproducible_across_trees(real_src: Path, real_pki: TestPki,
                                           tmp_path: Path) -> None:
    # The harness build came from the shared warm tree (possibly rebuilt incrementally from
    # other trust); this one from a fresh copy at another path.
    warm = build_test_ipxe([real_pki.root], certs=[real_pki.issuing]).read_bytes()
    fresh = B.build(_request(real_src, real_pki, ("bin/ipxe.lkrn",)), output_dir=tmp_path / "out",
                    cache_dir=tmp_path / "cache", clean=True)
    assert not fresh.cached
    assert hashlib.sha256(fresh.outputs["bin/ipxe.lkrn"].read_bytes()).hexdigest() == \
        hashlib.sha256(warm).hexdigest()


@pytest.mark.skipif(os.environ.get("TRUSTBOOT_SKIP_EFI_REPRO") == "1",
                    reason="TRUSTBOOT_SKIP_EFI_REPRO=1")
def test_efi_is_reproducible_across_trees(real_src: Path, real_pki: TestPki,
                                          tmp_path: Path) -> None:
    req = _request(real_src, real_pki, ("bin-x86_64-efi/snponly.efi",))
    digests = []
    for name in ("a", "b"):
        res = B.build(req, output_dir=tmp_path / name / "out",
                      cache_dir=tmp_path / name / "cache")
        data = res.outputs["bin-x86_64-efi/snponly.efi"].read_bytes()
        digests.append(hashlib.sha256(data).hexdigest())
        check = res.manifest["outputs"][0]["trust_check"]  # type: ignore[index]
        assert check["searched"] == "output"  # EFI is uncompressed: checked in the binary
    assert digests[0] == digests[1]
