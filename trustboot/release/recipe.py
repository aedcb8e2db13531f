"""Release recipes: YAML -> frozen dataclasses, every error with ``file:line``.

A recipe says what to boot (entries: kernel, initrds, command line, architectures), who
signs (the CA home and a key reference), which firmware (an iPXE source to build, or
prebuilt binaries), where it goes (the origin) and how releases are named and kept. It is
read by :mod:`trustboot.release.yamlspec` (no anchors, aliases or tags; unknown keys, wrong
types and out-of-range values are errors naming the line). Paths are kept as written,
with their line, until :func:`resolve_inputs` turns them into files that must exist and
must stay inside the recipe's directory (after resolving symlinks) unless the caller
allows another root. Every value that will reach an iPXE script line is checked here with
the shared rule in :mod:`trustboot.ipxe.syntax`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trustboot import fsutil
from trustboot.errors import ConfigError
from trustboot.ipxe import build as ipxe_build
from trustboot.ipxe import syntax
from trustboot.ipxe.script import (
    CHAIN_IMAGE_NAMES,
    DEFAULT_ON_FAILURE,
    EMBEDDED_SCRIPT_NAME,
    ON_FAILURE,
    RESERVED_IMAGE_PREFIX,
    reserved_image_name,
)
from trustboot.keys.ref import KeyRef, parse_ref
from trustboot.publish.manifest import (
    ENTRY_PATH_HINT,
    MANIFEST_NAME,
    entry_path_problem,
    release_id_problem,
    release_key_problem,
)
from trustboot.publish.origin import check_url, check_web_url
from trustboot.release.yamlspec import (
    Bool,
    Checked,
    Field,
    Int,
    List,
    Map,
    Str,
    load_yaml,
)

MAX_RECIPE_BYTES = 1 << 20
MAX_DEMO_SIZE = 1 << 30
ARCHES = ("bios", "x86_64-efi", "arm64-efi")
HASHES = ("sha256", "sha384", "sha512")
ID_FIELDS = ("name", "date", "digest8", "digest12", "digest")

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_ENV = r"[A-Za-z_][A-Za-z0-9_]{0,127}"
# The variables a recipe may send to its origin as credentials: a recipe comes from a pull
# request and chooses origin.url, so it may only name variables set for trustboot, never
# one the CI runner holds for something else (CI_JOB_TOKEN, DATABASE_URL, ...).
CREDENTIALS_ENV_PREFIX = "TRUSTBOOT_"
_CREDENTIALS_ENV = CREDENTIALS_ENV_PREFIX + r"[A-Za-z0-9_]{1,118}"
_HOST = r"[A-Za-z0-9][A-Za-z0-9.:-]{0,252}"
_KEY = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._-]{0,127}){0,7}"
_PATH_DOC = ("a path relative to the recipe's directory; it may not leave that directory "
             "(after resolving symlinks) unless `trustboot release --allow-outside DIR`")
_SIZE_RE = re.compile(r"(\d{1,12})\s*(B|KiB|MiB|GiB)?")
_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_LIFETIME_RE = re.compile(r"(\d{1,6})\s*([hdw])")


def _path(doc: str, example: str) -> Field:
    return Str(f"{doc}: {_PATH_DOC}", max_length=1024, example=example)


def _secret_ref(doc: str, *, env_doc: str = "the name of an environment variable "
                "holding the secret", env_pattern: str = _ENV,
                env_example: str = "SIGNING_PASSPHRASE") -> Field:
    return Map(doc, {
        "file": _path("a file whose first line is the secret", "secrets/passphrase"),
        "env": Str(env_doc, pattern=env_pattern, example=env_example),
    })


RECIPE = Map("A trustboot release recipe (`trustboot release RECIPE`).", {
    "version": Int("recipe format version; this trustboot reads 1", minimum=1, maximum=1),
    "name": Str("the release's name (letters, digits, . _ -)", pattern=_NAME,
                example="debian-12"),
    "ca": Map("the private CA (trustboot ca) whose root the firmware trusts", {
        "home": _path("the CA home directory (default: pki)", "pki"),
    }),
    "signer": Map("the code-signing key that signs every object", {
        "key": Str("key reference: NAME (a codesign certificate of the CA), file:PATH, "
                   "or a pkcs11: URI", max_length=2048, example="boot-signer"),
        "cert": _path("the signing certificate (file: and pkcs11: keys)", "signer.crt"),
        "chain": _path("its issuers, root included (file: and pkcs11: keys)", "chain.pem"),
        "name": Str("imgverify --signer NAME (default: the certificate's common name)",
                    max_length=256, example="boot-signer"),
        "passphrase": _secret_ref("where the key's passphrase comes from (default: "
                                  "--passphrase-file/--passphrase-env or a prompt)"),
        "hash": Str("digest for the signatures", enum=HASHES),
    }, required=("key",)),
    "ipxe": Map("the firmware: built from an iPXE source, or prebuilt", {
        "source": _path("an iPXE source tree (never modified)", "ipxe/src"),
        "git": Str("clone iPXE from this https:// or ssh:// URL (needs commit)",
                   pattern=r"(https|ssh)://[A-Za-z0-9][^\s\\]{0,500}", max_length=512,
                   example="https://git.example.net/ipxe.git"),
        "commit": Str("the full commit id git is pinned to", pattern=r"[0-9a-f]{40}",
                      example="'" + "0123456789abcdef" * 2 + "01234567'"),
        "targets": List("build targets", Str(enum=tuple(ipxe_build.KNOWN_TARGETS)),
                        min_items=1, max_items=len(ipxe_build.KNOWN_TARGETS)),
        "ntp": Str("set the clock from this NTP server before verifying", pattern=_HOST,
                   example="ntp.example.net"),
        "on_failure": Str("what the firmware and the menu do once they give up; never "
                          "boots anything unverified (default halt; exit may fall "
                          "through to the next boot device)", enum=ON_FAILURE),
        "extra_roots": List("more roots to build in (e.g. the next root of a rotation)",
                            _path("a PEM root certificate", "next-root.crt")),
        "serial_console": Bool("also use the first serial port"),
        "prebuilt": _path("a directory from an earlier build (`ipxe build -o DIR`): "
                          "no build", "firmware"),
    }),
    "origin": Map("where the release is published", {
        "url": Str("file:///DIR, https:// (WebDAV) or s3://BUCKET/PREFIX",
                   pattern=r"(file|https|s3)://[^\s]{1,1000}", max_length=1024,
                   example="https://boot.example.net/releases"),
        "entry": Str("the entry script's path on the origin (default boot.ipxe)",
                     pattern=_KEY, example="boot.ipxe"),
        "public_url": Str("the https:// base URL iPXE fetches from (default: url, for "
                          "https origins)", pattern=r"https://[^\s]{1,1000}",
                          max_length=1024, example="https://boot.example.net/releases"),
        "endpoint": Str("the https:// endpoint of an s3:// origin (e.g. a Ceph RGW)",
                        pattern=r"https://[^\s]{1,1000}", max_length=1024,
                        example="https://s3.example.net"),
        "ca_file": _path("the CA that signed the origin's TLS certificate (a run that sends "
                         "credentials or a client certificate takes it from the operator "
                         "instead: `trustboot release --origin-ca-file`)", "origin-ca.pem"),
        "credentials": _secret_ref(
            "credentials for the origin: 'ORIGIN_URL user:password' or 'ORIGIN_URL "
            "bearer:TOKEN', bound to that origin (unbound ones only with `trustboot release "
            "--unsafe-unbound-credentials`)",
            env_doc=f"an environment variable whose name starts with "
                    f"{CREDENTIALS_ENV_PREFIX} (a recipe may not send any other variable "
                    f"to its origin), e.g. {CREDENTIALS_ENV_PREFIX}ORIGIN_CREDENTIALS set "
                    "to 'ORIGIN_URL user:password'",
            env_pattern=_CREDENTIALS_ENV,
            env_example=f"{CREDENTIALS_ENV_PREFIX}ORIGIN_CREDENTIALS"),
        "client_cert": Str("TLS client certificate NAME of the CA (trustboot ca issue "
                           "client NAME) for origins that take writes only from it; it "
                           "authenticates only to the origin the operator binds it to "
                           "(TRUSTBOOT_CLIENT_CERT_ORIGIN='ORIGIN_URL NAME', unbound only "
                           "with `trustboot release --unsafe-unbound-credentials`)",
                           pattern=_NAME, example="publisher"),
        "client_key_passphrase": _secret_ref("the client key's passphrase (default: the "
                                             "signer's)"),
    }, required=("url",)),
    "menu": Map("the boot menu", {
        "title": Str("menu title", max_length=200, example="Network boot"),
        "timeout": Int("seconds before the default entry boots", minimum=0, maximum=3600,
                       example="10"),
    }),
    "entries": List("what the menu boots", Map("one menu entry", {
        "name": Str("entry name (a label: letters, digits, . _ -)", pattern=_NAME,
                    example="linux"),
        "title": Str("the menu text", max_length=200, example="Debian 12"),
        "arch": List("architectures this entry boots on", Str(enum=ARCHES), min_items=1,
                     max_items=len(ARCHES)),
        "kernel": _path("the kernel", "images/vmlinuz"),
        "initrds": List("initrds, in order", _path("an initrd", "images/initrd.img"),
                        max_items=32),
        "cmdline": Str("the kernel command line (inside the signed script)",
                       max_length=4096, example="console=ttyS0 quiet"),
        "default": Bool("the menu's default entry"),
    }, required=("name", "kernel")), min_items=1, max_items=64),
    "release": Map("naming and keeping releases", {
        "id": Str("release id template: letters, digits, . _ - and {name} {date} "
                  "{digest8} {digest12} {digest}", pattern=r"[A-Za-z0-9._{}-]{1,128}",
                  example="'{date}-{digest8}'"),
        "min_signer_lifetime": Int("refuse to release when the signer expires sooner: "
                                   "days, or e.g. 12h, 30d, 8w", minimum=0, maximum=36500,
                                   also_str=True, example="30d"),
        "retention": Int("releases to keep on the origin (older ones are pruned)",
                         minimum=1, maximum=1000, example="10"),
    }),
    "demo": Map("stand-in files `trustboot demo` generates before releasing", {
        "generate": List("files to generate", Map("a generated file", {
            "path": Str("file name", pattern=_NAME, example="vmlinuz"),
            "size": Int("size in bytes or e.g. 4MiB", minimum=1, maximum=MAX_DEMO_SIZE,
                        also_str=True, example="4MiB"),
        }, required=("path", "size")), max_items=16),
    }),
}, required=("version", "name", "signer", "entries"))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe, from the same table that validates recipes."""
    schema = RECIPE.schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://trustboot.invalid/schema/recipe-v1.json",
            "title": "trustboot release recipe", **schema}


