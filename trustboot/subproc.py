"""Environments for the programs trustboot runs (git, make, the toolchain probes).

A child gets a minimal environment built from a short allow-list, never a copy of ours:
the variable that holds a passphrase (``--passphrase-env``), cloud credentials or tokens
must not reach a Makefile or a git transport. Callers also put ``--`` before positional
arguments, so a value can never be read as an option.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

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
    """For git: no system config, no prompts, only https/ssh/file transports."""
    return minimal_env({
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        # Overrides protocol.allow from any config file: ext::, fd::, http:// refused.
        "GIT_ALLOW_PROTOCOL": GIT_PROTOCOLS,
        "GIT_PROTOCOL_FROM_USER": "0",
    }, passthrough=_GIT_PASS, environ=environ)
