"""`ipxe build` under attack: option injection through --git, the environment make sees,
and the unencrypted client key of a killed build. Runs against the fake tree (real make,
real git); no iPXE tree needed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import as_nobody, dir_of_nobody, require_tool
from tests.ipxe import fake_tree
from tests.ipxe.fake_tree import FAKE_VARS, signal_mid_build, start_trustboot, wait_for_hold
from tests.ipxe.testpki import TestPki
from trustboot.cli.main import cli
from trustboot.errors import ConfigError
from trustboot.ipxe import build as B
from trustboot.ipxe.source import check_commit, check_git_url, clone_pinned
from trustboot.subproc import git_env, minimal_env

CHAIN = ["--chain", "https://boot.example.com/boot.ipxe", "--signer", "boot-signer"]
CLIENT_PASS = "client key passphrase"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


# --- --git ---------------------------------------------------------------------------------


def test_git_url_cannot_smuggle_an_option(env: dict[str, Path], pki: TestPki,
                                          tmp_path: Path) -> None:
    require_tool("git", "git")
    pwned = tmp_path / "pwned"
    code, _, err = run("ipxe", "build", "--git", f"--upload-pack=touch {pwned}",
                       "--commit", "a" * 40, "--pki", str(pki.dir), *CHAIN)
    assert code == 3, err
    assert "starts with '-'" in err
    assert not pwned.exists()
    assert not (env["cache"] / "git").exists()  # refused before anything ran
    # the library refuses it too, whoever calls it
    with pytest.raises(ConfigError):
        clone_pinned(f"--upload-pack=touch {pwned}", "a" * 40, tmp_path / "clone")
    assert not pwned.exists()


@pytest.mark.parametrize("url", [
    "--upload-pack=touch /tmp/x",
    "-oProxyCommand=touch /tmp/x",
    "ext::sh -c touch% /tmp/x",
    "ext::sh",
    "fd::17",
    "http://example.com/ipxe.git",
    "git://example.com/ipxe.git",
    "ftp://example.com/ipxe.git",
    "git@github.com:ipxe/ipxe.git",
    "https://example.com/ipxe.git\n--upload-pack=x",
    "https://example.com/a b",
    "https:///no-host",
    "file://host/path",
    "no/such/local/dir",
    "",
    "https://[example.com/ipxe.git",  # urlsplit's ValueError: exit 70 before
    "https://[x]/ipxe.git",
    "ssh://example.com:99999/ipxe.git",
])
def test_git_url_rule_refuses(url: str) -> None:
    with pytest.raises(ConfigError):
        check_git_url(url)


def test_git_url_rule_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("https://github.com/ipxe/ipxe.git", "ssh://git@example.com/ipxe.git",
                "ssh://git@example.com:2222/ipxe.git", "file:///srv/git/ipxe.git"):
        assert check_git_url(url) == url
    # a local directory becomes absolute, so it can never start with '-'
    (tmp_path / "-repo").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError):
        check_git_url("-repo")  # '-repo' itself is refused ...
    assert check_git_url("./-repo") == str(tmp_path / "-repo")  # ... './-repo' is fine


@pytest.mark.parametrize("commit", ["abc123", "--foo", "g" * 40, "a" * 41, "HEAD", ""])
def test_commit_must_be_a_full_id(commit: str) -> None:
    with pytest.raises(ConfigError):
        check_commit(commit)
    assert check_commit("A" * 40) == "a" * 40 and check_commit("b" * 64) == "b" * 64


def test_git_environment_refuses_ext_transport_even_if_asked(tmp_path: Path) -> None:
    """Defence in depth: git itself runs with GIT_ALLOW_PROTOCOL=https:ssh:file."""
    git = require_tool("git", "git")
    pwned = tmp_path / "pwned2"
    proc = subprocess.run([git, "ls-remote", "--", f"ext::sh -c touch% {pwned}"],
                          capture_output=True, env=git_env(), cwd=tmp_path, timeout=60)
    assert proc.returncode != 0
    assert not pwned.exists()


def test_subprocess_environments_carry_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TB_SECRET_PASS", "hunter2hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "abc")
    monkeypatch.setenv("MAKEFLAGS", "-j99 --eval=$(shell touch /tmp/x)")
    for env in (git_env(), minimal_env(B.passed_env())):
        assert "TB_SECRET_PASS" not in env and "AWS_SECRET_ACCESS_KEY" not in env
        assert "MAKEFLAGS" not in env
        assert env["LC_ALL"] == "C" and env["PATH"]
    assert git_env()["GIT_ALLOW_PROTOCOL"] == "https:ssh:file"
    assert git_env()["GIT_TERMINAL_PROMPT"] == "0"
    opted = minimal_env(B.passed_env(["TB_SECRET_PASS"]))  # --make-env: opt-in
    assert opted["TB_SECRET_PASS"] == "hunter2hunter2"


def test_git_clone_from_a_local_repository_still_works(env: dict[str, Path], pki: TestPki,
                                                       tmp_path: Path) -> None:
    git = require_tool("git", "git")
    repo = tmp_path / "repo"
    subprocess.run(["cp", "-a", str(env["tree"]), str(repo)], check=True)
    for argv in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x"]):
        subprocess.run([git, "-C", str(repo), *argv], check=True)
    commit = subprocess.run([git, "-C", str(repo), "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    code, out, err = run("ipxe", "build", "--git", str(repo), "--commit", commit,
                         "--pki", str(pki.dir), "--target", "bin/ipxe.lkrn", *CHAIN, "--json")
    assert code == 0, err
    assert json.loads(out)["manifest"]["source"]["git_commit"] == commit


def _many_files_repo(repo: Path) -> str:
    """A repository whose checkout takes long enough to be killed in the middle."""
    git = require_tool("git", "git")
    (repo / "src").mkdir(parents=True)
    for i in range(2000):
        (repo / "src" / f"f{i}.c").write_bytes(os.urandom(16 << 10))
    for argv in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x"]):
        subprocess.run([git, "-C", str(repo), *argv], check=True)
    return subprocess.run([git, "-C", str(repo), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()


def test_a_clone_killed_mid_checkout_does_not_block_later_builds(tmp_path: Path) -> None:
    """A cancelled CI job kills trustboot and its git together (SIGKILL to the group): the
    checkout stops with part of the tree written, no HEAD and git's index.lock. That clone
    must not be what the cache holds for the commit, which every later build then failed
    to clone over ("index.lock: File exists")."""
    repo = tmp_path / "repo"
    commit = _many_files_repo(repo)
    git_dir = tmp_path / "cache" / "git"
    dest = git_dir / commit
    code = (f"from trustboot.ipxe.source import clone_pinned; from pathlib import Path; "
            f"clone_pinned({str(repo)!r}, {commit!r}, Path({str(dest)!r}))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    killed = False
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            # checking out: the index is locked while the files are written
            if any((git_dir / n / ".git" / "index.lock").exists() for n in os.listdir(git_dir)):
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
        time.sleep(0.001)
    proc.wait()
    if not killed:
        pytest.skip("the checkout ended before it could be killed (a very fast disk)")
    assert clone_pinned(str(repo), commit, dest) == dest
    assert len(os.listdir(dest / "src")) == 2000
    status = subprocess.run(["git", "-C", str(dest), "status", "--porcelain"], check=True,
                            capture_output=True, text=True, env=git_env())
    assert status.stdout == ""
    # the killed run's own clone goes once it is a minute old (no live run holds it)
    leftovers = [git_dir / n for n in os.listdir(git_dir) if n != commit]
    for left in leftovers:
        os.utime(left, (time.time() - 120, time.time() - 120))
    assert clone_pinned(str(repo), commit, dest) == dest
    assert os.listdir(git_dir) == [commit]


# --- the client key ------------------------------------------------------------------------


def _client_store(pki: TestPki, root: Path) -> Path:
    """A pki layout holding client certificate 'c1' and its encrypted key."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from trustboot.keys.keyfile import write_key

    store = root / "store"
    (store / "issued").mkdir(parents=True)
    (store / "ca.crt").write_bytes(pki.root.read_bytes())
    (store / "issuing-ca.crt").write_bytes(pki.issuing.read_bytes())
    cert, key = pki.client_credentials("c1")
    (store / "issued" / "c1.crt").write_bytes(cert.public_bytes(Encoding.PEM))
    write_key(store / "private" / "c1.key", key, CLIENT_PASS.encode())
    return store


