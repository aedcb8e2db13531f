"""A run SIGKILLed in the middle of an entry switch (the .sig replaced, the script not):
the pair fails verification, `origin check` says so and names the fix, prune refuses, and
the next publish / `publish repair` finishes the recorded switch. Against the real nginx."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from tests.publish.conftest import (
    LIVE_RECORD_TAMPERING,
    Nginx,
    Pki,
    ReleaseFactory,
    logged_requests,
    resign,
    resign_refuses_switch_back,
    tamper_live_record,
)
from tests.publish.faultproxy import Fault, ProxyState
from tests.publish.test_faults import (  # noqa: F401 - proxy is a fixture
    ENTRY_A,
    ENTRY_B,
    _entry_verifies,
    proxy,
    publish,
)
from tests.publish.test_lock import webdav_options
from trustboot.cli.main import cli
from trustboot.cli.verify import load_trust
from trustboot.publish.fileorigin import FileOrigin
from trustboot.publish.manifest import parse_manifest
from trustboot.publish.origin import ObjectStat, OriginOptions, open_origin
from trustboot.publish.pipeline import (
    SWITCH_JOURNAL,
    ReleaseDates,
    Trust,
    build_manifest,
    release_date,
    scan_directory,
    signed_date,
)
from trustboot.publish.webdav import STAGING, WebDAVOrigin

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def repair_signer(pki: Pki) -> str:
    """A short-lived signer for the resign runs here (as test_resign's fresh_signer)."""
    pki.issue("codesign", "fresh-7d-repair", "--days", "7")
    return "fresh-7d-repair"


ENTRY_C = b"#!ipxe\necho release C\n"


def killed_publish(pki: Pki, directory: Path, url: str, release: str, at: str) -> None:
    argv = [sys.executable, str(REPO / "tests/publish/killswitch.py"), "publish",
            str(directory), url, "--release-id", release, "--pki", str(pki.dir),
            "--client-cert", "publisher", "--client-key-passphrase-file", str(pki.key_pass),
            "--json"]
    env = dict(os.environ, PYTHONPATH=str(REPO), KILL_AT=at)
    proc = subprocess.run(argv, env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()


def origin_args(pki: Pki) -> list[str]:
    return ["--pki", str(pki.dir), "--client-cert", "publisher",
            "--client-key-passphrase-file", str(pki.key_pass), "--json"]


def mismatched(pki: Pki, nginx: Nginx) -> bool:
    try:
        _entry_verifies(pki, nginx.url)
    except AssertionError:
        return True
    return False


@pytest.mark.slow
def test_killed_between_the_two_moves_then_repaired(pki: Pki, nginx: Nginx,
                                                    make_release: ReleaseFactory) -> None:
    assert publish(pki, make_release({"boot.ipxe": ENTRY_A}), nginx.url, "ra").exit_code == 0
    killed_publish(pki, make_release({"boot.ipxe": ENTRY_B}), nginx.url, "rb", "between")
    # the mismatched pair: new signature, old script; it never verifies
    assert (nginx.root / "boot.ipxe").read_bytes() == ENTRY_A
    assert mismatched(pki, nginx)
    record = json.loads((nginx.root / SWITCH_JOURNAL).read_bytes())
    assert record["release"] == "rb" and record["entry_path"] == "boot.ipxe"

    check = CliRunner().invoke(cli, ["origin", "check", nginx.url + "boot.ipxe", "--pki",
                                     str(pki.dir), "--json"])
    assert check.exit_code == 4, check.output
    assert "publish repair" in check.output

    listed = CliRunner().invoke(cli, ["publish", "list", nginx.url, *origin_args(pki)])
    assert listed.exit_code == 0, listed.output
    assert "interrupted entry switch" in listed.stderr
    assert f"trustboot publish repair {nginx.url}" in listed.stderr
    assert json.loads(listed.stdout)  # --json stays parseable

    pruned = CliRunner().invoke(cli, ["publish", "prune", nginx.url, "--keep", "1",
                                      *origin_args(pki)])
    assert pruned.exit_code == 1 and "interrupted entry switch" in pruned.output
    assert (nginx.root / "releases/ra/release.json").exists()

    # ra and rb were published from directories: their manifests are unsigned and do
    # not show rb to be the newer, so the repair does not complete the switch on its own
    # (a writer could have planted it); it names the rollback that makes it on purpose
    refused = CliRunner().invoke(cli, ["publish", "repair", nginx.url, *origin_args(pki)])
    assert refused.exit_code == 4, refused.output
    err = json.loads(refused.stderr)
    assert err["rule"] == "unrecorded-rollback", err
    assert f"trustboot publish rollback {nginx.url} rb" in err["hint"], err
    assert mismatched(pki, nginx) and (nginx.root / SWITCH_JOURNAL).exists()
    fixed = CliRunner().invoke(cli, ["publish", "rollback", nginx.url, "rb",
                                     *origin_args(pki)])
    assert fixed.exit_code == 0, fixed.output
    assert _entry_verifies(pki, nginx.url) == hashlib.sha256(ENTRY_B).digest()
    assert not (nginx.root / SWITCH_JOURNAL).exists()
    again = CliRunner().invoke(cli, ["publish", "repair", nginx.url, *origin_args(pki)])
    assert json.loads(again.output)["action"] == "none"
    listed = CliRunner().invoke(cli, ["publish", "list", nginx.url, *origin_args(pki)])
    assert listed.exit_code == 0 and "interrupted" not in listed.stderr, listed.output


@pytest.mark.slow
def test_the_next_publish_finishes_an_interrupted_switch_first(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory) -> None:
    assert publish(pki, make_release({"boot.ipxe": ENTRY_A}), nginx.url, "ra").exit_code == 0
    killed_publish(pki, make_release({"boot.ipxe": ENTRY_B}), nginx.url, "rb", "between")
    assert mismatched(pki, nginx)
    # unsigned manifests do not show rb to be newer than ra: a publish that does not
    # switch would have to complete that switch, and refuses (nothing uploaded)
    r = publish(pki, make_release({"boot.ipxe": ENTRY_C}), nginx.url, "rc", "--no-switch")
    assert r.exit_code == 4, r.output
    assert json.loads(r.stderr)["rule"] == "unrecorded-rollback"
    assert not (nginx.root / "releases/rc").exists()
    # a publish that switches replaces the pair and the record itself
    r = publish(pki, make_release({"boot.ipxe": ENTRY_C}), nginx.url, "rc")
    assert r.exit_code == 0, r.output
    assert "rb" in json.loads(r.output)["repaired"]
    assert _entry_verifies(pki, nginx.url) == hashlib.sha256(ENTRY_C).digest()
    assert not (nginx.root / SWITCH_JOURNAL).exists()


@pytest.mark.slow
def test_killed_before_the_first_move_keeps_the_live_release(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory) -> None:
    assert publish(pki, make_release({"boot.ipxe": ENTRY_A}), nginx.url, "ra").exit_code == 0
    killed_publish(pki, make_release({"boot.ipxe": ENTRY_B}), nginx.url, "rb", "before")
    assert _entry_verifies(pki, nginx.url) == hashlib.sha256(ENTRY_A).digest()
    assert (nginx.root / SWITCH_JOURNAL).exists()
    fixed = CliRunner().invoke(cli, ["publish", "repair", nginx.url, *origin_args(pki)])
    assert json.loads(fixed.output)["action"] == "dropped", fixed.output
    assert _entry_verifies(pki, nginx.url) == hashlib.sha256(ENTRY_A).digest()
    assert not (nginx.root / SWITCH_JOURNAL).exists()


@pytest.mark.slow
def test_temp_objects_of_a_killed_run_are_removed_once_stale(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory) -> None:
    """A run killed mid-switch leaves the staged copy of the script in the staging
    collection; the next publish removes it once it is an hour old (a young one is left:
    it could belong to a run whose lock was broken)."""
    assert publish(pki, make_release({"boot.ipxe": ENTRY_A}), nginx.url, "ra").exit_code == 0
    killed_publish(pki, make_release({"boot.ipxe": ENTRY_B}), nginx.url, "rb", "between")
    staging = nginx.root / STAGING
    left = sorted(p.name for p in staging.iterdir())
    assert len(left) == 1 and left[0].endswith(".boot.ipxe"), left
    young = staging / "0123456789abcdef.vmlinuz"
    young.write_bytes(b"an upload in progress")
    old = time.time() - 2 * 3600
    os.utime(staging / left[0], (old, old))
    r = publish(pki, make_release({"boot.ipxe": ENTRY_C}), nginx.url, "rc")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["removed_temps"] == [f"{STAGING}/{left[0]}"]
    assert sorted(p.name for p in staging.iterdir()) == [young.name]
    # listing never shows staging objects
    listed = CliRunner().invoke(cli, ["publish", "list", nginx.url, *origin_args(pki)])
    assert "tb-tmp" not in listed.output


def test_file_origin_removes_only_stale_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "origin"
    (root / "releases/r1").mkdir(parents=True)
    stale = root / "releases/r1/.tb-tmp.aaaa.vmlinuz"
    young = root / "releases/r1/.tb-tmp.bbbb.initrd"
    kept = root / "releases/r1/vmlinuz"
    for f in (stale, young, kept):
        f.write_bytes(b"x")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    os.utime(kept, (old, old))
    with open_origin(f"file://{root}", OriginOptions()) as origin:
        assert origin.remove_stale_temps(3600) == ["releases/r1/.tb-tmp.aaaa.vmlinuz"]
    assert not stale.exists() and young.exists() and kept.exists()


def test_file_origin_removes_the_directories_its_sweep_empties(tmp_path: Path) -> None:
    """A killed upload's temp file was swept, its release folder left empty for ever
    (listed, and counted as a release whose manifest is missing). The sweep removes the
    directories it empties, and only those: not one empty already, not one still holding
    anything, never releases/ nor the root."""
    root = tmp_path / "origin"
    old = time.time() - 7200
    stale = [root / "releases/rk/.tb-tmp.aaaa.vmlinuz", root / "releases/rk/sub/.tb-tmp.b.x",
             root / "releases/rm/.tb-tmp.cccc.initrd", root / "releases/ry/.tb-tmp.dddd.a",
             root / ".tb-tmp.eeee.boot.ipxe"]
    kept = [root / "releases/rm/initrd", root / "releases/ry/.tb-tmp.ffff.b"]
    for f in stale + kept:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    (root / "releases/empty").mkdir()
    for f in [*stale, kept[0]]:
        os.utime(f, (old, old))
    with open_origin(f"file://{root}", OriginOptions()) as origin:
        removed = origin.remove_stale_temps(3600)
    assert removed == sorted(p.relative_to(root).as_posix() for p in stale)
    assert not (root / "releases/rk").exists()  # emptied, with its emptied sub-directory
    assert all(p.exists() for p in kept)  # rm holds an object, ry a young temp file
    assert (root / "releases/empty").is_dir()  # empty before: not this sweep's doing
    assert root.is_dir() and (root / "releases").is_dir()
    # releases/ emptied by a sweep stays too
    (root / "releases/rm/initrd").unlink()
    (root / "releases/ry/.tb-tmp.ffff.b").unlink()
    (root / "releases/empty").rmdir()
    for d in ("rm", "ry"):
        (root / "releases" / d).rmdir()
    last = root / "releases/rz/.tb-tmp.gggg.k"
    last.parent.mkdir()
    last.write_bytes(b"x")
    os.utime(last, (old, old))
    with open_origin(f"file://{root}", OriginOptions()) as origin:
        assert origin.remove_stale_temps(3600) == ["releases/rz/.tb-tmp.gggg.k"]
    assert (root / "releases").is_dir() and not any((root / "releases").iterdir())


@pytest.mark.slow
def test_an_origin_failing_during_repair_keeps_the_switch_record(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory,
        proxy: tuple[str, ProxyState]) -> None:  # noqa: F811
    """A network failure while the repair reads the recorded release is an origin failure
    (exit 1, try again), not an unusable record: dropping the record would leave the
    mismatched pair with nothing left to finish it."""
    url, state = proxy
    assert publish(pki, make_release({"boot.ipxe": ENTRY_A}), nginx.url, "ra").exit_code == 0
    killed_publish(pki, make_release({"boot.ipxe": ENTRY_B}), nginx.url, "rb", "between")
    assert mismatched(pki, nginx)
    state.faults.append(Fault("GET", 503, count=100, path=r".*/releases/rb/release\.json"))
    r = CliRunner().invoke(cli, ["publish", "repair", url, "--retries", "1",
                                 *origin_args(pki)])
    assert r.exit_code == 1, r.output
    assert "503" in r.output
    assert (nginx.root / SWITCH_JOURNAL).exists()
    state.faults.clear()
    # the record was kept for this run to judge: ra and rb have unsigned manifests that
    # do not show the switch to go forward, so it is refused (not dropped as unusable),
    # and the rollback its hint names completes it
    judged = CliRunner().invoke(cli, ["publish", "repair", url, *origin_args(pki)])
    assert judged.exit_code == 4, judged.output
    assert json.loads(judged.stderr)["rule"] == "unrecorded-rollback"
    assert (nginx.root / SWITCH_JOURNAL).exists()
    fixed = CliRunner().invoke(cli, ["publish", "rollback", url, "rb", *origin_args(pki)])
    assert fixed.exit_code == 0, fixed.output
    assert _entry_verifies(pki, nginx.url) == hashlib.sha256(ENTRY_B).digest()
    assert not (nginx.root / SWITCH_JOURNAL).exists()


def test_a_lock_record_a_killed_run_left_in_staging_is_removed_once_stale(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory) -> None:
    """A run killed between writing its lock record and moving it into place leaves the
    record's collection in the staging collection: swept like any stale temporary."""
    left = nginx.root / STAGING / "0123456789abcdef.lock"
    left.mkdir(parents=True)
    (left / "owner.json").write_text("{}")
    # an old entry not named as trustboot names its temporaries is not trustboot's to sweep
    foreign = nginx.root / STAGING / "kept-by-someone.txt"
    foreign.write_text("not a trustboot temporary")
    old = time.time() - 2 * 3600
    os.utime(left, (old, old))
    os.utime(foreign, (old, old))
    r = publish(pki, make_release({"boot.ipxe": ENTRY_A}), nginx.url, "ra")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["removed_temps"] == [f"{STAGING}/{left.name}"]
    assert not left.exists() and foreign.exists()
    assert not (nginx.root / ".trustboot-lock").exists()  # released


@pytest.mark.slow
def test_killed_after_both_moves_is_reported_as_finished(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory) -> None:
    """Killed after both replacements, before the record is removed: the new release is
    live and verifies; the repair drops the record and says the switch had finished (it
    said the switch had not started, naming as not live the release that is)."""
    assert publish(pki, make_release({"boot.ipxe": ENTRY_A}), nginx.url, "ra").exit_code == 0
    killed_publish(pki, make_release({"boot.ipxe": ENTRY_B}), nginx.url, "rb", "after")
    assert _entry_verifies(pki, nginx.url) == hashlib.sha256(ENTRY_B).digest()
    assert (nginx.root / SWITCH_JOURNAL).exists()
    fixed = CliRunner().invoke(cli, ["publish", "repair", nginx.url, *origin_args(pki)])
    assert fixed.exit_code == 0, fixed.output
    out = json.loads(fixed.output)
    assert out["action"] == "dropped" and out["release"] == "rb"
    assert "had finished" in out["detail"] and "not started" not in out["detail"]
    assert not (nginx.root / SWITCH_JOURNAL).exists()


@pytest.mark.slow
def test_prune_killed_midway_leaves_a_claimed_incomplete_release_and_resumes(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory) -> None:
    """A prune SIGKILLed after deleting one object of a release: its manifest (the id's
    claim) stays, the live release is untouched, `publish list` shows it incomplete, the
    next prune finishes it, and publishing the same content under that id again resumes."""
    old = make_release({"boot.ipxe": ENTRY_A, "vmlinuz": b"kernel a " * 500})
    assert publish(pki, old, nginx.url, "ra").exit_code == 0
    time.sleep(1.1)  # distinct creation times
    assert publish(pki, make_release({"boot.ipxe": ENTRY_B}), nginx.url, "rb").exit_code == 0
    argv = [sys.executable, str(REPO / "tests/publish/killswitch.py"), "publish", "prune",
            nginx.url, "--keep", "1", *origin_args(pki)]
    proc = subprocess.run(argv, env=dict(os.environ, PYTHONPATH=str(REPO), KILL_AT="prune"),
                          capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    assert (nginx.root / "releases/ra/release.json").exists()
    assert _entry_verifies(pki, nginx.url) == hashlib.sha256(ENTRY_B).digest()
    listed = CliRunner().invoke(cli, ["publish", "list", nginx.url, *origin_args(pki)])
    info = {i["id"]: i for i in json.loads(listed.stdout)}
    assert not info["ra"]["complete"], info
    assert info["rb"]["complete"] and info["rb"]["live"], info
    # the same content again under the claimed id: only what is missing is uploaded
    again = publish(pki, old, nginx.url, "ra", "--no-switch")
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["uploaded"]
    pruned = CliRunner().invoke(cli, ["publish", "prune", nginx.url, "--keep", "1",
                                      *origin_args(pki)])
    assert pruned.exit_code == 0, pruned.output
    assert json.loads(pruned.output)["deleted"] == ["ra"]
    assert not (nginx.root / "releases/ra").exists()
    assert _entry_verifies(pki, nginx.url) == hashlib.sha256(ENTRY_B).digest()


@pytest.mark.slow
def test_repair_when_the_recorded_release_no_longer_verifies(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The release a killed switch was making live has since stopped verifying (its
    signer's certificate expired). Completing the switch would make live an entry iPXE
    refuses: `publish repair` says exactly that (exit 4), changes nothing and keeps the
    record, with a hint that names the way out; a rollback (or publish) to a release that
    verifies then replaces the pair and clears the record."""
    pki.issue("codesign", "repair-short", "--days", "1")
    assert publish(pki, make_release({"boot.ipxe": ENTRY_A}), nginx.url, "ra").exit_code == 0
    killed_publish(pki, make_release({"boot.ipxe": ENTRY_B}, signer="repair-short"),
                   nginx.url, "rb", "between")
    assert mismatched(pki, nginx)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    monkeypatch.setattr("trustboot.cli.publish.utc_now", lambda: later)
    before = {p: p.read_bytes() for p in (nginx.root / "boot.ipxe",
                                          nginx.root / "boot.ipxe.sig")}
    for _run in range(2):  # the same answer every time, not only on a first run
        r = CliRunner().invoke(cli, ["publish", "repair", nginx.url, *origin_args(pki)])
        assert r.exit_code == 4, r.output
        err = json.loads(r.stderr)
        assert "cannot finish the interrupted switch" in err["message"], err
        assert "release rb no longer verifies" in err["message"], err
        assert "expired" in err["message"], err
        assert "trustboot publish rollback" in err["hint"], err
        assert (nginx.root / SWITCH_JOURNAL).exists()
        assert {p: p.read_bytes() for p in before} == before
    r = CliRunner().invoke(cli, ["publish", "rollback", nginx.url, "ra",
                                 *origin_args(pki)])
    assert r.exit_code == 0, r.output
    assert "no longer verifies" in json.loads(r.stdout)["repaired"]
    assert _entry_verifies(pki, nginx.url) == hashlib.sha256(ENTRY_A).digest()
    assert not (nginx.root / SWITCH_JOURNAL).exists()


def test_a_lock_record_a_killed_heartbeat_left_aside_is_removed_once_stale(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory) -> None:
    """A holder killed mid-refresh (or a breaker killed mid-break) leaves the lock collection
    moved aside: into the staging collection, swept once stale like any temporary (at the
    root, where it used to go, nginx's listing shows no dot-names and it stayed forever)."""
    def hold_while_refreshing() -> None:
        with open_origin(nginx.url, webdav_options(pki)) as origin:
            assert isinstance(origin, WebDAVOrigin)
            with origin.lock("refreshing", refresh=0.2):
                time.sleep(1.0)

    # each refresh moves the lock aside, reads it there and deletes it (or moves it back)
    asides = {r.split()[1].split(".refresh-lock/")[0] + ".refresh-lock"
              for r in logged_requests(nginx, pki, hold_while_refreshing)
              if ".refresh-lock/" in r}
    assert asides and all(a.startswith(f"/{STAGING}/") for a in asides), asides
    aside = sorted(asides)[0].strip("/")
    # what a kill between the move aside and the delete leaves
    left = nginx.root / aside
    left.mkdir()
    (left / "owner.json").write_text("{}")
    old = time.time() - 2 * 3600
    os.utime(left, (old, old))
    r = publish(pki, make_release({"boot.ipxe": ENTRY_A}), nginx.url, "ra")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["removed_temps"] == [aside]
    assert not left.exists()


def _half_rolled_back_to(root: Path, release: str) -> None:
    """What a switch of boot.ipxe to ``release`` killed between its two copies leaves:
    the record, and that release's signature beside the live script."""
    prefix = root / "releases" / release
    script, sig = (prefix / "boot.ipxe").read_bytes(), (prefix / "boot.ipxe.sig").read_bytes()
    record = {"version": 1, "release": release, "entry_path": "boot.ipxe",
              "script_sha256": hashlib.sha256(script).hexdigest(),
              "sig_sha256": hashlib.sha256(sig).hexdigest()}
    (root / SWITCH_JOURNAL).write_text(json.dumps(record))
    (root / "boot.ipxe.sig").write_bytes(sig)


def _signed_release(pki: Pki, make_release: ReleaseFactory, release: str, entry: bytes,
                    url: str, *, created: dt.datetime | None = None,
                    signer: str = "boot-signer") -> Path:
    """A release directory with a signed release.json, as `trustboot release` makes
    (dated now, or ``created``; its release.json signed by ``signer``)."""
    r = make_release({"boot.ipxe": entry, "vmlinuz": b"kernel " + entry * 50})
    base = f"{url}releases/{release}/" if url.startswith("https:") else None
    manifest = build_manifest(release, scan_directory(r), entry="boot.ipxe",
                              now=created or dt.datetime.now(dt.UTC), origin=base,
                              trust=Trust(tuple(load_trust((), pki.dir))))
    (r / "release.json").write_bytes(manifest.to_bytes())
    pki.sign([r / "release.json"], r, signer)
    return r


@pytest.mark.parametrize("changed", ["object", "manifest"])
@pytest.mark.parametrize("where", ["file", "nginx"])
def test_repair_verifies_the_whole_recorded_release_before_switching(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, request: pytest.FixtureRequest,
        changed: str, where: str) -> None:
    """A switch to an older release (a rollback) killed half way; since then, an object of
    that release (its kernel) or its signed manifest was changed on the origin. Its entry
    pair still verifies, but completing the switch would make live a release whose kernel
    iPXE refuses: `publish repair` reads the whole release back first, as a rollback to it
    would, and switches nothing (exit 4, the record kept); a rollback to a release that
    verifies replaces the pair and the record."""
    if where == "nginx":
        nginx: Nginx = request.getfixturevalue("nginx")
        url, root, extra = nginx.url, nginx.root, origin_args(pki)
    else:
        root = tmp_path / "srv"
        url, extra = f"file://{root}/", ["--pki", str(pki.dir), "--json"]

    def run(*args: str) -> Result:
        return CliRunner().invoke(cli, ["publish", *args, *extra])

    for rid, entry in (("ra", ENTRY_A), ("rb", ENTRY_B)):
        r = run(str(_signed_release(pki, make_release, rid, entry, url)), url,
                "--release-id", rid)
        assert r.exit_code == 0, r.output
    _half_rolled_back_to(root, "ra")
    if changed == "object":
        with open(root / "releases/ra/vmlinuz", "ab") as fh:
            fh.write(b"x")
    else:  # still a manifest of the same files, but not the one that was signed
        manifest = root / "releases/ra/release.json"
        doc = json.loads(manifest.read_bytes())
        doc["created"] = "2020-01-01T00:00:00Z"
        manifest.write_text(json.dumps(doc))
    live = {p: (root / p).read_bytes() for p in ("boot.ipxe", "boot.ipxe.sig")}

    r = run("repair", url)
    assert r.exit_code == 4, r.output
    err = json.loads(r.stderr)
    assert "cannot finish the interrupted switch of boot.ipxe to release ra" in err["message"]
    assert "release ra no longer verifies" in err["message"], err
    assert ("releases/ra/vmlinuz" if changed == "object" else "signature") in err["message"]
    assert "trustboot publish rollback" in err["hint"], err
    assert (root / SWITCH_JOURNAL).exists()
    assert {p: (root / p).read_bytes() for p in live} == live

    r = run("rollback", url, "rb")
    assert r.exit_code == 0, r.output
    assert "release ra no longer verifies" in json.loads(r.stdout)["repaired"]
    assert (root / "boot.ipxe").read_bytes() == ENTRY_B
    assert (root / "boot.ipxe.sig").read_bytes() == (root / "releases/rb/boot.ipxe.sig"
                                                     ).read_bytes()
    assert not (root / SWITCH_JOURNAL).exists()


def _publish_signed(pki: Pki, make_release: ReleaseFactory, root: Path,
                    *releases: tuple[str, bytes, str]) -> None:
    """Publish each (id, entry, extra option) to the file:// origin ``root``, in order."""
    url = f"file://{root}/"
    for rid, entry, option in releases:
        _publish_file(pki, _signed_release(pki, make_release, rid, entry, url), root, rid,
                      option)


def _publish_file(pki: Pki, directory: Path, root: Path, rid: str, option: str = "") -> None:
    r = CliRunner().invoke(cli, ["publish", str(directory), f"file://{root}/", "--release-id",
                                 rid, "--pki", str(pki.dir), "--json",
                                 *([option] if option else [])])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("pair", ["broken", "replaced"])
@pytest.mark.parametrize("signed", [True, False])
def test_repair_does_not_complete_a_planted_switch_back(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, signed: bool,
        pair: str) -> None:
    """An origin writer plants a switch record naming ra, older than rb which is live, and
    breaks the entry pair with ra's signature, as a rollback killed half way would.
    `publish repair`, run by an operator told to by `origin check`, completed it: the
    writer got the fleet rolled back (and the live record rewritten to ra). Refused (exit
    4, rule unrecorded-rollback, the way to do it on purpose in the hint), nothing
    changed; the rollback itself, asked for, goes through and clears the record. The
    same when the writer put ra's whole pair in place (a rollback killed after both
    replacements): the repair would have recorded ra as trustboot's own switch."""
    root = tmp_path / "srv"
    url = f"file://{root}/"
    if signed:
        _publish_signed(pki, make_release, root, ("ra", ENTRY_A, ""), ("rb", ENTRY_B, ""))
    else:
        for rid, entry in (("ra", ENTRY_A), ("rb", ENTRY_B)):
            _publish_file(pki, make_release({"boot.ipxe": entry}), root, rid)
    _half_rolled_back_to(root, "ra")
    if pair == "replaced":
        (root / "boot.ipxe").write_bytes((root / "releases/ra/boot.ipxe").read_bytes())
    before = {p: (root / p).read_bytes() for p in ("boot.ipxe", "boot.ipxe.sig",
                                                   ".trustboot-live.json", SWITCH_JOURNAL)}
    r = CliRunner().invoke(cli, ["publish", "repair", url, "--pki", str(pki.dir), "--json"])
    assert r.exit_code == 4, r.output
    err = json.loads(r.stderr)
    assert err["rule"] == "unrecorded-rollback", err
    assert "release ra is older than rb" in err["message"], err
    assert f"trustboot publish rollback {url} ra" in err["hint"], err
    assert {p: (root / p).read_bytes() for p in before} == before
    r = CliRunner().invoke(cli, ["publish", "rollback", url, "ra", "--pki", str(pki.dir),
                                 "--json"])
    assert r.exit_code == 0, r.output
    assert (root / "boot.ipxe").read_bytes() == ENTRY_A
    assert not (root / SWITCH_JOURNAL).exists()
    assert json.loads((root / ".trustboot-live.json").read_bytes())["entries"][
        "boot.ipxe"]["release"] == "ra"


def test_repair_completes_a_switch_to_a_release_that_verifies(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """The positive control of the tests above: a switch forward (rc, newer than the live
    rb by their signed manifests, published without a switch) killed half way, nothing
    changed since: the switch is completed."""
    root = tmp_path / "srv"
    url, extra = f"file://{root}/", ["--pki", str(pki.dir), "--json"]
    _publish_signed(pki, make_release, root, ("rb", ENTRY_B, ""),
                    ("rc", ENTRY_C, "--no-switch"))
    assert (root / "boot.ipxe").read_bytes() == ENTRY_B
    _half_rolled_back_to(root, "rc")
    r = CliRunner().invoke(cli, ["publish", "repair", url, *extra])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["action"] == "completed" and "cannot be shown" not in out["detail"], out
    assert (root / "boot.ipxe").read_bytes() == ENTRY_C
    assert not (root / SWITCH_JOURNAL).exists()


def test_repair_by_hand_refuses_a_switch_unsigned_manifests_cannot_order(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """Releases `publish` made from a directory have unsigned manifests, whose dates prove
    nothing. A repair an operator runs (`origin check` sends them there) completed a
    switch they do not show to go back (a killed publish of rc, or a writer's planted
    switch: the two look alike), with only a note in its detail. Refused now, as resign
    refuses it: exit 4, rule unrecorded-rollback, nothing changed, the hint naming the
    rollback that makes the switch on purpose; that rollback then completes it."""
    root = tmp_path / "srv"
    url = f"file://{root}/"
    _publish_file(pki, make_release({"boot.ipxe": ENTRY_B}), root, "rb")
    _publish_file(pki, make_release({"boot.ipxe": ENTRY_C}), root, "rc", "--no-switch")
    _half_rolled_back_to(root, "rc")
    before = _served_state(root)
    r = CliRunner().invoke(cli, ["publish", "repair", url, "--pki", str(pki.dir), "--json"])
    assert r.exit_code == 4, r.output
    err = json.loads(r.stderr)
    assert err["rule"] == "unrecorded-rollback", err
    assert "release rc cannot be shown to be newer than rb" in err["message"], err
    assert f"trustboot publish rollback {url} rc" in err["hint"], err
    assert f"trustboot publish rollback {url} rb" in err["hint"], err
    assert _served_state(root) == before
    r = CliRunner().invoke(cli, ["publish", "rollback", url, "rc", "--pki", str(pki.dir),
                                 "--json"])
    assert r.exit_code == 0, r.output
    assert (root / "boot.ipxe").read_bytes() == ENTRY_C
    assert not (root / SWITCH_JOURNAL).exists()
    assert json.loads((root / ".trustboot-live.json").read_bytes())["entries"][
        "boot.ipxe"]["release"] == "rc"


def _served_state(root: Path) -> dict[str, bytes | None]:
    """The entry pair, the live record and the switch record as the origin holds them."""
    return {p: (root / p).read_bytes() if (root / p).exists() else None
            for p in ("boot.ipxe", "boot.ipxe.sig", ".trustboot-live.json", SWITCH_JOURNAL)}


@pytest.mark.parametrize("pair", ["broken", "replaced"])
@pytest.mark.parametrize("record", LIVE_RECORD_TAMPERING)
def test_a_planted_switch_back_is_refused_whatever_the_live_record_says(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, record: str,
        pair: str) -> None:
    """test_repair_does_not_complete_a_planted_switch_back, by a writer who also deletes
    the live record, rewrites it to name ra, or makes it unparsable. The check took the
    live record's release for the one to compare with, and without one (or with ra
    there) found nothing to go back from: the repair completed the rollback (exit 0) and
    recorded ra as trustboot's own. The reference is now every other release on the
    origin, dated by its signed manifest: rb is newer, refused, nothing changed. Except
    when the pair and the live record both name ra already: the switch record adds
    nothing to that state (a writer can leave it without one), so it is dropped, and
    resign's own check of the live release judges it (test_resign)."""
    root = tmp_path / "srv"
    url = f"file://{root}/"
    _publish_signed(pki, make_release, root, ("ra", ENTRY_A, ""), ("rb", ENTRY_B, ""))
    _half_rolled_back_to(root, "ra")
    if pair == "replaced":
        (root / "boot.ipxe").write_bytes((root / "releases/ra/boot.ipxe").read_bytes())
    tamper_live_record(root, record, "ra")
    before = _served_state(root)
    r = CliRunner().invoke(cli, ["publish", "repair", url, "--pki", str(pki.dir), "--json"])
    if pair == "replaced" and record == "names-the-target":
        # pair and live record already say ra: what a rollback to ra killed just before
        # removing the switch record leaves. Only that record is dropped; the origin is
        # as the writer could leave it without one (resign then warns that ra is older)
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["action"] == "dropped"
        assert _served_state(root) == {**before, SWITCH_JOURNAL: None}
        return
    assert r.exit_code == 4, r.output
    err = json.loads(r.stderr)
    assert err["rule"] == "unrecorded-rollback", err
    assert "release ra is older than rb" in err["message"], err
    assert "their signed manifests" in err["message"], err
    assert f"trustboot publish rollback {url} ra" in err["hint"], err
    assert f"trustboot publish rollback {url} rb" in err["hint"], err
    assert _served_state(root) == before


@pytest.mark.parametrize("record", ("kept", *LIVE_RECORD_TAMPERING))
def test_a_switch_forward_is_completed_whatever_the_live_record_says(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, record: str) -> None:
    """The positive control: a killed switch forward to rc, newer than rb by their signed
    manifests, is completed with or without a usable live record (it is not what shows
    a switch forward), and the record then names rc."""
    root = tmp_path / "srv"
    url = f"file://{root}/"
    _publish_signed(pki, make_release, root, ("rb", ENTRY_B, ""),
                    ("rc", ENTRY_C, "--no-switch"))
    _half_rolled_back_to(root, "rc")
    if record != "kept":
        tamper_live_record(root, record, "rc")
    r = CliRunner().invoke(cli, ["publish", "repair", url, "--pki", str(pki.dir), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["action"] == "completed" and "cannot be shown" not in out["detail"], out
    assert (root / "boot.ipxe").read_bytes() == ENTRY_C
    assert not (root / SWITCH_JOURNAL).exists()
    assert json.loads((root / ".trustboot-live.json").read_bytes())["entries"][
        "boot.ipxe"]["release"] == "rc"


def test_a_newer_unsigned_release_still_refuses_a_switch_back(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """ra has a signed manifest, rb (live, newer) was published from a directory, its
    manifest unsigned. A writer plants a switch back to ra and deletes the live record:
    no signed manifest is newer than ra's, but an unsigned date may still make the check
    stricter (a writer gains nothing by making a switch look older): refused."""
    root = tmp_path / "srv"
    url = f"file://{root}/"
    _publish_signed(pki, make_release, root, ("ra", ENTRY_A, ""))
    _publish_file(pki, make_release({"boot.ipxe": ENTRY_B}), root, "rb")
    _half_rolled_back_to(root, "ra")
    tamper_live_record(root, "deleted", "ra")
    before = _served_state(root)
    r = CliRunner().invoke(cli, ["publish", "repair", url, "--pki", str(pki.dir), "--json"])
    assert r.exit_code == 4, r.output
    err = json.loads(r.stderr)
    assert err["rule"] == "unrecorded-rollback", err
    assert "release ra is older than rb" in err["message"], err
    assert _served_state(root) == before


def test_a_release_folder_without_its_manifest_is_listed_not_skipped(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, repair_signer: str) -> None:
    """A writer deletes the newer rb's release.json (and .sig), plants a switch back to ra
    and breaks the pair. The releases/ listing skipped a folder without a manifest, so
    every check that dates releases saw ra as the only release and found nothing to go
    back from. rb is now a release whose manifest is missing: `publish list` shows it
    (unreadable, saying why), and the switch back is not completed unattended (resign,
    rule unrecorded-rollback, naming rb); nothing changed."""
    root = tmp_path / "srv"
    url = f"file://{root}/"
    _publish_signed(pki, make_release, root, ("ra", ENTRY_A, ""), ("rb", ENTRY_B, ""))
    for name in ("release.json", "release.json.sig"):
        (root / "releases/rb" / name).unlink()
    r = CliRunner().invoke(cli, ["publish", "list", url, "--pki", str(pki.dir), "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["id"]: row for row in json.loads(r.stdout)}
    assert set(rows) == {"ra", "rb"}, rows
    assert rows["rb"]["state"] == "unreadable", rows["rb"]
    assert "manifest missing" in rows["rb"]["problem"], rows["rb"]
    r = CliRunner().invoke(cli, ["publish", "list", url, "--pki", str(pki.dir)])
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if " rb " in ln)
    assert "UNREADABLE: manifest missing" in line, r.output

    _half_rolled_back_to(root, "ra")
    err = resign_refuses_switch_back(pki, url, repair_signer, root, _served_state)
    assert "rb" in err["message"], err


def _killed_publish_folder(root: Path, rid: str, *, age: float = 7200) -> None:
    """What a publish of ``rid`` killed after its objects, before its release.json, leaves
    on the file:// origin ``root``, last changed ``age`` seconds ago."""
    folder = root / "releases" / rid
    folder.mkdir(parents=True)
    (folder / "vmlinuz").write_bytes(b"kernel of " + rid.encode())
    (folder / "vmlinuz.sig").write_bytes(b"not a signature of " + rid.encode())
    then = time.time() - age
    for path in (folder / "vmlinuz", folder / "vmlinuz.sig", folder):
        os.utime(path, (then, then))


@pytest.mark.parametrize("then", ["repair", "resign"])
def test_a_killed_publishs_folder_stops_blocking_once_prune_removes_it(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, repair_signer: str,
        then: str) -> None:
    """A publish of rk killed before its release.json left releases/rk/ with objects
    only. Its date cannot be told, so the repair of a killed switch forward (and resign
    without a live record) is refused, and prune left the folder: only deleting it by
    hand got out. Prune removes it once nothing in it changed for an hour, even while
    the switch record is there (it is what keeps the repair refused), and says so; the
    repair (resign) then goes on."""
    root = tmp_path / "srv"
    url, extra = f"file://{root}/", ["--pki", str(pki.dir), "--json"]
    if then == "repair":
        _publish_signed(pki, make_release, root, ("rb", ENTRY_B, ""),
                        ("rc", ENTRY_C, "--no-switch"))
        _half_rolled_back_to(root, "rc")
        argv = ["publish", "repair", url, *extra]
    else:
        _publish_signed(pki, make_release, root, ("ra", ENTRY_A, ""), ("rb", ENTRY_B, ""))
        tamper_live_record(root, "deleted", "rb")
        argv = ["resign", url, "--key", repair_signer, "--passphrase-file",
                str(pki.key_pass), *extra]
    _killed_publish_folder(root, "rk")
    r = CliRunner().invoke(cli, argv)
    assert r.exit_code == 4, r.output
    err = json.loads(r.stderr)
    assert err["rule"] == "unrecorded-rollback", err
    assert "the release.json of rk does not read or is missing" in err["message"], err

    r = CliRunner().invoke(cli, ["publish", "prune", url, "--keep", "5", *extra])
    said = "removed incomplete release folder rk (no release.json, older than 1h00m)"
    if then == "repair":  # no release is pruned until the switch is finished
        assert r.exit_code == 1, r.output
        err = json.loads(r.stderr)
        assert "interrupted entry switch" in err["message"], err
        assert said in err["message"], err
    else:
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout) == {"deleted": [], "left": [], "warnings": [],
                                        "incomplete_removed": ["rk"], "incomplete_left": []}
    assert not (root / "releases/rk").exists()
    assert sorted(p.name for p in (root / "releases").iterdir()) == \
        (["rb", "rc"] if then == "repair" else ["ra", "rb"])

    r = CliRunner().invoke(cli, argv)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    if then == "repair":
        assert out["action"] == "completed", out
        assert (root / "boot.ipxe").read_bytes() == ENTRY_C
    else:
        assert out["previous"] == "rb" and out["release"].startswith("rb.rs-"), out
    assert not (root / SWITCH_JOURNAL).exists()


def test_prune_leaves_a_folder_without_manifest_that_may_still_be_needed(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """Only a folder nothing needs goes: one changed within the hour (a publish may be
    under way), one an entry pair serves (the live script is one of its objects), one the
    live record names (for any entry path) is left, and prune says why for each; the old
    one beside them is removed, and said so."""
    root = tmp_path / "srv"
    url = f"file://{root}/"
    _publish_signed(pki, make_release, root, ("rb", ENTRY_B, ""))
    for rid in ("rold", "rserved", "rnamed"):
        _killed_publish_folder(root, rid)
    _killed_publish_folder(root, "ryoung", age=60)
    (root / "releases/rserved/boot.ipxe").write_bytes(ENTRY_B)  # what boot.ipxe serves
    then = time.time() - 7200
    for path in (root / "releases/rserved/boot.ipxe", root / "releases/rserved"):
        os.utime(path, (then, then))
    record = json.loads((root / ".trustboot-live.json").read_bytes())
    record["entries"]["menus/x.ipxe"] = {"release": "rnamed", "script_sha256": "0" * 64,
                                         "sig_sha256": None}
    (root / ".trustboot-live.json").write_text(json.dumps(record))
    r = CliRunner().invoke(cli, ["publish", "prune", url, "--keep", "5", "--pki",
                                 str(pki.dir)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == "deleted 0 release(s)", r.output
    assert "removed incomplete release folder rold (no release.json, older than 1h00m)" \
        in lines, r.output
    left = {ln.split()[4]: ln for ln in lines if ln.startswith("left incomplete")}
    assert set(left) == {"ryoung", "rserved", "rnamed"}, r.output
    assert "a publish may be under way" in left["ryoung"], left
    assert "an entry pair on the origin serves it" in left["rserved"], left
    assert "the live record or the switch record names it" in left["rnamed"], left
    assert sorted(p.name for p in (root / "releases").iterdir()) == \
        ["rb", "rnamed", "rserved", "ryoung"]


def _planted_switch_back_past_forged(pki: Pki, make_release: ReleaseFactory, root: Path,
                                     how: str, record: str) -> dict[str, bytes | None]:
    """r0, ra and rb published signed to the file:// origin ``root``; rb's manifest forged
    (_forge_newer ``how``), a switch back to ra planted with the pair broken, the live
    record kept or deleted (``record``). Returns the served state before the command."""
    _publish_signed(pki, make_release, root, ("r0", ENTRY_C, ""), ("ra", ENTRY_A, ""),
                    ("rb", ENTRY_B, ""))
    _forge_newer(root, "rb", how)
    _half_rolled_back_to(root, "ra")
    if record == "deleted":
        tamper_live_record(root, "deleted", "ra")
    return _served_state(root)


def _forge_newer(root: Path, rid: str, how: str) -> None:
    """What a writer without a signing key can do to release ``rid``'s manifest: lower
    its `created` (its .sig then fails), make it garbage, or delete it (and its .sig)."""
    manifest = root / "releases" / rid / "release.json"
    if how == "lowered":
        doc = json.loads(manifest.read_bytes())
        doc["created"] = "2001-01-01T00:00:00Z"
        manifest.write_text(json.dumps(doc))
    elif how == "garbage":
        manifest.write_bytes(b"{garbage")
    else:
        assert how == "deleted", how
        manifest.unlink()
        (root / "releases" / rid / "release.json.sig").unlink()


@pytest.mark.parametrize("how", ["lowered", "garbage"])
@pytest.mark.parametrize("record", ["kept", "deleted"])
def test_resign_does_not_complete_a_switch_back_past_a_forged_newer_release(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, repair_signer: str,
        how: str, record: str) -> None:
    """r0, ra, rb signed, rb live. A writer lowers rb's `created` (rb's .sig then fails:
    unproven, but its claimed 2001 was still compared) or breaks rb's manifest (unread,
    ignored once r0 was proven), plants a switch back to ra and breaks the pair. ra's
    signed date is newer than every date left, so resign completed the rollback and
    re-signed ra. A release not dated by its signed manifest never helps show a switch
    forward: refused (exit 4, unrecorded-rollback, naming rb), nothing changed."""
    root = tmp_path / "srv"
    url = f"file://{root}/"
    _planted_switch_back_past_forged(pki, make_release, root, how, record)
    err = resign_refuses_switch_back(pki, url, repair_signer, root, _served_state)
    assert "release ra cannot be shown to be newer than r0, rb" in err["message"], err
    said = "has no signature" if how == "lowered" else "does not read"
    assert f"the release.json of rb {said}" in err["message"], err


@pytest.mark.parametrize("how", ["lowered", "garbage", "deleted"])
@pytest.mark.parametrize("record", ["kept", "deleted"])
def test_repair_by_hand_does_not_complete_a_switch_back_past_a_forged_newer_release(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, how: str,
        record: str) -> None:
    """test_resign_does_not_complete_a_switch_back_past_a_forged_newer_release, repaired
    by an operator whom `origin check` sent: `publish repair` completed the rollback to
    ra (exit 0, the undo only in a note). Refused (exit 4, unrecorded-rollback), nothing
    changed, and the hint names `publish rollback` both ways."""
    root = tmp_path / "srv"
    url = f"file://{root}/"
    before = _planted_switch_back_past_forged(pki, make_release, root, how, record)
    r = CliRunner().invoke(cli, ["publish", "repair", url, "--pki", str(pki.dir), "--json"])
    assert r.exit_code == 4, r.output
    err = json.loads(r.stderr)
    assert err["rule"] == "unrecorded-rollback", err
    assert "release ra cannot be shown to be newer than r0, rb" in err["message"], err
    assert f"trustboot publish rollback {url} ra" in err["hint"], err
    assert f"trustboot publish rollback {url} " in err["hint"].split("otherwise")[1], err
    assert _served_state(root) == before


@pytest.mark.parametrize("then", ["repair", "resign"])
def test_a_rollback_killed_after_its_live_record_is_finished_by_dropping_the_record(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, repair_signer: str,
        then: str) -> None:
    """A deliberate `publish rollback` to ra (older than rb by their signed manifests)
    killed after writing the live record, before removing the switch record: the pair
    and the live record already name ra. The repair asked whether completing it goes
    back, found ra older than rb and refused (exit 4), and so did every nightly resign,
    with nothing left to switch. The switch record is dropped (the origin is as it would
    be without one), and resign judges the live release as it would without the
    record: re-signed, with its warning that ra is older than rb."""
    root = tmp_path / "srv"
    url = f"file://{root}/"
    _publish_signed(pki, make_release, root, ("ra", ENTRY_A, ""), ("rb", ENTRY_B, ""))
    r = CliRunner().invoke(cli, ["publish", "rollback", url, "ra", "--pki", str(pki.dir),
                                 "--json"])
    assert r.exit_code == 0, r.output
    _half_rolled_back_to(root, "ra")  # the record a kill before its removal leaves
    assert (root / "boot.ipxe").read_bytes() == ENTRY_A
    if then == "repair":
        r = CliRunner().invoke(cli, ["publish", "repair", url, "--pki", str(pki.dir),
                                     "--json"])
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        assert out["action"] == "dropped" and "had finished" in out["detail"], out
        # dropped, but not without a word: the switch went back past rb
        assert "note: release ra is older than rb (their signed manifests" in \
            out["detail"], out
        assert f"make rb live again (trustboot publish rollback {url} rb)" in \
            out["detail"], out
        r = CliRunner().invoke(cli, ["publish", "repair", url, "--pki", str(pki.dir)])
        assert r.exit_code == 0, r.output  # (nothing left to repair: no record)
    else:
        r = resign(pki, url, repair_signer)
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        assert out["previous"] == "ra" and "had finished" in out["repaired"], out
        assert any("ra is older than rb" in w for w in out["warnings"]), out
    assert not (root / SWITCH_JOURNAL).exists()
    assert json.loads((root / ".trustboot-live.json").read_bytes())["entries"][
        "boot.ipxe"]["release"] in ("ra", out.get("release"))


def test_a_finished_switch_forward_is_dropped_without_a_note(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """The negative control of the note above: a publish of rb killed after its live
    record, before removing the switch record, rb newer than ra: dropped, no note."""
    root = tmp_path / "srv"
    url = f"file://{root}/"
    _publish_signed(pki, make_release, root, ("ra", ENTRY_A, ""), ("rb", ENTRY_B, ""))
    _half_rolled_back_to(root, "rb")
    r = CliRunner().invoke(cli, ["publish", "repair", url, "--pki", str(pki.dir), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["action"] == "dropped" and "had finished" in out["detail"], out
    assert "older than" not in out["detail"] and "note" not in out["detail"], out
    assert not (root / SWITCH_JOURNAL).exists()


def _put_back_pair(root: Path, rid: str, record: str) -> None:
    """A writer copies ``rid``'s entry pair over the live one and either deletes the
    live record or rewrites it to name ``rid`` (what `publish rollback` would leave)."""
    for name in ("boot.ipxe", "boot.ipxe.sig"):
        (root / name).write_bytes((root / "releases" / rid / name).read_bytes())
    path = root / ".trustboot-live.json"
    if record == "deleted":
        path.unlink()
        return
    doc = json.loads(path.read_bytes())
    entry = doc["entries"]["boot.ipxe"]
    entry["release"] = rid
    entry["script_sha256"] = hashlib.sha256((root / "boot.ipxe").read_bytes()).hexdigest()
    entry["sig_sha256"] = hashlib.sha256((root / "boot.ipxe.sig").read_bytes()).hexdigest()
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("how", ["lowered", "garbage", "deleted"])
def test_resign_does_not_re_sign_an_old_release_put_back_past_a_forged_newer_one(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, repair_signer: str,
        how: str) -> None:
    """ra and rb signed, rb live. A writer copies ra's pair back, deletes the live record
    and lowers rb's date (or breaks or deletes rb's manifest): ra's signed date was not
    older than any date left, so resign re-signed ra. Without a record, only signed
    dates of every release may show the served one to be the newest: refused (exit 4,
    unrecorded-rollback, the hint naming the rollback), nothing changed."""
    root = tmp_path / "srv"
    url = f"file://{root}/"
    _publish_signed(pki, make_release, root, ("ra", ENTRY_A, ""), ("rb", ENTRY_B, ""))
    _forge_newer(root, "rb", how)
    _put_back_pair(root, "ra", "deleted")
    err = resign_refuses_switch_back(pki, url, repair_signer, root, _served_state)
    assert "ra cannot be shown to be the newest release" in err["message"], err
    assert "release.json of rb" in err["message"], err
    assert f"trustboot publish rollback {url} ra" in err["hint"], err


@pytest.mark.parametrize("how", ["lowered", "garbage", "deleted"])
def test_resign_warns_of_a_release_it_cannot_date_when_the_record_names_the_served(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, repair_signer: str,
        how: str) -> None:
    """As above, the live record rewritten to name ra: byte for byte what `publish
    rollback ra` leaves, so resign goes on re-signing ra (a deliberate rollback must stay
    signed), but it said nothing: rb's forged date hid that ra is older. It now warns
    that rb's date cannot be told, naming rb and the rollback that undoes it."""
    root = tmp_path / "srv"
    url = f"file://{root}/"
    _publish_signed(pki, make_release, root, ("ra", ENTRY_A, ""), ("rb", ENTRY_B, ""))
    _forge_newer(root, "rb", how)
    _put_back_pair(root, "ra", "names-ra")
    r = resign(pki, url, repair_signer)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["previous"] == "ra", out
    warned = [w for w in out["warnings"] if "cannot be shown to be the newest" in w]
    assert warned and "release.json of rb" in warned[0], out["warnings"]
    assert f"trustboot publish rollback {url} ID" in warned[0], warned


def test_resign_does_not_cry_rollback_over_releases_nobody_signed(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, repair_signer: str) -> None:
    """Plain `publish DIR` signs no release.json: r1 and r2 published so, r2 live, its
    live record naming it (the normal state). Every nightly resign warned that r2 "cannot
    be shown to be the newest" and that a rollback made it live, because r1's manifest
    is unsigned: a false alarm each night teaches operators to ignore the real one. A
    manifest never signed is no sign of tampering; one whose signature fails is (above)."""
    root = tmp_path / "srv"
    url = f"file://{root}/"
    for rid, entry in (("r1", ENTRY_A), ("r2", ENTRY_B)):
        _publish_file(pki, make_release({"boot.ipxe": entry}), root, rid)
    for _night in range(2):
        r = resign(pki, url, repair_signer)
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        assert not [w for w in out["warnings"] if "rollback" in w], out["warnings"]


def _publish_signed_via(pki: Pki, make_release: ReleaseFactory, url: str,
                        *releases: tuple[str, bytes, str]) -> None:
    """_publish_signed, to the https origin ``url``."""
    for rid, entry, option in releases:
        r = CliRunner().invoke(cli, ["publish", str(_signed_release(pki, make_release, rid,
                                                                    entry, url)),
                                     url, "--release-id", rid, *origin_args(pki),
                                     *([option] if option else [])])
        assert r.exit_code == 0, r.output


@pytest.mark.slow
def test_a_manifest_signature_listed_but_not_served_is_unread_not_a_failure(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory,
        proxy: tuple[str, ProxyState]) -> None:  # noqa: F811
    """A killed switch forward to rc (newer than ra and rb by their signed manifests);
    the origin lists rb's release.json.sig but does not serve it (404: gone meanwhile,
    or refused). Dating the releases let that read fail the repair (exit 1, "not
    served"), as if the origin were down; what rb's signature would prove cannot be
    told, so rb is a release whose manifest does not read: the switch is not shown to
    go forward and is refused (exit 4, unrecorded-rollback, naming rb), nothing
    changed."""
    url, state = proxy
    _publish_signed_via(pki, make_release, url, ("ra", ENTRY_A, ""), ("rb", ENTRY_B, ""),
                        ("rc", ENTRY_C, "--no-switch"))
    _half_rolled_back_to(nginx.root, "rc")
    before = _served_state(nginx.root)
    state.faults.append(Fault("GET", 404, count=100,
                              path=r".*/releases/rb/release\.json\.sig$"))
    r = CliRunner().invoke(cli, ["publish", "repair", url, *origin_args(pki)])
    assert r.exit_code == 4, r.output
    err = json.loads(r.stderr)
    assert err["rule"] == "unrecorded-rollback", err
    assert "release.json of rb does not read" in err["message"], err
    assert _served_state(nginx.root) == before


@pytest.mark.slow
def test_resign_dates_the_releases_once(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory, repair_signer: str,
        proxy: tuple[str, ProxyState]) -> None:  # noqa: F811
    """A switch to rb that finished before the live record was written (the record
    deleted here): resign's repair dates every release to judge it, then resign's own
    check of the live release dated them all again, one more read of every release's
    release.json.sig per run. They are read once."""
    url, state = proxy
    _publish_signed_via(pki, make_release, url, ("ra", ENTRY_A, ""), ("rb", ENTRY_B, ""))
    _half_rolled_back_to(nginx.root, "rb")
    tamper_live_record(nginx.root, "deleted", "rb")
    state.seen.clear()
    r = resign(pki, url, repair_signer, "--client-cert", "publisher",
               "--client-key-passphrase-file", str(pki.key_pass))
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["previous"] == "rb" and "had finished" in out["repaired"], out
    reads = [p for m, p, _ in state.seen
             if m == "GET" and p.endswith("releases/ra/release.json.sig")]
    assert len(reads) == 1, state.seen


def test_a_manifest_signature_gone_after_its_stat_is_unread_on_a_file_origin(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, repair_signer: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """test_a_manifest_signature_listed_but_not_served_is_unread_not_a_failure on a
    file:// origin: rb's release.json.sig is deleted between the stat that finds it and
    its read. That read was an I/O failure, so resign failed (exit 1, "does not exist on
    the origin") as if the origin were down; as for an HTTPS origin's 404, rb is now a
    release whose manifest does not read: the switch forward to rc is not shown and is
    refused (exit 4, unrecorded-rollback, naming rb), nothing changed."""
    root = tmp_path / "srv"
    url = f"file://{root}/"
    _publish_signed(pki, make_release, root, ("ra", ENTRY_A, ""), ("rb", ENTRY_B, ""),
                    ("rc", ENTRY_C, "--no-switch"))
    _half_rolled_back_to(root, "rc")
    before = _served_state(root)
    key = "releases/rb/release.json.sig"
    stat = FileOrigin.stat

    def vanishing(self: FileOrigin, name: str) -> ObjectStat | None:
        found = stat(self, name)
        if name == key and found is not None:
            (root / key).unlink()  # gone before it is read
        return found

    monkeypatch.setattr(FileOrigin, "stat", vanishing)
    r = resign(pki, url, repair_signer)
    assert r.exit_code == 4, r.output
    err = json.loads(r.stderr)
    assert err["rule"] == "unrecorded-rollback", err
    assert "release.json of rb does not read" in err["message"], err
    assert not (root / key).exists()
    assert _served_state(root) == before
    assert not [p for p in (root / "releases").iterdir() if ".rs-" in p.name]


def _not_before(pki: Pki, signer: str) -> dt.datetime:
    return x509.load_pem_x509_certificate(pki.cert(signer).read_bytes()).not_valid_before_utc


def test_a_signed_date_is_proven_only_where_its_signer_could_sign_it(
        pki: Pki, make_release: ReleaseFactory, repair_signer: str) -> None:
    """signed_date took any date a signer valid now signed: a signer issued now could
    backdate its release (a year before its notBefore) or date it in the future, and
    so win or dodge the "not older" rule of every switch. A date proves something only
    within the signer certificate's own validity (no 12h30m margin: that is for a
    boot client's clock) and not after this clock; the same signature proves its date
    once the clock has reached it."""
    trust = Trust(tuple(load_trust((), pki.dir)))
    start = _not_before(pki, repair_signer)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def dated(created: dt.datetime, at: dt.datetime = now) -> dt.datetime | None:
        r = _signed_release(pki, make_release, "r1", ENTRY_A, "file:///srv/",
                            created=created, signer=repair_signer)
        proven = signed_date((r / "release.json.sig").read_bytes(),
                             (r / "release.json").read_bytes(), "r1", trust=trust,
                             now=at, source="r1")
        if proven is not None:
            assert [s.common_name for s in proven[1]] == [repair_signer], proven
        return proven[0] if proven else None

    assert dated(start - dt.timedelta(days=365)) is None  # backdated a year
    assert dated(start - dt.timedelta(hours=1)) is None  # within iPXE's margin only
    assert dated(start) == start
    assert dated(start + dt.timedelta(hours=1)) == start + dt.timedelta(hours=1)
    assert dated(now) == now
    future = now + dt.timedelta(days=2)  # within the signer's 7 days
    assert dated(future) is None
    assert dated(future, at=future) == future


@pytest.mark.parametrize("how", ["future-target", "backdated-newer"])
def test_repair_does_not_complete_a_switch_back_a_signed_date_cannot_show(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, repair_signer: str,
        how: str) -> None:
    """ra then rb published signed, rb live; a switch back to ra is planted. Its
    signer dated ra in the future (so ra "is newer" than rb), or signed rb with a date
    a year before its certificate existed (so rb "is older" than ra): both dates
    verified with a signer valid now, and the repair completed the rollback to ra. A
    date its signer could not sign proves nothing: the switch is not shown to go
    forward, refused (exit 4, unrecorded-rollback), nothing changed."""
    root = tmp_path / "srv"
    url = f"file://{root}/"
    now = dt.datetime.now(dt.UTC)
    ra_date = now + dt.timedelta(days=2) if how == "future-target" else None
    rb_date = _not_before(pki, repair_signer) - dt.timedelta(days=365) \
        if how == "backdated-newer" else None
    for rid, entry, created in (("ra", ENTRY_A, ra_date), ("rb", ENTRY_B, rb_date)):
        _publish_file(pki, _signed_release(pki, make_release, rid, entry, url,
                                           created=created, signer=repair_signer),
                      root, rid)
    _half_rolled_back_to(root, "ra")
    before = _served_state(root)
    r = CliRunner().invoke(cli, ["publish", "repair", url, "--pki", str(pki.dir), "--json"])
    assert r.exit_code == 4, r.output
    err = json.loads(r.stderr)
    assert err["rule"] == "unrecorded-rollback", err
    assert "release ra cannot be shown to be newer than rb" in err["message"], err
    which = "ra" if how == "future-target" else "rb"
    assert f"the release.json of {which} has no signature that verifies or no date its " \
        "signer could sign" in err["message"], err
    assert _served_state(root) == before


def test_a_release_is_dated_from_the_manifest_bytes_already_read(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """release_date (a switch's target, resign's live release) read release.json a
    second time to judge its .sig, besides the read the manifest was parsed from, and
    ReleaseDates repeated its logic. One function now dates both from the bytes already
    read: one stat and one capped read of the .sig, nothing else, and what is judged is
    what was parsed (release.json replaced on the origin since changes nothing); a .sig
    listed but gone is refuted for the target, unread among the others."""
    root = tmp_path / "srv"
    _publish_signed(pki, make_release, root, ("ra", ENTRY_A, ""), ("rb", ENTRY_B, ""))
    trust = Trust(tuple(load_trust((), pki.dir)))
    now = dt.datetime.now(dt.UTC)
    data = (root / "releases/rb/release.json").read_bytes()
    manifest = parse_manifest(data, source="rb")
    (root / "releases/rb/release.json").write_bytes(b"{garbage")
    seen: list[tuple[str, str]] = []
    stat, read = FileOrigin.stat, FileOrigin.read

    def counted_stat(self: FileOrigin, key: str) -> ObjectStat | None:
        seen.append(("stat", key))
        return stat(self, key)

    def counted_read(self: FileOrigin, key: str, *, max_size: int) -> Iterator[bytes]:
        seen.append(("read", key))
        return read(self, key, max_size=max_size)

    monkeypatch.setattr(FileOrigin, "stat", counted_stat)
    monkeypatch.setattr(FileOrigin, "read", counted_read)
    with open_origin(f"file://{root}/", OriginOptions()) as origin:
        dated = release_date(origin, manifest, data, trust=trust, now=now, reader=None)
        assert dated.proven and dated.created == manifest.created, dated
        assert seen == [("stat", "releases/rb/release.json.sig"),
                        ("read", "releases/rb/release.json.sig")], seen
        others, unread = ReleaseDates(origin, trust=trust, now=now,
                                      reader=None).besides("none")
        assert [(d.release, d.proven) for d in others] == [("ra", True)]
        assert unread == ["rb"]  # its release.json does not parse now
        # the target as the caller read it, whatever the origin serves for it since
        target, others, unread = ReleaseDates(origin, trust=trust, now=now,
                                              reader=None).around(manifest, data)
        assert target.proven and target.created == manifest.created, target
        assert [(d.release, d.proven) for d in others] == [("ra", True)] and unread == []

        def vanishing(self: FileOrigin, key: str) -> ObjectStat | None:
            found = stat(self, key)
            if found is not None and key.endswith(".sig"):
                (root / key).unlink()  # gone between its stat and its read
            return found

        monkeypatch.setattr(FileOrigin, "stat", vanishing)
        gone = release_date(origin, manifest, data, trust=trust, now=now, reader=None)
        assert not gone.proven and gone.refuted, gone


@pytest.mark.parametrize("record", ["finished-back", "finished-unrecorded"])
def test_repair_dates_the_switch_target_once(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, record: str) -> None:
    """A finished switch whose record a kill left: back to ra (the live record naming
    it, repair's note), or forward to rb with the live record deleted (repair's check
    before it writes one). The target was dated twice per run: by itself, then again
    among every release before being filtered out, one more read of its
    release.json.sig. Now once; the other release's, once too."""
    root = tmp_path / "srv"
    url = f"file://{root}/"
    _publish_signed(pki, make_release, root, ("ra", ENTRY_A, ""), ("rb", ENTRY_B, ""))
    if record == "finished-back":
        r = CliRunner().invoke(cli, ["publish", "rollback", url, "ra", "--pki",
                                     str(pki.dir), "--json"])
        assert r.exit_code == 0, r.output
        target, other = "ra", "rb"
    else:
        target, other = "rb", "ra"
    _half_rolled_back_to(root, target)
    if record == "finished-unrecorded":
        tamper_live_record(root, "deleted", target)
    reads: list[str] = []
    read = FileOrigin.read

    def counted(self: FileOrigin, key: str, *, max_size: int) -> Iterator[bytes]:
        reads.append(key)
        return read(self, key, max_size=max_size)

    monkeypatch.setattr(FileOrigin, "read", counted)
    r = CliRunner().invoke(cli, ["publish", "repair", url, "--pki", str(pki.dir), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["action"] == "dropped" and "had finished" in out["detail"], out
    assert ("older than rb" in out["detail"]) is (record == "finished-back"), out
    for rid in (target, other):
        key = f"releases/{rid}/release.json.sig"
        assert reads.count(key) == 1, (key, reads)
