"""Evidence that the fleet's firmware trusts the next root, for ``ca rotate root promote``.

Promoting the next root switches signing to its chain; a machine whose firmware only trusts
the current root then stops booting new signatures. So the promote step wants proof, of
three kinds (each a :class:`FleetEvidence`, recorded in index.json, the op log and
``ca status``):

* ``build-manifest``: the manifest.json that ``trustboot ipxe build`` writes beside its
  outputs (or a release.json carrying it under ``ipxe``), read from a file. Its ``trust``
  (the TRUST= fingerprints) must list the next root, and no output's ``trust_check`` may
  say the fingerprint is missing from the binary.
* ``origin``: the release LIVE on a publish origin (the one its entry path serves), whose
  release.json is read as served, its detached signature (release.json.sig) judged with
  the CA's roots as iPXE would, and its ``ipxe`` build record checked by the same rule;
  each output of that record must be a firmware object of the release with the same sha256.
  A release without a signed manifest or without an ``ipxe`` record is not evidence.
* ``audit``: a ``trustboot audit --json`` report from one segment, which only counts next
  to at least one firmware evidence above. Every boot file the audit was OFFERED and fetched
  in full must be a firmware output (by sha256) of a build that trusts the next root:

  - counted: ``observation.fetched`` entries that are not ``well_known`` (TFTP files named
    by a DHCP/ProxyDHCP offer: option 67 / the BOOTP file field) and ``observation.http``
    entries (HTTP(S) boot URLs offered by DHCPv4 option 67 or DHCPv6 option 59);
  - not counted: scripts (``loader.script``) offered only to the iPXE probes, which the
    firmware then verifies with imgverify, and ``well_known`` files the audit guessed by
    name (nobody offered them). A "script" offered to a firmware (non-iPXE) probe or by an
    unidentified offer counts as a boot program: the firmware executes whatever it is
    offered, and a boot program can start with ``#!ipxe``;
  - refused: an offered file whose fetch failed, was cut (``truncated``/a limit) or has no
    sha256, one offered but never fetched (``observation.not_fetched``: a scheme the audit
    does not fetch such as ftp://, a TFTP server named by host name), a report that does
    not list those (an older version), a report whose audit did not follow offers
    (``--no-follow``), stopped at a bound (``summary.complete`` false), or counted no boot
    file at all.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trustboot import jsonin
from trustboot.errors import ConfigError, VerificationError
from trustboot.fsutil import read_capped
from trustboot.text import unsafe_string_at

if TYPE_CHECKING:
    from trustboot.publish.origin import Origin, OriginOptions
    from trustboot.publish.readback import Trust

MAX_MANIFEST = 4 << 20
MAX_AUDIT_REPORT = 64 << 20


@dataclass(frozen=True)
class Firmware:
    target: str
    sha256: str

    def to_json(self) -> dict[str, str]:
        return {"target": self.target, "sha256": self.sha256}


@dataclass(frozen=True)
class FleetEvidence:
    kind: str  # build-manifest | origin | audit | operator
    source: str  # a path, an origin URL (no credentials), or "operator"
    root_sha256: str  # the next root it proves trust in
    description: str
    trust: tuple[str, ...] = ()  # TRUST= fingerprints of the firmware (build/origin)
    firmware: tuple[Firmware, ...] = ()  # build outputs (build/origin); boot files (audit)
    release: str | None = None  # origin: the live release id
    segment: str | None = None  # audit: the interface the audit ran on
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "root_sha256": self.root_sha256,
                "description": self.description, "trust": list(self.trust),
                "firmware": [f.to_json() for f in self.firmware], "release": self.release,
                "segment": self.segment} | self.extra


def operator_evidence(root_sha256: str) -> FleetEvidence:
    return FleetEvidence("operator", "operator", root_sha256,
                         "the operator confirmed that the fleet's firmware trusts the next "
                         "root")


def evidence_json(value: object) -> dict[str, Any]:
    """An evidence record as stored (older CAs stored one line of text)."""
    if isinstance(value, dict):
        return value
    return {"kind": "legacy", "source": None, "description": str(value)}


def check_build_record(build: object, source: str, root_sha256: str, *,
                       kind: str = "build-manifest", release: str | None = None,
                       published: Mapping[str, str] | None = None) -> FleetEvidence:
    """The one rule for an iPXE build manifest (``ipxe build``'s manifest.json shape):
    the next root is in ``trust`` and no output's ``trust_check`` misses it. With
    ``published`` (a release's objects: key -> sha256), the record came inside that
    release: every output must be a firmware object of it with the same sha256, so a
    record cannot vouch for a binary the release does not serve."""
    if not isinstance(build, dict) or not isinstance(build.get("trust"), list):
        raise ConfigError(
            f"{source} is neither an iPXE build manifest nor a release manifest with one",
            hint="pass the manifest.json of `trustboot ipxe build` (or the release.json of "
            "a release that built its firmware)")
    # what reaches `ca status` and error messages (config_headers are multi-line text)
    where = unsafe_string_at({"trust": build["trust"], "outputs": build.get("outputs")})
    if where is not None:
        raise ConfigError(f"the iPXE build record of {source} holds control characters at "
                          f"{where}: `trustboot ipxe build` never writes them",
                          hint="pass the manifest exactly as `trustboot ipxe build` wrote it")
    trusted = sorted({str(t.get("sha256", "")).lower() for t in build["trust"]
                      if isinstance(t, dict)} - {""})
    if root_sha256 not in trusted:
        raise VerificationError(
            f"the firmware of {source} does not trust the next root (sha256 {root_sha256}): "
            "it trusts " + (", ".join(trusted) or "nothing"),
            hint="build firmware that trusts both roots (`trustboot ipxe build --pki PKI` "
            "during the rotation), deploy it, and pass its manifest",
            rule="fleet-trust")
    firmware = []
    outputs = build.get("outputs") or []
    for out in outputs if isinstance(outputs, list) else []:
        if not isinstance(out, dict):
            continue
        check = out.get("trust_check")
        found = ((check.get("trust") or {}) if isinstance(check, dict) else {}).get(root_sha256)
        if found is False:
            raise VerificationError(
                f"{out.get('target')} of {source} was built with the next root in TRUST= but "
                "its fingerprint is not in the binary",
                hint="rebuild the firmware and check the build log", rule="fleet-trust")
        sha = str(out.get("sha256", "")).lower()
        if published is not None:
            from trustboot.ipxe.build import firmware_key  # the ca commands skip ipxe's

            key = firmware_key(str(out.get("target")))
            if published.get(key) != sha:
                raise VerificationError(
                    f"the iPXE build record of {source} lists {out.get('target')} (sha256 "
                    f"{sha[:16]}), which is not the firmware object {key} of the release",
                    hint="publish the firmware with `trustboot release`, which checks the "
                    "build record against the binaries it publishes", rule="fleet-trust")
        firmware.append(Firmware(str(out.get("target")), sha))
    if published is not None and not firmware:
        raise VerificationError(
            f"the iPXE build record of {source} lists no firmware of the release, so it "
            "shows nothing about what the fleet boots", rule="fleet-trust",
            hint="publish the firmware with `trustboot release` (built or prebuilt with "
            "its build manifest)")
    targets = ", ".join(f.target for f in firmware) or "(no outputs listed)"
    where = f"{source} (release {release})" if release else source
    return FleetEvidence(kind, source, root_sha256,
                         f"{where}: firmware {targets} trusts the next root "
                         f"{root_sha256[:16]}", trust=tuple(trusted),
                         firmware=tuple(firmware), release=release)


def build_manifest_evidence(path: Path, root_sha256: str) -> FleetEvidence:
    """``--build-manifest FILE``: an ``ipxe build`` manifest.json, or a release.json
    carrying one under ``ipxe``."""
    data = read_capped(path, MAX_MANIFEST, "build manifest")
    try:
        doc = jsonin.loads(data)
    except ValueError:
        raise ConfigError(f"build manifest {path} is not JSON",
                          hint="pass the manifest.json of `trustboot ipxe build`") from None
    build = doc.get("ipxe") if isinstance(doc, dict) and "trustboot_ipxe_build" not in doc \
        else doc
    release = doc.get("release") if isinstance(doc, dict) and build is not doc else None
    published = None
    if build is not doc and isinstance(doc, dict):
        # a release.json: its record speaks only of that release's firmware objects
        files = doc.get("files")
        files = files if isinstance(files, list) else []
        published = {str(f.get("name")): str(f.get("sha256")).lower()
                     for f in files if isinstance(f, dict)}
    return check_build_record(build, str(path), root_sha256,
                              release=release if isinstance(release, str) else None,
                              published=published)


def origin_evidence(origin: Origin, root_sha256: str, *, trust: Trust, now: dt.datetime,
                    options: OriginOptions | None = None,
                    entry_path: str = "boot.ipxe") -> FleetEvidence:
    """``--from-origin URL``: the iPXE build record of the release live on ``origin``.

    The release manifest and its signature are read as served (over HTTPS with the same TLS
    rules as publish when the origin has a public URL), the signature judged with ``trust``
    (the CA's roots) at ``now``, and the manifest parsed from the very bytes judged.
    """
    # here, not at the top: the ca commands do not pay for the publish machinery
    from trustboot.publish.manifest import MANIFEST_NAME, parse_manifest, release_prefix
    from trustboot.publish.origin import redact_url
    from trustboot.publish.pipeline import (
        live_release,
        make_reader,
        read_manifests,
        verify_manifest_signature,
    )

    source = redact_url(origin.url)
    reader = make_reader(origin, trust, options)
    try:
        manifests, _problems = read_manifests(origin)
        live = live_release(origin, manifests, entry_path)
        if live is None:
            raise ConfigError(
                f"{source}: {entry_path} serves no release published there, so it shows "
                "nothing about the fleet's firmware",
                hint="publish the firmware's release first (trustboot release), or pass "
                "--entry-path when the firmware fetches another entry")
        key = release_prefix(live) + MANIFEST_NAME
        if origin.stat(key + ".sig") is None:
            raise VerificationError(
                f"{source}{key} (the live release {live}) has no signature "
                f"({MANIFEST_NAME}.sig): an unsigned manifest is not evidence",
                hint="publish the firmware with `trustboot release`, which signs the "
                "release manifest, or pass its manifest.json with --build-manifest",
                rule="manifest-signature", subject=key)
        # judged against the CA's roots, and parsed from the very bytes judged
        data = verify_manifest_signature(origin, live, trust=trust, now=now, reader=reader)
    finally:
        if reader is not None:
            reader.close()
    manifest = parse_manifest(data, source=f"{source}{key}")
    if manifest.release != live:
        raise VerificationError(f"{source}{key} names release {manifest.release!r}, "
                                f"not {live!r}", rule="manifest-release", subject=key)
    if manifest.ipxe is None:
        raise ConfigError(
            f"the live release {live} on {source} has no iPXE build record: it does not "
            "say which firmware it serves or what that firmware trusts",
            hint="publish firmware built by trustboot (`trustboot release` with a recipe "
            "that builds iPXE records its build manifest), or pass the deployed firmware's "
            "manifest.json with --build-manifest")
    return check_build_record(manifest.ipxe, source, root_sha256, kind="origin",
                              release=live,
                              published={f.name: f.sha256 for f in manifest.files})


# ---- audit reports ------------------------------------------------------------------------


def _load_report(path: Path) -> dict[str, Any]:
    data = read_capped(path, MAX_AUDIT_REPORT, "audit report")
    try:
        doc = jsonin.loads(data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("tool") != "trustboot audit" \
            or not isinstance(doc.get("observation"), dict) \
            or not isinstance(doc.get("summary"), dict):
        raise ConfigError(f"{path} is not a `trustboot audit --json` report",
                          hint="run `trustboot audit IFACE --json > report.json` on the "
                          "segment and pass that file")
    where = unsafe_string_at(doc)
    if where is not None:
        # the audit escapes every control/format character it writes: text that reaches
        # `ca status` and error messages from here must not carry terminal escapes
        raise ConfigError(f"{path} is not a `trustboot audit --json` report: the string at "
                          f"{where} holds control characters the audit never writes",
                          hint="pass the report exactly as `trustboot audit --json` wrote it")
    return doc


def _list(obs: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = obs.get(key)
    return [x for x in value if isinstance(x, dict)] if isinstance(value, list) else []


def _offers(obs: dict[str, Any], url: str, filename: str) -> list[dict[str, Any]]:
    """Every DHCPv4 offer and DHCPv6 reply in the report that names this boot file."""
    name = filename.lstrip("/")
    found = []
    for o in _list(obs, "dhcpv4"):
        offered = {str(o.get(k) or "").lstrip("/") for k in ("file", "option_67_bootfile")}
        if url in offered or (name and name in offered):
            found.append(o)
    for r in _list(obs, "dhcpv6"):
        if url in {str(v) for v in r.values() if isinstance(v, str)}:
            found.append(r)
    return found


def _offered_by(obs: dict[str, Any], url: str, filename: str) -> str:
    """Which responder offered this boot file (from the report's DHCP evidence)."""
    for o in _offers(obs, url, filename):
        if "server_ip" not in o:
            return f"DHCPv6 reply from {o.get('source_ip')}"
        probe = o.get("probe_arch")
        return (f"offer from {o.get('server_ip')} ({o.get('source_mac')})"
                + (f" to the {probe}{'+ipxe' if o.get('probe_ipxe') else ''} probe"
                   if probe else ""))
    return "offer (responder not identified in the report)"


def _loaded_by_ipxe_only(obs: dict[str, Any], url: str, filename: str) -> bool:
    """Whether only iPXE (which verifies what it loads) was ever offered this file.

    What the firmware's own PXE client is offered, it executes, whatever its first bytes:
    a boot program can start with "#!ipxe" (a BIOS NBP is raw code), so a file counts as a
    script only by its role, never by its content alone."""
    offers = _offers(obs, url, filename)
    return bool(offers) and all(o.get("probe_ipxe") is True for o in offers)


def audit_evidence(path: Path, root_sha256: str,
                   firmware_evidence: Sequence[FleetEvidence]) -> FleetEvidence:
    """``--audit-report FILE``: every boot file offered on the audited segment is firmware of
    a build that trusts the next root (see the module docstring for what counts)."""
    # only builds (from a file or an origin) say which binaries trust the root
    firmware_evidence = [e for e in firmware_evidence if e.kind in ("build-manifest", "origin")]
    if not firmware_evidence:
        raise ConfigError(
            f"--audit-report {path} needs firmware evidence to compare against",
            hint="pass the build manifests of the firmware you deployed (--build-manifest "
            "FILE or --from-origin URL) together with the audit reports")
    good = {f.sha256: (e, f) for e in firmware_evidence for f in e.firmware if f.sha256}
    doc = _load_report(path)
    obs = doc["observation"]
    segment = str(obs.get("interface") or "?")
    where = f"audit report {path} (segment {segment})"
    if obs.get("followed") is False or doc["summary"].get("complete") is False:
        limits = doc["summary"].get("limits") or {}
        raise VerificationError(
            f"{where} did not examine the whole segment"
            + (f" (limits reached: {', '.join(sorted(map(str, limits)))})" if limits else ""),
            hint="run the audit again (without --no-follow, with a larger --max-file-size or "
            "--follow-timeout if a boot file was cut) and pass the new report",
            rule="fleet-audit", subject=str(path))
    if not isinstance(obs.get("not_fetched"), list):
        raise VerificationError(
            f"{where} does not list the boot files it was offered but did not fetch (a "
            "report from an older trustboot), so a boot file it never examined would go "
            "uncounted", hint="audit the segment again with this version and pass the new "
            "report", rule="fleet-audit", subject=str(path))
    for skipped in _list(obs, "not_fetched"):
        url = str(skipped.get("url") or "?")
        raise VerificationError(
            f"{where}: the boot file {url} ({_offered_by(obs, url, '')}) was offered but "
            f"not fetched ({skipped.get('reason') or 'no reason given'}), so the audit does "
            "not show what firmware machines there boot",
            hint="offer the firmware over TFTP from an IP address or over HTTP(S), which "
            "the audit fetches, and audit the segment again", rule="fleet-audit",
            subject=url)
    entries = [e for e in _list(obs, "fetched") if not e.get("well_known")]
    entries += _list(obs, "http")
    booted: list[Firmware] = []
    for entry in entries:
        url = str(entry.get("url") or "?")
        loader = entry.get("loader") if isinstance(entry.get("loader"), dict) else None
        if loader is not None and loader.get("script") \
                and _loaded_by_ipxe_only(obs, url, str(entry.get("filename") or "")):
            continue  # a script iPXE loads is verified by it (imgverify), not firmware
        offer = _offered_by(obs, url, str(entry.get("filename") or ""))
        sha = entry.get("sha256")
        if not entry.get("ok") or entry.get("truncated") or entry.get("limit") \
                or not isinstance(sha, str):
            why = entry.get("error") or entry.get("refused") or entry.get("limit") or (
                "cut short" if entry.get("truncated") else "not hashed")
            raise VerificationError(
                f"{where}: the boot file {url} ({offer}) was not fetched in full ({why}), so "
                "the audit does not show what firmware it is",
                hint="fix the fetch (or raise --max-file-size / --follow-timeout) and audit "
                "the segment again", rule="fleet-audit", subject=url)
        sha = sha.lower()
        if sha not in good:
            raise VerificationError(
                f"{where}: the boot file {url} ({offer}, sha256 {sha}) is not firmware of a "
                "build that trusts the next root: machines on this segment boot firmware "
                f"that does not trust {root_sha256[:16]}",
                hint="deploy the firmware built with both roots to this segment's boot "
                "server (or pass the build manifest of the firmware it serves, if that "
                "trusts the next root) and audit again",
                rule="fleet-audit", subject=url)
        booted.append(Firmware(url, sha))
    if not booted:
        raise VerificationError(
            f"{where} fetched no boot firmware: it shows nothing about what the machines "
            "there boot",
            hint="run the audit on the segment while its boot server answers (actively, "
            "following offers) and pass the new report", rule="fleet-audit",
            subject=str(path))
    matched = sorted({good[f.sha256][1].target for f in booted})
    return FleetEvidence(
        "audit", str(path), root_sha256,
        f"{where}: {len(booted)} offered boot file(s) are firmware {', '.join(matched)} "
        f"that trusts the next root {root_sha256[:16]}",
        firmware=tuple(booted), segment=segment,
        extra={"audit_started": doc.get("started")})
