"""Environments for the programs trustboot runs (git, make, the toolchain probes).

A child gets a minimal environment built from a short allow-list, never a copy of ours:
the variable that holds a passphrase (``--passphrase-env``), cloud credentials or tokens
must not reach a Makefile or a git transport. Callers also put ``--`` before positional
arguments, so a value can never be read as an option.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence

from trustboot.errors import ConfigError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# What any program needs to find itself and behave predictably.
_BASE = ("PATH", "HOME", "TMPDIR", "USER", "LOGNAME")
# What git needs to reach a remote the way the user's shell would (no secrets: a socket
# path and proxy addresses).
_GIT_PASS = ("SSH_AUTH_SOCK", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY",
             "HTTPS_PROXY", "NO_PROXY", "GIT_SSL_CAINFO", "SSL_CERT_FILE", "SSL_CERT_DIR")

# Transports git may use for --git: no ext:: (runs a command), no plain http/git.
GIT_PROTOCOLS = "https:ssh:file"


def minimal_env(extra: Mapping[str, str] | None = None, *,
                passthrough: tuple[str, ...] = (),
                environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """PATH, HOME, TMPDIR, USER and LOGNAME from ``environ``, the C locale, plus ``extra``."""
    environ = os.environ if environ is None else environ
    env = {name: environ[name] for name in (*_BASE, *passthrough) if environ.get(name)}
    env.setdefault("PATH", DEFAULT_PATH)
    env["LANG"] = "C"
    env["LC_ALL"] = "C"
    env.update(extra or {})
    return env


def git_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """For git: no system config, no prompts, only https/ssh/file transports, and an
    https transfer that stalls is given up."""
    return minimal_env({
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        # Overrides protocol.allow from any config file: ext::, fd::, http:// refused.
        "GIT_ALLOW_PROTOCOL": GIT_PROTOCOLS,
        "GIT_PROTOCOL_FROM_USER": "0",
        # under 1 KB/s for a minute: a server that trickles (or stops) gets no longer
        "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
        "GIT_HTTP_LOW_SPEED_TIME": "60",
    }, passthrough=_GIT_PASS, environ=environ)


# Getting and building iPXE runs code and servers trustboot does not control (a tree's
# Makefile, a recipe's git server): each such step has a time limit, so a hostile or
# stuck one cannot hold a release (and the signer it has unlocked) for ever.
TIME_LIMIT_ENV = "TRUSTBOOT_BUILD_TIMEOUT"
DEFAULT_TIME_LIMIT = 3600.0
# A week: beyond it the waits' millisecond timers (a C int) would overflow.
MAX_TIME_LIMIT = 7 * 86400.0


def time_limit(environ: Mapping[str, str] | None = None) -> float:
    """Seconds each step of getting and building iPXE may take (the pinned git fetch,
    each make run): $TRUSTBOOT_BUILD_TIMEOUT, default an hour; ConfigError if invalid."""
    raw = (os.environ if environ is None else environ).get(TIME_LIMIT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIME_LIMIT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_TIME_LIMIT):
        raise ConfigError(f"{TIME_LIMIT_ENV}={raw[:40]!r} is not a number of seconds "
                          f"above 0 and at most {MAX_TIME_LIMIT:g} (a week)",
                          hint=f"e.g. {TIME_LIMIT_ENV}=7200, or unset it for an hour")
    return value


class TimedOut(Exception):
    """A bounded child ran past its time limit (and was killed, with its group); the
    caller, which set the limit, names it."""


def kill_group(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """KILL ``proc``'s process group (it leads one) and reap ``proc``. The group id stays
    reserved while ``proc`` is unreaped, so this cannot reach another process."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_bounded(argv: Sequence[str], *, limit: float, env: Mapping[str, str]
                ) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (no input, text output captured) in a process group of its own;
    past ``limit`` seconds, or interrupted, the whole group is killed (git's transport
    helpers and ssh too, not only git) and TimedOut (or the interruption) raised."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=dict(env),
                            process_group=0)
    try:
        out, err = proc.communicate(timeout=limit)
    except BaseException as exc:
        kill_group(proc)
        # not communicate(): a child that left the group could hold the pipes open
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise TimedOut from None
        raise
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
