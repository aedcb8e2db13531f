"""How long a signature can be replayed to a booting iPXE: the signer's life plus 12 h 30 min.

iPXE has no revocation and no timestamps: ``imgverify`` accepts a signature as long as every
certificate of its chain is valid at the client's clock, with ``TIMESTAMP_ERROR_MARGIN``
(config/crypto.h, 12 h for an RTC that is not on UTC plus 30 min of drift) of slack on both
ends (x509.c, ``x509_check_time``). So whatever was signed stays bootable, to anyone who
can serve it, until the chain's earliest notAfter + 12 h 30 min by the client's clock. A
short-lived signer, re-signed on a schedule (``trustboot resign``), bounds that window.
The one function here is what ``verify``, ``release``, ``resign`` and ``origin check`` say.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from trustboot.cms.verify import TIMESTAMP_ERROR_MARGIN

__all__ = ["ReplayWindow", "format_duration", "replay_window"]


def format_duration(delta: dt.timedelta) -> str:
    """``7d 12h30m`` (to the nearest minute); negative durations get a leading '-'."""
    seconds = round(delta.total_seconds() / 60) * 60
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    out = f"{days}d " if days else ""
    out += f"{hours}h{minutes:02d}m" if (hours or minutes or not days) else ""
    return sign + out.strip()


@dataclass(frozen=True)
class ReplayWindow:
    """What a signature by a signer whose chain ends at ``not_after`` allows, seen at ``now``."""

    not_after: dt.datetime  # earliest notAfter of the signer's chain
    now: dt.datetime
    not_before: dt.datetime | None = None  # the signer certificate's notBefore

    @property
    def margin(self) -> dt.timedelta:
        return TIMESTAMP_ERROR_MARGIN

    @property
    def refused_after(self) -> dt.datetime:
        """The first client clock at which iPXE refuses (the last accepted second is this
        minus one: x509.c refuses only when notAfter < time - margin)."""
        return self.not_after + TIMESTAMP_ERROR_MARGIN + dt.timedelta(seconds=1)

    @property
    def remaining(self) -> dt.timedelta:
        """notAfter - now: the signer's remaining lifetime."""
        return self.not_after - self.now

    @property
    def window(self) -> dt.timedelta:
        """How long from ``now`` what this signer signs can still be replayed."""
        return max(self.remaining + TIMESTAMP_ERROR_MARGIN, dt.timedelta(0))

    @property
    def lifetime(self) -> dt.timedelta | None:
        """notAfter - notBefore (trustboot backdates notBefore by a day)."""
        return None if self.not_before is None else self.not_after - self.not_before

    def describe(self) -> str:
        life = f"; signer lifetime {format_duration(self.lifetime)}" if self.lifetime else ""
        return (f"replay window {format_duration(self.window)}: iPXE accepts these signatures "
                f"until {self.not_after:%Y-%m-%d %H:%M}Z + 12h30m margin by the client's "
                f"clock (signer valid {format_duration(self.remaining)} more{life})")

    def to_json(self) -> dict[str, Any]:
        life = self.lifetime
        return {
            "signer_not_after": self.not_after.isoformat(),
            "signer_not_before": self.not_before.isoformat() if self.not_before else None,
            "remaining_seconds": int(self.remaining.total_seconds()),
            "lifetime_seconds": int(life.total_seconds()) if life is not None else None,
            "margin_seconds": int(TIMESTAMP_ERROR_MARGIN.total_seconds()),
            "window_seconds": int(self.window.total_seconds()),
            "refused_after": self.refused_after.isoformat(),
            "text": format_duration(self.window),
        }


def replay_window(not_after: dt.datetime, *, now: dt.datetime,
                  not_before: dt.datetime | None = None) -> ReplayWindow:
    """The replay window of a signer whose chain ends at ``not_after``, seen at ``now``."""
    return ReplayWindow(not_after=not_after, now=now, not_before=not_before)
