"""A release killed by SIGKILL cannot remove its private work directory in TMPDIR; the
next release (or resign) removes it once it is an hour old, and nothing else: not a
younger one, not a live run's, not a link with such a name (nor what it points to), not
another user's, not a name the tool never sweeps. Against the real nginx WebDAV origin,
with a real SIGKILL of a running release."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.publish.conftest import Nginx, Pki
from tests.release.lab import make_lab

REPO = Path(__file__).resolve().parents[2]


def _age(path: Path, seconds: float) -> None:
    when = time.time() - seconds
    os.utime(path, (when, when), follow_symlinks=False)


@pytest.mark.slow
def test_the_next_release_removes_what_a_killed_release_left(
        pki: Pki, nginx: Nginx, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k != "TRUSTBOOT_IPXE_SRC"}
    env.update(PYTHONPATH=str(REPO), TMPDIR=str(tmp))
    d = tmp_path / "lab"
    d.mkdir()
    recipe = make_lab(d, pki, nginx.url, images={"vmlinuz": b"kernel " * 3000,
                                                 "initrd.img": b"initrd " * 1000})
    # SIGKILLed by itself during the entry switch: its work directory is still in use
    killed = subprocess.run(
        [sys.executable, str(REPO / "tests/publish/killswitch.py"), "release", str(recipe)],
        env=dict(env, KILL_AT="between"), capture_output=True, timeout=300)
    assert killed.returncode == -9, killed.stderr.decode()
    left = list(tmp.glob("trustboot-release-*"))
    assert len(left) == 1 and left[0].is_dir(), left
    stale = left[0]
    assert any(stale.rglob("*")), "the killed run's work directory holds its files"
    _age(stale, 7200)

    # what must stay, each under a name the sweep looks at
    young = tmp / "trustboot-resign-young123"  # a killed run's, not an hour old yet
    young.mkdir(mode=0o700)
    live = Path(tempfile.mkdtemp(prefix="trustboot-resign-", dir=tmp))
    live_fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(live_fd, fcntl.LOCK_EX)  # held as a running resign holds its own
    _age(live, 7200)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_bytes(b"not the tool's")
    _age(target, 7200)
    link = tmp / "trustboot-release-link1234"
    link.symlink_to(target, target_is_directory=True)
    _age(link, 7200)
    not_swept = tmp / "trustboot-demo-abcdefgh"  # the demo's output: the user's
    not_swept.mkdir()
    _age(not_swept, 7200)
    others = tmp / "trustboot-release-others12"  # another user's (as root only)
    if os.geteuid() == 0:
        others.mkdir(mode=0o700)
        os.chown(others, 65534, 65534)
        _age(others, 7200)

    try:
        done = subprocess.run([sys.executable, "-m", "trustboot", "release", str(recipe),
                               "--json"], env=env, capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode()
    finally:
        os.close(live_fd)
    assert not stale.exists()
    assert young.is_dir() and live.is_dir() and not_swept.is_dir()
    assert others.is_dir() or os.geteuid() != 0
    assert link.is_symlink() and (target / "keep").read_bytes() == b"not the tool's"
    # and the run that swept left no work directory of its own
    assert sorted(p.name for p in tmp.glob("trustboot-release-*")) == [
        "trustboot-release-link1234"] + (["trustboot-release-others12"]
                                         if os.geteuid() == 0 else [])
