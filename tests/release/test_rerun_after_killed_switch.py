"""A release run SIGKILLed between the two moves of its entry switch leaves the new
signature beside the old script (recorded on the origin). Re-running the recipe of the
release whose script is still served must not take that release for "already live" by its
script alone: the pair as served fails imgverify. Against the real nginx WebDAV origin."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.publish.conftest import Nginx, Pki, anon_get
from tests.publish.test_faults import _entry_verifies
from tests.release.lab import make_lab
from trustboot.cli.main import cli
from trustboot.publish.pipeline import SWITCH_JOURNAL

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_rerun_of_the_served_release_repairs_a_killed_switch(
        pki: Pki, nginx: Nginx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRUSTBOOT_IPXE_SRC", raising=False)
    d = tmp_path / "lab"
    d.mkdir()
    one = make_lab(d, pki, nginx.url, images={"vmlinuz": b"kernel one " * 3000,
                                              "initrd.img": b"initrd " * 1000})
    r = CliRunner().invoke(cli, ["release", str(one), "--json"])
    assert r.exit_code == 0, r.output
    first = json.loads(r.stdout)["release"]
    entry_one = anon_get(nginx.url + "boot.ipxe", pki).content

    two = make_lab(d, pki, nginx.url, images={"vmlinuz": b"kernel two " * 3000})
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests/publish/killswitch.py"), "release", str(two)],
        env=dict(os.environ, PYTHONPATH=str(REPO), KILL_AT="between",
                 TMPDIR=str(tmp_path)),  # what the killed run leaves stays here
        capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()
    assert (nginx.root / SWITCH_JOURNAL).exists()
    assert anon_get(nginx.url + "boot.ipxe", pki).content == entry_one  # old script,
    with pytest.raises(AssertionError):  # new signature: the pair fails
        _entry_verifies(pki, nginx.url)

    one = make_lab(d, pki, nginx.url, images={"vmlinuz": b"kernel one " * 3000})
    r = CliRunner().invoke(cli, ["release", str(one), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["release"] == first
    assert _entry_verifies(pki, nginx.url) == hashlib.sha256(entry_one).digest()
    assert not (nginx.root / SWITCH_JOURNAL).exists()
