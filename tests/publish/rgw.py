"""A real Ceph RGW (S3) on loopback, started once per test session.

Usage from a test module::

    from tests.publish.rgw import RGW, rgw  # noqa: F401  (the fixture)

    def test_x(rgw: RGW) -> None:
        s3 = rgw.client()  # or S3Origin with endpoint_url=rgw.endpoint, ca_file=rgw.ca_file

One mon, one memstore OSD (data in RAM, capped), no mgr, auth none, everything in a private
temp directory on free 127.0.0.1 ports; radosgw's beast frontend serves HTTPS with the
server certificate of the publish tests' pki (conftest ``pki``: made by trustboot's own
``ca init`` / ``ca issue server``), so the same root verifies TLS and signatures.
The settings that make it start fast (``paxos propose interval``) and not hang (``ms mon
client mode = crc``) are the ones in shared/DESIGN.md. Measured here: about 2 s from an
empty directory to a created S3 user on an idle machine, about 5 s at a load average of 28
(most of it the Python ``ceph`` CLI starting and radosgw creating its pools).

The fixture is shared through a module-level cache, so importing it into several test
modules still starts one cluster per session; the daemons are stopped by PID (TERM rgw, osd,
mon; KILL after a grace period) when the session ends, on a failed start, and at exit.
Nothing here needs root; it skips with a reason when the Ceph binaries are missing.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tests.procs import stop_process
from tests.publish.conftest import KEY_PASS, Pki
from trustboot import secrets as tb_secrets
from trustboot.fsutil import write_private_file
from trustboot.keys import keyfile

# binary -> Debian package, for the skip reason
BINARIES = {"monmaptool": "ceph-mon", "ceph-mon": "ceph-mon", "ceph-osd": "ceph-osd",
            "ceph": "ceph-common", "radosgw": "radosgw", "radosgw-admin": "radosgw"}
START_TIMEOUT = 60.0  # the whole start-up, generously: CI machines are slow and shared
MEMSTORE_BYTES = 512 << 20  # the OSD keeps every object in RAM: cap it
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


class RGWStartError(RuntimeError):
    pass


@dataclass
class RGW:
    """A running cluster: what a test needs to talk S3 to it."""

    endpoint: str  # https://127.0.0.1:PORT (server cert has localhost and 127.0.0.1)
    http_endpoint: str  # plain HTTP on another port, for --unsafe-http tests
    access_key: str
    secret_key: str
    ca_file: Path  # the test CA's root (trustboot's ca.crt)
    pki: Path  # the trustboot pki whose server certificate radosgw presents
    directory: Path
    startup_seconds: float
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def admin(self, *args: str, timeout: float = 30.0) -> str:
        """Run ``radosgw-admin ARGS`` against this cluster; its stdout."""
        return _run(["radosgw-admin", "-c", str(self.directory / "ceph.conf"), *args],
                    timeout=timeout)

    def create_user(self, uid: str) -> tuple[str, str]:
        """A new S3 user; returns (access key, secret key)."""
        access, secret = _new_keys()
        self.admin("user", "create", f"--uid={uid}", f"--display-name={uid}",
                   f"--access-key={access}", f"--secret-key={secret}")
        return access, secret

    def client(self) -> Any:
        """An admin boto3 S3 client (path-style, checksums only when required, test CA)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, verify=str(self.ca_file), region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(request_checksum_calculation="when_required",
                          response_checksum_validation="when_required",
                          s3={"addressing_style": "path"}))

    def stop(self) -> None:
        _stop(self.procs)


def _new_keys() -> tuple[str, str]:
    alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    access = "".join(secrets.choice(alnum) for _ in range(20))
    return access, secrets.token_urlsafe(30)[:40]


