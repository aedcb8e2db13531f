"""With --json every error is JSON on stderr: trustboot's own, click's usage errors (exit 2)
and internal errors (exit 70); without it, click's usual text."""

from __future__ import annotations

import json
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
