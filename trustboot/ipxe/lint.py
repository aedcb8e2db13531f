"""Lint iPXE scripts by exploring every path through a small model of iPXE's execution.

The model follows iPXE's own code (src/image/script.c, src/core/exec.c, src/core/getopt.c):

- a script is read a line at a time, backslash continuations joined; a line whose first
  word starts with ':' is a label, and the rest of that line is still a command;
- a line is split on whitespace with no quoting; ``&&``, ``||`` and ``;`` end a command
  (the next one runs on success, on failure, always); a word starting with '#' ends the line;
- ``set``/``clear``/``inc`` can fail when a word is expanded (a typed value that does not
  parse) or the setting names a scope, and always fail on a literal value that does not
  parse as the setting's type or an unknown type (``set x:ipv4 notanip``, see
  :mod:`trustboot.ipxe.setting_types`); an empty command succeeds; a command that is
  skipped leaves the status as it was; a line that ends with a failure status ends
  the script;
- ``goto LABEL`` continues at the first line labelled LABEL (the rest of its own line is
  skipped); ``exit`` ends the script; ``reboot`` does not come back; ``chain --replace``
  ends the script and runs the image in its place (its failure returns to the caller);
- options come before arguments (see :func:`trustboot.ipxe.syntax.parse_command`);
- images are registered under their --name or the name iPXE derives from their URI (the
  last segment of the percent-decoded path: see :func:`uri_name`), found by name (the
  first registered wins), marked trusted by a successful ``imgverify``; an image that is
  not executed (an initrd, a module) is never checked by ``imgtrust``.

Every command that can fail is explored both ways. A finding is any path on which an image
fetched from the network reaches ``boot``/``chain``/``imgexec`` without a successful
``imgverify`` of it on that path, and, for the embedded script (``stage="embedded"``), any
path that ends the script: iPXE then returns to the BIOS or UEFI boot manager, which boots
the next device, whatever the script meant to do on failure. The fail-closed form is
``imgverify ... || goto LABEL`` where every path from LABEL ends in ``reboot``, a halt loop
or (for ``poweroff``) a halt loop behind it. A chained (second-stage) script runs under a
firmware that already set ``imgtrust --permanent`` and handles a failed ``imgexec``: it may
end, and need not set trust itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from trustboot.ipxe.setting_types import setting_problem
from trustboot.ipxe.syntax import (
    COMMANDS,
    DIGEST_COMMANDS,
    WHITESPACE,
    ParsedCommand,
    expands_setting,
    parse_command,
    read_lines,
    runs_as_script,
    split_commands,
    split_tokens,
)

STAGES = ("embedded", "chained")
# Not a lint stage: a script found on the network by the audit (see unguarded_boot()).
SERVED = "served"
MAX_STATES = 200_000
# A served script's bounds (the audit's time must not grow with what a hostile server
# sends): states visited, and images registered at once (each state carries them all).
SERVED_MAX_STATES = 50_000
SERVED_MAX_IMAGES = 64
# What the audit counts as a boot no imgverify guards (the rest of the lint is about a
# script trustboot writes, not about whether an unverified image can run).
_UNGUARDED = {"unverified-exec", "unverified-image", "sanboot", "autoboot", "pxebs",
              "gdbstub", "computed-command"}
# The command standing for a continuation left open at the end of the script.
DANGLING = "\\"

_DIGESTS = DIGEST_COMMANDS
# Commands that fetch from a URI (their words are checked for cleartext schemes).
_FETCHING = {"imgfetch", "module", "initrd", "kernel", "imgselect", "imgload", "chain",
             "boot", "imgexec", "imgverify", "imgargs", "imgextract", "imgdecrypt",
             "certstore", "sanboot", "sanhook", "shim", "imgset", "fdt", *_DIGESTS}
_CLEARTEXT = ("http", "tftp", "ftp", "nfs", "slam")
_EXEC = {"imgexec", "chain", "boot"}
_LOAD = {"imgfetch", "module", "initrd"}
_SELECT = {"kernel", "imgselect", "imgload"}
# Commands that succeed whenever their options parse (everything else is explored both ways).
# Not these: imgstat NAME (no such image), ifstat (no such device, or no NIC at all),
# certstat --subject (no match), config (no such scope), shell (the status of the last
# command typed into it).
_INFALLIBLE = {"echo", "set", "clear", "inc", "help", "route", "ipstat", "nstat"}
# ... except these when a word is expanded (a DHCP server can make a typed setting's value
# unparseable: "Could not store") or the setting names a scope (net0/..., which may not
# exist): then they fail like any other command.
_SETTING_COMMANDS = {"set", "clear", "inc"}
_TRUST_SETTINGS = {"crosscert", "trust"}
# Commands that store into the setting their first argument names (imgset: a downloaded
# file's bytes; pciscan/usbscan: the next device's address; choose: the item picked;
# nslookup: an address). The digest commands store into their --set one.
_SETTING_WRITERS = {"set", "clear", "read", "inc", "imgset", "pciscan", "usbscan",
                    "choose", "nslookup"}


@dataclass(frozen=True)
class Finding:
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message} [{self.rule}]"

    def to_json(self) -> dict[str, object]:
        return {"line": self.line, "rule": self.rule, "message": self.message}


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    terminator: str | None  # "&&", "||", ";" or None at the end of the line
    parsed: ParsedCommand | None  # None for an empty command


@dataclass(frozen=True)
class Line:
    number: int
    label: str | None
    commands: tuple[Command, ...]


def parse_script(text: str) -> list[Line]:
    """The script as iPXE's process_script() sees it: labels split off, commands split."""
    out: list[Line] = []
    joined_lines, dangling = read_lines(text)
    for number, joined in joined_lines:
        rest = joined.lstrip(WHITESPACE)
        label: str | None = None
        if rest.startswith(":"):
            end = 1
            while end < len(rest) and rest[end] not in WHITESPACE:
                end += 1
            label, rest = rest[1:end], rest[end + 1:]
        commands = tuple(
            Command(tuple(words), term, parse_command(words) if words else None)
            for words, term in split_commands(split_tokens(rest))
        )
        out.append(Line(number, label, commands))
    if dangling is not None:
        # iPXE never runs a line continued past the end of the script: the script stops
        # there with an error, as a failing command would.
        problem = ParsedCommand(DANGLING, {}, (), "the line ends in a backslash at the end "
                                "of the script: iPXE never runs it and the script fails")
        out.append(Line(dangling, None, (Command((DANGLING,), None, problem),)))
    return out


