"""Shared harness: build a real iPXE (through trustboot.ipxe) and boot it under QEMU.

Usage from any test::

    from tests.ipxe_qemu import boot, build_test_ipxe, ipxe_src_or_skip

    ipxe_src_or_skip()
    lkrn = build_test_ipxe([root_pem_path], certs=[issuing_pem_path])
    console = boot(lkrn, {"x": data, "x.sig": sig}, '''#!ipxe
    imgfetch tftp://10.0.2.2/x
    imgverify x x.sig && echo VERDICT x ok || echo VERDICT x fail
    echo TRUSTBOOT-DONE
    ''')
    assert "VERDICT x ok" in console

The firmware is ``bin/ipxe.lkrn`` with IMAGE_TRUST_CMD, HTTPS and a serial console, no
cross-signing fetch, and an embedded script that runs DHCP (QEMU's user-mode network) and
chains ``tftp://10.0.2.2/boot.ipxe``, which :func:`boot` serves from a temporary directory.
:func:`boot_efi` boots an EFI binary under OVMF (from a disk, or PXE for snponly.efi).
Builds are cached by their inputs under ``$TRUSTBOOT_TEST_CACHE``, which tests/conftest.py
points at pytest's per-user temp root unless it is set (never the user's own cache);
concurrent callers with the same inputs wait on a lock and share one build.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.procs import stop_process
from trustboot.fsutil import ensure_private_dir
from trustboot.ipxe import build as ipxe_build
from trustboot.ipxe.config import BuildOptions, load_certificates, load_single_certificate
from trustboot.ipxe.source import ENV_SOURCE, IpxeSource, open_source

DONE_MARKER = "TRUSTBOOT-DONE"
BOOT_SCRIPT_NAME = "boot.ipxe"
QEMU = "qemu-system-x86_64"

# DHCP, then the per-boot script from slirp's TFTP server. Trust is not enforced here on
# purpose: the script under test decides (imgtrust, imgverify ...).
HARNESS_EMBED = (
    "#!ipxe\n"
    "dhcp || dhcp || dhcp\n"
    f"chain tftp://10.0.2.2/{BOOT_SCRIPT_NAME}\n"
)

_TOOLS = ((QEMU, "qemu-system-x86"), *ipxe_build.BASE_TOOLS)

_sources: dict[Path, IpxeSource] = {}
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\x1b[=>c]")


def cache_root() -> Path:
    """Where test builds are cached (outside the repository)."""
    if os.environ.get("TRUSTBOOT_TEST_CACHE"):
        return Path(os.environ["TRUSTBOOT_TEST_CACHE"])
    # Outside pytest (tests/conftest.py sets the variable): a private temp dir.
    return Path(tempfile.gettempdir()) / f"trustboot-tests-{os.getuid()}"


def ipxe_src_or_skip() -> Path:
    """The iPXE tree from ``$TRUSTBOOT_IPXE_SRC``, or skip the test with the reason.

    Also skips when QEMU or the build tools are missing, naming the Debian packages. A
    variable that points at something that is not an iPXE tree fails the test instead:
    that is a broken setup, not a missing capability.
    """
    value = os.environ.get(ENV_SOURCE)
    if not value:
        pytest.skip(
            f"needs a real iPXE: set {ENV_SOURCE} to an iPXE source tree "
            "(git clone https://github.com/ipxe/ipxe)"
        )
    missing = sorted({pkg for prog, pkg in _TOOLS if shutil.which(prog) is None})
    if missing:
        pytest.skip(f"needs QEMU and the iPXE toolchain: apt-get install {' '.join(missing)}")
    if not ipxe_build._has_lzma_header():
        pytest.skip("needs lzma.h to build iPXE: apt-get install liblzma-dev")
    path = Path(value)
    try:
        _source(path)  # validates the tree once per session
    except Exception as exc:
        pytest.fail(f"{ENV_SOURCE}={value} is not usable: {exc}")
    return path


def _source(path: Path) -> IpxeSource:
    key = path.resolve()
    if key not in _sources:
        _sources[key] = open_source(key)
    return _sources[key]


def build_test_ipxe(
    trust: list[Path], *, certs: list[Path] = [], embed: str | None = None,
    target: str = "bin/ipxe.lkrn",
) -> Path:
    """Build ``bin/ipxe.lkrn`` trusting exactly ``trust`` (one root per file).

    ``certs`` are built in with CERT= (PEM files, bundles allowed) on top of the roots.
    ``embed`` replaces the harness's embedded script (DHCP, then chain boot.ipxe over
    TFTP). Cached by inputs; returns the path of the cached lkrn (do not modify it).
    """
    source = _source(ipxe_src_or_skip())
    request = ipxe_build.BuildRequest(
        source=source,
        targets=(target,),
        trust=tuple(load_single_certificate(p) for p in trust),
        certs=tuple(c for p in certs for c in load_certificates(p)),
        script=HARNESS_EMBED if embed is None else embed,
        options=BuildOptions(serial_console=True),
    )
    cache = cache_root() / "ipxe"
    ensure_private_dir(cache)  # 0700, ours: refused if another user planted it
    toolchain = ipxe_build.check_toolchain(request.targets)
    key = ipxe_build.cache_key(request, toolchain)
    result = ipxe_build.build(
        request,
        output_dir=cache / target.replace("/", "_") / key[:24],
        cache_dir=cache,
        toolchain=toolchain,
    )
    return result.outputs[target]


def _clean(text: str) -> str:
    return _ANSI.sub("", text).replace("\r", "")


def _rtc_args(rtc: datetime | None) -> list[str]:
    """QEMU's -rtc for a guest clock at ``rtc`` (UTC; naive datetimes are taken as UTC)."""
    if rtc is None:
        return []
    when = rtc if rtc.tzinfo is None else rtc.astimezone(UTC).replace(tzinfo=None)
    return ["-rtc", f"base={when.strftime('%Y-%m-%dT%H:%M:%S')},clock=vm"]


