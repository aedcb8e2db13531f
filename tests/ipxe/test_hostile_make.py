"""A hostile iPXE tree's make against the files trustboot reads and writes in the work tree
after (and before) it runs: outputs planted as links, devices, FIFOs or huge files, and a
warm tree whose directories make replaced with links. Real make in the real sandbox on the
fake tree; no iPXE tree needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.ipxe.testpki import TestPki
from trustboot.cli.main import cli

CHAIN = ["--chain", "https://boot.example.com/boot.ipxe", "--signer", "boot-signer"]
SECRET = "TOP-SECRET-CA-KEY"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def add_to_recipe(tree: Path, *lines: str) -> None:
    """Shell lines the fake make runs after its build of each target ($@)."""
    makefile = tree / "src" / "Makefile"
    text = makefile.read_text()
    build_line = next(line for line in text.splitlines() if "fake_build.py" in line)
    makefile.write_text(text.replace(
        build_line, build_line + "".join(f"\n\t@{line}" for line in lines)))


def build(env: dict[str, Path], pki: TestPki, *extra: str) -> tuple[int, str]:
    code, _, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir),
                       "--target", "bin/ipxe.lkrn", *CHAIN, *extra)
    return code, err


def secret_file(tmp_path: Path) -> Path:
    """A 0600 file outside everything the sandbox shows make."""
    secret = tmp_path / "secret" / "ca.key"
    secret.parent.mkdir(mode=0o700)
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    return secret


def leaked(env: dict[str, Path]) -> list[Path]:
    """Files of the output and the cache (work trees aside) that hold the secret."""
    found = []
    for top in (env["out"], env["cache"] / "out"):
        for path in top.rglob("*") if top.exists() else ():
            if path.is_file() and not path.is_symlink() and SECRET.encode() in path.read_bytes():
                found.append(path)
    return found


# --- outputs ------------------------------------------------------------------------------


def test_an_output_planted_as_a_link_to_a_host_file_is_refused(
        env: dict[str, Path], pki: TestPki, tmp_path: Path) -> None:
    """make keeps its real build as the linked image (<target>.tmp, where trustboot looks
    for the trust a compressed BIOS image hides) and replaces bin/ipxe.lkrn with a link to
    a file it cannot even see: read outside the sandbox, the link would ship the CA key
    as firmware (and cache it)."""
    secret = secret_file(tmp_path)
    add_to_recipe(env["tree"], "cp $@ $@.tmp", f"ln -sf {secret} $@")
    code, err = build(env, pki)
    assert code == 4, err
    assert "bin/ipxe.lkrn" in err and "symbolic link" in err
    assert not leaked(env) and not (env["out"] / "bin" / "ipxe.lkrn").exists()


def test_an_output_below_a_directory_planted_as_a_link_is_refused(
        env: dict[str, Path], pki: TestPki, tmp_path: Path) -> None:
    """bin/ itself a link (O_NOFOLLOW on the last component alone would follow it) to a
    host directory holding the secret as ipxe.lkrn beside a linked image that passes."""
    code, err = build(env, pki, "-o", str(tmp_path / "good"))
    assert code == 0, err
    secret = secret_file(tmp_path)
    (secret.parent / "ipxe.lkrn").write_text(SECRET + "\n")
    (secret.parent / "ipxe.lkrn.tmp").write_bytes(
        (tmp_path / "good" / "bin" / "ipxe.lkrn").read_bytes())
    add_to_recipe(env["tree"], f"rm -rf bin && ln -s {secret.parent} bin")
    code, err = build(env, pki, "--no-cache")
    assert code == 4, err
    assert "src/bin/ipxe.lkrn" in err and "symbolic link" in err
    assert not leaked(env)


def test_a_linked_image_planted_as_a_link_is_refused(
        env: dict[str, Path], pki: TestPki, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A BIOS output without the fingerprints makes trustboot look in <target>.tmp, the
    linked image: make-controlled too, and a link there would pass the trust check with
    someone else's file."""
    outside = tmp_path / "outside"
    outside.mkdir()
    # a linked image with everything the check looks for: a first build's output
    code, err = build(env, pki, "-o", str(outside / "good"))
    assert code == 0, err
    good = outside / "good" / "bin" / "ipxe.lkrn"
    monkeypatch.setenv("FAKE_DROP_TRUST", "1")
    add_to_recipe(env["tree"], f"ln -sf {good} $@.tmp")
    code, err = build(env, pki, "--no-cache")
    assert code == 4, err
    assert "bin/ipxe.lkrn.tmp" in err and "symbolic link" in err


def test_huge_and_special_outputs_are_refused_unread(
        env: dict[str, Path], pki: TestPki) -> None:
    """A sparse 6 GB output would be read whole (MemoryError, exit 70), a FIFO would hang
    the read: both are refused from fstat, naming the target."""
    add_to_recipe(env["tree"], "truncate -s 6G $@")
    code, err = build(env, pki)
    assert code == 4, err
    assert "bin/ipxe.lkrn" in err and "over the" in err
    makefile = env["tree"] / "src" / "Makefile"
    makefile.write_text(makefile.read_text().replace("truncate -s 6G $@", "rm -f $@; mkfifo $@"))
    code, err = build(env, pki, "--no-cache")
    assert code == 4, err
    assert "bin/ipxe.lkrn" in err and "other than a regular file" in err
