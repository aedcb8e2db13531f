"""Attacks on the CA home by another local user or a crafted input, each refused.

Reproduces issue 8's findings: a replaced ca.crt, a symlink at log.jsonl, issued/X.crt
pointing at a secret, group-writable directories, unbounded passphrase reads, names with
newlines, a dangling key link, and leftovers of killed runs.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.ca.conftest import Run, issue, run_proc, trustboot_cmd
from tests.conftest import (
    as_nobody,
    dir_of_nobody,
    give_group_to_another_user,
    sweep_clock_between,
)
from trustboot.ca.store import CertificateAuthority, load_trusted_root
from trustboot.cli.main import cli
from trustboot.errors import ConfigError


@pytest.fixture(scope="module")
def attacker_pki(tmp_path_factory: pytest.TempPathFactory, secrets_dir: Path) -> Path:
    pki = tmp_path_factory.mktemp("attacker") / "pki"
    r = CliRunner().invoke(cli, ["ca", "init", "--pki", str(pki), "--key-type", "ec-p256",
                                 "--passphrase-file", str(secrets_dir / "ca.pass")])
    assert r.exit_code == 0, r.output
    return pki


# --- a replaced ca.crt ------------------------------------------------------------------


def test_replaced_root_is_refused_everywhere(pki: Path, attacker_pki: Path, tmp_path: Path,
                                             secrets_dir: Path, run: Run) -> None:
    original_root = (pki / "ca.crt").read_bytes()
    # the attacker's image, signed by the attacker's own code-signing certificate
    r = issue(run, attacker_pki, secrets_dir, "codesign", "signer")
    assert r.exit_code == 0, r.output
    image = tmp_path / "evil.bin"
    image.write_bytes(b"evil kernel")
    r = run("sign", str(image), "--key", "signer", "--pki", str(attacker_pki),
            "--passphrase-file", str(secrets_dir / "key.pass"))
    assert r.exit_code == 0, r.output
    # control: with the genuine root, verify --pki refuses the attacker's signature
    r = run("verify", str(image), "--pki", str(pki))
    assert r.exit_code == 4, r.output

    # the attack: the second user swaps in their root
    shutil.copyfile(attacker_pki / "ca.crt", pki / "ca.crt")
    assert (pki / "ca.crt").read_bytes() != original_root
    r = run("verify", str(image), "--pki", str(pki))
    assert r.exit_code == 3, r.output
    assert "not the certificate 'root-ca' the index recorded" in r.output
    # the fingerprint shown is the intruder's, said to be what the file holds
    swapped = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    fp = swapped.fingerprint(hashes.SHA256()).hex()
    assert f"holds a certificate with sha256 {fp}, not the certificate" in r.output, r.output
    with pytest.raises(ConfigError, match="index recorded"):
        load_trusted_root(pki)
    r = run("ca", "export", "--pki", str(pki), "--out", str(tmp_path / "export"))
    assert r.exit_code == 3 and not (tmp_path / "export" / "root.pem").exists()
    r = run("sign", str(image), "--key", "signer", "--pki", str(pki), "--passphrase-file",
            str(secrets_dir / "key.pass"), "--out", str(tmp_path / "sigs"))
    assert r.exit_code == 3, r.output
    r = run("ipxe", "build", "--pki", str(pki), "--source", str(tmp_path),
            "--chain", "https://boot.example.net/boot.ipxe", "--signer", "signer")
    assert r.exit_code == 3 and "index recorded" in r.output
    r = run("ca", "revoke", "signer", "--pki", str(pki), "--passphrase-file",
            str(secrets_dir / "ca.pass"))
    assert r.exit_code == 3, r.output


def test_replaced_leaf_certificate_is_refused(pki: Path, attacker_pki: Path,
                                              secrets_dir: Path, run: Run) -> None:
    issue(run, attacker_pki, secrets_dir, "codesign", "signer")
    shutil.copyfile(attacker_pki / "issued" / "signer.crt", pki / "issued" / "signer.crt")
    # issued/NAME.crt is a view other tools read: a certificate the index never recorded
    # there makes the whole CA refuse to load
    with pytest.raises(ConfigError, match="index recorded"):
        CertificateAuthority.open(pki)
    # the file the index names is refused too when it is replaced
    entry_file = pki / json.loads((pki / "index.json").read_text())["entries"][2]["cert_file"]
    shutil.copyfile(pki / "ca.crt", entry_file)
    (pki / "issued" / "signer.crt").unlink()
    with pytest.raises(ConfigError, match="index recorded"):
        CertificateAuthority.open(pki).get("signer").load_cert()
    r = run("ca", "show", "signer", "--pki", str(pki))
    assert r.exit_code == 3 and "index recorded" in r.output


@pytest.mark.parametrize("where", ["", "issued", "certs_by_serial", "revoked", "crls"])
def test_directory_writable_by_others_is_refused(pki: Path, where: str, run: Run) -> None:
    target = pki / where if where else pki
    target.mkdir(mode=0o755, exist_ok=True)  # crls/: made by the first revocation needing it
    os.chmod(target, 0o777)
    r = run("ca", "list", "--pki", str(pki))
    assert r.exit_code == 3, r.output
    assert "writable by other users" in r.output and f"chmod go-w {target}" in r.output
    with pytest.raises(ConfigError, match="writable by other users"):
        load_trusted_root(pki)
    os.chmod(target, 0o755)
    assert run("ca", "list", "--pki", str(pki)).exit_code == 0


@pytest.mark.parametrize("where", ["private", "private/keys", "private/revoked"])
def test_private_dir_open_to_others_is_refused(pki: Path, where: str, run: Run) -> None:
    (pki / where).mkdir(mode=0o700, exist_ok=True)
    os.chmod(pki / where, 0o750)
    r = run("ca", "list", "--pki", str(pki))
    assert r.exit_code == 3 and f"chmod 700 {pki / where}" in r.output, r.output


def test_world_writable_file_is_refused(pki: Path, run: Run) -> None:
    os.chmod(pki / "index.json", 0o666)
    r = run("ca", "list", "--pki", str(pki))
    assert r.exit_code == 3 and f"chmod go-w {pki / 'index.json'}" in r.output


def test_pki_owned_by_another_user_is_refused(pki: Path, run: Run) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the pki to another uid")
    os.chown(pki / "issued", 65534, 65534)
    r = run("ca", "list", "--pki", str(pki))
    assert r.exit_code == 3 and "not by you" in r.output and "chown" in r.output


def _a_file_in(pki: Path, where: str) -> Path:
    """A file of the public directory ``where``: the certificates trustboot reads back,
    or (revoked/, crls/: empty here) one put there."""
    if where in ("revoked", "crls"):
        (pki / where).mkdir(mode=0o755, exist_ok=True)
        shutil.copy(pki / "ca.crt", pki / where / "planted.pem")
        return pki / where / "planted.pem"
    return next(iter(sorted((pki / where).iterdir())))


@pytest.mark.parametrize("where", ["certs_by_serial", "issued", "revoked", "crls"])
def test_a_file_others_can_write_in_a_public_directory_is_refused(
        pki: Path, where: str, run: Run) -> None:
    """The rule of index.json and ca.crt holds for every file of these directories:
    another user who can rewrite a stored certificate in place breaks the CA."""
    file = _a_file_in(pki, where)
    os.chmod(file, 0o666)
    r = run("ca", "check", "--pki", str(pki))
    assert r.exit_code == 3, r.output
    assert f"{file} is writable by other users" in r.output, r.output
    assert f"chmod go-w {file}" in r.output
    os.chmod(file, 0o644)
    assert "writable by other users" not in run("ca", "check", "--pki", str(pki)).output


@pytest.mark.parametrize("where", ["certs_by_serial", "issued", "revoked", "crls"])
def test_a_file_another_user_owns_in_a_public_directory_is_refused(
        pki: Path, where: str, run: Run) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another uid")
    file = _a_file_in(pki, where)
    os.chown(file, 65534, 65534)
    r = run("ca", "check", "--pki", str(pki))
    assert r.exit_code == 3, r.output
    assert f"{file} is owned by uid 65534, not by you" in r.output, r.output
    assert f"chown 0 {file}" in r.output


def test_a_lock_others_can_open_is_refused_at_once(pki: Path, secrets_dir: Path,
                                                   run: Run) -> None:
    """flock needs only read access: whoever can open .lock can hold it and make every
    CA command wait its minute and fail blaming "another trustboot process"."""
    lock = pki / ".lock"
    lock.touch()
    os.chmod(lock, 0o644)
    ca_pass = ("--passphrase-file", str(secrets_dir / "ca.pass"))
    for args in (("ca", "check"), ("ca", "crl", *ca_pass)):
        r = run(*args, "--pki", str(pki))
        assert r.exit_code == 3, (args, r.output)
        assert f"lock file {lock} is readable or writable by other users" in r.output
        assert f"chmod 600 {lock}" in r.output
    os.chmod(lock, 0o600)
    assert run("ca", "crl", "--pki", str(pki), "--passphrase-file",
               str(secrets_dir / "ca.pass")).exit_code == 0


def test_a_lock_another_user_owns_and_holds_is_refused_at_once(
        pki: Path, secrets_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the lock to another uid")
    lock = pki / ".lock"
    lock.touch()
    os.chmod(lock, 0o600)
    os.chown(lock, 65534, 65534)
    os.chmod(pki, 0o755)
    # nobody holds it, as its owner can (flock(1), started in the pki: the directories
    # above are not open to nobody)
    holder = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534",
                               "--clear-groups", "flock", ".lock", "sleep", "60"], cwd=pki)
    try:
        fd = os.open(lock, os.O_RDONLY)
        try:
            for _ in range(200):  # until nobody holds it
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    time.sleep(0.05)
                except BlockingIOError:
                    break
            else:
                pytest.fail("nobody's flock never took the lock")
        finally:
            os.close(fd)
        start = time.monotonic()
        r = run_proc("ca", "crl", "--pki", str(pki), "--passphrase-file",
                     str(secrets_dir / "ca.pass"))
        assert time.monotonic() - start < 30  # not the lock's 60 s timeout
        assert r.returncode == 3, r.stderr
        assert f"lock file {lock} is owned by uid 65534, not by you" in r.stderr, r.stderr
        assert f"chown 0 {lock}" in r.stderr
    finally:
        holder.kill()
        holder.wait()


def _shared_sticky_dir(tmp_path: Path) -> Path:
    """A directory like /tmp (1777) where another user's links are planted (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to plant a link as another uid")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    return shared


