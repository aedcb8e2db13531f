"""``trustboot origin check URL``: what an iPXE client gets from this entry URL.

A TLS 1.2 handshake with iPXE's cipher suites and trust (version, cipher, the chain the
server sends), then the entry script and its .sig fetched and judged with iPXE's rules, and
a warning for every certificate (TLS chain or signing chain) that expires soon.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from trustboot.cms.freshness import replay_window
from trustboot.errors import (
    ConfigError,
    ExitCode,
    OperationalError,
    TrustbootError,
    VerificationError,
)
from trustboot.publish.origin import SERVER_CHAIN_HINT, redact_url, split_url
from trustboot.publish.proxy import proxy_for
from trustboot.publish.readback import Reader, Trust

MAX_ENTRY = 16 << 20


@dataclass
class CheckReport:
    url: str
    sig_url: str
    tls_version: str | None = None
    cipher: str | None = None
    chain: list[dict[str, str]] = field(default_factory=list)
    tls_error: str | None = None
    tls_hint: str | None = None  # what fixes tls_error (a certificate or a handshake)
    ipxe_ok: bool = False
    failure: str | None = None
    signers: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    size: int | None = None
    sha256: str | None = None
    replay_window: dict[str, Any] | None = None  # of the entry's signer (cms.freshness)
    signer_not_after: dt.datetime | None = None  # earliest chain end of the entry's signers
    served_from: str | None = None  # the entry's URL after redirects (see readback)
    # the exit code of the failure: 4 when iPXE would refuse what it got, 1 when there was
    # nothing to judge (origin unreachable, entry not served), 3 for a URL that cannot be
    # checked: a monitor tells an outage from a refusal
    failure_exit: int = ExitCode.VERIFICATION

    @property
    def ok(self) -> bool:
        return self.tls_error is None and self.ipxe_ok

    def error(self, *, rule: str = "origin-check") -> TrustbootError | None:
        """What a failed check raises (None when iPXE would boot the entry), one mapping
        for every caller (`origin check`, release's verify stage): ConfigError for a URL
        that cannot be checked (3), OperationalError when there was nothing to judge (1:
        a monitor pages for an outage), VerificationError when iPXE would refuse what is
        served (4, with ``rule``)."""
        if self.ok:
            return None
        why = self.tls_error or self.failure
        if self.failure_exit == ExitCode.CONFIG:
            return ConfigError(f"cannot check {self.url}: {why}",
                               hint="give the https:// URL iPXE fetches its entry script "
                                    "from")
        if self.failure_exit == ExitCode.OPERATIONAL:
            return OperationalError(
                f"could not check {self.url}: could not fetch the served entry script: "
                f"{why}",
                hint="check that the origin is up, serves this URL and is reachable from "
                     f"here: trustboot origin check {self.url}")
        if self.tls_error is not None and self.tls_hint is not None:
            # not a release to roll back: the origin's TLS is what a client refuses
            return VerificationError(f"iPXE would not boot {self.url}: {why}",
                                     hint=self.tls_hint, rule="origin-tls", subject=self.url)
        return VerificationError(
            f"iPXE would not boot {self.url}: {why}",
            hint=f"`trustboot origin check {self.url}` shows the TLS chain and the signers "
                 "iPXE gets; `trustboot publish rollback ORIGIN` switches back to the "
                 "previous release",
            rule=rule, subject=self.url)

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "sig_url": self.sig_url, "tls_version": self.tls_version,
                "cipher": self.cipher, "chain": self.chain, "tls_error": self.tls_error,
                "ipxe_accepts": self.ipxe_ok, "failure": self.failure,
                "signers": self.signers, "warnings": self.warnings, "size": self.size,
                "sha256": self.sha256, "replay_window": self.replay_window,
                "signer_not_after": self.signer_not_after.isoformat()
                if self.signer_not_after else None, "served_from": self.served_from,
                "ok": self.ok}


def _peer_chain(tls: ssl.SSLSocket) -> list[bytes]:
    obj = getattr(tls, "_sslobj", None)
    for name in ("get_verified_chain", "get_unverified_chain"):
        getter = getattr(tls, name, None) or getattr(obj, name, None)
        if getter is not None:
            chain = getter() or []
            return [c if isinstance(c, bytes) else
                    c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
                    for c in chain]
    der = tls.getpeercert(binary_form=True)
    return [der] if der else []


def check_origin(url: str, *, trust: Trust, ca_file: Path | None, now: dt.datetime,
                 warn_days: int = 30, timeout: float = 10.0) -> CheckReport:
    shown = redact_url(url)
    parts = split_url(url, repr(shown))
    if parts.username is not None or parts.password is not None:
        # (it would be echoed in the report, its JSON and every message)
        raise ConfigError(f"{shown!r} holds credentials (user:password@)",
                          hint="check the URL iPXE fetches its entry script from; it is "
                               "public, served without credentials")
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"{shown!r} is not an https:// URL",
                          hint="iPXE fetches its entry script over https://")
    report = CheckReport(url=url, sig_url=url + ".sig")
    ca_pem = None if ca_file else trust.ca_pem()
    host, port = parts.hostname, parts.port or 443
    soon = now + dt.timedelta(days=warn_days)
    # one connection: the handshake looked at here is the one the entry is fetched on
    with Reader(ca_file=ca_file, ca_pem=ca_pem, timeout=timeout, retries=1) as reader:
        try:
            tls = reader.connect(url)
            report.tls_version = tls.version()
            cipher = tls.cipher()
            report.cipher = cipher[0] if cipher else None
            chain = _peer_chain(tls)
        except ssl.SSLCertVerificationError as exc:
            report.tls_error = f"certificate does not verify: {exc.verify_message}"
            report.tls_hint = (f"{SERVER_CHAIN_HINT}, chaining to the roots iPXE was built "
                               "with (--trust, --pki; --ca-file if given)")
            chain = []
        except ssl.SSLError as exc:
            report.tls_error = f"TLS 1.2 handshake with iPXE's cipher suites failed: {exc}"
            report.tls_hint = ("iPXE speaks TLS 1.2 at most, with its own cipher suites: "
                               "enable TLS 1.2 and those on the origin (`trustboot origin "
                               "nginx-config` writes such a server block)")
            chain = []
        except OSError as exc:
            proxy = proxy_for("https", host, parts.port)
            through = f" through the proxy {proxy.shown}" if proxy else ""
            report.tls_error = (f"cannot connect to {host}:{port}{through}: "
                                f"{exc.strerror or exc}")
            report.failure_exit = ExitCode.OPERATIONAL
            chain = []
        for der in chain:
            cert = x509.load_der_x509_certificate(der)
            not_after = cert.not_valid_after_utc
            report.chain.append({"subject": cert.subject.rfc4514_string(),
                                 "issuer": cert.issuer.rfc4514_string(),
                                 "not_after": not_after.isoformat(),
                                 "sha256": hashlib.sha256(der).hexdigest()})
            if not_after < soon:
                report.warnings.append(f"TLS certificate {cert.subject.rfc4514_string()} "
                                       f"expires {not_after:%Y-%m-%d} (within {warn_days} "
                                       "days)")
        if report.tls_error:
            return report
        try:
            served, verdict = reader.verify_pair(url, report.sig_url, trust=trust, now=now,
                                                 max_size=MAX_ENTRY)
        except TrustbootError as exc:
            report.failure = exc.message
            # an origin that answers wrongly is refused (4); one that cannot be asked is not
            report.failure_exit = (int(exc.exit_code) if exc.exit_code in
                                   (ExitCode.OPERATIONAL, ExitCode.CONFIG)
                                   else ExitCode.VERIFICATION)
            return report
    report.size, report.sha256 = served.size, served.sha256
    report.served_from = served.url
    report.ipxe_ok = verdict.ok
    report.failure = verdict.failure.message if verdict.failure else None
    if verdict.failure is not None and verdict.failure.rule == "signature-mismatch":
        report.warnings.append(
            "the entry script and its signature do not match: a switch in progress (retry), "
            "or one a killed run left half done: `trustboot publish repair ORIGIN` finishes "
            "it")
    report.signers = [s.to_json() for s in verdict.signers]
    if verdict.signers:
        first = min(verdict.signers, key=lambda s: s.chain_not_after)
        report.signer_not_after = first.chain_not_after
        report.replay_window = replay_window(first.chain_not_after, now=now,
                                             not_before=first.not_before).to_json()
    for s in verdict.signers:
        if s.chain_not_after < soon:
            report.warnings.append(f"the signature by {s.common_name} stops verifying on "
                                   f"{s.chain_not_after:%Y-%m-%d} (its chain expires)")
    report.warnings.extend(w.message for w in verdict.warnings)
    return report