def test_make_never_sees_the_passphrase_variable(env: dict[str, Path], pki: TestPki,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store = _client_store(pki, tmp_path)
    builder = env["tree"] / "src" / "fake_build.py"
    dump = tmp_path / "make-env.json"
    builder.write_text(builder.read_text().replace(
        'with open(os.environ["FAKE_RUNS"], "a") as log:',
        f'open({str(dump)!r}, "w").write(__import__("json").dumps(dict(os.environ)))\n'
        'with open(os.environ["FAKE_RUNS"], "a") as log:'))
    monkeypatch.setenv("TB_CLIENT_PASS", CLIENT_PASS)
    code, _, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(store),
                       "--client-cert", "c1", "--passphrase-env", "TB_CLIENT_PASS",
                       "--target", "bin/ipxe.lkrn", *CHAIN)
    assert code == 0, err
    seen = json.loads(dump.read_text())
    assert "TB_CLIENT_PASS" not in seen
    assert CLIENT_PASS not in json.dumps(seen)
    make_own = {"MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "PWD", "SHLVL", "_"}
    plan_vars = {"TRUST", "CERT", "EMBED", "PRIVKEY", "EXTRA_CFLAGS", "SOURCE_DATE_EPOCH",
                 "GITVERSION", "CROSS"}  # make exports its command-line variables
    assert set(seen) <= {"PATH", "HOME", "TMPDIR", "USER", "LOGNAME", "LANG", "LC_ALL",
                         *FAKE_VARS, *make_own, *plan_vars}
    code, _, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(store),
                       "--client-cert", "c1", "--passphrase-env", "TB_CLIENT_PASS",
                       "--make-env", "TB_CLIENT_PASS", "--target", "bin/ipxe.lkrn", *CHAIN)
    assert code == 3 and "passphrase" in err


