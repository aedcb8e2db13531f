"""`trustboot release` end to end against a file:// origin served over HTTPS on 127.0.0.1:
what is published verifies (trustboot and openssl), the script is fail-closed, a re-run
uploads nothing, and refusals (signer lifetime, hostile values, escapes) change nothing."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.release.conftest import Lab, release, serve_over_https
from trustboot.audit.policy import load_manifest
from trustboot.cli.main import cli
from trustboot.errors import ConfigError
from trustboot.ipxe.script import lint_script
from trustboot.publish.manifest import parse_manifest
from trustboot.release.plan import ReleaseOptions, validate
from trustboot.release.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("no_ipxe_build")



def _openssl_ok(release_dir: Path, name: str, ca: Path) -> bool:
    out = subprocess.run(
        ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in",
         str(release_dir / f"{name}.sig"), "-content", str(release_dir / name), "-CAfile",
         str(ca), "-purpose", "any", "-out", "/dev/null"], capture_output=True, text=True)
    return out.returncode == 0


def test_release_to_file_origin_end_to_end_and_rerun_uploads_nothing(lab: Lab) -> None:
    recipe = lab.recipe()
    code, out, err = release(str(recipe), "--json")
    assert code == 0, err
    data = json.loads(out)
    rid = data["release"]
    assert rid.startswith("lab-") and len(rid) == len("lab-") + 12
    assert [s["stage"] for s in data["stages"]] == [
        "validate", "plan", "build", "render", "sign", "manifest", "publish", "verify"]
    assert data["stages"][2]["status"] == "skipped"
    # the default code-signing lifetime (730 days) gives a replay window of 730d 12h30m
    window = data["replay_window"]["window_seconds"]
    assert 730 * 86400 + 45000 - 300 < window <= 730 * 86400 + 45000
    assert sorted(data["uploaded"]) == sorted([
        "boot.ipxe", "boot.ipxe.sig", "linux/vmlinuz", "linux/vmlinuz.sig",
        "linux/initrd.img", "linux/initrd.img.sig", "release.json", "release.json.sig"])
    rel = lab.origin / "releases" / rid
    assert (rel / "linux" / "vmlinuz").read_bytes() == (lab.dir / "images/vmlinuz").read_bytes()
    for name in ("boot.ipxe", "linux/vmlinuz", "linux/initrd.img", "release.json"):
        assert _openssl_ok(rel, name, lab.pki / "ca.crt"), name
    # The live entry is the release's script, fail-closed and with absolute HTTPS URLs.
    script = (lab.origin / "boot.ipxe").read_text()
    assert script == (rel / "boot.ipxe").read_text()
    assert lint_script(script, stage="chained") == []
    base = f"{lab.public}releases/{rid}/linux"
    assert (f"kernel {base}/vmlinuz console=ttyS0 quiet || goto tb_failed" in script)
    assert (f"imgverify --signer release-signer vmlinuz {base}/vmlinuz.sig || goto tb_failed"
            in script)
    assert (f"imgverify --signer release-signer initrd.img {base}/initrd.img.sig "
            "|| goto tb_failed") in script
    assert "iseq ${platform} pcbios && goto arch_bios ||" in script
    assert lint_script(script, stage="embedded") == []
    assert "http://" not in script
    for line in script.splitlines():
        if "||" in line:
            assert line.endswith(("|| goto tb_failed", "|| goto tb_halt", " ||")), line
    # The manifest: the one shape, and the audit reads it.
    manifest = parse_manifest((rel / "release.json").read_bytes())
    assert manifest.release == rid and manifest.entry == "boot.ipxe"
    assert manifest.signer is not None and "release-signer" in manifest.signer.subject
    audit_view = load_manifest(rel / "release.json")
    assert {f.name for f in audit_view.files} >= {"linux/vmlinuz", "boot.ipxe"}
    assert audit_view.origin == f"{lab.public}releases/{rid}/"
    before = {p: p.stat().st_mtime_ns for p in lab.origin.rglob("*") if p.is_file()}

    # Re-running the same recipe: same id, nothing uploaded, nothing rewritten.
    code, out, err = release(str(recipe), "--json")
    assert code == 0, err
    again = json.loads(out)
    assert again["release"] == rid and again["uploaded"] == []
    after = {p: p.stat().st_mtime_ns for p in lab.origin.rglob("*")
             if p.is_file() and not p.name.startswith(".")}
    changed = [str(p) for p in after if p in before and after[p] != before[p]
               and p.parent != lab.origin]
    assert changed == [], changed

    # A changed kernel is a new release; the entry follows it.
    (lab.dir / "images" / "vmlinuz").write_bytes(b"kernel v2 " * 5000)
    code, out, err = release(str(recipe), "--json")
    assert code == 0, err
    second = json.loads(out)
    assert second["release"] != rid
    assert f"releases/{second['release']}/" in (lab.origin / "boot.ipxe").read_text()


def test_dry_run_prints_the_plan_and_changes_nothing(lab: Lab) -> None:
    recipe = lab.recipe()
    code, out, err = release(str(recipe), "--dry-run")
    assert code == 0, err
    assert "dry run" in out and "linux/vmlinuz" in out and "firmware: skipped" in out
    assert "replay window 730d 12h" in out
    assert list(lab.origin.iterdir()) == []
    code, out, _ = release(str(recipe), "--dry-run", "--json")
    plan = json.loads(out)["plan"]
    assert "linux/initrd.img.sig" in plan["upload"] and plan["build"] == []


def test_dry_run_lists_exactly_what_the_real_run_uploads(lab: Lab) -> None:
    """The dry run's `upload` left out release.json and release.json.sig, which a real
    run writes (the manifest claims the id): a reviewer saw fewer objects than were sent.
    Its list, the real run's `uploaded` and the files the origin then holds agree."""
    recipe = lab.recipe()
    code, out, err = release(str(recipe), "--dry-run", "--json")
    assert code == 0, err
    plan = json.loads(out)["plan"]
    assert {"release.json", "release.json.sig"} <= set(plan["upload"])
    assert "release.json" in plan["sign"]
    code, out, err = release(str(recipe), "--dry-run")
    assert f"upload:   {len(plan['upload'])} objects under releases/" in out
    code, out, err = release(str(recipe), "--json")
    assert code == 0, err
    done = json.loads(out)
    assert done["release"] == plan["release"]
    assert sorted(done["uploaded"]) == plan["upload"]
    assert sorted(done["publish"]["uploaded"]) == plan["upload"]
    held = lab.origin / "releases" / plan["release"]
    assert sorted(p.relative_to(held).as_posix() for p in held.rglob("*")
                  if p.is_file()) == plan["upload"]


