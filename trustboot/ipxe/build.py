"""Building iPXE: targets, toolchain checks, the make plan, the cache and the manifest.

Flow: :func:`prepare` turns inputs into a :class:`BuildRequest` (validated, pure), then
:func:`build` computes the cache key, returns cached outputs when they exist, and otherwise
copies the tree, writes config/local and the inputs, runs make, checks the outputs and
records a manifest. Nothing here prints: progress goes through a callback.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import hmac
import json
import math
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from trustboot import fsutil, jsonin
from trustboot.errors import ConfigError, OperationalError, VerificationError
from trustboot.interrupt import cleanup_on_signals
from trustboot.ipxe import sandbox
from trustboot.ipxe.config import BuildOptions, Certificate, ClientIdentity, render_headers
from trustboot.ipxe.script import EMBEDDED_SCRIPT_NAME
from trustboot.ipxe.source import IpxeSource, copy_tree
from trustboot.ipxe.syntax import runs_as_script
from trustboot.subproc import TIME_LIMIT_ENV, TimedOut, kill_group, minimal_env, time_limit
from trustboot.text import clean, unsafe_string_at

# Bump when the way we build changes, so old cache entries are not reused.
BUILD_FORMAT = 1

DEFAULT_TARGETS = (
    "bin-x86_64-efi/ipxe.efi",
    "bin-x86_64-efi/snponly.efi",
    "bin/undionly.kpxe",
)


@dataclass(frozen=True)
class TargetInfo:
    platform: str  # "bios" or "efi"
    cross: str  # CROSS= prefix ("" for the host compiler)
    tools: tuple[tuple[str, str], ...] = ()  # (program, Debian package) beyond the basics
    linked: str | None = None  # the uncompressed linked image, if not "<target>.tmp"


_FIXED_TARGETS: dict[str, TargetInfo] = {
    "bin-x86_64-efi/ipxe.efi": TargetInfo("efi", ""),
    "bin-x86_64-efi/snponly.efi": TargetInfo("efi", ""),
    "bin/undionly.kpxe": TargetInfo("bios", ""),
    "bin/ipxe.lkrn": TargetInfo("bios", ""),
    "bin/ipxe.pxe": TargetInfo("bios", ""),
    "bin/ipxe.iso": TargetInfo(
        "bios", "",
        (("mformat", "mtools"), ("xorrisofs", "xorriso"), ("isolinux.bin", "isolinux")),
        linked="ipxe.lkrn.tmp",  # the ISO wraps bin/ipxe.lkrn
    ),
    "bin/ipxe.usb": TargetInfo("bios", "", (("mformat", "mtools"),), linked="ipxe.hd.tmp"),
    "bin-arm64-efi/ipxe.efi": TargetInfo(
        "efi", "aarch64-linux-gnu-", (("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),)
    ),
    "bin-arm64-efi/snponly.efi": TargetInfo(
        "efi", "aarch64-linux-gnu-", (("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),)
    ),
}

# NIC option ROMs: bin/VVVVDDDD.rom (PCI vendor and device ID), e.g. bin/8086100e.rom for
# QEMU's e1000. Flashed into (or given to a VM as) the NIC's ROM, iPXE replaces the stock
# PXE code, so the machine has no other network boot code to fall back to.
_ROM = re.compile(r"bin/[0-9a-f]{8}\.rom")


class _Targets(Mapping[str, TargetInfo]):
    """The fixed targets, plus any PCI option ROM name."""

    def __getitem__(self, name: str) -> TargetInfo:
        if name in _FIXED_TARGETS:
            return _FIXED_TARGETS[name]
        if isinstance(name, str) and _ROM.fullmatch(name):
            return TargetInfo("bios", "")
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return name in _FIXED_TARGETS or (isinstance(name, str) and bool(_ROM.fullmatch(name)))

    def __iter__(self) -> Iterator[str]:
        return iter(_FIXED_TARGETS)

    def __len__(self) -> int:
        return len(_FIXED_TARGETS)


KNOWN_TARGETS: Mapping[str, TargetInfo] = _Targets()

BASE_TOOLS = (
    ("make", "build-essential"),
    ("gcc", "build-essential"),
    ("ld", "build-essential"),  # binutils
    ("perl", "perl"),
    ("openssl", "openssl"),  # iPXE's Makefile fingerprints TRUST= with it
)
TOOLCHAIN_PACKAGES = "build-essential liblzma-dev mtools perl openssl"

ProgressCallback = Callable[[str], None]


def check_targets(targets: Sequence[str]) -> tuple[str, ...]:
    if not targets:
        raise ConfigError("no build targets given")
    out: list[str] = []
    for target in targets:
        if target not in KNOWN_TARGETS:
            raise ConfigError(
                f"unknown target {target!r}",
                hint="choose from " + ", ".join(sorted(KNOWN_TARGETS))
                + ", or a NIC option ROM bin/VVVVDDDD.rom (PCI vendor and device ID)",
            )
        if target not in out:
            out.append(target)
    return tuple(out)


# --- toolchain ------------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, env=minimal_env())
    text = (proc.stdout or proc.stderr).strip().splitlines()
    return text[0].strip() if text else ""


def check_toolchain(
    targets: Sequence[str], *, which: Callable[[str], str | None] = shutil.which
) -> dict[str, str]:
    """Versions of every tool the targets need; ConfigError naming Debian packages if absent."""
    needed = list(BASE_TOOLS)
    for target in targets:
        needed += [t for t in KNOWN_TARGETS[target].tools if t not in needed]
    missing = [(prog, pkg) for prog, pkg in needed if not _present(prog, which)]
    if not missing and not _has_lzma_header():
        missing.append(("lzma.h", "liblzma-dev"))
    if missing:
        names = ", ".join(prog for prog, _ in missing)
        packages = " ".join(sorted({pkg for _, pkg in missing}))
        raise ConfigError(
            f"the iPXE toolchain is incomplete: missing {names}",
            hint=f"on Debian: apt-get install {packages} "
            f"(a full toolchain: {TOOLCHAIN_PACKAGES})",
        )
    # perl and openssl do not take --version the way the others do.
    special = {"perl": ["perl", "-e", "print $^V"], "openssl": ["openssl", "version"]}
    return {
        prog: _first_line(special.get(prog, [prog, "--version"]))
        for prog, _ in needed if "." not in prog
    }


# Where iPXE's util/genfsimg looks for isolinux.bin (Debian: /usr/lib/ISOLINUX).
_SYSLINUX_DIRS = ("/usr/lib/ISOLINUX", "/usr/lib/syslinux", "/usr/lib/syslinux/bios",
                  "/usr/share/syslinux", "/usr/local/share/syslinux")


def _present(name: str, which: Callable[[str], str | None]) -> bool:
    if name.endswith(".bin"):
        return any(Path(d, name).is_file() for d in _SYSLINUX_DIRS)
    return which(name) is not None


def _has_lzma_header() -> bool:
    proc = subprocess.run(
        ["gcc", "-E", "-x", "c", "-"], input="#include <lzma.h>\n",
        capture_output=True, text=True, check=False, env=minimal_env(),
    )
    return proc.returncode == 0


# --- request, plan, key ---------------------------------------------------------------------


@dataclass(frozen=True)
class BuildRequest:
    """Everything that determines the output bytes."""

    source: IpxeSource
    targets: tuple[str, ...]
    trust: tuple[Certificate, ...]
    certs: tuple[Certificate, ...] = ()
    client: ClientIdentity | None = None
    script: str | None = None
    options: BuildOptions = field(default_factory=BuildOptions)
    source_date_epoch: int = 0

    def __post_init__(self) -> None:
        check_targets(self.targets)
        if not self.trust:
            raise ConfigError(
                "no trust anchor given",
                hint="pass --pki DIR (its ca.crt) or --trust ROOT.crt: without one iPXE "
                "would trust its own default root",
            )
        if self.script is not None and not runs_as_script(self.script):
            raise ConfigError(
                "the embedded script does not start with '#!ipxe' and a new line, so iPXE "
                "would not run it as a script",
                hint="an iPXE script's first line must be '#!ipxe'",
            )

    @property
    def headers(self) -> dict[str, str]:
        return render_headers(self.options)

    @property
    def chain_certs(self) -> tuple[Certificate, ...]:
        """CERT=: the roots and the given chain certificates, each once, in order."""
        seen: set[str] = set()
        out: list[Certificate] = []
        for cert in (*self.trust, *self.certs):
            if cert.fingerprint not in seen:
                seen.add(cert.fingerprint)
                out.append(cert)
        return tuple(out)


INPUT_DIR = "trustboot-inputs"  # beside src/ in the private copy
# The embedded script's file: iPXE registers the embedded image under this name (the
# file name of EMBED=, Makefile.housekeeping's notdir), so a release image may not take it.


@dataclass(frozen=True)
class MakePlan:
    """One make invocation per CROSS prefix; paths are relative to the copy's src/."""

    invocations: tuple[tuple[str, ...], ...]
    input_files: Mapping[str, bytes]  # relative to the copy's top; the private key excluded

    def to_json(self) -> list[list[str]]:
        return [list(argv) for argv in self.invocations]


