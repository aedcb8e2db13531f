"""Follow the chain: fetch what each responder offers, as soon as it is offered.

Work starts during the listen window (daemon worker threads), so an audit's time beyond its
window is the slowest single transfer, not the sum. Every fetch has one total deadline (not
a per-read timeout) that never passes the audit's own follow-up deadline; a worker still
stuck in a drip-fed transfer at that point is abandoned (daemon threads never keep the
process alive) and reported as a reached limit. Results are written back in submission
order, so reports are deterministic.

Fetches leave through the audited interface only (SO_BINDTODEVICE), and never go to the
auditor's own host: a boot URL whose host is (in any spelling) or resolves to a loopback,
link-local, unspecified or multicast address, or to one of this host's addresses, is
refused and reported instead.

A boot URL's host is found as the booting client finds it (``find_host``): a literal
address with no lookup, a name through the DNS servers of the offer that named the URL,
asked from the audited interface within the fetch's deadline (trustboot.audit.dns). This
host's resolver is never used: a rogue on the segment must not make the auditor query its
management network's DNS for names the rogue chooses, and its answer is not the client's.
"""

from __future__ import annotations

import hashlib
import ipaddress
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from trustboot.audit import dns, tftp
from trustboot.audit.loaders import identify
from trustboot.audit.model import (
    BootTarget,
    Fetched,
    HttpCheck,
    Malformed,
    Observation,
    Offer,
    Reply6,
)
from trustboot.audit.netif import device_name, interface_ipv4
from trustboot.audit.policy import Policy
from trustboot.audit.probe import (
    MALFORMED_PER_SENDER,
    MAX_MALFORMED,
    forbidden_address,
    own_addresses,
)
from trustboot.audit.text import clean
from trustboot.errors import find_in_chain

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


@dataclass
class Found:
    """Where a boot URL's host leads: the addresses to vet and connect to, or why not."""

    addresses: list[str] = field(default_factory=list)
    lookups: list[dns.Lookup] = field(default_factory=list)
    refusal: str | None = None  # a local/forbidden target: reported, never connected to
    error: str | None = None  # could not be resolved (as a client could not)
    late: bool = False  # the lookup ran out of time: a reached limit


def find_host(host: str, nameservers: dns.Nameservers | None, own: set[str] | frozenset[str],
              *, device: str | None, source: str | None, deadline: float) -> Found:
    """The addresses a client would connect to for ``host``, found as it finds them.

    A literal address is read as iPXE reads it, with no lookup. A name is asked of the DNS
    servers the offer naming the URL gave (``nameservers``), from the audited interface,
    by ``deadline``; never of this host's resolver. Every address is vetted with
    ``forbidden_address``, and so is each offered DNS server before it is asked."""
    literal = dns.literal_addresses(host)
    if literal is not None:
        return _vetted(host, literal, own, "")
    spelled = dns.c_library_ipv4(host)
    if spelled is not None and forbidden_address(spelled, own) is not None:
        # iPXE looks "127.1" up as a name, the C library's readers connect to 127.0.0.1
        return Found(refusal=f"{host} is {spelled} ({forbidden_address(spelled, own)}) as "
                     "the C library reads it")
    if nameservers is None or not nameservers.servers:
        where = nameservers.option if nameservers is not None else \
            "DHCPv4 option 6 or DHCPv6 option 23"
        return Found(error=f"{host} is a host name and the offer gave no DNS server "
                     f"({where}): a client could not resolve it either")
    usable = tuple(s for s in nameservers.servers if _unaskable(s, nameservers, own) is None)
    if not usable:
        first = nameservers.servers[0]
        return Found(refusal=f"{host} would be resolved by the offered DNS server {first} "
                     f"({_unaskable(first, nameservers, own)}), which the audit does not "
                     "query")
    lookups = dns.resolve(host, dns.Nameservers(usable, nameservers.family,
                                                nameservers.option),
                          device=device, source=source, deadline=deadline)
    answered = next((q for q in lookups if q.addresses), None)
    if answered is None:
        reasons = "; ".join(f"{q.server} ({q.error or 'no address'})" for q in lookups)
        servers = "server" if len(lookups) == 1 else "servers"
        return Found(lookups=lookups, late=time.monotonic() >= deadline,
                     error=f"{host} could not be resolved with the offered DNS {servers} "
                     f"{reasons}")
    return _vetted(host, answered.addresses, own, f" as DNS server {answered.server} answered",
                   lookups)


