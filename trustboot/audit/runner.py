"""One audit, end to end: listen (and probe), follow the chain, evaluate the policy."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from trustboot.audit.checks import Finding, evaluate
from trustboot.audit.follow import FollowConfig, Follower
from trustboot.audit.model import Observation
from trustboot.audit.netif import interface_index, shown
from trustboot.audit.policy import Policy
from trustboot.audit.probe import Listener, ProbeConfig


@dataclass
class AuditOptions:
    probe: ProbeConfig
    follow: FollowConfig | None  # None: do not fetch anything (always None when passive)


# Seconds finish() waits past the fetch deadline for results already on their way.
FINISH_GRACE = 0.3


@dataclass
class AuditResult:
    observation: Observation
    findings: list[Finding]
    policy: Policy
    started: datetime
    finished: datetime
    beyond_window: float = 0.0  # wall time spent after the listen window
    extra: dict[str, object] = field(default_factory=dict)


def run_audit(options: AuditOptions, policy: Policy) -> AuditResult:
    cfg = options.probe
    # a wrong interface name is a ConfigError naming it, before any socket or fetch
    interface_index(cfg.interface)
    if options.follow is not None and options.follow.device:
        interface_index(options.follow.device)
    started = datetime.now(UTC)
    # shown as its bytes, escaped (a name need not be UTF-8)
    obs = Observation(interface=shown(cfg.interface), mode="passive" if cfg.passive else "active",
                      window=cfg.window)
    follower = None
    fetch_deadline = time.monotonic() + cfg.window
    if options.follow is not None and not cfg.passive:
        # every fetch ends by window + follow timeout, however the network behaves
        fetch_deadline += options.follow.timeout
        follower = Follower(options.follow, policy, obs, deadline=fetch_deadline)
    obs.followed = follower is not None
    listener = Listener(cfg, obs,
                        on_offer=follower.on_offer if follower else None,
                        on_reply6=follower.on_reply6 if follower else None)
    if follower is not None and listener.own_ip is None:
        obs.notes.append(
            f"{shown(cfg.interface)} has no IPv4 address: boot files offered over TFTP cannot be "
            "fetched (give the interface an address to follow the chain)")
    try:
        listener.run()
    except BaseException:
        if follower is not None:
            follower.abandon()  # queued fetches would only hold up the error's exit
        raise
    finally:
        listener.close()
    window_end = time.monotonic()
    if follower is not None:
        follower.finish(max(0.0, fetch_deadline - time.monotonic()) + FINISH_GRACE)
    obs.follow_seconds = time.monotonic() - window_end
    findings = evaluate(obs, policy)
    return AuditResult(obs, findings, policy, started, datetime.now(UTC),
                       beyond_window=time.monotonic() - window_end)