def _run_console(argv: list[str], stop_on: Sequence[str], timeout: float,
                 stop_when: Callable[[str], bool] | None = None,
                 exited: list[bool] | None = None) -> str:
    """Run QEMU with the serial console on stdout until a stop string, ``stop_when`` (given
    the console so far) returns true, or the timeout. ``exited`` gets whether QEMU had
    ended by itself (the guest powered off, or reset under -no-reboot) before it was
    stopped."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    chunks: list[bytes] = []
    done = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        markers = [m.encode() for m in stop_on]
        window = b""
        while True:
            data = proc.stdout.read1(4096)  # type: ignore[attr-defined]
            if not data:
                break
            chunks.append(data)
            window += data
            if any(m in window for m in markers):
                done.set()
            window = window[-256:]
        done.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not done.wait(0.2) and time.monotonic() < deadline:
        if stop_when is not None and stop_when(_clean(b"".join(chunks).decode(errors="replace"))):
            break
    if exited is not None:
        try:  # stdout closes a moment before the process is reaped
            proc.wait(0.5 if done.is_set() else 0)
        except subprocess.TimeoutExpired:
            pass
        exited.append(proc.poll() is not None)
    stop_process(proc)
    thread.join(5)
    return _clean(b"".join(chunks).decode(errors="replace"))


def boot(
    lkrn: Path,
    files: Mapping[str, bytes],
    script: str,
    *,
    rtc: datetime | None = None,
    timeout: float = 90,
    stop_on: Sequence[str] = (DONE_MARKER,),
    restrict: bool = True,
    stock_nic_rom: bool = False,
    bootfile: str = BOOT_SCRIPT_NAME,
    stop_when: Callable[[str], bool] | None = None,
    bios_log: Path | None = None,
    no_reboot: bool = True,
    exited: list[bool] | None = None,
) -> str:
    """Boot ``lkrn`` under QEMU (TCG), serve ``files`` and ``script`` over slirp's TFTP.

    ``script`` becomes ``boot.ipxe``, which the harness firmware chains after DHCP; it
    should end with ``echo TRUSTBOOT-DONE``, at which QEMU is stopped. ``rtc`` sets the
    guest's clock (UTC; naive datetimes are taken as UTC). Returns the serial console
    text with ANSI escapes and carriage returns removed; on timeout, whatever was printed
    so far (assert on the marker to tell). ``stop_on``: console strings that end the
    boot early (default: the done marker). ``restrict=False`` lets the guest reach the
    host's loopback as 10.0.2.2 (for an HTTPS origin served by the test); the default
    keeps it off every network but slirp's own DHCP and TFTP.

    ``stock_nic_rom=True`` gives the NIC (an e1000) QEMU's own iPXE option ROM, a second
    boot device that SeaBIOS tries after ``lkrn`` returns (it checks no signatures);
    ``bootfile`` is the DHCP file name slirp offers it. ``bios_log`` receives SeaBIOS's
    debug log (which boot devices it tried). ``stop_when`` ends the boot early.
    ``no_reboot=False`` lets a guest reset restart the machine (QEMU then ends only on a
    power-off); ``exited`` gets whether QEMU ended by itself.
    """
    if shutil.which(QEMU) is None:
        pytest.skip(f"needs {QEMU}: apt-get install qemu-system-x86")
    if not script.startswith("#!ipxe"):
        raise ValueError("the boot script must start with #!ipxe")
    with tempfile.TemporaryDirectory(prefix="trustboot-qemu-") as tmp:
        tftp = Path(tmp) / "tftp"
        tftp.mkdir()
        for name, data in files.items():
            dest = tftp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        (tftp / BOOT_SCRIPT_NAME).write_text(script)
        argv = [
            QEMU, "-accel", "tcg", "-nodefaults", "-display", "none",
            *(["-no-reboot"] if no_reboot else []),
            "-m", "256", "-kernel", str(lkrn),
            "-netdev", f"user,id=n0,restrict={'on' if restrict else 'off'},tftp={tftp},"
            f"bootfile={bootfile}",
            # romfile= empty: no QEMU-bundled iPXE option ROM alongside the one under test
            # (unless the test wants that second boot device).
            "-device", "e1000,netdev=n0,bootindex=1" if stock_nic_rom
            else "virtio-net-pci,netdev=n0,romfile=",
            "-serial", "stdio", "-monitor", "none",
        ]
        if bios_log is not None:
            argv += ["-chardev", f"file,id=biosdbg,path={bios_log}",
                     "-device", "isa-debugcon,iobase=0x402,chardev=biosdbg"]
        argv += _rtc_args(rtc)
        return _run_console(argv, stop_on, timeout, stop_when, exited)


OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
OVMF_CODE_SECBOOT = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")


def boot_efi(
    efi: Path | None,
    *,
    rtc: datetime | None = None,
    timeout: float = 150,
    stop_on: Sequence[str] = (DONE_MARKER,),
    restrict: bool = True,
    tftp: Mapping[str, bytes] | None = None,
    pxe: bool = False,
    vars_file: Path | None = None,
    secure_boot: bool = False,
    extra_args: Sequence[str] = (),
    vars_in_place: bool = False,
    stop_when: Callable[[str], bool] | None = None,
) -> str:
    """Boot an iPXE EFI binary under OVMF (TCG).

    By default the binary is the removable-media loader (EFI/BOOT/BOOTX64.EFI on a virtual
    FAT disk); with ``pxe=True`` OVMF network-boots it from slirp's TFTP instead, which is
    what snponly.efi needs (it drives only the NIC it was loaded from). The console is
    OVMF's serial terminal (iPXE's EFI console writes there). Same network, ``stop_on`` and
    ``restrict`` semantics as :func:`boot`; ``tftp`` files are served by slirp's TFTP.
    ``secure_boot`` runs OVMF's Secure Boot build (SMM, secure flash) with ``vars_file``
    (a copy is used) holding the enrolled keys; ``vars_in_place=True`` boots ``vars_file``
    itself, so what the guest writes to its variables is there for the next boot (a
    reboot is two calls). ``efi=None`` with ``-kernel`` in ``extra_args`` boots a Linux
    kernel through OVMF. Skips when OVMF is not installed (Debian package ovmf).
    """
    code = OVMF_CODE_SECBOOT if secure_boot else OVMF_CODE
    template = vars_file or OVMF_VARS
    if shutil.which(QEMU) is None:
        pytest.skip(f"needs {QEMU}: apt-get install qemu-system-x86")
    if not code.is_file() or not template.is_file():
        pytest.skip("needs UEFI firmware for QEMU: apt-get install ovmf")
    with tempfile.TemporaryDirectory(prefix="trustboot-ovmf-") as tmp:
        esp = Path(tmp) / "esp"
        (esp / "EFI" / "BOOT").mkdir(parents=True)
        if efi is not None:
            shutil.copyfile(efi, esp / "EFI" / "BOOT" / "BOOTX64.EFI")
        served = Path(tmp) / "tftp"
        served.mkdir()
        for name, data in (tftp or {}).items():
            (served / name).write_bytes(data)
        vars_copy = Path(tmp) / "vars.fd"
        if vars_in_place:
            assert vars_file is not None, "vars_in_place needs a vars_file"
            vars_copy = vars_file
        else:
            shutil.copyfile(template, vars_copy)
        netdev = f"user,id=n0,restrict={'on' if restrict else 'off'},tftp={served}"
        machine = ["-machine", "q35,smm=on", "-global",
                   "driver=cfi.pflash01,property=secure,value=on"] if secure_boot else \
            ["-machine", "q35"]
        argv = [
            QEMU, "-accel", "tcg", *machine, "-m", "512", "-nodefaults",
            "-display", "none", "-no-reboot", "-serial", "stdio", "-monitor", "none",
            "-drive", f"if=pflash,format=raw,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,file={vars_copy}",
        ]
        if pxe:
            assert efi is not None
            shutil.copyfile(efi, served / "boot.efi")
            argv += ["-netdev", f"{netdev},bootfile=boot.efi",
                     "-device", "virtio-net-pci,netdev=n0,romfile=,bootindex=0"]
        elif efi is None:  # booting what extra_args give (-kernel takes bootindex 0)
            argv += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile="]
        else:
            argv += ["-drive", f"if=none,id=esp,format=raw,file=fat:rw:{esp}",
                     "-device", "virtio-blk-pci,drive=esp,bootindex=0",
                     "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile="]
        argv += [*_rtc_args(rtc), *extra_args]
        return _run_console(argv, stop_on, timeout, stop_when)


def doubled(text: str) -> str:
    """iPXE built with a serial console, under OVMF, writes every character twice to the
    serial port (once itself, once through OVMF's console mirror)."""
    return "".join(c * 2 for c in text)


def seen(marker: str, console: str) -> bool:
    """``marker`` on an OVMF console, written once or (iPXE with a serial console) twice."""
    return marker in console or doubled(marker) in console


def boot_rom(
    rom: Path,
    *,
    rtc: datetime | None = None,
    timeout: float = 120,
    stop_on: Sequence[str] = (DONE_MARKER,),
    restrict: bool = True,
) -> tuple[str, str]:
    """Boot SeaBIOS with ``rom`` as the e1000 NIC's option ROM and nothing else to boot.

    Returns (serial console, SeaBIOS debug log): the debug port (0x402) shows which boot
    devices SeaBIOS tried, so a test can tell that no other boot code ran.
    """
    if shutil.which(QEMU) is None:
        pytest.skip(f"needs {QEMU}: apt-get install qemu-system-x86")
    with tempfile.TemporaryDirectory(prefix="trustboot-rom-") as tmp:
        debug = Path(tmp) / "seabios.log"
        argv = [
            QEMU, "-accel", "tcg", "-nodefaults", "-display", "none", "-no-reboot",
            "-m", "256", "-serial", "stdio", "-monitor", "none",
            "-netdev", f"user,id=n0,restrict={'on' if restrict else 'off'}",
            "-device", f"e1000,netdev=n0,romfile={rom},bootindex=0",
            "-chardev", f"file,id=seabios,path={debug}",
            "-device", "isa-debugcon,iobase=0x402,chardev=seabios",
        ]
        argv += _rtc_args(rtc)
        console = _run_console(argv, stop_on, timeout)
        return console, _clean(debug.read_text(errors="replace")) if debug.exists() else ""


def chain_firmware(src: Path, pki_dir: Path, chain_url: str, out: Path, *,
                   target: str = "bin/ipxe.lkrn", signer: str = "boot-signer",
                   extra: Sequence[str] = ()) -> Path:
    """Firmware built the way users build it (`trustboot ipxe build --chain URL`), with a
    serial console and short retries, cached in the tests' iPXE cache; returns the target.
    ``extra``: more `ipxe build` options (e.g. --on-failure poweroff)."""
    from click.testing import CliRunner

    from trustboot.cli.main import cli

    result = CliRunner().invoke(cli, [
        "ipxe", "build", "--source", str(src), "--pki", str(pki_dir),
        "--target", target, "--serial-console",
        "--chain", chain_url, "--signer", signer, "--retries", "2", "--retry-delay", "1",
        "--cache-dir", str(cache_root() / "ipxe"), "-o", str(out), "--json", *extra,
    ])
    assert result.exit_code == 0, result.output
    return out / target


def newc_cpio(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A newc cpio archive (an initramfs): (name, mode, data, (rdev major, minor))."""
    out = bytearray()
    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", (0, 0))],
                                                  start=1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def real_kernel() -> Path:
    """Debian's kernel from /boot (an EFI-stub bzImage), or skip naming the package."""
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    if not kernels or not os.access(kernels[-1], os.R_OK):
        pytest.skip("needs a Linux kernel in /boot: apt-get install linux-image-amd64")
    return Path(kernels[-1])


def sha256_hex(data: bytes) -> str:
    """Convenience for tests comparing served files."""
    return hashlib.sha256(data).hexdigest()