def _unaskable(server: str, nameservers: dns.Nameservers,
               own: set[str] | frozenset[str]) -> str | None:
    """Why the audit does not ask the offered DNS server ``server``, or None.

    An IPv6 link-local server from DHCPv6 is asked: it is a neighbour on the audited link,
    as the DHCPv6 server answering from its own link-local address is, and a normal value
    of option 23 (routers offer themselves so); iPXE asks it on the interface it boots from
    (its fe80::/10 route). Only IPv6 and only from DHCPv6: 169.254.0.0/16 stays refused (a
    cloud metadata range), and so does any address of the auditing host."""
    why = forbidden_address(server, own)
    if why == "link-local" and nameservers.family == 6 and dns.is_ipv6_link_local(server):
        local = str(ipaddress.IPv6Address(server.split("%", 1)[0]))
        return "an address of the auditing host" if local in own else None
    return why


def _vetted(host: str, addresses: list[str], own: set[str] | frozenset[str], how: str,
            lookups: list[dns.Lookup] | None = None) -> Found:
    """Every address is vetted, not only the first: the connection may go to any."""
    found = Found(addresses, lookups or [])
    for address in addresses:
        why = forbidden_address(address, own)
        if why is not None:
            found.refusal = f"{host} is {address} ({why}){how}"
            break
    return found


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


def _connect(address: str, port: int, device: str | None, deadline: float) -> socket.socket:
    """A TCP connection from the audited interface; every operation bounded by ``deadline``."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if device:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device_name(device))
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _verifying_context(ca_file: Path) -> ssl.SSLContext:
    """Trust exactly the policy's CA file, with the same checks on every Python and as the
    publish read-back and `origin check` make them. From 3.13 ``ssl.create_default_context``
    adds X509_STRICT (which iPXE does not apply: an origin it boots from would be reported
    as failing the CA check) and PARTIAL_CHAIN, so the verdict depended on the interpreter."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # certificate and host name required
    ctx.verify_flags &= ~(ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN)
    ctx.load_verify_locations(cafile=str(ca_file))
    return ctx


