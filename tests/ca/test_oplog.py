"""The hash-chained operation log: every kind of change is found at its first line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import Result

from trustboot.ca import oplog
from trustboot.errors import ConfigError

from .conftest import Run


def _log(tmp_path: Path, n: int = 8) -> Path:
    path = tmp_path / "log.jsonl"
    for i in range(n):
        oplog.append(path, {"op": "issue", "name": f"c{i}"})
    return path


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_intact_chain_links_every_line(tmp_path: Path) -> None:
    path = _log(tmp_path)
    result = oplog.verify(path)
    assert result.problem is None and result.lines == 8 and result.legacy == 0
    lines = _lines(path)
    first, second = json.loads(lines[0]), json.loads(lines[1])
    assert first["prev"] == oplog.GENESIS and first["seq"] == 1
    assert second["prev"] == oplog.line_hash(lines[0].rstrip(b"\n")) and second["seq"] == 2
    assert result.head_sha256 == oplog.line_hash(lines[-1].rstrip(b"\n"))


def test_edited_entry_is_the_first_broken_line(tmp_path: Path) -> None:
    path = _log(tmp_path)
    lines = _lines(path)
    lines[3] = lines[3].replace(b'"c3"', b'"cX"')  # line 4
    path.write_bytes(b"".join(lines))
    problem = oplog.verify(path).problem
    assert problem is not None
    assert (problem.line, problem.kind) == (4, "edited"), problem


def test_edited_link_itself_is_blamed_on_its_own_line(tmp_path: Path) -> None:
    path = _log(tmp_path)
    lines = _lines(path)
    rec = json.loads(lines[5])
    rec["prev"] = "f" * 64
    lines[5] = json.dumps(rec, sort_keys=True).encode() + b"\n"  # line 6
    path.write_bytes(b"".join(lines))
    problem = oplog.verify(path).problem
    assert problem is not None and (problem.line, problem.kind) == (6, "edited"), problem


def test_a_boolean_seq_is_no_line_number(tmp_path: Path) -> None:
    # JSON true equals 1 in Python: the only line's seq rewritten as true is an edit
    path = _log(tmp_path, 1)
    rec = json.loads(path.read_bytes())
    rec["seq"] = True
    path.write_bytes(json.dumps(rec, sort_keys=True).encode() + b"\n")
    problem = oplog.verify(path).problem
    assert problem is not None and (problem.line, problem.kind) == (1, "edited"), problem
    assert "non-integer seq" in problem.message


def test_deleted_entry(tmp_path: Path) -> None:
    path = _log(tmp_path)
    lines = _lines(path)
    del lines[2]  # entry 3
    path.write_bytes(b"".join(lines))
    problem = oplog.verify(path).problem
    assert problem is not None and (problem.line, problem.kind) == (3, "deleted"), problem
    assert "entry 3 of the log is missing" in problem.message


def test_reordered_entries(tmp_path: Path) -> None:
    path = _log(tmp_path)
    lines = _lines(path)
    lines[4], lines[5] = lines[5], lines[4]  # entries 5 and 6
    path.write_bytes(b"".join(lines))
    problem = oplog.verify(path).problem
    assert problem is not None and (problem.line, problem.kind) == (5, "reordered"), problem


def test_truncated_last_line(tmp_path: Path) -> None:
    path = _log(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-20])
    problem = oplog.verify(path).problem
    assert problem is not None and (problem.line, problem.kind) == (8, "truncated"), problem
    # the next append starts a line of its own; the damage stays visible
    oplog.append(path, {"op": "crl"})
    assert json.loads(_lines(path)[-1])["seq"] == 9
    problem = oplog.verify(path).problem
    assert problem is not None and problem.line == 8


def test_inserted_unchained_line(tmp_path: Path) -> None:
    path = _log(tmp_path)
    lines = _lines(path)
    lines.insert(6, b'{"op": "issue", "name": "forged"}\n')
    path.write_bytes(b"".join(lines))
    problem = oplog.verify(path).problem
    assert problem is not None and (problem.line, problem.kind) == (7, "inserted"), problem


def test_legacy_prefix_is_reported_once_and_chained_from(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"op": "init"}\n{"op": "issue"}\n{"op": "crl"}\n')
    oplog.append(path, {"op": "migrate"})
    oplog.append(path, {"op": "renew"})
    result = oplog.verify(path, chained_from=4)
    assert result.problem is None and result.legacy == 3 and result.lines == 5
    fourth = json.loads(_lines(path)[3])
    assert fourth["seq"] == 4
    assert fourth["prev"] == oplog.line_hash(b'{"op": "crl"}')
    # the legacy prefix itself is still protected by the first chained entry
    lines = _lines(path)
    lines[2] = b'{"op": "crl", "x": 1}\n'
    path.write_bytes(b"".join(lines))
    problem = oplog.verify(path, chained_from=4).problem
    assert problem is not None and problem.line == 3 and problem.kind == "edited"


def test_stripped_links_are_not_mistaken_for_legacy(tmp_path: Path) -> None:
    path = _log(tmp_path, 4)
    stripped = [json.dumps({k: v for k, v in json.loads(line).items()
                            if k not in ("seq", "prev")}).encode() + b"\n"
                for line in _lines(path)]
    path.write_bytes(b"".join(stripped))
    assert oplog.verify(path).problem is None  # without the index's word: legacy
    problem = oplog.verify(path, chained_from=1).problem
    assert problem is not None and problem.line == 1 and problem.kind == "inserted"


def test_log_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("x\n")
    (tmp_path / "log.jsonl").symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        oplog.append(tmp_path / "log.jsonl", {"op": "x"})
    assert target.read_text() == "x\n"


@pytest.mark.parametrize("damage", ["edit", "delete", "reorder"])
def test_ca_check_reports_the_first_broken_line(pki: Path, run: Run, secrets_dir: Path,
                                                damage: str) -> None:
    for _ in range(3):
        assert run("ca", "crl", "--pki", str(pki), "--passphrase-file",
                   str(secrets_dir / "ca.pass")).exit_code == 0
    r = run("ca", "check", "--pki", str(pki), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["log"]["problem"] is None
    path = pki / "log.jsonl"
    lines = _lines(path)
    assert len(lines) == 7  # init, 3 issues, 3 crls
    if damage == "edit":
        lines[1] = lines[1].replace(b'"op": "issue"', b'"op": "issuX"')
        want = (2, "edited")
    elif damage == "delete":
        del lines[4]
        want = (5, "deleted")
    else:
        lines[2], lines[3] = lines[3], lines[2]
        want = (3, "reordered")
    path.write_bytes(b"".join(lines))
    r = run("ca", "check", "--pki", str(pki))
    assert r.exit_code == 4, r.output
    assert f"log: line {want[0]}: {want[1]}" in r.output
    assert f"first broken entry at line {want[0]}" in r.output and "hint:" in r.output
    r = run("ca", "check", "--pki", str(pki), "--json")
    assert r.exit_code == 4
    data, _end = json.JSONDecoder().raw_decode(r.output)  # then the error record
    assert (data["log"]["problem"]["line"], data["log"]["problem"]["kind"]) == want


def test_log_larger_than_a_line_cap_is_streamed(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """No cap on the whole log: with the per-line cap and the read chunk made tiny, a log
    many times larger verifies (and every kind of damage is still found) while no more
    than a chunk and one line are ever held."""
    path = _log(tmp_path, 40)
    size = path.stat().st_size
    longest = max(len(line) for line in _lines(path))
    monkeypatch.setattr(oplog, "MAX_LOG_LINE", longest)
    # the cap the whole log had before (verify refused a log above it): gone
    monkeypatch.setattr(oplog, "MAX_LOG_FILE", longest, raising=False)
    monkeypatch.setattr(oplog, "_CHUNK", 64)
    assert size > 20 * longest
    reads: list[int] = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        reads.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", counting_read)
    result = oplog.verify(path)
    assert result.problem is None and result.lines == 40
    assert result.head_sha256 == oplog.line_hash(_lines(path)[-1].rstrip(b"\n"))
    assert reads and max(reads) == 64  # never the whole file at once
    # appending reads only the last line, in chunks
    oplog.append(path, {"op": "crl"})
    assert oplog.verify(path).lines == 41
    lines = _lines(path)
    del lines[20]
    path.write_bytes(b"".join(lines))
    problem = oplog.verify(path).problem
    assert problem is not None and (problem.line, problem.kind) == (21, "deleted")
    # a line over the cap is an edit, and still hashed in full
    lines = _lines(path)
    lines[5] = b'{"pad": "' + b"x" * (2 * longest) + b'"}\n'
    path.write_bytes(b"".join(lines))
    problem = oplog.verify(path).problem
    assert problem is not None and problem.kind == "edited" and problem.line == 6
    assert "longer than" in problem.message


def test_verify_streams_lines_from_a_generator() -> None:
    """check_lines takes lines one at a time, as read_lines yields them from a pipe (which
    cannot be read whole up front, nor seeked)."""
    data, prev = b"", oplog.GENESIS
    for seq in range(1, 6):
        line = json.dumps({"op": "x", "seq": seq, "prev": prev}, sort_keys=True).encode()
        data += line + b"\n"
        prev = oplog.line_hash(line)
    r, w = os.pipe()
    try:
        os.write(w, data)
        os.close(w)
        result = oplog.check_lines(oplog.read_lines(r))
    finally:
        os.close(r)
    assert result.problem is None and result.lines == 5 and result.head_sha256 == prev


def test_append_opens_the_log_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _log(tmp_path, 3)
    opened: list[str] = []
    real_open = os.open

    def counting_open(p: object, *args: object, **kw: object) -> int:
        if str(p) == str(path):
            opened.append(str(p))
        return real_open(p, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", counting_open)
    oplog.append(path, {"op": "crl"})
    assert len(opened) == 1
    assert oplog.verify(path).problem is None


# --- index.json and log.jsonl: the log holds every change the index holds ---------------


def _ca_run(run: Run, secrets_dir: Path, *args: str) -> Result:
    return run(*args, "--passphrase-file", str(secrets_dir / "ca.pass"))


def test_a_change_whose_log_entry_was_lost_is_reported_then_appended(
        pki: Path, run: Run, secrets_dir: Path) -> None:
    """The last entry gone, as a kill between the index commit and the log append leaves
    it: `ca check` says so (exit 3), and the next write appends it from index.json, marked
    as recovered, before its own."""
    path = pki / "log.jsonl"
    lines = _lines(path)
    path.write_bytes(b"".join(lines[:-1]))  # the last issue
    r = run("ca", "check", "--pki", str(pki))
    assert r.exit_code == 3 and "log.jsonl lacks the last 1 entry (issue)" in r.output, \
        r.output
    assert _ca_run(run, secrets_dir, "ca", "crl", "--pki", str(pki)).exit_code == 0
    new = _lines(path)
    assert len(new) == len(lines) + 1
    recovered = json.loads(new[len(lines) - 1])
    assert {k: v for k, v in recovered.items() if k not in ("prev", "recovered")} == \
        {k: v for k, v in json.loads(lines[-1]).items() if k != "prev"}
    assert recovered["recovered"]["time"] >= recovered["time"]
    assert json.loads(new[-1])["op"] == "crl"
    r = run("ca", "check", "--pki", str(pki))
    assert r.exit_code == 0 and "consistent" in r.output, r.output


@pytest.mark.parametrize("damage", ["delete", "empty", "first-lines"])
def test_a_log_cut_short_or_deleted_is_a_conflict_and_writes_refuse(
        pki: Path, run: Run, secrets_dir: Path, damage: str) -> None:
    """A chain that verifies (nothing left to break it) still cannot hide what index.json
    says was logged: exit 4 naming log.jsonl, and no write (`ca crl`) papers over it."""
    path = pki / "log.jsonl"
    lines = _lines(path)
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(b"" if damage == "empty" else b"".join(lines[:2]))
    r = run("ca", "check", "--pki", str(pki))
    assert r.exit_code == 4, r.output
    assert f"log.jsonl has {0 if damage != 'first-lines' else 2} lines, but index.json " \
        f"records its last change at line {len(lines)}" in r.output, r.output
    assert "never records" in r.output, r.output  # the certificates issued since
    before = path.read_bytes() if path.exists() else None
    r = _ca_run(run, secrets_dir, "ca", "crl", "--pki", str(pki))
    assert r.exit_code == 4 and "log.jsonl has" in r.output, r.output
    assert (path.read_bytes() if path.exists() else None) == before


def test_a_log_whose_last_entries_were_replaced_is_a_conflict(pki: Path, run: Run) -> None:
    """The last line swapped for another well-linked entry: the chain holds, but it is not
    the entry index.json recorded for that line."""
    path = pki / "log.jsonl"
    lines = _lines(path)
    path.write_bytes(b"".join(lines[:-1]))
    oplog.append(path, {**json.loads(lines[-1]), "name": "someone-else"})
    r = run("ca", "check", "--pki", str(pki))
    assert r.exit_code == 4, r.output
    assert f"log.jsonl line {len(lines)} is not the 'issue' entry index.json records" in \
        r.output, r.output


def test_an_index_written_before_the_log_tie_checks_clean_and_a_cut_log_is_found(
        pki: Path, run: Run, secrets_dir: Path) -> None:
    """A CA home of the previous release (index.json without "log") loads and checks
    clean; a log cut short there is still found, by the certificates it never records;
    the first write ties the index to the log."""
    index = pki / "index.json"
    doc = json.loads(index.read_text())
    del doc["log"]
    index.write_text(json.dumps(doc, indent=2))
    r = run("ca", "check", "--pki", str(pki))
    assert r.exit_code == 0 and "consistent" in r.output, r.output
    path = pki / "log.jsonl"
    lines = _lines(path)
    path.write_bytes(b"".join(lines[:2]))  # init and the first issue
    r = run("ca", "check", "--pki", str(pki))
    assert r.exit_code == 4 and "index.json holds 2 certificate(s) log.jsonl never " \
        "records" in r.output, r.output
    path.write_bytes(b"".join(lines))
    assert _ca_run(run, secrets_dir, "ca", "crl", "--pki", str(pki)).exit_code == 0
    assert json.loads(index.read_text())["log"]["seq"] == len(lines) + 1


def test_a_log_entry_nested_a_million_deep_is_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    oplog.append(path, {"op": "init"})
    with path.open("ab") as f:
        f.write(b"[" * 500_000 + b"]" * 500_000 + b"\n")
    assert [r is None for r in oplog.records(path)] == [False, True]
    assert oplog.verify(path).problem is not None
