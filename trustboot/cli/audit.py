"""`trustboot audit`: what a network segment would hand a booting machine."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import click

from trustboot.audit import dhcp4
from trustboot.audit.checks import Severity, threshold_reached
from trustboot.audit.follow import FollowConfig
from trustboot.audit.netif import shown
from trustboot.audit.policy import Policy, load_manifest, load_policy
from trustboot.audit.probe import ProbeConfig, parse_mac
from trustboot.audit.report import dumps, to_json, to_sarif, to_table
from trustboot.audit.runner import AuditOptions, run_audit
from trustboot.cli._common import NonEmptyPath, json_option
from trustboot.errors import AuditFindingsError, ConfigError, OperationalError
from trustboot.fsutil import atomic_write

SEVERITIES = ("info", "low", "medium", "high", "critical", "none")
DEFAULT_FAIL_ON = "high"
# at most 15 digits: a longer number is no size, and int() of thousands raises ValueError
SIZE_RE = re.compile(r"^(\d{1,15})\s*([kmg]i?b?|b)?$", re.IGNORECASE)


def _size(text: str) -> int:
    match = SIZE_RE.match(text.strip())
    if not match:
        raise ConfigError(f"--max-file-size: not a size: {text!r}", hint="e.g. 64MiB, 512k")
    unit = (match.group(2) or "b").lower()[:1]
    return int(match.group(1)) * {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]


def _arches(values: tuple[str, ...]) -> tuple[str, ...]:
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name == "all":
                names.extend(dhcp4.ARCHES)
            elif name in dhcp4.ARCHES:
                names.append(name)
            elif name:
                raise ConfigError(f"--arch: unknown architecture {name!r}",
                                  hint=f"one of {', '.join(dhcp4.ARCHES)}, all")
    return tuple(dict.fromkeys(names)) or tuple(dhcp4.ARCHES)


EPILOG = """\b
Examples (as root, on the interface facing the segment):
  trustboot audit -i eth1                                  # table; exit 5 on high/critical
  trustboot audit -i eth1 --policy segment.yaml --json     # JSON for CI
  trustboot audit -i eth1 --release-manifest release.json --sarif audit.sarif
  trustboot audit -i eth1 --passive --window 60            # listen only, send nothing
  trustboot audit -i eth1 --enumerate-tftp --probe-writes  # WRITES a file to TFTP servers
  trustboot audit -i eth1 --fail-on medium                 # or none: never exit 5