def _strip_suffix(name: str) -> str:
    """iPXE's image_strip_suffix(): the name up to its last dot, if it has one."""
    return name.rsplit(".", 1)[0] if "." in name else name


# iPXE's isalpha() (ASCII letters) plus '-' and '_': the characters of a scheme in
# parse_uri(). Digits, '+' and '.' are not among them, unlike RFC 3986.
_SCHEME_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_")
_C_SPACE = frozenset(b" \t\n\v\f\r")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def _uri_decode(field: bytes) -> bytes:
    """iPXE's uri_decode_inplace(): each '%' takes the next two characters and parses them
    with its strtoul(..., 16), which skips whitespace and a sign and consumes them even with
    no digit after (the byte is then 0); the result is a C string, cut at a decoded NUL."""
    out = bytearray()
    i = 0
    while i < len(field):
        c = field[i]
        i += 1
        if c == ord("%"):
            buf = field[i:i + 2]
            j = 0
            while j < len(buf) and buf[j] in _C_SPACE:
                j += 1
            negate = j < len(buf) and buf[j] == ord("-")
            if j < len(buf) and buf[j] in b"+-":
                j += 1
            value = 0
            while j < len(buf) and buf[j] in _HEX_DIGITS:
                value = value * 16 + int(chr(buf[j]), 16)
                j += 1
            i += j
            if j:
                c = (-value if negate else value) & 0xFF
        out.append(c)
    return bytes(out).split(b"\0", 1)[0]


def _strip_dot_segments(path: bytes) -> bytes:
    """What resolve_path() keeps of a relative path: its leading "./" and "../" go."""
    if path.startswith(b"/"):
        return path
    i = 0
    while i < len(path) and path[i] == ord("."):
        i += 1
        if i == len(path):
            pass
        elif path[i] == ord("/"):
            i += 1
        elif path[i] == ord("."):
            i += 1
            if i == len(path):
                pass
            elif path[i] == ord("/"):
                i += 1
            else:
                i -= 2
                break
        else:
            i -= 1
            break
    return path[i:]


