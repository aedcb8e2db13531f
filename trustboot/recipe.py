"""Release recipes: YAML → frozen dataclasses, every error with file:line.

Recipes are input a CI job may take from a pull request, so they are parsed defensively:
a size cap, no YAML anchors/aliases or tags (no alias bombs, no object construction),
unknown keys rejected, and file names that cannot leave the release directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trustboot.ca import profiles
from trustboot.errors import ConfigError

MAX_RECIPE_BYTES = 1 << 20
MAX_DEMO_SIZE = 1 << 30
_SIZE_RE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB)?")
_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
HASHES = ("sha256", "sha384", "sha512")
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "bool", "null", "float", "map",
                                                  "seq")}


@dataclass(frozen=True)
class CASpec:
    name: str = "trustboot"
    key_type: str = "rsa-4096"


@dataclass(frozen=True)
class SignerSpec:
    name: str
    key_type: str = "rsa-3072"


@dataclass(frozen=True)
class ImageSpec:
    name: str
    role: str  # kernel | initrd | other
    source: str | None = None  # a file to sign; None with demo_size
    demo_size: int | None = None  # demo recipes generate a synthetic file of this size


@dataclass(frozen=True)
class ScriptSpec:
    name: str = "boot.ipxe"
    cmdline: str = ""


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path | None
    ca: CASpec
    signer: SignerSpec
    images: tuple[ImageSpec, ...]
    script: ScriptSpec = field(default_factory=ScriptSpec)
    hash: str = "sha256"


class _Node:
    """A parsed YAML value with the place it came from."""

    def __init__(self, value: Any, where: str) -> None:
        self.value = value
        self.where = where


_SCALARS = yaml.constructor.SafeConstructor()


def _where(source: str, node: yaml.Node) -> str:
    return f"{source}:{node.start_mark.line + 1}"


def _convert(node: yaml.Node, source: str, depth: int = 0) -> _Node:
    if depth > 20:
        raise ConfigError(f"{_where(source, node)}: nesting too deep")
    if node.tag not in _PLAIN_TAGS:
        raise ConfigError(f"{_where(source, node)}: YAML tag {node.tag} is not allowed",
                          hint="recipes are plain YAML: remove the tag")
    if isinstance(node, yaml.MappingNode):
        out: dict[str, _Node] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise ConfigError(f"{_where(source, k)}: keys must be plain strings")
            if k.value in out:
                raise ConfigError(f"{_where(source, k)}: key {k.value!r} appears twice")
            out[k.value] = _convert(v, source, depth + 1)
        return _Node(out, _where(source, node))
    if isinstance(node, yaml.SequenceNode):
        return _Node([_convert(v, source, depth + 1) for v in node.value], _where(source, node))
    assert isinstance(node, yaml.ScalarNode)
    # The scalar's tag is already resolved (int, bool, str ...): construct it directly.
    value = _SCALARS.construct_object(node)
    return _Node(value, _where(source, node))


def _compose(text: str, source: str) -> yaml.Node | None:
    # Anchors and aliases are refused outright: an alias bomb expands exponentially.
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            line = event.start_mark.line + 1 if event.start_mark else "?"
            raise ConfigError(
                f"{source}:{line}: YAML anchors and aliases are not allowed in recipes",
                hint="write the values out")
    return yaml.compose(text, Loader=yaml.SafeLoader)


def _mapping(node: _Node, what: str, allowed: set[str], required: frozenset[str] = frozenset()
             ) -> dict[str, _Node]:
    if not isinstance(node.value, dict):
        raise ConfigError(f"{node.where}: {what} must be a mapping")
    unknown = sorted(set(node.value) - allowed)
    if unknown:
        raise ConfigError(f"{node.value[unknown[0]].where}: unknown key {unknown[0]!r} in {what}",
                          hint=f"allowed keys: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(node.value))
    if missing:
        raise ConfigError(f"{node.where}: {what} needs {missing[0]!r}")
    result: dict[str, _Node] = node.value
    return result


def _str(node: _Node, what: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(node.value, str) or not node.value:
        raise ConfigError(f"{node.where}: {what} must be a non-empty string")
    if pattern and not pattern.fullmatch(node.value):
        raise ConfigError(f"{node.where}: {what} {node.value!r} is not allowed",
                          hint="use a plain file name: letters, digits, . _ - (no paths)")
    return node.value


def _size(node: _Node) -> int:
    raw = str(node.value)
    m = _SIZE_RE.fullmatch(raw.strip())
    if not m:
        raise ConfigError(f"{node.where}: size {raw!r} is not a size",
                          hint="write e.g. 4MiB, 512KiB or 1048576")
    size = int(m.group(1)) * _UNITS[m.group(2)]
    if not 0 < size <= MAX_DEMO_SIZE:
        raise ConfigError(f"{node.where}: size {raw} is out of range (1 B to 1 GiB)")
    return size


def parse_recipe(text: str, source: str = "<recipe>", path: Path | None = None) -> Recipe:
    if len(text.encode()) > MAX_RECIPE_BYTES:
        raise ConfigError(f"{source}: recipe is larger than 1 MiB")
    try:
        root = _compose(text, source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}{line}: not valid YAML: {problem}") from None
    if root is None:
        raise ConfigError(f"{source}: recipe is empty")
    top = _mapping(_convert(root, source), "the recipe",
                   {"version", "name", "ca", "signer", "images", "script", "hash"},
                   frozenset({"version", "name", "signer", "images"}))
    if top["version"].value != 1:
        raise ConfigError(f"{top['version'].where}: unsupported recipe version "
                          f"{top['version'].value!r}", hint="this trustboot reads version: 1")
    name = _str(top["name"], "name", _FILE_RE)
    ca = CASpec()
    if "ca" in top:
        c = _mapping(top["ca"], "ca", {"name", "key_type"})
        ca = CASpec(name=_str(c["name"], "ca.name") if "name" in c else ca.name,
                    key_type=_key_type(c.get("key_type"), True, ca.key_type))
    s = _mapping(top["signer"], "signer", {"name", "key_type"}, frozenset({"name"}))
    signer_name = _str(s["name"], "signer.name")
    profiles.check_name(signer_name)
    signer = SignerSpec(signer_name, _key_type(s.get("key_type"), False, "rsa-3072"))
    if not isinstance(top["images"].value, list) or not top["images"].value:
        raise ConfigError(f"{top['images'].where}: images must be a non-empty list")
    images: list[ImageSpec] = []
    seen: set[str] = set()
    for item in top["images"].value:
        i = _mapping(item, "an image", {"name", "role", "source", "demo_size"},
                     frozenset({"name"}))
        iname = _str(i["name"], "image name", _FILE_RE)
        if iname in seen:
            raise ConfigError(f"{i['name'].where}: image {iname!r} is listed twice")
        seen.add(iname)
        role = _str(i["role"], "role") if "role" in i else "other"
        if role not in ("kernel", "initrd", "other"):
            raise ConfigError(f"{i['role'].where}: role {role!r} is not kernel, initrd or other")
        has_source, has_demo = "source" in i, "demo_size" in i
        if has_source == has_demo:
            raise ConfigError(f"{item.where}: image {iname!r} needs exactly one of source "
                              "(a file to sign) or demo_size (a generated demo file)")
        images.append(ImageSpec(
            name=iname, role=role,
            source=_str(i["source"], "source") if has_source else None,
            demo_size=_size(i["demo_size"]) if has_demo else None))
    for role in ("kernel",):
        if sum(1 for im in images if im.role == role) > 1:
            raise ConfigError(f"{top['images'].where}: more than one {role} image")
    script = ScriptSpec()
    if "script" in top:
        sc = _mapping(top["script"], "script", {"name", "cmdline"})
        cmdline = _str(sc["cmdline"], "script.cmdline") if "cmdline" in sc else ""
        if any(ch in cmdline for ch in "\n\r$"):
            # iPXE would expand ${...} and a newline would inject script lines.
            raise ConfigError(f"{sc['cmdline'].where}: cmdline may not contain newlines or '$'")
        script = ScriptSpec(
            name=_str(sc["name"], "script.name", _FILE_RE) if "name" in sc else script.name,
            cmdline=cmdline)
    hash_name = "sha256"
    if "hash" in top:
        hash_name = _str(top["hash"], "hash")
        if hash_name not in HASHES:
            raise ConfigError(f"{top['hash'].where}: hash {hash_name!r} is not one of "
                              f"{', '.join(HASHES)}")
    return Recipe(name=name, path=path, ca=ca, signer=signer, images=tuple(images),
                  script=script, hash=hash_name)


def _key_type(node: _Node | None, for_ca: bool, default: str) -> str:
    if node is None:
        return default
    value = _str(node, "key_type")
    try:
        return profiles.parse_key_type(value, for_ca=for_ca).label
    except ConfigError as exc:
        raise ConfigError(f"{node.where}: {exc.message}", hint=exc.hint) from None


def load_recipe(path: Path) -> Recipe:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc.strerror}") from None
    if len(data) > MAX_RECIPE_BYTES:
        raise ConfigError(f"{path}: recipe is larger than 1 MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: recipe is not UTF-8 text") from None
    return parse_recipe(text, str(path), Path(path))


def demo_recipe_text() -> str:
    """The embedded default: the package's copy of recipes/demo.yaml."""
    from importlib import resources

    return resources.files("trustboot").joinpath("data/demo.yaml").read_text()
