"""Enrolling the exported ``.auth`` files through the firmware itself, as users do.

OVMF (Secure Boot build, SMM) starts from Debian's EMPTY variable store: setup mode, no PK.
A Linux (Debian's kernel, a busybox initrd) mounts efivarfs and writes db.auth, KEK.auth and
PK.auth (PK last), each as the attributes NV|BS|RT|TIME_BASED_AUTHENTICATED_WRITE_ACCESS
followed by the file, then powers off. The next boot of the same variable store is the
reboot: Secure Boot is on, so the kernel only starts signed with our db key (``trustboot
secureboot sign``); it reads SecureBoot/SetupMode and the enrolled lists back, sees a KEK
update signed by another PK and a replayed KEK.auth refused by the firmware, then writes
noPK.auth, which returns the firmware to setup mode. EFI applications then show the
enforcement: signed by our db they start, unsigned they are refused (a tiny app made by
the tests; with TRUSTBOOT_IPXE_SRC also real ipxe.efi), and after noPK.auth the unsigned
one starts again.

Every line the initrd's /init prints starts with ``TB-`` on the serial console. Linux is
started with QEMU's -kernel: OVMF's loader for it falls back to a legacy path when an image
fails verification, so the Linux boots show what the firmware's variables say, and the
EFI applications booted from disk show what the firmware enforces.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import shutil
import stat
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.ipxe_qemu import (
    OVMF_CODE_SECBOOT,
    OVMF_VARS,
    QEMU,
    boot_efi,
    doubled,
    newc_cpio,
    real_kernel,
    seen,
)
from trustboot.cli.main import cli
from trustboot.secrets import constant
from trustboot.secureboot import authenticode, efi, keyset

from .conftest import EMBED_MARKER, PASS
from .mkpe import make_marker_app

pytestmark = [pytest.mark.slow]

GLOBAL = str(efi.EFI_GLOBAL_VARIABLE)
SECDB = str(efi.EFI_IMAGE_SECURITY_DATABASE)
VARNAME = {"PK": f"PK-{GLOBAL}", "KEK": f"KEK-{GLOBAL}", "db": f"db-{SECDB}"}
APP_MARKER = "TRUSTBOOT-SB-APP-RAN"
DONE = "TB-DONE"
REFUSED = ("Access Denied", "Security Violation")
EFIVARFS_KO = "kernel/fs/efivarfs/efivarfs.ko"

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
insmod /efivarfs.ko
mount -t efivarfs efivarfs /sys/firmware/efi/efivars || echo "TB-ERROR efivarfs"
V=/sys/firmware/efi/efivars
byte() {{
    if [ -e "$V/$1-{GLOBAL}" ]; then tail -c 1 "$V/$1-{GLOBAL}" | od -An -tu1 | tr -d ' \\n'
    else echo none; fi
}}
digest() {{
    if [ -e "$V/$1" ]; then tail -c +5 "$V/$1" | sha256sum | cut -c1-64
    else echo none; fi
}}
state() {{
    echo "TB-STATE $1 SetupMode=$(byte SetupMode) SecureBoot=$(byte SecureBoot)" \\
         "PK=$(digest {VARNAME['PK']}) KEK=$(digest {VARNAME['KEK']})" \\
         "db=$(digest {VARNAME['db']})"
}}
# efivarfs takes a variable in ONE write: attributes (u32) + the .auth file, prepared by the
# test in /payload. Existing variables are immutable files until chattr -i.
put() {{
    [ -e "$V/$2" ] && /bin/chattr -i "$V/$2"
    if dd if="/payload/$3" of="$V/$2" bs=1M conv=notrunc 2>/tmp/err; then
        echo "TB-WRITE $1 ok"
    else echo "TB-WRITE $1 refused: $(grep -v records /tmp/err | tail -n 1)"; fi
}}
. /steps
echo {DONE}
poweroff -f
"""


def _chattr_files() -> list[tuple[str, bytes]]:
    """e2fsprogs' chattr and the shared libraries it loads (busybox has no chattr)."""
    chattr = shutil.which("chattr")
    if chattr is None or shutil.which("ldd") is None:
        pytest.skip("needs chattr and ldd: apt-get install e2fsprogs libc-bin")
    out = subprocess.run(["ldd", chattr], capture_output=True, text=True, check=True).stdout
    libs = re.findall(r"(/\S+) \(0x", out)
    return [("bin/chattr", Path(chattr).read_bytes()),
            *((lib.lstrip("/"), Path(lib).resolve().read_bytes()) for lib in libs)]


