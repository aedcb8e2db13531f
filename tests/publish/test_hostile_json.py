"""JSON an origin wrote (release.json, a lock record, the switch journal) that Python's
parser chokes on: a few KiB of '[' raised RecursionError, an internal error (exit 70) in
every command that read it. Now such a document is malformed like any other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from trustboot import jsonin
from trustboot.cli.main import cli
from trustboot.errors import ConfigError
from trustboot.publish.fileorigin import FileOrigin
from trustboot.publish.manifest import parse_manifest
from trustboot.publish.origin import OriginOptions

DEEP = "[" * 5000 + "]" * 5000


def test_a_deeply_nested_manifest_is_a_config_error() -> None:
    doc = ('{"version": 1, "release": "r1", "created": "2026-01-01T00:00:00Z", '
           f'"files": [], "ipxe": {DEEP}}}')
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_manifest(doc.encode())
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_manifest(doc.replace(DEEP, "NaN").encode())


def test_a_deeply_nested_lock_record_is_stale(tmp_path: Path) -> None:
    lock = tmp_path / ".trustboot-publish.lock"
    lock.write_text('{"owner": ' + "[" * 2000 + "]" * 2000 + "}")
    with FileOrigin(f"file://{tmp_path}", OriginOptions()) as origin, origin.lock("me"):
        assert json.loads(lock.read_text())["owner"] == "me"


def test_publish_list_over_a_hostile_release_json_is_not_a_crash(tmp_path: Path) -> None:
    """A file:// origin whose release directory holds a deeply nested release.json: the
    listing reports that release as unreadable and goes on."""
    good = tmp_path / "releases" / "r1"
    good.mkdir(parents=True)
    (good / "release.json").write_text(json.dumps({
        "version": 1, "release": "r1", "created": "2026-01-01T00:00:00Z", "files": []}))
    bad = tmp_path / "releases" / "r2"
    bad.mkdir()
    (bad / "release.json").write_text('{"version": 1, "ipxe": ' + DEEP + "}")
    res = CliRunner().invoke(cli, ["publish", "list", f"file://{tmp_path}", "--json"])
    assert res.exit_code != 70 and "InternalError" not in res.output, res.output
    assert "RecursionError" not in res.output


@pytest.mark.parametrize("name", [["x"], {"a": 1}, 7, None])
def test_a_file_name_that_is_not_a_string_is_a_config_error(name: object) -> None:
    """The duplicate-name check hashed every name before any was checked: a list or an
    object there was a TypeError, exit 70 in list, rollback and prune."""
    files = [{"name": name, "size": 1, "sha256": "0" * 64},
             {"name": "kernel", "size": 1, "sha256": "0" * 64}]
    doc = {"version": 1, "release": "r1", "created": "2026-01-01T00:00:00Z", "files": files}
    with pytest.raises(ConfigError, match="not a string"):
        parse_manifest(json.dumps(doc).encode())


def test_duplicate_file_names_are_named() -> None:
    files = [{"name": n, "size": 1, "sha256": "0" * 64} for n in ("b", "a", "b", "a", "c")]
    doc = {"version": 1, "release": "r1", "created": "2026-01-01T00:00:00Z", "files": files}
    with pytest.raises(ConfigError, match=r"duplicate name\(s\) a, b$"):
        parse_manifest(json.dumps(doc).encode())


def test_publish_list_over_a_release_json_with_a_list_for_a_name(tmp_path: Path) -> None:
    bad = tmp_path / "releases" / "r1"
    bad.mkdir(parents=True)
    (bad / "release.json").write_text(json.dumps({
        "version": 1, "release": "r1", "created": "2026-01-01T00:00:00Z",
        "files": [{"name": ["x"], "size": 1, "sha256": "0" * 64}]}))
    res = CliRunner().invoke(cli, ["publish", "list", f"file://{tmp_path}", "--json"])
    assert res.exit_code != 70 and "InternalError" not in res.output, res.output


def test_a_manifest_over_4_mib_is_refused_by_size() -> None:
    """Every reader caps what it fetches, but parse_manifest is also handed files and
    audit inputs: it refuses more than 4 MiB itself, before decoding any of it."""
    doc = b'{"version": 1, "release": "r1", "files": [], "x": "' + b"a" * (4 << 20) + b'"}'
    with pytest.raises(ConfigError, match="larger than 4 MiB"):
        parse_manifest(doc)


@pytest.mark.parametrize("opener,closer", [("[", "]"), ('{"a": ', "}")])
def test_nesting_is_bounded_the_same_on_every_python(opener: str, closer: str) -> None:
    """Python's own limit moves between versions (3.12 and 3.13 parse a thousand levels,
    3.11 not): MAX_DEPTH holds on all of them, arrays and objects alike."""
    def nested(depth: int) -> str:
        return opener * depth + "0" + closer * depth

    assert jsonin.loads(nested(jsonin.MAX_DEPTH)) is not None
    for depth in (jsonin.MAX_DEPTH + 1, 500, 5000):
        with pytest.raises(ValueError, match="nested"):
            jsonin.loads(nested(depth))
    # beside shallow siblings, and below a wide level
    wide = "[" + ", ".join(["[1]"] * 1000 + [nested(jsonin.MAX_DEPTH)]) + "]"
    with pytest.raises(ValueError, match="nested"):
        jsonin.loads(wide)
    assert jsonin.loads("5") == 5 and jsonin.loads('"x"') == "x"  # not a container at all