def uri_name(uri: str) -> str | None:
    """The name iPXE gives an image it downloads from ``uri``, exactly as iPXE computes it
    (parse_uri, resolve_uri, image_set_uri and basename in its core/): the part after the
    last '/' of the URI's percent-decoded path, or of its opaque part (``scheme:x`` with no
    '/' after the colon). So ``.../initrd.img/`` is named '' and ``.../initrd%2Eimg``
    ``initrd.img``; the query and fragment are not part of it.

    A relative URI is resolved against the current working URI (a chained script's own
    URL) first, which drops its leading "./" and "../": "." and ".." name an image ''.
    None when iPXE picks a name the script cannot know: a URI with no path at all
    (``https://host``) is named "imgN", and a relative one with no path takes the name of
    the script's own URL.
    """
    raw = uri.encode("utf-8", "surrogateescape").split(b"#", 1)[0]  # "##params" too
    end = 0
    while end < len(raw) and raw[end] in _SCHEME_CHARS:
        end += 1
    absolute = end < len(raw) and raw[end] == ord(":")
    path = raw[end + 1:] if absolute else raw
    if absolute and not path.startswith(b"/"):
        name = _uri_decode(path)  # opaque: no query is split off
    else:
        path = path.split(b"?", 1)[0]
        if absolute and path.startswith(b"//"):  # an authority, then the path
            slash = path.find(b"/", 2)
            path = path[slash:] if slash >= 0 else b""
        elif not absolute:
            if not path:
                return None
            path = _strip_dot_segments(path)
        if absolute and not path:
            return None
        name = _uri_decode(path)
    return name.rsplit(b"/", 1)[-1].decode("utf-8", "surrogateescape")


def naming_problem(token: str) -> str | None:
    """Why an image fetched from ``token`` would not be named the literal last segment of
    its path (None when it would; a query or fragment is dropped, as anyone expects). iPXE
    names images after the decoded path; a script that relies on that (an initrd named ''
    by a trailing '/', or one 'imgverify' reaches by another spelling) is too easy to get
    wrong, so only plain names are accepted."""
    literal = token.split("#", 1)[0].split("?", 1)[0].rsplit("/", 1)[-1]
    name = uri_name(token)
    if name is None:
        return "iPXE gives it a name the script cannot know (the URI has no path)"
    if name in ("", ".", ".."):
        return f"iPXE names it '{name}', which no imgverify can name"
    if name != literal:
        return f"iPXE names it '{name}', not '{literal}' (the decoded last path segment)"
    return None


# --- the model --------------------------------------------------------------------------------

# An image: (name, verified, line it was fetched on). Registration order is kept. An image
# whose name the script cannot know (uri_name() None) is named '', which no token matches.
Image = tuple[str, bool, int]


@dataclass(frozen=True)
class _State:
    line: int  # index into the lines
    cmd: int  # index into the line's commands
    process: bool  # whether this command runs (after && / || / ;)
    ok: bool  # the status so far on this line
    images: tuple[Image, ...]
    selected: Image | None
    require_trust: bool
    permanent: bool


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    images: tuple[Image, ...]
    selected: Image | None
    require_trust: bool
    permanent: bool
    control: str = "next"  # next, goto, exit, halt
    target: int = 0  # line index for goto


