"""Every command under `umask 000`: what it creates has the mode trustboot chose.

Public material 0644 in 0755 directories, private material 0600 in 0700 directories, and
nothing group- or world-writable, whatever the umask (issue 8: under umask 000 a second
user could replace pki/ca.crt, plant links and read copied secrets).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

PASS = "umask test passphrase"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "trustboot", *args], capture_output=True, text=True,
        cwd=cwd, timeout=300, preexec_fn=lambda: os.umask(0),
        env={**os.environ, "TB_UMASK_PASS": PASS},
    )
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc


def _modes(root: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        if not path.is_symlink():
            out[path.relative_to(root).as_posix()] = stat.S_IMODE(path.lstat().st_mode)
    return out


def _is_private(rel: str) -> bool:
    """Keys live under private/ (the demo's passphrases under secrets/); locks are 0600."""
    parts = rel.split("/")
    return bool({"private", "secrets"} & set(parts)) or parts[-1].endswith(".lock")


def _check_tree(root: Path) -> None:
    bad = []
    for rel, mode in _modes(root).items():
        path = root / rel
        parts = rel.split("/")
        if "cache" in parts:
            # The iPXE build cache (the demo builds when TRUSTBOOT_IPXE_SRC is set) is
            # private, 0700 at its top; inside, the copied sources keep their own bits, and
            # nothing (make's outputs included) may be writable by others.
            top = parts[-1] == "cache"
            if (top and mode != 0o700) or mode & 0o022:
                bad.append(f"{rel}: {mode:04o}, want {'0700' if top else 'no group/other write'}")
            continue
        private = _is_private(rel)
        if path.is_dir():
            want = 0o700 if private else 0o755
        else:
            want = 0o600 if private else 0o644
        if mode != want:
            bad.append(f"{rel}: {mode:04o}, want {want:04o}")
    assert bad == [], "\n".join(bad)


def test_every_command_under_umask_000(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    os.chmod(work, 0o755)
    pki = "deep/er/pki"  # parents created by trustboot too
    common = ["--pki", pki, "--passphrase-env", "TB_UMASK_PASS"]
    _run("ca", "init", *common, "--key-type", "ec-p256", cwd=work)
    _run("ca", "issue", "codesign", "signer", *common, "--key-type", "ec-p256",
         "--key-passphrase-env", "TB_UMASK_PASS", cwd=work)
    _run("ca", "issue", "client", "c1", *common, "--key-type", "ec-p256",
         "--key-passphrase-env", "TB_UMASK_PASS", cwd=work)
    _run("ca", "revoke", "c1", *common, cwd=work)
    _run("ca", "crl", *common, cwd=work)
    _run("ca", "renew", "signer", *common, "--rekey", "--key-passphrase-env", "TB_UMASK_PASS",
         cwd=work)
    _run("ca", "rotate", "issuing", *common, cwd=work)
    _run("ca", "rotate", "root", "begin", *common, cwd=work)
    _run("ca", "rotate", "root", "promote", *common, "--confirm-fleet", cwd=work)
    _run("ca", "crl", "--root", *common, cwd=work)
    _run("ca", "export", "--pki", pki, "--out", "exported/trust", cwd=work)
    (work / "image.bin").write_bytes(b"kernel bytes")
    os.chmod(work / "image.bin", 0o644)
    _run("sign", "image.bin", "--key", "signer", *common, "--out", "sigs/out",
         "--manifest", "sigs/manifest.json", "--ipxe-version", "2.0.0", cwd=work)
    _run("verify", "image.bin", "--sig", "sigs/out/image.bin.sig", "--pki", pki,
         "--ipxe-version", "2.0.0", cwd=work)
    _run("demo", "--workdir", "demo/run", cwd=work)
    # publish to a file:// origin, then re-sign the live release with a second signer
    (work / "rel").mkdir()
    os.chmod(work / "rel", 0o755)
    (work / "rel" / "boot.ipxe").write_bytes(b"#!ipxe\necho umask\n")
    _run("sign", "rel/boot.ipxe", "--key", "signer", *common, "--ipxe-version", "2.0.0",
         cwd=work)
    _run("publish", "rel", f"file://{work}/origin/www", "--release-id", "r1", "--pki", pki,
         cwd=work)
    _run("ca", "issue", "codesign", "signer2", *common, "--key-type", "ec-p256",
         "--key-passphrase-env", "TB_UMASK_PASS", cwd=work)
    _run("resign", f"file://{work}/origin/www", "--key", "signer2", *common, cwd=work)

    # named expectations, so a regression points at the file
    p = work / pki
    expect = {
        p: 0o755, p / "issued": 0o755, p / "revoked": 0o755, p / "certs_by_serial": 0o755,
        p / "private": 0o700, p / "private" / "keys": 0o700, p / "ca.crt": 0o644,
        p / "index.json": 0o644,
        p / "log.jsonl": 0o644, p / "crl.pem": 0o644, p / "private" / "ca.key": 0o600,
        p / "private" / "signer.key": 0o600, work / "deep": 0o755,
        work / "exported" / "trust": 0o755, work / "exported" / "trust" / "root.pem": 0o644,
        p / "root-crl.pem": 0o644, work / "exported" / "trust" / "chain-crl.pem": 0o644,
        work / "sigs" / "out": 0o755, work / "sigs" / "out" / "image.bin.sig": 0o644,
        work / "demo" / "run": 0o755, work / "demo" / "run" / "origin": 0o755,
        work / "demo" / "run" / "secrets": 0o700, work / "origin": 0o755,
        work / "origin" / "www" / "releases": 0o755, work / "origin" / "www" / "boot.ipxe.sig":
        0o644,
    }
    for path, mode in expect.items():
        assert stat.S_IMODE(path.stat().st_mode) == mode, (path, oct(path.stat().st_mode))
    assert '"status": "revoked"' in (p / "index.json").read_text()
    resigned = [d for d in (work / "origin" / "www" / "releases").iterdir()
                if d.name.startswith("r1.rs-")]
    assert len(resigned) == 1 and stat.S_IMODE(resigned[0].stat().st_mode) == 0o755
    _check_tree(work)


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_fsutil_modes_ignore_the_umask(tmp_path: Path, umask: int) -> None:
    from trustboot.fsutil import atomic_write, create_file, ensure_private_dir, make_dirs

    old = os.umask(umask)
    try:
        make_dirs(tmp_path / "a" / "b")
        atomic_write(tmp_path / "a" / "b" / "f", b"x")
        ensure_private_dir(tmp_path / "a" / "p")
        with create_file(tmp_path / "a" / "g") as fh:
            fh.write(b"y")
    finally:
        os.umask(old)
    assert _modes(tmp_path / "a") == {".": 0o755, "b": 0o755, "b/f": 0o644, "p": 0o700,
                                      "g": 0o644}