def _unverified_context() -> ssl.SSLContext:
    """A client context that takes any certificate: the chain is only recorded."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _tls_probe(check: HttpCheck, host: str, address: str, port: int, policy: Policy,
               device: str | None, deadline: float) -> None:
    ctx = _unverified_context()
    try:
        with _connect(address, port, device, deadline) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            check.tls_chain_sha256 = [hashlib.sha256(d).hexdigest() for d in _der_chain(tls)]
    except (OSError, ValueError) as exc:  # ValueError: a host name IDNA cannot encode
        check.tls_error = f"TLS handshake failed: {exc}"
        return
    if policy.ca_file is None:
        return
    verify = _verifying_context(policy.ca_file)
    try:
        with _connect(address, port, device, deadline) as raw, \
                verify.wrap_socket(raw, server_hostname=host):
            check.tls_verified = True
    except ssl.SSLCertVerificationError as exc:
        check.tls_verified = False
        check.tls_error = f"does not verify against {policy.ca_file.name}: {exc.verify_message}"
    except (OSError, ValueError) as exc:
        check.tls_verified = False
        check.tls_error = f"verification handshake failed: {exc}"


def http_check(url: str, *, policy: Policy, timeout: float, max_size: int,
               device: str | None = None, deadline: float | None = None,
               own: set[str] | frozenset[str] = frozenset(),
               nameservers: dns.Nameservers | None = None,
               source: str | None = None, partial: Partial | None = None) -> HttpCheck:
    """TLS chain (for https) and a bounded, hashed GET of the boot file.

    The host is found as a client finds it (``find_host``): a literal address as is, a
    name through ``nameservers`` (the offer's DNS servers) from ``device`` and ``source``.
    One total deadline covers resolving, both TLS handshakes and the transfer. The body is
    read as sent (``Accept-Encoding: identity``, never decoded): iPXE treats an unknown
    Content-Encoding as identity, so the raw bytes are what a client would boot, and no
    compressed "bomb" can expand here; an encoded answer is recorded as such.

    The result, hash included, is handed to ``partial`` before the file is classified, so a
    classification still running at the follow-up deadline never loses the hash.
    """
    # here: most audits fetch nothing over HTTP, and httpx costs start-up time
    import httpx

    from trustboot.audit.rawhead import HeadBackend, ipxe_status_location
    from trustboot.publish.deadline import deadline_at
    from trustboot.publish.http import DeadlineTransport

    check = HttpCheck(url)
    end = time.monotonic() + timeout
    end = min(end, deadline) if deadline is not None else end
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        check.error = f"invalid URL: {exc}"
        return check
    found = find_host(host, nameservers, own, device=device, source=source, deadline=end)
    check.dns = found.lookups
    if found.refusal is not None:
        check.refused = found.refusal
        check.error = f"not fetched: {found.refusal}"
        return check
    if found.error is not None:
        check.error = f"not fetched: {found.error}"
        if found.late:
            check.limit = "fetch-deadline"
        return check
    address = check.address = found.addresses[0]
    if parts.scheme == "https":
        _tls_probe(check, host, address, port, policy, device, end)
    if parts.scheme == "https" and policy.ca_file is not None and check.tls_verified:
        ctx = _verifying_context(policy.ca_file)
    else:
        ctx = _unverified_context()
    # connect to the vetted address (no second lookup a DNS answer could change), with the
    # original name in Host and SNI
    literal = f"[{address}]" if ":" in address else address
    target = urlunsplit((parts.scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
    netloc = parts.netloc.rsplit("@", 1)[-1]
    options = ([(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device_name(device))]
               if device else None)
    digest = hashlib.sha256()
    head = bytearray()
    backend = HeadBackend()  # the response head as read, for when httpx refuses it
    # every socket operation of the fetch gets at most what is left until ``end`` (the
    # transport's network backend): a server sending a byte just before each read would
    # time out outlasts any per-read timeout, not the total deadline; no thread watches it
    try:
        with deadline_at(end), \
                httpx.Client(transport=DeadlineTransport(ctx, max_connections=1,
                                                         socket_options=options,
                                                         proxies=False,
                                                         backend=backend),
                             timeout=max(0.01, end - time.monotonic()),
                             follow_redirects=False, trust_env=False) as client, \
                client.stream("GET", target,
                              headers={"Host": netloc, "Accept-Encoding": "identity"},
                              extensions={"sni_hostname": host}) as resp:
            check.status = resp.status_code
            encoding = resp.headers.get("content-encoding", "").strip()
            if encoding and encoding.lower() != "identity":
                check.content_encoding = clean(encoding, limit=64)
            if resp.status_code != 200:
                where = resp.headers.get("location")
                check.error = f"HTTP {resp.status_code}"
                if where:  # a redirect is not followed; its target is evidence, cut
                    check.location = clean(where, limit=256)
                    check.error += " (a redirect, not followed)"
                return check
            for chunk in resp.iter_raw():  # as it arrives, each read within the deadline
                if check.size + len(chunk) > max_size:
                    check.size = max_size
                    check.truncated = True
                    check.limit = "size-cap"
                    check.error = f"more than {max_size} bytes"
                    return check
                check.size += len(chunk)
                digest.update(chunk)
                if len(head) < HEAD_LIMIT:
                    head += chunk[: HEAD_LIMIT - len(head)]
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        if isinstance(exc, httpx.TimeoutException) or (
                isinstance(exc, httpx.TransportError) and time.monotonic() >= end):
            return _past_deadline(check, timeout)
        # the URL came off the wire: a host name IDNA cannot encode is evidence, not a crash
        check.error = f"{type(exc).__name__}: {exc}"
        read = ipxe_status_location(bytes(backend.kept)) \
            if isinstance(exc, httpx.RemoteProtocolError) else None
        if read is not None and read[1] is not None and not 200 <= read[0] < 300:
            # a redirect httpx refuses (a CR, ESC or NUL in its Location) that iPXE follows:
            # where it points is the evidence, escaped at the report boundary
            check.status = read[0]
            check.location = clean(_header_text(read[1]), limit=256)
            # (h11 also refuses other header lines iPXE reads leniently: say only that)
            check.error = (f"HTTP {read[0]} (a redirect, not followed; its response head is "
                           "malformed, which httpx refuses and iPXE reads leniently)")
            return check
        refused = find_in_chain(exc, ssl.SSLCertVerificationError)
        if refused is not None:  # the probe's chain verified, this connection's did not
            check.tls_verified = False
            check.tls_error = (f"the connection that fetched the file does not verify against "
                               f"{policy.ca_file.name if policy.ca_file else 'the CA'}: "
                               f"{refused.verify_message}")
        return check
    check.ok = True
    check.sha256 = digest.hexdigest()
    if partial is not None:
        partial.publish(check)
    loader = identify(bytes(head))
    if partial is None or partial.settle():
        check.loader = loader
    return check


def _header_text(value: bytes) -> str:
    """A header value as httpx decodes one: UTF-8 when it is, else one character a byte."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _http_target(target: BootTarget, **kwargs: Any) -> HttpCheck:
    """``http_check`` of the URL a client requests, reported under the offered URL's text
    (what the offer and the findings name it)."""
    check = http_check(target.wire_url, **kwargs)
    check.url = target.url
    return check


def _past_deadline(check: HttpCheck, timeout: float) -> HttpCheck:
    check.limit = "fetch-deadline"
    check.error = f"took longer than {timeout:g} s"
    return check


def _fetch_tftp(target: BootTarget, cfg: FollowConfig, *, max_size: int, timeout: float,
                well_known: bool, deadline: float | None = None,
                partial: Partial | None = None) -> Fetched:
    if deadline is not None:
        timeout = max(0.01, min(timeout, deadline - time.monotonic()))
    # the name as the client sends it (bytes unescaped), carried as text through fetch;
    # the result shows it escaped, as the rest of the report does
    result = tftp.fetch(target.server, tftp.wire_text(target.wire_name), device=cfg.device,
                        timeout=timeout, max_size=max_size, head_limit=HEAD_LIMIT,
                        retry=min(1.0, timeout / 4))
    result.filename = target.path
    # The head (up to HEAD_LIMIT) is only needed to identify the loader; the observation
    # keeps every result to the end, so holding it would cost max_targets x 4 MiB.
    head, result.head = result.head, b""
    fetched = Fetched(target, result, None, well_known=well_known)
    if partial is not None:  # the hash is reported even if identify() never returns
        partial.publish(fetched)
    loader = identify(head) if result.size else None
    if partial is None or partial.settle():
        fetched.loader = loader
    return fetched


class Partial:
    """A fetch's result as soon as it is known, before the file is classified: at the
    follow-up deadline ``finish`` takes it from here when the call has not returned, so
    a slow classification costs the loader's description, never the hash. Once taken,
    the worker no longer writes to it (the report may be reading it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.result: Fetched | HttpCheck | None = None
        self.taken = False

    def publish(self, result: Fetched | HttpCheck) -> None:
        with self.lock:
            self.result = result

    def settle(self) -> bool:
        """True when the worker may still complete the result (finish has not taken it)."""
        with self.lock:
            return not self.taken

    def take(self) -> Fetched | HttpCheck | None:
        with self.lock:
            self.taken = True
            return self.result


class _Workers:
    """A few daemon threads running queued calls: unlike ThreadPoolExecutor's workers
    (joined at interpreter exit), a worker stuck on a hostile server never keeps the
    process alive."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = \
            queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.closed = False

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        fut: Future[Any] = Future()
        self.jobs.put((fut, fn))
        if len(self.threads) < self.count:
            thread = threading.Thread(target=self._work, daemon=True,
                                      name=f"trustboot-audit-{len(self.threads)}")
            self.threads.append(thread)
            thread.start()
        return fut

    def _work(self) -> None:
        while not self.closed:
            job = self.jobs.get()
            if job is None:
                return
            fut, fn = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # recorded on the future, read by finish()
                fut.set_exception(exc)

    def abandon(self) -> None:
        """Cancel what has not started; running calls are left to their deadlines."""
        self.closed = True
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in self.threads:
            self.jobs.put(None)


class Follower:
    """Schedules fetches as offers arrive; ``finish`` waits (bounded) and records results."""

    def __init__(self, cfg: FollowConfig, policy: Policy, obs: Observation, *,
                 deadline: float | None = None) -> None:
        self.cfg = cfg
        self.policy = policy
        self.obs = obs
        # no fetch runs past this (monotonic): the window's end plus the follow timeout
        self.deadline = deadline
        self.pool = _Workers(cfg.workers)
        self.tasks: list[tuple[str, Future[Any], Partial]] = []
        self.done: set[str] = set()  # keys of the submitted tasks
        self.servers: set[str] = set()
        self.lock = threading.Lock()
        self.own = own_addresses()
        # DNS questions leave from the audited interface's own address
        self.source = interface_ipv4(cfg.device) if cfg.device else None

    def _submit(self, key: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        with self.lock:
            if key in self.done:
                return
            if len(self.done) >= self.cfg.max_targets:
                self.obs.limit("follow-targets", key.split(":", 1)[1])
                return
            self.done.add(key)
            kwargs["deadline"] = self.deadline
            kwargs["partial"] = partial = Partial()
            self.tasks.append((key, self.pool.submit(lambda: fn(*args, **kwargs)), partial))

    def _refuse(self, url: str, why: str) -> None:
        with self.lock:
            key = f"url:{url}"
            if key in self.done:
                return
            self.done.add(key)
            check = HttpCheck(url, refused=why, error=f"not fetched: {why}")
            self.tasks.append((key, _resolved(check), Partial()))

    def _target(self, target: BootTarget, nameservers: dns.Nameservers) -> None:
        if target.scheme == "tftp":
            if not target.server_is_ip or not target.path:
                return  # the checks report it as not fetched
            why = forbidden_address(target.server, self.own)
            if why is not None:
                self._refuse(target.url, f"{target.server} ({why})")
                return
            self._submit(f"tftp:{target.server}:{target.path}", _fetch_tftp, target, self.cfg,
                         max_size=self.cfg.max_size, timeout=self.cfg.timeout, well_known=False)
            self._server(target.server)
        elif target.scheme in ("http", "https"):
            key = f"url:{target.url}"
            if target.server and dns.literal_addresses(target.server) is None:
                # a name: what it leads to depends on the DNS servers of the offer naming it
                # (a rogue repeating the URL with its own server gets its own fetch)
                key += f" dns:{','.join(nameservers.servers[:dns.MAX_SERVERS])}"
            self._submit(key, _http_target, target, policy=self.policy,
                         timeout=self.cfg.timeout, max_size=self.cfg.max_size,
                         device=self.cfg.device, own=self.own, nameservers=nameservers,
                         source=self.source)

    def _server(self, server: str) -> None:
        with self.lock:
            if server in self.servers:
                return
            self.servers.add(server)
        if self.cfg.probe_writes:
            self._submit(f"write:{server}", _probe_write, server, device=self.cfg.device,
                         timeout=min(self.cfg.timeout, 5.0))
        if self.cfg.enumerate_paths:
            for path in WELL_KNOWN_PATHS:
                target = BootTarget("tftp", server, path, f"tftp://{server}/{path}")
                self._submit(f"known:{server}:{path}", _fetch_tftp, target, self.cfg,
                             max_size=self.cfg.well_known_max,
                             timeout=min(self.cfg.timeout, 3.0), well_known=True)

    def on_offer(self, offer: Offer) -> None:
        for target in offer.boot_targets():
            self._target(target, offer.nameservers())

    def on_reply6(self, reply: Reply6) -> None:
        for target in reply.boot_targets():
            self._target(target, reply.nameservers())

    def finish(self, budget: float) -> None:
        """Wait at most ``budget`` seconds for outstanding work, then record what finished.

        Whatever is still running then is abandoned and recorded as a reached limit."""
        end = time.monotonic() + budget
        offered = {f"tftp:{t.server}:{t.path}" for o in self.obs.offers
                   for t in o.boot_targets() if t.scheme == "tftp"}
        for key, fut, partial in list(self.tasks):
            try:
                result = fut.result(timeout=max(0.0, end - time.monotonic()))
            except FutureTimeout:
                self.obs.limit("follow-deadline", key.split(":", 1)[1])
                result = partial.take()
                if result is None:
                    self.obs.notes.append(f"{key}: still running at the follow-up deadline")
                    continue
                # fetched and hashed, still being classified: the hash is checked as any
                # other, the loader is unknown (and this limit says why)
                self.obs.notes.append(f"{key}: fetched, but still being identified at the "
                                      "follow-up deadline")
            if isinstance(result, Fetched):
                if result.result.truncated:
                    self.obs.limit("size-cap", result.target.url)
                elif result.result.deadline_reached:
                    self.obs.limit("fetch-deadline", result.target.url)
                if result.well_known and f"tftp:{result.target.server}:{result.target.path}" \
                        in offered:
                    continue  # the offered boot file itself, already reported as such
                if result.well_known and not result.result.size:
                    continue  # not there: nothing to report
                self.obs.fetched.append(result)
            elif isinstance(result, HttpCheck):
                if result.limit:
                    self.obs.limit(result.limit, result.url)
                self._malformed_answers(result)
                self.obs.http.append(result)
            elif isinstance(result, tftp.WriteResult):
                self.obs.writes.append(result)
        self.abandon()

    def _malformed_answers(self, check: HttpCheck) -> None:
        """A DNS answer that could not be read is evidence of its sender, as a malformed
        DHCP packet is (counted per sender, a few kept)."""
        for asked in check.dns:
            if asked.malformed is None:
                continue
            key = f"dns {asked.server} ?"
            counts = self.obs.malformed_counts
            counts[key] = counts.get(key, 0) + 1
            if counts[key] <= MALFORMED_PER_SENDER and len(self.obs.malformed) < MAX_MALFORMED:
                self.obs.malformed.append(Malformed(
                    "dns", asked.malformed, asked.server, "?", asked.malformed_head,
                    asked.malformed_length, 0.0))

    def abandon(self) -> None:
        """Cancel queued work; running transfers end at their own deadlines (or with the
        process: the workers are daemon threads)."""
        self.pool.abandon()


def _resolved(value: Any) -> Future[Any]:
    fut: Future[Any] = Future()
    fut.set_result(value)
    return fut


def _probe_write(server: str, *, device: str | None, timeout: float,
                 deadline: float | None = None, partial: Partial | None = None
                 ) -> tftp.WriteResult:
    if deadline is not None:
        timeout = max(0.01, min(timeout, deadline - time.monotonic()))
    return tftp.probe_write(server, device=device, timeout=timeout)


# forbidden_address lives in probe (the ProxyDHCP query needs it too); still exported here
__all__ = ["FollowConfig", "Follower", "forbidden_address", "http_check"]
