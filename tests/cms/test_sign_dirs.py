"""Without --out, FILE.sig goes beside FILE: that directory gets the rule of --out (only
root and the signing user may change it, or any directory above it), and the .sig is
written through the directory opened at the check, not by its path looked up again."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.cms.pki import PASSPHRASE, Material, make_material, rsa_key
from tests.conftest import call_as_nobody, dir_of_nobody
from trustboot.cli.main import cli
from trustboot.cms.digest import HashJob
from trustboot.errors import ConfigError

ENV = {"TB_TEST_PASS": PASSPHRASE.decode()}
NOBODY = 65534


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(Path(tmp_path_factory.mktemp("pki")))


def _sign_args(material: Material, name: str) -> list[str]:
    key, cert, chain = material.issue(name, rsa_key())
    return ["sign", "--key", f"file:{key}", "--cert", str(cert), "--chain", str(chain),
            "--passphrase-env", "TB_TEST_PASS"]


# What the other user runs: wait until root has read their FILE, then point its directory
# at root's (inotify: no timing guess).
WATCHER = textwrap.dedent("""
    import ctypes, os, sys
    home, victim = sys.argv[1], sys.argv[2]
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init()
    libc.inotify_add_watch(fd, os.path.join(home, "sub", "kernel").encode(), 0x10)
    print("watching", flush=True)
    os.read(fd, 4096)  # IN_CLOSE_NOWRITE: root read it
    os.rename(os.path.join(home, "sub"), os.path.join(home, "sub.real"))
    os.symlink(victim, os.path.join(home, "sub"))
""")


def test_another_users_directory_on_the_path_is_refused(material: Material,
                                                        shared: Path) -> None:
    """The reviewer's case: another user owns a directory on FILE's path and, once root
    read FILE, swaps it for a link to a root-only directory; root then replaced the live
    kernel.sig there. Refused (exit 3) naming their directory and --out, whenever the
    swap lands, and nothing is written anywhere."""
    victim = shared / "victim"
    victim.mkdir(mode=0o755)
    (victim / "kernel").write_bytes(b"real kernel")
    (victim / "kernel.sig").write_bytes(b"PRODUCTION SIGNATURE")
    home = dir_of_nobody(shared / "bob")  # skips unless root
    (home / "sub").mkdir()
    (home / "sub" / "kernel").write_bytes(b"their kernel")
    os.chown(home / "sub", NOBODY, NOBODY)
    os.chown(home / "sub" / "kernel", NOBODY, NOBODY)
    watcher = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-c", WATCHER, str(home), str(victim)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None and watcher.stdout.readline() == "watching\n"
        proc = subprocess.run([sys.executable, "-m", "trustboot",
                               *_sign_args(material, "swap-signer"),
                               str(home / "sub" / "kernel")],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, **ENV})
        try:
            # it swapped, before or after the check; or never: little data is hashed
            # after the directory check, which refuses the run before root reads FILE
            watcher.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert (victim / "kernel.sig").read_bytes() == b"PRODUCTION SIGNATURE"
    assert proc.returncode == 3, proc.stderr
    assert f"uid {NOBODY}" in proc.stderr and "--out DIR" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in victim.iterdir()) == ["kernel", "kernel.sig"]
    assert not list((home / "sub.real").glob("*.sig"))


def test_the_signature_goes_to_the_directory_that_was_checked(
        material: Material, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A swap after the check, between the read and the write (a seam in the hashing's
    result): the .sig is written through the directory opened at the check, beside the
    FILE that was read, never where a link put in its place leads."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "kernel.sig").write_bytes(b"PRODUCTION SIGNATURE")
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    kernel = work / "sub" / "kernel"
    kernel.write_bytes(b"kernel v2")
    real = HashJob.result

    def then_swap(job: HashJob) -> object:
        out = real(job)
        (work / "sub").rename(work / "sub.real")
        (work / "sub").symlink_to(victim)
        return out

    monkeypatch.setattr(HashJob, "result", then_swap)
    result = CliRunner().invoke(cli, [*_sign_args(material, "seam-signer"), str(kernel)],
                                env=ENV)
    monkeypatch.undo()
    assert (victim / "kernel.sig").read_bytes() == b"PRODUCTION SIGNATURE"
    assert result.exit_code == 0, result.output
    check = CliRunner().invoke(cli, ["verify", str(work / "sub.real" / "kernel"), "--trust",
                                     str(material.directory / "root.pem")])
    assert check.exit_code == 0, check.output
    assert not [p.name for p in (work / "sub.real").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("mode", [0o777, 0o1777])
def test_a_directory_others_can_write_is_refused(material: Material, tmp_path: Path,
                                                 mode: int) -> None:
    """As --out: FILE's directory writable by others (sticky or not: they can plant
    or swap entries) is refused, exit 3, with --out as the way out."""
    shared_dir = tmp_path / "drop"
    shared_dir.mkdir()
    shared_dir.chmod(mode)
    image = shared_dir / "kernel"
    image.write_bytes(b"kernel")
    result = CliRunner().invoke(cli, [*_sign_args(material, f"drop-{mode:o}"), str(image)],
                                env=ENV)
    assert result.exit_code == 3, result.output
    assert f"{shared_dir} is writable by other users" in result.output, result.output
    assert "--out DIR" in result.output
    assert sorted(p.name for p in shared_dir.iterdir()) == ["kernel"]
    out = tmp_path / "sigs"
    result = CliRunner().invoke(cli, [*_sign_args(material, f"drop-out-{mode:o}"),
                                      "--out", str(out), str(image)], env=ENV)
    assert result.exit_code == 0, result.output
    assert (out / "kernel.sig").is_file()


def test_own_directories_through_links_still_sign(material: Material, tmp_path: Path,
                                                  shared: Path) -> None:
    """A workspace reached through a link of root's or one's own passes: as root here,
    and (root only) as another user in their own directory through root's link."""
    from trustboot.cms.sign import TargetDirs, open_signature_dirs

    real = tmp_path / "builds" / "r1"
    real.mkdir(parents=True)
    (tmp_path / "current").symlink_to(real)
    image = tmp_path / "current" / "kernel"
    image.write_bytes(b"kernel")
    result = CliRunner().invoke(cli, [*_sign_args(material, "own-link"), str(image)],
                                env=ENV)
    assert result.exit_code == 0, result.output
    assert (real / "kernel.sig").is_file()
    if os.geteuid() != 0:
        pytest.skip("acting as another user needs root (CI runs as root)")
    theirs = dir_of_nobody(shared / "home")
    (theirs / "ws").mkdir()
    os.chown(theirs / "ws", NOBODY, NOBODY)
    (shared / "ws").symlink_to(theirs / "ws")  # root's link to their workspace
    said = call_as_nobody(lambda: open_signature_dirs([shared / "ws" / "kernel"], None,
                                                  TargetDirs()))
    assert said == "ok", said
    # the control: the same directory is not root's to sign into (its owner could swap
    # it), and a link of theirs on a third party's way is refused as --out's are
    with pytest.raises(ConfigError, match=f"ws is owned by uid {NOBODY}, not by root"):
        open_signature_dirs([shared / "ws" / "kernel"], None, TargetDirs())
    (shared / "ws").unlink()
    os.symlink(real, shared / "ws")
    os.chown(shared / "ws", NOBODY, NOBODY, follow_symlinks=False)
    with pytest.raises(ConfigError, match=f"symbolic link owned by uid {NOBODY}"):
        open_signature_dirs([shared / "ws" / "kernel"], None, TargetDirs())



