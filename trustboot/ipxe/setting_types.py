"""Will iPXE's ``set NAME[:TYPE] VALUE...`` store this value? Its setting types' parsers
(src/core/settings.c), for literal words only.

``set`` joins its value words with single spaces, finds the type (``:TYPE``, else the
predefined setting's, else string) and parses the value with it; a value that does not
parse prints "Could not store" and the command fails. An empty value deletes the setting
and never fails. An unknown ``:TYPE`` fails before any value is read (also for ``clear``
and ``inc``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from trustboot.ipxeparse import base64_decode, hex_decode, inet6_aton, inet_aton, strtoul


def _integer(value: str) -> str | None:
    # parse_int_setting(): strtoul(value, &endp, 0) must reach the end; out of range
    # values are truncated to the width, never refused
    return None if strtoul(value)[1] == len(value) else "not a number (decimal, 0x hex or " \
        "0 octal)"


def _hex(separator: str, what: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if hex_decode(separator, value) is not None else what
    return check


def _uuid(value: str) -> str | None:
    # uuid_aton(): 16 bytes of hex, '-' anywhere between pairs
    if hex_decode("-", value, optional=True) == 16:
        return None
    return "not a UUID (32 hex digits, '-' between pairs allowed)"


def _no_parser(value: str) -> str:
    return "iPXE has no parser for this type: it can only be read, never set"


PARSERS: dict[str, Callable[[str], str | None]] = {
    "string": lambda value: None,
    "uristring": lambda value: None,  # uri_decode() takes anything
    "ipv4": lambda value: None if inet_aton(value) is not None else "not an IPv4 address",
    # (a build without IPv6, as BIOS ones are, refuses every ipv6 value: not flagged)
    "ipv6": lambda value: None if inet6_aton(value) is not None else "not an IPv6 address",
    **dict.fromkeys(("int8", "int16", "int32", "uint8", "uint16", "uint32"), _integer),
    "hex": _hex(":", "not hex bytes separated by ':' (e.g. 0a:1b)"),
    "hexhyp": _hex("-", "not hex bytes separated by '-' (e.g. 0a-1b)"),
    "hexraw": _hex("", "not an even number of hex digits"),
    "base64": lambda value: None if base64_decode(value) is not None else "not base64",
    "uuid": _uuid,
    "guid": _uuid,
    "busdevfn": _no_parser,
    "dnssl": _no_parser,
}

# Typed settings every iPXE build predefines (core/settings.c, net/ipv4.c): ``set ip x``
# parses x as ipv4.
PREDEFINED = {"next-server": "ipv4", "priority": "int8", "ip": "ipv4", "netmask": "ipv4",
              "gateway": "ipv4"}


def setting_problem(command: str, args: Sequence[str]) -> str | None:
    """Why ``command`` (set, clear or inc) with these literal words always fails in iPXE,
    or None. Words with ``${...}`` expansions are not judged (their value is only known
    at boot)."""
    if not args or any("${" in word for word in args):
        return None
    name = args[0].split("/", 1)[-1]  # settings_name/setting_name: the first '/'
    setting, _, type_name = name.partition(":")
    if ":" in name and type_name not in PARSERS:
        return (f"iPXE has no setting type '{type_name}' (it has "
                f"{', '.join(sorted(PARSERS))}), so '{command} {args[0]}' fails")
    if command != "set":
        return None
    value = " ".join(args[1:])
    kind = type_name if ":" in name else PREDEFINED.get(setting, "string")
    why = PARSERS[kind](value) if value else None
    if why is None:
        return None
    shown = value if len(value) <= 80 else f"{value[:80]}...({len(value)} chars)"
    return (f"'set {args[0]}' cannot store '{shown}' as {kind}: {why}; iPXE prints "
            "\"Could not store\" and the command fails")
