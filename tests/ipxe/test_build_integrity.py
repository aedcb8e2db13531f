"""What a build takes from the tree and leaves in the cache stays tied to its cache key: a
tree changed after it was identified, a warm tree whose make was killed mid-way (a clone
killed mid-checkout: tests/ipxe/test_hardening.py). And make's output, the tree's own
text, is bounded and escaped before it reaches the log, trustboot's memory or the
terminal. Real make in the real sandbox on the fake tree; no iPXE tree needed."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.ipxe.conftest import FAKE_TOOLCHAIN
from tests.ipxe.fake_tree import read_hold, start_trustboot, wait_for_hold
from tests.ipxe.test_build_plan import SCRIPT
from tests.ipxe.test_hostile_make import add_to_recipe
from tests.ipxe.testpki import TestPki
from tests.procs import process_state
from trustboot.cli.main import cli
from trustboot.errors import OperationalError
from trustboot.ipxe import build as B
from trustboot.ipxe.config import load_single_certificate
from trustboot.ipxe.source import open_source

CHAIN = ["--chain", "https://boot.example.com/boot.ipxe", "--signer", "boot-signer"]
TARGET = "bin/ipxe.lkrn"


def _request(tree: Path, pki: TestPki) -> B.BuildRequest:
    return B.BuildRequest(source=open_source(tree), targets=(TARGET,),
                          trust=(load_single_certificate(pki.root),), script=SCRIPT)


def _build(request: B.BuildRequest, env: dict[str, Path], out: str) -> B.BuildResult:
    return B.build(request, output_dir=env["out"].parent / out, cache_dir=env["cache"],
                   toolchain=dict(FAKE_TOOLCHAIN))


# --- the tree the key names ---------------------------------------------------------------


@pytest.mark.parametrize("change", ["edit", "add", "link"])
def test_a_tree_changed_after_it_was_identified_is_not_built_under_its_key(
        env: dict[str, Path], pki: TestPki, tmp_path: Path, change: str) -> None:
    """A release identifies the tree (its cache key) when it validates the recipe, and
    copies it after the passphrase prompt and the uploads: a tree changed in between (a
    checkout of another commit, an edit) was built and cached as the tree it had been, so
    every later build of that tree got the other tree's firmware from the cache."""
    request = _request(env["tree"], pki)
    src = env["tree"] / "src"
    original = (src / "Makefile").read_text()
    if change == "edit":
        add_to_recipe(env["tree"], "echo OTHER-TREE >> $@")
    elif change == "add":
        (src / "extra.h").write_text("/* a file the key does not cover */\n")
    else:  # a file replaced by a link to one of the tree's others: the copy is refused
        (src / "config" / "general.h").unlink()
        (src / "config" / "general.h").symlink_to("../include/ipxe/image.h")
    with pytest.raises(OperationalError, match="changed after trustboot identified it"):
        _build(request, env, "first")
    assert list(env["cache"].glob("out/*/manifest.json")) == []
    assert not (env["out"].parent / "first").exists()
    # the tree as identified builds (and caches) its own firmware
    (src / "Makefile").write_text(original)
    (src / "extra.h").unlink(missing_ok=True)
    if (src / "config" / "general.h").is_symlink():
        (src / "config" / "general.h").unlink()
        (src / "config" / "general.h").write_text("/* fake */\n")
    again = _build(_request(env["tree"], pki), env, "again")
    assert not again.cached
    assert b"OTHER-TREE" not in again.outputs[TARGET].read_bytes()


# --- a warm tree make was killed in ---------------------------------------------------------

# The fake build's object: written in two halves, with a pause (FAKE_HOLD, once) between.
HALVES = '''import os, sys, time
hold = os.environ.get("FAKE_HOLD")
with open(sys.argv[1], "w") as out:
    out.write("FIRST-HALF")
    out.flush()
    if hold and not os.path.exists(hold):  # say who holds (see fake_tree), be killed
        with open(hold + ".tmp", "w") as f:
            f.write(f"{os.getpid()} {os.readlink('/proc/self/ns/pid')}")
        os.replace(hold + ".tmp", hold)
        time.sleep(120)
    out.write("SECOND-HALF")
'''


def _with_object(tree: Path) -> None:
    """The fake tree with one object (obj/part.o, from part.c) that every target
    embeds, as make tracks it: rebuilt only when it is older than its source."""
    src = tree / "src"
    (src / "part.c").write_text("int part;\n")
    (src / "halves.py").write_text(HALVES)
    makefile = src / "Makefile"
    text = makefile.read_text().replace(
        "bin/% bin-x86_64-efi/% bin-arm64-efi/%: FORCE",
        "obj/part.o: part.c\n\t@mkdir -p obj\n\t@$(FAKE_PY) halves.py $@\n"
        "bin/% bin-x86_64-efi/% bin-arm64-efi/%: obj/part.o FORCE")
    # only the object holds (the fake build would too: FAKE_HOLD is in the warm key)
    makefile.write_text(text.replace("\t@$(FAKE_PY) fake_build.py",
                                     "\t@FAKE_HOLD= $(FAKE_PY) fake_build.py"))
    add_to_recipe(tree, "cat obj/part.o >> $@")


