"""A stand-in iPXE tree whose Makefile fakes a build, for tests that run without iPXE.

Its make writes each target as: a header, the SHA-256 fingerprints of the TRUST= files, the
DER of every CERT= certificate and the embedded script, so the cache, the manifest and the
"is the trust really in the binary" check can be exercised for real. Environment knobs:
FAKE_FAIL=1 makes the build fail after some output; FAKE_DROP_TRUST=1 leaves the
fingerprints out; FAKE_HOLD=FILE writes its process group id to FILE and sleeps (a build
to kill); every run appends the target to the file $FAKE_RUNS.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from trustboot.ipxe.sandbox import ExtraBinds

MAKEFILE = """\
FAKE_PY ?= python3
# FORCE: the real Makefile tracks TRUST/CERT/EMBED itself; the fake simply always rebuilds.
bin/% bin-x86_64-efi/% bin-arm64-efi/%: FORCE
\t@echo "  [DEPS] core/version.c"
\t@echo "  [BUILD] $@.o"
\t@mkdir -p $(dir $@)
\t@$(FAKE_PY) fake_build.py "$@" "$(TRUST)" "$(CERT)" "$(EMBED)" "$(SOURCE_DATE_EPOCH)"
FORCE:
"""

BUILDER = """\
import hashlib, os, sys
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
target, trust, cert, embed, epoch = sys.argv[1:6]
with open(os.environ["FAKE_RUNS"], "a") as log:
    log.write(target + "\\n")
