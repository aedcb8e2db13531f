"""Make plan, cache key, cache, manifest, progress and error paths, against a fake tree."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.ipxe.fake_tree import make_fake_tree
from tests.ipxe.testpki import TestPki, make_pki
from trustboot import fsutil
from trustboot.errors import ConfigError, OperationalError, VerificationError
from trustboot.ipxe import build as B
from trustboot.ipxe.config import BuildOptions, load_certificates, load_single_certificate
from trustboot.ipxe.source import find_src_dir, open_source, resolve_source_dir, tree_hash

TOOLCHAIN = {"gcc": "gcc (fake) 1", "make": "GNU Make 4.3"}
SCRIPT = "#!ipxe\nimgtrust --permanent\n"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_fake_tree(tmp_path / "ipxe")


def _request(tree: Path, pki: TestPki, **kw: Any) -> B.BuildRequest:
    args: dict[str, Any] = dict(
        source=open_source(tree),
        targets=("bin/ipxe.lkrn",),
        trust=(load_single_certificate(pki.root),),
        certs=tuple(load_certificates(pki.issuing)),
        script=SCRIPT,
    )
    args.update(kw)
    return B.BuildRequest(**args)


# --- source ---------------------------------------------------------------------------------


def test_source_detection(tree: Path, tmp_path: Path) -> None:
    assert find_src_dir(tree) == tree / "src"
    assert find_src_dir(tree / "src") == tree / "src"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="is not an iPXE source tree") as info:
        find_src_dir(tmp_path / "empty")
    assert "src/Makefile" in (info.value.hint or "")
    with pytest.raises(ConfigError, match="does not exist"):
        find_src_dir(tmp_path / "nope")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        find_src_dir(f)


def test_source_from_env_or_option(tmp_path: Path) -> None:
    assert resolve_source_dir(tmp_path, {}) == tmp_path
    assert resolve_source_dir(None, {"TRUSTBOOT_IPXE_SRC": "/x"}) == Path("/x")
    with pytest.raises(ConfigError, match="no iPXE source tree") as info:
        resolve_source_dir(None, {})
    assert "TRUSTBOOT_IPXE_SRC" in (info.value.hint or "")


def test_tree_hash_ignores_outputs_and_local_config_but_not_sources(tree: Path) -> None:
    src = tree / "src"
    before = tree_hash(src)
    (src / "bin").mkdir()
    (src / "bin" / "x.o").write_text("obj")
    (src / "config" / "local" / "general.h").write_text("#define X\n")
    assert tree_hash(src) == before
    (src / "config" / "general.h").write_text("/* changed */\n")
    assert tree_hash(src) != before


def test_names_that_are_not_utf8_are_hashed_by_their_bytes(tree: Path) -> None:
    """A stray Latin-1 file name in a checkout (and a link to it) was an internal error
    (exit 70: UnicodeEncodeError) in the tree hash; each name is hashed as its bytes, so
    two such names differing in one byte still give different keys."""
    src = tree / "src"
    before = tree_hash(src)
    bad = os.fsdecode(b"bad\xff.c")
    (src / bad).write_text("int a;\n")
    (src / "alias.c").symlink_to(bad)
    first = tree_hash(src)
    assert first != before
    (src / bad).rename(src / os.fsdecode(b"bad\xfe.c"))
    (src / "alias.c").unlink()
    (src / "alias.c").symlink_to(os.fsdecode(b"bad\xfe.c"))
    assert tree_hash(src) not in (before, first)


def test_a_link_out_of_the_tree_is_refused(tree: Path, tmp_path: Path) -> None:
    """The hash records a link's text: a link leading out of the tree would let a build read
    what the cache key does not cover (edit the outside file: same key, stale firmware)."""
    src = tree / "src"
    (src / "core").mkdir(exist_ok=True)
    (src / "core" / "inside.c").write_text("int inside;\n")
    (src / "core" / "alias.c").symlink_to("inside.c")  # within the tree: hashed as a link
    before = tree_hash(src)
    (src / "core" / "inside.c").write_text("int inside = 1;\n")
    assert tree_hash(src) != before  # the file the link names is hashed itself
    outside = tmp_path / "outside.c"
    outside.write_text("int outside;\n")
    for name, target in (("abs.c", str(outside)), ("rel.c", "../../../outside.c"),
                         ("dangling.c", "missing.c"), ("dir.c", "..")):
        link = src / "core" / name
        link.symlink_to(target)
        with pytest.raises(ConfigError, match=f"{name} in the iPXE tree is a symbolic link"):
            tree_hash(src)
        link.unlink()


# --- plan -----------------------------------------------------------------------------------


def test_make_plan(tree: Path, pki: TestPki) -> None:
    second = make_pki(pki.dir / "second", prefix="Next")
    req = _request(tree, pki, trust=(load_single_certificate(pki.root),
                                     load_single_certificate(second.root)),
                   targets=("bin-x86_64-efi/ipxe.efi", "bin/undionly.kpxe",
                            "bin-arm64-efi/ipxe.efi"),
                   source_date_epoch=1700000000)
    plan = B.make_plan(req, jobs=4)
    assert len(plan.invocations) == 2  # arm64 needs its own CROSS=
    host, arm = plan.invocations
    assert host[:5] == ("make", "-C", "src", "-j4", "--")
    assert host[5:7] == ("bin-x86_64-efi/ipxe.efi", "bin/undionly.kpxe")
    fp = [c.fingerprint[:16] for c in req.chain_certs]
    assert len(fp) == 3  # both roots plus the issuing CA, each once
    # names carry the fingerprint, so a new root under the same path still rebuilds
    assert (f"TRUST=../trustboot-inputs/trust-1-{fp[0]}.crt,"
            f"../trustboot-inputs/trust-2-{fp[1]}.crt") in host
    assert (f"CERT=../trustboot-inputs/cert-1-{fp[0]}.crt,../trustboot-inputs/cert-2-{fp[1]}.crt,"
            f"../trustboot-inputs/cert-3-{fp[2]}.crt") in host
    assert all(plan.input_files[f"trustboot-inputs/cert-{i + 1}-{f}.crt"].startswith(
        b"-----BEGIN") for i, f in enumerate(fp))
    assert "EMBED=../trustboot-inputs/trustboot.ipxe" in host
    assert plan.input_files["trustboot-inputs/trustboot.ipxe"] == SCRIPT.encode()
    assert "SOURCE_DATE_EPOCH=1700000000" in host
    assert "EXTRA_CFLAGS=-ffile-prefix-map=$(CURDIR)=." in host
    assert not any(a.startswith(("PRIVKEY=", "CROSS=")) for a in host)
    assert arm[5] == "bin-arm64-efi/ipxe.efi" and arm[-1] == "CROSS=aarch64-linux-gnu-"
    # no path of this machine in the plan: it goes into the cache key and manifest
    assert not any(str(tree) in a for a in host)


def test_duplicate_roots_are_built_in_once(tree: Path, pki: TestPki) -> None:
    req = _request(tree, pki, certs=tuple(load_certificates(pki.chain)))
    cert_arg = next(a for a in B.make_plan(req, jobs=1).invocations[0] if a.startswith("CERT="))
    assert cert_arg.count(",") == 1  # root (from TRUST) + issuing; the chain's root deduped


def test_unknown_target_and_missing_trust(tree: Path, pki: TestPki) -> None:
    with pytest.raises(ConfigError, match=r"unknown target 'bin/ipxe\.exe'") as info:
        _request(tree, pki, targets=("bin/ipxe.exe",))
    assert "bin/ipxe.lkrn" in (info.value.hint or "")
    with pytest.raises(ConfigError, match="no trust anchor"):
        _request(tree, pki, trust=())
    with pytest.raises(ConfigError, match="does not start with '#!ipxe'"):
        _request(tree, pki, script="echo hi\n")


# --- cache key ------------------------------------------------------------------------------


def test_cache_key_tracks_every_input(tree: Path, pki: TestPki) -> None:
    base = _request(tree, pki)
    key = B.cache_key(base, TOOLCHAIN)
    assert key == B.cache_key(_request(tree, pki), TOOLCHAIN)  # stable
    other = make_pki(pki.dir / "other", prefix="Other")
    variants = [
        _request(tree, pki, trust=(load_single_certificate(other.root),)),
        _request(tree, pki, certs=()),
        _request(tree, pki, script=SCRIPT + "echo x\n"),
        _request(tree, pki, targets=("bin/undionly.kpxe",)),
        _request(tree, pki, options=BuildOptions(ocsp=False)),
        _request(tree, pki, source_date_epoch=1),
    ]
    keys = {B.cache_key(v, TOOLCHAIN) for v in variants}
    assert key not in keys and len(keys) == len(variants)
    assert B.cache_key(base, {**TOOLCHAIN, "gcc": "gcc 13"}) != key
    (tree / "src" / "config" / "general.h").write_text("/* new */\n")
    assert B.cache_key(_request(tree, pki), TOOLCHAIN) != key


def test_cache_key_does_not_depend_on_the_trees_path(tmp_path: Path, pki: TestPki) -> None:
    a = make_fake_tree(tmp_path / "a")
    b = make_fake_tree(tmp_path / "b")
    assert B.cache_key(_request(a, pki), TOOLCHAIN) == B.cache_key(_request(b, pki), TOOLCHAIN)


# --- toolchain ------------------------------------------------------------------------------


def test_missing_toolchain_names_debian_packages() -> None:
    with pytest.raises(ConfigError, match="missing gcc, ld") as info:
        B.check_toolchain(["bin/ipxe.lkrn"],
                          which=lambda p: None if p in ("gcc", "ld") else "/usr/bin/" + p)
    hint = info.value.hint or ""
    assert "apt-get install build-essential" in hint and "liblzma-dev" in hint
    with pytest.raises(ConfigError, match="aarch64-linux-gnu-gcc") as info:
        B.check_toolchain(["bin-arm64-efi/ipxe.efi"],
                          which=lambda p: None if p.startswith("aarch64") else "/bin/" + p)
    assert "gcc-aarch64-linux-gnu" in (info.value.hint or "")
    with pytest.raises(ConfigError, match="mformat") as info:
        B.check_toolchain(["bin/ipxe.iso"],
                          which=lambda p: None if p == "mformat" else "/bin/" + p)
    assert "mtools" in (info.value.hint or "")


# --- build with the fake tree ---------------------------------------------------------------


def _build(req: B.BuildRequest, tmp_path: Path, **kw: Any) -> B.BuildResult:
    kw.setdefault("cache_dir", tmp_path / "cache")
    kw.setdefault("output_dir", tmp_path / "out")
    return B.build(req, toolchain=TOOLCHAIN, jobs=2, **kw)


def test_build_manifest_and_cache(tree: Path, pki: TestPki, tmp_path: Path, runs: Path) -> None:
    req = _request(tree, pki, targets=("bin/ipxe.lkrn", "bin-x86_64-efi/ipxe.efi"))
    before = sorted(p.relative_to(tree) for p in tree.rglob("*"))
    steps: list[str] = []
    first = _build(req, tmp_path, on_progress=steps.append)
    assert not first.cached
    assert sorted(runs.read_text().split()) == ["bin-x86_64-efi/ipxe.efi", "bin/ipxe.lkrn"]
    assert "BUILD bin/ipxe.lkrn.o" in steps and len(steps) >= 4
    # the user's tree is untouched: no bin/, no config/local, no inputs
    assert sorted(p.relative_to(tree) for p in tree.rglob("*")) == before
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m == first.manifest
    assert m["source"]["tree_sha256"] == req.source.tree_sha256
    assert m["trust"][0]["sha256"] == load_single_certificate(pki.root).fingerprint
    assert [c["sha256"] for c in m["certs"]] == [c.fingerprint for c in req.chain_certs]
    assert m["embedded_script"]["sha256"] == hashlib.sha256(SCRIPT.encode()).hexdigest()
    assert m["config_headers"] == req.headers
    assert m["toolchain"] == TOOLCHAIN
    for out in m["outputs"]:
        data = (tmp_path / "out" / out["target"]).read_bytes()
        assert out["sha256"] == hashlib.sha256(data).hexdigest() and out["size"] == len(data)
        assert all(out["trust_check"]["trust"].values())
        assert all(out["trust_check"]["certs"].values())
        assert b'#define CROSSCERT ""' in data  # the generated headers were in place
    # same inputs: no make run, same bytes, into a fresh output directory
    second = _build(req, tmp_path, output_dir=tmp_path / "out2")
    assert second.cached and second.log is None
    assert len(runs.read_text().split()) == 2
    assert (tmp_path / "out2" / "bin/ipxe.lkrn").read_bytes() == (
        tmp_path / "out" / "bin/ipxe.lkrn").read_bytes()
    # --no-cache rebuilds
    assert not _build(req, tmp_path, use_cache=False).cached
    assert len(runs.read_text().split()) == 4
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700


def test_changed_trust_rebuilds(tree: Path, pki: TestPki, tmp_path: Path, runs: Path) -> None:
    _build(_request(tree, pki), tmp_path)
    other = make_pki(tmp_path / "other", prefix="Other")
    new = _request(tree, pki, trust=(load_single_certificate(other.root),))
    res = _build(new, tmp_path)
    assert not res.cached
    # iPXE rebuilds rootcert.o only when the TRUST= string changes, so it must change
    trust_arg = [a for a in B.make_plan(new, jobs=1).invocations[0] if a.startswith("TRUST=")]
    assert trust_arg != [a for a in B.make_plan(_request(tree, pki), jobs=1).invocations[0]
                         if a.startswith("TRUST=")]
    data = res.outputs["bin/ipxe.lkrn"].read_bytes()
    assert bytes.fromhex(load_single_certificate(other.root).fingerprint) in data
    assert bytes.fromhex(load_single_certificate(pki.root).fingerprint) not in data


def test_concurrent_builds_of_same_inputs_share_one_make(
    tree: Path, pki: TestPki, tmp_path: Path, runs: Path
) -> None:
    req = _request(tree, pki)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(
            lambda i: _build(req, tmp_path, output_dir=tmp_path / f"o{i}"), range(4)))
    assert len(runs.read_text().split()) == 1
    assert sum(not r.cached for r in results) == 1


def test_make_failure_shows_tail_and_log(
    tree: Path, pki: TestPki, tmp_path: Path, runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(OperationalError, match="make failed") as info:
        _build(_request(tree, pki), tmp_path)
    err = info.value
    assert "core/broken.c:12: error" in err.message
    assert "bin/file0.o" not in err.message  # only the tail
    log = Path((err.hint or "").split("the full log is ")[1])
    assert "bin/file0.o" in log.read_text()
    assert not (tmp_path / "out").exists()
    monkeypatch.delenv("FAKE_FAIL")
    assert not _build(_request(tree, pki), tmp_path).cached  # a failure is not cached


def test_binary_without_the_trust_is_refused(
    tree: Path, pki: TestPki, tmp_path: Path, runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DROP_TRUST", "1")
    with pytest.raises(VerificationError, match="built without the requested trust") as info:
        _build(_request(tree, pki), tmp_path)
    assert info.value.rule == "ipxe-trust-compiled-in"
    assert not (tmp_path / "out" / "bin/ipxe.lkrn").exists()


def test_client_key_is_only_present_during_the_build(
    tree: Path, pki: TestPki, tmp_path: Path, runs: Path
) -> None:
    from cryptography.hazmat.primitives import serialization

    from trustboot.ipxe.config import client_identity

    # The fake build reports whether the key file was there while make ran.
    builder = tree / "src" / "fake_build.py"
    builder.write_text(builder.read_text().replace(
        'out = [b"FAKE-IPXE "',
        'seen = os.path.exists("../trustboot-inputs/client.key") and '
        'oct(os.stat("../trustboot-inputs/client.key").st_mode & 0o777)\n'
        'out = [str(seen).encode(), b"FAKE-IPXE "'))
    key = serialization.load_pem_private_key(pki.leaf_key.read_bytes(), None)
    client = client_identity(load_single_certificate(pki.leaf), key)
    req = _request(tree, pki, client=client)
    assert any(a == "PRIVKEY=../trustboot-inputs/client.key"
               for a in B.make_plan(req, jobs=1).invocations[0])
    res = _build(req, tmp_path)
    out = res.outputs["bin/ipxe.lkrn"]
    assert out.read_bytes().startswith(b"0o600")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # the binary holds the key
    # nothing with the key is left in the cache's work area
    leftovers = [p for p in (tmp_path / "cache" / "work").rglob("*") if "client.key" in p.name]
    assert leftovers == []
    client_info: Any = res.manifest["client_certificate"]
    assert client_info["public_key_sha256"] == client.public_key_sha256
    assert "PRIVATE KEY" not in json.dumps(res.manifest)


def test_cache_dir_open_to_others_is_refused(tree: Path, pki: TestPki, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    os.chmod(cache, 0o755)
    with pytest.raises(ConfigError, match="accessible to other users"):
        _build(_request(tree, pki), tmp_path, cache_dir=cache)


def test_default_cache_dir() -> None:
    assert B.default_cache_dir({"TRUSTBOOT_CACHE_DIR": "/c"}) == Path("/c/ipxe")
    assert B.default_cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/trustboot/ipxe")
    assert B.default_cache_dir({"HOME": "/h"}) == Path("/h/.cache/trustboot/ipxe")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git (Debian package git)")
def test_identifying_a_tree_runs_no_command_its_git_config_names(
        tree: Path, tmp_path: Path) -> None:
    """A tree's .git/config may name commands git runs while reading the tree (fsmonitor
    on status, gpg on log, content filters): open_source (also run by dry runs, which run no
    Makefile) must run none of them, and says "unknown" rather than "clean" when it could
    not ask git."""
    import subprocess

    from trustboot.subproc import git_env

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t",
                        *args], check=True, capture_output=True, env=git_env())

    git("init", "-q", "--template=")
    git("add", "-A")
    git("commit", "-q", "-m", "tree")
    clean = open_source(tree)
    assert clean.git_commit and clean.git_dirty is False
    (tree / "src" / "Makefile").write_text((tree / "src" / "Makefile").read_text() + "# x\n")
    assert open_source(tree).git_dirty is True

    marker = tmp_path / "ran"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\nexit 0\n")
    hook.chmod(0o755)
    (tree / ".gitattributes").write_text("* filter=evil\n")
    for key, value in [("core.fsmonitor", str(hook)), ("log.showSignature", "true"),
                       ("gpg.program", str(hook)), ("filter.evil.clean", str(hook)),
                       ("filter.evil.smudge", str(hook))]:
        git("config", "--local", key, value)
    os.utime(tree / "src" / "Makefile")  # racy stat data: status would run the filter
    found = open_source(tree)
    assert not marker.exists(), "git ran a command named by the tree's config"
    assert found.git_commit == clean.git_commit and found.git_dirty is None


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git (Debian package git)")
@pytest.mark.parametrize("how", ["hook", "worktree-config"])
def test_identifying_a_tree_runs_no_hook_and_reads_its_worktree_config(
        tree: Path, tmp_path: Path, how: str) -> None:
    """`git status` refreshed and rewrote the index, which ran the tree's own
    .git/hooks/post-index-change; and a filter in .git/config.worktree (read with
    extensions.worktreeConfig) was not among the keys checked (only --local was listed),
    so status ran it. Neither may run when a tree is identified."""
    import subprocess

    from trustboot.subproc import git_env

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t",
                        *args], check=True, capture_output=True, env=git_env())

    git("init", "-q", "--template=")
    git("add", "-A")
    git("commit", "-q", "-m", "tree")
    marker = tmp_path / "ran"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\nexec cat\n")
    hook.chmod(0o755)
    if how == "hook":
        hooks = tree / ".git" / "hooks"
        hooks.mkdir(exist_ok=True)
        (hooks / "post-index-change").write_text(hook.read_text())
        (hooks / "post-index-change").chmod(0o755)
    else:
        git("config", "--local", "extensions.worktreeConfig", "true")
        git("config", "--worktree", "filter.evil.clean", str(hook))
        (tree / ".gitattributes").write_text("* filter=evil\n")
    os.utime(tree / "src" / "Makefile")  # racy stat data: status looks again, rewrites
    found = open_source(tree)
    assert not marker.exists(), f"identifying the tree ran its {how}"
    assert found.git_commit is not None
    if how == "worktree-config":
        assert found.git_dirty is None  # git was not asked
    assert not (tree / ".git" / "index.lock").exists()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git (Debian package git)")
@pytest.mark.parametrize("separator", ["\u2028", "\x1c", "\x85"])
def test_a_command_key_with_a_line_separator_in_its_name_is_seen(
        tree: Path, separator: str) -> None:
    """A subsection name may hold U+2028 or \x1c: read line by line at those, the key
    diff.X.textconv fell apart into two names the command-key check passed, and git was
    asked about the tree as if its config named no command."""
    import subprocess

    from trustboot.subproc import git_env

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t",
                        *args], check=True, capture_output=True, env=git_env())

    git("init", "-q", "--template=")
    git("add", "-A")
    git("commit", "-q", "-m", "tree")
    assert open_source(tree).git_dirty is False
    git("config", "--local", f"diff.x{separator}y.textconv", "true")
    assert open_source(tree).git_dirty is None  # git was not asked


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git (Debian package git)")
def test_a_submodule_config_runs_no_command_either(tree: Path, tmp_path: Path) -> None:
    """`git status` of the tree recurses into a submodule under src/ and applies that
    submodule's own config (its .git/modules/*/config, which the check of the tree's
    config does not read): a content filter there must not run either."""
    import subprocess

    from trustboot.subproc import git_env

    def git(where: Path, *args: str) -> None:
        subprocess.run(["git", "-C", str(where), "-c", "user.name=t", "-c", "user.email=t@t",
                        "-c", "protocol.file.allow=always", *args], check=True,
                       capture_output=True, env=git_env())

    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / ".gitattributes").write_text("*.c filter=evil\n")
    (sub / "a.c").write_text("int a;\n")
    git(sub, "init", "-q", "--template=")
    git(sub, "add", "-A")
    git(sub, "commit", "-q", "-m", "sub")
    git(tree, "init", "-q", "--template=")
    git(tree, "add", "-A")
    git(tree, "submodule", "add", "-q", str(sub), "src/vendor")
    git(tree, "commit", "-q", "-m", "tree")
    marker = tmp_path / "ran"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\nexec cat\n")
    hook.chmod(0o755)
    git(tree / "src" / "vendor", "config", "--local", "filter.evil.clean", str(hook))
    (tree / "src" / "vendor" / "a.c").write_text("int b;\n")  # status must look at it
    found = open_source(tree)
    assert not marker.exists(), "git ran a command named by a submodule's config"
    assert found.git_commit is not None


def test_cache_key_tracks_make_env_names_and_values(tree: Path, pki: TestPki) -> None:
    request = _request(tree, pki)
    salt = bytes(range(32))
    keys = {B.cache_key(request, TOOLCHAIN, make_env=env, env_salt=salt) for env in (
        {}, {"DEBUG": "tls"}, {"DEBUG": "x509"}, {"DEBUG": ""}, {"CCACHE_DIR": "tls"})}
    assert len(keys) == 5
    assert B.cache_key(request, TOOLCHAIN) == B.cache_key(request, TOOLCHAIN, make_env={})
    # no salt needed (nor taken into account) without values
    assert B.cache_key(request, TOOLCHAIN, make_env={}, env_salt=salt) == B.cache_key(
        request, TOOLCHAIN)


def test_make_env_values_enter_the_key_only_under_the_cache_salt(tree: Path,
                                                                 pki: TestPki) -> None:
    """The key is published with prebuilt firmware: whoever reads it cannot test a guess
    of a --make-env value without the cache's salt (the same value under another salt
    gives another key), and no key is made from values without one."""
    request = _request(tree, pki)
    env = {"DEBUG": "tls", "TOKEN": "hunter2"}
    one = B.cache_key(request, TOOLCHAIN, make_env=env, env_salt=b"\1" * 32)
    assert one == B.cache_key(request, TOOLCHAIN, make_env=dict(env), env_salt=b"\1" * 32)
    assert one != B.cache_key(request, TOOLCHAIN, make_env=env, env_salt=b"\2" * 32)
    with pytest.raises(ValueError, match="salt"):
        B.cache_key(request, TOOLCHAIN, make_env=env)


def test_make_env_salt_is_made_once_private_and_checked(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cache = B.prepare_cache_dir(tmp_path / "cache")
    salt = B.make_env_salt(cache)
    path = cache / B.ENV_SALT_NAME
    assert len(salt) == 32 and path.read_bytes() == salt
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert B.make_env_salt(cache) == salt  # kept: the cache's keys stay valid

    # made by another build between the look and the link: that one is used, no temp left
    other = B.prepare_cache_dir(tmp_path / "cache2")
    real_write = fsutil.write_temp

    def racing(target: Path, data: bytes, **kw: Any) -> Path:
        won = real_write(target, b"\7" * 32, mode=0o600)  # the other build's salt
        os.link(won, target)
        os.unlink(won)
        return real_write(target, data, **kw)
    monkeypatch.setattr(fsutil, "write_temp", racing)
    assert B.make_env_salt(other) == b"\7" * 32
    assert sorted(p.name for p in other.iterdir()) == [B.ENV_SALT_NAME]
    monkeypatch.undo()

    path.unlink()
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="not the salt trustboot wrote"):
        B.make_env_salt(cache)
    path.unlink()
    (tmp_path / "elsewhere").write_bytes(b"\0" * 32)
    (tmp_path / "elsewhere").chmod(0o600)
    path.symlink_to(tmp_path / "elsewhere")  # a link is never followed to a salt
    with pytest.raises(ConfigError):
        B.make_env_salt(cache)