def test_dry_run_says_what_the_origin_already_holds(lab: Lab) -> None:
    """A dry run of a release already on the origin listed every object under `upload`
    while a real run uploaded nothing: it now reads the origin as the real run does and
    lists what is there with the same content under `on_origin`. Its `upload` is the
    real run's `uploaded`, also when one object changed on the origin."""
    recipe = lab.recipe()

    def dry() -> dict[str, Any]:
        code, out, err = release(str(recipe), "--dry-run", "--json")
        assert code == 0, err
        plan: dict[str, Any] = json.loads(out)["plan"]
        return plan

    first = dry()
    assert len(first["upload"]) == 8
    code, out, err = release(str(recipe), "--json")
    assert code == 0, err
    everything = sorted(json.loads(out)["uploaded"])
    assert everything == first["upload"]

    again = dry()
    assert again["release"] == first["release"]
    assert again["upload"] == []  # every object was listed here
    assert first["on_origin"] == [] and again["on_origin"] == everything
    assert again["sign"] == []  # every signature the origin holds is kept
    code, out, err = release(str(recipe), "--dry-run")
    assert code == 0, err
    assert "upload:   0 objects under releases/" in out
    assert "on origin: 8 already there with the same content: boot.ipxe, " in out
    assert "sign:     nothing: the origin holds every signature" in out
    code, out, err = release(str(recipe), "--json")
    assert code == 0, err
    assert json.loads(out)["uploaded"] == []

    # one object changed on the origin (another size): that one, and only it, is uploaded
    held = lab.origin / "releases" / first["release"]
    (held / "linux" / "initrd.img").write_bytes(b"truncated")
    changed = dry()
    assert changed["upload"] == ["linux/initrd.img"]
    assert "linux/initrd.img" not in changed["on_origin"] and changed["sign"] == []
    code, out, err = release(str(recipe), "--json")
    assert code == 0, err
    assert json.loads(out)["uploaded"] == ["linux/initrd.img"]

    # a signature the origin holds that no longer verifies is never counted as there:
    # a real run signs the kernel again
    (held / "linux" / "vmlinuz.sig").write_bytes(b"not a signature")
    forged = dry()
    assert "linux/vmlinuz.sig" in forged["upload"] and "linux/vmlinuz" in forged["sign"]
    assert "linux/vmlinuz.sig" not in forged["on_origin"]


def test_dry_run_plans_when_the_origin_is_out_of_reach(lab: Lab) -> None:
    """A {date} id looks for the same inputs released on an earlier day; when the origin
    cannot be listed, a dry run still prints the plan, saying the id is provisional (the
    README's and --help's dry-run example of recipes/multiarch.yaml, whose origin is
    boot.example.net, failed with 'the run resumes')."""
    recipe = lab.recipe(release="release: {id: '{date}-{digest8}', min_signer_lifetime: 30d}")
    recipe.write_text(recipe.read_text().replace(
        f"url: 'file://{lab.origin}'", "url: 'https://127.0.0.1:9/dav/'"))
    code, out, err = release(str(recipe), "--dry-run")
    assert code == 0, err
    assert "the id is provisional: the origin could not be listed" in out
    assert "could not list the origin" in err and "127.0.0.1:9" in err
    code, out, _ = release(str(recipe), "--dry-run", "--json")
    plan = json.loads(out)["plan"]
    assert plan["release_id_provisional"] is True and "127.0.0.1:9" in plan["origin_unreachable"]
    # a real run needs the origin: still an origin failure, exit 1
    code, _, err = release(str(recipe))
    assert code == 1 and "127.0.0.1:9" in err
    # an id without {date} is not provisional, but what is already there is unknown
    recipe.write_text(recipe.read_text().replace("'{date}-{digest8}'", "'{name}-{digest8}'"))
    code, out, err = release(str(recipe), "--dry-run")
    assert code == 0, err
    assert "provisional" not in out + err
    assert "(the origin was not read: some may already be there)" in out
    assert "could not read the origin" in err and "127.0.0.1:9" in err
    code, out, _ = release(str(recipe), "--dry-run", "--json")
    plan = json.loads(out)["plan"]
    assert plan["release_id_provisional"] is False and plan["on_origin"] is None
    assert len(plan["upload"]) == 8


def test_signer_expiring_before_min_lifetime_is_refused(lab: Lab) -> None:
    recipe = lab.recipe(release="release: {min_signer_lifetime: 1000d}")
    code, _, err = release(str(recipe))
    assert code == 4, err
    assert "sooner than release.min_signer_lifetime (1000 days)" in err
    assert "trustboot ca issue codesign release-signer-next" in err
    assert list(lab.origin.iterdir()) == []
    short = recipe.read_text().replace("key: release-signer", "key: short-signer")
    recipe.write_text(short.replace("1000d", "30d"))
    code, _, err = release(str(recipe))
    assert code == 4 and "signer-lifetime" in err


@pytest.mark.parametrize("cmdline", ["quiet && boot", "quiet ; shell", "a || boot",
                                     "${root}", "a\\nchain https://evil/x"])