def test_make_env_never_names_the_secure_boot_passphrase_variable(
        env: dict[str, Path], pki: TestPki, monkeypatch: pytest.MonkeyPatch) -> None:
    """--make-env refuses the variable --secureboot-passphrase-env reads, as it refuses
    the client key's: make runs the tree's code, and the db key signs what firmware runs."""
    monkeypatch.setenv("TB_SB_PASS", "secure-boot-passphrase")
    code, out, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki",
                         str(pki.dir), "--secureboot-sign", "db",
                         "--secureboot-passphrase-env", "TB_SB_PASS",
                         "--make-env", "TB_SB_PASS", "--target", "bin-x86_64-efi/ipxe.efi",
                         *CHAIN)
    assert code == 3 and out == "", err
    assert "would hand the Secure Boot db key's passphrase to make" in err, err
    assert "secure-boot-passphrase" not in err
    assert env["runs"].read_text() == ""  # make never ran


def test_key_copies_are_removed_only_from_real_bin_directories(
        env: dict[str, Path], pki: TestPki, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After a client build trustboot removes iPXE's bin*/.private_key* copies of the key:
    a bin* that make made a link to a host directory is not looked into."""
    store = _client_store(pki, tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / ".private_key.list").write_text("keep me\n")
    makefile = env["tree"] / "src" / "Makefile"
    text = makefile.read_text()
    line = next(x for x in text.splitlines() if "fake_build.py" in x)
    makefile.write_text(text.replace(line, f"{line}\n\t@ln -sfn {victim} bin-planted"))
    monkeypatch.setenv("TB_CLIENT_PASS", CLIENT_PASS)
    code, _, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(store),
                       "--client-cert", "c1", "--passphrase-env", "TB_CLIENT_PASS",
                       "--target", "bin/ipxe.lkrn", *CHAIN)
    assert code == 0, err
    assert (victim / ".private_key.list").read_text() == "keep me\n"


def _start_client_build(env: dict[str, Path], pki: TestPki, tmp_path: Path,
                        hold: Path, **extra_env: str) -> subprocess.Popen[bytes]:
    store = _client_store(pki, tmp_path)
    return start_trustboot(
        ["ipxe", "build", "--source", str(env["tree"]), "--pki", str(store), "--client-cert",
         "c1", "--passphrase-env", "TB_CLIENT_PASS", "--target", "bin/ipxe.lkrn", *CHAIN,
         "--cache-dir", str(env["cache"]), "-o", str(tmp_path / "out")],
        {"FAKE_HOLD": str(hold), "TB_CLIENT_PASS": CLIENT_PASS, **extra_env})


def _keys_in(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.name == "client.key" or "private_key" in p.name]


def test_sigkilled_client_build_leaves_key_only_until_the_next_run(
    env: dict[str, Path], pki: TestPki, tmp_path: Path
) -> None:
    hold = tmp_path / "holding"
    proc = _start_client_build(env, pki, tmp_path, hold)
    make_group = proc.pid
    try:
        make_group = wait_for_hold(hold, proc)
        trees = list((env["cache"] / "work").glob(f"build-{proc.pid}-*"))
        assert len(trees) == 1
        tree = trees[0]
        assert oct(tree.stat().st_mode & 0o777) == "0o700"
        key = tree / "trustboot-inputs" / "client.key"
        assert key.is_file() and oct(key.stat().st_mode & 0o777) == "0o600"
    finally:
        # python first, then make and the compiler: no cleanup. Killing make first (a set
        # has no order) let a loaded machine's trustboot see make fail and clean up.
        for group in dict.fromkeys((proc.pid, make_group)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        proc.wait()
    assert _keys_in(env["cache"]), "SIGKILL leaves the key behind (nothing can run)"
    # the next build, whatever it builds, removes the dead build's tree first
    code, _, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir),
                       "--target", "bin/ipxe.lkrn", *CHAIN, "--cache-dir", str(env["cache"]))
    assert code == 0, err
    assert _keys_in(env["cache"]) == []
    assert list((env["cache"] / "work").glob(f"build-{proc.pid}-*")) == []



def test_a_build_in_another_pid_namespace_leaves_a_live_build_s_tree(
        env: dict[str, Path], pki: TestPki, tmp_path: Path) -> None:
    """Two containers sharing a cache volume: each sees only its own pids, so the pid in
    a fresh tree's name says nothing about its build there. The live build's lock does:
    the other build keeps the tree (and the build's client key) and still removes a
    tree nobody holds."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a PID namespace")
    hold = tmp_path / "holding"
    proc = _start_client_build(env, pki, tmp_path, hold)
    make_group = proc.pid
    abandoned = env["cache"] / "work" / "build-1-abandoned"  # pid 1: alive in every namespace
    try:
        make_group = wait_for_hold(hold, proc)
        trees = list((env["cache"] / "work").glob(f"build-{proc.pid}-*"))
        assert len(trees) == 1
        abandoned.mkdir(mode=0o700)
        (abandoned / "client.key").write_bytes(b"left by a killed build")
        other = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
             fake_tree._DRIVER % (FAKE_VARS,), "ipxe", "build", "--source", str(env["tree"]),
             "--pki", str(pki.dir), "--target", "bin/ipxe.lkrn", *CHAIN,
             "--cache-dir", str(env["cache"]), "-o", str(tmp_path / "other")],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            capture_output=True, timeout=300)
        assert other.returncode == 0, other.stderr
        assert (trees[0] / "trustboot-inputs" / "client.key").is_file()  # still the build's
        assert not abandoned.exists()
    finally:
        for group in dict.fromkeys((proc.pid, make_group)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        proc.wait()

@pytest.mark.parametrize(("signum", "returncode"), [
    (signal.SIGTERM, -signal.SIGTERM),  # dies of it after the cleanup: 143 in a shell
    (signal.SIGHUP, -signal.SIGHUP),
    (signal.SIGINT, 130),  # Ctrl-C: the documented exit code
])
def test_signal_removes_the_key_and_stops_make(env: dict[str, Path], pki: TestPki,
                                               tmp_path: Path, signum: int,
                                               returncode: int) -> None:
    hold = tmp_path / "holding"
    proc = _start_client_build(env, pki, tmp_path, hold)

    def held(make_group: int) -> None:
        assert make_group != proc.pid  # make runs in a process group of its own
        assert _keys_in(env["cache"])

    err, alive = signal_mid_build(proc, hold, signum, held)
    # the cleanup ran, then the process ended as the signal meant
    assert proc.returncode == returncode, err
    assert not alive, "make (or its compiler) outlived the build"
    assert _keys_in(env["cache"]) == []
    assert list((env["cache"] / "work").glob("build-*")) == []
    assert b"Traceback" not in err


def test_a_hangup_under_nohup_does_not_stop_the_build(env: dict[str, Path], pki: TestPki,
                                                      tmp_path: Path) -> None:
    """Started with SIGHUP ignored (nohup, a detached job), the build keeps it ignored: the
    hangup goes unheeded, and a later SIGTERM still stops it with the cleanup."""
    hold = tmp_path / "holding"
    proc = _start_client_build(env, pki, tmp_path, hold, FAKE_NOHUP="1")

    def held(_make_group: int) -> None:
        os.kill(proc.pid, signal.SIGHUP)
        time.sleep(1.0)
        assert proc.poll() is None, "a hangup stopped a build started under nohup"

    err, alive = signal_mid_build(proc, hold, signal.SIGTERM, held)
    assert proc.returncode == -signal.SIGTERM, err
    assert not alive
    assert _keys_in(env["cache"]) == []


# --- unbounded reads and odd files -----------------------------------------------------------


@pytest.mark.parametrize("option", ["--trust", "--cert", "--script"])
def test_device_and_fifo_inputs_are_refused_unread(env: dict[str, Path], pki: TestPki,
                                                   tmp_path: Path, option: str) -> None:
    fifo = tmp_path / "input.fifo"
    os.mkfifo(fifo)
    extra = [] if option == "--script" else CHAIN
    for path in ("/dev/zero", str(fifo)):
        start = time.monotonic()
        code, _, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki",
                           str(pki.dir), option, path, *extra)
        assert code == 3, err
        assert "not a regular file" in err
        assert time.monotonic() - start < 30
    assert env["runs"].read_text() == ""