class _Explorer:
    def __init__(self, lines: list[Line], stage: str) -> None:
        self.lines = lines
        self.stage = stage
        served = stage == SERVED
        self.max_states = SERVED_MAX_STATES if served else MAX_STATES
        # a computed goto yields a successor per label: count those too, not only states
        self.max_steps = 2 * SERVED_MAX_STATES if served else None
        self.max_images = SERVED_MAX_IMAGES if served else None
        self.stopped = False  # served: the first unguarded boot is all the audit asks
        self.labels: dict[str, int] = {}
        for index, line in enumerate(lines):
            if line.label is not None:
                self.labels.setdefault(line.label, index)
        self.findings: dict[tuple[int, str], Finding] = {}
        self.parent: dict[_State, tuple[_State | None, str]] = {}

    def add(self, line: int, rule: str, message: str, state: _State | None = None,
            note: str = "") -> None:
        if (line, rule) in self.findings:
            return
        if self.stage == SERVED:
            if rule not in _UNGUARDED and rule != "too-complex":
                return  # not asked, and its path would cost a trace
            self.stopped = True
            if state is not None and self.failed_on_path(state, "imgverify"):
                message = f"a failed imgverify does not stop the script: {message}"
        if state is not None:
            message += f" (path: {self.trace(state)}{note})"
        self.findings[(line, rule)] = Finding(line, rule, message)

    def failed_on_path(self, state: _State, command: str) -> bool:
        """Whether the path to ``state`` went on after ``command`` failed."""
        note = f" ('{command}' fails)"
        current: _State | None = state
        while current is not None:
            current, how = self.parent[current]
            if how == note:
                return True
        return False

    def trace(self, state: _State) -> str:
        hops: list[tuple[int, str]] = []
        current: _State | None = state
        while current is not None:
            prev, note = self.parent[current]
            hops.append((self.lines[current.line].number, note))
            current = prev
        hops.reverse()
        steps: list[str] = []
        last: tuple[int, str] | None = None
        for number, note in hops:
            if last is not None and last[0] == number and not last[1]:
                steps.pop()  # the same line again: keep the step that says why
            elif last == (number, note):
                continue
            steps.append(f"line {number}{note}")
            last = (number, note)
        if len(steps) > 12:
            steps = [*steps[:4], "...", *steps[-7:]]
        return " -> ".join(steps)

    # images ----------------------------------------------------------------------------

    @staticmethod
    def find(images: tuple[Image, ...], name: str) -> Image | None:
        return next((img for img in images if img[0] == name), None)

    @staticmethod
    def register(images: tuple[Image, ...], image: Image) -> tuple[Image, ...]:
        # A second identical unverified image adds nothing the checks could see (and keeps
        # retry loops from growing the state without end).
        return images if image in images else (*images, image)

    def acquire(self, images: tuple[Image, ...], token: str, number: int
                ) -> tuple[Image, tuple[Image, ...]]:
        """imgacquire(): an existing image by exact name, else a download (may fail)."""
        found = self.find(images, token)
        if found is not None:
            return found, images
        image = (uri_name(token) or "", False, number)
        return image, self.register(images, image)

    # one command -----------------------------------------------------------------------

    def run(self, state: _State, p: ParsedCommand, number: int) -> list[_Outcome]:
        images, sel = state.images, state.selected
        req, perm = state.require_trust, state.permanent

        def out(ok: bool, imgs: tuple[Image, ...] = images, selected: Image | None = sel,
                control: str = "next", target: int = 0, require: bool = req,
                permanent: bool = perm) -> _Outcome:
            if selected is not None and selected not in imgs:
                selected = None
            return _Outcome(ok, imgs, selected, require, permanent, control, target)

        fail = out(False)
        if self.stage == SERVED and expands_setting(p.name):
            # iPXE expands every token, the command name included (exec.c: expand_tokens()
            # then execv(argv[0])), and this model does not track setting values: the name
            # may turn out to be chain, boot or sanboot, so the line may run anything.
            example = " ".join(("chain", *p.args)) if p.args else "autoboot"
            if len(example) > 80:
                example = example[:77] + "..."
            self.add(number, "computed-command", f"a computed command name '{p.name}' can "
                     f"run any command, e.g. '{example}', and no imgverify guards what it "
                     "runs", state)
            return [fail, out(True)]
        if self.stage == SERVED and p.name == "imgtrust" and any(
                expands_setting(w) for w in (*p.args, *filter(None, p.options.values()))):
            # iPXE expands the words before reading the options: a computed one may be
            # --allow (with --permanent: unverified images allowed for good), as a
            # setting from the segment's DHCP can make it. After --permanent a change
            # fails (EACCES) and nothing else does anything.
            if perm:
                return [fail, out(True)]
            return [fail, out(True), out(True, require=False),
                    out(True, require=False, permanent=True)]
        if p.problem is not None:
            if self.stage == SERVED and p.name not in COMMANDS:
                # A served script runs on firmware whose commands are not known here:
                # a newer iPXE or a fork may carry commands COMMANDS lacks, and one
                # that succeeds goes on to what follows (it must be judged).
                return [fail, out(True)]
            return [fail]
        name = p.name
        trusted = req and perm
        if self.stage == "embedded" and not trusted and (
            name in _LOAD | _SELECT | _EXEC | {"imgverify", "sanboot", "autoboot", "shim",
                                               "imgmem", "fdt"}
        ):
            self.add(number, "trust-first",
                     f"'{name}' can run before 'imgtrust --permanent'", state)
        if name == "goto":
            label = p.args[0]
            if "${" in label:  # a computed target (a menu): any label
                return [fail, *(out(True, control="goto", target=t)
                                for t in sorted(set(self.labels.values())))]
            if label in self.labels:
                return [out(True, control="goto", target=self.labels[label])]
            return [fail]
        if name == "exit":
            return [out(True, control="exit")]
        if name == "reboot":
            return [out(True, control="halt")]
        if name == "poweroff":
            return [out(True, control="halt"), fail]
        if name == "imgtrust":
            require = not p.has("allow")
            if perm and require != req:
                return [fail]
            return [out(True, require=require, permanent=perm or p.has("permanent"))]
        if name in _LOAD:
            image = (_named(p, uri_name(p.args[0]) or ""), False, number)
            return [out(True, self.register(images, image)), fail]
        if name == "imgmem":
            # An image made from whatever is in memory, named --name or the address word:
            # no signature checked it, and it runs or goes to the kernel like a download,
            # so it needs an imgverify like one. (A bad address or length fails first.)
            image = (_named(p, p.args[0]), False, number)
            return [out(True, self.register(images, image)), fail]
        if name == "fdt":
            # The device tree handed to the kernel: hidden from the initrds but still
            # registered, and imgtrust never checks it, so it must be verified like an
            # initrd. With no argument it only forgets the tree (never fails).
            if not p.args:
                return [out(True)]
            image, imgs = self.acquire(images, p.args[0], number)
            return [out(True, imgs), fail]
        if name == "shim":
            # An EFI kernel that the firmware will not load runs through the shim image
            # instead (efi_image.c), and imgtrust checks only the kernel: the shim is an
            # image that must be verified like an initrd. Hidden, but still registered.
            if not p.args:
                return [out(True), fail]  # clears the shim
            image, imgs = self.acquire(images, p.args[0], number)
            return [out(True, imgs), fail]
        if name == "console" and "picture" not in p.options:  # `--picture=` fetches ""
            return [out(True), fail]
        if (name == "certstore" and p.args) or name in ("imgset", "console"):
            # The file is acquired as an image to read certificates, a setting's value or
            # a background picture from, and unregistered afterwards (even one that was
            # registered before) unless --keep: then it stays, as unverified as it came,
            # whether or not the command worked.
            # certstore FILE, imgset SETTING FILE, console --picture FILE
            uri = str(p.options["picture"] or "") if name == "console" else p.args[-1]
            image, imgs = self.acquire(images, uri, number)
            if not p.has("keep"):
                imgs = tuple(i for i in imgs if i != image)
            return [out(True, imgs), out(False, imgs), fail]
        if name in _DIGESTS:
            # digest_exec() acquires every argument and never unregisters it: a download
            # stays registered, unverified, and the kernel gets it as an initrd. The first
            # that fails ends the command (so may storing the digest, after them all).
            imgs = images
            for word in p.args:
                _, imgs = self.acquire(imgs, word, number)
            return [out(True, imgs), out(False, imgs), fail]
        if name in _SELECT or name == "imgargs":
            image, imgs = self.acquire(images, p.args[0], number)
            if p.options.get("name") is not None:  # `--name=` names it ""
                renamed = (str(p.options["name"]), image[1], image[2])
                imgs = tuple(renamed if i == image else i for i in imgs)
                image = renamed
            if name in _SELECT:
                # the download can work and the selection fail (a file of no executable
                # type, on EFI): the image stays registered, unverified (imgsingle_exec)
                return [out(True, imgs, image), out(False, imgs), fail]
            return [out(True, imgs, sel), fail]
        if name in _EXEC:
            if p.args:
                target, imgs = self.acquire(images, p.args[0], number)
            elif sel is not None:
                target, imgs = sel, images
            else:
                # imgsingle_exec prints "No image selected" and returns the status of its
                # option parsing: success, and the script goes on to its next line
                return [out(True)]
            if self.stage == SERVED and req and not target[1]:
                # imgtrust refuses to execute it: the command fails and nothing runs. (The
                # lint stages still want the imgverify that makes this fail closed.)
                return [out(False, imgs)]
            self.check_boot(state, number, name, target, imgs)
            if p.has("replace"):
                # The script stops here and the image runs in its place (image_exec's
                # tail call): if it fails, iPXE returns to this script's caller, never to
                # the next line, whatever '||' follows.
                return [out(True, imgs, control="halt"), out(True, imgs, control="replaced"),
                        out(False, imgs)]
            return [out(True, imgs), out(False, imgs)]
        if name == "imgverify":
            image, imgs = self.acquire(images, p.args[0], number)
            sig = self.find(imgs, p.args[1])
            if sig is not None and not p.has("keep"):
                imgs = tuple(i for i in imgs if i != sig)
            elif sig is None and p.has("keep"):
                imgs = self.register(imgs, (uri_name(p.args[1]) or "", False, number))
            good = (image[0], True, image[2])
            verified = tuple(good if i == image else i for i in imgs)
            return [out(True, verified, good if sel == image else sel), out(False, imgs)]
        if name == "imgextract":
            # A new image from the archive: named --name or the source's name without its
            # last dot suffix, trusted only if the source was; the source is discarded
            # (unless --keep) whether or not the extraction worked.
            source, imgs = self.acquire(images, p.args[0], number)
            if not p.has("keep"):
                imgs = tuple(i for i in imgs if i != source)
            extracted = (_named(p, _strip_suffix(source[0])), source[1],
                         number)
            return [out(True, self.register(imgs, extracted)), out(False, imgs)]
        if name == "imgdecrypt":
            # Decrypted in place: renamed (--name, or its last dot suffix stripped) and no
            # longer trusted, even when decryption fails; the envelope is discarded unless
            # --keep.
            image, imgs = self.acquire(images, p.args[0], number)
            envelope, imgs = self.acquire(imgs, p.args[1], number)
            if not p.has("keep") and envelope != image:
                imgs = tuple(i for i in imgs if i != envelope)
            results = []
            for ok, new_name in ((True, _named(p, _strip_suffix(image[0]))),
                                 (False, image[0])):
                plain = (new_name, False, image[2])
                updated = tuple(plain if i == image else i for i in imgs)
                results.append(out(ok, updated, plain if sel == image else sel))
            return results
        if name == "imgfree":
            if not p.args:
                return [out(True, ())]
            imgs = images
            for token in p.args:
                found = self.find(imgs, token)
                if found is None:
                    return [fail]
                imgs = tuple(i for i in imgs if i != found)
            return [out(True, imgs)]
        if name in ("sanboot", "autoboot", "pxebs", "gdbstub"):
            what = {"sanboot": "boots a SAN or local disk",
                    "autoboot": "boots whatever DHCP names (a root-path is SAN-booted)",
                    "pxebs": "boots whatever a PXE boot server offers",
                    "gdbstub": "hands the machine to a remote debugger (serial line or UDP), "
                               "which can change memory and run anything"}[name]
            self.add(number, name, f"'{name}' {what} with no imgverify: imgtrust does not "
                     "cover it", state)
            return [out(True), fail]
        if name in _SETTING_COMMANDS and setting_problem(name, p.args) is not None:
            return [fail]
        if name in _SETTING_COMMANDS and (
            any("${" in word for word in p.args) or "/" in (p.args[0] if p.args else "")
        ):
            return [out(True), fail]
        if name in _INFALLIBLE:
            return [out(True)]
        return [out(True), fail]

    def check_boot(self, state: _State, number: int, name: str, target: Image,
                   images: tuple[Image, ...]) -> None:
        if not target[1]:
            self.add(number, "unverified-exec",
                     f"'{name}' can execute image '{target[0]}' (fetched at line {target[2]}) "
                     "without a successful imgverify of it on this path", state)
        others = [i for i in images if i != target and not i[1]]
        if others:
            names = ", ".join(f"'{i[0]}' (line {i[2]})" for i in others)
            self.add(number, "unverified-image",
                     f"'{name}' runs while {names} is registered and not verified: an "
                     "initrd or module is handed to the kernel without imgtrust checking "
                     "it; imgverify it (|| goto a fail-closed label) first", state)

    # the walk --------------------------------------------------------------------------

    def successors(self, state: _State) -> Iterator[tuple[_State | str, str]]:
        line = self.lines[state.line]
        cmd = line.commands[state.cmd]
        number = line.number
        if state.process and cmd.parsed is not None:
            outcomes = self.run(state, cmd.parsed, number)
        else:  # an empty command succeeds; a skipped one keeps the status
            ok = True if state.process else state.ok
            outcomes = [_Outcome(ok, state.images, state.selected, state.require_trust,
                                 state.permanent)]
        for o in outcomes:
            ran = state.process and cmd.parsed is not None
            label = f" ('{cmd.words[0]}' fails)" if ran and not o.ok else ""
            if o.control == "goto":
                yield _State(o.target, 0, True, True, o.images, o.selected, o.require_trust,
                             o.permanent), f" (goto {self.lines[o.target].label})"
            elif o.control == "exit":
                yield f"exit:{number}", label
            elif o.control == "halt":
                yield "halt", label
            elif o.control == "replaced":
                yield f"replaced:{number}", f" ('{cmd.words[0]} --replace' fails to boot)"
            elif cmd.terminator is None:
                if not o.ok:
                    yield f"fail:{number}", label
                elif state.line + 1 >= len(self.lines):
                    yield f"end:{number}", label
                else:
                    yield _State(state.line + 1, 0, True, True, o.images, o.selected,
                                 o.require_trust, o.permanent), label
            else:
                go = {"&&": o.ok, "||": not o.ok, ";": True}[cmd.terminator]
                yield _State(state.line, state.cmd + 1, go, o.ok, o.images, o.selected,
                             o.require_trust, o.permanent), label

    def explore(self) -> None:
        if not self.lines:
            return
        chained = self.stage == "chained"  # served: trust unknown, so not assumed
        start = _State(0, 0, True, True, (), None, chained, chained)
        self.parent[start] = (None, "")
        queue = deque([start])
        steps = 0
        while queue and not self.stopped:
            state = queue.popleft()
            for nxt, note in self.successors(state):
                steps += 1
                if (self.max_steps is not None and steps > self.max_steps) or (
                    self.max_images is not None and not isinstance(nxt, str)
                    and len(nxt.images) > self.max_images
                ):
                    self.add(1, "too-complex", "the script has too many paths or images to "
                             "check; simplify it")
                    return
                if isinstance(nxt, str):
                    self.terminal(nxt, state, note)
                    continue
                if nxt in self.parent:
                    continue
                if len(self.parent) >= self.max_states:
                    self.add(1, "too-complex", "the script has too many paths to check; "
                             "simplify it")
                    return
                self.parent[nxt] = (state, note)
                queue.append(nxt)

    def terminal(self, how: str, state: _State, note: str) -> None:
        if self.stage != "embedded" or how == "halt":
            return
        kind, number = how.split(":")
        line = int(number)
        back = ("iPXE returns to the BIOS or UEFI boot manager, which boots the next "
                "device (unverified)")
        if kind == "replaced":
            self.add(line, "fall-through", "'--replace' ends the embedded script before the "
                     f"image runs: if it fails, {back}; drop --replace and follow the "
                     "command with '|| goto LABEL'", state, note)
        elif kind == "exit":
            self.add(line, "fall-through", f"'exit' ends the embedded script: {back}; end "
                     "in a fail-closed block instead (reboot, or a halt loop)", state)
        elif kind == "end":
            self.add(line, "fall-through", f"the embedded script can run past its last "
                     f"line: {back}", state)
        else:
            self.add(line, "fall-through", f"a failure on this line ends the embedded "
                     f"script: {back}; add '|| goto LABEL' to a block that ends in reboot or "
                     "a halt loop", state, note)