\b
Exit codes: 0 no finding at or above --fail-on, 1 the interface or a socket failed (not
root?), 3 bad option (an unknown interface too), policy or release manifest, 5 findings
at or above --fail-on.
--json prints tool, version, started, finished, beyond_window_s, summary, policy, findings
and observation (the report also comes before exit 5).
"""


@click.command("audit", epilog=EPILOG)
@click.option("--interface", "-i", required=True, metavar="IF",
              help="Network interface facing the segment to audit.")
@click.option("--policy", "policy_path", type=NonEmptyPath(path_type=Path, dir_okay=False),
              help="Policy YAML: authorized servers, expected files, origin, CA.")
@click.option("--release-manifest", "manifest_path",
              type=NonEmptyPath(path_type=Path, dir_okay=False),
              help="Release manifest JSON whose files, origin and CA are expected "
              "(adds to --policy).")
@click.option("--window", type=click.FloatRange(0.2, 600.0), default=5.0, show_default=True,
              help="Listen window in seconds (servers that ping before offering need ~3 s).")
@click.option("--arch", "arches", multiple=True, metavar="NAME[,NAME]",
              help=f"Client architectures to impersonate: {', '.join(dhcp4.ARCHES)}, all "
              "(default all).")
@click.option("--passive", is_flag=True,
              help="Send nothing: only listen to DHCP traffic for the window.")
@click.option("--no-dhcpv6", is_flag=True, help="Do not send a DHCPv6 Solicit.")
@click.option("--no-ipxe-probe", is_flag=True,
              help="Do not also ask as iPXE (user-class iPXE) to check the chainload loop.")
@click.option("--no-follow", is_flag=True, help="Do not fetch offered boot files.")
@click.option("--enumerate-tftp", is_flag=True,
              help="Also try well-known TFTP paths (pxelinux.cfg/default, boot.ipxe, ...).")
@click.option("--probe-writes", is_flag=True,
              help="Try a TFTP upload to each boot server. This WRITES a small file there.")
@click.option("--follow-timeout", type=click.FloatRange(0.5, 300.0), default=10.0,
              show_default=True,
              help="Total time allowed for each fetch; the audit ends at most this long "
              "after its window.")
@click.option("--max-file-size", default="64MiB", show_default=True,
              help="Largest boot file to fetch and hash.")
@click.option("--mac", help="Probe from this MAC instead of random ones.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "sarif"]),
              help="Output format on stdout (default table).")
@json_option
@click.option("--sarif", "sarif_path", type=NonEmptyPath(path_type=Path, dir_okay=False),
              help="Also write the findings as SARIF 2.1.0 to this file.")
@click.option("--fail-on", type=click.Choice(SEVERITIES), default=DEFAULT_FAIL_ON,
              show_default=True,
              help="Exit 5 when any finding reaches this severity ('none': never).")
def command(
    interface: str, policy_path: Path | None, manifest_path: Path | None, window: float,
    arches: tuple[str, ...], passive: bool, no_dhcpv6: bool, no_ipxe_probe: bool,
    no_follow: bool, enumerate_tftp: bool, probe_writes: bool, follow_timeout: float,
    max_file_size: str, mac: str | None, fmt: str | None, as_json: bool,
    sarif_path: Path | None, fail_on: str,
) -> None:
    """Find what a network segment exposes to a booting machine.

    Sends DHCPDISCOVERs (and a DHCPv6 Solicit) as PXE clients of each architecture from
    random MACs, collects every answer during the listen window, queries ProxyDHCP servers
    on port 4011, fetches and hashes the offered boot files, and compares everything with
    the policy. Needs root or CAP_NET_RAW.

    Exits 5 when a finding reaches --fail-on (default high), 0 otherwise. A bound the
    audit reached (a flood, too many answers, a boot file too large or too slow) is itself a
    high finding: it never reports a clean segment it could not fully see.
    """
    if as_json and fmt not in (None, "json"):
        raise ConfigError("give either --json or --format, not both")
    output = "json" if as_json else (fmt or "table")
    if passive and (probe_writes or enumerate_tftp):
        raise ConfigError("--passive sends nothing: it cannot be combined with "
                          "--probe-writes or --enumerate-tftp")
    policy = load_policy(policy_path) if policy_path is not None else Policy()
    if manifest_path is not None:
        manifest = load_manifest(manifest_path)
        policy = replace(
            policy, expected_files=policy.expected_files + manifest.files,
            release=policy.release or manifest.release,
            origins=policy.origins + ((manifest.origin,) if manifest.origin else ()),
            ca_sha256=policy.ca_sha256 or manifest.ca_sha256,
        )
    threshold = None if fail_on == "none" else Severity.parse(fail_on)
    probe = ProbeConfig(
        interface=interface, window=window, arches=_arches(arches),
        ipxe_probe=not no_ipxe_probe, dhcpv6=not no_dhcpv6, passive=passive,
        mac=parse_mac(mac) if mac else None,
    )
    follow = None
    if not no_follow and not passive:
        follow = FollowConfig(device=interface, timeout=follow_timeout,
                              max_size=_size(max_file_size), enumerate_paths=enumerate_tftp,
                              probe_writes=probe_writes)
    result = run_audit(AuditOptions(probe=probe, follow=follow), policy)
    sarif = (dumps(to_sarif(result, threshold))
             if sarif_path is not None or output == "sarif" else None)
    if sarif_path is not None:
        try:
            atomic_write(sarif_path, (f"{sarif}\n").encode())
        except OSError as exc:
            raise OperationalError(f"cannot write {sarif_path}: {exc.strerror or exc}") from None
    if output == "json":
        text = dumps(to_json(result, threshold))
    elif output == "sarif":
        text = sarif or ""
    else:
        text = to_table(result, threshold)
    # ASCII by construction (the report escapes the rest): written as bytes, so a stdout in
    # any encoding (LANG=C, PYTHONIOENCODING=latin-1) takes it
    click.echo(text.encode("ascii", "backslashreplace"))
    if threshold_reached(result.findings, threshold):
        worst = max(f.severity for f in result.findings)
        raise AuditFindingsError(
            f"audit of {shown(interface)}: {len(result.findings)} finding(s), worst {worst.label} "
            f"(fail-on {fail_on})",
            hint="see the findings above; rerun with --fail-on to change the threshold",
        )
