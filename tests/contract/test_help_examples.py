"""The examples in `--help` are real: every one parses with today's options, and those that
need only files and a scratch CA run as shown, in order, and succeed.

Examples that need what a scratch directory cannot give (root and a segment, a token, a
reachable origin, an iPXE tree) are only parsed; they are listed by command below, and the
test fails when such a list no longer matches the help (so a new example is not silently
left unrun).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from trustboot.cli.main import cli

REPO = Path(__file__).resolve().parents[2]
CA_PASS = "scratch ca passphrase"
KEY_PASS = "scratch key passphrase"

# Commands whose --help must show examples, and the examples of each that the scratch run
# does not execute (by their first words), with why.
MAIN = ("sign", "verify", "ca", "audit", "release", "publish", "resign", "demo", "origin",
        "ipxe build", "secureboot")
NOT_RUN = {
    "sign": {"trustboot sign vmlinuz --key 'pkcs11:": "needs a token (tests/keys runs it)"},
    "audit": {"trustboot audit": "needs root and a segment (tests/audit runs it)"},
    "release": {
        "trustboot release recipes/multiarch.yaml --allow-outside pki --origin-ca-file":
            "publishes to boot.example.net",
        "trustboot release lab/boot.yaml": "a recipe of the reader's",
    },
}
PARSE_ONLY = {"publish", "resign", "demo", "origin", "ipxe build", "secureboot"}


def help_text(path: str) -> str:
    result = CliRunner().invoke(cli, [*path.split(), "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def examples(path: str) -> list[str]:
    """The example command lines of ``trustboot PATH --help``, continuations joined."""
    lines = help_text(path).splitlines()
    out: list[str] = []
    inside = False
    for line in lines:
        stripped = line.strip()
        if re.match(r"^Examples\b.*:$", stripped):
            inside = True
            continue
        if inside and not stripped:
            inside = False
            continue
        if not inside or stripped.startswith("#"):
            continue
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1].rstrip() + " " + stripped
        else:
            out.append(stripped)
    return out


def invocations(example: str) -> list[list[str]]:
    """The trustboot command lines in one example (pipes and redirections split off)."""
    words = shlex.split(example, comments=True)
    commands: list[list[str]] = [[]]
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word == "|":
            commands.append([])
        elif word in (">", "<", "2>"):
            skip = True
        else:
            commands[-1].append(word)
    return [c for c in commands if c and c[0] == "trustboot"]


def _leaf(argv: list[str]) -> click.Command:
    cmd: click.Command = cli
    ctx = click.Context(cli)
    for word in argv:
        if not isinstance(cmd, click.Group):
            break
        if word.startswith("-"):
            continue
        sub = cmd.get_command(ctx, word)
        if sub is None and getattr(cmd, "default", None):  # `publish DIR ORIGIN`
            sub = cmd.get_command(ctx, cmd.default)  # type: ignore[attr-defined]
        assert sub is not None, f"no command {word!r} in {argv}"
        cmd = sub
    return cmd


def parse_only(argv: list[str]) -> dict[str, Any]:
    """Run click's parsing of ``argv`` (types, choices, required options) without the
    command's body; return the parameters it would have been called with."""
    leaf = _leaf(argv[1:])
    seen: dict[str, Any] = {}
    original = leaf.callback
    leaf.callback = lambda **kw: seen.update(kw)
    try:
        result = CliRunner().invoke(cli, argv[1:], env={"TRUSTBOOT_PKI": None})
    finally:
        leaf.callback = original
    assert result.exit_code == 0, f"{shlex.join(argv)}\n{result.output}"
    return seen


@pytest.mark.parametrize("path", MAIN)
def test_main_commands_show_examples_that_parse(path: str) -> None:
    found = examples(path)
    assert found, f"trustboot {path} --help shows no examples"
    assert any(invocations(e) for e in found), path
    for example in found:
        for argv in invocations(example):
            parse_only(argv)
    for prefix in NOT_RUN.get(path, {}):
        assert any(e.startswith(prefix.rstrip("\\").rstrip()) for e in found), (
            f"NOT_RUN lists {prefix!r}, which trustboot {path} --help no longer shows")


def _to_run(path: str) -> list[str]:
    skipped = NOT_RUN.get(path, {})
    return [e for e in examples(path)
            if not any(e.startswith(p.rstrip("\\").rstrip()) for p in skipped)]


def _bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False, timeout=300)


