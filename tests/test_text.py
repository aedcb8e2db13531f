"""trustboot.text: what reaches a terminal."""

from __future__ import annotations

from trustboot.text import unsafe_string_at


def test_unsafe_string_at_names_the_first_bad_string_in_document_order() -> None:
    doc = {"a": ["ok", "bad\x1b[2J", {"b": "also\x07bad"}], "c": "bad\rtoo",
           "d\x1b": "key"}
    assert unsafe_string_at(doc) == "/a/1"
    assert unsafe_string_at({"a": ["ok", {"b": "x\x07"}], "c": "y\x1b"}) == "/a/1/b"
    # a key is judged where it stands: before its value, after what precedes it
    assert unsafe_string_at({"k\x1b": "v\x1b", "z": "\x07"}) == "/(a key)"
    assert unsafe_string_at({"a": "\x07", "k\x1b": "v"}) == "/a"
    assert unsafe_string_at({"x": {"k\x1b": 1}}, "/doc") == "/doc/x/(a key)"


def test_unsafe_string_at_passes_clean_documents() -> None:
    assert unsafe_string_at({"a": ["ok", 1, None, {"b": "fine é"}]}) is None
    assert unsafe_string_at("\x1b") == "/"
    assert unsafe_string_at([]) is None