def test_a_pki_link_another_user_owns_is_refused(pki: Path, tmp_path: Path,
                                               secrets_dir: Path, run: Run) -> None:
    """In a shared sticky directory (/tmp) another user plants the CA home as a link to a
    directory of ours: its owner can point it elsewhere later, so it is not used (init
    creates nothing through it; an existing CA is not opened through it)."""
    shared = _shared_sticky_dir(tmp_path)
    empty = tmp_path / "ours"
    empty.mkdir()
    for name, target in (("new", empty), ("old", pki)):
        (shared / name).symlink_to(target)
        os.chown(shared / name, 65534, 65534, follow_symlinks=False)
    r = run("ca", "init", "--pki", str(shared / "new"), "--passphrase-file",
            str(secrets_dir / "ca.pass"))
    assert r.exit_code == 3 and "symbolic link owned by uid 65534" in r.output, r.output
    assert list(empty.iterdir()) == []
    r = run("ca", "list", "--pki", str(shared / "old"))
    assert r.exit_code == 3 and "symbolic link owned by uid 65534" in r.output, r.output


def test_a_link_another_user_owns_on_the_way_is_refused(pki: Path, tmp_path: Path,
                                                       run: Run) -> None:
    """A link above the path, not at it: in a shared sticky directory another user's
    link leads to a directory of ours, so every directory the checks see is ours; but
    that user can point the link at a directory of theirs the moment the checks are
    done, and the root.pem export writes (or the pki a build reads) is theirs. Refused
    (exit 3) before anything is written; the link's ``..`` and a chain of links (ours to
    theirs) are followed as the kernel does, and a link of ours in a directory others
    can write (they can replace it) is refused too."""
    shared = _shared_sticky_dir(tmp_path)
    ours = tmp_path / "ours"
    (ours / "sub").mkdir(parents=True)
    theirs = shared / "lnk"
    theirs.symlink_to(ours / "sub")
    os.chown(theirs, 65534, 65534, follow_symlinks=False)
    mine = tmp_path / "mine"
    mine.symlink_to(theirs)
    for out in (theirs / "trust", theirs / ".." / "trust", mine / "trust"):
        r = run("ca", "export", "--pki", str(pki), "--out", str(out))
        assert r.exit_code == 3, (out, r.output)
        assert f"{theirs} on the way to it is a symbolic link owned by uid 65534" \
            in r.output, r.output
    assert list((ours / "sub").iterdir()) == [] and not (ours / "trust").exists()
    moved = theirs / "pki"
    shutil.copytree(pki, ours / "sub" / "pki", symlinks=True)
    r = run("ca", "list", "--pki", str(moved))
    assert r.exit_code == 3 and "symbolic link owned by uid 65534" in r.output, r.output
    # a link of ours, but in a directory anyone can write (not sticky): replaceable
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    (open_dir / "lnk").symlink_to(ours)
    open_dir.chmod(0o777)
    r = run("ca", "export", "--pki", str(pki), "--out", str(open_dir / "lnk" / "trust"))
    assert r.exit_code == 3 and f"{open_dir} above it is writable" in r.output, r.output
    # control: the same export through a link of ours in a directory of ours is fine
    (tmp_path / "fine").symlink_to(ours)
    r = run("ca", "export", "--pki", str(pki), "--out", str(tmp_path / "fine" / "trust"))
    assert r.exit_code == 0, r.output
    assert (ours / "trust" / "root.pem").is_file()