def _env(home: Path) -> dict[str, str]:
    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(home),
            "LANG": "C.UTF-8", "TB_PW": KEY_PASS, "TRUSTBOOT_CACHE_DIR": str(home / "cache"),
            # bound to the multiarch recipe's origin, as a recipe's credentials must be
            "TRUSTBOOT_ORIGIN_TOKEN": "https://boot.example.net/dav/ bearer:unused-by-a-dry-run",
            # what a pipeline sets once; an example without passphrase options would
            # otherwise ask on the terminal
            "TRUSTBOOT_SIGN_PASSPHRASE_ENV": "TB_PW"}


def _scratch(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    work = tmp_path / "work"
    work.mkdir()
    for name, text in (("ca.pass", CA_PASS), ("key.pass", KEY_PASS)):
        (work / name).write_text(text + "\n")
        (work / name).chmod(0o600)
    return work, _env(tmp_path)


def _run_all(lines: list[str], work: Path, env: dict[str, str]) -> None:
    """Each line on its own (a failure names it), after the exports shown before it."""
    exports: list[str] = []
    for line in lines:
        proc = _bash("\n".join([*exports, line]), work, env)
        assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"
        if line.startswith("export "):
            exports.append(line)


def test_ca_help_examples_run_in_order(tmp_path: Path) -> None:
    work, env = _scratch(tmp_path)
    lines = _to_run("ca")
    assert lines[0].startswith("trustboot ca init")
    _run_all(lines, work, env)
    assert (work / "trust" / "root.pem").is_file()
    listed = _bash("trustboot ca list --all --json", work, env)
    assert '"revoked"' in listed.stdout


def test_sign_and_verify_help_examples_run(tmp_path: Path) -> None:
    """A CA from `ca --help`'s first two examples, then every file-key `sign --help`
    example and every `verify --help` example, as shown."""
    work, env = _scratch(tmp_path)
    _run_all(_to_run("ca")[:2], work, env)
    for name, size in (("vmlinuz", 70000), ("initrd.img", 90000), ("boot.ipxe", 0)):
        (work / name).write_bytes(b"#!ipxe\nexit\n" if name == "boot.ipxe"
                                  else os.urandom(size))
    # file: key material as a user would have it: the key, its certificate, the chain
    (work / "keys").mkdir()
    shutil.copyfile(work / "pki" / "private" / "release-signer.key", work / "keys" / "sign.key")
    (work / "keys" / "sign.key").chmod(0o600)
    shutil.copyfile(work / "pki" / "issued" / "release-signer.crt", work / "sign.crt")
    shutil.copyfile(work / "pki" / "chain.pem", work / "chain.pem")
    (work / "dist").mkdir()
    (work / "dist" / "kernel").write_bytes(b"k" * 1000)
    sign = _to_run("sign")
    assert len(sign) >= 4, sign
    _run_all(sign, work, env)
    assert (work / "dist" / "vmlinuz.sig").is_file() and (work / "dist" / "kernel.sig").is_file()
    assert '"files"' in (work / "signed.json").read_text()
    # verify's roots: this CA's and another one's; CERT= the issuing CA
    shutil.copyfile(work / "pki" / "ca.crt", work / "root1.crt")
    other = _bash("trustboot ca init --pki other --name Other --passphrase-file ca.pass "
                  "--key-type ec-p256", work, env)
    assert other.returncode == 0, other.stderr
    shutil.copyfile(work / "other" / "ca.crt", work / "root2.crt")
    shutil.copyfile(work / "pki" / "issuing-ca.crt", work / "extra-ca.crt")
    _run_all(_to_run("verify"), work, env)


def test_release_help_dry_run_example_runs(tmp_path: Path) -> None:
    """`release --help`'s dry run of recipes/multiarch.yaml, from a checkout with a CA in
    pki/ and the recipe's images in place (its origin, boot.example.net, is not reached)."""
    work, env = _scratch(tmp_path)
    _run_all(_to_run("ca")[:2], work, env)
    shutil.copytree(REPO / "recipes", work / "recipes")
    for rel in ("debian-12-amd64/linux", "debian-12-amd64/initrd.gz", "rescue-amd64/vmlinuz",
                "rescue-amd64/initrd.img", "rescue-amd64/modules.img",
                "debian-12-arm64/linux", "debian-12-arm64/initrd.gz"):
        image = work / "recipes" / "images" / rel
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(os.urandom(4096))
    lines = _to_run("release")
    assert lines == ["trustboot release recipes/multiarch.yaml --allow-outside pki --dry-run"]
    env["TRUSTBOOT_SIGNER_PASSPHRASE"] = KEY_PASS
    _run_all(lines, work, env)
