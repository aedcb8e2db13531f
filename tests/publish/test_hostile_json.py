"""JSON an origin wrote (release.json, a lock record, the switch journal) that Python's
parser chokes on: a few KiB of '[' raised RecursionError, an internal error (exit 70) in
every command that read it. Now such a document is malformed like any other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

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


def test_a_manifest_over_4_mib_is_refused_by_size() -> None:
    """Every reader caps what it fetches, but parse_manifest is also handed files and
    audit inputs: it refuses more than 4 MiB itself, before decoding any of it."""
    doc = b'{"version": 1, "release": "r1", "files": [], "x": "' + b"a" * (4 << 20) + b'"}'
    with pytest.raises(ConfigError, match="larger than 4 MiB"):
        parse_manifest(doc)