def anon_get(url: str, ca_file: Path) -> tuple[int, dict[str, str], bytes]:
    """An anonymous GET, the way a booting client fetches: (status, headers, body)."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), b""


def release_origin(rgw: RGW, bucket: str, env: str, monkeypatch: pytest.MonkeyPatch
                   ) -> tuple[str, str]:
    """A new bucket for a release lab (tests.release.lab.make_lab) and the store's
    credentials in the environment variable ``env`` (TRUSTBOOT_*, bound to the bucket and
    the endpoint, as a recipe's credentials must be): (the recipe's origin URL, its extra
    origin keys)."""
    rgw.client().create_bucket(Bucket=bucket)
    monkeypatch.setenv(env, f"s3://{bucket}/boot {rgw.endpoint} "
                            f"{rgw.access_key}:{rgw.secret_key}")
    return f"s3://{bucket}/boot", (f", endpoint: '{rgw.endpoint}', public_url: "
                                   f"'{rgw.endpoint}/{bucket}/boot/', credentials: {{env: {env}}}")


def missing_binaries() -> list[str]:
    return [f"{b} (Debian package {p})" for b, p in BINARIES.items() if shutil.which(b) is None]


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _run(cmd: Sequence[str], *, timeout: float) -> str:
    r = subprocess.run(list(cmd), env=_ENV, capture_output=True, timeout=timeout, check=False)
    if r.returncode != 0:
        raise RGWStartError(f"{' '.join(cmd[:1])} {' '.join(cmd[3:6])} failed ({r.returncode}): "
                            f"{(r.stderr or r.stdout).decode(errors='replace')[-2000:]}")
    return r.stdout.decode()


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """TERM rgw, osd, mon (in that order) by PID; KILL what does not exit in time."""
    for name in ("rgw", "osd", "mon"):
        proc = procs.pop(name, None)
        if proc is not None:
            stop_process(proc)


def server_tls(pki: Path, name: str, key_passphrase: bytes,
               directory: Path) -> tuple[Path, Path]:
    """radosgw's TLS files from the pki's server certificate NAME: (chain, plain key).

    The chain is leaf + issuing CA (clients, iPXE too, trust only the root); radosgw needs
    the key unencrypted, so it goes into a 0600 file in the fixture's private directory.
    """
    key = keyfile.load_key(pki / "private" / f"{name}.key", tb_secrets.constant(key_passphrase),
                           f"the {name} server key")
    plain = directory / "rgw.key"
    write_private_file(plain, key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    chain = directory / "rgw-chain.pem"
    chain.write_bytes((pki / "issued" / f"{name}.crt").read_bytes()
                      + (pki / "issuing-ca.crt").read_bytes())
    return chain, plain


def _conf(d: Path, fsid: str, mon: int, http: int, https: int, cert: Path, key: Path) -> str:
    return f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon}
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms mon client mode = crc
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
run dir = {d}/run
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/log/$name.log
keyring = {d}/keyring
mon data = {d}/mon/$id
osd data = {d}/osd/$id
osd objectstore = memstore
memstore device bytes = {MEMSTORE_BYTES}
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon warn on pool no redundancy = false
mon allow pool size one = true
paxos propose interval = 0.05
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{http} ssl_endpoint=127.0.0.1:{https} \
ssl_certificate={cert} ssl_private_key={key}
rgw dns name = localhost
rgw thread pool size = 32
"""


