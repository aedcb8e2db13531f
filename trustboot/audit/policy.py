"""The audit policy: who may answer a booting client, and what it should be handed.

YAML, every key optional, unknown keys rejected (a typo must not silently weaken the audit)::

    authorized_servers:            # DHCP, ProxyDHCP and DHCPv6 servers allowed to answer
      - name: core-dhcp            # label for reports (optional)
        ip: 192.0.2.1              # ip and/or mac (v4) or duid (v6); all given must match
        mac: "52:54:00:12:34:56"   # quoted: YAML 1.1 reads some MACs as numbers
        role: dhcp                 # dhcp | proxydhcp | dhcpv6 | relay | any (default any)
      - duid: 00030001525400123456 # DHCPv6: DUID and the MAC it answers from
        mac: "52:54:00:12:34:56"
        role: dhcpv6
      - {ip: 192.0.2.254, mac: "52:54:00:00:00:fe", role: relay}  # a DHCP relay agent
    expected_files:                # boot files the segment should hand out
      - name: undionly.kpxe        # matched against the last path component offered
        sha256: 9f86d08188...
    release_manifest: release.json # relative to this file; see load_manifest
    expected_origin: https://boot.example.org/releases/   # or a list (mirrors, v4/v6 names)
    expected_ca_sha256: 3b1f...    # SHA-256 of the root certificate (DER)
    expected_ca_file: root.pem     # optional PEM of that root: lets the audit verify TLS
    tftp_allowed: true             # false: any TFTP boot at all is a high finding

The release manifest is JSON::

    {"release": "2024.06", "origin": "https://boot.example.org/releases/2024.06/",
     "ca_sha256": "<hex>", "files": [{"name": "boot.ipxe", "sha256": "<hex>", "size": 123}]}
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trustboot import jsonin
from trustboot.errors import ConfigError
from trustboot.fsutil import read_capped
from trustboot.text import shown, shown_names

ROLES = ("any", "dhcp", "proxydhcp", "dhcpv6", "relay")
HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}$")
MAX_POLICY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class AuthorizedServer:
    name: str | None = None
    ip: str | None = None
    mac: str | None = None
    duid: str | None = None
    role: str = "any"

    def matches(self, *, role: str, ip: str | None = None, mac: str | None = None,
                duid: str | None = None) -> bool:
        if self.role != role and (self.role != "any" or role == "relay"):
            return False  # a relay must be named as one: "any" does not vouch for relaying
        checks = []
        if self.ip is not None:
            checks.append(ip is not None and _same_ip(self.ip, ip))
        if self.mac is not None:
            checks.append(mac is not None and self.mac == mac.lower())
        if self.duid is not None:
            checks.append(duid is not None and self.duid == duid.lower())
        return bool(checks) and all(checks)

    def label(self) -> str:
        parts = [p for p in (self.ip, self.mac, self.duid) if p]
        return self.name or "/".join(parts)


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


@dataclass(frozen=True)
class ExpectedFile:
    name: str
    sha256: str
    size: int | None = None
    source: str = "policy"

    def matches_name(self, offered: str) -> bool:
        offered = offered.strip("/")
        if "/" in self.name.strip("/"):
            return offered == self.name.strip("/") or offered.endswith("/" + self.name.strip("/"))
        return offered.rsplit("/", 1)[-1] == self.name


@dataclass(frozen=True)
class Policy:
    authorized: tuple[AuthorizedServer, ...] = ()
    expected_files: tuple[ExpectedFile, ...] = ()
    release: str | None = None
    origins: tuple[str, ...] = ()
    ca_sha256: str | None = None
    ca_file: Path | None = None
    tftp_allowed: bool = True
    source: str | None = None

    @property
    def has_authorized(self) -> bool:
        return bool(self.authorized)

    def authorized_match(self, *, role: str, ip: str | None = None, mac: str | None = None,
                         duid: str | None = None) -> AuthorizedServer | None:
        for entry in self.authorized:
            if entry.matches(role=role, ip=ip, mac=mac, duid=duid):
                return entry
        return None

    def expected_by_sha(self, sha256: str) -> ExpectedFile | None:
        for f in self.expected_files:
            if f.sha256 == sha256.lower():
                return f
        return None

    def under_origin(self, url: str) -> bool:
        """Whether ``url`` lies under one of the expected origins (scheme, host, port, path)."""
        return any(_under(url, origin) for origin in self.origins)

    def expected_by_name(self, name: str) -> list[ExpectedFile]:
        return [f for f in self.expected_files if f.matches_name(name)]

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source, "release": self.release, "origins": list(self.origins),
            "ca_sha256": self.ca_sha256,
            "ca_file": str(self.ca_file) if self.ca_file else None,
            "tftp_allowed": self.tftp_allowed,
            "authorized_servers": [
                {"name": a.name, "ip": a.ip, "mac": a.mac, "duid": a.duid, "role": a.role}
                for a in self.authorized
            ],
            "expected_files": [
                {"name": f.name, "sha256": f.sha256, "size": f.size, "source": f.source}
                for f in self.expected_files
            ],
        }


def _under(url: str, origin: str) -> bool:
    try:
        u, o = urlsplit(url), urlsplit(origin)
        same = (u.scheme.lower(), u.hostname, u.port) == (o.scheme.lower(), o.hostname, o.port)
    except ValueError:
        return False
    base = o.path if o.path.endswith("/") else o.path + "/"
    return same and (u.path == o.path or u.path.startswith(base) or o.path in ("", "/"))


def _fail(where: str, message: str, hint: str | None = None) -> ConfigError:
    return ConfigError(f"{where}: {message}", hint=hint)


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(where, f"expected a non-empty string, got {shown(value)}")
    return value


def _sha(value: Any, where: str) -> str:
    if isinstance(value, int | float):
        raise _fail(where, "YAML read this SHA-256 as a number", hint="put the hex in quotes")
    text = _str(value, where)
    if not HEX64.match(text):
        raise _fail(where, "expected a SHA-256 as 64 hex digits")
    return text.lower()


def _url(value: Any, where: str) -> str:
    text = _str(value, where)
    try:
        parts = urlsplit(text)
        # each raises ValueError on a malformed host or port; checked here, or every boot
        # URL would later fail to match the origin
        parts.hostname  # noqa: B018
        parts.port  # noqa: B018
    except ValueError as exc:
        raise _fail(where, f"expected an http(s):// URL, got {shown(text)} ({exc})",
                    hint="check the host (an IPv6 address in [brackets]) and the port"
                    ) from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _fail(where, f"expected an http(s):// URL, got {shown(text)}")
    return text


def _keys(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed, key=str)  # (YAML keys may be numbers)
    if unknown:
        raise _fail(where, f"unknown key(s) {shown_names(unknown)}",
                    hint=f"allowed here: {', '.join(sorted(allowed))}")


def _server(entry: Any, where: str) -> AuthorizedServer:
    if not isinstance(entry, dict):
        raise _fail(where, "expected a mapping with ip, mac, duid, role, name")
    _keys(entry, {"name", "ip", "mac", "duid", "role"}, where)
    ip = mac = duid = None
    if entry.get("ip") is not None:
        try:
            ip = str(ipaddress.ip_address(_str(str(entry["ip"]), f"{where}.ip")))
        except ValueError:
            raise _fail(f"{where}.ip", f"not an IP address: {shown(entry['ip'])}") from None
    if entry.get("mac") is not None:
        if isinstance(entry["mac"], int):
            raise _fail(f"{where}.mac", "YAML read this MAC address as a (base-60) number",
                        hint='put it in quotes: mac: "52:54:00:12:34:56"')
        text = _str(entry["mac"], f"{where}.mac")
        if not MAC_RE.match(text):
            raise _fail(f"{where}.mac", f"not a MAC address: {shown(text)}",
                        hint="write it as 52:54:00:12:34:56")
        mac = text.lower().replace("-", ":")
    if entry.get("duid") is not None:
        text = _str(str(entry["duid"]), f"{where}.duid").replace(":", "").lower()
        if not re.fullmatch(r"[0-9a-f]{4,260}", text) or len(text) % 2:
            raise _fail(f"{where}.duid", "expected the DUID as hex digits")
        duid = text
    if ip is None and mac is None and duid is None:
        raise _fail(where, "an authorized server needs at least one of ip, mac, duid")
    role = entry.get("role", "any")
    if role not in ROLES:
        raise _fail(f"{where}.role", f"unknown role {shown(role)}",
                    hint=f"one of {', '.join(ROLES)}")
    name = entry.get("name")
    return AuthorizedServer(name=str(name) if name is not None else None, ip=ip, mac=mac,
                            duid=duid, role=role)


def _file(entry: Any, where: str, source: str) -> ExpectedFile:
    if not isinstance(entry, dict):
        raise _fail(where, "expected a mapping with name and sha256")
    _keys(entry, {"name", "sha256", "size"}, where)
    size = entry.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise _fail(f"{where}.size", f"expected a byte count, got {shown(size)}")
    return ExpectedFile(
        name=_str(entry.get("name"), f"{where}.name").strip("/"),
        sha256=_sha(entry.get("sha256"), f"{where}.sha256"), size=size, source=source,
    )


@dataclass(frozen=True)
class Manifest:
    release: str | None
    origin: str | None
    ca_sha256: str | None
    files: tuple[ExpectedFile, ...]


def _read(path: Path, what: str) -> bytes:
    """A small input file, or a ConfigError saying which and why not: a regular file only
    (the audit is bounded in time, and a FIFO would block it before the first probe)."""
    return read_capped(path, MAX_POLICY_BYTES, what)


def load_manifest(path: Path) -> Manifest:
    """A release manifest (JSON) as written by ``trustboot release``."""
    where = str(path)
    raw = _read(path, "release manifest")
    try:
        data = jsonin.loads(raw)  # a manifest may come from an origin: hostile nesting too
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(where, f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _fail(where, "expected a JSON object with release, origin, ca_sha256, files")
    if "version" in data:
        # The release manifest `trustboot release`/`publish` write: one strict parser.
        from trustboot.publish.manifest import parse_manifest

        parse_manifest(raw, source=where)
    files_raw = data.get("files", [])
    if not isinstance(files_raw, list):
        raise _fail(f"{where}: files", "expected a list")
    files = tuple(
        _file({k: v for k, v in f.items() if k in ("name", "sha256", "size")}
              if isinstance(f, dict) else f,
              f"{where}: files[{i}]", source=f"manifest {path.name}")
        for i, f in enumerate(files_raw)
    )
    release = data.get("release")
    origin = _url(data["origin"], f"{where}: origin") if data.get("origin") else None
    ca = _sha(data["ca_sha256"], f"{where}: ca_sha256") if data.get("ca_sha256") else None
    return Manifest(str(release) if release is not None else None, origin, ca, files)


def ca_file_sha256(path: Path) -> str:
    """SHA-256 of the (first) certificate in a PEM or DER file."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    data = _read(path, "CA file")
    try:
        cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data))
    except ValueError as exc:
        raise ConfigError(f"{path}: not a certificate: {exc}") from None
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def load_policy(path: Path) -> Policy:
    """Parse and validate a policy file; ConfigError names the file and key on any problem."""
    import yaml  # here: an audit without --policy does not pay for it

    where = str(path)
    raw = _read(path, "policy")
    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{loc}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise _fail(where, "expected a mapping at the top level")
    return policy_from_dict(data, where=where, base=path.parent)