def _named(p: ParsedCommand, default: str) -> str:
    """The name an image gets: --name's value when the option is there, even empty
    (iPXE tests the pointer: `--name=` names it "", which no imgverify reaches), else
    ``default``."""
    value = p.options.get("name")
    return default if value is None else str(value)


# --- the lint ---------------------------------------------------------------------------------


def _image_tokens(p: ParsedCommand) -> tuple[str, ...]:
    """The words of a command that iPXE may download and name after their URI."""
    if p.name in _LOAD | _SELECT | _EXEC | {"imgargs"}:
        return () if p.options.get("name") is not None else p.args[:1]
    if p.name in ("imgverify", "imgdecrypt"):
        return p.args[:2]
    if p.name in ("imgextract", "fdt"):
        return p.args[:1]
    return ()


def _static(lines: list[Line], stage: str, ex: _Explorer) -> None:
    has_verify = has_permanent = False
    for line in lines:
        for index, cmd in enumerate(line.commands):
            p = cmd.parsed
            if p is None:
                continue
            n = line.number
            has_verify = has_verify or p.name == "imgverify"
            if p.problem is not None and p.name == DANGLING:
                ex.add(n, "dangling-continuation", f"{p.problem}; remove the backslash")
                continue
            if p.problem is not None:
                if p.name in COMMANDS:
                    ex.add(n, "usage", f"iPXE prints its usage text and fails here: "
                           f"{p.problem}")
                elif expands_setting(p.name):
                    ex.add(n, "unknown-command", f"{p.problem}: a setting's value at boot "
                           "(which DHCP may set) decides which command runs, so the lint "
                           "cannot check it; write the command name out")
                else:
                    ex.add(n, "unknown-command", f"{p.problem} in iPXE")
                continue
            if p.name == "imgverify":
                after = line.commands[index + 1] if index + 1 < len(line.commands) else None
                if cmd.terminator == ";" or (
                    cmd.terminator == "||" and after is not None
                    and not (after.parsed is not None and after.parsed.name == "goto")
                ):
                    ex.add(n, "soft-verify",
                           f"'imgverify ... {cmd.terminator}' carries on after a failed "
                           "verification; use '|| goto LABEL' to a fail-closed block")
            if p.name == "imgtrust":
                if p.has("allow"):
                    ex.add(n, "trust-allow", "imgtrust --allow lets unverified images run")
                elif p.has("permanent"):
                    has_permanent = True
            if p.name == "goto" and "${" not in p.args[0] and p.args[0] not in ex.labels:
                ex.add(n, "missing-label", f"goto {p.args[0]}: there is no label "
                       f":{p.args[0]}, so the goto fails")
            for token in _image_tokens(p):
                if (why := naming_problem(token)) is not None:
                    ex.add(n, "image-name", f"'{p.name}' may download '{token}': {why}; "
                           "fetch it with an explicit --name, or from a URL whose path ends "
                           "in a plain file name")
            fetched = (*p.args, *filter(None, [p.options.get("picture")]))
            if (p.name in _FETCHING or p.name == "console") and any(
                w.lower().startswith(tuple(f"{s}://" for s in _CLEARTEXT)) for w in fetched
            ):
                ex.add(n, "cleartext", f"'{p.name}' fetches over a cleartext protocol; "
                       "use https://")
            if p.name in _SETTING_COMMANDS and (why := setting_problem(p.name, p.args)):
                ex.add(n, "setting-value", why)
            # the setting a command writes: its first word, or a digest's --set
            written = [p.args[0]] if p.name in _SETTING_WRITERS and p.args else []
            if p.name in _DIGESTS and p.options.get("set") is not None:
                written.append(str(p.options["set"]))  # a SHA-256 is a `trust` value
            for word in written:
                setting = word.split(":")[0].rsplit("/", 1)[-1].rsplit(".", 1)[-1]
                if setting in _TRUST_SETTINGS:
                    ex.add(n, "trust-setting", f"the script changes the '{word}' setting")
    if stage == "embedded" and not has_permanent:
        ex.add(1, "trust-missing", "no 'imgtrust --permanent': unsigned images could run")
    if not has_verify:
        ex.add(1, "no-verify", "the script never runs imgverify")