# --- typed recipe -----------------------------------------------------------------------


ENTRY_SCRIPT = "boot.ipxe"  # the release-relative key of the signed entry/menu script


@dataclass(frozen=True)
class RecipePath:
    """A path as written in the recipe, with the place it was written."""

    raw: str
    where: str


@dataclass(frozen=True)
class SecretRef:
    file: RecipePath | None = None
    env: str | None = None
    where: str = ""  # the recipe's file:line of the reference


@dataclass(frozen=True)
class SignerSpec:
    key: KeyRef
    where: str
    cert: RecipePath | None = None
    chain: RecipePath | None = None
    name: str | None = None
    passphrase: SecretRef | None = None
    hash: str = "sha256"


@dataclass(frozen=True)
class IpxeSpec:
    source: RecipePath | None = None
    git: str | None = None
    commit: str | None = None
    targets: tuple[str, ...] = ipxe_build.DEFAULT_TARGETS
    ntp: str | None = None
    on_failure: str = DEFAULT_ON_FAILURE
    extra_roots: tuple[RecipePath, ...] = ()
    serial_console: bool = False
    prebuilt: RecipePath | None = None
    where: str = ""  # the recipe's file:line of the ipxe mapping


@dataclass(frozen=True)
class OriginSpec:
    url: str
    where: str
    entry: str = "boot.ipxe"
    public_url: str | None = None
    endpoint: str | None = None
    ca_file: RecipePath | None = None
    credentials: SecretRef | None = None
    client_cert: str | None = None
    client_key_passphrase: SecretRef | None = None


