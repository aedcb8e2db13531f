"""The embedded iPXE script: a fail-closed generator, the pieces other renderers reuse, and
the lint (see :mod:`trustboot.ipxe.lint`) for scripts users bring.

The generated script turns on ``imgtrust --permanent`` before anything is fetched, gets an
address with bounded retries, optionally sets the clock over NTP, fetches the entry script
and its detached signature over HTTPS, verifies it with ``imgverify --signer``, and only
then executes it. Every failure, a failed ``imgverify`` included, goes to one block that
runs the failure action and then halts: the script never ends, because an embedded script
that ends hands the machine back to the BIOS, which boots the next device unverified.

Renderer API (the release menu/entry renderer builds on these; every value goes through
:func:`trustboot.ipxe.syntax.check_word` / ``check_words``):

- :func:`command` -- one command line from checked words;
- :func:`echo` / :func:`set_setting` -- ``echo TEXT`` / ``set NAME VALUE``;
- :func:`verify` -- ``imgverify --signer S IMAGE SIG || goto tb_failed``: the one form of
  imgverify that the lint accepts as fail-closed;
- :func:`or_fail` -- append ``|| goto tb_failed`` to any command that may fail;
- :func:`failure_block` -- ``:tb_failed``, a message, the failure action, then the
  ``:tb_halt`` loop, so no path ends the script;
- :func:`check_https_url` -- an https:// URL that can be one script word.
"""

from __future__ import annotations

from dataclasses import dataclass

from trustboot.errors import ConfigError
from trustboot.ipxe.lint import Finding, lint_script
from trustboot.ipxe.syntax import check_word, check_words, runs_as_script
from trustboot.publish.origin import redact_url, split_url

__all__ = [
    "FAILED_LABEL", "HALT_LABEL", "MAGIC", "ON_FAILURE", "ChainScript", "Finding",
    "check_https_url", "check_script", "command", "echo", "failure_block", "lint_script",
    "or_fail", "render_chain_script", "set_setting", "verify",
]

MAGIC = "#!ipxe"
# halt (the default): stay in this firmware for good; reboot: start the boot order again
# after a delay; poweroff; shell: an iPXE shell on the console; exit: return to the BIOS,
# which boots the next device (not fail-closed; the CLI warns).
ON_FAILURE = ("halt", "reboot", "poweroff", "shell", "exit")
DEFAULT_ON_FAILURE = "halt"
FAILED_LABEL = "tb_failed"
HALT_LABEL = "tb_halt"
REBOOT_DELAY = 60  # seconds: the message stays readable and the origin is not hammered
# The names the embedded script gives the images it fetches (imgfetch --name): the
# chained entry script and its signature. iPXE's find_image returns the FIRST registered
# image of a name, so a later image of the same name (an initrd called tb_entry) would
# have `imgverify tb_entry ...` judge the wrong image; the whole tb_ prefix is kept for
# trustboot's own names (its settings and labels use it too).
ENTRY_IMAGE = "tb_entry"
CHAIN_IMAGE_NAMES = (ENTRY_IMAGE, f"{ENTRY_IMAGE}.sig")
RESERVED_IMAGE_PREFIX = "tb_"
# The embedded script's image name (EMBED= of a trustboot build, ipxe.build)
EMBEDDED_SCRIPT_NAME = "trustboot.ipxe"


def reserved_image_name(name: str) -> bool:
    """Whether an image of this name would take one the boot chain keeps for its own
    (CHAIN_IMAGE_NAMES and anything else starting with RESERVED_IMAGE_PREFIX, the
    embedded script's): iPXE's find_image takes the first image of a name."""
    return name.lower().startswith(RESERVED_IMAGE_PREFIX) or name == EMBEDDED_SCRIPT_NAME


def command(*words: str, what: str = "script value") -> str:
    """One command line from ``words``, each checked as a single iPXE word."""
    if not words:
        raise ValueError("a command needs at least its name")
    return " ".join(check_word(w, what) for w in words)


def free_text(text: str, what: str) -> str:
    """``text`` as the words of a command that takes free text after its options (echo,
    menu): checked, and after ``--`` when its first word starts with '-', which iPXE's
    getopt would parse as an option (a title '--- Lab ---' made `menu` fail with its
    usage text on every boot)."""
    check_words(text, what)
    words = text.split()
    return f"-- {text}" if words and words[0].startswith("-") else text


def echo(text: str) -> str:
    """``echo TEXT``; ``text`` may hold spaces but nothing iPXE would act on."""
    return f"echo {free_text(text, 'echo text')}" if text.strip() else "echo"