def lint_script(text: str, *, stage: str = "embedded") -> list[Finding]:
    """Findings that make a script unfit for its stage (empty = ok).

    ``stage="embedded"``: the script built into the firmware (must set ``imgtrust
    --permanent`` and never end). ``stage="chained"``: a script that firmware built by
    trustboot fetches, verifies and runs (the firmware set trust and handles its end).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    if not runs_as_script(text):
        return [Finding(1, "magic", "the script does not start with '#!ipxe' and a new "
                        "line, so iPXE does not run it as a script")]
    lines = parse_script(text)
    explorer = _Explorer(lines, stage)
    _static(lines, stage, explorer)
    explorer.explore()
    return sorted(explorer.findings.values(), key=lambda f: (f.line, f.rule))


def unguarded_boot(text: str) -> Finding | None:
    """For a script found on the network (the audit): the first path, shortest first, on
    which an image no successful imgverify checked can run (booted, chained, executed, or
    an initrd handed over with it; sanboot, autoboot, pxebs), as the lint's model finds
    it; None when every path is guarded. Unlike the lint stages, it does not assume the
    firmware set imgtrust (an image imgtrust refuses does not run, so the script's own
    imgtrust counts), and asks nothing else of the script. A "too-complex" finding when
    the walk would pass its bounds (SERVED_MAX_STATES, SERVED_MAX_IMAGES): its cost does
    not grow with what a hostile server makes the script hold.
    ``text`` must be a script (see runs_as_script)."""
    explorer = _Explorer(parse_script(text), SERVED)
    explorer.explore()
    return next(iter(explorer.findings.values()), None)
