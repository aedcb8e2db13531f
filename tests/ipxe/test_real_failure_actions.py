"""`ipxe build --on-failure reboot|poweroff|exit` under QEMU, after a real failed verification.

The firmware (built with `--chain`, as users build it) fetches an entry script that was
signed and then changed, so imgverify fails and the failure block runs:

- ``poweroff``: the machine powers off. QEMU runs WITHOUT -no-reboot, so only a power-off
  (not a reset) ends it, and it ends by itself.
- ``reboot``: the machine resets and comes back to fail again: a reboot loop, seen as a
  second verification failure in one QEMU run; QEMU never ends by itself.
- ``exit`` under OVMF: iPXE returns to the firmware, which boots the next device (a second
  disk with an EFI app that prints a marker): the documented fall-through, and the reason
  exit is not fail-closed. With the default (halt) the same setup never reaches the app.

Needs $TRUSTBOOT_IPXE_SRC (skipped with the reason otherwise).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.ipxe.test_real_ipxe import ENTRY, _flip, _Origin, _serve
from tests.ipxe.testpki import TestPki
from tests.ipxe_qemu import boot, boot_efi, chain_firmware, seen
from tests.secureboot.mkpe import make_marker_app

pytestmark = [pytest.mark.ipxe, pytest.mark.slow]

# A fixed origin port keeps these firmwares (their --chain URL names it) cached across runs.
ORIGIN_PORT = 47451
FAILED = "Could not verify"
STOPPED = "trustboot: boot stopped"
NEXT_DEVICE_MARKER = "TRUSTBOOT-NEXT-BOOT-DEVICE-RAN"
EFI = "bin-x86_64-efi/ipxe.efi"


@pytest.fixture(scope="module")
def origin(real_pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Origin]:
    """The entry script signed, then one byte changed: every boot fails verification."""
    server = _serve(real_pki, tmp_path_factory.mktemp("failure-origin"), port=ORIGIN_PORT)
    server.files = {"/boot.ipxe": _flip(ENTRY, 12),
                    "/boot.ipxe.sig": real_pki.sign_bytes(ENTRY)}
    yield server
    server.shutdown()
    server.server_close()


def _firmware(src: Path, pki: TestPki, origin: _Origin, out: Path, action: str,
              target: str = "bin/ipxe.lkrn") -> Path:
    url = f"https://10.0.2.2:{origin.server_address[1]}/boot.ipxe"
    return chain_firmware(src, pki.dir, url, out / action, target=target,
                          extra=["--on-failure", action])


def test_on_failure_poweroff_powers_the_machine_off(
        real_src: Path, real_pki: TestPki, origin: _Origin, tmp_path: Path) -> None:
    fw = _firmware(real_src, real_pki, origin, tmp_path, "poweroff")
    exited: list[bool] = []
    console = boot(fw, {}, "#!ipxe\n", restrict=False, stop_on=(), no_reboot=False,
                   exited=exited, timeout=240)
    assert FAILED in console and STOPPED in console, console
    assert exited == [True], console  # ended by itself; a reset would have restarted it
    assert console.count(FAILED) == 1, console
    assert "halted" not in console and "MARKER-SIGNED-ENTRY-RAN" not in console, console


def test_on_failure_reboot_loops(real_src: Path, real_pki: TestPki, origin: _Origin,
                                 tmp_path: Path) -> None:
    fw = _firmware(real_src, real_pki, origin, tmp_path, "reboot")
    exited: list[bool] = []
    console = boot(fw, {}, "#!ipxe\n", restrict=False, stop_on=(), no_reboot=False,
                   exited=exited, timeout=300,
                   stop_when=lambda text: text.count(FAILED) >= 2)
    assert "trustboot: rebooting in" in console, console
    # The machine came back, ran the firmware again and failed again: a reboot loop.
    assert console.count(FAILED) >= 2, console
    assert exited == [False], console
    assert "halted" not in console and "MARKER-SIGNED-ENTRY-RAN" not in console, console


def _ovmf_with_next_device(fw: Path, tmp_path: Path, *, timeout: float,
                           stop_when: Callable[[str], bool] | None = None) -> str:
    """OVMF with trustboot's ipxe.efi as the first boot device and a second disk whose
    EFI app prints NEXT_DEVICE_MARKER."""
    second = tmp_path / f"next-{time.monotonic_ns()}"
    (second / "EFI" / "BOOT").mkdir(parents=True)
    (second / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(make_marker_app(NEXT_DEVICE_MARKER))
    return boot_efi(fw, restrict=False, stop_on=(NEXT_DEVICE_MARKER,), timeout=timeout,
                    stop_when=stop_when, extra_args=[
                        "-drive", f"if=none,id=next,format=raw,file=fat:rw:{second}",
                        "-device", "virtio-blk-pci,drive=next,bootindex=1"])


def test_ovmf_exit_falls_through_and_halt_does_not(
        real_src: Path, real_pki: TestPki, origin: _Origin, tmp_path: Path) -> None:
    # Control: --on-failure exit hands the machine back to OVMF, which boots the next disk.
    exit_fw = _firmware(real_src, real_pki, origin, tmp_path, "exit", target=EFI)
    console = _ovmf_with_next_device(exit_fw, tmp_path, timeout=300)
    assert seen(FAILED, console), console
    assert NEXT_DEVICE_MARKER in console, console

    # The default (halt): the same failure, and the next device never runs.
    halt_fw = _firmware(real_src, real_pki, origin, tmp_path, "halt", target=EFI)
    gave_up: list[float] = []

    def settle(text: str) -> bool:
        if not gave_up and seen("halted", text):
            gave_up.append(time.monotonic())
        return bool(gave_up) and time.monotonic() - gave_up[0] > 45

    console = _ovmf_with_next_device(halt_fw, tmp_path, timeout=300, stop_when=settle)
    assert seen(FAILED, console) and seen("halted", console), console
    assert gave_up, console
    assert NEXT_DEVICE_MARKER not in console, console