@dataclass(frozen=True)
class EntrySpec:
    name: str
    title: str
    arch: tuple[str, ...]
    kernel: RecipePath
    initrds: tuple[RecipePath, ...]
    cmdline: str
    default: bool


@dataclass(frozen=True)
class MenuSpec:
    title: str = "trustboot"
    timeout: int = 10


@dataclass(frozen=True)
class ReleaseSpec:
    id_template: str = "{date}-{digest8}"
    min_signer_lifetime: dt.timedelta = dt.timedelta(days=30)
    retention: int | None = None


@dataclass(frozen=True)
class DemoFile:
    path: str
    size: int


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str  # the name in messages (file path or "<embedded demo recipe>")
    directory: Path | None  # paths resolve against this; None for an embedded recipe
    ca_home: RecipePath
    signer: SignerSpec
    ipxe: IpxeSpec | None
    origin: OriginSpec | None
    menu: MenuSpec
    entries: tuple[EntrySpec, ...]
    release: ReleaseSpec
    demo: tuple[DemoFile, ...] = ()

    @property
    def default_entry(self) -> EntrySpec:
        return next((e for e in self.entries if e.default), self.entries[0])


def _rpath(c: Checked | None) -> RecipePath | None:
    return None if c is None else RecipePath(c.value, c.where)