def policy_from_dict(data: dict[str, Any], *, where: str = "policy",
                     base: Path | None = None) -> Policy:
    _keys(data, {"version", "authorized_servers", "expected_files", "release_manifest",
                 "expected_origin", "expected_ca_sha256", "expected_ca_file", "tftp_allowed"},
          where)
    if data.get("version", 1) != 1:
        raise _fail(f"{where}: version", f"unsupported policy version {shown(data['version'])}")
    servers_raw = data.get("authorized_servers") or []
    if not isinstance(servers_raw, list):
        raise _fail(f"{where}: authorized_servers", "expected a list")
    servers = tuple(_server(e, f"{where}: authorized_servers[{i}]")
                    for i, e in enumerate(servers_raw))
    files_raw = data.get("expected_files") or []
    if not isinstance(files_raw, list):
        raise _fail(f"{where}: expected_files", "expected a list")
    files = [_file(e, f"{where}: expected_files[{i}]", "policy") for i, e in enumerate(files_raw)]
    release = ca = None
    origins: list[str] = []
    base = base or Path(".")
    if data.get("release_manifest"):
        manifest_path = base / _str(data["release_manifest"], f"{where}: release_manifest")
        try:
            manifest = load_manifest(manifest_path)
        except ConfigError as exc:
            raise _fail(f"{where}: release_manifest", exc.message, exc.hint) from None
        files.extend(manifest.files)
        release, ca = manifest.release, manifest.ca_sha256
        if manifest.origin:
            origins.append(manifest.origin)
    raw_origins = data.get("expected_origin") or []
    for i, value in enumerate(raw_origins if isinstance(raw_origins, list) else [raw_origins]):
        origins.append(_url(value, f"{where}: expected_origin"
                            + (f"[{i}]" if isinstance(raw_origins, list) else "")))
    if data.get("expected_ca_sha256"):
        ca = _sha(data["expected_ca_sha256"], f"{where}: expected_ca_sha256")
    ca_file = None
    if data.get("expected_ca_file"):
        ca_file = base / _str(data["expected_ca_file"], f"{where}: expected_ca_file")
        try:
            file_sha = ca_file_sha256(ca_file)
        except ConfigError as exc:  # name the key that pointed there, as for the manifest
            raise _fail(f"{where}: expected_ca_file", exc.message, exc.hint) from None
        if ca is not None and ca != file_sha:
            raise _fail(f"{where}: expected_ca_file",
                        f"{ca_file} has SHA-256 {file_sha}, not the expected {ca}",
                        "the two must name the same root: the one the firmware trusts "
                        "(TRUST=, `trustboot ca export`'s root.pem); fix or drop one")
        ca = file_sha
    tftp_allowed = data.get("tftp_allowed", True)
    if not isinstance(tftp_allowed, bool):
        raise _fail(f"{where}: tftp_allowed", "expected true or false")
    return Policy(authorized=servers, expected_files=tuple(files), release=release,
                  origins=tuple(dict.fromkeys(origins)), ca_sha256=ca, ca_file=ca_file,
                  tftp_allowed=tftp_allowed, source=where)
