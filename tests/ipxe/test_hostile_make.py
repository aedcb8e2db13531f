"""A hostile iPXE tree's make against the files trustboot reads and writes in the work tree
after (and before) it runs: outputs planted as links, devices, FIFOs or huge files, and a
warm tree whose directories make replaced with links. Real make in the real sandbox on the
fake tree; no iPXE tree needed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.ipxe.testpki import TestPki, make_pki
from tests.procs import processes_with
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


# --- the warm tree ------------------------------------------------------------------------


def victims(tmp_path: Path) -> dict[Path, dict[str, bytes]]:
    """Two host directories a hostile make points the work tree at, and their contents."""
    found = {}
    for name, file, text in (("victim-del", "authorized_keys", b"keep-me\n"),
                             ("victim-trunc", "important.conf", b"important config\n")):
        d = tmp_path / name
        d.mkdir()
        (d / file).write_bytes(text)
        found[d] = {file: text}
    return found


def intact(found: dict[Path, dict[str, bytes]]) -> bool:
    return all({p.name: p.read_bytes() for p in d.iterdir()} == files
               for d, files in found.items())


@pytest.mark.parametrize("first", ["sandboxed", "unsandboxed"])
def test_directories_make_replaced_with_links_are_not_written_through(
        env: dict[str, Path], pki: TestPki, tmp_path: Path, first: str) -> None:
    """make replaces trustboot-inputs/ and config/local/ with links to host directories;
    the next build in the warm tree (a root rotation: another cache key, the same tree)
    would list, truncate and delete there. In the sandbox make cannot (both are read-only
    mount points); a tree a first unsandboxed build changed is discarded and recopied."""
    found = victims(tmp_path)
    add_to_recipe(env["tree"],
                  "rm -rf ../trustboot-inputs config/local 2>/dev/null || true",
                  f"ln -sfn {tmp_path / 'victim-del'} ../trustboot-inputs 2>/dev/null || true",
                  f"ln -sfn {tmp_path / 'victim-trunc'} config/local 2>/dev/null || true")
    code, err = build(env, pki, *(["--unsafe-unsandboxed-build"] if first == "unsandboxed"
                                  else []))
    assert code == 0, err
    warm = next((env["cache"] / "work").glob("warm-*[!k]"))
    planted = (warm / "src" / "config" / "local").is_symlink()
    assert planted == (first == "unsandboxed")  # the sandbox kept the directories
    nxt = make_pki(tmp_path / "next", prefix="Next")
    code, err = build(env, pki, "--trust", str(nxt.root))
    assert code == 0, err
    assert intact(found)
    assert not any(p.is_symlink() for p in (warm / "src" / "config" / "local",
                                            warm / "trustboot-inputs")) or first == "sandboxed"


def test_a_warm_tree_whose_config_make_moved_is_recopied(
        env: dict[str, Path], pki: TestPki, tmp_path: Path) -> None:
    """config/local is a read-only mount point, but its parent can still be renamed: make
    moves src/config away and leaves a config/local link to a host directory. The next
    build finds the layout changed, discards the tree and copies it afresh."""
    found = victims(tmp_path)
    add_to_recipe(env["tree"], "mv config config.moved && mkdir config "
                  f"&& cp config.moved/*.h config/ && ln -s {tmp_path / 'victim-trunc'} "
                  "config/local")
    code, err = build(env, pki)
    assert code == 0, err
    warm = next((env["cache"] / "work").glob("warm-*[!k]"))
    assert (warm / "src" / "config" / "local").is_symlink()  # what make could still do
    nxt = make_pki(tmp_path / "next", prefix="Next")
    code, err = build(env, pki, "--trust", str(nxt.root))
    assert code == 0, err
    assert intact(found)
    assert b"important config" not in (env["out"] / "bin" / "ipxe.lkrn").read_bytes()


def test_make_cannot_change_the_layout_for_its_next_run(
        env: dict[str, Path], pki: TestPki, tmp_path: Path) -> None:
    """Two make runs in one build (x86_64 and arm64): the first leaves config/local a link
    to a host directory; binding that read-only for the second would show make the host
    directory (the fake build copies config/local into the firmware). The layout is
    checked before every run."""
    found = victims(tmp_path)
    add_to_recipe(env["tree"], "case $@ in bin-x86_64-efi/*) mv config config.moved "
                  f"&& mkdir config && ln -s {tmp_path / 'victim-trunc'} config/local;; esac")
    code, _, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir),
                       "--target", "bin-x86_64-efi/ipxe.efi", "--target",
                       "bin-arm64-efi/ipxe.efi", *CHAIN)
    assert code == 4, err
    assert "changed the work tree's layout" in err and "src/config/local" in err
    assert intact(found)
    assert not any(b"important config" in p.read_bytes()
                   for p in env["cache"].rglob("*") if p.is_file() and not p.is_symlink())


# --- time limits --------------------------------------------------------------------------


@pytest.mark.parametrize("hold", [
    "sleep {mark}",  # silent
    "while :; do echo still busy; sleep 0.2; done; : {mark}",  # talking, never done
])
def test_a_make_that_never_finishes_is_stopped_at_the_time_limit(
        env: dict[str, Path], pki: TestPki, monkeypatch: pytest.MonkeyPatch,
        hold: str) -> None:
    """A hostile (or stuck) Makefile cannot hold a build, or the release that unlocked a
    signer for it, for ever: past TRUSTBOOT_BUILD_TIMEOUT make is stopped, with everything
    it started, and the build fails (exit 1) naming the limit; nothing is cached."""
    import time

    monkeypatch.setenv("TRUSTBOOT_BUILD_TIMEOUT", "3")
    # found in the process table afterwards: a number no other process has in its argv
    mark = str(int.from_bytes(os.urandom(6), "big") + 10**15)
    add_to_recipe(env["tree"], hold.format(mark=mark))
    started = time.monotonic()
    code, err = build(env, pki)
    assert code == 1, err
    assert "make did not finish within 3 s" in err and "TRUSTBOOT_BUILD_TIMEOUT" in err
    assert time.monotonic() - started < 60
    assert processes_with(mark) == []
    assert not (env["out"] / "bin" / "ipxe.lkrn").exists()
    assert not list((env["cache"] / "out").glob("*/manifest.json"))


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf", "nan", "1e308", "604801"])
def test_an_invalid_time_limit_is_refused_before_any_work(
        env: dict[str, Path], pki: TestPki, monkeypatch: pytest.MonkeyPatch,
        value: str) -> None:
    monkeypatch.setenv("TRUSTBOOT_BUILD_TIMEOUT", value)
    code, err = build(env, pki)
    assert code == 3, err
    assert f"TRUSTBOOT_BUILD_TIMEOUT={value!r} is not a number of seconds" in err
    assert "above 0 and at most 604800" in err  # 0 is refused: the range says so
    assert env["runs"].read_text() == ""  # make never ran


def test_an_invalid_time_limit_is_refused_before_a_git_build_prepares_anything(
        pki: TestPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTBOOT_BUILD_TIMEOUT", "soon")
    cache = tmp_path / "cache"
    code, _, err = run("ipxe", "build", "--git", "https://git.example.invalid/ipxe.git",
                       "--commit", "0" * 40, "--cache-dir", str(cache), "--pki",
                       str(pki.dir), "--target", "bin/ipxe.lkrn", *CHAIN)
    assert code == 3, err
    assert "TRUSTBOOT_BUILD_TIMEOUT='soon' is not a number of seconds" in err
    assert not cache.exists()  # nothing fetched, no cache prepared


@pytest.mark.parametrize(("args", "needle"), [
    (["--git", "https://git.example.invalid/ipxe.git"], "needs --commit SHA"),
    (["--git", "https://git.example.invalid/ipxe.git", "--commit", "0" * 40,
      "--source", "."], "exclude each other"),
    (["--commit", "0" * 40, "--source", "."], "only makes sense with --git"),
])
def test_source_options_that_do_not_go_together_say_what_to_do(
        tmp_path: Path, args: list[str], needle: str) -> None:
    """Each refusal of --git/--commit/--source names the fix, as every error does."""
    cache = tmp_path / "cache"
    code, out, err = run("ipxe", "build", *args, "--cache-dir", str(cache),
                         "--target", "bin/ipxe.lkrn", *CHAIN)
    assert code == 3 and out == "", err
    assert needle in err and "hint:" in err, err
    assert not cache.exists()