@pytest.mark.parametrize("mode", [0o777, 0o770])
def test_export_below_a_directory_others_can_write_is_refused(pki: Path, tmp_path: Path,
                                                              run: Run, mode: int) -> None:
    """The export directory's own owner and mode are not enough: whoever can write a
    directory above it can rename it away, root.pem included, and put their own root in
    its place before the firmware build reads it. Refused (exit 3) before anything is
    created; a sticky parent (as /tmp) only lets others remove their own entries."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    if not mode & 0o002:
        give_group_to_another_user(shared)  # our own user-private group would pass
    out = shared / "release" / "trust"
    r = run("ca", "export", "--pki", str(pki), "--out", str(out))
    assert r.exit_code == 3, r.output
    assert f"{shared} above it is writable by other users" in r.output, r.output
    assert f"chmod go-w {shared}" in r.output and "Traceback" not in r.output
    assert list(shared.iterdir()) == []
    # through a link of ours that leads below the shared directory: refused as well
    link = tmp_path / "trust-link"
    link.symlink_to(out, target_is_directory=True)
    r = run("ca", "export", "--pki", str(pki), "--out", str(link))
    assert r.exit_code == 3 and "writable by other users" in r.output, r.output
    shared.chmod(mode | 0o1000)
    assert run("ca", "export", "--pki", str(pki), "--out", str(out)).exit_code == 0
    assert (out / "root.pem").is_file()


def test_pki_below_a_directory_of_another_user_is_refused(pki: Path, tmp_path: Path,
                                                          secrets_dir: Path, run: Run) -> None:
    """The pki is ours and 0755, but the owner of the directory above it can move it
    away and put a CA of theirs in its place (whose ca.crt an export or a build would
    then take as the root): refused on every open and by init, which creates nothing."""
    theirs = dir_of_nobody(tmp_path / "theirs")
    moved = theirs / "pki"
    shutil.move(pki, moved)
    as_nobody("mv", "--", "pki", "elsewhere", cwd=theirs)  # what they can do to it
    (theirs / "elsewhere").rename(moved)
    r = run("ca", "export", "--pki", str(moved), "--out", str(tmp_path / "trust"))
    assert r.exit_code == 3, r.output
    assert f"{theirs} above it is owned by uid 65534" in r.output, r.output
    assert not (tmp_path / "trust").exists()
    with pytest.raises(ConfigError, match="above it is owned by uid 65534"):
        load_trusted_root(moved)
    r = run("ca", "init", "--pki", str(theirs / "new"), "--key-type", "ec-p256",
            "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.exit_code == 3 and "above it is owned by uid 65534" in r.output, r.output
    assert not (theirs / "new").exists()


def test_export_below_a_directory_of_another_user_is_refused(pki: Path, tmp_path: Path,
                                                             run: Run) -> None:
    theirs = dir_of_nobody(tmp_path / "theirs")
    sub = theirs / "ours"
    sub.mkdir(mode=0o755)  # ours, but its parent's owner can swap it
    r = run("ca", "export", "--pki", str(pki), "--out", str(sub))
    assert r.exit_code == 3, r.output
    assert f"{theirs} above it is owned by uid 65534" in r.output, r.output
    assert list(sub.iterdir()) == []


def test_export_into_a_directory_others_can_write_is_refused(pki: Path, tmp_path: Path,
                                                             run: Run) -> None:
    """root.pem goes into firmware (TRUST=): whoever can write the export directory could
    put their own root there before the build reads it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    r = run("ca", "export", "--pki", str(pki), "--out", str(shared))
    assert r.exit_code == 3 and "writable by other users" in r.output, r.output
    assert list(shared.iterdir()) == []
    shared.chmod(0o755)
    assert run("ca", "export", "--pki", str(pki), "--out", str(shared)).exit_code == 0
    assert (shared / "root.pem").is_file()


# --- links where none belongs ---------------------------------------------------------