def _initrd(kernel: Path, steps: str, payload: dict[str, bytes]) -> bytes:
    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        pytest.skip("needs a static busybox: apt-get install busybox-static")
    version = kernel.name.removeprefix("vmlinuz-")
    ko = Path("/lib/modules") / version / EFIVARFS_KO
    if not ko.is_file():
        pytest.skip(f"needs {ko} (the efivarfs module of the kernel in /boot)")
    files = [("bin/busybox", busybox.read_bytes()), ("efivarfs.ko", ko.read_bytes()),
             ("init", INIT.encode()), ("steps", steps.encode()), *_chattr_files(),
             *((f"payload/{name}", data) for name, data in payload.items())]
    dirs = sorted({str(p) for name, _ in files for p in Path(name).parents if str(p) != "."}
                  | {"dev"})
    return newc_cpio([
        *((d, stat.S_IFDIR | 0o755, b"", (0, 0)) for d in dirs),
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
        *((name, stat.S_IFREG | 0o755, data, (0, 0)) for name, data in files),
    ])


def _variable(auth: bytes) -> bytes:
    return struct.pack("<I", efi.AUTHENTICATED_ATTRIBUTES) + auth


def _strip_signature(data: bytes) -> bytes:
    """Debian's kernel carries Debian's signature; ours replaces it (trustboot signs
    unsigned images only)."""
    pe = authenticode.parse_pe(data, "kernel")
    offset, size = pe.cert_table
    if not size:
        return data
    assert pe.certdir_offset is not None
    out = bytearray(data[:offset])
    struct.pack_into("<II", out, pe.certdir_offset, 0, 0)
    return bytes(out)


@dataclass(frozen=True)
class Material:
    exported: Path
    other: Path  # the look-alike key set's export
    kernel: Path  # Debian's, as shipped
    signed_kernel: Path  # Debian's, signed with our db key
    work: Path


