"""The outbound proxy for an origin URL, from the environment as curl, git and botocore
take it: ``https_proxy``/``HTTPS_PROXY`` for https:// URLs (``http_proxy`` for the
``--unsafe-http`` ones), ``no_proxy``/``NO_PROXY`` to go direct.

Only an http:// proxy (or ``host:port``) is taken, and only as a CONNECT tunnel: TLS runs
end to end between trustboot and the origin inside it, verified against the private CA as
without a proxy, so the proxy sees the host name and the sizes, never the content, and
cannot answer for the origin. WebDAV publishing, the read-back and ``origin check`` use
this; S3 uses botocore's reading of the same proxy variables, and ``goes_direct``'s
of no_proxy.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
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
    # (never in a repr: a traceback or a log of the object would show the password)
    headers: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
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


_DEFAULT_PORTS = {"https": 443, "http": 80}


def proxy_for(scheme: str, host: str, port: int | None) -> Proxy | None:
    """The proxy a connection to ``scheme``://``host``:``port`` goes through, or None for
    a direct one (``port`` None: the scheme's default)."""
    configured = urllib.request.getproxies_environment().get(scheme)
    if not configured or not host or goes_direct(scheme, host, port):
        return None
    if ":" in host.strip("[]"):
        # httpcore's and http.client's tunnels (Python 3.11) write an IPv6 address into
        # CONNECT and TLS's server name without brackets: no proxy could open it
        raise ConfigError(
            f"the origin {host} is an IPv6 address, which trustboot cannot reach through "
            f"${scheme}_proxy (a CONNECT tunnel)",
            hint=f"add {host} to no_proxy to connect to it directly, or name the origin "
                 "by a host name")
    return parse_proxy(configured, f"{scheme}_proxy")


def goes_direct(scheme: str, host: str, port: int | None) -> bool:
    """Whether a connection to ``scheme``://``host``:``port`` skips any proxy: a server
    of ``direct_to``, or one ``no_proxy`` names (``port`` None: the scheme's default).
    The one reading of no_proxy for every client (S3's too, whose proxy botocore
    parses)."""
    port = port if port is not None else _DEFAULT_PORTS.get(scheme)
    if (host, port) in _DIRECT:
        return True
    return bypassed(host, port, urllib.request.getproxies_environment().get("no", ""))


def bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether ``no_proxy`` sends ``host``:``port`` direct, as curl reads it: ``*`` alone
    is every host; an entry is a host name that also covers its subdomains (a leading
    '.' changes nothing), an IP address (v6 with or without brackets) or a CIDR range,
    which match the address only; ``NAME:PORT`` and ``[V6]:PORT`` only that port.
    (urllib's own reading missed a default port left out of the URL, any IPv6 entry, and
    matched the IP 10.0.0.1 to the entry "0.1" as if it were a domain.)"""
    if no_proxy.strip() == "*":
        return True
    name = host.strip("[]").rstrip(".").lower()
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = \
            ipaddress.ip_address(name)
    except ValueError:
        address = None
    for raw in no_proxy.split(","):
        entry, only_port = _no_proxy_entry(raw.strip().lower())
        if not entry or (only_port is not None and only_port != port):
            continue
        if address is not None:
            with contextlib.suppress(ValueError):
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
        elif name == entry or name.endswith("." + entry):
            return True
    return False


def _no_proxy_entry(entry: str) -> tuple[str, int | None]:
    """A no_proxy entry as (name or address or range, port or None); ("", None) when it
    cannot be read."""
    port: int | None = None
    if entry.startswith("["):
        address, _, rest = entry[1:].partition("]")
        if rest:
            if not (rest.startswith(":") and rest[1:].isdigit()):
                return "", None
            port = int(rest[1:])
        entry = address
    elif entry.count(":") == 1:
        entry, _, digits = entry.partition(":")
        if not digits.isdigit():
            return "", None
        port = int(digits)
    return entry.strip(".") if ":" not in entry else entry, port


def parse_proxy(value: str, variable: str) -> Proxy:
    """``value`` of the environment variable ``variable`` as a Proxy; ConfigError naming
    the variable (never its credentials) when it is not an http:// proxy."""
    text = value.strip()
    if "://" not in text:
        text = f"http://{text}"  # as curl: a bare host:port is an HTTP proxy
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:  # a broken IPv6 literal: refused below like any other bad value
        parts, host = urlsplit(""), None
    try:
        port = parts.port or 80
    except ValueError:
        port = -1
    if parts.scheme != "http" or not host or port <= 0 \
            or parts.path not in ("", "/") or parts.query or parts.fragment:
        shown = f"{parts.scheme}://{host or ''}" if parts.scheme else "(unparsable)"
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
    return Proxy(host, port, headers, variable)
