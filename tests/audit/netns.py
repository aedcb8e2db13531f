"""A network segment of namespaces with real boot servers, for the audit's tests and bench.

A bridge lives in its own namespace; each host is a namespace with ``eth0`` on that bridge,
a fixed MAC (02:74:62:00:00:NN) and addresses 192.0.2.NN/24 and 2001:db8::NN/64 (the
documentation ranges, never routed). Every name carries a per-run prefix. ``close()``
terminates the processes it started (by their own PID) and deletes its namespaces; use the
segment as a context manager or from a fixture finalizer so that happens on failure too.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.procs import stop_processes

REPO = Path(__file__).resolve().parents[2]
SERVERS = Path(__file__).resolve().parent / "servers.py"


def missing_tools() -> str | None:
    """Why namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, raw sockets); CI runs as root"
    for tool, package in (("ip", "iproute2"), ("dnsmasq", "dnsmasq-base")):
        if shutil.which(tool) is None:
            return f"needs {tool} (Debian package {package}); .ci/run installs it"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def mac_for(index: int) -> str:
    return f"02:74:62:00:00:{index:02x}"


@dataclass
class Host:
    role: str
    ns: str
    index: int

    @property
    def mac(self) -> str:
        return mac_for(self.index)

    @property
    def ipv4(self) -> str:
        return f"192.0.2.{self.index}"

    @property
    def ipv6(self) -> str:
        return f"2001:db8::{self.index:x}"

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]


@dataclass
class AuditRun:
    returncode: int
    stdout: str
    stderr: str
    wall: float

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.stdout)
        return data

    def findings(self, rule: str | None = None) -> list[dict[str, Any]]:
        return [f for f in self.json["findings"] if rule is None or f["id"] == rule]


@dataclass
class Segment:
    workdir: Path
    prefix: str = field(default_factory=lambda: f"tb{secrets.token_hex(3)}")
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bridge_ns = f"{self.prefix}-br"
        self._add_ns(self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, role: str, index: int, *, ipv4: bool = True, ipv6: bool = False) -> Host:
        host = Host(role, f"{self.prefix}-{role}", index)
        self._add_ns(host.ns)
        port = f"v{index}"
        _ip("-n", self.bridge_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0",
            "netns", host.ns)
        _ip("-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
        _ip("-n", host.ns, "link", "set", "eth0", "address", host.mac)
        _ip("-n", host.ns, "link", "set", "eth0", "up")
        if ipv4:
            _ip("-n", host.ns, "addr", "add", f"{host.ipv4}/24", "dev", "eth0")
        if ipv6:
            _ip("-n", host.ns, "addr", "add", f"{host.ipv6}/64", "dev", "eth0", "nodad")
        self.hosts[role] = host
        return host

    def _start(self, host: Host, argv: list[str], *, log: Path,
               ready: str | None = None) -> subprocess.Popen[bytes]:
        out = open(log, "ab")
        proc = subprocess.Popen(host.argv(argv), stdout=subprocess.PIPE if ready else out,
                                stderr=out, cwd=REPO)
        self.procs.append(proc)
        out.close()
        if ready is not None:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode().strip()
            if line != ready:
                raise RuntimeError(f"{argv[0]} in {host.ns} did not start: {log.read_text()}")
        return proc

    def start_dnsmasq(self, host: Host, *args: str) -> Path:
        """dnsmasq in the foreground, DNS off, no ping before offers; returns its log path."""
        name = f"dnsmasq-{host.role}"
        log = self.workdir / f"{name}.log"
        argv = [
            "dnsmasq", "--conf-file=/dev/null", "--keep-in-foreground", "--port=0",
            f"--pid-file={self.workdir / (name + '.pid')}", "--interface=eth0",
            "--bind-interfaces", "--no-ping", "--user=root", "--group=root",
            f"--dhcp-leasefile={self.workdir / (name + '.leases')}", "--log-dhcp",
            f"--log-facility={log}", *args,
        ]
        proc = self._start(host, argv, log=self.workdir / f"{name}.stderr")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"dnsmasq in {host.ns} exited {proc.returncode}: "
                    f"{(self.workdir / f'{name}.stderr').read_text()}")
            if log.exists() and "started" in log.read_text():
                return log
            time.sleep(0.05)
        raise RuntimeError(f"dnsmasq in {host.ns} did not start")

    def start_server(self, host: Host, mode: str, *args: str) -> None:
        self._start(host, [sys.executable, str(SERVERS), mode, *args],
                    log=self.workdir / f"{mode}-{host.role}.log", ready="ready")

    def audit(self, host: Host, *args: str, timeout: float = 120,
              env: dict[str, str] | None = None) -> AuditRun:
        argv = [sys.executable, "-m", "trustboot", "audit", "--interface", "eth0", *args]
        env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="100", **(env or {}))
        start = time.monotonic()
        proc = subprocess.run(host.argv(argv), capture_output=True, text=True, cwd=REPO,
                              env=env, timeout=timeout)
        return AuditRun(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)

    def close(self) -> None:
        stop_processes(self.procs, 5)
        for proc in self.procs:
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs.clear()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.namespaces.clear()