def _sign_cli(pki: Path, pw: Path, src: Path, out: Path) -> Path:
    r = CliRunner().invoke(cli, ["secureboot", "sign", "--pki", str(pki), "--out", str(out),
                                 "--passphrase-file", str(pw), str(src)])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def material(keyset_pki: Path, other_pki: Path, pw: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Material:
    if shutil.which(QEMU) is None:
        pytest.skip(f"needs {QEMU}: apt-get install qemu-system-x86")
    if not OVMF_CODE_SECBOOT.is_file() or not OVMF_VARS.is_file():
        pytest.skip("needs OVMF's Secure Boot build: apt-get install ovmf")
    kernel = real_kernel()
    work = tmp_path_factory.mktemp("sbenroll")
    for name, pki in (("ours", keyset_pki), ("other", other_pki)):
        r = CliRunner().invoke(cli, ["secureboot", "export", "--pki", str(pki), "--out",
                                     str(work / name), "--passphrase-file", str(pw)])
        assert r.exit_code == 0, r.output
    stripped = work / "vmlinuz.efi"
    stripped.write_bytes(_strip_signature(kernel.read_bytes()))
    signed = _sign_cli(keyset_pki, pw, stripped, work / "vmlinuz.signed.efi")
    return Material(work / "ours", work / "other", kernel, signed, work)


def _linux(m: Material, kernel: Path, vars_file: Path, steps: str,
           payload: dict[str, bytes]) -> str:
    initrd = m.work / "initrd.cpio"
    initrd.write_bytes(_initrd(m.kernel, steps, payload))
    return boot_efi(None, vars_file=vars_file, vars_in_place=True, secure_boot=True,
                    stop_on=(DONE, "Kernel panic"), timeout=400, extra_args=[
                        "-kernel", str(kernel), "-initrd", str(initrd),
                        "-append", "console=ttyS0 panic=-1"])


def _states(console: str) -> dict[str, dict[str, str]]:
    out = {}
    for label, rest in re.findall(r"^TB-STATE (\S+) (.*)$", console, re.M):
        out[label] = dict(kv.split("=", 1) for kv in rest.split())
    return out


def _writes(console: str) -> dict[str, str]:
    """label -> "ok" or "refused: <dd's error>"."""
    return dict(re.findall(r"^TB-WRITE (\S+) (.*)$", console, re.M))


def _esl_digest(m: Material, role: str) -> str:
    return hashlib.sha256((m.exported / f"{role}.esl").read_bytes()).hexdigest()


@dataclass(frozen=True)
class Enrolled:
    vars_file: Path  # keys enrolled through efivarfs; copy before booting it
    console: str


@pytest.fixture(scope="module")
def enrolled(material: Material) -> Enrolled:
    """First boot: empty variables (setup mode), the keys written from Linux, PK last."""
    m = material
    vars_file = m.work / "enrolled.fd"
    shutil.copyfile(OVMF_VARS, vars_file)
    payload = {f"{r}.var": _variable((m.exported / f"{r}.auth").read_bytes())
               for r in keyset.ROLES}
    steps = "state before\n" + "".join(
        f"put {r} {VARNAME[r]} {r}.var\n" for r in ("db", "KEK", "PK")) + "state after\n"
    console = _linux(m, m.kernel, vars_file, steps, payload)
    return Enrolled(vars_file, console)


def test_enrolled_through_efivarfs_in_setup_mode(enrolled: Enrolled,
                                                 material: Material) -> None:
    console = enrolled.console
    assert DONE in console, console
    assert "secureboot: Secure boot disabled" in console, console
    states = _states(console)
    assert states["before"] == {"SetupMode": "1", "SecureBoot": "0", "PK": "none",
                                "KEK": "none", "db": "none"}, console
    assert _writes(console) == {"db": "ok", "KEK": "ok", "PK": "ok"}, console
    # Enrolling the PK leaves setup mode at once; SecureBoot follows at the next boot.
    assert states["after"] == {"SetupMode": "0", "SecureBoot": "0",
                               **{r: _esl_digest(material, r) for r in keyset.ROLES}}, console


@dataclass(frozen=True)
class Rebooted:
    console: str
    vars_file: Path  # after noPK.auth: back in setup mode


@pytest.fixture(scope="module")
def rebooted(enrolled: Enrolled, material: Material) -> Rebooted:
    """The reboot: the db-signed kernel, Secure Boot on; wrong updates, then noPK.auth."""
    m = material
    assert DONE in enrolled.console, "the enrollment boot did not finish"
    vars_file = m.work / "rebooted.fd"
    shutil.copyfile(enrolled.vars_file, vars_file)
    payload = {
        "other-KEK.var": _variable((m.other / "KEK.auth").read_bytes()),
        "KEK.var": _variable((m.exported / "KEK.auth").read_bytes()),
        "noPK.var": _variable((m.exported / "noPK.auth").read_bytes()),
    }
    steps = (f"state rebooted\nput other-KEK {VARNAME['KEK']} other-KEK.var\n"
             f"put replayed-KEK {VARNAME['KEK']} KEK.var\nstate refused\n"
             f"put noPK {VARNAME['PK']} noPK.var\nstate nopk\n")
    console = _linux(m, m.signed_kernel, vars_file, steps, payload)
    return Rebooted(console, vars_file)


def test_after_reboot_secure_boot_is_on_and_wrong_updates_are_refused(
        rebooted: Rebooted, material: Material) -> None:
    console = rebooted.console
    assert DONE in console, console
    # The kernel's EFI stub and the kernel itself both see Secure Boot on.
    assert "UEFI Secure Boot is enabled" in console, console
    assert "secureboot: Secure boot enabled" in console, console
    assert "Loaded X.509 cert 'Test Boot Secure Boot db" in console, console
    states = _states(console)
    enrolled = {r: _esl_digest(material, r) for r in keyset.ROLES}
    assert states["rebooted"] == {"SetupMode": "0", "SecureBoot": "1", **enrolled}, console
    writes = _writes(console)
    # A KEK update signed by another PK, and our own KEK.auth again (its timestamp is not
    # newer than the stored one): the firmware refuses both and the KEK is unchanged.
    # EACCES on the write itself is efivarfs passing on EFI_SECURITY_VIOLATION (not the
    # file failing to open).
    for label in ("other-KEK", "replayed-KEK"):
        assert writes[label].startswith("refused: dd: error writing"), console
        assert writes[label].endswith("Permission denied"), console
    assert states["refused"] == states["rebooted"], console


def test_no_pk_auth_returns_to_setup_mode(rebooted: Rebooted, material: Material,
                                          tmp_path: Path) -> None:
    console = rebooted.console
    assert _writes(console).get("noPK") == "ok", console
    after = _states(console)["nopk"]
    assert after["SetupMode"] == "1" and after["PK"] == "none", console
    # KEK and db stay; without a PK nothing is enforced: the unsigned app starts.
    assert after["KEK"] == _esl_digest(material, "KEK"), console
    app = tmp_path / "app.efi"
    app.write_bytes(make_marker_app(APP_MARKER))
    booted = boot_efi(app, vars_file=rebooted.vars_file, secure_boot=True,
                      stop_on=(APP_MARKER, *REFUSED), timeout=240)
    assert APP_MARKER in booted, booted


@pytest.mark.parametrize("kind", ["app", "ipxe"])
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_enrolled_keys_enforced(kind: str, signed: bool, enrolled: Enrolled,
                                material: Material, keyset_pki: Path, tmp_path: Path,
                                request: pytest.FixtureRequest) -> None:
    """With the keys enrolled by Linux: db-signed binaries start, unsigned are refused."""
    assert DONE in enrolled.console, "the enrollment boot did not finish"
    if kind == "ipxe":
        data = request.getfixturevalue("unsigned")["ipxe.efi"]  # skips without a tree
        marker = EMBED_MARKER
    else:
        data = make_marker_app(APP_MARKER)
        marker = APP_MARKER
    efi_file = tmp_path / "boot.efi"
    efi_file.write_bytes(data)
    if signed:
        ks = keyset.load_keyset(keyset_pki)
        signer = keyset.open_signer(ks, "db", constant(PASS.encode()),
                                    now=dt.datetime.now(dt.UTC))
        efi_file.write_bytes(keyset.sign_efi(data, "boot.efi", signer))
    console = boot_efi(efi_file, vars_file=enrolled.vars_file, secure_boot=True,
                       stop_on=(marker, doubled(marker), *REFUSED),
                       timeout=240)
    if signed:
        assert seen(marker, console), console
    else:
        assert not seen(marker, console), console
        assert any(r in console for r in REFUSED), console
