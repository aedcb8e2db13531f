"""Running an iPXE tree's make in a bubblewrap sandbox.

An iPXE tree's Makefile is code from whoever controls the tree (a recipe's pinned commit, a
checkout on the build host). Run as trustboot's own user it could read the passphrase
variable in /proc/<pid>/environ, the key files and the CA home, ptrace a process holding
an unlocked signer, or reach the network. In the sandbox make sees only the system
toolchain (read-only), the private work tree (read-write), a private /tmp, a minimal /dev
and the /proc of a new PID namespace; it has no network, no capabilities (root included)
and no terminal. When make exits, bwrap's init exits and the kernel kills whatever the
build left running in its PID namespace.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trustboot.errors import ConfigError
from trustboot.subproc import kill_group

BWRAP = "bwrap"
UNSAFE_OPTION = "--unsafe-unsandboxed-build"
UNSAFE_ENV = "TRUSTBOOT_UNSAFE_UNSANDBOXED_BUILD"
UNSAFE_HELP = ("Run the iPXE tree's make without the bubblewrap sandbox, as this user with "
               "its files, processes and network (only for a tree you trust as much as "
               "this account).")
UNSAFE_WARNING = ("building iPXE without a sandbox: the tree's Makefile runs as this user "
                  "and can read its files and processes (keys, passphrases) and the network")

# The host's top-level links into /usr (merged /usr) or, on older layouts, directories.
_ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# All of /etc a toolchain reads: the loader's cache and the alternatives links (cc, awk).
# Nothing else of /etc: no passwd, no ssl/private, no credentials.
_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives")

# Inside the sandbox /tmp is a fresh tmpfs of its own, not the host's.
PRIVATE_TMP = "/tmp"  # noqa: S108



@dataclass(frozen=True)
class ExtraBinds:
    """More host paths make sees, read-only and read-write, passed by a caller of the
    library (the tests' fake tree: its interpreter, the file it records its runs in). No
    recipe key or command-line option leads here."""

    read_only: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()


NO_EXTRA_BINDS = ExtraBinds()

_FALLBACK = f"only for a tree you trust as much as this account: {UNSAFE_OPTION}"

# The bwrap binaries whose probe succeeded in this process: a build (or a release's
# several) does not start a sandbox just to see that it can.
_probed: set[str] = set()
_probe_lock = threading.Lock()


def _unavailable(reason: str, hint: str) -> ConfigError:
    return ConfigError(f"cannot run the iPXE build in a sandbox: {reason}",
                       hint=f"{hint}; {_FALLBACK}")


def sandbox_argv(argv: Sequence[str], work: Path | None, *, bwrap: str,
                 extra: ExtraBinds = NO_EXTRA_BINDS,
                 read_only_within: Sequence[str] = ()) -> list[str]:
    """bwrap's command line running ``argv`` with ``work`` (absolute) as the only writable
    host directory (besides ``extra.writable``) and the current directory (None: no host
    directory, in /). The directories ``read_only_within`` (relative to ``work``, which
    the caller checked are real directories) are bound read-only over it: mount points,
    make can neither write in them nor remove or rename them."""
    out = [bwrap,
           "--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-uts",
           "--unshare-cgroup", "--unshare-net",
           "--disable-userns",  # no nested namespaces to regain capabilities in
           "--die-with-parent",  # trustboot gone (even SIGKILL): the sandbox goes too
           "--new-session",  # no controlling terminal: no TIOCSTI into the user's shell
           "--cap-drop", "ALL",  # as root bwrap would otherwise keep them
           "--ro-bind", "/usr", "/usr"]
    for name in _ROOT_LINKS:
        path = Path("/", name)
        if path.is_symlink():
            out += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            out += ["--ro-bind", str(path), str(path)]
    for path_text in _ETC:
        out += ["--ro-bind-try", path_text, path_text]
    out += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", PRIVATE_TMP]
    for path_text in extra.read_only:
        out += ["--ro-bind", path_text, path_text]
    for path_text in extra.writable:
        out += ["--bind", path_text, path_text]
    if work is not None:
        # The same path as outside: log lines and the tree's own paths read the same.
        out += ["--bind", str(work), str(work)]
        for rel in read_only_within:
            out += ["--ro-bind", str(work / rel), str(work / rel)]
    return [*out, "--chdir", str(work or "/"), "--", *argv]


def find_bwrap(path: str | None = None) -> str:
    """bwrap's path, after checking (once per process and binary) that it can create the
    namespaces; ConfigError if not."""
    found = shutil.which(BWRAP, path=path)
    if found is None:
        raise _unavailable("bwrap (bubblewrap) is not installed",
                           "install bubblewrap (apt-get install bubblewrap)")
    with _probe_lock:
        if found in _probed:
            return found
        probe = subprocess.run(
            sandbox_argv(["true"], None, bwrap=found), capture_output=True, text=True,
            stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"}, check=False, timeout=60,
        )
        if probe.returncode != 0:
            detail = (probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"])[-1]
            raise _unavailable(
                f"bwrap cannot create its namespaces here ({detail[:200]})",
                "bubblewrap is installed; the likely cause is that unprivileged user "
                "namespaces are disabled: allow them (Debian: sysctl "
                "kernel.unprivileged_userns_clone=1; Ubuntu: sysctl "
                "kernel.apparmor_restrict_unprivileged_userns=0; in a container: a seccomp "
                "profile that allows them)")
        _probed.add(found)
    return found


def sandbox_env(env: dict[str, str]) -> dict[str, str]:
    """make's environment inside: HOME and TMPDIR point at the private /tmp (the host's
    home is not there)."""
    return {**env, "HOME": PRIVATE_TMP, "TMPDIR": PRIVATE_TMP}


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a sandboxed make: TERM make's own process group inside (make deletes its
    half-written targets, which matters in a reused warm tree), then KILL bwrap's group,
    which takes the sandbox's init with it and so every process of its PID namespace."""
    # bwrap (our child, its own group) -> bwrap's init (pid 1 inside, the same group) ->
    # make, in a session and group of its own (--new-session): TERM the first process
    # groups below bwrap's.
    groups: set[int] = set()
    level = [proc.pid]
    for _ in range(3):
        below: list[int] = []
        for pid in level:
            for child in _children(pid):
                with contextlib.suppress(ProcessLookupError):
                    if os.getpgid(child) != proc.pid:
                        groups.add(os.getpgid(child))
                        continue
                    below.append(child)
        level = below
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    # Still running (make ignored the TERM): bwrap's group id stays reserved while bwrap
    # lives unreaped, so this cannot reach another process.
    kill_group(proc)