def _secret(c: Checked | None) -> SecretRef | None:
    if c is None:
        return None
    v = c.value
    if ("file" in v) == ("env" in v):
        raise ConfigError(f"{c.where}: give exactly one of file or env")
    return SecretRef(file=_rpath(v.get("file")), env=v["env"].value if "env" in v else None,
                     where=c.where)


def _size(c: Checked) -> int:
    if isinstance(c.value, int):
        return c.value
    m = _SIZE_RE.fullmatch(c.value.strip())
    if not m:
        raise ConfigError(f"{c.where}: size {c.value!r} is not a size",
                          hint="write e.g. 4MiB, 512KiB or 1048576")
    size = int(m.group(1)) * _UNITS[m.group(2)]
    if not 0 < size <= MAX_DEMO_SIZE:
        raise ConfigError(f"{c.where}: size {c.value} is out of range (1 B to 1 GiB)")
    return size


def _lifetime(c: Checked) -> dt.timedelta:
    return parse_lifetime(c.value, f"{c.where}: min_signer_lifetime")


def parse_lifetime(value: int | str, where: str) -> dt.timedelta:
    """A signer lifetime: days as an integer, or ``12h``, ``30d``, ``8w``."""
    if isinstance(value, int):
        delta = dt.timedelta(days=value)
    else:
        m = _LIFETIME_RE.fullmatch(value.strip())
        if not m:
            raise ConfigError(f"{where} {value!r} is not a duration",
                              hint="write a number of days, or e.g. 12h, 30d, 8w")
        n = int(m.group(1))
        delta = {"h": dt.timedelta(hours=n), "d": dt.timedelta(days=n),
                 "w": dt.timedelta(weeks=n)}[m.group(2)]
    if not dt.timedelta(0) <= delta <= dt.timedelta(days=36500):
        raise ConfigError(f"{where} {value} is out of range")
    return delta


def _word(c: Checked, what: str) -> str:
    try:
        return syntax.check_word(c.value, what)
    except ConfigError as exc:
        raise ConfigError(f"{c.where}: {exc.message}", hint=exc.hint) from None


def _words(c: Checked, what: str) -> str:
    try:
        return syntax.check_words(c.value, what)
    except ConfigError as exc:
        raise ConfigError(f"{c.where}: {exc.message}", hint=exc.hint) from None


