"""The quick start's first command: the embedded demo runs and its output is real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from trustboot.cli.main import cli


def test_demo_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    r = CliRunner().invoke(cli, ["demo", "--workdir", str(work), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    names = [Path(f["path"]).name for f in data["files"]]
    assert names == ["vmlinuz", "initrd.img", "boot.ipxe"]
    assert data["tampered_copy_rejected_by"] == "signature-mismatch"
    release = work / "release"
    script = (release / "boot.ipxe").read_text()
    assert script.startswith("#!ipxe\n")
    assert "imgverify --signer demo-signer initrd.img initrd.img.sig" in script
    assert "||" not in script
    # An independent judge: openssl accepts every signature against the demo root.
    for name in names:
        out = subprocess.run(
            ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in",
             str(release / f"{name}.sig"), "-content", str(release / name), "-CAfile",
             str(work / "pki" / "ca.crt"), "-purpose", "any", "-out", "/dev/null"],
            capture_output=True, text=True)
        assert out.returncode == 0, (name, out.stderr)
    assert (work / "pki" / "private").stat().st_mode & 0o077 == 0
    # A second run into the same directory refuses instead of clobbering the CA.
    again = CliRunner().invoke(cli, ["demo", "--workdir", str(work)])
    assert again.exit_code == 3 and "already holds a demo CA" in again.output


def test_demo_default_runs_as_in_the_quick_start(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "trustboot", "demo"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stdout and "refused" in r.stderr
    assert not r.stderr.startswith("error")