def set_setting(name: str, value: str, *, what: str = "setting value") -> str:
    """``set NAME VALUE`` (iPXE's set joins the value's words with single spaces)."""
    check_word(name, "setting name")
    check_words(value, what, allow_empty=False)
    if value != " ".join(value.split()):
        raise ConfigError(
            f"{what} {value!r} cannot go into an iPXE script: iPXE keeps single spaces "
            "only (leading, trailing or repeated spaces are lost)",
            hint="use single spaces between words",
        )
    return f"set {name} {value}"


def or_fail(line: str, *, label: str = FAILED_LABEL) -> str:
    """``line || goto LABEL``: a failure goes to the fail-closed block."""
    return f"{line} || goto {check_word(label, 'label')}"


def verify(image: str, signature: str, *, signer: str | None = None,
           label: str = FAILED_LABEL) -> str:
    """``imgverify [--signer S] IMAGE SIG || goto LABEL`` (options before arguments, as
    iPXE's parser needs). ``signer`` may be ``${var}`` only when it names a setting the
    script itself set, e.g. ``${tb_signer}``."""
    words = ["imgverify"]
    if signer is not None:
        words += ["--signer", signer if _own_setting(signer)
                  else check_word(signer, "signer")]
    words += [check_word(image, "image name"), check_word(signature, "signature")]
    return or_fail(" ".join(words), label=label)


def _own_setting(word: str) -> bool:
    """``${tb_...}``: a setting trustboot's own script set (not one DHCP could)."""
    return (word.startswith("${tb_") and word.endswith("}")
            and check_word(word[2:-1], "setting name") == word[2:-1]
            and "$" not in word[2:-1] and "{" not in word[2:-1])


def failure_block(action: str = DEFAULT_ON_FAILURE, *, message: str | None = None,
                  label: str = FAILED_LABEL) -> list[str]:
    """The block every failure goes to: a message, ``action``, then a halt loop that no
    key press can leave (a cancelled sleep goes round again), so the script never ends."""
    if action not in ON_FAILURE:
        raise ConfigError(f"unknown failure action {action!r}",
                          hint=f"choose one of {', '.join(ON_FAILURE)}")
    lines = [f":{check_word(label, 'label')}",
             echo(message or "trustboot: boot stopped: nothing verified can run")]
    if action == "reboot":
        lines += [echo(f"trustboot: rebooting in {REBOOT_DELAY}s"),
                  f"sleep {REBOOT_DELAY} ||", "reboot"]
    elif action == "poweroff":
        lines += ["poweroff ||"]
    elif action == "shell":
        lines += ["shell ||"]  # it returns the last typed command's status: halt anyway
    elif action == "exit":
        # Not fail-closed: the BIOS boots the next device. Only on explicit request.
        lines += ["exit 1"]
    lines += [f":{HALT_LABEL}",
              echo("trustboot: halted; power-cycle the machine to try again"),
              f"sleep 3600 || goto {HALT_LABEL}",
              f"goto {HALT_LABEL}"]
    return lines


@dataclass(frozen=True)
class ChainScript:
    """Parameters of the generated embedded script."""

    url: str  # the entry script, fetched over HTTPS
    signer: str  # imgverify --signer: the code-signing certificate's CN or SAN
    sig_url: str | None = None  # default: url + ".sig"
    ntp_server: str | None = None
    dhcp_attempts: int = 5
    fetch_attempts: int = 5
    retry_delay: int = 5  # seconds between attempts
    on_failure: str = DEFAULT_ON_FAILURE

    def __post_init__(self) -> None:
        check_https_url(self.url, "--chain")
        if self.sig_url is not None:
            check_https_url(self.sig_url, "--chain-sig")
        set_setting("tb_signer", self.signer, what="signer name")
        if self.ntp_server is not None:
            check_word(self.ntp_server, "NTP server")
        for name in ("dhcp_attempts", "fetch_attempts"):
            if not 1 <= getattr(self, name) <= 1000:
                raise ConfigError(f"{name.replace('_', ' ')} must be between 1 and 1000")
        if not 0 <= self.retry_delay <= 3600:
            raise ConfigError("retry delay must be between 0 and 3600 seconds")
        if self.on_failure not in ON_FAILURE:
            raise ConfigError(
                f"unknown failure action {self.on_failure!r}",
                hint=f"choose one of {', '.join(ON_FAILURE)}",
            )


def check_https_url(url: str, option: str) -> str:
    """``url`` if it is an https:// URL with a host that can be one script word."""
    check_word(url, option)
    parts = split_url(url, f"{option} {redact_url(url)!r}")
    if parts.scheme != "https":
        raise ConfigError(
            f"{option} {url!r} is not an https:// URL",
            hint="the entry script must come over HTTPS; there is no cleartext fallback",
        )
    if not parts.hostname:
        raise ConfigError(f"{option} {url!r} has no host",
                          hint="pass https://HOST/PATH")
    return url


