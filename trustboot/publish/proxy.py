"""The outbound proxy for an origin URL, from the environment as curl, git and botocore
take it: ``https_proxy``/``HTTPS_PROXY`` for https:// URLs (``http_proxy`` for the
``--unsafe-http`` ones), ``no_proxy``/``NO_PROXY`` to go direct.

Only an http:// proxy (or ``host:port``) is taken, and only as a CONNECT tunnel: TLS runs
end to end between trustboot and the origin inside it, verified against the private CA as
without a proxy, so the proxy sees the host name and the sizes, never the content, and
cannot answer for the origin. WebDAV publishing, the read-back and ``origin check`` use
this; S3 uses botocore's reading of the same variables.
"""

from __future__ import annotations

import base64
import contextlib
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from trustboot.errors import ConfigError


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    # Proxy-Authorization for the CONNECT, when the proxy URL carries user:password
    headers: dict[str, str] = field(default_factory=dict, compare=False)
    variable: str = "https_proxy"

    @property
    def shown(self) -> str:
        """The proxy for messages: no credentials."""
        user = "***@" if self.headers else ""
        return f"http://{user}{self.host}:{self.port}"


# (host, port) pairs reached directly whatever the environment says (see direct_to)
_DIRECT: set[tuple[str, int | None]] = set()
_DIRECT_LOCK = threading.Lock()


@contextlib.contextmanager
def direct_to(host: str, port: int) -> Iterator[None]:
    """Within the block, connections to ``host``:``port`` take no proxy: a server this
    process runs on loopback (the demo's), which a proxy elsewhere cannot reach."""
    key = (host, port)
    with _DIRECT_LOCK:
        _DIRECT.add(key)
    try:
        yield
    finally:
        with _DIRECT_LOCK:
            _DIRECT.discard(key)


def proxy_for(scheme: str, host: str, port: int | None) -> Proxy | None:
    """The proxy a connection to ``scheme``://``host``:``port`` goes through, or None for
    a direct one."""
    if (host, port) in _DIRECT:
        return None
    proxies = urllib.request.getproxies_environment()
    configured = proxies.get(scheme)
    if not configured or not host:
        return None
    netloc = f"[{host}]" if ":" in host else host
    # no_proxy matches host names, host:port, domain suffixes and "*"
    # (public in urllib.request, missing from typeshed)
    if urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]
            netloc if port is None else f"{netloc}:{port}", proxies):
        return None
    return parse_proxy(configured, f"{scheme}_proxy")


def parse_proxy(value: str, variable: str) -> Proxy:
    """``value`` of the environment variable ``variable`` as a Proxy; ConfigError naming
    the variable (never its credentials) when it is not an http:// proxy."""
    text = value.strip()
    if "://" not in text:
        text = f"http://{text}"  # as curl: a bare host:port is an HTTP proxy
    parts = urlsplit(text)
    try:
        port = parts.port or 80
    except ValueError:
        port = -1
    if parts.scheme != "http" or not parts.hostname or port <= 0 \
            or parts.path not in ("", "/") or parts.query or parts.fragment:
        shown = f"{parts.scheme}://{parts.hostname or ''}" if parts.scheme else "(unparsable)"
        raise ConfigError(
            f"${variable} ({shown}...) is not an http://HOST:PORT proxy",
            hint="trustboot tunnels TLS to the origin through an HTTP proxy with CONNECT "
                 f"(TLS stays end to end); set {variable}=http://HOST:PORT, or add the "
                 "origin's host to no_proxy to connect directly")
    headers: dict[str, str] = {}
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Proxy-Authorization"] = \
            "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
    return Proxy(parts.hostname, port, headers, variable)