def fill_id(template: str, *, name: str, digest: str, now: dt.datetime) -> str:
    """A release id template (checked by _check_template) with its fields filled in."""
    values = {"name": name, "date": now.strftime("%Y%m%d"), "digest8": digest[:8],
              "digest12": digest[:12], "digest": digest}
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], template)


def _check_template(c: Checked, recipe_name: str) -> str:
    template: str = c.value
    fields = re.findall(r"\{([^{}]*)\}", template)
    rest = re.sub(r"\{[^{}]*\}", "", template)
    unknown = [f for f in fields if f not in ID_FIELDS]
    if unknown or "{" in rest or "}" in rest:
        raise ConfigError(f"{c.where}: release id template {template!r} has an unknown "
                          f"field {('{' + unknown[0] + '}') if unknown else 'brace'}",
                          hint="use " + ", ".join("{" + f + "}" for f in ID_FIELDS))
    if not any(f.startswith("digest") for f in fields):
        raise ConfigError(f"{c.where}: release id template {template!r} has no {{digest}} "
                          "field", hint="the id must change when the inputs change: add "
                          "{digest8}")
    # what it makes for this recipe (the fields' lengths are fixed, only the date's
    # digits vary): refused here, with the line, not after the inputs were hashed
    problem = release_id_problem(fill_id(template, name=recipe_name, digest="0" * 64,
                                         now=dt.datetime(2026, 11, 27, tzinfo=dt.UTC)))
    if problem:
        raise ConfigError(f"{c.where}: release id template {template!r} makes ids that are "
                          f"refused: {problem}", hint="e.g. {date}-{digest8}")
    return template


def _check_url(c: Checked, what: str, *, web: bool = False) -> str:
    """The rule `trustboot publish` applies to its URLs (origin.check_url); ``web``: one
    requests are sent to (origin.endpoint), https:// only (a recipe cannot ask for
    plain HTTP)."""
    url: str = c.value
    if web:
        check_web_url(url, f"{c.where}: {what}")
    else:
        check_url(url, f"{c.where}: {what}")
    return url


def _entry_path(c: Checked) -> str:
    path: str = c.value
    problem = entry_path_problem(path)
    if problem:
        raise ConfigError(f"{c.where}: origin.entry {path!r} is refused: {problem}",
                          hint=ENTRY_PATH_HINT)
    return path