def make_plan(request: BuildRequest, *, jobs: int, src_dir: str = "src") -> MakePlan:
    """The make command lines and the input files they read. Pure."""
    files: dict[str, bytes] = {}
    trust_names = []
    # Names carry the fingerprint: iPXE's rootcert.o depends on the TRUST= list, not on
    # the files' contents, so reusing a name for a new root would keep the old one built in.
    for i, cert in enumerate(request.trust, start=1):
        name = f"{INPUT_DIR}/trust-{i}-{cert.fingerprint[:16]}.crt"
        files[name] = cert.pem
        trust_names.append(f"../{name}")
    cert_names = []
    for i, cert in enumerate(request.chain_certs, start=1):
        name = f"{INPUT_DIR}/cert-{i}-{cert.fingerprint[:16]}.crt"
        files[name] = cert.pem
        cert_names.append(f"../{name}")
    if request.client is not None:
        name = f"{INPUT_DIR}/client-{request.client.cert.fingerprint[:16]}.crt"
        files[name] = request.client.cert.pem
        cert_names.append(f"../{name}")
    if request.script is not None:
        files[f"{INPUT_DIR}/{EMBEDDED_SCRIPT_NAME}"] = request.script.encode()
    common = [
        f"TRUST={','.join(trust_names)}",
        f"CERT={','.join(cert_names)}",
    ]
    if request.client is not None:
        common.append(f"PRIVKEY=../{INPUT_DIR}/client.key")
    if request.script is not None:
        common.append(f"EMBED=../{INPUT_DIR}/{EMBEDDED_SCRIPT_NAME}")
    common += [
        f"SOURCE_DATE_EPOCH={request.source_date_epoch}",
        # Build paths must not leak into the binaries, or two copies would differ.
        "EXTRA_CFLAGS=-ffile-prefix-map=$(CURDIR)=.",
    ]
    if request.source.git_commit:
        # The copy has no .git: hand iPXE the version it would have read from there.
        common.append(f"GITVERSION={request.source.git_commit}")
    by_cross: dict[str, list[str]] = {}
    for target in request.targets:
        by_cross.setdefault(KNOWN_TARGETS[target].cross, []).append(target)
    invocations = []
    for cross, targets in by_cross.items():
        # "--": nothing after it is an option (targets are known names, the rest VAR=value).
        argv = ["make", "-C", src_dir, f"-j{jobs}", "--", *targets, *common]
        if cross:
            argv.append(f"CROSS={cross}")
        invocations.append(tuple(argv))
    return MakePlan(invocations=tuple(invocations), input_files=files)


def cache_key(request: BuildRequest, toolchain: Mapping[str, str], *,
              make_env: Mapping[str, str] | None = None, env_salt: bytes | None = None) -> str:
    """SHA-256 over every input that can change the output bytes. ``make_env`` is what
    make sees beyond its minimal environment (:func:`passed_env`; None: nothing).

    The key is written into the build's manifest, which a release publishes when it ships
    that build as prebuilt firmware: ``make_env``'s values enter it only as HMAC-SHA256
    under ``env_salt`` (:func:`make_env_salt`, the cache's own secret), so a value handed
    to make (a token, say) cannot be guessed from the key offline."""
    plan = make_plan(request, jobs=1)
    doc = {
        "format": BUILD_FORMAT,
        "source": request.source.tree_sha256,
        "git": request.source.git_commit,
        "targets": list(request.targets),
        "headers": request.headers,
        "plan": plan.to_json(),
        "inputs": {
            name: hashlib.sha256(data).hexdigest() for name, data in plan.input_files.items()
        },
        "client_key": request.client.public_key_sha256 if request.client else None,
        "toolchain": dict(sorted(toolchain.items())),
        # names and values: iPXE's Makefile reads DEBUG (and a compiler CCACHE_*) from
        # the environment, so a debug build must never be served for a later normal one
        "make_env": _keyed_env(make_env or {}, env_salt),
    }
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