def _running_in(pid_ns: str) -> list[int]:
    """The processes of PID namespace ``pid_ns`` that are not zombies (the sandbox's
    init, orphaned by a SIGKILL, is one until the host's init reaps it)."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            state = process_state(int(name))
            if os.readlink(f"/proc/{name}/ns/pid") == pid_ns and state and state[1] != "Z":
                found.append(int(name))
    return found


def test_a_warm_tree_whose_make_was_killed_is_copied_afresh(
        env: dict[str, Path], pki: TestPki, tmp_path: Path) -> None:
    """trustboot killed with SIGKILL while make writes an object of a warm tree (a BIOS
    build): the sandbox goes with it, the half-written object stays, newer than its
    source. The next build reused the tree, make took the object as built, and the
    firmware held half of it (a real link fails on it, or worse does not)."""
    _with_object(env["tree"])
    hold = tmp_path / "holding"
    common = ["ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir),
              "--target", TARGET, *CHAIN, "--cache-dir", str(env["cache"])]
    fake = {"FAKE_HOLD": str(hold), "FAKE_PY": sys.executable, "FAKE_RUNS": str(env["runs"])}
    proc = start_trustboot(common, fake)
    try:
        wait_for_hold(hold, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    warm = next(p for p in (env["cache"] / "work").glob("warm-*") if p.is_dir())
    assert (warm / "src" / "obj" / "part.o").read_text() == "FIRST-HALF"
    # the same build again (FAKE_HOLD set, so the same warm key; it holds no more)
    proc = start_trustboot(common, fake)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    data = (env["out"] / TARGET).read_bytes()
    assert data.endswith(b"FIRST-HALFSECOND-HALF"), data[-40:]
    assert not _running_in(read_hold(hold)[1])  # the sandbox went with the SIGKILL
    # a build that ran to its end leaves the tree warm: the next one builds no object
    built = (warm / "src" / "obj" / "part.o").stat().st_mtime_ns
    proc = start_trustboot([*common, "--no-cache"], fake)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert (warm / "src" / "obj" / "part.o").stat().st_mtime_ns == built


# --- make's output --------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["succeeds", "fails"])
def test_make_output_is_bounded_in_the_log_and_in_memory(
        env: dict[str, Path], pki: TestPki, monkeypatch: pytest.MonkeyPatch,
        outcome: str) -> None:
    """make's output is the tree's: 16 MiB without a newline was read as one line into
    trustboot's memory (the process that holds an unlocked signer in a release: gigabytes
    would end it), all of it went to the log (a full disk), and a failing make had the
    whole log read back for its tail."""
    monkeypatch.setattr(B, "MAX_LOG_BYTES", 1 << 20, raising=False)
    add_to_recipe(env["tree"], "head -c 16M /dev/zero | tr '\\000' A", "echo",
                  "echo '  [BUILD] after-the-flood'", *(["false"] if outcome == "fails" else []))
    steps: list[str] = []
    tracemalloc.start()
    try:
        if outcome == "fails":
            with pytest.raises(OperationalError, match="make failed") as info:
                B.build(_request(env["tree"], pki), output_dir=env["out"],
                        cache_dir=env["cache"], toolchain=dict(FAKE_TOOLCHAIN),
                        on_progress=steps.append)
            assert len(info.value.message) < 25 * 600
        else:
            B.build(_request(env["tree"], pki), output_dir=env["out"], cache_dir=env["cache"],
                    toolchain=dict(FAKE_TOOLCHAIN), on_progress=steps.append)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak
    (log,) = (env["cache"] / "logs").glob("*.log")
    assert (1 << 20) <= log.stat().st_size < (1 << 20) + 200
    assert log.read_bytes().endswith(b"the rest is not logged]\n")
    assert "BUILD after-the-flood" in steps  # the line after the long one still counts


def test_make_output_reaches_the_terminal_escaped(env: dict[str, Path], pki: TestPki) -> None:
    """A progress line is the tree's text: an escape sequence in it (a window title, a
    cleared screen, OSC 52 writing the clipboard) was printed to the terminal as is."""
    makefile = env["tree"] / "src" / "Makefile"  # the first step: the one shown off a TTY
    makefile.write_text(makefile.read_text().replace(
        '@echo "  [DEPS] core/version.c"', "@printf '  [BUILD] \\033]0;owned\\007\\033[2J\\n'"))
    result = CliRunner().invoke(cli, ["ipxe", "build", "--source", str(env["tree"]),
                                      "--pki", str(pki.dir), "--target", TARGET, *CHAIN])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "BUILD \\x1b]0;owned\\x07\\x1b[2J" in result.stderr