if os.environ.get("FAKE_HOLD"):  # stand still mid-build, to be killed by the test
    import time
    # the file says who this process is: its pid and PID namespace (in the sandbox both
    # differ from the host's); the test finds make's process group from them
    with open(os.environ["FAKE_HOLD"] + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {os.readlink('/proc/self/ns/pid')}")
    os.replace(os.environ["FAKE_HOLD"] + ".tmp", os.environ["FAKE_HOLD"])
    time.sleep(120)
if os.environ.get("FAKE_FAIL"):
    for i in range(40):
        print(f"  [BUILD] bin/file{i}.o", flush=True)
    print("core/broken.c:12: error: expected ';' before '}' token", file=sys.stderr)
    sys.exit(2)
out = [b"FAKE-IPXE " + target.encode() + b" " + epoch.encode()]
if not os.environ.get("FAKE_DROP_TRUST"):
    for f in filter(None, trust.split(",")):
        c = x509.load_pem_x509_certificate(open(f, "rb").read())
        out.append(hashlib.sha256(c.public_bytes(Encoding.DER)).digest())
for f in filter(None, cert.split(",")):
    for c in x509.load_pem_x509_certificates(open(f, "rb").read()):
        out.append(c.public_bytes(Encoding.DER))
if embed:
    out.append(open(embed, "rb").read())
for h in sorted(os.listdir("config/local")):
    out.append(open(os.path.join("config/local", h), "rb").read())
data = b"\\n".join(out)
if target.endswith(".efi"):
    # EFI targets are PE/COFF (as real ones are), so Secure Boot signing can run on them:
    # the payload above becomes the one section of a minimal PE32+ image.
    import struct
    raw = data + b"\\0" * (-len(data) % 0x200)
    dos = b"MZ" + b"\\0" * 0x3A + struct.pack("<I", 0x40)
    coff = struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, 240, 0x0022)
    opt = struct.pack("<HBBIIIIIQIIHHHHHHIIIIHHQQQQII", 0x20B, 14, 0, len(raw), 0, 0,
                      0x1000, 0x1000, 0, 0x1000, 0x200, 0, 0, 0, 0, 0, 0, 0,
                      0x1000 + -(-len(raw) // 0x1000) * 0x1000, 0x200, 0, 10, 0,
                      0x100000, 0x1000, 0x100000, 0x1000, 0, 16) + b"\\0" * 128
    sect = struct.pack("<8sIIIIIIHHI", b".text", len(data), 0x1000, len(raw), 0x200,
                       0, 0, 0, 0, 0x60000020)
    head = dos + b"PE\\0\\0" + coff + opt + sect
    data = head + b"\\0" * (0x200 - len(head)) + raw
open(target, "wb").write(data)
"""


def make_fake_tree(top: Path) -> Path:
    """Create the fake tree at ``top`` (the checkout root, with src/ inside)."""
    src = top / "src"
    for rel in ("config", "include/ipxe", "config/local"):
        (src / rel).mkdir(parents=True, exist_ok=True)
    (src / "Makefile").write_text(MAKEFILE)
    (src / "Makefile.housekeeping").write_text("# fake\n")
    (src / "config" / "general.h").write_text("/* fake */\n")
    (src / "include" / "ipxe" / "image.h").write_text("/* fake */\n")
    (src / "fake_build.py").write_text(BUILDER)
    return top


# make runs with a minimal environment: these reach the fake build through
# trustboot.ipxe.build.MAKE_ENV_PASSTHROUGH (see fake_env_passthrough).
FAKE_VARS = ("FAKE_PY", "FAKE_RUNS", "FAKE_FAIL", "FAKE_DROP_TRUST", "FAKE_HOLD")


def sandbox_paths(writable: Sequence[str | Path]) -> ExtraBinds:
    """What the fake make must see in the sandbox besides the toolchain: this virtualenv
    and the Python it was made from (the fake build's interpreter and cryptography)
    read-only, and ``writable`` (where FAKE_RUNS and FAKE_HOLD point) read-write."""
    ro = {p for p in (sys.prefix, sys.base_prefix) if not p.startswith("/usr")}
    return ExtraBinds(tuple(sorted(ro)), tuple(sorted({str(Path(p)) for p in writable})))


def fake_sandbox(monkeypatch: Any, writable: Sequence[str | Path]) -> None:
    """Every build of this test (library or CLI) passes the fake tree's binds: the CLI
    has no way to, by design, so its one call of ``build`` gets them as a keyword."""
    from trustboot.ipxe import build

    monkeypatch.setattr(build, "build", functools.partial(
        build.build, extra_binds=sandbox_paths(writable)))


def fake_env() -> dict[str, str]:
    return {"FAKE_PY": sys.executable}


def fake_env_passthrough(monkeypatch: Any) -> None:
    """Let make see the FAKE_* knobs (and nothing else of the test's environment)."""
    from trustboot.ipxe import build

    monkeypatch.setattr(build, "MAKE_ENV_PASSTHROUGH", FAKE_VARS)


# `trustboot` in a child process, with the fake toolchain and the FAKE_* knobs reaching make:
# a real process that a test can signal.
_DRIVER = """\
import functools, os, signal, sys
# as a terminal's shell leaves them, whatever the test runner's were (under nohup a hangup
# is ignored, and trustboot rightly keeps it ignored: FAKE_NOHUP=1 asks for that)
signal.signal(signal.SIGHUP, signal.SIG_IGN if os.environ.get("FAKE_NOHUP") else signal.SIG_DFL)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
signal.signal(signal.SIGINT, signal.default_int_handler)
from trustboot.ipxe import build as B
from tests.ipxe.fake_tree import sandbox_paths
B.check_toolchain = lambda targets: {"gcc": "gcc (fake)", "make": "make (fake)"}
B.MAKE_ENV_PASSTHROUGH = %r
B.build = functools.partial(B.build, extra_binds=sandbox_paths(
    [os.path.dirname(os.environ[v]) for v in ("FAKE_RUNS", "FAKE_HOLD") if os.environ.get(v)]))
from trustboot.cli.main import main
sys.argv = ["trustboot", *sys.argv[1:]]
main()
"""


def start_trustboot(args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Run ``trustboot ARGS`` in its own session (so a test can kill everything it left)."""
    child_env = {**os.environ, **env,
                 "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen([sys.executable, "-c", _DRIVER % (FAKE_VARS,), *args],
                            env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def host_pid(pid: int, pid_ns: str) -> int | None:
    """The host's pid of the process that is ``pid`` in PID namespace ``pid_ns``."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{name}/ns/pid") != pid_ns:
                continue
            status = Path(f"/proc/{name}/status").read_text()
            nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
            if int(nspid.split()[-1]) == pid:
                return int(name)
    return None


def namespace_alive(pid_ns: str) -> bool:
    """Whether any process is left in PID namespace ``pid_ns``."""
    for name in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if name.isdigit() and os.readlink(f"/proc/{name}/ns/pid") == pid_ns:
                return True
    return False


def read_hold(hold: Path) -> tuple[int, str]:
    """The fake make's pid and PID namespace, as it wrote them to FAKE_HOLD."""
    pid, pid_ns = hold.read_text().split()
    return int(pid), pid_ns


# Generous: seconds on an idle machine, but a loaded one (a parallel suite, QEMU) has hit
# 60 s, failing a build that was merely slow. Only a hang waits this long.
HOLD_TIMEOUT = 240.0


def wait_for_hold(hold: Path, proc: subprocess.Popen[bytes],
                  timeout: float = HOLD_TIMEOUT) -> int:
    """Wait until the fake make holds (FAKE_HOLD); returns make's process group id (on
    the host: make runs in a sandbox with PID namespace of its own)."""
    deadline = time.monotonic() + timeout
    while not hold.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the build ended early: {err.decode(errors='replace')}")
        if time.monotonic() > deadline:
            pytest.fail("the build never reached make")
        time.sleep(0.05)
    found = host_pid(*read_hold(hold))
    assert found is not None, "the holding build is not visible from the host"
    return os.getpgid(found)


def group_alive(pgid: int, timeout: float = 5) -> bool:
    """Whether process group ``pgid`` still has a member after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)


def signal_mid_build(proc: subprocess.Popen[bytes], hold: Path, signum: int,
                     while_held: Callable[[int], None]) -> tuple[bytes, bool]:
    """Wait until the fake make holds, call ``while_held(make's process group)``, send
    ``signum`` to trustboot only (as a service manager would) and wait for it to end.
    Returns its stderr and whether make's group outlived it (then killed, as is every
    leftover)."""
    make_group = proc.pid
    try:
        make_group = wait_for_hold(hold, proc)
        while_held(make_group)
        os.kill(proc.pid, signum)
        _, err = proc.communicate(timeout=HOLD_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        alive = make_group != proc.pid and group_alive(make_group)
        if make_group != proc.pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(make_group, signal.SIGKILL)
    return err, alive