# --- cache layout ---------------------------------------------------------------------------


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("TRUSTBOOT_CACHE_DIR"):
        return Path(env["TRUSTBOOT_CACHE_DIR"]) / "ipxe"
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".cache")
    return Path(base) / "trustboot" / "ipxe"


def prepare_cache_dir(cache: Path) -> Path:
    """Create the cache as 0700 (outputs may embed a client key) or check an existing one,
    and refuse one whose parents another user can change: they could move it away
    during a build and put their own in its place, whose out/KEY/ firmware would then be
    taken as a cache hit (``sudo`` keeping HOME puts root's cache in a user's ~/.cache)."""
    return fsutil.prepare_private_dir(cache, "iPXE build cache")


@dataclass(frozen=True)
class BuildResult:
    manifest: dict[str, object]
    outputs: dict[str, Path]  # target -> file in the output directory
    cached: bool
    log: Path | None


def _bios_only(targets: Sequence[str]) -> bool:
    return all(KNOWN_TARGETS[t].platform == "bios" for t in targets)


def _keyed_env(make_env: Mapping[str, str], salt: bytes | None) -> dict[str, str]:
    """``make_env`` by name, each value as its HMAC-SHA256 under ``salt`` (see cache_key)."""
    if make_env and salt is None:
        raise ValueError("make_env values enter a key only with the cache's salt")
    return {name: hmac.new(salt or b"", value.encode(), hashlib.sha256).hexdigest()
            for name, value in sorted(make_env.items())}


# The cache's secret for make_env values in its keys (see cache_key).
ENV_SALT_NAME = "make-env.salt"
_ENV_SALT_SIZE = 32


def make_env_salt(cache: Path) -> bytes:
    """The cache's salt for make_env values, made at its first use (32 random bytes,
    0600 in the 0700 cache; prepare_cache_dir first). A build that makes it at the same
    moment as another takes the one that was linked into place first."""
    path = cache / ENV_SALT_NAME
    if not (path.exists() or path.is_symlink()):
        # a temp of its own (0600, random name: builds in threads of one process too),
        # linked into place: link() never replaces a salt made meanwhile, read below
        temp = fsutil.write_temp(path, os.urandom(_ENV_SALT_SIZE), mode=fsutil.PRIVATE_FILE_MODE)
        try:
            with contextlib.suppress(FileExistsError):
                os.link(temp, path)
        finally:
            os.unlink(temp)
    data = fsutil.read_private_file(path, "iPXE build cache salt", limit=_ENV_SALT_SIZE + 1)
    if len(data) != _ENV_SALT_SIZE:
        raise ConfigError(f"{path} is not the salt trustboot wrote there",
                          hint="remove it: the next build makes a new one (builds with "
                          "--make-env are then built again, once)")
    return data