def test_fifo_in_the_source_tree_is_refused(env: dict[str, Path], pki: TestPki) -> None:
    os.mkfifo(env["tree"] / "src" / "trap.fifo")
    code, _, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir),
                       *CHAIN)
    assert code == 3 and "not a regular file" in err


def test_output_under_a_file_is_operational(env: dict[str, Path], pki: TestPki,
                                            tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    code, _, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir),
                       "--target", "bin/ipxe.lkrn", *CHAIN, "-o", str(tmp_path / "afile" / "o"))
    assert code == 1, err
    assert "cannot create directory" in err and "Traceback" not in err


def test_output_directory_others_can_write_is_refused(env: dict[str, Path], pki: TestPki,
                                                      tmp_path: Path) -> None:
    """Whoever can write the output directory could swap the firmware (which trusts the
    root) before it is deployed: refused, no binary copied there."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    code, _, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir),
                       "--target", "bin/ipxe.lkrn", *CHAIN, "-o", str(shared))
    assert code == 3, err
    assert "writable by other users" in err and "Traceback" not in err
    assert list(shared.iterdir()) == []


def test_cache_below_a_directory_of_another_user_is_refused(env: dict[str, Path],
                                                            pki: TestPki,
                                                            tmp_path: Path) -> None:
    """`sudo` keeping HOME puts root's build cache in a user's ~/.cache: the cache is
    root's and 0700, but that user owns its parent and can move it away during a build
    and put their own in its place, whose out/KEY/ firmware is then a cache hit copied
    to -o. Refused (exit 3) before anything is built or copied."""
    home_cache = dir_of_nobody(tmp_path / "alice-cache")
    cache = home_cache / "trustboot"
    out = tmp_path / "out"
    # what `nobody` can do to root's private cache there: rename it and plant their own
    cache.mkdir(mode=0o700)
    as_nobody("mv", "--", "trustboot", "moved", cwd=home_cache)
    assert not cache.exists()
    (home_cache / "moved").rename(cache)  # (put back: the refusal must not depend on it)
    code, _, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir),
                       "--target", "bin/ipxe.lkrn", *CHAIN, "--cache-dir", str(cache),
                       "-o", str(out))
    assert code == 3, err
    assert f"{home_cache} above it is owned by uid 65534" in err and "Traceback" not in err
    assert list(cache.iterdir()) == [] and not out.exists()


def test_sigterm_in_a_host_program_reaches_its_own_handler(
    env: dict[str, Path], pki: TestPki, tmp_path: Path
) -> None:
    """A program that handles SIGTERM itself still gets it, after the tree is removed."""
    import threading

    from trustboot.ipxe.config import load_single_certificate

    got: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _f: got.append(signum))
    hold = tmp_path / "holding"
    os.environ["FAKE_HOLD"] = str(hold)
    try:
        request = B.BuildRequest(
            source=__import__("trustboot.ipxe.source", fromlist=["x"]).open_source(
                env["tree"]),
            targets=("bin-x86_64-efi/ipxe.efi",), trust=(load_single_certificate(pki.root),),
            script="#!ipxe\n")
        def later() -> None:
            deadline = time.monotonic() + 60
            while not hold.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)
        threading.Thread(target=later, daemon=True).start()
        with pytest.raises(Exception, match="interrupted by SIGTERM"):
            B.build(request, output_dir=tmp_path / "o", cache_dir=env["cache"],
                    toolchain=dict(B.check_toolchain([])))
    finally:
        del os.environ["FAKE_HOLD"]
        signal.signal(signal.SIGTERM, previous)
    assert got == [signal.SIGTERM]
    assert list((env["cache"] / "work").glob("build-*")) == []


def test_a_git_server_that_never_answers_is_given_up_at_the_time_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipe's git server that accepts and then says nothing (or trickles) cannot hold a
    release: past TRUSTBOOT_BUILD_TIMEOUT git and its transport helper are killed and
    the clone fails naming the limit; no clone is left in place."""
    import socket
    import threading

    from tests.procs import processes_with
    from trustboot.errors import OperationalError

    require_tool("git", "git")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)  # close() would not wake a blocked accept()
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])  # and never a byte back

    # joined below: a thread left running would keep later tests' signing from forking
    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    monkeypatch.setenv("TRUSTBOOT_BUILD_TIMEOUT", "2")
    url = f"https://127.0.0.1:{port}/ipxe.git"
    started = time.monotonic()
    try:
        with pytest.raises(OperationalError, match="git did not finish within 2 s") as info:
            clone_pinned(url, "a" * 40, tmp_path / "git" / ("a" * 40))
    finally:
        stop.set()
        acceptor.join()
        listener.close()
        for conn in held:
            conn.close()
    assert time.monotonic() - started < 30
    assert "TRUSTBOOT_BUILD_TIMEOUT" in (info.value.hint or "")
    assert held, "git never connected: the test proved nothing"
    assert not (tmp_path / "git" / ("a" * 40)).exists()
    assert processes_with(f"127.0.0.1:{port}") == []  # git-remote-https went too
