"""The iPXE tree's make runs in a bubblewrap sandbox: a hostile Makefile (the fake tree plus
probes) cannot read the build host's secrets or trustboot's environment, see or signal its
processes, reach the network, write outside its work tree or outlive the build. Real bwrap,
real make, trustboot as a real process; no iPXE tree needed.

Every probe also runs once with --unsafe-unsandboxed-build as a positive control: there it
does reach what the sandbox hides, so a "blocked" in the sandbox is the sandbox's doing."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.ipxe.fake_tree import make_fake_tree, namespace_alive, start_trustboot
from tests.ipxe.testpki import TestPki

CHAIN = ["--chain", "https://boot.example.com/boot.ipxe", "--signer", "boot-signer"]
SECRET = "s3cret-passphrase-sandbox-test"

# Runs in make's recipe before the fake build; one "PROBE name: verdict detail" per attack.
PROBE = r'''
import os, socket, subprocess, sys, time
def say(name, leaked, detail=""):
    print(f"PROBE {name}: {'LEAK' if leaked else 'blocked'} {detail}", flush=True)
# (a) files outside the tree: the passphrase file, the CA home, root's home
for name, path in (("passphrase-file", %(passfile)r), ("ca-home", %(pki)r)):
    try:
        data = open(path).read() if os.path.isfile(path) else "\n".join(os.listdir(path))
        say(name, True, repr(data[:40]))
    except OSError as exc:
        say(name, False, type(exc).__name__)
try:  # the user's home (only what the test itself binds in, its Python, may show)
    names = sorted(set(os.listdir(%(home)r)) - set(%(home_allowed)r))
    say("home", bool(names), ",".join(names)[:60])
except OSError as exc:
    say("home", False, type(exc).__name__)
# (b) trustboot's environment and processes
pidfile = %(pidfile)r  # the test writes trustboot's pid there once it runs
for _ in range(200):
    if os.path.exists(pidfile):
        break
    time.sleep(0.05)
trustboot = int(open(pidfile).read())
found = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if %(secret)r.encode() in open(f"/proc/{pid}/environ", "rb").read():
            found.append(pid)
    except OSError:
        pass
say("environ", bool(found), ",".join(found))
mine = os.readlink("/proc/self/ns/pid")
others = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if os.readlink(f"/proc/{pid}/ns/pid") != mine:
            others.append(pid)
    except OSError:
        pass
seen = os.path.exists(f"/proc/{trustboot}")
say("host-processes", bool(others) or seen, f"{len(others)} {seen}")
try:
    os.kill(trustboot, 0)
    say("signal-trustboot", True)
except OSError as exc:
    say("signal-trustboot", False, type(exc).__name__)
caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff:")][0]
say("capabilities", int(caps, 16) != 0, caps)
# (c) the network: a listener on the host's loopback
try:
    socket.create_connection(("127.0.0.1", %(port)d), timeout=3).close()
    say("network", True)
except OSError as exc:
    say("network", False, type(exc).__name__)
# (d) writing outside the work tree
for name, path in (("write-outside", %(outside)r), ("write-source", %(source)r)):
    try:
        with open(path, "w") as fh:
            fh.write("pwned")
        say(name, True)
    except OSError as exc:
        say(name, False, type(exc).__name__)
# (e) a child that detaches and would keep running after the build
if %(sandboxed)r:
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                     start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print("PROBE-NS " + mine, flush=True)
'''


@pytest.fixture(scope="module")
def bwrap() -> str:
    require_tool("make", "make")
    return require_tool("bwrap", "bubblewrap")


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bool]]]:
    """A TCP listener on the host's 127.0.0.1; the list records whether anyone came."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.2)
    came: list[bool] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = srv.accept()
                came.append(True)
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1], came
    stop.set()
    thread.join()
    srv.close()