def render_chain_script(params: ChainScript) -> str:
    """The embedded script for ``--chain URL``. Deterministic: same input, same bytes."""
    sig_url = params.sig_url or params.url + ".sig"
    check_https_url(sig_url, "--chain-sig")
    delay = params.retry_delay
    lines = [
        MAGIC,
        "# Generated by trustboot: fail-closed chain to a signed entry script.",
        "# From here on nothing that fails imgverify can be executed, and this cannot be undone.",
        "imgtrust --permanent",
        set_setting("tb_url", params.url, what="--chain"),
        set_setting("tb_sig", sig_url, what="--chain-sig"),
        set_setting("tb_signer", params.signer, what="signer name"),
        "",
        "set tb_try:int32 0",
        ":tb_dhcp",
        "inc tb_try",
        "dhcp && goto tb_dhcp_ok ||",
        f"iseq ${{tb_try}} {params.dhcp_attempts} && goto tb_dhcp_failed ||",
        f"echo trustboot: DHCP failed (attempt ${{tb_try}}/{params.dhcp_attempts}), "
        f"retrying in {delay}s",
        f"sleep {delay} ||",
        "goto tb_dhcp",
        ":tb_dhcp_ok",
    ]
    if params.ntp_server is not None:
        ntp = check_word(params.ntp_server, "NTP server")
        # Fail-closed: every certificate is checked against this clock, and a signer's
        # expiry is the only freshness iPXE has. A firmware clock left in the past (no RTC
        # battery, or NTP blocked on purpose) would accept signatures that expired long ago.
        lines += [
            "# Certificate validity is checked against this clock: set it before verifying,",
            "# and never verify against an unset clock.",
            "set tb_try:int32 0",
            ":tb_ntp",
            "inc tb_try",
            f"ntp {ntp} && goto tb_ntp_ok ||",
            f"iseq ${{tb_try}} {params.dhcp_attempts} && goto tb_ntp_failed ||",
            f"echo trustboot: no answer from NTP server {ntp} (attempt "
            f"${{tb_try}}/{params.dhcp_attempts}), retrying in {delay}s",
            f"sleep {delay} ||",
            "goto tb_ntp",
            ":tb_ntp_ok",
        ]
    lines += [
        "",
        "set tb_try:int32 0",
        ":tb_fetch",
        "inc tb_try",
        # A failed attempt may leave the entry script without its signature: start clean.
        "imgfree",
        f"imgfetch --name {CHAIN_IMAGE_NAMES[0]} ${{tb_url}} && imgfetch --name "
        f"{CHAIN_IMAGE_NAMES[1]} ${{tb_sig}} && goto tb_fetch_ok ||",
        f"iseq ${{tb_try}} {params.fetch_attempts} && goto tb_fetch_failed ||",
        f"echo trustboot: could not fetch ${{tb_url}} or its signature "
        f"(attempt ${{tb_try}}/{params.fetch_attempts}), retrying in {delay}s",
        f"sleep {delay} ||",
        "goto tb_fetch",
        ":tb_fetch_ok",
        "echo trustboot: verifying ${tb_url} (signer ${tb_signer})",
        "# A failed verification goes to the failure block; the .sig is discarded.",
        verify(CHAIN_IMAGE_NAMES[0], CHAIN_IMAGE_NAMES[1], signer="${tb_signer}"),
        or_fail(f"imgexec {ENTRY_IMAGE}"),
        "echo trustboot: ${tb_url} returned, stopping",
        f"goto {FAILED_LABEL}",
        "",
        ":tb_dhcp_failed",
        f"echo trustboot: DHCP failed {params.dhcp_attempts} times, stopping",
        f"goto {FAILED_LABEL}",
        *([":tb_ntp_failed",
           f"echo trustboot: no time from NTP server {params.ntp_server} after "
           f"{params.dhcp_attempts} attempts; not verifying against the firmware clock, "
           "stopping",
           f"goto {FAILED_LABEL}"] if params.ntp_server is not None else []),
        ":tb_fetch_failed",
        f"echo trustboot: could not fetch ${{tb_url}} after {params.fetch_attempts} "
        "attempts, stopping",
        f"goto {FAILED_LABEL}",
        *failure_block(params.on_failure),
        "",
    ]
    return "\n".join(lines)


# --- lint ---------------------------------------------------------------------------------------


def check_script(text: str, *, origin: str = "the embedded script",
                 stage: str = "embedded") -> None:
    """Raise ConfigError listing every lint finding; return quietly when there are none."""
    if not runs_as_script(text):
        raise ConfigError(
            f"{origin} does not start with '{MAGIC}' and a new line, so iPXE would not run "
            "it as a script",
            hint="an embedded script must begin with the line '#!ipxe'",
        )
    findings = lint_script(text, stage=stage)
    if findings:
        listing = "; ".join(str(f) for f in findings)
        raise ConfigError(
            f"{origin} is not fail-closed: {listing}",
            hint="fix the script, or generate one with --chain URL --signer NAME",
        )