def test_symlink_at_log_is_refused_and_target_untouched(pki: Path, tmp_path: Path,
                                                        secrets_dir: Path, run: Run) -> None:
    victim = tmp_path / "root-only.conf"
    victim.write_text("do not touch\n")
    victim.chmod(0o600)
    (pki / "log.jsonl").unlink()
    (pki / "log.jsonl").symlink_to(victim)
    r = run("ca", "crl", "--pki", str(pki), "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.exit_code == 3, r.output
    assert "symbolic link" in r.output
    assert victim.read_text() == "do not touch\n"
    # the library refuses the append itself, even when the open-time check is bypassed
    from trustboot.ca import oplog

    with pytest.raises(ConfigError, match="symbolic link"):
        oplog.append(pki / "log.jsonl", {"op": "forged"})
    assert victim.read_text() == "do not touch\n"


def test_issued_cert_linked_to_a_secret_is_not_copied(pki: Path, tmp_path: Path,
                                                      secrets_dir: Path, run: Run) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret-hash:19000:0:99999:7:::\n")
    secret.chmod(0o600)
    cert = pki / "issued" / "signer.crt"
    cert.unlink()
    cert.symlink_to(secret)
    before = set((pki / "revoked").iterdir())
    r = run("ca", "revoke", "signer", "--pki", str(pki), "--passphrase-file",
            str(secrets_dir / "ca.pass"))
    assert r.exit_code == 3, r.output
    assert "symbolic link" in r.output
    assert set((pki / "revoked").iterdir()) == before
    for f in pki.rglob("*"):
        if f.is_file() and not f.is_symlink():
            assert b"secret-hash" not in f.read_bytes(), f
    cert.unlink()  # the view goes; the CA loads again and nothing was revoked
    assert CertificateAuthority.open(pki).get("signer").status == "valid"


def test_key_file_linked_elsewhere_is_refused(pki: Path, tmp_path: Path, secrets_dir: Path,
                                              run: Run) -> None:
    key = pki / "private" / "signer.key"
    moved = tmp_path / "elsewhere.key"
    shutil.move(key, moved)
    key.symlink_to(moved)
    image = tmp_path / "f.bin"
    image.write_bytes(b"x")
    r = run("sign", str(image), "--key", "signer", "--pki", str(pki), "--passphrase-file",
            str(secrets_dir / "key.pass"))
    assert r.exit_code == 3 and "symbolic link" in r.output


def test_dangling_key_link_is_a_documented_error(pki: Path, tmp_path: Path,
                                                 secrets_dir: Path, run: Run) -> None:
    (pki / "private" / "newname.key").symlink_to(tmp_path / "nowhere")
    r = issue(run, pki, secrets_dir, "codesign", "newname")
    # the stray link is set aside (never followed) and the key written in its place
    assert r.exit_code == 0, r.output
    key = pki / "private" / "newname.key"
    assert not key.is_symlink() and stat.S_IMODE(key.stat().st_mode) == 0o600
    # a dangling link as the key of an issued certificate: exit 3, not a crash
    (pki / "private" / "signer.key").unlink()
    (pki / "private" / "signer.key").symlink_to(tmp_path / "nowhere")
    image = tmp_path / "f.bin"
    image.write_bytes(b"x")
    r = run("sign", str(image), "--key", "signer", "--pki", str(pki), "--passphrase-file",
            str(secrets_dir / "key.pass"))
    assert r.exit_code == 3, r.output


# --- inputs: names, passphrases, output paths ---------------------------------------------


@pytest.mark.parametrize("name", ["evil\nV\t991231235959Z\t\t01\tunknown\t/CN=forged",
                                  "tab\there", "nul\x00", "bell\x07", "del\x7f"])
def test_ca_name_with_control_characters_is_refused(tmp_path: Path, secrets_dir: Path,
                                                    run: Run, name: str) -> None:
    r = run("ca", "init", "--pki", str(tmp_path / "pki"), "--name", name,
            "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.exit_code == 3, r.output
    assert "control characters" in r.output
    assert not (tmp_path / "pki" / "index.txt").exists()


@pytest.mark.parametrize("length", [49, 53, 54, 64])
def test_ca_name_too_long_for_the_ca_certificates_is_refused(tmp_path: Path,
                                                             secrets_dir: Path,
                                                             length: int) -> None:
    """`--name` becomes "<name> Root CA", "<name> Issuing CA 2" ...: 64 characters of
    name passed the check, then broke X.509's 64-character common name (exit 70)."""
    pki = tmp_path / "pki"
    r = run_proc("ca", "init", "--pki", str(pki), "--name", "A" * length, "--key-type",
                 "ec-p256", "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.returncode == 3, r.stderr
    assert f"--name must be 1-48 characters (it has {length})" in r.stderr
    assert "shorten it" in r.stderr and not pki.exists()


def test_ca_name_is_counted_in_bytes_as_x509_counts_it(tmp_path: Path,
                                                       secrets_dir: Path) -> None:
    """X.509's 64 is bytes of UTF-8 in the certificate builder: 30 accented letters (60
    bytes, under 48 characters) passed the check, and "<name> Root CA" was exit 70."""
    for count, code in ((25, 3), (30, 3), (24, 0)):
        pki = tmp_path / f"pki{count}"
        r = run_proc("ca", "init", "--pki", str(pki), "--name", "\u00e9" * count,
                     "--key-type", "ec-p256", "--passphrase-file",
                     str(secrets_dir / "ca.pass"))
        assert r.returncode == code, (count, r.stderr)
        if code:
            assert (f"--name must be 1-48 characters (it has {count}, {2 * count} bytes "
                    "of UTF-8") in r.stderr and not pki.exists()


def test_ca_name_of_the_longest_length_makes_and_rotates_a_ca(tmp_path: Path,
                                                              secrets_dir: Path,
                                                              run: Run) -> None:
    pki = tmp_path / "pki"
    ca_pass = ("--passphrase-file", str(secrets_dir / "ca.pass"))
    r = run("ca", "init", "--pki", str(pki), "--name", "A" * 48, "--key-type", "ec-p256",
            *ca_pass)
    assert r.exit_code == 0, r.output
    r = run("ca", "rotate", "issuing", "--pki", str(pki), *ca_pass)
    assert r.exit_code == 0, r.output
    assert CertificateAuthority.open(pki).issuing_cert.subject.rfc4514_string() \
        == f"CN={'A' * 48} Issuing CA 2"


@pytest.mark.parametrize(("name", "cut"), [
    ("C" * 53, "C" * 51),
    ("A" * 50 + " " + "BB", "A" * 50),  # the cut leaves no space before the suffix
    ("x" * 49 + "e\u0301y", "x" * 49),  # nor a combining accent without its letter
    ("\u00e9" * 26 + "x", "\u00e9" * 25),  # 53 bytes of UTF-8: cut between characters
], ids=["plain", "space", "combining", "utf-8"])
def test_a_ca_named_before_the_name_limit_rotates_with_its_name_cut(
        tmp_path: Path, secrets_dir: Path, run: Run, name: str, cut: str) -> None:
    """An older trustboot made CAs with names of up to 53 characters (bytes of UTF-8:
    "<name> Issuing CA" fits the 64 of a common name); the first `ca rotate issuing` of
    such a CA then asked for a longer common name (exit 70). Now the name part is cut to
    fit, the suffix and its number kept: the rotations work, every CA name is unique and
    the chain verifies."""
    pki = tmp_path / "pki"
    ca_pass = ("--pki", str(pki), "--passphrase-file", str(secrets_dir / "ca.pass"))
    r = run("ca", "init", "--name", "A" * 48, "--key-type", "ec-p256", *ca_pass)
    assert r.exit_code == 0, r.output
    # the name as an older trustboot recorded it (config.json; nothing else reads it)
    config = json.loads((pki / "config.json").read_text())
    config["common_name"] = name
    (pki / "config.json").write_text(json.dumps(config, indent=2))
    for _ in range(2):
        r = run("ca", "rotate", "issuing", *ca_pass)
        assert r.exit_code == 0, r.output
    # the rotated issuing CA issues, is found as the issuer and chains to the root
    assert issue(run, pki, secrets_dir, "codesign", "signer", "--key-type",
                 "ec-p256").exit_code == 0
    ca = CertificateAuthority.open(pki)
    assert ca.issuing_entry_of(ca.get("signer").load_cert()) == ca.active_entry("issuing") \
        == ca.entries[-2]
    assert subprocess.run(["openssl", "verify", "-CAfile", str(pki / "ca.crt"), "-untrusted",
                           str(pki / "issuing-ca.crt"), str(pki / "issued" / "signer.crt")],
                          capture_output=True).returncode == 0
    r = run("ca", "check", "--pki", str(pki))
    assert r.exit_code == 0, r.output
    # a root rotation names its CA certificates by the same rule
    r = run("ca", "rotate", "root", "begin", *ca_pass)
    assert r.exit_code == 0, r.output
    names = [e.subject.removeprefix("CN=") for e in CertificateAuthority.open(pki).entries
             if e.profile in ("root", "issuing")]
    assert names[2:] == [f"{cut} Issuing CA 2", f"{cut} Issuing CA 3", f"{name} Root CA 2",
                         f"{cut} Issuing CA 4"]
    assert len(set(names)) == len(names) and max(map(len, names)) <= 64


@pytest.mark.parametrize("option", ["--name", "--org"])
def test_ca_text_that_is_not_utf8_is_refused(tmp_path: Path, secrets_dir: Path,
                                             option: str) -> None:
    """Bytes that are not UTF-8 in argv reach Python as surrogate escapes, which no
    certificate or index can hold (UnicodeEncodeError, exit 70, before)."""
    pki = tmp_path / "pki"
    r = run_proc("ca", "init", "--pki", str(pki), option, "Acme\udcff", "--key-type", "ec-p256",
                 "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.returncode == 3, r.stderr
    assert f"{option} b'" in r.stderr and "\\xff' is not valid UTF-8 text" in r.stderr, \
        r.stderr
    assert not pki.exists()


def test_org_with_newline_is_refused(tmp_path: Path, secrets_dir: Path, run: Run) -> None:
    r = run("ca", "init", "--pki", str(tmp_path / "pki"), "--org", "Acme\nV\tforged",
            "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.exit_code == 3 and "control characters" in r.output


def test_passphrase_file_dev_zero_is_refused_unread(pki: Path, run: Run) -> None:
    start = time.monotonic()
    r = run("ca", "crl", "--pki", str(pki), "--passphrase-file", "/dev/zero")
    assert r.exit_code == 3, r.output
    assert "not a regular file" in r.output
    assert time.monotonic() - start < 30


def test_passphrase_fifo_does_not_block(pki: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pass.fifo"
    os.mkfifo(fifo)
    proc = run_proc("ca", "crl", "--pki", str(pki), "--passphrase-file", str(fifo),
                    timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "not a regular file" in proc.stderr


def test_oversized_passphrase_file_is_refused(pki: Path, tmp_path: Path, run: Run) -> None:
    big = tmp_path / "big.pass"
    big.write_bytes(b"x" * (1 << 20))
    big.chmod(0o600)
    r = run("ca", "crl", "--pki", str(pki), "--passphrase-file", str(big))
    assert r.exit_code == 3 and "larger than" in r.output


@pytest.mark.parametrize("mode", [0o666, 0o644, 0o640, 0o604, 0o620])
def test_passphrase_file_open_to_others_is_refused(pki: Path, secrets_dir: Path,
                                                   tmp_path: Path, run: Run, mode: int) -> None:
    """As an origin's credentials file: a passphrase others may read is a leaked key."""
    loose = tmp_path / "ca.pass"
    shutil.copyfile(secrets_dir / "ca.pass", loose)
    loose.chmod(mode)
    r = run("ca", "crl", "--pki", str(pki), "--passphrase-file", str(loose))
    assert r.exit_code == 3, r.output
    assert "readable or writable by other users" in r.output and f"{mode:04o}" in r.output
    assert f"chmod 600 {loose}" in r.output
    loose.chmod(0o400)
    assert run("ca", "crl", "--pki", str(pki), "--passphrase-file", str(loose)).exit_code == 0


def test_passphrase_file_another_user_owns_is_refused(pki: Path, secrets_dir: Path,
                                                      tmp_path: Path, run: Run) -> None:
    """Root reads a 0600 file of another user's: that user knows the passphrase, and
    can change it (a new key's, say, to one of theirs). Refused as a loose mode is."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another uid")
    theirs = tmp_path / "ca.pass"
    shutil.copyfile(secrets_dir / "ca.pass", theirs)
    theirs.chmod(0o600)
    os.chown(theirs, 65534, 65534)
    r = run("ca", "crl", "--pki", str(pki), "--passphrase-file", str(theirs))
    assert r.exit_code == 3, r.output
    assert "is owned by uid 65534, not by you (uid 0)" in r.output, r.output
    assert f"chown 0 {theirs}" in r.output
    r = run("ca", "issue", "codesign", "theirs", "--pki", str(pki), "--passphrase-file",
            str(secrets_dir / "ca.pass"), "--key-passphrase-file", str(theirs))
    assert r.exit_code == 3 and "owned by uid 65534" in r.output, r.output
    os.chown(theirs, 0, 0)
    assert run("ca", "crl", "--pki", str(pki), "--passphrase-file", str(theirs)).exit_code == 0


def test_passphrase_file_through_a_link_is_judged_by_the_file(pki: Path, secrets_dir: Path,
                                                              tmp_path: Path, run: Run) -> None:
    """Secret mounts (Kubernetes, Docker) are links: followed, and the file they lead to
    must be private itself."""
    target = tmp_path / "mounted" / "ca.pass"
    target.parent.mkdir()
    shutil.copyfile(secrets_dir / "ca.pass", target)
    target.chmod(0o400)
    link = tmp_path / "ca.pass"
    link.symlink_to(target)
    assert run("ca", "crl", "--pki", str(pki), "--passphrase-file", str(link)).exit_code == 0
    target.chmod(0o444)
    r = run("ca", "crl", "--pki", str(pki), "--passphrase-file", str(link))
    assert r.exit_code == 3 and "readable or writable by other users" in r.output, r.output


def test_passphrase_file_in_another_users_directory_is_refused(
        pki: Path, secrets_dir: Path, tmp_path: Path, run: Run) -> None:
    """A root-owned 0600 passphrase file in a directory another user owns: that user can
    rename it and link its name to any root-only file (a key file), whose first line
    becomes the passphrase of a new key. Refused before anything is read or written."""
    shared = dir_of_nobody(tmp_path / "shared")
    key_pass = shared / "key.pass"
    shutil.copyfile(secrets_dir / "key.pass", key_pass)
    key_pass.chmod(0o600)
    r = run("ca", "issue", "codesign", "victim", "--pki", str(pki), "--passphrase-file",
            str(secrets_dir / "ca.pass"), "--key-passphrase-file", str(key_pass))
    assert r.exit_code == 3, r.output
    assert f"passphrase file {key_pass}: {shared} above it is owned by uid 65534" in r.output
    assert not any(e.name == "victim" for e in CertificateAuthority.open(pki).entries)
    # what the other user does with it: the link leads to a root-only key file
    key_pass.rename(shared / "moved")
    key_pass.symlink_to(pki / "private" / "signer.key")
    os.chown(key_pass, 65534, 65534, follow_symlinks=False)
    r = run("ca", "issue", "codesign", "victim", "--pki", str(pki), "--passphrase-file",
            str(secrets_dir / "ca.pass"), "--key-passphrase-file", str(key_pass))
    assert r.exit_code == 3, r.output
    assert "owned by uid 65534" in r.output and "victim" not in (pki / "index.json").read_text()


def test_secret_file_through_another_users_link_is_refused(tmp_path: Path) -> None:
    """In a sticky directory (/tmp) another user's link can be swapped at any moment;
    a secret read through it is refused (PIN files, pin-source= and passphrase files
    alike), a root-owned link to a root-owned mount (/run/secrets) stays usable."""
    from trustboot.keys.pkcs11 import secret_source
    from trustboot.secrets import from_file

    if os.geteuid() != 0:
        pytest.skip("needs root to give a link to another uid")
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    mounted = tmp_path / "run-secrets"
    mounted.mkdir(mode=0o755)
    (mounted / "pin").write_text("1234\n")
    (mounted / "pin").chmod(0o600)
    link = sticky / "pin"
    link.symlink_to(mounted / "pin")
    assert from_file(link, "PIN file")("the token") == b"1234"
    os.chown(link, 65534, 65534, follow_symlinks=False)
    for source in (from_file(link, "PIN file"), secret_source(f"file:{link}")):
        with pytest.raises(ConfigError) as exc:
            source("the token")
        assert exc.value.message.startswith(f"PIN file {link}: {link} on the way to it is a "
                                            "symbolic link owned by uid 65534")
    mounted.chmod(0o777)  # a directory others can write, on the way to the file
    os.chown(link, 0, 0, follow_symlinks=False)
    with pytest.raises(ConfigError, match="above it is writable by other users"):
        from_file(link, "PIN file")("the token")


def test_pin_file_open_to_others_is_refused(tmp_path: Path) -> None:
    from trustboot.keys.pkcs11 import secret_source

    pin = tmp_path / "pin"
    pin.write_text("1234\n")
    pin.chmod(0o644)
    with pytest.raises(ConfigError) as exc:
        secret_source(f"file:{pin}")("the token")
    assert exc.value.message.startswith(f"PIN file {pin} is readable or writable by other")
    assert exc.value.hint == f"chmod 600 {pin}"
    pin.chmod(0o600)
    assert secret_source(str(pin))("the token") == b"1234"


def test_a_malformed_pin_source_uri_is_a_config_error() -> None:
    from trustboot.keys.pkcs11 import secret_source

    with pytest.raises(ConfigError, match=r"pin-source 'file://\[x/pin' is not a file: URI"):
        secret_source("file://[x/pin")


def test_non_utf8_passphrase_in_env_is_not_a_crash(pki: Path) -> None:
    secret = b"\xff\xfe-not-utf8-" + b"s" * 23
    env = {k: v for k, v in os.environb.items()}
    env[b"TB_BAD_PASS"] = secret
    proc = subprocess.run(
        [*trustboot_cmd(), "ca", "crl", "--pki", str(pki), "--passphrase-env", "TB_BAD_PASS"],
        capture_output=True, env=env, timeout=120)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 3, err  # a wrong passphrase, not a bug
    assert "internal error" not in err and "position" not in err
    # its length must not show either (as a number of its own: the key file's hex serial in
    # the message may well contain the same digits)
    assert not re.search(rf"(?<![0-9A-Fa-f]){len(secret)}(?![0-9A-Fa-f])", err), err
    assert "not-utf8" not in err


def test_export_to_an_unwritable_place_is_operational(pki: Path, run: Run) -> None:
    r = run("ca", "export", "--pki", str(pki), "--out", "/proc/trustboot-export")
    assert r.exit_code == 1, r.output
    assert "cannot create directory /proc/trustboot-export" in r.output


def test_init_under_a_file_is_operational(tmp_path: Path, secrets_dir: Path, run: Run) -> None:
    (tmp_path / "file").write_text("x")
    r = run("ca", "init", "--pki", str(tmp_path / "file" / "sub"), "--passphrase-file",
            str(secrets_dir / "ca.pass"))
    assert r.exit_code == 1, r.output
    assert "is not a directory" in r.output or "Not a directory" in r.output


def test_export_checks_the_crl_signature(pki: Path, attacker_pki: Path, tmp_path: Path,
                                         run: Run) -> None:
    shutil.copyfile(attacker_pki / "crl.pem", pki / "crl.pem")
    r = run("ca", "export", "--pki", str(pki), "--out", str(tmp_path / "out"))
    assert r.exit_code == 3 and "not signed by this CA" in r.output


def test_a_crl_signed_by_the_issuing_key_under_another_name_is_refused(
        pki: Path, tmp_path: Path, run: Run) -> None:
    """Signed with the issuing CA's own key, but naming another issuer: a relying party
    matches a CRL to a certificate by issuer name, so this one revokes nothing there."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    from trustboot.ca.store import CertificateAuthority
    from trustboot.secrets import constant

    from .conftest import CA_PASS

    key = CertificateAuthority.open(pki).load_issuing_key(constant(CA_PASS.encode()))
    now = dt.datetime.now(dt.UTC)
    crl = (x509.CertificateRevocationListBuilder()
           .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Someone Else")]))
           .last_update(now - dt.timedelta(hours=1)).next_update(now + dt.timedelta(days=30))
           .sign(key, hashes.SHA256()))
    (pki / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    r = run("ca", "export", "--pki", str(pki), "--out", str(tmp_path / "out"))
    assert r.exit_code == 3 and "names issuer CN=Someone Else" in r.output, r.output


# --- leftovers of killed runs -------------------------------------------------------------


def test_temp_files_of_killed_runs_are_removed(pki: Path, secrets_dir: Path, run: Run) -> None:
    leftovers = [pki / ".index.json.abc123.tmp", pki / "issued" / ".signer.crt.x1.tmp",
                 pki / "certs_by_serial" / ".1234.pem.zz.tmp",
                 pki / "private" / ".signer.key.4242.tmp"]
    for f in leftovers:
        f.write_bytes(b"partial")
    keep = pki / "issued" / "notes.txt"  # not ours to remove
    keep.write_text("x")
    r = run("ca", "crl", "--pki", str(pki), "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.exit_code == 0, r.output
    assert [f for f in leftovers if f.exists()] == []
    assert keep.exists()


def test_concurrent_reader_sees_no_half_written_files(pki: Path, secrets_dir: Path) -> None:
    """The temp cleanup runs under the lock: a concurrent crl never loses its temp file."""
    errors: list[str] = []

    def crl() -> None:
        r = CliRunner().invoke(cli, ["ca", "crl", "--pki", str(pki), "--passphrase-file",
                                     str(secrets_dir / "ca.pass")])
        if r.exit_code != 0:
            errors.append(r.output)

    threads = [threading.Thread(target=crl) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads((pki / "index.json").read_text())["crl_number"] >= 4


@pytest.mark.parametrize(("key", "path"), [("cert_file", "../../etc/passwd"),
                                         ("cert_file", "/etc/passwd"),
                                         ("key_file", "/root/.ssh/id_rsa")])
def test_index_paths_outside_the_pki_are_refused(pki: Path, run: Run, key: str,
                                                 path: str) -> None:
    index = pki / "index.json"
    doc = json.loads(index.read_text())
    doc["entries"][-1][key] = path
    index.write_text(json.dumps(doc))
    r = run("ca", "list", "--pki", str(pki))
    assert r.exit_code == 3 and f"{key} {path!r} is not a path inside the pki" in r.output


@pytest.mark.parametrize(("key", "value"), [
    ("cert_file", None), ("cert_file", 7), ("key_sha256", []), ("key_sha256", {}),
    ("key_sha256", "not hex"), ("name", None), ("name", -1), ("name", 2**70), ("name", []),
    ("name", {}), ("name", "../../x"), ("not_before", None), ("not_before", "x"),
    ("not_before", "../../etc/passwd"), ("not_before", "2026-01-01T00:00:00"),
    ("not_after", 1), ("serial", None), ("serial", "-1f"), ("serial", 31),
    ("sha256", None), ("status", "maybe"), ("profile", None), ("sans", "a.example"),
    ("sans", [None]), ("revoked_at", "yesterday"), ("issuer_sha256", 1), ("subject", None),
    ("revocation_reason", "bogus"), ("revocation_reason", 3)])
@pytest.mark.parametrize("args", [("check",), ("show", "signer", "--json"), ("list",)])
def test_an_index_field_of_the_wrong_type_is_a_damaged_ca(
        pki: Path, run: Run, key: str, value: object, args: tuple[str, ...]) -> None:
    """A hand-edited index.json (null, a list, a number, garbage where a string or a time
    belongs) was an internal error (exit 70) in ca check/show/list: now the CA is damaged
    (exit 3), naming index.json, the entry and the field."""
    index = pki / "index.json"
    doc = json.loads(index.read_text())
    last = len(doc["entries"])
    doc["entries"][-1][key] = value
    index.write_text(json.dumps(doc))
    r = run("ca", *args, "--pki", str(pki))
    assert r.exit_code == 3, r.output
    assert f"the CA in {pki} is damaged: index.json entry {last}" in r.output, r.output
    assert f": {key} " in r.output, r.output


@pytest.mark.parametrize("reason", ["Key Compromise", "keyCompromise", "certificate_hold",
                                    ""])
def test_an_unknown_revocation_reason_in_the_index_is_a_damaged_ca(
        pki: Path, secrets_dir: Path, run: Run, reason: str) -> None:
    """index.json's revocation_reason was checked for its type only: a hand-edited reason
    (a revocation the CRL does not list yet, as after a killed `ca revoke`) was taken in,
    shown by `ca list`, and broke `ca crl` (KeyError, exit 70); and "Key Compromise" is
    not key_compromise, so the key was not refused. Now the CA is damaged (exit 3) where
    the index is read, naming the entry, the field and the reasons there are; `ca revoke
    --reason` takes only those (exit 2)."""
    index = pki / "index.json"
    doc = json.loads(index.read_text())
    position, entry = next((i, e) for i, e in enumerate(doc["entries"], 1)
                           if e["name"] == "signer")
    entry.update(status="revoked", revoked_at=entry["not_before"], revocation_reason=reason)
    index.write_text(json.dumps(doc))
    crl = (pki / "crl.pem").read_bytes()
    for args in (("crl", "--passphrase-file", str(secrets_dir / "ca.pass")), ("list", "--all"),
                 ("check",)):
        r = run("ca", *args, "--pki", str(pki))
        assert r.exit_code == 3, r.output
        assert (f"the CA in {pki} is damaged: index.json entry {position} ('signer'): "
                f"revocation_reason {reason!r} is not one of unspecified, key_compromise, "
                "superseded") in " ".join(r.output.split()), r.output
    assert (pki / "crl.pem").read_bytes() == crl
    entry["revocation_reason"] = "key_compromise"
    index.write_text(json.dumps(doc))
    r = run("ca", "revoke", "ipxe-client", "--reason", "keyCompromise", "--pki", str(pki),
            "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.exit_code == 2 and "Invalid value for '--reason'" in r.output, r.output
    r = run("ca", "crl", "--pki", str(pki), "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.exit_code == 0, r.output
    revoked = x509.load_pem_x509_crl((pki / "crl.pem").read_bytes()) \
        .get_revoked_certificate_by_serial_number(int(entry["serial"], 16))
    assert revoked is not None and revoked.extensions.get_extension_for_class(
        x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise


def test_an_index_entry_that_is_not_an_object_is_a_damaged_ca(pki: Path, run: Run) -> None:
    index = pki / "index.json"
    doc = json.loads(index.read_text())
    doc["entries"].append(["not", "an", "entry"])
    index.write_text(json.dumps(doc))
    r = run("ca", "check", "--pki", str(pki))
    assert r.exit_code == 3 and "index.json entry" in r.output and "not an object" in r.output


def test_export_removes_old_temp_files_only(pki: Path, tmp_path: Path, run: Run,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    old, young = out / ".root.pem.k1ll3d.tmp", out / ".chain.pem.busy.tmp"
    old.write_text("partial")
    young.write_text("another export is writing this one")
    sweep_clock_between(monkeypatch, [old], [young])
    r = run("ca", "export", "--pki", str(pki), "--out", str(out))
    assert r.exit_code == 0, r.output
    assert not old.exists() and young.exists()


@pytest.mark.parametrize("where", ["issued", "revoked", "certs_by_serial", "crls", "private",
                                   "private/keys", "private/revoked"])
@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-copy", "dangling"])
def test_a_pki_directory_replaced_by_a_link_is_refused(pki: Path, tmp_path: Path, where: str,
                                                       dangling: bool, run: Run) -> None:
    """A directory of the pki swapped for a symbolic link: to a faithful copy (ours, safe
    modes: the files would still check out, but whoever controls the link controls what
    is read and where writes go), or to nothing yet (a write would create it there)."""
    target = pki / where
    target.mkdir(mode=0o700 if where.startswith("private") else 0o755, exist_ok=True)
    elsewhere = tmp_path / "elsewhere" / where
    elsewhere.parent.mkdir(mode=0o700, parents=True)
    shutil.copytree(target, elsewhere, symlinks=True)
    shutil.rmtree(target)
    if dangling:
        shutil.rmtree(elsewhere)
    target.symlink_to(elsewhere, target_is_directory=True)
    r = run("ca", "list", "--pki", str(pki))
    assert r.exit_code == 3 and "symbolic link" in r.output, r.output
    assert str(target) in r.output, r.output


@pytest.mark.parametrize("change", ["group-writable", "other-owner", "link"])
@pytest.mark.parametrize("name", ["index.json", "ca.crt"])
def test_a_pki_file_others_could_have_changed_is_refused(pki: Path, tmp_path: Path,
                                                         name: str, change: str,
                                                         run: Run) -> None:
    """The files read back as the CA's record: writable by its group, owned by another
    user, or a link (to a copy that would check out) are each refused, by the CA and by
    a trust-only reader."""
    file = pki / name
    if change == "group-writable":
        os.chmod(file, 0o664)
        give_group_to_another_user(file)
        expected = f"{file} is writable by other users (mode 0664)"
    elif change == "other-owner":
        if os.geteuid() != 0:
            pytest.skip("needs root to give a file to another uid")
        os.chown(file, 65534, 65534)
        expected = f"{file} is owned by uid 65534"
    else:
        copy = tmp_path / name
        shutil.copy2(file, copy)
        file.unlink()
        file.symlink_to(copy)
        expected = f"{file} is a symbolic link"
    r = run("ca", "list", "--pki", str(pki))
    assert r.exit_code == 3 and expected in r.output, r.output
    if name == "ca.crt":  # the trust-only path (`verify --pki` on an export) checks too
        (pki / "index.json").unlink()
        with pytest.raises(ConfigError, match=re.escape(expected)):
            load_trusted_root(pki)


def test_root_crl_is_made_checked_and_exported_with_the_chain_crl(
        pki: Path, attacker_pki: Path, secrets_dir: Path, tmp_path: Path, run: Run) -> None:
    """`ca crl --root`: the root's CRL, which nginx's ssl_crl needs besides crl.pem (it
    checks a CRL for every CA of a client's chain). Signed by the root, held to the rules
    of crl.pem by `ca check` and `ca export`, exported with chain-crl.pem (both CRLs)."""
    out = tmp_path / "out"
    r = run("ca", "export", "--pki", str(pki), "--out", str(out), "--json")
    assert r.exit_code == 0 and "chain_crl" not in json.loads(r.stdout), r.output
    r = run("ca", "crl", "--root", "--pki", str(pki), "--passphrase-file",
            str(secrets_dir / "ca.pass"), "--json")
    assert r.exit_code == 0, r.output
    root = CertificateAuthority.open(pki).root_cert
    crl = x509.load_pem_x509_crl((pki / "root-crl.pem").read_bytes())
    assert crl.issuer == root.subject and crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    assert crl.next_update_utc is not None and crl.last_update_utc is not None
    assert (crl.next_update_utc - crl.last_update_utc).days >= 365
    assert run("ca", "check", "--pki", str(pki)).exit_code == 0
    r = run("ca", "export", "--pki", str(pki), "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    files = json.loads(r.stdout)
    both = Path(files["chain_crl"]).read_bytes()
    assert both == (pki / "crl.pem").read_bytes() + (pki / "root-crl.pem").read_bytes()
    # another CA's root CRL in its place: refused, naming the fix
    shutil.copyfile(attacker_pki / "crl.pem", pki / "root-crl.pem")
    r = run("ca", "export", "--pki", str(pki), "--out", str(out))
    assert r.exit_code == 3 and "not signed by this CA's root" in r.output, r.output
    assert "ca crl --root" in r.output
    r = run("ca", "check", "--pki", str(pki))
    assert r.exit_code != 0 and "root-crl.pem" in r.output, r.output


@pytest.mark.parametrize("number", [-1, 2**160 - 1, 2**158, True, "7", 1.5])
def test_a_crl_number_no_crl_can_carry_is_a_damaged_index(pki: Path, secrets_dir: Path,
                                                           run: Run, number: object) -> None:
    """A CRL number is a non-negative integer of at most 20 octets (RFC 5280): an index
    holding another is damaged (exit 3, naming it), never an internal error."""
    index = pki / "index.json"
    data = json.loads(index.read_text())
    data["crl_number"] = number
    index.write_text(json.dumps(data))
    before = (pki / "crl.pem").read_bytes()
    r = run("ca", "crl", "--pki", str(pki), "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.exit_code == 3, r.output
    assert f"the CA in {pki} is damaged: crl_number" in r.output, r.output
    assert (pki / "crl.pem").read_bytes() == before


@pytest.mark.parametrize("extra", [
    b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    b"#!/bin/sh\n", b"\0",
], ids=["second-block", "text", "nul"])
def test_a_stored_certificate_with_more_than_its_one_pem_block_is_refused(
        pki: Path, secrets_dir: Path, run: Run, extra: bytes) -> None:
    """The fingerprint check parses the first PEM block only: a stored certificate with
    anything after it (another block, text) would pass it and be copied into the views
    other tools read. Refused where it is read and named by `ca check`."""
    authority = CertificateAuthority.open(pki)
    entry = authority.get("signer")
    good = entry.cert_path.read_bytes()
    if extra.startswith(b"-----"):
        extra = (pki / "ca.crt").read_bytes()  # a real certificate: parses too
    entry.cert_path.write_bytes(good + extra)
    with pytest.raises(ConfigError, match=f"{entry.cert_path} holds more than one"):
        entry.read_cert_pem()
    problems = CertificateAuthority.open(pki).check()
    assert any(p.startswith("signer: ") and "more than one" in p for p in problems), problems
    r = run("ca", "crl", "--pki", str(pki), "--passphrase-file", str(secrets_dir / "ca.pass"))
    assert r.exit_code == 3, r.output
    assert (pki / "issued" / "signer.crt").read_bytes() == good
    entry.cert_path.write_bytes(b"\n" + good + b"\n\n")  # whitespace is fine
    assert entry.read_cert_pem()


def test_check_names_a_key_file_open_to_others_and_writes_keep_its_view(
        pki: Path, secrets_dir: Path, run: Run) -> None:
    """A key file of the index others may read is reported by `ca check` as that (with
    the chmod that fixes it), not as a stale view; a CA write meanwhile leaves the key's
    good 0600 view where it is (it was set aside to private/.abandoned/)."""
    entry = CertificateAuthority.open(pki).get("signer")
    view = pki / "private" / "signer.key"
    good = view.read_bytes()
    entry.key_path.chmod(0o644)
    problems = CertificateAuthority.open(pki).check()
    assert f"signer: key file of 'signer' {entry.key_path} is readable or writable by other " \
        f"users (mode 0644); chmod 600 {entry.key_path}" in problems, problems
    assert not any("view private/signer.key" in p for p in problems), problems
    r = run("ca", "check", "--pki", str(pki))
    assert r.exit_code == 3 and f"chmod 600 {entry.key_path}" in r.output, r.output
    r = issue(run, pki, secrets_dir, "codesign", "another", "--key-type", "ec-p256")
    assert r.exit_code == 0, r.output
    assert view.read_bytes() == good and not (pki / "private" / ".abandoned").exists()
    entry.key_path.chmod(0o600)
    assert CertificateAuthority.open(pki).check() == []