def _bound_under(home: Path) -> list[str]:
    """The names in ``home`` that the fake tree's own interpreter binds bring along."""
    from tests.ipxe.fake_tree import sandbox_paths

    names = []
    for path in sandbox_paths([]).read_only:
        with contextlib.suppress(ValueError):
            names.append(Path(path).relative_to(home).parts[0])
    return names


def _path_without_bwrap(tmp_path: Path) -> str:
    """A PATH with every program of /usr/bin but bwrap."""
    bindir = tmp_path / "bin-without-bwrap"
    bindir.mkdir()
    for name in os.listdir("/usr/bin"):
        if name != "bwrap":
            (bindir / name).symlink_to(Path("/usr/bin", name))
    return str(bindir)


def _hostile_build(tmp_path: Path, pki: TestPki, port: int, *, sandboxed: bool,
                   ) -> tuple[str, dict[str, str], str]:
    """Build bin/ipxe.lkrn from a fake tree whose make first runs the probes (the build
    must succeed); returns trustboot's stderr, each probe's verdict and the build log."""
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    passfile = secret_dir / "pass.txt"
    passfile.write_text(SECRET)
    tree = make_fake_tree(tmp_path / "ipxe")
    io = tmp_path / "fake-io"  # the only host directory the fake make may write (its runs)
    io.mkdir()
    cache = tmp_path / "cache"
    outside = secret_dir / "planted.txt"  # not under the sandbox's private /tmp
    probe = tree / "src" / "probe.py"
    makefile = tree / "src" / "Makefile"
    makefile.write_text(makefile.read_text().replace(
        '\t@$(FAKE_PY) fake_build.py', '\t@$(FAKE_PY) probe.py\n\t@$(FAKE_PY) fake_build.py'))
    probe.write_text(PROBE % {
        "passfile": str(passfile), "pki": str(pki.dir), "secret": SECRET,
        "pidfile": str(io / "trustboot.pid"), "port": port, "outside": str(outside),
        "source": str(tree / "src" / "pwned"), "sandboxed": sandboxed,
        "home": str(Path.home()), "home_allowed": _bound_under(Path.home())})
    proc = start_trustboot(
        ["ipxe", "build", "--source", str(tree), "--pki", str(pki.dir), "--target",
         "bin/ipxe.lkrn", *CHAIN, "--cache-dir", str(cache), "-o", str(tmp_path / "out"),
         "--passphrase-env", "TB_SECRET_PASS",
         *([] if sandboxed else ["--unsafe-unsandboxed-build"])],
        {"TB_SECRET_PASS": SECRET, "FAKE_PY": sys.executable,
         "FAKE_RUNS": str(io / "runs.log"), "SOURCE_DATE_EPOCH": "0"})
    try:
        (io / "trustboot.pid").write_text(str(proc.pid))
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    logs = list((cache / "logs").glob("*.log"))
    log = logs[0].read_text() if logs else ""
    verdicts = dict(re.findall(r"^PROBE (\S+): (.*)$", log, re.M))
    assert proc.returncode == 0, err.decode(errors="replace") + log
    if sandboxed:
        assert not outside.exists() and not (tree / "src" / "pwned").exists()
    return err.decode(errors="replace"), verdicts, log


