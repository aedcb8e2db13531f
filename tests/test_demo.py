"""The quick start's first command: the embedded demo releases over HTTPS and its output is
real (an independent judge, openssl, accepts every signature)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from trustboot.cli.main import cli


@pytest.fixture(autouse=True)
def _no_ipxe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRUSTBOOT_IPXE_SRC", raising=False)


def test_demo_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    r = CliRunner().invoke(cli, ["demo", "--workdir", str(work), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    names = sorted(f["name"] for f in data["files"] if f["sig"])
    assert names == ["boot.ipxe", "demo-linux/initrd.img", "demo-linux/vmlinuz"]
    assert data["tampered_copy_rejected_by"] == "signature-mismatch"
    assert data["entry_url"].startswith("https://127.0.0.1:")
    stages = {s["stage"]: s for s in data["release"]["stages"]}
    assert stages["build"]["status"] == "skipped"
    assert "TRUSTBOOT_IPXE_SRC" in stages["build"]["detail"]
    assert stages["verify"]["status"] == "done"
    release = work / "origin" / "releases" / data["release"]["release"]
    script = (work / "origin" / "boot.ipxe").read_text()
    assert script == (release / "boot.ipxe").read_text()
    assert "imgverify --signer demo-signer initrd.img https://127.0.0.1:" in script
    for name in [*names, "release.json"]:
        out = subprocess.run(
            ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in",
             str(release / f"{name}.sig"), "-content", str(release / name), "-CAfile",
             str(work / "pki" / "ca.crt"), "-purpose", "any", "-out", "/dev/null"],
            capture_output=True, text=True)
        assert out.returncode == 0, (name, out.stderr)
    assert (work / "pki" / "private").stat().st_mode & 0o077 == 0
    assert not list((work / "secrets").glob("*.key")), "the TLS key must not stay on disk"
    again = CliRunner().invoke(cli, ["demo", "--workdir", str(work)])
    assert again.exit_code == 3 and "already holds a demo CA" in again.output


def test_demo_default_runs_as_in_the_quick_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRUSTBOOT_IPXE_SRC"}
    # a workstation behind a proxy (nothing listens on port 9): the demo's own loopback
    # origin is reached directly, whatever https_proxy says
    env |= {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    env = {k: v for k, v in env.items() if k.lower() != "no_proxy"}
    r = subprocess.run([sys.executable, "-m", "trustboot", "demo"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stdout and "refused" in r.stderr
    assert "skipped" in r.stderr and "TRUSTBOOT_IPXE_SRC" in r.stderr
    assert not r.stderr.startswith("error")


def test_demo_recipe_from_dev_zero_is_refused() -> None:
    r = CliRunner().invoke(cli, ["demo", "--recipe", "/dev/zero"])
    assert r.exit_code == 3, r.output
    assert "not a regular file" in r.output


def test_demo_under_umask_000(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    old = os.umask(0)
    try:
        r = CliRunner().invoke(cli, ["demo", "--workdir", str(work), "--json"])
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert work.stat().st_mode & 0o777 == 0o755
    for p in work.rglob("*"):
        if p.is_symlink():
            continue
        mode = p.stat().st_mode
        assert mode & 0o002 == 0, (p, oct(mode))  # nothing world-writable
        if "secrets" in p.parts or "private" in p.parts:
            assert mode & 0o077 == 0, (p, oct(mode))


def test_demo_with_a_relative_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["demo", "--workdir", "out/run", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["workdir"] == str(tmp_path / "out" / "run")


def test_demo_builds_in_its_work_directory_or_the_cache_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`TRUSTBOOT_IPXE_SRC=... trustboot demo` builds in a cache inside its work directory
    (the demo leaves nothing outside it, not even in the user's iPXE cache); with
    --cache-dir, in that cache, so a second demo (a new work directory, a new CA) rebuilds
    only what the new root changes."""
    from tests.conftest import require_tool
    from tests.ipxe.fake_tree import fake_env_passthrough, fake_sandbox, make_fake_tree

    require_tool("make", "make")
    make_fake_tree(tmp_path / "ipxe")
    fake_env_passthrough(monkeypatch)
    fake_sandbox(monkeypatch, [tmp_path])  # the fake make is this venv's Python
    monkeypatch.setenv("FAKE_PY", sys.executable)
    monkeypatch.setenv("FAKE_RUNS", str(tmp_path / "runs.log"))
    monkeypatch.setenv("TRUSTBOOT_CACHE_DIR", str(tmp_path / "user-cache"))
    for n, extra in ((0, []), (1, ["--cache-dir", str(tmp_path / "cache")]),
                     (2, ["--cache-dir", str(tmp_path / "cache")])):
        work = tmp_path / f"demo{n}"
        r = CliRunner().invoke(cli, ["demo", "--workdir", str(work), "--ipxe-source",
                                     str(tmp_path / "ipxe"), "--json", *extra])
        assert r.exit_code == 0, r.output
        stages = {s["stage"]: s for s in json.loads(r.stdout)["release"]["stages"]}
        assert stages["build"]["status"] == "done", stages["build"]
        assert (work / "cache").exists() == (not extra)
    assert not (tmp_path / "user-cache").exists()
    warm = [p for p in (tmp_path / "cache" / "work").glob("warm-*") if p.is_dir()]
    assert len(warm) == 1, warm  # both demos given the cache built in its one warm tree


def test_demo_without_ipxe_writes_no_cache(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTBOOT_CACHE_DIR", str(tmp_path / "cache"))
    r = CliRunner().invoke(cli, ["demo", "--workdir", str(tmp_path / "demo"), "--json"])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "cache").exists()


def test_demo_in_another_users_directory_writes_nothing_there(tmp_path: Path) -> None:
    """Its owner could move the demo's secrets directory away mid-run and put a link in its
    place: refused before anything (passphrases first) is written, as `release` refuses
    such a TMPDIR."""
    from tests.conftest import dir_of_nobody

    theirs = dir_of_nobody(tmp_path / "theirs")
    theirs.chmod(0o777)
    for work in (theirs, theirs / "run"):
        r = CliRunner().invoke(cli, ["demo", "--workdir", str(work)])
        assert r.exit_code == 3, r.output
        assert "demo work directory" in r.output and "uid 65534" in r.output
        assert list(theirs.iterdir()) == []


def test_demo_in_a_tmpdir_others_can_write_writes_nothing_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # no sticky bit: anyone can rename what is in it
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    r = CliRunner().invoke(cli, ["demo"])
    assert r.exit_code == 3, r.output
    assert "writable by other users" in r.output and "chmod go-w" in r.output
    assert list(shared.iterdir()) == []
