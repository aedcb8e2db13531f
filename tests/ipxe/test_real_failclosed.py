"""Fail-closed on BIOS, proven under QEMU with a second boot device present.

The firmware built by `trustboot ipxe build --chain` runs from -kernel; the NIC is an e1000
with QEMU's stock iPXE option ROM, which SeaBIOS boots next if trustboot's firmware ever
returns. That ROM checks no signatures: it does DHCP and fetches the boot file slirp offers,
here from a "rogue" HTTP server the test watches. After a verification failure the default
(halt) must never let it run; `--on-failure exit` is the control that shows it would.
Needs $TRUSTBOOT_IPXE_SRC (skipped with the reason otherwise).
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.ipxe.test_real_ipxe import ENTRY, _flip, _Origin, _serve
from tests.ipxe.testpki import TestPki
from tests.ipxe_qemu import boot, cache_root
from trustboot.cli.main import cli

pytestmark = [pytest.mark.ipxe, pytest.mark.slow]

# A fixed origin port keeps these firmwares (their --chain URL names it) cached across runs.
ORIGIN_PORT = 47445
ROGUE_FILE = "/rogue-nbp.ipxe"


class _Rogue(http.server.ThreadingHTTPServer):
    requests: list[tuple[float, str]]


class _RogueHandler(http.server.BaseHTTPRequestHandler):
    server: _Rogue

    def do_GET(self) -> None:
        self.server.requests.append((time.monotonic(), self.path))
        body = b"#!ipxe\necho ROGUE-NBP-RAN\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def rogue() -> Iterator[_Rogue]:
    server = _Rogue(("127.0.0.1", 0), _RogueHandler)
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def origin(real_pki: TestPki, tmp_path: Path) -> Iterator[_Origin]:
    server = _serve(real_pki, tmp_path, port=ORIGIN_PORT)
    yield server
    server.shutdown()
    server.server_close()


def _firmware(real_src: Path, real_pki: TestPki, port: int, out: Path, *extra: str) -> Path:
    result = CliRunner().invoke(cli, [
        "ipxe", "build", "--source", str(real_src), "--pki", str(real_pki.dir),
        "--target", "bin/ipxe.lkrn", "--serial-console",
        "--chain", f"https://10.0.2.2:{port}/boot.ipxe", "--signer", "boot-signer",
        "--retries", "1", "--retry-delay", "1",
        "--cache-dir", str(cache_root() / "ipxe"), "-o", str(out), *extra,
    ])
    assert result.exit_code == 0, result.output
    return out / "bin/ipxe.lkrn"


def _boot_failing(lkrn: Path, rogue: _Rogue, tmp_path: Path, *, settle: float
                  ) -> tuple[str, str, float | None]:
    """Boot until the rogue server is asked for its file, or ``settle`` seconds after the
    firmware said it gave up. Returns the console, SeaBIOS's log and when the firmware
    gave up (monotonic), if it said so."""
    gave_up: list[float] = []

    def stop(console: str) -> bool:
        if rogue.requests:
            return True
        if not gave_up and ("halted" in console or "Could not verify" in console):
            gave_up.append(time.monotonic())
        return bool(gave_up) and time.monotonic() - gave_up[0] > settle

    log = tmp_path / f"seabios-{time.monotonic_ns()}.log"
    bootfile = f"http://10.0.2.2:{rogue.server_address[1]}{ROGUE_FILE}"
    console = boot(lkrn, {}, "#!ipxe\n", restrict=False, stock_nic_rom=True,
                   bootfile=bootfile, stop_on=(), stop_when=stop, bios_log=log,
                   timeout=120 + settle)
    bios = log.read_text(errors="replace") if log.exists() else ""
    return console, bios, gave_up[0] if gave_up else None


def test_failed_verification_never_reaches_the_next_boot_device(
    real_src: Path, real_pki: TestPki, origin: _Origin, rogue: _Rogue, tmp_path: Path
) -> None:
    port = origin.server_address[1]
    # The entry script is signed, then changed: imgverify fails.
    origin.files = {"/boot.ipxe": _flip(ENTRY, 12), "/boot.ipxe.sig": real_pki.sign_bytes(ENTRY)}

    # Control: --on-failure exit returns to the BIOS, which boots the stock NIC ROM, which
    # fetches the rogue file. This shows the setup can see a fall-through.
    exit_fw = _firmware(real_src, real_pki, port, tmp_path / "exit", "--on-failure", "exit")
    console, bios, gave_up = _boot_failing(exit_fw, rogue, tmp_path, settle=90)
    assert "Could not verify" in console, console
    assert "MARKER-SIGNED-ENTRY-RAN" not in console
    assert [p for _, p in rogue.requests] == [ROGUE_FILE], (console, bios)
    assert bios.count("Booting from ROM") == 2, bios  # the firmware, then the NIC's ROM
    assert gave_up is not None
    fall_through = rogue.requests[0][0] - gave_up  # seconds from failure to the rogue fetch

    # The default: after the same failure the firmware halts; nothing else ever boots.
    rogue.requests.clear()
    halt_fw = _firmware(real_src, real_pki, port, tmp_path / "halt")
    settle = max(45.0, 3 * fall_through)
    console, bios, gave_up = _boot_failing(halt_fw, rogue, tmp_path, settle=settle)
    assert "Could not verify" in console, console
    assert "trustboot: boot stopped" in console and "halted" in console, console
    assert gave_up is not None, console
    assert rogue.requests == [], (console, bios)
    assert "MARKER-SIGNED-ENTRY-RAN" not in console and "ROGUE-NBP-RAN" not in console
    # SeaBIOS booted one device (the firmware) and never went on to the NIC's ROM.
    assert bios.count("Booting from ROM") == 1, bios


def test_failed_fetch_and_failed_dhcp_paths_halt_too(
    real_src: Path, real_pki: TestPki, origin: _Origin, rogue: _Rogue, tmp_path: Path
) -> None:
    """No signature on the origin: the fetch retries run out and the firmware halts."""
    port = origin.server_address[1]
    origin.files = {"/boot.ipxe": ENTRY}  # no .sig
    halt_fw = _firmware(real_src, real_pki, port, tmp_path / "halt")
    console, bios, gave_up = _boot_failing(halt_fw, rogue, tmp_path, settle=45)
    assert "could not fetch https://10.0.2.2" in console, console
    assert gave_up is not None and "halted" in console, console
    assert rogue.requests == [], (console, bios)
    assert bios.count("Booting from ROM") == 1, bios
