"""With --json every error is JSON on stderr: trustboot's own, click's usage errors (exit 2)
and internal errors (exit 70); without it, click's usual text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from trustboot.cli.main import cli


def _proc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trustboot", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args", [
    ["ca", "list", "--json", "--no-such-option"],
    ["ca", "list", "--no-such-option", "--json"],
    ["sign", "--json"],  # missing FILES and --key
    ["ca", "init", "--json", "--key-type", "dsa"],
    ["verify", "--json", "a", "b"],
])
def test_usage_errors_are_json_with_json(args: list[str]) -> None:
    proc = _proc(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    doc = json.loads(proc.stderr)
    assert doc["exit_code"] == 2 and doc["error"] == "UsageError" and doc["message"]
    assert "--help" in doc["hint"]


def test_usage_errors_stay_text_without_json() -> None:
    proc = _proc("ca", "list", "--no-such-option")
    assert proc.returncode == 2
    assert proc.stderr.startswith("Usage:") and "No such option" in proc.stderr


def test_json_after_double_dash_is_an_argument(tmp_path: Path) -> None:
    proc = _proc("verify", "--no-such", "--", "--json")
    assert proc.returncode == 2 and proc.stderr.startswith("Usage:")


def test_internal_errors_are_json_with_json(monkeypatch: pytest.MonkeyPatch) -> None:
    from trustboot.ca.store import CertificateAuthority  # the class the ca CLI opens

    def boom(_path: Path) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(CertificateAuthority, "open", boom)
    result = CliRunner().invoke(cli, ["ca", "list", "--json"])
    assert result.exit_code == 70
    doc = json.loads(result.stderr)
    assert doc == {"error": "InternalError", "message": "RuntimeError: simulated bug",
                   "hint": doc["hint"], "exit_code": 70}
    assert "bug" in doc["hint"]
    result = CliRunner().invoke(cli, ["ca", "list"])
    assert result.exit_code == 70 and result.stderr.startswith("internal error: RuntimeError")
    assert "Traceback" not in result.stderr
    result = CliRunner().invoke(cli, ["--debug", "ca", "list"])  # the traceback, only then
    assert result.exit_code == 70 and "Traceback (most recent call last)" in result.stderr
    assert "RuntimeError: simulated bug" in result.stderr


def test_help_and_version_still_work_with_json() -> None:
    proc = _proc("ca", "list", "--json", "--help")
    assert proc.returncode == 0 and "Usage:" in proc.stdout
    proc = _proc("--version")
    assert proc.returncode == 0 and "trustboot" in proc.stdout


@pytest.mark.parametrize("args", [
    ["recipe", "schema"],
    ["ipxe", "script", "render", "--chain", "https://boot.example.net/b.ipxe", "--signer", "s"],
])
def test_a_closed_output_pipe_is_not_a_bug(args: list[str], tmp_path: Path) -> None:
    """`trustboot ... | head`: the reader closing the pipe ends the run quietly with
    128+SIGPIPE, as it ends other tools, not 'internal error' and exit 70."""
    proc = subprocess.Popen([sys.executable, "-m", "trustboot", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command writes anything
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""


# The CLI ends with os._exit once a command is done (cli.main._exit_now): what the
# interpreter's teardown did that matters must still happen.
_EXIT_PROBE = """\
import atexit, sys, tempfile, threading, time
from trustboot.cli import main as m
mode, marker = sys.argv[1], sys.argv[2]
atexit.register(lambda: open(marker, "a").write("atexit ran\\n"))
atexit.register(lambda: sys.stdout.write("\\nbuffered at exit\\n"))  # no flush of its own
kept = tempfile.TemporaryDirectory(prefix="tb-exit-")  # removed by its finalizer at exit
open(marker, "a").write(kept.name + "\\n")
if mode == "thread":  # a non-daemon thread still running: the normal exit waits for it
    def late() -> None:
        time.sleep(0.5)
        open(marker, "a").write("thread done\\n")
    threading.Thread(target=late).start()
sys.argv = ["trustboot", *sys.argv[3:]]
m.main()
"""


@pytest.mark.parametrize("mode", ["plain", "thread"])
def test_the_fast_exit_keeps_exit_handlers_output_and_status(mode: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    def probe(*args: str) -> subprocess.CompletedProcess[str]:
        marker.unlink(missing_ok=True)
        # buffered output, as a pipe gets it by default (the flush at exit is under test)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        return subprocess.run([sys.executable, "-c", _EXIT_PROBE, mode, str(marker), *args],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path,
                              env=env)

    # a large output, written in full (the buffers are flushed before the exit)
    proc = probe("recipe", "schema")
    assert proc.returncode == 0, proc.stderr
    schema, tail = proc.stdout.rsplit("\n\nbuffered at exit\n", 1)
    assert json.loads(schema)["properties"] and tail == ""
    lines = marker.read_text().splitlines()
    assert "atexit ran" in lines
    assert not Path(lines[0]).exists()  # the temp tree's finalizer ran
    if mode == "thread":
        assert "thread done" in lines
    # a refusal keeps its documented status and message
    proc = probe("verify", str(tmp_path / "missing"), "--signer", "x")
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("error: no trust anchors") and "hint:" in proc.stderr
    assert "atexit ran" in marker.read_text()
    # a usage error: exit 2 as before
    assert probe("ca", "list", "--no-such-option").returncode == 2


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (3, 3), (256 + 4, 4),
                                              ("a message", 1)])
def test_exit_status_as_sys_exit_gives_it(code: object, status: int) -> None:
    from trustboot.cli.main import _status

    assert _status(code) == status


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("buffered", [True, False])
@pytest.mark.parametrize("args", [["recipe", "schema"], ["--version"],
                                  ["ipxe", "script", "lint", "--json", "s.ipxe"]])
def test_a_full_disk_under_stdout_is_an_operational_error(args: list[str], buffered: bool,
                                                          tmp_path: Path) -> None:
    """`trustboot ... > file` on a full disk: exit 1 naming the output and the cause, not
    'this is a bug' (exit 70) nor a traceback; JSON with --json."""
    (tmp_path / "s.ipxe").write_text("#!ipxe\nimgtrust --permanent\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "trustboot", *args], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120, cwd=tmp_path,
                              env=env)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "bug" not in proc.stderr
    if "--json" in args:
        doc = json.loads(proc.stderr.strip().splitlines()[-1])
        assert doc["error"] == "OperationalError" and doc["exit_code"] == 1
        assert "No space left on device" in doc["message"] and doc["hint"]
    else:
        assert proc.stderr.startswith("error: cannot write")
        assert "No space left on device" in proc.stderr and "hint:" in proc.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("code", [0, 3])
def test_output_that_cannot_be_flushed_at_exit_is_reported(code: int) -> None:
    """Output still buffered when the command ends is flushed by the exit; when that
    fails the run says so and does not end with 0."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    script = ("import sys\nfrom trustboot.cli.main import _exit_now\n"
              f"sys.stdout.write('pending')\n_exit_now({code})\n")
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-c", script], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120, env=env)
    assert proc.returncode == (code or 1), proc.stderr
    assert proc.stderr == ("error: cannot write to standard output: No space left on device\n"
                           "  hint: free space (or fix the device) where it goes, then run "
                           "again\n")