def _warm_key(request: BuildRequest, toolchain: Mapping[str, str],
              make_env: Mapping[str, str], env_salt: bytes | None) -> str:
    """Identifies a reusable work tree: everything except TRUST/CERT/EMBED contents (the
    objects of a build with other environment variables are not reused either: make
    does not track them)."""
    doc = {
        "format": BUILD_FORMAT,
        "source": request.source.tree_sha256,
        "headers": request.headers,
        "toolchain": dict(sorted(toolchain.items())),
        "make_env": _keyed_env(make_env, env_salt),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


_PROGRESS = re.compile(r"^\s*\[([A-Z]+)\]\s+(\S+)")

# make's output is the tree's: a real iPXE build logs well under a MiB (V=1: a few), so
# beyond this the log is cut (make may go on); a progress line is never this long.
MAX_LOG_BYTES = 32 << 20
_MAX_LINE = 4096
_LOG_CUT = b"\n[trustboot: make wrote more than %d bytes; the rest is not logged]\n"


def _follow(out: int, log: BinaryIO, on_progress: ProgressCallback | None,
            deadline: float = math.inf) -> None:
    """Copy make's output (the descriptor ``out``) to ``log`` until make closes it, up to
    MAX_LOG_BYTES in all (the log may hold earlier runs'), and report its progress lines,
    escaped. Read in blocks, never a line at a time: a line without end would grow in
    our memory (the process that may hold an unlocked signer) as long as make writes.
    TimedOut when the (time.monotonic) ``deadline`` passes first, silent or not."""
    written = log.tell()
    pending = b""
    skipping = False  # in a line already too long to be a progress line
    poller = select.poll()
    poller.register(out, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(None if left == math.inf else
                                        max(1, math.ceil(left * 1000))):
            if deadline - time.monotonic() <= 0:
                raise TimedOut
            continue
        chunk = os.read(out, 1 << 16)
        if not chunk:
            break
        if written < MAX_LOG_BYTES:
            kept = chunk[:MAX_LOG_BYTES - written]
            log.write(kept)
            written += len(kept)
            if written == MAX_LOG_BYTES:
                log.write(_LOG_CUT % MAX_LOG_BYTES)
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if not skipping:
                _progress(line, on_progress)
            skipping = False
        if len(pending) > _MAX_LINE:
            pending, skipping = b"", True
    if pending and not skipping:
        _progress(pending, on_progress)


def _progress(line: bytes, on_progress: ProgressCallback | None) -> None:
    match = _PROGRESS.match(line.decode(errors="replace"))
    if match and on_progress is not None:
        # the tree's text, bound for a terminal: no escape sequence gets through
        on_progress(clean(f"{match.group(1)} {match.group(2)}", limit=200, ascii_only=True))


def _log_tail(log: Path, lines: int = 25) -> list[str]:
    """The last ``lines`` lines of the build log, read from its last 64 KiB only."""
    with open(log, "rb") as fh:
        fh.seek(max(0, os.fstat(fh.fileno()).st_size - (64 << 10)))
        text = fh.read().decode(errors="replace")
    return [line[:500] for line in text.splitlines()[-lines:]]


# Names of variables from our own environment that make also sees (e.g. CCACHE_DIR);
# empty by default: make gets PATH, HOME, TMPDIR and the C locale, never a passphrase
# variable, a cloud credential or MAKEFLAGS.
MAKE_ENV_PASSTHROUGH: tuple[str, ...] = ()


def passed_env(passthrough: Sequence[str] = ()) -> dict[str, str]:
    """What make sees of our environment beyond the minimal one: the variables named by
    MAKE_ENV_PASSTHROUGH and ``passthrough`` (--make-env) that are set, with their values."""
    names = (*MAKE_ENV_PASSTHROUGH, *passthrough)
    return {n: os.environ[n] for n in names if n in os.environ}


def _run_make(
    argv: Sequence[str], cwd: Path, log: Path, on_progress: ProgressCallback | None,
    env: Mapping[str, str], bwrap: str | None, extra_binds: sandbox.ExtraBinds,
    limit: float,
) -> None:
    """Run one make invocation in ``cwd`` (the work tree), in the sandbox unless ``bwrap``
    is None (--unsafe-unsandboxed-build), for at most ``limit`` seconds."""
    # The read-only binds of _PROTECTED_DIRS hold only over real directories: an earlier
    # make of this build could have moved src/config away (a mount point's parent can be
    # renamed) and left a link in its place.
    problem = _layout_problem(cwd)
    if problem is not None:
        raise _layout_changed(problem, log)
    # The -ffile-prefix-map needs the absolute src dir; make expands $(CURDIR) itself.
    with open(log, "ab") as fh:
        fh.write(("$ " + " ".join(argv) + "\n").encode())
        fh.flush()
        command = list(argv)
        child_env = dict(env)
        if bwrap is not None:
            command = sandbox.sandbox_argv(argv, cwd.resolve(), bwrap=bwrap, extra=extra_binds,
                                           read_only_within=_PROTECTED_DIRS)
            child_env = sandbox.sandbox_env(child_env)
        # Its own process group, so an interruption can stop make and every compiler it
        # started (they write into a work tree that is about to be removed).
        # umask 077: what make and the compilers write into the private work tree is
        # private too, whatever trustboot's own umask (000 would make it all writable).
        proc = subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=child_env, process_group=0, umask=0o077,
        )
        deadline = time.monotonic() + limit
        try:
            assert proc.stdout is not None
            _follow(proc.stdout.fileno(), fh, on_progress, deadline)
            rc = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except (TimedOut, subprocess.TimeoutExpired):
            # stopped below, as an interruption is: make deletes its half-written targets
            rc = None
        finally:
            if proc.poll() is None:  # interrupted: make must not outlive its work tree
                if bwrap is not None:
                    sandbox.stop(proc)
                else:
                    _stop_group(proc)
    targets = ", ".join(a for a in argv if "/" in a and "=" not in a)
    if rc is None:
        raise OperationalError(
            f"make did not finish within {limit:g} s building {targets}; it was stopped",
            hint=f"the log is {log}; a slower build host: raise {TIME_LIMIT_ENV} (seconds)")
    if rc != 0:
        tail = _log_tail(log)
        raise OperationalError(
            f"make failed (exit {rc}) building {targets}:\n"
            + "\n".join("  | " + line for line in tail),
            hint=f"the full log is {log}",
        )


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """TERM make's process group (make deletes half-written targets), KILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    # Compilers make did not wait for, or make itself if it ignored the TERM. The group id
    # stays reserved while any member lives, so this cannot reach another process.
    kill_group(proc)


def _find_fingerprints(data: bytes, fingerprints: Sequence[str]) -> dict[str, bool]:
    return {fp: bytes.fromhex(fp) in data for fp in fingerprints}


_MAX_PAYLOAD = 8 << 20  # an unpacked iPXE image is a few hundred KiB
_MAX_UNPACKED_TOTAL = 64 << 20  # what one hostile binary may make us decode, in all
_MAX_ATTEMPTS = 1 << 16


def _packed_payloads(data: bytes) -> Iterator[bytes]:
    """The LZMA payloads of a BIOS image (or of the image an ISO or USB image wraps): a
    raw stream starts with a zero byte (the range coder's), then its 4-byte initial code,
    which is not all zero in practice; each candidate is decoded while it makes sense,
    and the whole search is bounded (attempts, bytes decoded)."""
    import lzma

    # how iPXE's util/zbin packs it: raw LZMA1, lc=2 lp=0 pb=0, preset 9e (64 MiB dictionary)
    filters = [{"id": lzma.FILTER_LZMA1, "lc": 2, "lp": 0, "pb": 0, "dict_size": 1 << 26}]
    view = memoryview(data)
    budget, attempts = _MAX_UNPACKED_TOTAL, _MAX_ATTEMPTS
    offset = data.find(b"\0")
    while offset >= 0 and budget > 0 and attempts > 0:
        if data[offset + 1:offset + 5] != b"\0\0\0\0":
            attempts -= 1
            try:
                out = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters).decompress(
                    view[offset:], max_length=min(_MAX_PAYLOAD, budget))
            except lzma.LZMAError:
                out = b""
            budget -= len(out)
            if len(out) > 1024:
                yield out
        offset = data.find(b"\0", offset + 1)


def find_trust(data: bytes, fingerprints: Sequence[str],
               target: str) -> tuple[str, dict[str, bool]]:
    """Where the TRUST= fingerprints are in a built ``target`` with content ``data`` (no
    linked image at hand): the output itself (EFI), else its packed payload (BIOS images
    are LZMA-compressed by zbin). ``(where, {fingerprint: found})``."""
    found = _find_fingerprints(data, fingerprints)
    if all(found.values()) or KNOWN_TARGETS[target].platform != "bios":
        return "output", found
    where = "output"
    for payload in _packed_payloads(data):
        unpacked = _find_fingerprints(payload, fingerprints)
        if any(ok and not found[fp] for fp, ok in unpacked.items()):
            where = "packed payload"
            found = {fp: found[fp] or unpacked[fp] for fp in found}
        if all(found.values()):
            break
    return where, found


def firmware_key(target: str) -> str:
    """The release key of a firmware target: its file name, as DHCP offers it
    (``undionly.kpxe``, ``ipxe.efi``); arm64 binaries get an ``arm64-`` prefix."""
    folder, _, name = target.rpartition("/")
    return f"arm64-{name}" if folder.startswith("bin-arm64") else name


# What `ipxe build` writes into manifest.json (see build()), and into each of its outputs:
# a prebuilt record carried into release.json keeps these keys and nothing else.
RECORD_KEYS = ("trustboot_ipxe_build", "cache_key", "source", "targets", "config_headers",
               "options", "trust", "certs", "client_certificate", "embedded_script", "make",
               "toolchain", "outputs")
RECORD_OUTPUT_KEYS = ("target", "sha256", "size", "trust_check")
# ipxe build's records nest 5 levels deep; carried inside release.json (under "ipxe"), a
# record must leave room under jsonin's bound for the manifest around it.
MAX_RECORD_DEPTH = 16


def _record_refusal(source: str, why: str) -> VerificationError:
    return VerificationError(
        f"the iPXE build record {source} {why}: it is not signed into the release",
        hint=f"put there the manifest.json `trustboot ipxe build -o DIR` wrote for these "
             f"very binaries, or remove {source} to release the firmware without a "
             "build record", rule="prebuilt-build-record", subject=source)


def load_prebuilt_record(data: bytes, outputs: Mapping[str, bytes], source: str
                         ) -> dict[str, object]:
    """:func:`check_prebuilt_record` on the bytes of a build record read from ``source``:
    hostile JSON (nested without end, NaN) is refused here, naming the file, not when
    release.json is read back after signing (or as an internal error)."""
    try:
        record = jsonin.loads(data, max_depth=MAX_RECORD_DEPTH)
    except ValueError as exc:  # UnicodeDecodeError included
        raise _record_refusal(source, f"is not valid JSON ({exc})") from None
    return check_prebuilt_record(record, outputs, source)


def check_prebuilt_record(record: object, outputs: Mapping[str, bytes], source: str
                          ) -> dict[str, object]:
    """A build record (the manifest.json of ``ipxe build -o DIR``) published with prebuilt
    firmware, checked against the very binaries published: it lists exactly these
    targets, each with its sha256, and every TRUST= fingerprint it claims is found in
    each of them as :func:`_trust_check` finds it after a build. Returns the record with
    each output's ``trust_check`` this check's own; VerificationError otherwise (signed
    into release.json, the record is root-promotion evidence). Only the keys ``ipxe build``
    writes are kept: nothing else of the file is signed."""
    def refuse(why: str) -> VerificationError:
        return _record_refusal(source, why)

    if not isinstance(record, dict) or "trustboot_ipxe_build" not in record \
            or not isinstance(record.get("trust"), list) \
            or not isinstance(record.get("outputs"), list):
        raise refuse("is not a manifest of `trustboot ipxe build`")
    # ca/evidence.py refuses such a record as root-promotion evidence: never sign one
    where = unsafe_string_at({"trust": record["trust"], "outputs": record["outputs"]})
    if where is not None:
        raise refuse(f"holds control characters at {where}: `trustboot ipxe build` never "
                     "writes them")
    fingerprints = []
    for t in record["trust"]:
        fp = t.get("sha256") if isinstance(t, dict) else None
        if not isinstance(fp, str) or not re.fullmatch(r"[0-9a-f]{64}", fp):
            raise refuse("lists a trust anchor without a sha256 fingerprint")
        fingerprints.append(fp)
    listed: dict[str, dict[str, object]] = {}
    for out in record["outputs"]:
        target = out.get("target") if isinstance(out, dict) else None
        if not isinstance(out, dict) or not isinstance(target, str) or target in listed:
            raise refuse("lists an output without a target, or one twice")
        listed[target] = out
    if sorted(listed) != sorted(outputs):
        raise refuse(f"describes {', '.join(sorted(listed)) or 'no output'}, not the "
                     f"firmware published ({', '.join(sorted(outputs))})")
    checked = []
    for target, out in listed.items():
        data = outputs[target]
        if out.get("sha256") != hashlib.sha256(data).hexdigest():
            raise refuse(f"gives {target} another sha256 than the file published")
        where, found = find_trust(data, fingerprints, target)
        missing = [fp for fp, ok in found.items() if not ok]
        if missing:
            raise refuse(f"claims {target} trusts {', '.join(missing)}, but that fingerprint "
                         f"is not in the binary")
        checked.append({**{k: out[k] for k in RECORD_OUTPUT_KEYS if k in out},
                        "size": len(data),
                        "trust_check": {"searched": where, "trust": found}})
    return {**{k: record[k] for k in RECORD_KEYS if k in record}, "outputs": checked}


def _trust_check(
    data: bytes, target: str, request: BuildRequest, linked: Callable[[], bytes | None]
) -> dict[str, object]:
    """Look for the compiled-in TRUST fingerprints and CERT= certificates in the binary.

    ``data`` is the content of the built ``target``. EFI binaries are stored uncompressed,
    so the output itself is searched; BIOS images are LZMA-compressed, so the linked image
    they were compressed from (``<target>.tmp``, read by ``linked``: None if absent) is.
    """
    name = target.rpartition("/")[2]
    where = "output"
    fingerprints = [c.fingerprint for c in request.trust]
    found = _find_fingerprints(data, fingerprints)
    if not all(found.values()):
        linked_data = linked()
        if linked_data is not None:
            data = linked_data
            where = "linked image"
            found = _find_fingerprints(data, fingerprints)
    certs = {c.fingerprint: c.der in data for c in request.chain_certs}
    result: dict[str, object] = {"searched": where, "trust": found, "certs": certs}
    absent = [f"trust anchor {fp}" for fp, ok in found.items() if not ok]
    absent += [f"certificate {fp}" for fp, ok in certs.items() if not ok]
    if absent:
        raise VerificationError(
            f"{name} was built without the requested trust: {', '.join(absent)} "
            f"not found in the {where}",
            hint="this is a build problem, not yours to fix by hand: rerun with --no-cache "
            "and report it with the build log",
            rule="ipxe-trust-compiled-in", subject=name,
        )
    return result


# An iPXE binary is well under a few MiB (an ISO with isolinux included): anything near
# this is not firmware, and is never read whole into memory.
MAX_OUTPUT_BYTES = 64 << 20


def _read_built(top: Path, rel: str, target: str, log: Path) -> bytes | None:
    """A file make produced, ``rel`` below the work tree ``top`` (None if absent): opened
    without following a link in any component, a regular file, at most MAX_OUTPUT_BYTES.
    The tree's Makefile decides what is there: a link to a host file (the CA key, as
    root) would otherwise become the firmware, and a sparse 6 GB file our memory."""
    def refuse(why: str) -> VerificationError:
        return VerificationError(
            f"the build of {target} left {rel} {why}: trustboot "
            "does not read it", rule="ipxe-build-output", subject=target,
            hint=f"a real iPXE tree never does this: check the tree's Makefile and the "
                 f"build log {log}, or build from a tree you trust")

    try:
        fd = fsutil.open_beneath(top, rel, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise refuse("as, or below, a symbolic link") from None
        if exc.errno == errno.ENOTDIR:
            raise refuse("below something that is not a directory") from None
        raise OperationalError(f"cannot read {rel} built for {target}: {exc.strerror}",
                               hint=f"see {log}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refuse("as something other than a regular file")
        if st.st_size > MAX_OUTPUT_BYTES:
            raise refuse(f"at {st.st_size} bytes, over the {MAX_OUTPUT_BYTES} an iPXE "
                         "binary could be")
        # one more: a file still growing (in steps: a read of n bytes allocates n first)
        data = fh.read(st.st_size + 1)
        if len(data) > st.st_size:
            data += fh.read(MAX_OUTPUT_BYTES + 1 - len(data))
    if len(data) > MAX_OUTPUT_BYTES:
        raise refuse(f"over the {MAX_OUTPUT_BYTES} bytes an iPXE binary could be")
    return data


def _write_if_changed(dir_fd: int, name: str, data: bytes) -> None:
    """Make ``name`` in the directory ``dir_fd`` hold ``data``, leaving it (and its mtime)
    alone if it already does. Never through a link: what a previous make left there is
    compared only if it is a regular file of the right size, and replaced otherwise."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError:  # a link (ELOOP) or worse: not ours to read, remove it
        _remove_entry(dir_fd, name)
    else:
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            regular = stat.S_ISREG(st.st_mode)
            if regular and st.st_size == len(data) and fh.read(len(data) + 1) == data:
                return
        if not regular:
            _remove_entry(dir_fd, name)
    # private like the rest of the work tree, whatever the umask (the certificates and
    # headers are not secret, but nothing here is for others to change)
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 fsutil.PRIVATE_FILE_MODE, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fd, fsutil.PRIVATE_FILE_MODE)
        fh.write(data)