def test_a_hostile_makefile_reaches_nothing_in_the_sandbox(
    bwrap: str, pki: TestPki, tmp_path: Path, listener: tuple[int, list[bool]]
) -> None:
    port, came = listener
    err, verdicts, log = _hostile_build(tmp_path, pki, port, sandboxed=True)
    assert "unsandboxed" not in err and "without a sandbox" not in err
    expected = {"passphrase-file", "ca-home", "home", "environ", "host-processes",
                "signal-trustboot", "capabilities", "network", "write-outside", "write-source"}
    assert set(verdicts) == expected, log
    leaks = {k: v for k, v in verdicts.items() if not v.startswith("blocked")}
    assert leaks == {}, log
    assert came == []
    # the detached child died with the sandbox: nothing is left in its PID namespace
    ns = re.search(r"^PROBE-NS (\S+)$", log, re.M)
    assert ns is not None, log
    deadline = time.monotonic() + 10
    while namespace_alive(ns.group(1)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not namespace_alive(ns.group(1)), "a process of the build outlived it"
    # the benign part of the build is intact
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [o["target"] for o in manifest["outputs"]] == ["bin/ipxe.lkrn"]
    assert (tmp_path / "out" / "bin" / "ipxe.lkrn").read_bytes().startswith(b"FAKE-IPXE")


def test_unsandboxed_build_warns_and_the_probes_do_reach_out(
    bwrap: str, pki: TestPki, tmp_path: Path, listener: tuple[int, list[bool]]
) -> None:
    """The positive control: the same probes without the sandbox (the old behaviour)."""
    port, came = listener
    err, verdicts, log = _hostile_build(tmp_path, pki, port, sandboxed=False)
    assert "warning: building iPXE without a sandbox" in err
    for name in ("passphrase-file", "ca-home", "environ", "host-processes",
                 "signal-trustboot", "network", "write-outside"):
        assert verdicts[name].startswith("LEAK"), (name, log)
    assert came
    with contextlib.suppress(FileNotFoundError):
        (tmp_path / "ipxe" / "src" / "pwned").unlink()


def test_the_unsafe_option_comes_from_the_environment_and_warns_every_run(
    env: dict[str, Path], pki: TestPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from trustboot.cli.main import cli

    monkeypatch.setenv("TRUSTBOOT_UNSAFE_UNSANDBOXED_BUILD", "1")
    # no bwrap: only the unsafe path can build
    monkeypatch.setenv("PATH", _path_without_bwrap(env["tree"].parent))
    monkeypatch.setenv("FAKE_PY", sys.executable)
    for _ in range(2):  # the second run comes from the cache and still warns
        result = CliRunner().invoke(cli, ["ipxe", "build", "--source", str(env["tree"]),
                                          "--pki", str(pki.dir), "--target", "bin/ipxe.lkrn",
                                          *CHAIN])
        assert result.exit_code == 0, result.output
        assert "warning: building iPXE without a sandbox" in result.stderr


def test_missing_bwrap_is_a_clear_error(env: dict[str, Path], pki: TestPki,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from trustboot.cli.main import cli

    monkeypatch.setenv("PATH", _path_without_bwrap(env["tree"].parent))
    result = CliRunner().invoke(cli, ["ipxe", "build", "--source", str(env["tree"]),
                                      "--pki", str(pki.dir), "--target", "bin/ipxe.lkrn",
                                      *CHAIN])
    assert result.exit_code == 3, result.output
    assert "cannot run the iPXE build in a sandbox" in result.stderr
    assert "apt-get install bubblewrap" in result.stderr
    assert "--unsafe-unsandboxed-build" in result.stderr
    assert "Traceback" not in result.output
    assert env["runs"].read_text() == ""  # the tree's code never ran
    assert not (env["out"] / "bin" / "ipxe.lkrn").exists()


def test_a_recipe_cannot_turn_the_sandbox_off() -> None:
    """Only the operator can (command line, environment): no recipe key names it."""
    from trustboot.release.recipe import json_schema

    schema = json.dumps(json_schema())
    assert "ipxe" in schema and "sandbox" not in schema


def test_sigterm_stops_the_sandboxed_build(env: dict[str, Path], pki: TestPki,
                                           tmp_path: Path, bwrap: str) -> None:
    """Covered with every signal in test_hardening; here: nothing of the sandbox is left."""
    from tests.ipxe.fake_tree import read_hold, signal_mid_build

    hold = tmp_path / "holding"
    proc = start_trustboot(
        ["ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir), "--target",
         "bin/ipxe.lkrn", *CHAIN, "--cache-dir", str(env["cache"])],
        {"FAKE_HOLD": str(hold), "FAKE_PY": sys.executable, "FAKE_RUNS": str(env["runs"])})
    seen: list[str] = []
    err, alive = signal_mid_build(proc, hold, signal.SIGTERM,
                                  lambda _g: seen.append(read_hold(hold)[1]))
    assert proc.returncode == -signal.SIGTERM, err
    assert not alive
    assert seen and seen[0] != os.readlink("/proc/self/ns/pid")  # it ran in its own
    assert not namespace_alive(seen[0])
    assert list((env["cache"] / "work").glob("build-*")) == []


def test_release_takes_the_unsafe_option_and_warns(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from trustboot.cli.main import cli

    result = CliRunner().invoke(cli, ["release", str(tmp_path / "missing.yaml"),
                                      "--unsafe-unsandboxed-build"])
    assert "warning: building iPXE without a sandbox" in result.stderr
    assert result.exit_code == 3, result.output  # then the recipe is looked at, as ever
    result = CliRunner().invoke(cli, ["release", str(tmp_path / "missing.yaml")])
    assert "without a sandbox" not in result.stderr


# What bwrap prints where the kernel refuses unprivileged user namespaces (Debian's sysctl).
NO_USERNS = ("bwrap: No permissions to creating new namespace, likely because the kernel does "
             "not allow non-privileged user namespaces. On e.g. debian this can be enabled "
             "with 'sysctl kernel.unprivileged_userns_clone=1'.")


def _fake_bwrap(bindir: Path, body: str) -> Path:
    bindir.mkdir(exist_ok=True)
    script = bindir / "bwrap"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script


def test_bwrap_that_cannot_create_namespaces_is_a_clear_error(
        env: dict[str, Path], pki: TestPki, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from trustboot.cli.main import cli

    calls = tmp_path / "bwrap-calls"
    bindir = tmp_path / "fake-bin"
    _fake_bwrap(bindir, f'echo "$*" >> {calls}\necho "{NO_USERNS}" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    for _ in range(2):  # a failed probe is not remembered: the second run probes again
        result = CliRunner().invoke(cli, ["ipxe", "build", "--source", str(env["tree"]),
                                          "--pki", str(pki.dir), "--target", "bin/ipxe.lkrn",
                                          *CHAIN])
        assert result.exit_code == 3, result.output
        assert "Traceback" not in result.output
        assert ("cannot run the iPXE build in a sandbox: bwrap cannot create its namespaces "
                f"here ({NO_USERNS[:200]})") in result.stderr
        hint = result.stderr.split("hint: ", 1)[1]
        assert "unprivileged user namespaces are disabled" in hint
        assert "--unsafe-unsandboxed-build" in hint
        assert "apt-get install" not in hint  # it is installed
    assert len(calls.read_text().splitlines()) == 2  # the probe only; make never ran
    assert env["runs"].read_text() == ""
    assert not env["out"].exists()
    assert list(env["cache"].glob("out/*/manifest.json")) == []
    assert list(env["cache"].glob("work/*")) == []


def test_bwrap_is_probed_once_per_process(env: dict[str, Path], pki: TestPki,
                                          tmp_path: Path, bwrap: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from trustboot.cli.main import cli

    calls = tmp_path / "bwrap-calls"
    _fake_bwrap(tmp_path / "wrap-bin", f'echo "$*" >> {calls}\nexec {bwrap} "$@"\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'wrap-bin'}:{os.environ['PATH']}")
    for _ in range(3):
        result = CliRunner().invoke(cli, ["ipxe", "build", "--source", str(env["tree"]),
                                          "--pki", str(pki.dir), "--target", "bin/ipxe.lkrn",
                                          "--no-cache", *CHAIN])
        assert result.exit_code == 0, result.output
    lines = calls.read_text().splitlines()
    assert len([line for line in lines if line.endswith(" -- true")]) == 1, lines
    assert len([line for line in lines if " make " in f" {line} "]) == 3, lines
