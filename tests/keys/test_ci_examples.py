"""The CI examples in docs/ci/ run: each job's shell steps, against a scratch CA and token.

Only the steps that need the internet or a project's own build are left out, by name, and
the test fails if those names change (so a renamed step cannot silently stop being run).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.keys.softhsm import PIN, Token, make_token, openssl_verify
from trustboot import secrets
from trustboot.ca.store import CertificateAuthority
from trustboot.keys.pkcs11 import public_key_of
from trustboot.keys.ref import parse_ref

DOCS = Path(__file__).resolve().parents[2] / "docs" / "ci"
CA_PASS = b"scratch ca passphrase"
KEY_PASS = "scratch signing passphrase"
SKIPPED_GITHUB_STEPS = {"Install trustboot", "Build"}  # pip from PyPI; the project's make


@pytest.fixture
def scratch(tmp_path: Path) -> tuple[Path, Token, Path]:
    """A checkout: pki/ (public half only), dist/, a token holding 'codesign'."""
    token = make_token(tmp_path / "hsm", label="release")
    token.run("pkcs11-tool", "--module", str(token.module), "--login", "--pin", PIN,
              "--token-label", "release", "--keypairgen", "--key-type", "EC:prime256v1",
              "--label", "codesign", "--id", "01")
    work = tmp_path / "checkout"
    pki = work / "pki"
    pw = secrets.constant(CA_PASS)
    ca, _ = CertificateAuthority.init(pki, pw, key_type="ec-p256")
    ca.issue("codesign", "release-signer", pw, secrets.constant(KEY_PASS.encode()),
             key_type="ec-p256")
    os.environ["SOFTHSM2_CONF"] = token.env["SOFTHSM2_CONF"]
    try:
        public = public_key_of(parse_ref("pkcs11:token=release;object=codesign"), token.module)
    finally:
        del os.environ["SOFTHSM2_CONF"]
    ca.issue("codesign", "release-hsm", pw, None, public_key=public)
    key_pem = tmp_path / "release-signer.key.pem"
    shutil.copyfile(pki / "private" / "release-signer.key", key_pem)
    shutil.rmtree(pki / "private")  # what a repository holds: no private keys
    return work, token, key_pem


def _dist(work: Path) -> list[Path]:
    dist = work / "dist"
    if dist.exists():
        shutil.rmtree(dist)
    dist.mkdir()
    files = [dist / "vmlinuz", dist / "initrd.img", dist / "boot.ipxe"]
    for i, f in enumerate(files):
        f.write_bytes(os.urandom(1000 + i))
    return files


def _env(token: Token, extra: dict[str, str]) -> dict[str, str]:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": os.environ.get(
        "HOME", "/root"), "LANG": "C.UTF-8", "SOFTHSM2_CONF": token.env["SOFTHSM2_CONF"]}
    return env | extra


def _run(script: str, work: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=work, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False, timeout=300)
    assert proc.returncode == 0, f"{script}\n{proc.stdout}\n{proc.stderr}"


def _check_signed(work: Path, files: list[Path]) -> None:
    for f in files:
        openssl_verify(f, Path(f"{f}.sig"), work / "pki" / "ca.crt")
    manifest = json.loads((work / "dist" / "signatures.json").read_text())
    assert sorted(Path(e["path"]).name for e in manifest["files"]) == sorted(
        f.name for f in files)


def _module(token: Token, value: str) -> str:
    return value if Path(value).is_file() else str(token.module)


def test_examples_install_trustboot_pinned_by_hash() -> None:
    """A job that holds the signing key (or the CA's) runs every package it installs with
    it: each example installs from a lock file with a hash per package, never by a name
    that whatever index answers resolves (the install steps themselves are not run here)."""
    examples = sorted(DOCS.glob("*.yml"))
    installs: dict[str, list[list[str]]] = {}
    for example in examples:
        for line in example.read_text().splitlines():
            found = re.search(r"\bpip3?\s+install\b(.*)", line.split("#", 1)[0])
            if found:
                installs.setdefault(example.name, []).append(shlex.split(found.group(1)))
    assert set(installs) == {e.name for e in examples}
    for name, argvs in installs.items():
        for argv in argvs:
            assert argv == ["--require-hashes", "-r", "ci/trustboot.lock"], (name, argv)


def test_github_actions_example(scratch: tuple[Path, Token, Path], tmp_path: Path) -> None:
    work, token, key_pem = scratch
    doc = yaml.safe_load((DOCS / "github-actions.yml").read_text())
    runner_temp = tmp_path / "runner-temp"
    runner_temp.mkdir()
    values = {"runner.temp": str(runner_temp), "secrets.SIGNING_KEY_PEM": key_pem.read_text(),
              "secrets.SIGNING_KEY_PASSPHRASE": KEY_PASS, "secrets.HSM_PIN": PIN}

    def expand(text: str) -> str:
        return re.sub(r"\$\{\{\s*([\w.]+)\s*\}\}", lambda m: values[m.group(1)], text)

    assert set(doc["jobs"]) == {"sign-with-key-file", "sign-with-hsm"}
    for name, job in doc["jobs"].items():
        files = _dist(work)
        job_env = {k: expand(str(v)) for k, v in job.get("env", {}).items()}
        if "TRUSTBOOT_PKCS11_MODULE" in job_env:
            job_env["TRUSTBOOT_PKCS11_MODULE"] = _module(token, job_env[
                "TRUSTBOOT_PKCS11_MODULE"])
        names = {s.get("name") for s in job["steps"]}
        assert SKIPPED_GITHUB_STEPS <= names, (name, names)
        ran = 0
        for step in job["steps"]:
            if "run" not in step or step.get("name") in SKIPPED_GITHUB_STEPS:
                continue
            step_env = {k: expand(str(v)) for k, v in step.get("env", {}).items()}
            _run(expand(step["run"]), work, _env(token, job_env | step_env))
            ran += 1
        assert ran >= 1
        _check_signed(work, files)
        assert not (runner_temp / "signing.key").exists()  # the cleanup step ran


def test_gitlab_ci_example(scratch: tuple[Path, Token, Path], tmp_path: Path) -> None:
    work, token, key_pem = scratch
    doc = yaml.safe_load((DOCS / "gitlab-ci.yml").read_text())
    key_file = tmp_path / "gitlab-file-variable"  # a "File" variable: GitLab writes it 0666
    shutil.copyfile(key_pem, key_file)
    ci_vars = {"SIGNING_KEY_FILE": str(key_file), "SIGNING_KEY_PASSPHRASE": KEY_PASS,
               "HSM_PIN": PIN}
    jobs = {k: v for k, v in doc.items() if isinstance(v, dict) and "script" in v}
    assert set(jobs) == {"sign-with-key-file", "sign-with-hsm"}
    for name, job in jobs.items():
        assert job["extends"] == ".trustboot", name  # before_script (installs) is not run
        files = _dist(work)
        exports = []
        for key, value in job["variables"].items():
            if key == "TRUSTBOOT_PKCS11_MODULE":
                value = _module(token, value)
            # GitLab expands $VARS inside variables; bash does the same here.
            exports.append(f'export {key}="{value}"')
        _run("\n".join(exports + job["script"]), work, _env(token, ci_vars))
        _check_signed(work, files)


SKIPPED_RESIGN_STEPS = {"Install trustboot"}


def test_scheduled_resign_example(tmp_path: Path) -> None:
    """docs/ci/resign-scheduled.yml: renew the signer, re-sign the live release on a
    file:// origin; the live entry then verifies under the new signer only."""
    from click.testing import CliRunner

    from trustboot.cli.main import cli

    work = tmp_path / "checkout"
    pki = work / "pki"
    pw = secrets.constant(CA_PASS)
    ca, _ = CertificateAuthority.init(pki, pw, key_type="ec-p256")
    ca.issue("codesign", "boot-signer", pw, secrets.constant(KEY_PASS.encode()),
             key_type="ec-p256")
    # the release that is live before the job runs
    dist = work / "dist"
    dist.mkdir()
    (dist / "boot.ipxe").write_bytes(b"#!ipxe\nkernel https://boot.example.net/releases/"
                                     b"r1/vmlinuz\n")
    (dist / "vmlinuz").write_bytes(os.urandom(5000))
    origin = tmp_path / "origin"
    origin.mkdir()
    env_pw = {"TB_TEST_PW": KEY_PASS}
    runner = CliRunner()
    for args in (["sign", "--key", "boot-signer", "--pki", str(pki), "--passphrase-env",
                  "TB_TEST_PW", str(dist / "boot.ipxe"), str(dist / "vmlinuz")],
                 ["publish", str(dist), f"file://{origin}", "--release-id", "r1", "--pki",
                  str(pki)]):
        r = runner.invoke(cli, args, env=env_pw)
        assert r.exit_code == 0, r.output
    # the secret, made as the example's header says (whatever the CA home's key layout)
    private = subprocess.run("tar -C pki -czf - --exclude ca.key private | base64 -w0",
                             shell=True, cwd=work, capture_output=True, check=True,
                             text=True).stdout
    shutil.rmtree(pki / "private")  # what a repository holds: no private keys

    doc = yaml.safe_load((DOCS / "resign-scheduled.yml").read_text())
    assert "schedule" in doc[True] or "schedule" in doc.get("on", {})  # yaml: on -> True
    runner_temp = tmp_path / "runner-temp"
    runner_temp.mkdir()
    values = {"runner.temp": str(runner_temp), "vars.BOOT_ORIGIN": f"file://{origin}",
              "vars.BOOT_ORIGIN_ARGS": "--credentials-env ORIGIN_CREDENTIALS",
              "secrets.PKI_PRIVATE": private,
              "secrets.CA_PASSPHRASE": CA_PASS.decode(),
              "secrets.SIGNING_KEY_PASSPHRASE": KEY_PASS,
              "secrets.ORIGIN_CREDENTIALS": "unused:by-file-origins"}

    def expand(text: str) -> str:
        return re.sub(r"\$\{\{\s*([\w.]+)\s*\}\}", lambda m: values[m.group(1)], text)

    [job] = doc["jobs"].values()
    job_env = {k: expand(str(v)) for k, v in job["env"].items()}
    names = {s.get("name") for s in job["steps"]}
    assert SKIPPED_RESIGN_STEPS <= names, names
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
           "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    ran = 0
    for step in job["steps"]:
        if "run" not in step or step.get("name") in SKIPPED_RESIGN_STEPS:
            continue
        step_env = {k: expand(str(v)) for k, v in step.get("env", {}).items()}
        _run(expand(step["run"]), work, env | job_env | step_env)
        ran += 1
    assert ran == 4
    assert not (pki / "private").exists()  # the cleanup step ran
    out = json.loads((runner_temp / "resign.json").read_text())
    assert out["changed"] and out["previous"] == "r1" and out["release"].startswith("r1.rs-")
    assert out["rewritten"] == ["boot.ipxe"]
    live = (origin / "boot.ipxe").read_bytes()
    assert f"releases/{out['release']}/vmlinuz".encode() in live
    served = origin / "releases" / out["release"]
    r = runner.invoke(cli, ["verify", str(served / "vmlinuz"), "--pki", str(pki), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["signers"][0]["serial"] == out["signer"]["serial"]
    assert 7 * 86400 < json.loads(r.output)["replay_window"]["window_seconds"] < 8 * 86400
