"""One error tree for everything trustboot expects to go wrong.

Each error carries what failed, on which input, and what to do next; the CLI maps the
class to a documented exit code. Anything that is not a TrustbootError is a bug (exit 70).
"""

from __future__ import annotations

from enum import IntEnum
from typing import TypeVar

from trustboot.text import clean_lines

E = TypeVar("E", bound=BaseException)


class ExitCode(IntEnum):
    OK = 0
    OPERATIONAL = 1  # I/O, network, origin refused
    USAGE = 2  # click's own
    CONFIG = 3  # invalid configuration, recipe or input file
    VERIFICATION = 4  # signature, chain, policy
    AUDIT_FINDINGS = 5  # audit found issues at or above --fail-on
    INTERNAL = 70  # a bug


class TrustbootError(Exception):
    """Base class: ``message`` says what failed, ``hint`` what to do next."""

    exit_code: ExitCode = ExitCode.OPERATIONAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def diagnostics(self) -> str:
        """The terminal's text. A message may quote what an origin, a certificate or a
        file wrote: each line is escaped (``trustboot.text.clean``), so no control or bidi
        character in it reaches the terminal; the lines a message is written in stay."""
        text = "error: " + clean_lines(self.message)
        if self.hint:
            text += "\n  hint: " + clean_lines(self.hint)
        return text

    def to_json(self) -> dict[str, object]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "exit_code": int(self.exit_code),
        }


class OperationalError(TrustbootError):
    """I/O, network, a locked store, an origin that refused."""

    exit_code = ExitCode.OPERATIONAL


class ConfigError(TrustbootError):
    """Invalid configuration, recipe, option value or input file."""

    exit_code = ExitCode.CONFIG


class VerificationError(TrustbootError):
    """A signature, chain or policy check failed.

    ``rule`` names the check (stable, machine-readable), ``subject`` the certificate
    or file it failed on.
    """

    exit_code = ExitCode.VERIFICATION

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        rule: str = "verification",
        subject: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.rule = rule
        self.subject = subject

    def to_json(self) -> dict[str, object]:
        data = super().to_json()
        data["rule"] = self.rule
        data["subject"] = self.subject
        return data


class AuditFindingsError(TrustbootError):
    """The audit found issues at or above ``--fail-on``; the report was already printed."""

    exit_code = ExitCode.AUDIT_FINDINGS


def find_in_chain(exc: BaseException, kind: type[E]) -> E | None:
    """The first exception of type ``kind`` in ``exc``'s chain: ``exc``, then its
    ``__cause__`` (or, without one, its ``__context__``), and so on; None if there is none.
    A cyclic chain (an exception that is its own context, through others) ends the walk."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
