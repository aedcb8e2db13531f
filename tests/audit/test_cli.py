"""`trustboot audit` option handling and errors that need no network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from trustboot.cli.main import cli

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["audit", *args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


@pytest.mark.parametrize(("args", "message"), [
    (["-i", "lo", "--passive", "--probe-writes"], "--passive sends nothing"),
    (["-i", "lo", "--arch", "bios,sparc"], "unknown architecture 'sparc'"),
    (["-i", "lo", "--json", "--format", "sarif"], "either --json or --format"),
    (["-i", "lo", "--max-file-size", "lots"], "not a size"),
    (["-i", "lo", "--max-file-size", "9" * 5000], "not a size"),
    (["-i", "lo", "--mac", "01:00:5e:00:00:01"], "not a unicast MAC"),
    (["-i", "tb-no-such-if0"], "no network interface named 'tb-no-such-if0'"),
])
def test_invalid_options_exit_3(args: list[str], message: str) -> None:
    code, output = run(*args)
    assert code == 3, output
    assert message in output and "Traceback" not in output


def test_invalid_policy_exits_3_naming_the_file(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("authorized_servers:\n  - ip: not-an-ip\n")
    code, output = run("-i", "lo", "--policy", str(policy))
    assert code == 3
    assert "policy.yaml: authorized_servers[0].ip: not an IP address" in output


def test_invalid_release_manifest_exits_3(tmp_path: Path) -> None:
    manifest = tmp_path / "release.json"
    manifest.write_text('{"files": [{"name": "a"}]}')
    code, output = run("-i", "lo", "--release-manifest", str(manifest))
    assert code == 3 and "release.json: files[0].sha256" in output


def test_json_errors_on_stderr(tmp_path: Path) -> None:
    code, output = run("-i", "lo", "--json", "--policy", str(tmp_path / "missing.yaml"))
    assert code == 3 and '"error": "ConfigError"' in output


def test_window_bounds_are_usage_errors() -> None:
    code, output = run("-i", "lo", "--window", "0")
    assert code == 2 and "--window" in output


def test_without_cap_net_raw_the_error_names_it() -> None:
    argv = [sys.executable, "-m", "trustboot", "audit", "-i", "lo", "--window", "0.2"]
    if os.geteuid() == 0:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    # an interpreter in a home directory the unprivileged user cannot enter (pyenv): the
    # binary itself (Permission denied) or its shared libpython cannot be loaded
    if proc.returncode != 1 and ("Permission denied" in proc.stderr
                                 or "error while loading shared libraries" in proc.stderr):
        pytest.skip(f"the unprivileged user cannot run {sys.executable}")
    assert proc.returncode == 1, proc.stderr
    assert "lacks CAP_NET_RAW" in proc.stderr
    assert "hint: run 'trustboot audit' as root" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("text", "key"), [
    ("expected_origin: 'https://[x/'\n", "expected_origin"),
    ("expected_origin: ['https://boot.example/', 'https://[x]/']\n", "expected_origin[1]"),
    ("expected_origin: 'https://boot.example:99999/'\n", "expected_origin"),
    ('release_manifest: "release\\0.json"\n', "release_manifest"),
    ('expected_ca_file: "root\\0.pem"\n', "expected_ca_file"),
])
def test_hostile_policy_values_exit_3_naming_file_and_key(tmp_path: Path, text: str,
                                                          key: str) -> None:
    """A malformed origin (urlsplit's ValueError) or a NUL in a path (os.open's ValueError)
    was an internal error (exit 70): it is a configuration error naming the key."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    code, output = run("-i", "lo", "--policy", str(policy))
    assert code == 3, output
    assert f"policy.yaml: {key}" in output and "Traceback" not in output


@pytest.mark.parametrize(("name", "message"), [
    (b"a\xffb", "no network interface named 'a\\xffb'"),
    (b"tb\xe9\xff-no-such", "no network interface named 'tb\\xe9\\xff-no-such'"),
    (b"abcdefghijklmnop", "'abcdefghijklmnop': it is 16 bytes long, and Linux interface "
                          "names are at most 15"),
    (b"tb-no-such-if0-and-more", "it is 23 bytes long"),
])
def test_an_interface_name_no_interface_has_exits_3_naming_it(name: bytes, message: str
                                                              ) -> None:
    """Linux names need not be UTF-8 (argv hands them over as bytes): a wrong one is a
    configuration error naming it escaped, not a crash (exit 70). One longer than the
    kernel's 15 bytes is refused, not cut to another interface's name."""
    argv = [sys.executable.encode(), b"-m", b"trustboot", b"audit", b"-i", name,
            b"--window", b"0.2"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 3, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "hint: list interfaces with 'ip link'" in proc.stderr


@pytest.mark.root
def test_an_interface_whose_name_is_not_utf8_is_audited(tmp_path: Path) -> None:
    """A real veth named b'd\\xff0' in a private namespace, with an address (so the
    follower asks for it too): the audit runs on it and reports its name escaped."""
    from tests.audit.netns import missing_tools

    if (reason := missing_tools()) is not None:
        pytest.skip(reason)
    import secrets

    ns, name = f"tbif{secrets.token_hex(3)}", b"d\xff0"
    ip = [b"ip", b"-n", ns.encode()]
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        for args in ([b"link", b"add", name, b"type", b"veth", b"peer", b"name", b"tbpeer"],
                     [b"addr", b"add", b"192.0.2.50/24", b"dev", name],
                     [b"link", b"set", b"tbpeer", b"up"], [b"link", b"set", name, b"up"]):
            subprocess.run([*ip, *args], check=True, capture_output=True, timeout=30)
        proc = subprocess.run(
            [b"ip", b"netns", b"exec", ns.encode(), sys.executable.encode(), b"-m",
             b"trustboot", b"audit", b"-i", name, b"--window", b"0.3", b"--no-dhcpv6",
             b"--json", b"--fail-on", b"none"],
            capture_output=True, text=True, timeout=120, cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)))
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert '"interface": "d\\\\xff0"' in proc.stdout, proc.stdout[:2000]
