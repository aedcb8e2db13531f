"""Upload progress: bars with bytes and rate on a terminal (a real pty), nothing but the
JSON document with --json; and the library's callback sees every byte of every phase."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path

import pytest

from tests.publish.conftest import Pki, ReleaseFactory
from trustboot.cli.verify import load_trust
from trustboot.publish.origin import OriginOptions, open_origin
from trustboot.publish.pipeline import publish_release, scan_directory
from trustboot.publish.readback import Trust

pexpect = pytest.importorskip("pexpect")
REPO = Path(__file__).resolve().parents[2]


def spawn(*args: str) -> object:
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="120")
    return pexpect.spawn(sys.executable, ["-m", "trustboot", *args], env=env,
                         encoding="utf-8", timeout=120, dimensions=(24, 160))


def test_publish_shows_bytes_and_rate_on_a_terminal_and_nothing_with_json(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    rel = make_release({"boot.ipxe": b"#!ipxe\necho hi\n", "vmlinuz": os.urandom(6 << 20)})
    common = ["--pki", str(pki.dir)]
    child = spawn("publish", str(rel), f"file://{tmp_path / 'o1'}", "--release-id", "r1",
                  "--no-switch", *common)
    child.expect(r"upload.*MiB of 6\.0 MiB, [0-9.]+ MiB/s")  # type: ignore[attr-defined]
    child.expect(pexpect.EOF)  # type: ignore[attr-defined]
    child.close()  # type: ignore[attr-defined]
    assert child.exitstatus == 0, child.before  # type: ignore[attr-defined]

    quiet = spawn("publish", str(rel), f"file://{tmp_path / 'o2'}", "--release-id", "r1",
                  "--no-switch", "--json", *common)
    quiet.expect(pexpect.EOF)  # type: ignore[attr-defined]
    quiet.close()  # type: ignore[attr-defined]
    out = quiet.before  # type: ignore[attr-defined]
    assert quiet.exitstatus == 0, out  # type: ignore[attr-defined]
    assert "MiB/s" not in out and "upload " not in out
    assert json.loads(out)["bytes_uploaded"] > 6 << 20


class Recorder:
    def __init__(self) -> None:
        self.phases: dict[str, list[int]] = {}
        self.current = ""

    def phase(self, name: str, total_bytes: int) -> None:
        self.current = name
        self.phases[name] = [total_bytes, 0]

    def advance(self, nbytes: int) -> None:
        self.phases[self.current][1] += nbytes

    def item(self, key: str, action: str) -> None:
        pass


def test_the_progress_callback_sees_every_uploaded_and_read_back_byte(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    rel = make_release({"boot.ipxe": b"#!ipxe\necho hi\n", "vmlinuz": os.urandom(3 << 20)})
    objects = scan_directory(rel)
    trust = Trust(tuple(load_trust((), pki.dir)), (), "boot-signer")
    rec = Recorder()
    with open_origin(f"file://{tmp_path / 'o'}", OriginOptions()) as origin:
        publish_release(origin, "r1", objects, entry="boot.ipxe", trust=trust,
                        now=dt.datetime.now(dt.UTC), progress=rec)
    total = sum(o.size for o in objects)
    assert rec.phases["upload"] == [total, total]
    assert rec.phases["readback"][0] >= total and rec.phases["readback"][1] >= total