def _limited(soft: int, hard: int) -> Callable[[], None]:
    """A preexec_fn: the child's limit of open files lowered to ``soft``/``hard``."""
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return lower


def test_files_in_more_directories_than_the_open_files_limit(material: Material,
                                                            tmp_path: Path) -> None:
    """Without --out each FILE's directory stays open for the run: 1100 directories under
    the usual soft limit of 1024 failed at the ~1000th with EMFILE (exit 1, "check the
    path"). The soft limit is raised as far as the hard one allows; where that is too
    low the run is refused before anything is signed (exit 3), saying what to do."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100 + 64:
        pytest.skip(f"needs a hard limit of open files of 1164 or more (it is {hard})")
    paths = []
    for i in range(1100):
        (tmp_path / "w" / f"d{i}").mkdir(parents=True)
        path = tmp_path / "w" / f"d{i}" / "f.bin"
        path.write_bytes(b"payload %d" % i)
        paths.append(path)
    listing = tmp_path / "list"
    listing.write_text("".join(f"{p}\n" for p in paths))
    args = [sys.executable, "-m", "trustboot", *_sign_args(material, "many-dirs"),
            "--files-from", str(listing)]
    env = {**os.environ, **ENV}
    refused = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env,
                             preexec_fn=_limited(256, 256))
    assert refused.returncode == 3, refused.stderr
    assert "1100 directories" in refused.stderr and "(256, ulimit -n)" in refused.stderr
    assert "--out DIR" in refused.stderr and "split the list" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert [p.name for p in (tmp_path / "w").rglob("*") if not p.is_dir()] == ["f.bin"] * 1100
    signed = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env,
                            preexec_fn=_limited(1024, hard))
    assert signed.returncode == 0, signed.stderr[-2000:]
    assert all(p.with_name("f.bin.sig").is_file() for p in paths)