def _remove_entry(dir_fd: int, name: str) -> None:
    """Remove ``name`` from the directory ``dir_fd``: a file or link itself, a directory
    with its contents (never following a link)."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


# The work tree's directories trustboot writes into (relative to its top): bound read-only
# in the sandbox, so make cannot replace them with links to host directories, and checked
# again (with their parents) before a warm tree is reused and before every make run.
_PROTECTED_DIRS = ("src/config/local", INPUT_DIR)
_LAYOUT = ("src", "src/config", *_PROTECTED_DIRS)
_COMPLETE = "src/.trustboot-complete"  # the copy of a warm tree finished


def _layout_problem(top: Path) -> str | None:
    """What is wrong with the work tree's layout: every directory of _LAYOUT must be a
    real directory (no link on the way), ours, not writable by others. None if intact."""
    for rel in _LAYOUT:
        try:
            fd = _open_dir(top, rel)
        except OSError as exc:
            return f"{rel} is not a directory of the tree ({exc.strerror})"
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return f"{rel} is not private to us"
    return None


def _open_dir(top: Path, rel: str) -> int:
    return fsutil.open_beneath(top, rel, os.O_RDONLY | os.O_DIRECTORY)


def _warm_tree_usable(top: Path) -> bool:
    """A warm tree is reused only if its copy completed and its layout is intact."""
    try:
        fd = fsutil.open_beneath(top, _COMPLETE, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        complete = stat.S_ISREG(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    return complete and _layout_problem(top) is None


@contextlib.contextmanager
def _making(top: Path) -> Iterator[None]:
    """make runs in the work tree ``top``: a warm one loses its mark of completeness
    until make has succeeded. A make killed mid-way (trustboot's SIGKILL, the OOM killer,
    a power loss) cannot delete what it was writing, and a half-written object is newer
    than its source: the next make in the tree would take it as built. Without the mark
    the next build copies the tree afresh. (A fresh tree has no mark: it goes anyway.)"""
    folder, name = _COMPLETE.rsplit("/", 1)
    fd = _open_dir(top, folder)
    try:
        try:
            os.unlink(name, dir_fd=fd)
            marked = True
            os.fsync(fd)  # gone on disk before make writes anything
        except FileNotFoundError:
            marked = False
    finally:
        os.close(fd)
    yield
    # through no link make left on the way (else the tree is copied afresh anyway)
    if marked and _layout_problem(top) is None:
        os.close(fsutil.open_beneath(top, _COMPLETE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                                     fsutil.PRIVATE_FILE_MODE))


def _layout_changed(problem: str, log: Path) -> VerificationError:
    return VerificationError(
        f"make changed the work tree's layout: {problem}; trustboot does not write "
        "there", rule="ipxe-build-output", subject="work tree",
        hint=f"a real iPXE tree never does this: check the tree's Makefile and the build "
             f"log {log}, or build from a tree you trust")


def _remove_private_key_copies(top: Path) -> None:
    """Remove the copies of the client key iPXE's make leaves in bin*/.private_key*,
    looking only into real directories of src/ (a bin* link to a host directory would
    have us delete there)."""
    src_fd = _open_dir(top, "src")
    try:
        for entry in os.scandir(src_fd):
            if not entry.name.startswith("bin") or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                bin_fd = _open_dir(top, f"src/{entry.name}")
            except OSError:
                continue  # replaced meanwhile: the tree goes away after this build anyway
            try:
                for name in os.listdir(bin_fd):
                    if name.startswith(".private_key"):
                        _remove_entry(bin_fd, name)
            finally:
                os.close(bin_fd)
    finally:
        os.close(src_fd)


def _new_tree(request: BuildRequest, top: Path) -> None:
    """Copy the source into ``top`` (an empty directory of ours) and add the inputs'
    directory; ConfigError if the copy's layout is not the one trustboot writes into
    (a tree whose src/config is a link)."""
    copy_tree(request.source, top)
    (top / INPUT_DIR).mkdir(mode=fsutil.PRIVATE_DIR_MODE)
    problem = _layout_problem(top)
    if problem is not None:
        raise ConfigError(
            f"the iPXE tree {request.source.src} does not copy to the layout trustboot "
            f"builds in: {problem}",
            hint="src/config must be a real directory in the tree (not a symbolic link)")


def _copy_out(src: Path, dest: Path, mode: int) -> None:
    fsutil.make_dirs(dest.parent)
    fsutil.atomic_write(dest, src.read_bytes(), mode=mode)


_FRESH_PREFIX = "build-"
# A fresh tree is made under a dot-name, locked, then renamed to build-*: a build-* tree
# is held by its build from the first moment it has that name.
_NEW_PREFIX = "." + _FRESH_PREFIX


def remove_abandoned_trees(work_root: Path) -> list[Path]:
    """Remove fresh work trees whose build was killed (SIGKILL, power loss).

    A live build holds an exclusive flock on its fresh tree (``build-<pid>-...``) for as
    long as it uses it, so a tree whose lock can be taken is a leftover, and one built
    with --client-cert still holds the unencrypted client key (trustboot-inputs/
    client.key, and the objects made from it). The lock, not the pid in the name, is
    what counts: builds in other PID namespaces (containers sharing the cache volume)
    have pids that mean nothing here. A dot-named tree a build was killed making (before
    any input was copied) goes once it is a minute old. Returns what was removed."""
    removed = fsutil.remove_unlocked_dirs(
        work_root, lambda n: n.startswith(_FRESH_PREFIX), older_than=0)
    return removed + fsutil.remove_unlocked_dirs(
        work_root, lambda n: n.startswith(_NEW_PREFIX), older_than=60)


@contextlib.contextmanager
def _work_tree(
    request: BuildRequest, cache: Path, key: str, toolchain: Mapping[str, str],
    passed: Mapping[str, str], env_salt: bytes | None, clean: bool,
) -> Iterator[Path]:
    """A private copy of src/: warm and reused for BIOS-only builds without a client key
    (iPXE rebuilds only what TRUST/CERT/EMBED touch, and those images are reproducible
    across trees); fresh and removed afterwards otherwise (EFI needs a clean tree to be
    reproducible, and objects built with PRIVKEY= hold the key). A fresh tree is a 0700
    temporary directory removed on every exit path, SIGTERM, SIGINT and SIGHUP included
    (:func:`cleanup_on_signals`); after a SIGKILL the next build removes it (its name
    carries the pid that owned it)."""
    work_root = cache / "work"
    fsutil.make_dirs(work_root, fsutil.PRIVATE_DIR_MODE)
    if _bios_only(request.targets) and request.client is None and not clean:
        top = work_root / f"warm-{_warm_key(request, toolchain, passed, env_salt)[:32]}"
        with fsutil.locked(work_root / f"{top.name}.lock", timeout=3600):
            # make ran in this tree before: one that replaced a directory we write into
            # with a link would have this build write and delete in the link's target
            try:
                if not _warm_tree_usable(top):
                    shutil.rmtree(top, ignore_errors=True)  # removes links, never follows
                    top.mkdir(mode=fsutil.PRIVATE_DIR_MODE)
                    _new_tree(request, top)
                    fsutil.create_file(top / _COMPLETE, fsutil.PRIVATE_FILE_MODE).close()
                yield top
            except BaseException:
                # a copy that failed, or a make that did (_making took the mark away):
                # the next build copies afresh anyway, so the tree is only disk space
                # (as much as the tree that was refused) until then
                if not _warm_tree_usable(top):
                    shutil.rmtree(top, ignore_errors=True)
                raise
        return
    with cleanup_on_signals():
        # mkdtemp: 0700 whatever the umask.
        new = Path(tempfile.mkdtemp(prefix=f"{_NEW_PREFIX}{os.getpid()}-{key[:12]}-",
                                    dir=work_root))
        top = new.with_name(new.name[1:])
        with fsutil.holding_dir(new):
            try:
                os.rename(new, top)  # the same directory, held under its build-* name
                _new_tree(request, top)
                yield top
            finally:  # removed while still held: no sweep starts on it meanwhile
                shutil.rmtree(new if new.exists() else top, ignore_errors=True)


def build(
    request: BuildRequest,
    *,
    output_dir: Path,
    cache_dir: Path | None = None,
    jobs: int | None = None,
    use_cache: bool = True,
    clean: bool = False,
    on_progress: ProgressCallback | None = None,
    toolchain: Mapping[str, str] | None = None,
    make_env_names: Sequence[str] = (),
    unsafe_unsandboxed: bool = False,
    extra_binds: sandbox.ExtraBinds = sandbox.NO_EXTRA_BINDS,
) -> BuildResult:
    """Build (or fetch from the cache) every target, copy them to ``output_dir``.

    make runs in a bubblewrap sandbox (:mod:`trustboot.ipxe.sandbox`; ConfigError when it
    cannot be created) unless ``unsafe_unsandboxed``, with a minimal environment
    (:func:`trustboot.subproc.minimal_env`); ``make_env_names`` names more variables of
    ours it may see (:func:`passed_env`, read once for the cache key and make), and
    ``extra_binds`` more host paths it may see in the sandbox (for tests' fake trees only:
    neither a recipe nor an option sets them).
    Output directories are created 0755 (an existing one must be ours and not writable by
    others), binaries 0644 (0600 when they hold a client key).
    """
    toolchain = dict(toolchain) if toolchain is not None else check_toolchain(request.targets)
    cache = prepare_cache_dir(cache_dir or default_cache_dir())
    limit = time_limit()  # an invalid TRUSTBOOT_BUILD_TIMEOUT is refused before any work
    passed = passed_env(make_env_names)  # read once: the key and make see the same values
    salt = make_env_salt(cache) if passed else None
    key = cache_key(request, toolchain, make_env=passed, env_salt=salt)
    entry = cache / "out" / key
    for sub in ("out", "logs"):
        fsutil.make_dirs(cache / sub, fsutil.PRIVATE_DIR_MODE)
    # A build killed by SIGKILL left its tree (and maybe a client key): remove it first,
    # whether or not this run needs a work tree.
    remove_abandoned_trees(cache / "work")
    log = cache / "logs" / f"{key[:16]}.log"
    mode = 0o600 if request.client is not None else 0o644
    cached = True
    with fsutil.locked(cache / "out" / f"{key[:32]}.lock", timeout=3600):
        if not use_cache or not (entry / "manifest.json").exists():
            cached = False
            # Before any work: without a sandbox the tree's code is not run at all.
            bwrap = None if unsafe_unsandboxed else sandbox.find_bwrap()
            _build_into(request, entry, key, log, toolchain, cache,
                        jobs or os.cpu_count() or 1, clean, on_progress,
                        passed, salt, bwrap, extra_binds, limit)
        manifest_bytes = (entry / "manifest.json").read_bytes()
        # only now: a failed build leaves no empty output dir; one others can write is
        # refused (they could swap the firmware, which trusts the root, before it ships)
        fsutil.make_output_dir(output_dir, "output directory")
        for target in request.targets:  # temp files of a copy killed an hour or more ago
            fsutil.remove_stale_temps((output_dir / target).parent)
        outputs: dict[str, Path] = {}
        for target in request.targets:
            dest = output_dir / target
            _copy_out(entry / target, dest, mode)
            outputs[target] = dest
        fsutil.atomic_write(output_dir / "manifest.json", manifest_bytes)
    return BuildResult(manifest=json.loads(manifest_bytes), outputs=outputs, cached=cached,
                       log=None if cached else log)


def _build_into(
    request: BuildRequest,
    entry: Path,
    key: str,
    log: Path,
    toolchain: Mapping[str, str],
    cache: Path,
    jobs: int,
    clean: bool,
    on_progress: ProgressCallback | None,
    passed: Mapping[str, str],
    env_salt: bytes | None,
    bwrap: str | None,
    extra_binds: sandbox.ExtraBinds,
    limit: float,
) -> None:
    plan = make_plan(request, jobs=jobs)
    env = minimal_env(dict(passed))
    fsutil.atomic_write(log, b"", mode=fsutil.PRIVATE_FILE_MODE)
    with _work_tree(request, cache, key, toolchain, passed, env_salt, clean) as top:
        headers = {name: text.encode() for name, text in request.headers.items()}
        config_fd = _open_dir(top, "src/config")
        local_fd = _open_dir(top, "src/config/local")
        inputs_fd = _open_dir(top, INPUT_DIR)
        try:
            # iPXE's make creates every missing config/local header (one per config/*.h)
            # empty: in the sandbox config/local is read-only, so they are made here. Those
            # already there are kept (and their mtimes) rather than rewritten.
            wanted = {n for n in os.listdir(config_fd) if n.endswith(".h")}
            for name in sorted((wanted | set(os.listdir(local_fd))) - set(headers)):
                _write_if_changed(local_fd, name, b"")
            # Rewrite only what changed: a new mtime on config/local/general.h would make
            # make rebuild nearly every object of a warm tree.
            for name, data in headers.items():
                _write_if_changed(local_fd, name, data)
            for name in os.listdir(inputs_fd):
                if f"{INPUT_DIR}/{name}" not in plan.input_files:
                    _remove_entry(inputs_fd, name)
            for name, data in plan.input_files.items():
                _write_if_changed(inputs_fd, name.removeprefix(f"{INPUT_DIR}/"), data)
            key_file = top / INPUT_DIR / "client.key"
            try:
                if request.client is not None:
                    fsutil.write_private_file(key_file, request.client.key_pem)
                with _making(top):
                    for argv in plan.invocations:
                        _run_make(argv, top, log, on_progress, env, bwrap, extra_binds,
                                  limit)
            finally:
                # The key is readable only while make runs.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink("client.key", dir_fd=inputs_fd)
        finally:
            for fd in (config_fd, local_fd, inputs_fd):
                os.close(fd)
        if request.client is not None:
            # The key stays out of the build log's neighbours too: iPXE copies it to bin/.
            _remove_private_key_copies(top)
        staging = entry.with_name(entry.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        outputs = []
        for target in request.targets:
            built = _read_built(top, f"src/{target}", target, log)
            if built is None:
                raise OperationalError(
                    f"make succeeded but {target} was not produced", hint=f"see {log}"
                )
            folder, _, file_name = target.rpartition("/")
            linked = f"src/{folder}/{KNOWN_TARGETS[target].linked or file_name + '.tmp'}"
            check = _trust_check(
                built, target, request,
                functools.partial(_read_built, top, linked, target, log))
            dest = staging / target
            fsutil.make_dirs(dest.parent, fsutil.PRIVATE_DIR_MODE)
            fsutil.atomic_write(dest, built, mode=fsutil.PRIVATE_FILE_MODE)
            outputs.append({
                "target": target,
                "sha256": hashlib.sha256(built).hexdigest(),
                "size": len(built),
                "trust_check": check,
            })
    manifest = {
        "trustboot_ipxe_build": BUILD_FORMAT,
        "cache_key": key,
        "source": request.source.to_json(),
        "targets": list(request.targets),
        "config_headers": request.headers,
        "options": {
            "crosscert": request.options.crosscert,
            "ocsp": request.options.ocsp,
            "ntp": request.options.ntp,
            "serial_console": request.options.serial_console,
        },
        "trust": [c.to_json() for c in request.trust],
        "certs": [c.to_json() for c in request.chain_certs],
        "client_certificate": None if request.client is None else {
            **request.client.cert.to_json(),
            "public_key_sha256": request.client.public_key_sha256,
        },
        "embedded_script": None if request.script is None else {
            "sha256": hashlib.sha256(request.script.encode()).hexdigest(),
            "size": len(request.script.encode()),
        },
        "make": {
            "invocations": plan.to_json(),
            "source_date_epoch": request.source_date_epoch,
            # names only: a value may be a credential (a remote ccache's URL); the values
            # are in the cache key
            "environment": sorted(passed),
        },
        "toolchain": dict(sorted(toolchain.items())),
        "outputs": outputs,
    }
    fsutil.atomic_write(staging / "manifest.json",
                        (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    shutil.rmtree(entry, ignore_errors=True)
    os.replace(staging, entry)
