"""Follow the chain: fetch what each responder offers, as soon as it is offered.

Work starts during the listen window (a thread pool), so an audit's time beyond its window
is the slowest single transfer, not the sum. Every task has its own deadline and size cap;
results are written back in submission order, so reports are deterministic.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from trustboot.audit import tftp
from trustboot.audit.loaders import identify
from trustboot.audit.model import BootTarget, Fetched, HttpCheck, Observation, Offer, Reply6
from trustboot.audit.policy import Policy

WELL_KNOWN_PATHS = (
    "pxelinux.cfg/default", "boot.ipxe", "autoexec.ipxe", "menu.ipxe", "default.ipxe",
    "boot/grub/grub.cfg", "grub/grub.cfg", "grub.cfg", "pxelinux.0", "undionly.kpxe",
    "ipxe.efi", "snponly.efi", "bootx64.efi", "grubx64.efi", "shimx64.efi",
)
HEAD_LIMIT = 4 * 1024 * 1024


@dataclass
class FollowConfig:
    device: str | None
    timeout: float = 10.0  # per transfer
    max_size: int = 64 * 1024 * 1024
    enumerate_paths: bool = False
    probe_writes: bool = False
    max_targets: int = 64
    workers: int = 8
    well_known_max: int = 1024 * 1024


def _der_chain(tls: ssl.SSLSocket) -> list[bytes]:
    getter = getattr(tls, "get_unverified_chain", None)  # public from Python 3.13
    if getter is None:
        getter = getattr(getattr(tls, "_sslobj", None), "get_unverified_chain", None)
    if getter is None:
        der = tls.getpeercert(binary_form=True)
        return [der] if der else []
    chain = getter() or []
    return [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
            for c in chain]


def _tls_probe(check: HttpCheck, host: str, port: int, policy: Policy, timeout: float) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            check.tls_chain_sha256 = [hashlib.sha256(d).hexdigest() for d in _der_chain(tls)]
    except (OSError, ValueError) as exc:  # ValueError: a host name IDNA cannot encode
        check.tls_error = f"TLS handshake failed: {exc}"
        return
    if policy.ca_file is None:
        return
    verify = ssl.create_default_context(cafile=str(policy.ca_file))
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                verify.wrap_socket(raw, server_hostname=host):
            check.tls_verified = True
    except ssl.SSLCertVerificationError as exc:
        check.tls_verified = False
        check.tls_error = f"does not verify against {policy.ca_file.name}: {exc.verify_message}"
    except (OSError, ValueError) as exc:
        check.tls_verified = False
        check.tls_error = f"verification handshake failed: {exc}"


def http_check(url: str, *, policy: Policy, timeout: float, max_size: int) -> HttpCheck:
    """TLS chain (for https) and a bounded, hashed GET of the boot file."""
    check = HttpCheck(url)
    start = time.monotonic()
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        check.error = f"invalid URL: {exc}"
        return check
    if parts.scheme == "https":
        _tls_probe(check, host, port, policy, timeout)
    verify: Any = False
    if parts.scheme == "https" and policy.ca_file is not None and check.tls_verified:
        verify = ssl.create_default_context(cafile=str(policy.ca_file))
    digest = hashlib.sha256()
    head = bytearray()
    try:
        with httpx.Client(verify=verify, timeout=timeout, follow_redirects=False,
                          trust_env=False) as client, client.stream("GET", url) as resp:
            check.status = resp.status_code
            if resp.status_code != 200:
                where = resp.headers.get("location")
                check.error = f"HTTP {resp.status_code}" + (f" (to {where})" if where else "")
                return check
            for chunk in resp.iter_bytes(65536):
                check.size += len(chunk)
                if check.size > max_size:
                    check.truncated = True
                    check.error = f"more than {max_size} bytes"
                    return check
                if time.monotonic() - start > timeout:
                    check.error = f"took longer than {timeout:g} s"
                    return check
                digest.update(chunk)
                if len(head) < HEAD_LIMIT:
                    head += chunk[: HEAD_LIMIT - len(head)]
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        # the URL came off the wire: a host name IDNA cannot encode is evidence, not a crash
        check.error = f"{type(exc).__name__}: {exc}"
        return check
    check.ok = True
    check.sha256 = digest.hexdigest()
    check.loader = identify(bytes(head))
    return check


def _fetch_tftp(target: BootTarget, cfg: FollowConfig, *, max_size: int, timeout: float,
                well_known: bool) -> Fetched:
    result = tftp.fetch(target.server, target.path, device=cfg.device, timeout=timeout,
                        max_size=max_size, head_limit=HEAD_LIMIT, retry=min(1.0, timeout / 4))
    loader = identify(result.head) if result.size else None
    # The head (up to HEAD_LIMIT) was only needed to identify the loader; the observation
    # keeps every result to the end, so holding it would cost max_targets x 4 MiB.
    result.head = b""
    return Fetched(target, result, loader, well_known=well_known)


class Follower:
    """Schedules fetches as offers arrive; ``finish`` waits (bounded) and records results."""

    def __init__(self, cfg: FollowConfig, policy: Policy, obs: Observation) -> None:
        self.cfg = cfg
        self.policy = policy
        self.obs = obs
        self.pool = ThreadPoolExecutor(max_workers=cfg.workers,
                                       thread_name_prefix="trustboot-audit")
        self.tasks: list[tuple[str, Future[Any]]] = []
        self.done: set[str] = set()  # keys of the submitted tasks
        self.over_limit = False  # max_targets reached (noted once)
        self.servers: set[str] = set()
        self.lock = threading.Lock()

    def _submit(self, key: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        with self.lock:
            if key in self.done:
                return
            if len(self.done) >= self.cfg.max_targets:
                if not self.over_limit:
                    self.over_limit = True
                    self.obs.notes.append(
                        f"more than {self.cfg.max_targets} follow-up targets: the rest skipped")
                return
            self.done.add(key)
            self.tasks.append((key, self.pool.submit(fn, *args, **kwargs)))

    def _target(self, target: BootTarget) -> None:
        if target.scheme == "tftp":
            if not target.server_is_ip or not target.path:
                return  # the checks report it as not fetched
            self._submit(f"tftp:{target.server}:{target.path}", _fetch_tftp, target, self.cfg,
                         max_size=self.cfg.max_size, timeout=self.cfg.timeout, well_known=False)
            self._server(target.server)
        elif target.scheme in ("http", "https"):
            self._submit(f"url:{target.url}", http_check, target.url, policy=self.policy,
                         timeout=self.cfg.timeout, max_size=self.cfg.max_size)

    def _server(self, server: str) -> None:
        with self.lock:
            if server in self.servers:
                return
            self.servers.add(server)
        if self.cfg.probe_writes:
            self._submit(f"write:{server}", tftp.probe_write, server, device=self.cfg.device,
                         timeout=min(self.cfg.timeout, 5.0))
        if self.cfg.enumerate_paths:
            for path in WELL_KNOWN_PATHS:
                target = BootTarget("tftp", server, path, f"tftp://{server}/{path}")
                self._submit(f"known:{server}:{path}", _fetch_tftp, target, self.cfg,
                             max_size=self.cfg.well_known_max,
                             timeout=min(self.cfg.timeout, 3.0), well_known=True)

    def on_offer(self, offer: Offer) -> None:
        for target in offer.boot_targets():
            self._target(target)

    def on_reply6(self, reply: Reply6) -> None:
        url = reply.message.bootfile_url
        if url:
            self._target(BootTarget.from_url(url))

    def finish(self, budget: float) -> None:
        """Wait at most ``budget`` seconds for outstanding work, then record what finished."""
        end = time.monotonic() + budget
        offered = {f"tftp:{t.server}:{t.path}" for o in self.obs.offers
                   for t in o.boot_targets() if t.scheme == "tftp"}
        for key, fut in list(self.tasks):
            try:
                result = fut.result(timeout=max(0.0, end - time.monotonic()))
            except FutureTimeout:
                self.obs.notes.append(f"{key}: still running at the follow-up deadline")
                continue
            if isinstance(result, Fetched):
                if result.well_known and f"tftp:{result.target.server}:{result.target.path}" \
                        in offered:
                    continue  # the offered boot file itself, already reported as such
                if result.well_known and not result.result.size:
                    continue  # not there: nothing to report
                self.obs.fetched.append(result)
            elif isinstance(result, HttpCheck):
                self.obs.http.append(result)
            elif isinstance(result, tftp.WriteResult):
                self.obs.writes.append(result)
        self.abandon()

    def abandon(self) -> None:
        """Cancel queued work; running transfers end at their own deadlines."""
        self.pool.shutdown(wait=False, cancel_futures=True)