def test_hostile_cmdline_exits_3_and_publishes_nothing(lab: Lab, cmdline: str) -> None:
    entries = ("entries:\n  - name: linux\n    kernel: images/vmlinuz\n"
               f"    cmdline: \"{cmdline}\"\n")
    code, _, err = release(str(lab.recipe(entries=entries)))
    assert code == 3, err
    assert "r.yaml:" in err and "cannot go into an iPXE script" in err
    assert list(lab.origin.iterdir()) == []


def test_symlink_escape_and_allow_outside(lab: Lab, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "vmlinuz").write_bytes(b"outside kernel")
    (lab.dir / "images" / "escape").symlink_to(outside / "vmlinuz")
    entries = "entries:\n  - name: linux\n    kernel: images/escape\n"
    recipe = lab.recipe(entries=entries)
    code, _, err = release(str(recipe), "--dry-run")
    assert code == 3 and "outside the recipe's directory" in err
    code, _, err = release(str(recipe), "--dry-run", "--allow-outside", str(outside))
    assert code == 0, err


def test_missing_passphrase_without_terminal(lab: Lab) -> None:
    recipe = lab.recipe()
    recipe.write_text(recipe.read_text().replace(", passphrase: {file: pass.txt}", ""))
    code, _, err = release(str(recipe))
    assert code == 3 and "passphrase" in err
    code, _, err = release(str(recipe), "--passphrase-file", str(lab.passfile), "--json")
    assert code == 0, err


def test_a_recipe_passphrase_file_open_to_others_is_refused(lab: Lab) -> None:
    """The recipe's signer.passphrase.file, like --passphrase-file and an origin's
    credentials file: a 0644 (or 0666) passphrase is refused before anything is signed."""
    for mode in (0o644, 0o666):
        lab.passfile.chmod(mode)
        code, _, err = release(str(lab.recipe()))
        assert code == 3, err
        assert "readable or writable by other users" in err
        assert f"chmod 600 {lab.passfile}" in err
        code, _, err = release(str(lab.recipe()), "--passphrase-file", str(lab.passfile))
        assert code == 3 and "readable or writable by other users" in err, err
    assert list(lab.origin.iterdir()) == []
    lab.passfile.chmod(0o600)
    code, _, err = release(str(lab.recipe()))
    assert code == 0, err


def test_release_under_umask_000_creates_nothing_writable_by_others(lab: Lab) -> None:
    recipe = lab.recipe()  # before the umask: a recipe others can write is refused
    old = os.umask(0)
    try:
        code, _, err = release(str(recipe))
    finally:
        os.umask(old)
    assert code == 0, err
    for p in lab.origin.rglob("*"):
        assert p.stat().st_mode & 0o022 == 0, (p, oct(p.stat().st_mode))


def test_an_origin_directory_other_users_can_write_is_refused(lab: Lab) -> None:
    """They could replace what the release verified: refused (exit 3, nothing written)
    unless the operator passes --unsafe-shared-origin, which warns."""
    recipe = lab.recipe()
    lab.origin.chmod(0o777)
    code, _, err = release(str(recipe))
    assert code == 3 and "writable by other users" in err, err
    assert list(lab.origin.iterdir()) == []
    code, _, err = release(str(recipe), "--unsafe-shared-origin")
    assert code == 0, err
    assert "--unsafe-shared-origin: other users" in err


def test_inputs_other_users_can_change_are_refused_at_their_line(lab: Lab) -> None:
    """Whoever can write a kernel (or rename it away) chooses what the release signs:
    refused at its recipe line (exit 3, nothing published) unless the operator accepts it
    with --unsafe-shared-inputs, which warns."""
    recipe = lab.recipe()
    kernel = lab.dir / "images" / "vmlinuz"
    kernel.chmod(0o666)
    code, _, err = release(str(recipe))
    assert code == 3, err
    assert f"{recipe}:" in err and "entries.linux.kernel" in err and "every user" in err
    assert "--unsafe-shared-inputs" in err
    assert list(lab.origin.iterdir()) == []
    kernel.chmod(0o644)
    (lab.dir / "images").chmod(0o777)  # a directory on the way: rename it, replace it
    code, _, err = release(str(recipe), "--dry-run")
    assert code == 3 and f"{lab.dir / 'images'} above it" in err, err
    code, _, err = release(str(recipe), "--unsafe-shared-inputs")
    assert code == 0, err
    assert "--unsafe-shared-inputs: recipe inputs other users can change" in err


def test_a_recipe_others_can_change_is_refused(lab: Lab) -> None:
    recipe = lab.recipe()
    recipe.chmod(0o646)
    code, _, err = release(str(recipe), "--dry-run")
    assert code == 3 and f"recipe {recipe}: it can be changed by every user" in err, err
    assert list(lab.origin.iterdir()) == []