def _die_with_parent() -> None:
    """In the child: get SIGTERM if pytest itself dies (even by SIGKILL), so no daemon
    outlives the session; Linux only, harmless where it is missing."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _spawn(d: Path, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
    with open(d / "log" / f"{name}.out", "wb") as out:
        # Our own child (not a shell's): we wait() on it, so no zombie and a stop by PID.
        return subprocess.Popen(cmd, env=_ENV, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=d,
                                preexec_fn=_die_with_parent)


def _log_tail(d: Path, name: str) -> str:
    parts = []
    for f in (d / "log" / f"{name}.out", *sorted((d / "log").glob(f"*{name}*.log"))):
        with contextlib.suppress(OSError):
            parts.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-1500:])
    return "\n".join(parts)


def _check_alive(d: Path, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for name, proc in procs.items():
        if proc.poll() is not None:
            raise RGWStartError(f"{name} exited with {proc.returncode} during start-up\n"
                                + _log_tail(d, name))


def _https_ready(port: int, ca_file: Path) -> bool:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.settimeout(2)
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            return tls.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _poll(what: str, deadline: float, d: Path, procs: dict[str, subprocess.Popen[bytes]],
          attempt: Callable[[], bool]) -> None:
    """Call ``attempt`` until it returns true; bounded by ``deadline``, fails fast on a death."""
    delay = 0.02
    while True:
        _check_alive(d, procs)
        if attempt():
            return
        if time.monotonic() > deadline:
            raise RGWStartError(f"timed out waiting for {what}\n" + _log_tail(d, "rgw"))
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def start_rgw(directory: Path, pki: Path, server_name: str, key_passphrase: bytes) -> RGW:
    """Start mon, OSD and radosgw in ``directory`` (private, empty), serving HTTPS with the
    pki's server certificate ``server_name`` (needs 127.0.0.1 among its names)."""
    t0 = time.monotonic()
    deadline = t0 + START_TIMEOUT
    d = directory
    d.mkdir(mode=0o700, parents=True, exist_ok=True)  # holds the unencrypted TLS key
    for sub in ("run", "log", "mon", "osd/0"):
        (d / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_file = pki / "ca.crt"
    cert, key = server_tls(pki, server_name, key_passphrase, d)
    mon_port, http_port, https_port = _free_ports(3)
    fsid = str(uuid.uuid4())
    conf = d / "ceph.conf"
    conf.write_text(_conf(d, fsid, mon_port, http_port, https_port, cert, key))
    c = ["-c", str(conf)]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        _run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a",
              f"[v2:127.0.0.1:{mon_port}]", str(d / "monmap")], timeout=30)
        _run(["ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(d / "monmap")], timeout=30)
        procs["mon"] = _spawn(d, "mon", ["ceph-mon", *c, "-i", "a", "-f"])
        osd_uuid = str(uuid.uuid4())

        def osd_new() -> bool:
            r = subprocess.run(["ceph", *c, "--connect-timeout", "5", "osd", "new", osd_uuid],
                               env=_ENV, capture_output=True, timeout=30, check=False)
            return r.returncode == 0 and r.stdout.strip() == b"0"

        _poll("the monitor (ceph osd new)", deadline, d, procs, osd_new)
        _run(["ceph-osd", *c, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid], timeout=30)
        procs["osd"] = _spawn(d, "osd", ["ceph-osd", *c, "-i", "0", "-f"])
        procs["rgw"] = _spawn(d, "rgw", ["radosgw", *c, "-n", "client.rgw.a", "-f"])
        _poll(f"radosgw HTTPS on 127.0.0.1:{https_port}", deadline, d, procs,
              lambda: _https_ready(https_port, ca_file))
        access, secret = _new_keys()
        _run(["radosgw-admin", *c, "user", "create", "--uid=trustboot-test",
              "--display-name=trustboot test", f"--access-key={access}",
              f"--secret-key={secret}"], timeout=30)
    except BaseException:
        _stop(procs)
        raise
    return RGW(endpoint=f"https://127.0.0.1:{https_port}",
               http_endpoint=f"http://127.0.0.1:{http_port}", access_key=access,
               secret_key=secret, ca_file=ca_file, pki=pki, directory=d,
               startup_seconds=time.monotonic() - t0, procs=procs)


_CLUSTER: RGW | None = None
_FAILED: str | None = None


def _shutdown() -> None:
    global _CLUSTER
    if _CLUSTER is not None:
        _CLUSTER.stop()
        shutil.rmtree(_CLUSTER.directory, ignore_errors=True)
        _CLUSTER = None


@pytest.fixture(scope="session")
def rgw(request: pytest.FixtureRequest) -> Iterator[RGW]:
    """The session's RGW; started on first use, stopped at the end of the session.

    It presents the publish tests' pki server certificate (127.0.0.1, localhost, 10.0.2.2),
    so one root serves for TLS and code signing, as in iPXE: a firmware built from that pki
    boots from this store under QEMU."""
    global _CLUSTER, _FAILED
    missing = missing_binaries()
    if missing:  # before the pki is built for nothing
        pytest.skip("Ceph RGW fixture needs " + ", ".join(missing) + "; .ci/setup installs "
                    "radosgw ceph-mon ceph-osd")
    pki: Pki = request.getfixturevalue("pki")
    if _FAILED is not None:
        pytest.fail(f"the RGW fixture failed to start earlier: {_FAILED}")
    if _CLUSTER is None:
        for attempt in range(3):
            directory = Path(tempfile.mkdtemp(prefix=f"trustboot-rgw-{os.getpid()}-"))
            try:
                _CLUSTER = start_rgw(directory, pki.dir, "origin", KEY_PASS.encode())
                break
            except (RGWStartError, subprocess.TimeoutExpired) as exc:
                shutil.rmtree(directory, ignore_errors=True)
                # a port taken between our probe and the daemon's bind: new ports, again
                if attempt == 2 or "exited" not in str(exc):
                    _FAILED = str(exc).splitlines()[0]
                    raise
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
        request.config.add_cleanup(_shutdown)
    assert _CLUSTER is not None
    yield _CLUSTER


atexit.register(_shutdown)  # a session that dies without pytest's cleanup still stops them
