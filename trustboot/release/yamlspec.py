"""Hostile YAML in, checked values out: the loader and the one table of what a recipe holds.

Recipes come from pull requests, so the loader refuses what YAML can do beyond plain data:
anchors and aliases (alias bombs), tags (object construction), duplicate keys, nesting deeper
than a recipe ever needs, more values than one ever holds, integers longer than any count,
and more than 1 MiB of text. Every value keeps the ``file:line`` it came from, for messages.
The same :class:`Field` table validates a recipe and prints its JSON Schema (``trustboot
recipe schema``), so the two cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from trustboot.errors import ConfigError

MAX_BYTES = 1 << 20
MAX_DEPTH = 16
MAX_INT_DIGITS = 18  # a count, a size, a number of seconds: never more than this
# Values (scalars, lists, maps): the largest recipe the field table allows (64 entries of 32
# initrds...) holds under 10,000. PyYAML is pure Python here: 1 MiB of `[0,0,0,...]`
# (400,000 values) took a minute and ~370 MB before any field was checked.
MAX_NODES = 20_000
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "bool", "null", "float", "map",
                                                  "seq")}
_SCALARS = yaml.constructor.SafeConstructor()
# The scalars PyYAML (YAML 1.1) reads as numbers or booleans in forms YAML 1.2 and every
# other reader take otherwise (017 is 15, 0x10 16, 1:30 90, `on` true): only these
# spellings are taken as numbers and booleans, the rest refused with "quote it".
_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")  # as YAML 1.2 reads them
_BOOL = {"true", "false", "True", "False", "TRUE", "FALSE"}
_TAG_WORDS = {"tag:yaml.org,2002:timestamp": "a date", "tag:yaml.org,2002:merge": "a merge key",
              "tag:yaml.org,2002:value": "a value key"}


class Node:
    """A parsed YAML value with the place it came from."""

    def __init__(self, value: Any, where: str) -> None:
        self.value = value
        self.where = where
        self.key_where = where  # for a mapping value: the line of its key


def _where(source: str, mark: Any) -> str:
    return f"{source}:{mark.line + 1}" if mark is not None else source


def _prescan(text: str, source: str) -> None:
    """Refuse anchors, aliases and deep nesting from the event stream, before composing.

    The composer recurses per nesting level (5000 levels overflow Python's stack) and
    expands aliases; the event parser does neither, so the checks run on it.
    """
    depth = nodes = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise ConfigError(
                f"{_where(source, event.start_mark)}: YAML anchors and aliases are not "
                "allowed in recipes", hint="write the values out")
        tag = getattr(event, "tag", None)
        if tag is not None:  # only a tag written in the recipe (`!!int "5"`, `! x`)
            raise ConfigError(
                f"{_where(source, event.start_mark)}: YAML tag {tag} is not allowed",
                hint="recipes are plain YAML: remove the tag")
        if isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
            nodes += 1
            if nodes > MAX_NODES:
                raise ConfigError(
                    f"{_where(source, event.start_mark)}: more than {MAX_NODES} values",
                    hint="a recipe holds a few hundred values: check what was committed")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(
                    f"{_where(source, event.start_mark)}: nesting deeper than {MAX_DEPTH} "
                    "levels", hint="a recipe is a few levels deep: flatten the value")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _convert(node: yaml.Node, source: str) -> Node:
    where = _where(source, node.start_mark)
    if node.tag not in _PLAIN_TAGS:  # only implied ones reach here (_prescan)
        what = _TAG_WORDS.get(node.tag, f"YAML type {node.tag}")
        raise ConfigError(f"{where}: {node.value!r} is read as {what}, not as text",
                          hint="quote it: '...'")
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Node] = {}
        for k, v in node.value:
            kw = _where(source, k.start_mark)
            if not isinstance(k, yaml.ScalarNode) or k.tag != "tag:yaml.org,2002:str":
                raise ConfigError(f"{kw}: keys must be plain strings")
            _check_text(k.value, kw, "key")
            if k.value in out:
                raise ConfigError(f"{kw}: key {k.value!r} appears twice")
            child = _convert(v, source)
            child.key_where = kw
            out[k.value] = child
        return Node(out, where)
    if isinstance(node, yaml.SequenceNode):
        return Node([_convert(v, source) for v in node.value], where)
    assert isinstance(node, yaml.ScalarNode)
    spelled = {"tag:yaml.org,2002:int": _INT.fullmatch(node.value) is not None,
               "tag:yaml.org,2002:float": _FLOAT.fullmatch(node.value) is not None,
               "tag:yaml.org,2002:bool": node.value in _BOOL}.get(node.tag, True)
    if not spelled:
        kind = {"tag:yaml.org,2002:int": "an integer", "tag:yaml.org,2002:float": "a number",
                "tag:yaml.org,2002:bool": "true or false"}[node.tag]
        raise ConfigError(f"{where}: {node.value!r} is {kind} only in YAML 1.1, which "
                          "other readers take otherwise",
                          hint="write a number in decimal (true or false for a flag), or "
                               "quote it for text")
    if node.tag == "tag:yaml.org,2002:int":
        digits = node.value.lstrip("+-").replace("_", "")
        if len(digits) > MAX_INT_DIGITS:
            raise ConfigError(f"{where}: integer with {len(digits)} digits is out of range")
    if node.tag == "tag:yaml.org,2002:float" and len(node.value) > 64:
        raise ConfigError(f"{where}: number is too long")
    try:
        value = _SCALARS.construct_object(node)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}: cannot read the value: {exc}") from None
    if isinstance(value, str):
        _check_text(value, where, "value")
    return Node(value, where)


def _check_text(text: str, where: str, what: str) -> None:
    """Refuse a lone surrogate (a "\\ud800" escape in a double-quoted string): it is no
    character, cannot be encoded (a path, a message) and reached the run as exit 70."""
    if any("\ud800" <= c <= "\udfff" for c in text):
        raise ConfigError(f"{where}: the {what} holds a lone UTF-16 surrogate (a \\uD800 to "
                          "\\uDFFF escape), which is not a character",
                          hint="write the character itself (UTF-8), or a \\U escape of "
                               "its code point")


def load_yaml(text: str, source: str) -> Node:
    """Parse ``text`` (named ``source`` in messages) into located nodes."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise ConfigError(f"{source}: recipe is larger than 1 MiB")
    try:
        _prescan(text, source)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.reader.ReaderError as exc:  # a character YAML forbids: no mark, a position
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(f"{source}:{line}: not valid YAML: character #x{char:04x} is not "
                          "allowed", hint="remove it (a NUL or control character)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{_where(source, mark)}: not valid YAML: {problem}") from None
    except RecursionError:  # belt and braces: _prescan bounds the depth
        raise ConfigError(f"{source}: nesting too deep") from None
    if root is None:
        raise ConfigError(f"{source}: recipe is empty")
    return _convert(root, source)


# --- the field table ---------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One value's type and limits; ``check`` returns the Python value or raises."""

    kind: str  # "str" | "int" | "bool" | "map" | "list"
    doc: str = ""
    pattern: str | None = None
    enum: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    max_length: int = 4096
    fields: Mapping[str, Field] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    item: Field | None = None
    min_items: int = 0
    max_items: int = 256
    also_str: bool = False  # an int field that also takes a string such as "30d"
    example: str = ""  # a value it takes, as YAML, for hints (derived when it can be)

    def __post_init__(self) -> None:
        # Free text cannot be guessed: a string field without choices names its example,
        # so no wrong-type error goes out without one.
        if self.kind == "str" and not self.enum and not self.example:
            raise ValueError(f"string field {self.doc!r} needs an example")

    def sample(self) -> str:
        """A value this field takes, written as YAML (the example in hints)."""
        if self.example:
            return self.example
        if self.kind == "str":
            return self.enum[0]
        if self.kind == "int":
            return str(self.minimum if self.minimum is not None else 1)
        if self.kind == "bool":
            return "true"
        if self.kind == "list":
            assert self.item is not None
            return f"[{self.item.sample()}]"
        keys = self.required or tuple(self.fields)[:1]
        return "{" + ", ".join(f"{k}: {self.fields[k].sample()}" for k in keys) + "}"

    def expects(self) -> str:
        """What a value of this field is, in words."""
        if self.kind == "str":
            return f"one of {', '.join(self.enum)}" if self.enum else "text"
        if self.kind == "int":
            lo, hi = self.minimum, self.maximum
            span = (f" from {lo} to {hi}" if lo is not None and hi is not None
                    else f" of at least {lo}" if lo is not None
                    else f" of at most {hi}" if hi is not None else "")
            return f"a whole number{span}" + (", or a string as described"
                                               if self.also_str else "")
        if self.kind == "bool":
            return "true or false"
        if self.kind == "list":
            return "a list (`[a, b]`, or one `- item` per line)"
        return f"a mapping of keys ({', '.join(sorted(self.fields))})"

    def hint(self, what: str) -> str:
        """The fix for a value of the wrong type or out of bounds: what this field holds,
        what it takes, and a line that would be accepted."""
        key = what.rsplit(".", 1)[-1]
        if key.endswith("]"):  # a list item: entries[0].arch[1]
            line = f"- {self.sample()}"
        elif what == "the recipe":  # the top level: its first key, as a line
            first = self.required[0]
            line = f"{first}: {self.fields[first].sample()}"
        else:
            line = f"{key}: {self.sample()}"
        about = f"{self.doc.rstrip('.')}; " if self.doc else ""
        return f"{about}write {self.expects()}, e.g. `{line}`"

    def check(self, node: Node, what: str) -> Any:
        v = node.value
        if self.kind == "str":
            if not isinstance(v, str) or not v:
                raise ConfigError(f"{node.where}: {what} must be a non-empty string, "
                                  f"not {_describe(v)}", hint=self.hint(what))
            if len(v) > self.max_length:
                raise ConfigError(f"{node.where}: {what} is longer than {self.max_length}",
                                  hint=f"shorten it to {self.max_length} characters or "
                                       "fewer")
            if self.enum and v not in self.enum:
                raise ConfigError(f"{node.where}: {what} {v!r} is not one of "
                                  f"{', '.join(self.enum)}", hint=self.hint(what))
            if self.pattern and not re.fullmatch(self.pattern, v):
                raise ConfigError(f"{node.where}: {what} {v!r} is not allowed",
                                  hint=self.doc or f"it must match {self.pattern}")
            return v
        if self.kind == "int":
            if self.also_str and isinstance(v, str):
                return v
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"{node.where}: {what} must be an integer, not "
                                  f"{_describe(v)}", hint=self.hint(what))
            if (self.minimum is not None and v < self.minimum) or (
                    self.maximum is not None and v > self.maximum):
                raise ConfigError(f"{node.where}: {what} {v} is out of range "
                                  f"({self.minimum} to {self.maximum})",
                                  hint=self.hint(what))
            return v
        if self.kind == "bool":
            if not isinstance(v, bool):
                raise ConfigError(f"{node.where}: {what} must be true or false, not "
                                  f"{_describe(v)}", hint=self.hint(what))
            return v
        if self.kind == "list":
            if not isinstance(v, list):
                raise ConfigError(f"{node.where}: {what} must be a list, not {_describe(v)}",
                                  hint=self.hint(what))
            if not self.min_items <= len(v) <= self.max_items:
                raise ConfigError(f"{node.where}: {what} needs {self.min_items} to "
                                  f"{self.max_items} items, not {len(v)}",
                                  hint=self.hint(what))
            assert self.item is not None
            return [Checked(self.item.check(n, f"{what}[{i}]"), n) for i, n in enumerate(v)]
        assert self.kind == "map"
        if not isinstance(v, dict):
            raise ConfigError(f"{node.where}: {what} must be a mapping, not {_describe(v)}",
                              hint=self.hint(what))
        unknown = sorted(set(v) - set(self.fields))
        if unknown:
            bad = v[unknown[0]]
            raise ConfigError(
                f"{bad.key_where}: unknown key {unknown[0]!r} in {what}",
                hint=f"allowed keys: {', '.join(sorted(self.fields))}")
        missing = [k for k in self.required if k not in v]
        if missing:
            raise ConfigError(f"{node.where}: {what} needs {missing[0]!r}",
                              hint=self.fields[missing[0]].doc or None)
        return {k: Checked(self.fields[k].check(n, f"{what}.{k}" if what != "the recipe"
                                                 else k), n)
                for k, n in v.items()}

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.doc:
            out["description"] = self.doc
        if self.kind == "str":
            out["type"] = "string"
            out["minLength"] = 1
            out["maxLength"] = self.max_length
            if self.enum:
                out["enum"] = list(self.enum)
            if self.pattern:
                out["pattern"] = f"^(?:{self.pattern})$"
        elif self.kind == "int":
            out["type"] = ["integer", "string"] if self.also_str else "integer"
            if self.minimum is not None:
                out["minimum"] = self.minimum
            if self.maximum is not None:
                out["maximum"] = self.maximum
        elif self.kind == "bool":
            out["type"] = "boolean"
        elif self.kind == "list":
            assert self.item is not None
            out.update(type="array", items=self.item.schema(), minItems=self.min_items,
                       maxItems=self.max_items)
        else:
            out.update(type="object", additionalProperties=False,
                       properties={k: f.schema() for k, f in self.fields.items()})
            if self.required:
                out["required"] = list(self.required)
        return out


@dataclass(frozen=True)
class Checked:
    """A checked value and the node it came from (for ``file:line`` in later errors)."""

    value: Any
    node: Node

    @property
    def where(self) -> str:
        return self.node.where


def _describe(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def Str(doc: str = "", *, pattern: str | None = None, enum: Sequence[str] = (),
        max_length: int = 4096, example: str = "") -> Field:
    return Field("str", doc, pattern=pattern, enum=tuple(enum), max_length=max_length,
                 example=example)


def Int(doc: str = "", *, minimum: int | None = None, maximum: int | None = None,
        also_str: bool = False, example: str = "") -> Field:
    return Field("int", doc, minimum=minimum, maximum=maximum, also_str=also_str,
                 example=example)


def Bool(doc: str = "") -> Field:
    return Field("bool", doc)


def Map(doc: str, fields: Mapping[str, Field], required: Sequence[str] = ()) -> Field:
    return Field("map", doc, fields=dict(fields), required=tuple(required))


def List(doc: str, item: Field, *, min_items: int = 0, max_items: int = 256) -> Field:
    return Field("list", doc, item=item, min_items=min_items, max_items=max_items)