def test_work_directory_in_a_tmpdir_others_can_write_is_refused(
        lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The work directory (0700, ours) holds the firmware between its build and its
    hashing: in a TMPDIR others can write without the sticky bit, they could move it
    away and have their firmware signed and published. Refused (exit 3), nothing
    published; the same release runs in a sticky one."""
    import tempfile

    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    code, _, err = release(str(lab.recipe()))
    assert code == 3, err
    assert f"{shared} above it is writable by other users" in err, err
    assert not [p for p in lab.origin.rglob("*") if p.is_file()]
    shared.chmod(0o1777)
    code, _, err = release(str(lab.recipe()))
    assert code == 0, err


def test_retention_prunes_old_releases_but_never_the_live_one(lab: Lab) -> None:
    recipe = lab.recipe(release="release: {id: '{name}-{digest8}', retention: 1}")
    ids = []
    for n in range(3):
        (lab.dir / "images" / "vmlinuz").write_bytes(b"kernel %d " % n * 3000)
        code, out, err = release(str(recipe), "--json")
        assert code == 0, err
        ids.append(json.loads(out)["release"])
    assert json.loads(out)["pruned"] == [ids[1]]  # ids[0] went with the second release
    assert sorted(p.name for p in (lab.origin / "releases").iterdir()) == [ids[2]]


def test_retention_says_which_incomplete_release_folders_it_removed(lab: Lab) -> None:
    """A release folder without release.json (a publish killed before its manifest),
    untouched for over an hour, goes with the retention's prune, and the run says so
    (JSON `prune`, a stage note); a young one is left, with the reason."""
    import os
    import time

    recipe = lab.recipe(release="release: {id: '{name}-{digest8}', retention: 2}")
    code, _, err = release(str(recipe))
    assert code == 0, err
    old, young = lab.origin / "releases" / "killed-old", lab.origin / "releases" / "killed-young"
    for folder in (old, young):
        folder.mkdir()
        (folder / "vmlinuz").write_bytes(b"half a publish")
    hours_ago = time.time() - 7200
    for path in (old / "vmlinuz", old):
        os.utime(path, (hours_ago, hours_ago))
    (lab.dir / "images" / "vmlinuz").write_bytes(b"another kernel " * 3000)
    code, out, err = release(str(recipe), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["prune"]["incomplete_removed"] == ["killed-old"], doc["prune"]
    assert [x["release"] for x in doc["prune"]["incomplete_left"]] == ["killed-young"]
    assert not old.exists() and young.exists()
    code, out, err = release(str(recipe))
    assert code == 0, err
    assert "left incomplete release folder killed-young (no release.json)" in err, err


def test_date_in_the_id_does_not_make_a_new_release_the_next_day(lab: Lab) -> None:
    import datetime as dt

    from trustboot.release.pipeline import run_release
    from trustboot.release.plan import ReleaseOptions
    from trustboot.release.recipe import load_recipe

    recipe = load_recipe(lab.recipe(release="release: {id: '{date}-{digest8}'}"))
    now = dt.datetime.now(dt.UTC)
    first = run_release(recipe, ReleaseOptions(), now=now)
    later = run_release(recipe, ReleaseOptions(), now=now + dt.timedelta(days=2))
    assert later.release == first.release and later.uploaded == []


def test_reverify_catches_an_object_changed_on_the_origin(lab: Lab) -> None:
    recipe = lab.recipe()
    code, out, err = release(str(recipe), "--json")
    assert code == 0, err
    rid = json.loads(out)["release"]
    kernel = lab.origin / "releases" / rid / "linux" / "vmlinuz"
    data = bytearray(kernel.read_bytes())
    data[100] ^= 1  # same size: a plain re-run trusts the sizes and the live entry
    kernel.chmod(0o644)
    kernel.write_bytes(bytes(data))
    code, _, err = release(str(recipe), "--reverify")
    assert code == 4, err
    assert "linux/vmlinuz" in err and "not served as published" in err


def test_reverify_of_the_live_release_says_nothing_was_switched(lab: Lab) -> None:
    """--reverify publishes the release again (every object read back and judged); the
    entry already serves it, so publish switches nothing (`switched: false`), and the
    publish stage must say so, not "switched to"."""
    recipe = lab.recipe()
    code, out, err = release(str(recipe), "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["publish"]["switched"] is True
    assert "switched to" in _stage(first, "publish")["detail"]
    code, out, err = release(str(recipe), "--json", "--reverify")
    assert code == 0, err
    again = json.loads(out)
    assert again["publish"]["switched"] is False
    detail = _stage(again, "publish")["detail"]
    assert "switched to" not in detail and "nothing switched" in detail, detail
    assert f"boot.ipxe already serves {again['release']}" in detail
    code, _, err = release(str(recipe), "--reverify")  # the text says the same
    assert code == 0, err
    assert "nothing switched" in err and "switched to" not in err, err


def _stage(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in result["stages"] if s["stage"] == name)


def test_dry_run_with_a_git_pinned_ipxe_clones_nothing(lab: Lab, tmp_path: Path) -> None:
    """--dry-run touches nothing: a git-pinned iPXE source is named, not cloned (no network:
    the host does not even resolve), and the cache directory is not even created."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "cache"
    recipe = lab.recipe(ipxe=f"ipxe: {{git: 'https://git.example.invalid/ipxe.git', "
                        f"commit: {commit}}}")
    code, out, err = release(str(recipe), "--dry-run", "--json")
    assert code == 0, err
    plan = json.loads(out)["plan"]
    assert plan["firmware"]["mode"] == "build"
    assert "would clone" in plan["firmware"]["reason"] and commit in plan["firmware"]["reason"]
    assert plan["release_id_provisional"] is True
    assert not cache.exists(), sorted(cache.rglob("*"))
    assert list(lab.origin.iterdir()) == []
    # without --dry-run the clone is attempted (and fails cleanly: the host does not exist)
    code, _, err = release(str(recipe), "--json")
    assert code == 1 and "could not fetch" in err, err
    assert list(lab.origin.iterdir()) == []


def test_release_shows_upload_progress_on_a_terminal(lab: Lab) -> None:
    """On a pty the publish stage draws bars with bytes and rate; with --json only JSON."""
    import sys

    pexpect = pytest.importorskip("pexpect")
    (lab.dir / "images" / "initrd.img").write_bytes(os.urandom(4 << 20))
    recipe = lab.recipe()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    child = pexpect.spawn(sys.executable, ["-m", "trustboot", "release", str(recipe)],
                          env=env, encoding="utf-8", timeout=120, dimensions=(24, 160))
    child.expect(r"upload.*MiB of [0-9.]+ MiB, [0-9.]+ MiB/s")
    child.expect(r"readback.*MiB/s")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    (lab.dir / "images" / "vmlinuz").write_bytes(b"kernel v2 " * 5000)
    quiet = pexpect.spawn(sys.executable, ["-m", "trustboot", "release", str(recipe),
                                           "--json"], env=env, encoding="utf-8",
                          timeout=120, dimensions=(24, 160))
    quiet.expect(pexpect.EOF)
    quiet.close()
    assert quiet.exitstatus == 0, quiet.before
    assert "MiB/s" not in quiet.before
    assert json.loads(quiet.before)["uploaded"]


def test_percent_encoded_dot_dot_in_a_file_origin_cannot_leave_the_recipe_dir(
        lab: Lab, tmp_path: Path) -> None:
    """The file:// origin decodes %2e%2e to '..': the recipe's origin must be judged as
    the directory the origin will really write to, not as the literal text."""
    escape = lab.dir.parent / "escaped-origin"
    recipe = lab.recipe()
    text = recipe.read_text()
    sneaky = f"file://{lab.dir}/%2e%2e/escaped-origin"
    assert f"file://{lab.origin}" in text
    recipe.write_text(text.replace(f"file://{lab.origin}", sneaky))
    code, _, err = release(str(recipe))
    assert code == 3, err
    assert "outside the recipe's directory" in err
    assert not escape.exists()


def _evil_module(directory: Path, marker: Path) -> Path:
    """A shared library that, once loaded, writes ``marker`` (code from a pull request)."""
    import shutil

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler to build the stand-in PKCS#11 module")
    src = directory / "evil.c"
    src.write_text("#include <stdio.h>\n__attribute__((constructor)) static void run(void)"
                   f" {{ FILE *f = fopen(\"{marker}\", \"w\"); if (f) fclose(f); }}\n")
    lib = directory / "evil.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib


@pytest.mark.parametrize("attr", ["module-path", "pin-source"])
def test_recipe_pkcs11_uri_names_no_module_or_pin_file(lab: Lab, tmp_path: Path,
                                                       attr: str) -> None:
    """A recipe comes from a pull request: a pkcs11: key naming module-path= would load
    (run) a library of its choosing, even in a dry run; pin-source= would read a file
    anywhere. The module and the PIN come from the operator."""
    pytest.importorskip("pkcs11", reason="needs python-pkcs11 (trustboot[pkcs11])")
    marker = tmp_path / "module-ran"
    lib = _evil_module(lab.dir, marker)
    value = str(lib) if attr == "module-path" else "/etc/hostname"
    other = f"&module-path={lib}" if attr == "pin-source" else ""
    recipe = lab.recipe()
    text = recipe.read_text().replace(
        "signer: {key: release-signer,",
        f"signer: {{key: 'pkcs11:token=t;object=o?{attr}={value}{other}', "
        "cert: pki/ca.crt,")
    assert "pkcs11:" in text
    recipe.write_text(text)
    code, _, err = release(str(recipe), "--dry-run")
    assert code == 3, err
    assert "r.yaml:" in err and attr in err
    assert not marker.exists()


def test_recipe_pkcs11_module_comes_from_the_operator(lab: Lab, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Without module-path= the operator's --pkcs11-module is used (here: SoftHSM2 with
    no such token, so the release stops at the token, not at a missing module)."""
    pytest.importorskip("pkcs11", reason="needs python-pkcs11 (trustboot[pkcs11])")
    module = Path("/usr/lib/softhsm/libsofthsm2.so")
    if not module.is_file():
        pytest.skip("needs SoftHSM2 (apt-get install softhsm2)")
    conf = tmp_path / "softhsm2.conf"
    (tmp_path / "tokens").mkdir()
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\n")
    recipe = lab.recipe()
    recipe.write_text(recipe.read_text().replace(
        "signer: {key: release-signer,",
        "signer: {key: 'pkcs11:token=absent;object=o', cert: pki/ca.crt,"))
    code, _, err = release(str(recipe), "--dry-run")
    assert code == 3 and "no PKCS#11 module" in err, err
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    code, _, err = release(str(recipe), "--dry-run", "--pkcs11-module", str(module))
    assert code != 0 and "no PKCS#11 module" not in err and "absent" in err, err


def test_recipe_file_key_resolves_in_the_recipe_dir_and_stays_there(
        lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """signer.key file:PATH is a recipe path like any other: relative to the recipe's
    directory (not the working directory), and never outside it without --allow-outside."""
    import shutil

    key = lab.pki / "private" / "release-signer.key"
    cert = lab.pki / "issued" / "release-signer.crt"
    assert key.is_file() and cert.is_file()
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy2(key, outside / "signer.key")
    recipe = lab.recipe()
    text = recipe.read_text()
    recipe.write_text(text.replace(
        "signer: {key: release-signer,",
        f"signer: {{key: 'file:{outside / 'signer.key'}', cert: pki/issued/release-signer.crt,"
        " chain: pki/chain.pem,"))
    code, _, err = release(str(recipe), "--dry-run")
    assert code == 3 and "outside the recipe's directory" in err and "signer.key" in err, err
    code, _, err = release(str(recipe), "--dry-run", "--allow-outside", str(outside))
    assert code == 0, err
    recipe.write_text(text.replace(
        "signer: {key: release-signer,",
        "signer: {key: 'file:pki/private/release-signer.key', "
        "cert: pki/issued/release-signer.crt, chain: pki/chain.pem,"))
    monkeypatch.chdir(tmp_path)  # elsewhere: the path is the recipe's, not the caller's
    code, _, err = release(str(recipe))
    assert code == 0, err


def test_passphrase_option_overrides_the_recipes_source(lab: Lab) -> None:
    # The README's `release RECIPE --passphrase-env NAME` on a recipe that names its own
    # source (recipes/multiarch.yaml): the operator's option wins, it is not ignored.
    recipe = lab.recipe()
    recipe.write_text(recipe.read_text().replace(
        "passphrase: {file: pass.txt}", "passphrase: {env: TB_TEST_UNSET_PASSPHRASE}"))
    code, _, err = release(str(recipe))
    assert code == 3 and "TB_TEST_UNSET_PASSPHRASE" in err, err
    pw = (lab.dir / "pass.txt").read_text().strip()
    r = CliRunner().invoke(cli, ["release", str(recipe), "--passphrase-env", "TB_TEST_PW",
                                 "--json"], env={"TB_TEST_PW": pw,
                                                 "TB_TEST_UNSET_PASSPHRASE": None})
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["release"].startswith("lab-")
    # and a wrong one is refused, not replaced by the recipe's
    recipe.write_text(recipe.read_text().replace(
        "{env: TB_TEST_UNSET_PASSPHRASE}", "{file: pass.txt}"))
    r = CliRunner().invoke(cli, ["release", str(recipe), "--passphrase-env", "TB_TEST_PW",
                                 "--reverify"], env={"TB_TEST_PW": "wrong passphrase"})
    assert r.exit_code == 3, r.output


def test_rerun_summary_counts_the_unchanged_objects(lab: Lab) -> None:
    recipe = lab.recipe()
    code, out, err = release(str(recipe))
    assert code == 0, err
    code, out, err = release(str(recipe))
    assert code == 0, err
    # a re-run of a live release leaves all six objects as they are: say so, not "0"
    assert ": 0 uploaded, 6 unchanged; live at" in out, out
    code, out, err = release(str(recipe), "--json")
    assert sorted(json.loads(out)["publish"]["skipped"]) == sorted([
        "boot.ipxe", "boot.ipxe.sig", "linux/vmlinuz", "linux/vmlinuz.sig",
        "linux/initrd.img", "linux/initrd.img.sig"])


def _fake_ipxe_tree(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake iPXE tree at lab/ipxe whose make (this venv's Python) runs in the sandbox."""
    import sys

    from tests.conftest import require_tool
    from tests.ipxe.fake_tree import fake_env_passthrough, fake_sandbox, make_fake_tree

    require_tool("make", "make")
    make_fake_tree(lab.dir / "ipxe")
    fake_env_passthrough(monkeypatch)
    fake_sandbox(monkeypatch, [lab.dir])
    monkeypatch.setenv("FAKE_PY", sys.executable)
    monkeypatch.setenv("FAKE_RUNS", str(lab.dir / "runs.log"))


def test_release_during_a_root_rotation_builds_firmware_trusting_both_roots(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `ipxe build --pki` trusts both roots while a rotation is under way; the release's
    # build stage (the same build) must too, or its firmware is no evidence for promote.
    _fake_ipxe_tree(lab, monkeypatch)
    r = CliRunner().invoke(cli, ["ca", "rotate", "root", "begin", "--pki", str(lab.pki),
                                 "--passphrase-file", str(lab.dir / "pass.txt")])
    assert r.exit_code == 0, r.output
    status = json.loads(CliRunner().invoke(cli, ["ca", "export", "--pki", str(lab.pki),
                                                 "--out", str(lab.dir / "t"), "--json"]).stdout)
    both = status["trust_sha256"]
    assert len(both) == 2
    recipe = lab.recipe(ipxe="ipxe: {source: ipxe, targets: [bin/ipxe.lkrn]}")
    code, out, err = release(str(recipe), "--json")
    assert code == 0, err
    rid = json.loads(out)["release"]
    record = json.loads((lab.origin / "releases" / rid / "release.json").read_text())["ipxe"]
    assert [t["sha256"] for t in record["trust"]] == both
    r = CliRunner().invoke(cli, ["ca", "rotate", "root", "promote", "--pki", str(lab.pki),
                                 "--build-manifest", str(lab.origin / "releases" / rid /
                                                         "release.json"),
                                 "--passphrase-file", str(lab.dir / "pass.txt")])
    assert r.exit_code == 0, r.output


def test_recipe_origin_cannot_take_credentials_bound_to_another_origin(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A recipe change that points the origin elsewhere, keeping CI's credentials
    variable, is refused in validation (dry run included), the secret never shown."""
    recipe = lab.recipe()
    text = recipe.read_text().replace("ca_file: pki/ca.crt}",
                                      "ca_file: pki/ca.crt, credentials: {env: TRUSTBOOT_CREDS}}")
    recipe.write_text(text)
    monkeypatch.setenv("TRUSTBOOT_CREDS", "https://dav.example.net/boot/ ci:hunter2hunter2")
    for extra in (["--dry-run"], []):
        code, out, err = release(str(recipe), *extra)
        assert code == 3, err
        assert "bound to origin https://dav.example.net/boot/" in err
        assert "hunter2" not in out + err
    assert not any(lab.origin.iterdir())


def test_an_entry_gone_when_it_is_checked_is_an_outage_not_a_refusal(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """The verify stage finds nothing to judge (the live entry deleted on the origin
    between the switch and its check): exit 1 naming the check to run, not exit 4, which
    says iPXE refused what the origin served. A served entry edited there stays exit 4."""
    from trustboot.publish import check
    from trustboot.release import pipeline

    real = check.check_origin

    def after(change: str) -> Callable[..., check.CheckReport]:
        def checking(url: str, **kw: Any) -> check.CheckReport:
            entry = lab.origin / "boot.ipxe"
            if change == "deleted":
                entry.unlink()
            else:
                entry.write_bytes(entry.read_bytes() + b"echo edited\n")
            return real(url, **kw)
        return checking

    monkeypatch.setattr(pipeline, "check_origin", after("deleted"))
    code, _, err = release(str(lab.recipe()))
    assert code == 1, err
    assert "could not fetch the served entry script" in err and "404" in err
    assert "trustboot origin check" in err
    monkeypatch.setattr(pipeline, "check_origin", after("edited"))
    code, _, err = release(str(lab.recipe()))
    assert code == 4, err


def test_the_build_stage_shows_make_progress_like_ipxe_build(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release that builds iPXE takes minutes; in a pipe (CI) its build stage prints the
    occasional `make: N steps` line, as `ipxe build` does (README "Conventions"), instead
    of going silent; with --json stderr stays quiet."""
    _fake_ipxe_tree(lab, monkeypatch)
    recipe = lab.recipe(ipxe="ipxe: {source: ipxe, targets: [bin/ipxe.lkrn]}")
    code, out, err = release(str(recipe))
    assert code == 0, err
    assert "make: 1 steps" in err, err
    monkeypatch.setenv("TRUSTBOOT_CACHE_DIR", str(lab.dir / "cache2"))  # build again
    code, out, err = release(str(recipe), "--json", "--reverify")
    assert code == 0, err
    assert "make:" not in err and json.loads(out)["stages"][2]["detail"].endswith("(built)")


def test_rerun_fails_when_the_public_url_serves_an_older_validly_signed_entry(
        lab: Lab, tmp_path: Path) -> None:
    """The verify stage fetches the entry from where the firmware will and checks it is
    this release's script, not just a script that verifies: a cache in front of the
    origin still serving the previous release's entry (validly signed by the same
    signer) fails the run (exit 4) even when the origin itself is up to date."""
    recipe = lab.recipe()
    code, _, err = release(str(recipe))
    assert code == 0, err
    old = {n: (lab.origin / n).read_bytes() for n in ("boot.ipxe", "boot.ipxe.sig")}
    recipe.write_text(recipe.read_text().replace("console=ttyS0 quiet", "console=ttyS1"))
    code, _, err = release(str(recipe))
    assert code == 0, err
    mirror = tmp_path / "stale-cache"
    shutil.copytree(lab.origin, mirror)
    for name, data in old.items():
        (mirror / name).write_bytes(data)
    with serve_over_https(lab.pki, mirror, tmp_path / "scratch2") as port:
        code, _, err = release(str(recipe), "--readback-url", f"https://127.0.0.1:{port}/")
    assert code == 4, err
    assert "serves another script than this release's" in err, err


@pytest.mark.parametrize("public", ["http://127.0.0.1/boot/", "ftp://127.0.0.1/boot/"])
def test_a_public_url_given_by_a_caller_must_be_https(lab: Lab, public: str) -> None:
    """The recipe schema allows only https:// public URLs, but ReleaseOptions.public_url
    (the demo, other callers of the library) bypasses the schema: validate itself refuses
    a cleartext base, which would put http:// kernel and initrd URLs into the script."""
    recipe = load_recipe(lab.recipe())
    with pytest.raises(ConfigError, match="is not an https:// URL") as err:
        validate(recipe, ReleaseOptions(public_url=public), now=dt.datetime.now(dt.UTC))
    # named as the input it is (the embedded script's --chain check would also refuse it,
    # naming an option this caller never gave)
    assert err.value.message.startswith("origin.public_url"), err.value.message


def test_extra_roots_are_built_in_as_read_at_their_line(lab: Lab) -> None:
    """An extra root joins the CA's in the firmware's trust, once each (the CA's own root
    named again is not a second anchor): the certificate read when its line was checked."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "next root")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (lab.dir / "next-root.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    recipe = load_recipe(lab.recipe(
        ipxe="ipxe:\n  extra_roots:\n    - next-root.crt\n    - pki/ca.crt"))
    v = validate(recipe, ReleaseOptions(), now=now)
    theirs = cert.fingerprint(hashes.SHA256()).hex()
    fingerprints = [c.fingerprint for c in v.roots]
    assert len(fingerprints) == 2 and fingerprints[1] == theirs, fingerprints
    assert v.roots[1].pem == cert.public_bytes(serialization.Encoding.PEM)


def test_errors_about_files_a_recipe_names_give_the_recipe_line(lab: Lab) -> None:
    """A garbage extra root, an empty iPXE source, a file:// origin with a host, a
    passphrase file open to others: each named only the file (or URL), not the recipe
    line that named it."""
    (lab.dir / "garbage.pem").write_text("not a certificate\n")
    (lab.dir / "emptysrc").mkdir()
    cases = [
        (dict(ipxe="ipxe: {extra_roots: [garbage.pem]}"), "garbage.pem"),
        (dict(ipxe="ipxe: {source: emptysrc}"), "emptysrc"),
    ]
    for kwargs, named in cases:
        path = lab.recipe(**kwargs)
        code, _, err = release(str(path), "--dry-run")
        assert code == 3, err
        line = next(i for i, text in enumerate(path.read_text().splitlines(), 1)
                    if text.startswith("ipxe:"))
        assert f"{path}:{line}: " in err and named in err, err
    # each extra root at its own line
    path = lab.recipe(ipxe="ipxe:\n  extra_roots:\n    - pki/ca.crt\n    - garbage.pem")
    code, _, err = release(str(path), "--dry-run")
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1)
                if "garbage.pem" in text)
    assert code == 3 and f"{path}:{line}: " in err, err
    path = lab.recipe()
    path.write_text(path.read_text().replace(f"file://{lab.origin}", "file://evilhost/x"))
    code, _, err = release(str(path), "--dry-run")
    assert code == 3 and f"{path}:5: " in err, err
    lab.passfile.chmod(0o644)
    path = lab.recipe()
    code, _, err = release(str(path), "--allow-outside", str(lab.dir))
    assert code == 3 and "readable or writable by other users" in err, err
    assert f"{path}:4: " in err, err


def test_a_forbidden_character_in_a_recipe_names_its_line(lab: Lab) -> None:
    path = lab.recipe(body="notes: 'a\x00b'\n")
    code, _, err = release(str(path), "--dry-run")
    assert code == 3, err
    line = len(path.read_text().splitlines())
    assert f"{path}:{line}: not valid YAML: character #x0000" in err, err


def test_a_release_that_cannot_sandbox_its_build_stops_before_it_starts(
        lab: Lab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without a usable bwrap the build stage refused (exit 3), but only after the
    signer's unlock and the inputs' uploads, and a dry run said nothing of it: now a
    release that will build refuses at validate, before anything is unlocked or sent,
    and a dry run plans on while naming the failure to come."""
    _fake_ipxe_tree(lab, monkeypatch)
    bindir = tmp_path / "fake-bin"
    bindir.mkdir()
    calls = tmp_path / "bwrap-calls"
    (bindir / "bwrap").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n'
                                  'echo "bwrap: No permissions to creating new namespace" >&2\n'
                                  "exit 1\n")
    (bindir / "bwrap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    recipe = lab.recipe(ipxe="ipxe: {source: ipxe, targets: [bin/ipxe.lkrn]}")
    code, out, err = release(str(recipe), "--dry-run")
    assert code == 0, err
    assert "the build would fail: cannot run the iPXE build in a sandbox: bwrap cannot " \
           "create its namespaces here" in out, out
    code, _, err = release(str(recipe))
    assert code == 3, err
    assert "cannot run the iPXE build in a sandbox" in err and "Traceback" not in err
    assert "--unsafe-unsandboxed-build" in err.split("hint: ", 1)[1]
    assert not [p for p in lab.origin.rglob("*") if p.is_file()]  # nothing was sent
    assert not (lab.dir / "runs.log").exists() or (lab.dir / "runs.log").read_text() == ""
    assert all(line.endswith(" -- true") for line in calls.read_text().splitlines())
    # the operator's escape hatch still builds (the tree's make then runs unsandboxed)
    code, _, err = release(str(recipe), "--unsafe-unsandboxed-build")
    assert code == 0, err
    assert any(lab.origin.rglob("ipxe.lkrn"))


def test_a_recipe_s_ipxe_tree_whose_src_is_a_link_out_is_refused(
        lab: Lab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ipxe.source passed the rule every recipe path follows (inside the recipe's
    directory after resolving links), but the tree's src/, what is built, was not
    checked: a src link in a pull request had the release build, sign and publish a tree
    from anywhere on the build host, one that named directly is refused."""
    from tests.ipxe.fake_tree import make_fake_tree
    from tests.ipxe.test_hostile_make import add_to_recipe

    _fake_ipxe_tree(lab, monkeypatch)
    outside = make_fake_tree(tmp_path / "elsewhere")
    add_to_recipe(outside, "echo BUILT-FROM-OUTSIDE >> $@")
    shutil.rmtree(lab.dir / "ipxe" / "src")
    (lab.dir / "ipxe" / "src").symlink_to(outside / "src")
    recipe = lab.recipe(ipxe="ipxe: {source: ipxe, targets: [bin/ipxe.lkrn]}")
    line = next(i for i, text in enumerate(recipe.read_text().splitlines(), 1)
                if text.startswith("ipxe:"))
    for extra in (["--dry-run"], []):
        code, _, err = release(str(recipe), *extra)
        assert code == 3, err
        assert f"{recipe}:{line}: ipxe.source 'ipxe/src' resolves to {outside / 'src'}, " \
               "outside the recipe's directory" in err, err
    assert not any(lab.origin.rglob("ipxe.lkrn"))
    # allowed explicitly, or a link within the recipe's directory: built
    code, _, err = release(str(recipe), "--dry-run", "--allow-outside", str(outside))
    assert code == 0, err
    shutil.copytree(outside, lab.dir / "other")
    (lab.dir / "ipxe" / "src").unlink()
    (lab.dir / "ipxe" / "src").symlink_to("../other/src")
    code, _, err = release(str(recipe))
    assert code == 0, err
    (fw,) = lab.origin.rglob("ipxe.lkrn")
    assert b"BUILT-FROM-OUTSIDE" in fw.read_bytes()  # the copy inside, as the recipe says


def test_an_ipxe_tree_with_a_file_others_can_write_is_refused(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file of the src/ an ipxe.source names is built into the firmware the release
    signs: one that others can write is refused at the ipxe line, before any build (a dry
    run too), and make never runs."""
    _fake_ipxe_tree(lab, monkeypatch)
    makefile = lab.dir / "ipxe" / "src" / "Makefile"
    makefile.chmod(0o666)
    recipe = lab.recipe(ipxe="ipxe: {source: ipxe, targets: [bin/ipxe.lkrn]}")
    for args in (["--dry-run"], []):
        code, _, err = release(str(recipe), *args)
        assert code == 3, err
        assert f"{recipe}:" in err and "ipxe.source" in err
        assert f"{makefile} in it can be changed by every user" in err
    assert not (lab.dir / "runs.log").exists() or (lab.dir / "runs.log").read_text() == ""
    assert list(lab.origin.iterdir()) == []


def test_prebuilt_firmware_others_can_write_is_refused(lab: Lab) -> None:
    fw = lab.dir / "fw" / "bin"
    fw.mkdir(parents=True)
    target = fw / "ipxe.lkrn"
    target.write_bytes(b"\xeb\x3c prebuilt firmware " * 200)
    target.chmod(0o646)
    recipe = lab.recipe(ipxe="ipxe: {prebuilt: fw, targets: [bin/ipxe.lkrn]}")
    code, _, err = release(str(recipe), "--dry-run")
    assert code == 3, err
    assert "ipxe.prebuilt" in err and "can be changed by every user" in err


def test_an_invalid_build_time_limit_is_refused_before_anything_is_uploaded(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_ipxe_tree(lab, monkeypatch)
    monkeypatch.setenv("TRUSTBOOT_BUILD_TIMEOUT", "soon")
    recipe = lab.recipe(ipxe="ipxe: {source: ipxe, targets: [bin/ipxe.lkrn]}")
    for args in (["--dry-run"], []):
        code, _, err = release(str(recipe), *args)
        assert code == 3 and "TRUSTBOOT_BUILD_TIMEOUT='soon'" in err, err
    assert list(lab.origin.iterdir()) == []