def _check_recipe_token(key: KeyRef, where: str) -> None:
    """A recipe comes from a pull request: its pkcs11: key may name the token and the
    object, never the module (a library that is loaded, i.e. code that runs, even in a
    dry run) or a PIN file (read from anywhere): those come from the operator."""
    from trustboot.keys.pkcs11 import parse_uri

    try:
        uri = parse_uri(key.value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from None
    for attr, hint in (
            ("module-path", "remove it; name the module with `trustboot release "
                            "--pkcs11-module FILE` (or TRUSTBOOT_PKCS11_MODULE)"),
            ("pin-source", "remove it; give the PIN with signer.passphrase, "
                           "--passphrase-file or --passphrase-env")):
        if uri.get(attr) is not None:
            raise ConfigError(f"{where}: signer key {key} names {attr}=: a recipe may not "
                              "choose a module to load or a file to read the PIN from",
                              hint=hint)


def parse_recipe(text: str, source: str = "<recipe>", directory: Path | None = None
                 ) -> Recipe:
    """Validate ``text`` completely (structure, types, script values); no file is read."""
    top: dict[str, Checked] = RECIPE.check(load_yaml(text, source), "the recipe")
    name: str = top["name"].value
    ca = top["ca"].value if "ca" in top else {}
    ca_home = _rpath(ca.get("home")) or RecipePath("pki", top["version"].where)

    s = top["signer"].value
    try:
        key = parse_ref(s["key"].value)
    except ConfigError as exc:
        raise ConfigError(f"{s['key'].where}: {exc.message}", hint=exc.hint) from None
    if key.scheme == "pkcs11":
        _check_recipe_token(key, s["key"].where)
    if key.scheme != "ca" and "cert" not in s:
        raise ConfigError(f"{top['signer'].where}: signer key {key} needs cert (and chain)",
                          hint="add cert: the signing certificate, chain: its issuers")
    signer = SignerSpec(
        key=key, where=s["key"].where, cert=_rpath(s.get("cert")),
        chain=_rpath(s.get("chain")),
        name=_word(s["name"], "signer.name") if "name" in s else None,
        passphrase=_secret(s.get("passphrase")),
        hash=s["hash"].value if "hash" in s else "sha256")

    ipxe: IpxeSpec | None = None
    if "ipxe" in top:
        i = top["ipxe"].value
        where = top["ipxe"].where
        kinds = [k for k in ("source", "git", "prebuilt") if k in i]
        if len(kinds) > 1:
            raise ConfigError(f"{where}: ipxe takes one of source, git or prebuilt, not "
                              f"{' and '.join(kinds)}")
        if ("git" in i) != ("commit" in i):
            raise ConfigError(f"{where}: ipxe.git needs ipxe.commit (and commit needs git)",
                              hint="pin the clone to a full 40-hex-digit commit id")
        ipxe = IpxeSpec(
            source=_rpath(i.get("source")), git=i["git"].value if "git" in i else None,
            commit=i["commit"].value if "commit" in i else None,
            targets=tuple(dict.fromkeys(t.value for t in i["targets"].value))
            if "targets" in i else ipxe_build.DEFAULT_TARGETS,
            ntp=_word(i["ntp"], "ipxe.ntp") if "ntp" in i else None,
            on_failure=i["on_failure"].value if "on_failure" in i else DEFAULT_ON_FAILURE,
            extra_roots=tuple(RecipePath(p.value, p.where)
                              for p in i["extra_roots"].value) if "extra_roots" in i else (),
            serial_console=bool(i["serial_console"].value) if "serial_console" in i
            else False,
            prebuilt=_rpath(i.get("prebuilt")), where=where)

    origin: OriginSpec | None = None
    if "origin" in top:
        o = top["origin"].value
        public = None
        if "public_url" in o:
            public = _word(o["public_url"], "origin.public_url")
            _check_url(o["public_url"], "origin.public_url", web=True)
        origin = OriginSpec(
            url=_check_url(o["url"], "origin.url"), where=o["url"].where,
            entry=_entry_path(o["entry"]) if "entry" in o else "boot.ipxe",
            public_url=public, ca_file=_rpath(o.get("ca_file")),
            endpoint=_check_url(o["endpoint"], "origin.endpoint", web=True) if "endpoint" in o
            else None,
            credentials=_secret(o.get("credentials")),
            client_cert=o["client_cert"].value if "client_cert" in o else None,
            client_key_passphrase=_secret(o.get("client_key_passphrase")))

    menu = MenuSpec()
    if "menu" in top:
        m = top["menu"].value
        menu = MenuSpec(title=_words(m["title"], "menu.title") if "title" in m else menu.title,
                        timeout=m["timeout"].value if "timeout" in m else menu.timeout)

    entries: list[EntrySpec] = []
    seen: set[str] = set()
    for item in top["entries"].value:
        e = item.value
        ename = e["name"].value
        if ename in seen:
            raise ConfigError(f"{e['name'].where}: entry {ename!r} is listed twice")
        seen.add(ename)
        initrds = e["initrds"] if "initrds" in e else None
        entries.append(EntrySpec(
            name=ename,
            title=_words(e["title"], f"entries.{ename}.title") if "title" in e else ename,
            arch=tuple(dict.fromkeys(a.value for a in e["arch"].value)) if "arch" in e
            else ("bios", "x86_64-efi"),
            kernel=RecipePath(e["kernel"].value, e["kernel"].where),
            initrds=tuple(RecipePath(p.value, p.where) for p in initrds.value)
            if initrds is not None else (),
            cmdline=_words(e["cmdline"], f"entries.{ename}.cmdline") if "cmdline" in e
            else "",
            default=bool(e["default"].value) if "default" in e else False))
    for entry in entries:
        _check_image_names(entry)
    defaults = [e for e in entries if e.default]
    if len(defaults) > 1:
        raise ConfigError(f"{top['entries'].where}: more than one entry has default: true "
                          f"({', '.join(e.name for e in defaults)})")

    release = ReleaseSpec()
    if "release" in top:
        r = top["release"].value
        release = ReleaseSpec(
            id_template=_check_template(r["id"], name) if "id" in r else release.id_template,
            min_signer_lifetime=_lifetime(r["min_signer_lifetime"])
            if "min_signer_lifetime" in r else release.min_signer_lifetime,
            retention=r["retention"].value if "retention" in r else None)

    fw_where = top["entries"].where
    if "ipxe" in top:
        i = top["ipxe"].value
        fw_where = i["targets"].where if "targets" in i else top["ipxe"].where
    _check_object_keys(entries, ipxe.targets if ipxe else ipxe_build.DEFAULT_TARGETS, fw_where)

    demo: list[DemoFile] = []
    if "demo" in top and "generate" in top["demo"].value:
        for g in top["demo"].value["generate"].value:
            demo.append(DemoFile(g.value["path"].value, _size(g.value["size"])))

    return Recipe(name=name, source=source, directory=directory, ca_home=ca_home,
                  signer=signer, ipxe=ipxe, origin=origin, menu=menu,
                  entries=tuple(entries), release=release, demo=tuple(demo))


def image_name(path: RecipePath) -> str:
    """The name iPXE gives the image the menu fetches for ``path``: its URL's last path
    segment, i.e. the file's name (what EFI's initrd= and the initrd files are named)."""
    return Path(path.raw).name


def _check_image_names(entry: EntrySpec) -> None:
    """The menu verifies each image by its name, and iPXE's find_image takes the first
    registered image of a name: an entry's file may not take a name the boot chain gives
    its own images (tb_entry, tb_entry.sig, the embedded script's), nor anything with
    their tb_ prefix, nor another image's of the same entry."""
    seen: dict[str, RecipePath] = {}
    for role, p in (("kernel", entry.kernel), *(("initrd", i) for i in entry.initrds)):
        name = image_name(p)
        what = f"entries.{entry.name}.{role} {p.raw!r}"
        if reserved_image_name(name):
            raise ConfigError(
                f"{p.where}: {what}: iPXE would name the image {name!r}, a name the boot "
                f"chain keeps for its own images ({', '.join(CHAIN_IMAGE_NAMES)}, "
                f"{EMBEDDED_SCRIPT_NAME}, anything starting with "
                f"{RESERVED_IMAGE_PREFIX}): imgverify would judge the wrong image",
                hint=f"rename the file (not starting with {RESERVED_IMAGE_PREFIX})")
        if name in seen:
            raise ConfigError(
                f"{p.where}: {what}: iPXE would name the image {name!r}, as the one of "
                f"{seen[name].where}: imgverify would judge the first of the two",
                hint="rename one of the files")
        seen[name] = p


def input_key(entry: EntrySpec, path: RecipePath) -> str:
    """The release key an entry's kernel or initrd is published under."""
    return f"{entry.name}/{image_name(path)}"


def _check_object_keys(entries: Sequence[EntrySpec], targets: Sequence[str],
                       fw_where: str) -> None:
    """Every name the release publishes, checked before anything runs: the manifest's
    name rule for each input's key, and no key that is, or is a folder of, another
    object's (the entry script, release.json, a firmware binary, or their signatures),
    which otherwise fails late, after signing, or takes the release's own names."""
    hint = (f"rename the entry or the file: {ENTRY_SCRIPT}, {MANIFEST_NAME}, the firmware's "
            "names and their .sig are the release's own")
    # name -> (what publishes it, the recipe line that makes it, kind)
    names: dict[str, tuple[str, str, str]] = {}
    objects = [(ENTRY_SCRIPT, "the release's entry script", fw_where, False),
               (MANIFEST_NAME, "the release manifest", fw_where, False)]
    objects += [(ipxe_build.firmware_key(t), f"firmware {t}", fw_where, False)
                for t in targets]
    objects += list(dict.fromkeys(
        (input_key(e, p), f"entries.{e.name}.{role}", p.where, True)
        for e in entries for role, p in (("kernel", e.kernel),
                                         *(("initrd", i) for i in e.initrds))))
    for key, what, where, is_input in objects:
        problem = release_key_problem(key) if is_input else None
        if problem is not None:
            raise ConfigError(f"{where}: {what} would be published as {key!r}, which is "
                              f"refused: {problem}", hint="rename the file")
        for name, kind in ((key, "input"), (key + ".sig", "input.sig")):
            kind = kind if is_input else "own"
            clash = names.get(name)
            # one key for two inputs is judged by plan (the same file twice is fine)
            if clash is not None and not (kind != "own" and clash[2] == kind):
                raise ConfigError(f"{where}: {what} would be published as {name!r}, the "
                                  f"name of {clash[0]}", hint=hint)
            names.setdefault(name, (what, where, kind))
    for name, (what, where, _) in names.items():
        parts = name.split("/")
        for i in range(1, len(parts)):
            folder = names.get("/".join(parts[:i]))
            if folder is not None:
                raise ConfigError(
                    f"{where}: {what} would be published as {name!r}, inside "
                    f"{'/'.join(parts[:i])!r}, the name of {folder[0]}", hint=hint)


def load_recipe(path: Path) -> Recipe:
    """Read (capped, regular files only) and validate a recipe file."""
    data = fsutil.read_capped(Path(path), MAX_RECIPE_BYTES, "recipe")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: recipe is not UTF-8 text") from None
    return parse_recipe(text, str(path), Path(path).absolute().parent)


def demo_recipe_text() -> str:
    """The embedded default: the package's copy of recipes/demo.yaml."""
    return resources.files("trustboot").joinpath("data/demo.yaml").read_text()


# --- paths ------------------------------------------------------------------------------


def resolve_path(recipe: Recipe, path: RecipePath, what: str, *,
                 allow_outside: Sequence[Path] = (), kind: str = "file") -> Path:
    """``path`` resolved against the recipe's directory; it must exist, be a ``kind``
    ("file" or "dir"), and lie inside the recipe's directory or an allowed root after
    every symlink is resolved."""
    if recipe.directory is None:
        raise ConfigError(f"{path.where}: {what} {path.raw!r} cannot be resolved: the "
                          "recipe has no directory", hint="run it from a recipe file")
    if "\x00" in path.raw:
        raise ConfigError(f"{path.where}: {what} holds a NUL byte")
    base = recipe.directory.resolve()
    target = (base / path.raw).resolve()
    roots = [base, *(Path(a).resolve() for a in allow_outside)]
    if not any(target == r or target.is_relative_to(r) for r in roots):
        raise ConfigError(
            f"{path.where}: {what} {path.raw!r} resolves to {target}, outside the recipe's "
            f"directory {base}",
            hint="move the file under the recipe's directory, or allow its root explicitly "
                 "with --allow-outside DIR")
    if not target.exists():
        raise ConfigError(f"{path.where}: {what} {path.raw!r} does not exist ({target})",
                          hint="build or copy it first, or fix the path in the recipe")
    if kind == "file" and not target.is_file():
        raise ConfigError(f"{path.where}: {what} {path.raw!r} is not a regular file")
    if kind == "dir" and not target.is_dir():
        raise ConfigError(f"{path.where}: {what} {path.raw!r} is not a directory")
    return target


def origin_dir(url: str) -> Path | None:
    """The directory of a file:// origin URL (None for other schemes)."""
    if urlsplit(url).scheme != "file":
        return None
    # the origin's own reading of the URL (percent-decoded), so that what is checked is
    # where it will write; imported here: only a file:// recipe needs the backend
    from trustboot.publish.fileorigin import directory_of

    return directory_of(url)
