"""`trustboot ipxe build` and `trustboot ipxe script` through the CLI: no iPXE tree needed."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import require_tool
from tests.ipxe.testpki import TestPki, make_pki
from trustboot.cli.main import cli
from trustboot.ipxe import build as B
from trustboot.ipxe.config import load_single_certificate

CHAIN = ["--chain", "https://boot.example.com/boot.ipxe", "--signer", "boot-signer"]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_build_from_pki_with_generated_script(env: dict[str, Path], pki: TestPki) -> None:
    code, out, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir),
                         *CHAIN, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert not doc["cached"]
    m = doc["manifest"]
    assert m["targets"] == list(B.DEFAULT_TARGETS)
    root = load_single_certificate(pki.root)
    issuing = load_single_certificate(pki.issuing)
    assert [t["sha256"] for t in m["trust"]] == [root.fingerprint]
    assert [c["sha256"] for c in m["certs"]] == [root.fingerprint, issuing.fingerprint]
    for target in B.DEFAULT_TARGETS:
        data = (env["out"] / target).read_bytes()
        assert b"imgtrust --permanent" in data  # the generated script is embedded
        assert b"imgverify --signer ${tb_signer} tb_entry tb_entry.sig" in data
    assert json.loads((env["out"] / "manifest.json").read_text()) == m
    # again: from the cache, no make
    runs = len(env["runs"].read_text().split())
    code, out, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir),
                         *CHAIN)
    assert code == 0, err
    assert "from cache" in out and len(env["runs"].read_text().split()) == runs


def test_a_prebuilt_record_keeps_every_key_a_build_writes(env: dict[str, Path],
                                                          pki: TestPki) -> None:
    """check_prebuilt_record keeps only B.RECORD_KEYS (and B.RECORD_OUTPUT_KEYS) of a
    record carried into release.json: the lists must follow what build() writes, or a
    key added there would silently vanish from every prebuilt release."""
    code, out, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir),
                         "--target", "bin/ipxe.lkrn", *CHAIN, "--json")
    assert code == 0, err
    m = json.loads(out)["manifest"]
    assert set(m) == set(B.RECORD_KEYS)
    assert all(set(o) == set(B.RECORD_OUTPUT_KEYS) for o in m["outputs"])

def test_source_from_environment_and_extra_root(env: dict[str, Path], pki: TestPki, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTBOOT_IPXE_SRC", str(env["tree"]))
    nxt = make_pki(tmp_path / "next", prefix="Next")
    code, out, err = run("ipxe", "build", "--pki", str(pki.dir), "--trust", str(nxt.root),
                         "--target", "bin/ipxe.lkrn", *CHAIN, "--json")
    assert code == 0, err
    fps = [t["sha256"] for t in json.loads(out)["manifest"]["trust"]]
    assert fps == [load_single_certificate(pki.root).fingerprint,
                   load_single_certificate(nxt.root).fingerprint]


def test_users_local_config_is_ignored_with_a_warning(env: dict[str, Path], pki: TestPki) -> None:
    local = env["tree"] / "src" / "config" / "local"
    (local / "general.h").write_text("#undef IMAGE_TRUST_CMD\n")
    (local / "colour.h").write_text("")  # empty: what iPXE's own build leaves behind
    (local / ".gitignore").write_text("*\n")  # iPXE's own tree ships one: not a header
    code, _, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir),
                       "--target", "bin/ipxe.lkrn", *CHAIN)
    assert code == 0, err
    assert "ignoring the tree's own config/local/general.h" in err and "colour.h" not in err
    assert ".gitignore" not in err
    data = (env["out"] / "bin/ipxe.lkrn").read_bytes()
    assert b"#undef IMAGE_TRUST_CMD" not in data and b"#define IMAGE_TRUST_CMD" in data
    assert (local / "general.h").read_text() == "#undef IMAGE_TRUST_CMD\n"  # untouched


def test_trust_without_pki_directory(env: dict[str, Path], pki: TestPki) -> None:
    # ./pki does not exist here: --trust alone is enough
    code, _, err = run("ipxe", "build", "--source", str(env["tree"]), "--trust", str(pki.root),
                       "--target", "bin/ipxe.lkrn", *CHAIN)
    assert code == 0, err


def test_script_file_is_linted_and_embedded(env: dict[str, Path], pki: TestPki,
                                            tmp_path: Path) -> None:
    good = tmp_path / "good.ipxe"
    good.write_text("#!ipxe\nimgtrust --permanent\ndhcp || goto f\n"
                    "imgfetch https://x/a || goto f\n"
                    "imgverify a https://x/a.sig || goto f\nimgexec a || goto f\n"
                    ":f\nreboot\n")
    code, _, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir),
                       "--target", "bin/ipxe.lkrn", "--script", str(good))
    assert code == 0, err
    assert (env["out"] / "bin/ipxe.lkrn").read_bytes().count(good.read_bytes()) == 1
    soft = tmp_path / "soft.ipxe"
    soft.write_text(good.read_text().replace("a.sig || goto f\n", "a.sig || echo unsigned\n"))
    code, _, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir),
                       "--target", "bin/ipxe.lkrn", "--script", str(soft))
    assert code == 3 and "soft-verify" in err and "not fail-closed" in err
    code, _, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir),
                       "--target", "bin/ipxe.lkrn", "--script", str(soft), "--unsafe-skip-lint")
    assert code == 0 and "warning: not linting" in err


@pytest.mark.parametrize("case", [
    "no-source", "not-a-tree", "trust-not-cert", "trust-bundle", "script-not-ipxe",
    "script-missing", "unknown-target", "no-script", "chain-no-signer", "chain-http",
    "script-and-chain", "pki-missing", "client-without-key", "commit-without-git",
    "git-short-commit",
])
def test_bad_input_exits_3_with_a_hint(env: dict[str, Path], pki: TestPki, tmp_path: Path,
                                       case: str) -> None:
    src = ["--source", str(env["tree"])]
    trust = ["--pki", str(pki.dir)]
    notcert = tmp_path / "notcert.crt"
    notcert.write_text("hello\n")
    script = tmp_path / "s.ipxe"
    script.write_text("echo hi\n")
    args, expect = {
        "no-source": ([*trust, *CHAIN], "no iPXE source tree"),
        "not-a-tree": (["--source", str(tmp_path), *trust, *CHAIN], "is not an iPXE source tree"),
        "trust-not-cert": ([*src, "--trust", str(notcert), *CHAIN], "is not an X.509"),
        "trust-bundle": ([*src, "--trust", str(pki.chain), *CHAIN], "exactly one"),
        "script-not-ipxe": ([*src, *trust, "--script", str(script)], "is not an iPXE script"),
        "script-missing": ([*src, *trust, "--script", str(tmp_path / "x")], "does not exist"),
        "unknown-target": ([*src, *trust, *CHAIN, "--target", "bin/x.efi"], "unknown target"),
        "no-script": ([*src, *trust], "no embedded script"),
        "chain-no-signer": ([*src, *trust, "--chain", "https://x/y"], "needs --signer"),
        "chain-http": ([*src, *trust, "--chain", "http://x/y", "--signer", "s"],
                       "not an https:// URL"),
        "script-and-chain": ([*src, *trust, *CHAIN, "--script", str(script)], "not both"),
        "pki-missing": ([*src, "--pki", str(tmp_path / "nopki"), *CHAIN], "holds no CA"),
        "client-without-key": ([*src, *trust, *CHAIN, "--client-cert", "nobody"],
                               "no client certificate"),
        "commit-without-git": ([*src, *trust, *CHAIN, "--commit", "a" * 40], "--git"),
        "git-short-commit": ([*trust, *CHAIN, "--git", "https://example.invalid/ipxe.git",
                              "--commit", "abc123"], "40 or 64 hex digits"),
    }[case]
    code, out, err = run("ipxe", "build", *args)
    assert code == 3, (code, out, err)
    assert expect in err and "Traceback" not in err
    assert out == ""
    assert not (env["out"] / "manifest.json").exists()
    assert env["runs"].read_text() == ""  # nothing was built


def test_missing_toolchain_is_named(env: dict[str, Path], pki: TestPki, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real check_toolchain, with an empty PATH
    monkeypatch.setenv("TRUSTBOOT_CACHE_DIR", str(tmp_path / "cache"))
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, _, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir),
                       *CHAIN)
    assert code == 3
    assert "toolchain is incomplete" in err and "apt-get install build-essential" in err


def test_make_failure_is_operational_with_log(env: dict[str, Path], pki: TestPki,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FAIL", "1")
    code, _, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir),
                       "--target", "bin/ipxe.lkrn", *CHAIN)
    assert code == 1
    assert "make failed" in err and "core/broken.c:12: error" in err
    log = Path(err.split("the full log is ")[1].strip())
    assert log.is_file() and "bin/file0.o" in log.read_text()


def test_git_clone_pinned_to_commit(env: dict[str, Path], pki: TestPki, tmp_path: Path) -> None:
    git = require_tool("git", "git")
    import subprocess

    repo = tmp_path / "repo"
    shutil.copytree(env["tree"], repo)
    for argv in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x"]):
        subprocess.run([git, "-C", str(repo), *argv], check=True)
    commit = subprocess.run([git, "-C", str(repo), "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    code, out, err = run("ipxe", "build", "--git", f"file://{repo}", "--commit", commit,
                         "--pki", str(pki.dir), "--target", "bin/ipxe.lkrn", *CHAIN, "--json")
    assert code == 0, err
    m = json.loads(out)["manifest"]
    assert m["source"]["git_commit"] == commit
    assert f"GITVERSION={commit}" in m["make"]["invocations"][0]
    # the clone is where a release pinned to the same commit looks first (its --dry-run
    # uses it rather than saying it would clone)
    from trustboot.ipxe.source import clone_dir, cloned_at

    assert cloned_at(f"file://{repo}", commit, clone_dir(env["cache"], commit)) is not None
    code, _, err = run("ipxe", "build", "--git", f"file://{repo}", "--commit", "f" * 40,
                       "--pki", str(pki.dir), "--target", "bin/ipxe.lkrn", *CHAIN)
    assert code == 1 and "could not fetch" in err


# --- script render / lint -------------------------------------------------------------------


def test_script_render_and_lint_roundtrip(tmp_path: Path) -> None:
    code, out, err = run("ipxe", "script", "render", *CHAIN, "--ntp", "pool.ntp.org")
    assert code == 0, err
    assert out.startswith("#!ipxe\n") and "ntp pool.ntp.org" in out
    f = tmp_path / "boot.ipxe"
    f.write_text(out)
    code, out, _ = run("ipxe", "script", "lint", str(f))
    assert code == 0 and out.strip().endswith(": ok")


def test_script_lint_reports_findings(tmp_path: Path) -> None:
    f = tmp_path / "bad.ipxe"
    f.write_text("#!ipxe\ndhcp\nchain http://boot/x.ipxe\n")
    code, out, err = run("ipxe", "script", "lint", str(f), "--json")
    assert code == 3
    rules = {x["rule"] for x in json.loads(out)["findings"]}
    assert {"cleartext", "trust-missing", "trust-first", "no-verify"} <= rules
    code, out, err = run("ipxe", "script", "lint", str(tmp_path / "nope"))
    assert code == 3 and "does not exist" in err
    code, out, err = run("ipxe", "script", "render", "--chain", "http://x/y", "--signer", "s")
    assert code == 3 and "https" in err


def test_script_lint_output_escapes_the_scripts_words(tmp_path: Path) -> None:
    """Findings quote the script (a 'set' value, a goto label): a script from a pull
    request wrote an OSC title sequence, or anything else, to the reviewer's terminal.
    The lines are escaped, and a long value is cut."""
    f = tmp_path / "hostile.ipxe"
    f.write_text("#!ipxe\nimgtrust --permanent\nset x:ipv4 \x1b]0;pwned\x07\n"
                 "goto \x1b[2J\nset y:hex " + "z" * 5000 + "\nimgverify a b\n")
    code, out, _err = run("ipxe", "script", "lint", str(f))
    assert code == 3
    assert "setting-value" in out and "missing-label" in out, out
    assert all(line.isprintable() for line in out.splitlines()), repr(out)
    assert "\\x1b]0;pwned\\x07" in out and "\\x1b[2J" in out
    assert "z" * 81 not in out and "(5000 chars)" in out


def test_json_build_prints_no_progress(env: dict[str, Path], pki: TestPki) -> None:
    # --json is for machines: stdout the document, stderr quiet (README "Conventions").
    code, out, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir),
                         "--target", "bin/ipxe.lkrn", *CHAIN, "--json", "--no-cache")
    assert code == 0, err
    assert json.loads(out)["outputs"]
    assert "make:" not in err, err
    # without --json, a pipe still gets the occasional line that shows the build is alive
    code, out, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki", str(pki.dir),
                         "--target", "bin/ipxe.lkrn", *CHAIN, "--no-cache")
    assert code == 0 and "make: 1 steps" in err, err


def test_build_help_names_every_kind_of_target() -> None:
    code, out, _ = run("ipxe", "build", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "bin/VVVVDDDD.rom" in text and "bin/ipxe.lkrn" in text


def test_make_env_values_are_part_of_the_cache_key(env: dict[str, Path], pki: TestPki,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """iPXE's Makefile reads DEBUG from the environment: a build with --make-env DEBUG is
    another build, never served from the cache (nor built in the warm tree) for one
    without it or with another value; the manifest names the variable, not its value."""
    builder = env["tree"] / "src" / "fake_build.py"
    builder.write_text(builder.read_text().replace(
        'data = b"\\n".join(out)',
        'out.append(b"DEBUG=" + os.environ.get("DEBUG", "unset").encode())\n'
        'data = b"\\n".join(out)'))
    monkeypatch.setenv("DEBUG", "tls,x509")

    def build(out: str, *extra: str) -> tuple[dict[str, object], bytes, int]:
        before = len(env["runs"].read_text().split())
        code, stdout, err = run("ipxe", "build", "--source", str(env["tree"]), "--pki",
                                str(pki.dir), "--target", "bin/ipxe.lkrn", *CHAIN, "-o", out,
                                "--json", *extra)
        assert code == 0, err
        return (json.loads(stdout)["manifest"], Path(out, "bin/ipxe.lkrn").read_bytes(),
                len(env["runs"].read_text().split()) - before)

    manifest, data, ran = build("dbg", "--make-env", "DEBUG")
    assert ran == 1 and b"DEBUG=tls,x509" in data
    assert "DEBUG" in manifest["make"]["environment"]  # type: ignore[index]
    assert "tls,x509" not in json.dumps(manifest)
    manifest, data, ran = build("rel")
    assert ran == 1 and b"DEBUG=unset" in data
    assert "DEBUG" not in manifest["make"]["environment"]  # type: ignore[index]
    monkeypatch.setenv("DEBUG", "tls")
    _, data, ran = build("dbg2", "--make-env", "DEBUG")
    assert ran == 1 and data.endswith(b"DEBUG=tls")
    monkeypatch.setenv("DEBUG", "tls,x509")
    _, data, ran = build("dbg3", "--make-env", "DEBUG")  # the same inputs: the cache
    assert ran == 0 and data == Path("dbg", "bin/ipxe.lkrn").read_bytes()
    # the values enter the key only under the cache's salt (0600): another salt, another key
    salt = env["cache"] / B.ENV_SALT_NAME
    assert stat.S_IMODE(salt.stat().st_mode) == 0o600
    salt.unlink()
    _, _, ran = build("dbg4", "--make-env", "DEBUG")
    assert ran == 1, "the salt is not part of the key"
