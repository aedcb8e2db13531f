"""`trustboot resign`: re-sign the live release with a fresh signer, as a new release id.

file:// (in-process and SIGKILLed at every commit point) and the real nginx WebDAV origin
over TLS. What must hold: the live release is verified before anything changes (tampering
-> exit 4, nothing written), only signatures, the manifest and the release directory named
in scripts differ, the old release stays, a rerun with the same signer changes nothing, and
a killed run leaves the old release live and is completed by the next run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.publish.conftest import (
    LIVE_RECORD_TAMPERING,
    Nginx,
    Pki,
    ReleaseFactory,
    anon_get,
    resign,
    resign_refuses_switch_back,
    rewind_resign,
    run_cli,
    tamper_live_record,
)
from trustboot.cli.main import cli

REPO = Path(__file__).resolve().parents[2]
KERNEL = os.urandom(200_000)
INITRD = os.urandom(300_000)


def entry(release: str, base: str = "https://boot.example.net/") -> bytes:
    return (f"#!ipxe\n# trustboot release {release}\n"
            f"kernel {base}releases/{release}/vmlinuz console=ttyS0 || goto failed\n"
            f"imgverify vmlinuz {base}releases/{release}/vmlinuz.sig --signer boot-signer "
            "|| goto failed\n"
            f"initrd {base}releases/{release}/initrd.img || goto failed\n"
            "boot || goto failed\n:failed\nshell\n").encode()


def publish(pki: Pki, directory: Path, origin: str, release: str, *extra: str) -> Result:
    return CliRunner().invoke(cli, [
        "publish", str(directory), origin, "--release-id", release, "--pki", str(pki.dir),
        "--json", *extra])


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def _publish_r2(pki: Pki, url: str, make_release: ReleaseFactory, *extra: str) -> None:
    """Release r2 (entry script naming releases/r2/) published to ``url`` over r1."""
    rel = make_release({"boot.ipxe": entry("r2"), "vmlinuz": KERNEL, "initrd.img": INITRD})
    res = publish(pki, rel, url, "r2", *extra)
    assert res.exit_code == 0, res.output


def _put_r1_back_over_live_r2(pki: Pki, url: str, root: Path,
                              make_release: ReleaseFactory) -> None:
    """r2 made live, then r1's entry pair copied back over the entry without trustboot
    (by hand, or by a hostile origin writer): the live record still names r2."""
    _publish_r2(pki, url, make_release)
    for name in ("boot.ipxe", "boot.ipxe.sig"):
        (root / name).write_bytes((root / "releases" / "r1" / name).read_bytes())


def _rollback_to_r1_then_resign(pki: Pki, url: str, signer: str) -> None:
    """The way out resign's refusal names: `publish rollback` records r1 as trustboot's
    own switch, and the next resign re-signs r1."""
    rb = CliRunner().invoke(cli, ["publish", "rollback", url, "r1", "--pki", str(pki.dir)])
    assert rb.exit_code == 0, rb.output
    res = resign(pki, url, signer)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["previous"] == "r1"


def _plant_switch_back_to_r1(root: Path) -> None:
    """A switch record naming r1 and r1's signature beside the live script, as a switch
    back killed half way would leave (an origin writer's doing here)."""
    from trustboot.publish.pipeline import SWITCH_JOURNAL

    (root / SWITCH_JOURNAL).write_text(json.dumps({"version": 1, "release": "r1",
                                                   "entry_path": "boot.ipxe"}))
    (root / "boot.ipxe.sig").write_bytes((root / "releases/r1/boot.ipxe.sig").read_bytes())


@pytest.fixture(scope="module")
def fresh_signer(pki: Pki) -> str:
    """A short-lived signer (firmware here trusts the root; no --signer name)."""
    pki.issue("codesign", "fresh-7d", "--days", "7")
    return "fresh-7d"


@pytest.fixture
def live(pki: Pki, tmp_path: Path, make_release: ReleaseFactory) -> tuple[str, Path]:
    """file:// origin serving release r1 (entry script naming releases/r1/)."""
    origin = tmp_path / "origin"
    origin.mkdir()
    rel = make_release({"boot.ipxe": entry("r1"), "vmlinuz": KERNEL, "initrd.img": INITRD})
    res = publish(pki, rel, f"file://{origin}", "r1")
    assert res.exit_code == 0, res.output
    return f"file://{origin}", origin


def test_resign_file_origin_only_sigs_manifest_change(pki: Pki, live: tuple[str, Path],
                                                      fresh_signer: str) -> None:
    url, root = live
    before = snapshot(root)
    res = resign(pki, url, fresh_signer)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    new = out["release"]
    assert out["changed"] and out["switched"] and out["previous"] == "r1"
    assert new.startswith("r1.rs-") and len(new) == len("r1.rs-") + 12
    assert out["rewritten"] == ["boot.ipxe"]
    assert sorted(out["signed"]) == ["boot.ipxe", "initrd.img", "vmlinuz"]
    assert sorted(out["copied"]) == ["initrd.img", "vmlinuz"]
    assert out["signer"]["subject"].startswith("CN=fresh-7d")
    # a 7-day signer: replay window = about 7 days + 12h30m from now
    window = out["replay_window"]
    assert window["margin_seconds"] == 45000
    assert 7 * 86400 + 45000 - 120 < window["window_seconds"] <= 7 * 86400 + 45000
    after = snapshot(root)
    # the old release is untouched (immutable), byte for byte
    assert {k: v for k, v in after.items() if k.startswith("releases/r1/")} == \
        {k: v for k, v in before.items() if k.startswith("releases/r1/")}
    old, fresh = "releases/r1/", f"releases/{new}/"
    # data objects identical, every .sig and the manifest different, the entry script
    # differs exactly by its release directory
    for name in ("vmlinuz", "initrd.img"):
        assert after[fresh + name] == before[old + name]
    for name in ("vmlinuz.sig", "initrd.img.sig", "boot.ipxe.sig", "release.json"):
        assert after[fresh + name] != before[old + name]
    assert after[fresh + "boot.ipxe"] == before[old + "boot.ipxe"].replace(
        b"releases/r1/", f"releases/{new}/".encode())
    assert b"# trustboot release r1\n" in after[fresh + "boot.ipxe"]
    assert (fresh + "release.json.sig") in after
    assert after["boot.ipxe"] == after[fresh + "boot.ipxe"]
    assert after["boot.ipxe.sig"] == after[fresh + "boot.ipxe.sig"]
    manifest = json.loads(after[fresh + "release.json"])
    assert manifest["release"] == new and manifest["signer"]["subject"].startswith(
        "CN=fresh-7d")
    assert {f["name"] for f in manifest["files"]} == {
        f["name"] for f in json.loads(before[old + "release.json"])["files"]}
    # every new signature verifies as iPXE would (independent of resign's own check)
    for name in ("vmlinuz", "initrd.img", "boot.ipxe"):
        run_cli("verify", str(root / fresh / name), "--pki", str(pki.dir), "--signer",
                "fresh-7d")
    # publish list shows both, the new one live, with its signer and expiry as its signed
    # manifest proves them (r1's release.json, published from a directory, has no .sig:
    # its entry script's signature tells who signed r1)
    listed = CliRunner().invoke(cli, ["publish", "list", url, "--pki", str(pki.dir),
                                      "--json"])
    infos = {i["id"]: i for i in json.loads(listed.output)}
    assert infos[new]["live"] and not infos["r1"]["live"] and infos[new]["verified"]
    assert infos[new]["signer"].startswith("CN=fresh-7d")
    expiry = dt.datetime.fromisoformat(infos[new]["expiry"])
    assert expiry < dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
    assert infos[new]["verified_by"] == "manifest"
    assert infos["r1"]["verified_by"] == "entry"
    assert not infos["r1"]["signer"].startswith("CN=fresh-7d")

    # idempotent: the same signer again changes nothing (not even a timestamp)
    again = resign(pki, url, fresh_signer)
    assert again.exit_code == 0, again.output
    out2 = json.loads(again.output)
    assert not out2["changed"] and out2["release"] == new and not out2["switched"]
    assert snapshot(root) == after
    # the text output says what happened and the replay window
    text = CliRunner().invoke(cli, ["resign", url, "--key", fresh_signer, "--pki",
                                    str(pki.dir), "--passphrase-file", str(pki.key_pass)])
    assert text.exit_code == 0, text.output
    assert "nothing changed" in text.output and "replay window 7d 12h" in text.output
    # and resigning the re-signed release with yet another signer does not grow the id
    res3 = resign(pki, url, "boot-signer")
    assert res3.exit_code == 0, res3.output
    assert json.loads(res3.output)["release"].count(".rs-") == 1


@pytest.mark.parametrize("where", ["releases/r1/vmlinuz", "releases/r1/boot.ipxe.sig",
                                   "releases/r1/release.json.sig"])
def test_tampered_live_release_refused_nothing_changed(pki: Pki, live: tuple[str, Path],
                                                       fresh_signer: str, where: str) -> None:
    url, root = live
    if where.endswith("release.json.sig"):
        # the release made by `publish` has none: a forged one must still be judged
        (root / where).write_bytes((root / "releases/r1/vmlinuz.sig").read_bytes())
    else:
        data = bytearray((root / where).read_bytes())
        data[len(data) // 2] ^= 1  # same size: only the digest can tell
        (root / where).write_bytes(bytes(data))
    before = snapshot(root)
    res = resign(pki, url, fresh_signer)
    assert res.exit_code == 4, res.output
    assert ("not served as published" in res.output or "signature does not verify"
            in res.output), res.output
    assert snapshot(root) == before
    assert not any(k.startswith("releases/r1.rs-") for k in snapshot(root))


def test_resign_in_a_tmpdir_others_can_write_is_refused(
        pki: Pki, live: tuple[str, Path], fresh_signer: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """resign writes the new release.json into its work directory and signs the file
    there: in a TMPDIR others can write without the sticky bit they could move the
    directory away and swap that file (a script, a kernel of theirs) before it is signed,
    and keep the signature it gets beside it. Refused (exit 3) before anything is created
    there or changed on the origin; the same resign runs in a sticky one."""
    import tempfile

    url, root = live
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    before = snapshot(root)
    res = resign(pki, url, fresh_signer)
    assert res.exit_code == 3, res.output
    assert f"{shared} above it is writable by other users" in res.output, res.output
    assert list(shared.iterdir()) == [] and snapshot(root) == before
    shared.chmod(0o1777)
    assert resign(pki, url, fresh_signer).exit_code == 0


def test_short_lived_or_wrong_signer_refused(pki: Pki, live: tuple[str, Path]) -> None:
    url, root = live
    before = snapshot(root)
    pki.issue("codesign", "short-1d", "--days", "1")
    res = CliRunner().invoke(cli, ["resign", url, "--key", "short-1d", "--pki",
                                   str(pki.dir), "--passphrase-file", str(pki.key_pass),
                                   "--min-lifetime", "3d"])
    assert res.exit_code == 4, res.output
    assert "signer-lifetime" in res.output and "trustboot ca renew short-1d" in res.output
    # the renewal the hint names must itself pass the --min-lifetime asked for
    res = CliRunner().invoke(cli, ["resign", url, "--key", "short-1d", "--pki",
                                   str(pki.dir), "--passphrase-file", str(pki.key_pass),
                                   "--min-lifetime", "10d"])
    assert res.exit_code == 4, res.output
    assert "trustboot ca renew short-1d --days 11 " in res.output, res.output
    # a signer the firmware's --signer does not match: refused before any upload
    res = resign(pki, url, "other-signer", "--signer", "boot-signer")
    assert res.exit_code == 4, res.output
    assert snapshot(root) == before
    # no live release: a clear configuration error
    empty = root.parent / "empty"
    empty.mkdir()
    res = resign(pki, f"file://{empty}", "boot-signer")
    assert res.exit_code == 3, res.output
    bad = CliRunner().invoke(cli, ["resign", url, "--key", "boot-signer", "--pki",
                                   str(pki.dir), "--min-lifetime", "soon"])
    assert bad.exit_code == 3 and "not a duration" in bad.output


def test_a_typed_passphrase_option_wins_over_the_pipelines_variable(
        pki: Pki, live: tuple[str, Path], fresh_signer: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """resign shares sign's TRUSTBOOT_SIGN_PASSPHRASE_FILE/_ENV: the one typed wins over
    the other's variable; both variables set is an error naming them."""
    url, _root = live
    monkeypatch.setenv("TRUSTBOOT_SIGN_PASSPHRASE_ENV", "TB_NO_SUCH_VARIABLE")
    res = resign(pki, url, fresh_signer)  # --passphrase-file on the command line
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["changed"]
    monkeypatch.setenv("TRUSTBOOT_SIGN_PASSPHRASE_FILE", str(pki.key_pass))
    res = CliRunner().invoke(cli, ["resign", url, "--key", fresh_signer, "--pki",
                                   str(pki.dir), "--json"])
    assert res.exit_code == 3, res.output
    doc = json.loads(res.stderr)
    assert "TRUSTBOOT_SIGN_PASSPHRASE_FILE and TRUSTBOOT_SIGN_PASSPHRASE_ENV" in doc["message"]
    assert "unset" in doc["hint"]


def test_a_file_key_without_its_certificate_names_resigns_options(
        pki: Pki, live: tuple[str, Path], fresh_signer: str) -> None:
    """The hint names options resign has (--signing-cert/--signing-chain), not sign's old
    --cert (a CERT= certificate here) and --chain (no such option); following it works."""
    url, _root = live
    base = ["resign", url, "--key", f"file:{pki.key(fresh_signer)}", "--pki", str(pki.dir),
            "--passphrase-file", str(pki.key_pass)]
    res = CliRunner().invoke(cli, [*base, "--json"])
    assert res.exit_code == 3, res.output
    doc = json.loads(res.stderr)
    assert "needs --signing-cert" in doc["message"]
    assert "--signing-cert FILE and --signing-chain FILE" in doc["hint"]
    res = CliRunner().invoke(cli, [*base, "--signing-cert", str(pki.cert(fresh_signer)),
                                   "--signing-chain", str(pki.dir / "chain.pem"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["changed"]


def test_already_signed_is_decided_by_the_signatures_not_the_manifest(
        pki: Pki, live: tuple[str, Path], fresh_signer: str) -> None:
    """A manifest (unsigned here, as `publish` makes it) claiming the fresh signer's serial
    while its signatures are boot-signer's is re-signed, not called done."""
    from cryptography import x509

    url, root = live
    cert = x509.load_pem_x509_certificate(pki.cert(fresh_signer).read_bytes())
    serial = f"{cert.serial_number:x}"
    path = root / "releases/r1/release.json"
    doc = json.loads(path.read_bytes())
    assert doc["signer"]["serial"] != serial
    doc["signer"]["serial"] = serial
    path.write_text(json.dumps(doc))
    res = resign(pki, url, fresh_signer)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["changed"] and out["switched"] and out["release"].startswith("r1.rs-")
    run_cli("verify", str(root / "boot.ipxe"), "--pki", str(pki.dir), "--signer", fresh_signer)


def test_resign_repairs_an_interrupted_switch_and_removes_stale_temps(
        pki: Pki, live: tuple[str, Path], fresh_signer: str,
        make_release: ReleaseFactory) -> None:
    from trustboot.publish.pipeline import SWITCH_JOURNAL

    url, root = live
    _publish_r2(pki, url, make_release, "--no-switch")
    # signed manifests (as `trustboot release` makes them) show r2 is the newer: resign,
    # unattended, completes only a switch shown to go forward
    for rid in ("r1", "r2"):
        pki.sign([root / "releases" / rid / "release.json"], root / "releases" / rid)
    # a switch to r2 killed between its two replacements: r2's signature, r1's script
    r2 = json.loads((root / "releases/r2/release.json").read_bytes())
    sig = next(f for f in r2["files"] if f["name"] == "boot.ipxe.sig")
    script = next(f for f in r2["files"] if f["name"] == "boot.ipxe")
    (root / SWITCH_JOURNAL).write_text(json.dumps({
        "version": 1, "release": "r2", "entry_path": "boot.ipxe",
        "script_sha256": script["sha256"], "sig_sha256": sig["sha256"]}))
    (root / "boot.ipxe.sig").write_bytes((root / "releases/r2/boot.ipxe.sig").read_bytes())
    stale = root / "releases/r1/.tb-tmp.4242.vmlinuz"
    stale.write_bytes(b"half an upload")
    os.utime(stale, (1, 1))
    res = resign(pki, url, fresh_signer)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert "completed the interrupted switch" in out["repaired"]
    assert out["removed_temps"] == ["releases/r1/.tb-tmp.4242.vmlinuz"]
    assert not stale.exists() and not (root / SWITCH_JOURNAL).exists()
    assert out["previous"] == "r2" and out["release"].startswith("r2.rs-")


def test_entry_without_its_release_directory_is_warned(
        pki: Pki, tmp_path: Path, fresh_signer: str, make_release: ReleaseFactory) -> None:
    origin = tmp_path / "origin-relative"
    origin.mkdir()
    script = (b"#!ipxe\nkernel vmlinuz || goto failed\n"
              b"imgverify vmlinuz vmlinuz.sig || goto failed\nboot || goto failed\n"
              b":failed\nshell\n")
    rel = make_release({"boot.ipxe": script, "vmlinuz": KERNEL})
    assert publish(pki, rel, f"file://{origin}", "r1").exit_code == 0
    res = resign(pki, f"file://{origin}", fresh_signer)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["changed"] and out["rewritten"] == []
    assert any("names no releases/r1/" in w for w in out["warnings"]), out["warnings"]
    # and in the text output
    text = CliRunner().invoke(cli, ["resign", f"file://{origin}", "--key", "boot-signer",
                                    "--pki", str(pki.dir), "--passphrase-file",
                                    str(pki.key_pass)])
    assert text.exit_code == 0, text.output
    assert "warning: the entry script boot.ipxe names no releases/" in text.output


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, str(REPO / "tests/ca/crashpoint.py"), *args],
                          env=env, capture_output=True, timeout=120)


@pytest.mark.slow
def test_sigkill_at_every_commit_point_then_rerun(pki: Pki, live: tuple[str, Path],
                                                  fresh_signer: str, tmp_path: Path) -> None:
    url, root = live
    old_entry = (root / "boot.ipxe").read_bytes()
    args = ("resign", url, "--key", fresh_signer, "--pki", str(pki.dir),
            "--passphrase-file", str(pki.key_pass), "--json")
    # TMPDIR: the work directory a killed run cannot remove stays in tmp_path
    env = dict(os.environ, PYTHONPATH=str(REPO), CRASH_COUNT_FILE=str(tmp_path / "count"),
               TMPDIR=str(tmp_path))
    # count the commit points of a full run on a copy of the origin
    import shutil

    shutil.copytree(root, tmp_path / "probe")
    probe = _cli(*(a if a != url else f"file://{tmp_path / 'probe'}" for a in args), env=env)
    assert probe.returncode == 0, probe.stderr.decode()
    points = int((tmp_path / "count").read_text())
    assert points > 5
    del env["CRASH_COUNT_FILE"]
    for n in range(1, points + 1, max(1, points // 8)):
        killed = _cli(*args, env=env | {"CRASH_AT": str(n)})
        assert killed.returncode == -9, (n, killed.stderr.decode())
        entry_now = (root / "boot.ipxe").read_bytes()
        if entry_now != old_entry:
            break  # the switch happened: the run was past its last check
        # the old release is still live and verifies
        run_cli("verify", str(root / "boot.ipxe"), "--pki", str(pki.dir))
    done = _cli(*args, env=env)
    assert done.returncode == 0, done.stderr.decode()
    out = json.loads(done.stdout)
    assert out["release"].startswith("r1.rs-")
    assert (root / "boot.ipxe").read_bytes() == (root / "releases" / out["release"] /
                                                 "boot.ipxe").read_bytes()
    run_cli("verify", str(root / "boot.ipxe"), "--pki", str(pki.dir))
    # and once more: nothing left to do
    again = _cli(*args, env=env)
    assert again.returncode == 0 and not json.loads(again.stdout)["changed"]


def test_resign_on_nginx_webdav(pki: Pki, nginx: Nginx, make_release: ReleaseFactory,
                                fresh_signer: str) -> None:
    origin = ("--client-cert", "publisher", "--client-key-passphrase-file",
              str(pki.key_pass))
    rel = make_release({"boot.ipxe": entry("n1", nginx.url), "vmlinuz": KERNEL,
                        "initrd.img": INITRD})
    res = publish(pki, rel, nginx.url, "n1", *origin)
    assert res.exit_code == 0, res.output
    before = snapshot(nginx.root)
    # tampering on the origin (same size) is found by the read-back over HTTPS: nothing
    # changes
    kernel = nginx.root / "releases/n1/vmlinuz"
    tampered = bytes([KERNEL[0] ^ 0xFF]) + KERNEL[1:]  # a fixed byte could equal the random one
    kernel.write_bytes(tampered)
    res = resign(pki, nginx.url, fresh_signer, *origin)
    assert res.exit_code == 4, res.output
    assert snapshot(nginx.root) == {**before, "releases/n1/vmlinuz": tampered}
    kernel.write_bytes(KERNEL)
    res = resign(pki, nginx.url, fresh_signer, *origin)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    new = out["release"]
    served = anon_get(nginx.url + "boot.ipxe", pki).content
    assert served == entry("n1", nginx.url).replace(b"releases/n1/",
                                                    f"releases/{new}/".encode())
    assert anon_get(f"{nginx.url}releases/{new}/vmlinuz", pki).content == KERNEL
    assert anon_get(f"{nginx.url}releases/{new}/vmlinuz.sig", pki).content != \
        (rel / "vmlinuz.sig").read_bytes()
    assert anon_get(f"{nginx.url}releases/n1/vmlinuz.sig", pki).content == \
        (rel / "vmlinuz.sig").read_bytes()
    # origin check: the live entry verifies, its signer's window is reported, and
    # --fail-within fails the cron job when the signer runs out within that many days
    check = CliRunner().invoke(cli, ["origin", "check", nginx.url + "boot.ipxe", "--pki",
                                     str(pki.dir), "--json"])
    assert check.exit_code == 0, check.output
    report = json.loads(check.output)
    assert report["replay_window"]["window_seconds"] > 6 * 86400
    assert any("stops verifying" in w for w in report["warnings"])  # within 30 days
    failing = CliRunner().invoke(cli, ["origin", "check", nginx.url + "boot.ipxe", "--pki",
                                       str(pki.dir), "--fail-within", "8"])
    assert failing.exit_code == 4 and "signer-expiring" in failing.output
    # the hint is the command to run, for this origin and signer, long enough to pass
    assert (f"trustboot ca renew {fresh_signer} --days 9, then trustboot resign "
            f"{nginx.url} --key {fresh_signer}") in failing.output, failing.output
    passing = CliRunner().invoke(cli, ["origin", "check", nginx.url + "boot.ipxe", "--pki",
                                       str(pki.dir), "--fail-within", "6"])
    assert passing.exit_code == 0, passing.output
    again = resign(pki, nginx.url, fresh_signer, *origin)
    assert again.exit_code == 0 and not json.loads(again.output)["changed"]
    assert hashlib.sha256(anon_get(nginx.url + "boot.ipxe", pki).content).digest() == \
        hashlib.sha256(served).digest()


def test_systemd_units_run_against_nginx(pki: Pki, nginx: Nginx, make_release: ReleaseFactory,
                                         tmp_path: Path) -> None:
    """docs/systemd/trustboot-resign.service: its ExecStart lines, in order, as systemd
    would run them (no shell; ${VAR} from Environment=, %d the credentials directory)."""
    import shlex
    import shutil

    unit = (REPO / "docs/systemd/trustboot-resign.service").read_text().splitlines()
    timer = (REPO / "docs/systemd/trustboot-resign.timer").read_text()
    assert "OnCalendar=" in timer and "Persistent=true" in timer
    env: dict[str, str] = {}
    creds: dict[str, str] = {}
    execs: list[str] = []
    for line in unit:
        key, _, value = line.partition("=")
        if key == "Environment":
            name, _, val = value.partition("=")
            env[name] = val
        elif key == "LoadCredential":
            name, _, path = value.partition(":")
            creds[name] = path
        elif key == "ExecStart":
            execs.append(value)
    assert set(creds) == {"ca-pass", "signer-pass", "publisher-pass"}
    assert [shlex.split(e)[1:3] for e in execs] == [["ca", "renew"], ["resign", "${ORIGIN}"],
                                                    ["publish", "prune"], ["origin", "check"]]
    # a copy of the CA (the renew changes it), the credentials as systemd would place them
    home = tmp_path / "pki"
    shutil.copytree(pki.dir, home)
    creddir = tmp_path / "credentials"
    creddir.mkdir(mode=0o700)
    for name, src in {"ca-pass": pki.secrets / "ca.pass", "signer-pass": pki.key_pass,
                      "publisher-pass": pki.key_pass}.items():
        shutil.copyfile(src, creddir / name)
        (creddir / name).chmod(0o400)
    env |= {"TRUSTBOOT_PKI": str(home), "ORIGIN": nginx.url}
    rel = make_release({"boot.ipxe": entry("s1", nginx.url), "vmlinuz": KERNEL})
    res = publish(pki, rel, nginx.url, "s1", "--client-cert", "publisher",
                  "--client-key-passphrase-file", str(pki.key_pass))
    assert res.exit_code == 0, res.output
    run_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8",
               "PYTHONPATH": str(REPO),
               "TRUSTBOOT_PUBLISH_CACHE": str(tmp_path / "cache.json")} | env
    for line in execs:
        expanded = line.replace("%d", str(creddir))
        for name, value in env.items():
            expanded = expanded.replace("${" + name + "}", value)
        argv = shlex.split(expanded)
        assert argv[0] == "/usr/local/bin/trustboot"
        argv = [sys.executable, "-m", "trustboot", *argv[1:]]
        done = subprocess.run(argv, env=run_env, capture_output=True, timeout=300,
                              cwd=tmp_path)
        assert done.returncode == 0, (argv, done.stdout.decode(), done.stderr.decode())
    served = anon_get(nginx.url + "boot.ipxe", pki).content
    assert b"releases/s1.rs-" in served
    listed = CliRunner().invoke(cli, ["publish", "list", nginx.url, "--pki", str(home),
                                      "--client-cert", "publisher",
                                      "--client-key-passphrase-file", str(pki.key_pass),
                                      "--json"])
    infos = {i["id"]: i for i in json.loads(listed.output)}
    live = [i for i in infos.values() if i["live"]]
    assert len(live) == 1 and live[0]["id"].startswith("s1.rs-") and "s1" in infos


def test_resign_id_and_rewrite_rules() -> None:
    from trustboot.publish.manifest import check_release_id
    from trustboot.publish.resign import _rewrite, resign_id

    fp = "ab" * 32
    assert resign_id("2026.11.25", fp) == "2026.11.25.rs-" + "ab" * 6
    # re-signing a re-signed release replaces the suffix instead of growing the id
    assert resign_id("2026.11.25.rs-0123456789ab", fp) == "2026.11.25.rs-" + "ab" * 6
    long = resign_id("x" * 128, fp)
    assert len(long) == 128 and check_release_id(long)
    script = (b"#!ipxe\n# release r1\nkernel https://h/releases/r1/k\n"
              b"initrd https://h/myreleases/r1/i\ninitrd https://h/releases/r10/i\n"
              b"chain https://h/releases/other/x.ipxe\n")
    out, others = _rewrite(script, "r1", "r1.rs-x")
    assert out == script.replace(b"/releases/r1/k", b"/releases/r1.rs-x/k")
    assert others == {"r10", "other"}


@pytest.mark.slow
def test_sigkill_mid_resign_on_nginx_then_rerun(pki: Pki, nginx: Nginx,
                                                make_release: ReleaseFactory,
                                                tmp_path: Path) -> None:
    import signal
    import time

    origin = ["--client-cert", "publisher", "--client-key-passphrase-file", str(pki.key_pass)]
    big = os.urandom(6 << 20)
    rel = make_release({"boot.ipxe": entry("k1", nginx.url), "vmlinuz": big,
                        "initrd.img": big[::-1]})
    assert publish(pki, rel, nginx.url, "k1", *origin).exit_code == 0
    old_entry = anon_get(nginx.url + "boot.ipxe", pki).content
    pki.issue("codesign", "fresh-kill", "--days", "7")
    argv = [sys.executable, "-m", "trustboot", "resign", nginx.url, "--key", "fresh-kill",
            "--pki", str(pki.dir), "--passphrase-file", str(pki.key_pass), "--json",
            "--jobs", "2", *origin]
    # TMPDIR: the work directories killed runs cannot remove stay in tmp_path
    env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(tmp_path))
    # a resign of this release takes about 1.5 s here: kills land before, during, after
    for delay in (0.6, 0.8, 1.0, 1.2, 1.5):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        served = anon_get(nginx.url + "boot.ipxe", pki).content
        if served != old_entry:
            assert b"releases/k1.rs-" in served  # switched: the run had finished its checks
            break
        # the old release is still live, whole, and its entry verifies as iPXE would
        check = CliRunner().invoke(cli, ["origin", "check", nginx.url + "boot.ipxe",
                                         "--pki", str(pki.dir)])
        assert check.exit_code == 0, check.output
    # the killed runs' work directories (and one like them, should every kill have come
    # before its run made one), an hour old by now: the next resign removes them
    import tempfile

    left = [*tmp_path.glob("trustboot-resign-*"),
            Path(tempfile.mkdtemp(prefix="trustboot-resign-", dir=tmp_path))]
    for path in left:
        os.utime(path, (time.time() - 7200,) * 2)
    done = subprocess.run(argv, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    assert list(tmp_path.glob("trustboot-resign-*")) == []
    out = json.loads(done.stdout)
    assert out["release"].startswith("k1.rs-")
    served = anon_get(nginx.url + "boot.ipxe", pki).content
    assert served == old_entry.replace(b"releases/k1/", f"releases/{out['release']}/".encode())
    check = CliRunner().invoke(cli, ["origin", "check", nginx.url + "boot.ipxe", "--pki",
                                     str(pki.dir), "--json"])
    assert check.exit_code == 0, check.output
    assert json.loads(check.output)["signers"][0]["common_name"] == "fresh-kill"


FORGED = "f0" * 32  # the fingerprint of a root the fleet's firmware does not trust


def test_claims_of_an_unsigned_manifest_are_not_signed_by_resign(
        pki: Pki, live: tuple[str, Path], fresh_signer: str) -> None:
    """A live release.json without a signature (publish makes them; or its .sig was
    deleted) is only a claim. Its files are proved by the read-back, but its iPXE build
    record (what the fleet's firmware trusts: the evidence `ca rotate root promote
    --from-origin` accepts from a SIGNED manifest) and ca_sha256 (what audit expects of
    boot servers) are not: resign must not sign them into the new manifest."""
    url, root = live
    path = root / "releases/r1/release.json"
    doc = json.loads(path.read_bytes())
    honest_ca = doc["ca_sha256"]
    assert honest_ca and not (root / "releases/r1/release.json.sig").exists()
    doc["ipxe"] = {"trust": [{"sha256": FORGED}], "outputs": []}
    doc["ca_sha256"] = "e1" * 32
    path.write_text(json.dumps(doc))
    res = resign(pki, url, fresh_signer)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    new = json.loads((root / f"releases/{out['release']}/release.json").read_bytes())
    assert (root / f"releases/{out['release']}/release.json.sig").exists()
    assert new["ipxe"] is None and new["ca_sha256"] == honest_ca
    assert any("not signed" in w and "build record" in w for w in out["warnings"]), out


def test_a_planted_resume_manifest_is_not_signed(
        pki: Pki, live: tuple[str, Path], fresh_signer: str) -> None:
    """The re-signed id is predictable (the signer's certificate is public): an origin
    writer can plant releases/<id>/release.json, same files and signer serial as a real
    interrupted run, but with a forged build record and no .sig. A resume must not sign
    it."""
    url, root = live
    record = (root / ".trustboot-live.json").read_bytes()
    first = resign(pki, url, fresh_signer)
    assert first.exit_code == 0, first.output
    new_id = json.loads(first.output)["release"]
    # back to r1, as if the first run had died before its manifest was signed (before
    # the switch, so before the live record named the new id too)
    new_dir, doc = rewind_resign(root, record, new_id)
    doc["ipxe"] = {"trust": [{"sha256": FORGED}], "outputs": []}
    (new_dir / "release.json").write_text(json.dumps(doc))
    res = resign(pki, url, fresh_signer)
    assert res.exit_code == 3, res.output
    assert "already exists" in res.output
    assert not (new_dir / "release.json.sig").exists()
    assert (root / "boot.ipxe").read_bytes() == (root / "releases/r1/boot.ipxe").read_bytes()


def test_claims_of_a_signed_manifest_are_kept(pki: Pki, live: tuple[str, Path],
                                              fresh_signer: str) -> None:
    """The positive control: a release.json whose signature verifies keeps its build
    record and CA in the re-signed manifest."""
    url, root = live
    path = root / "releases/r1/release.json"
    doc = json.loads(path.read_bytes())
    record = {"trust": [{"sha256": FORGED}], "outputs": []}
    doc["ipxe"] = record
    path.write_text(json.dumps(doc))
    pki.sign([path], path.parent)
    assert (root / "releases/r1/release.json.sig").exists()
    res = resign(pki, url, fresh_signer)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    new = json.loads((root / f"releases/{out['release']}/release.json").read_bytes())
    assert new["ipxe"] == record and new["ca_sha256"] == doc["ca_sha256"]


def test_an_old_release_put_back_without_trustboot_is_not_re_signed(
        pki: Pki, live: tuple[str, Path], fresh_signer: str,
        make_release: ReleaseFactory) -> None:
    """r2 is live; r1's entry pair copied back over the entry (by hand, or by a hostile
    origin) made resign re-sign r1 with a new replay window each run, the very thing
    resign bounds. trustboot's live record names r2: refused. A rollback made with
    trustboot records r1, and then r1 is re-signed."""
    url, root = live
    _put_r1_back_over_live_r2(pki, url, root, make_release)
    before = snapshot(root)
    res = resign(pki, url, fresh_signer)
    assert res.exit_code == 4, res.output
    assert "serves release r1, but trustboot last switched it to 'r2'" in res.output
    assert "trustboot publish rollback" in res.output
    assert snapshot(root) == before
    _rollback_to_r1_then_resign(pki, url, fresh_signer)


def test_a_planted_switch_record_does_not_get_an_old_release_re_signed(
        pki: Pki, live: tuple[str, Path], fresh_signer: str,
        make_release: ReleaseFactory) -> None:
    """An origin writer writes the switch record naming an old release and breaks the
    entry pair (the old release's signature beside the live script), as a switch killed
    half way would. The nightly resign completed that "interrupted switch" (the old
    release verifies), which also rewrote the live record, and then re-signed the old
    release: a fresh replay window for a release the operator had moved on from, the
    very thing the unrecorded-rollback rule refuses. A switch back to a release older
    than the one trustboot last made live is refused, nothing changed; `publish
    rollback` makes it if it is meant."""
    url, root = live
    _publish_r2(pki, url, make_release)
    _plant_switch_back_to_r1(root)
    doc = resign_refuses_switch_back(pki, url, fresh_signer, root, snapshot)
    assert f"trustboot publish rollback {url}/ r1" in doc["hint"], doc
    assert "publish repair" not in doc["hint"], doc  # it refuses the same switch


@pytest.mark.parametrize("had_signature", [False, True])
def test_a_forged_date_does_not_make_a_planted_switch_back_look_forward(
        pki: Pki, live: tuple[str, Path], fresh_signer: str, make_release: ReleaseFactory,
        had_signature: bool) -> None:
    """The test above, by a writer who also moves r1's `created` past r2's in r1's
    release.json (unsigned, as `publish` writes it; or signed, its .sig deleted): resign
    took the unsigned date for the truth, completed the switch back and re-signed r1.
    Only signed manifests show a switch forward; resign, unattended, refuses one they do
    not show."""
    url, root = live
    _publish_r2(pki, url, make_release)
    manifest = root / "releases/r1/release.json"
    if had_signature:
        pki.sign([manifest], manifest.parent)
    doc = json.loads(manifest.read_bytes())
    doc["created"] = "2099-01-01T00:00:00Z"
    manifest.write_text(json.dumps(doc))
    (root / "releases/r1/release.json.sig").unlink(missing_ok=True)
    _plant_switch_back_to_r1(root)
    doc = resign_refuses_switch_back(pki, url, fresh_signer, root, snapshot)
    assert "cannot be shown to be newer than r2" in doc["message"], doc
    assert "release.json of r1, r2 has no signature that verifies" in doc["message"], doc


@pytest.mark.parametrize("record", LIVE_RECORD_TAMPERING)
def test_a_planted_switch_back_is_not_re_signed_whatever_the_live_record_says(
        pki: Pki, live: tuple[str, Path], fresh_signer: str, make_release: ReleaseFactory,
        record: str) -> None:
    """test_a_planted_switch_record_does_not_get_an_old_release_re_signed, by a writer who
    also deletes the live record (or rewrites it to name r1, or breaks it): resign took
    the missing record for "nothing to go back from", completed the switch back to r1,
    recorded it as trustboot's own and re-signed r1 with the fresh signer. Refused, rule
    unrecorded-rollback, nothing changed."""
    url, root = live
    _publish_r2(pki, url, make_release)
    _plant_switch_back_to_r1(root)
    tamper_live_record(root, record, "r1")
    resign_refuses_switch_back(pki, url, fresh_signer, root, snapshot)


def _kill_resign_between_its_two_copies(root: Path, saved: Path, new_id: str) -> None:
    """The origin ``root`` as a resign to ``new_id`` killed between the two copies of its
    switch leaves it: the switch record, new_id's signature beside the old script, the
    live record still naming the old release (both from ``saved``, a copy made before
    the resign ran)."""
    from trustboot.publish.pipeline import SWITCH_JOURNAL

    for name in ("boot.ipxe", ".trustboot-live.json"):
        (root / name).write_bytes((saved / name).read_bytes())
    prefix = root / "releases" / new_id
    script, sig = (prefix / "boot.ipxe").read_bytes(), (prefix / "boot.ipxe.sig").read_bytes()
    (root / "boot.ipxe.sig").write_bytes(sig)
    (root / SWITCH_JOURNAL).write_text(json.dumps({
        "version": 1, "release": new_id, "entry_path": "boot.ipxe",
        "script_sha256": hashlib.sha256(script).hexdigest(),
        "sig_sha256": hashlib.sha256(sig).hexdigest()}))


@pytest.mark.parametrize("manifest", ["unsigned", "signer-expired"])
def test_resign_finishes_its_own_killed_switch(
        pki: Pki, tmp_path: Path, fresh_signer: str, make_release: ReleaseFactory,
        monkeypatch: pytest.MonkeyPatch, manifest: str) -> None:
    """A resign killed between the two copies of its switch (r1 -> r1.rs-<hex>) left the
    entry pair broken (iPXE refuses it). The next resign must finish it, but the check
    against switches back asked for r1's date proven by a release.json.sig that verifies
    now: r1 published from a directory has none (the usual case), and one whose signer
    has expired (when resign matters most) did not verify: every resign refused (exit 4)
    and the fleet could not boot until someone stepped in. r1.rs-<hex> is resign's
    re-sign of r1 by its signed manifest's signer (the id is made from it), and an
    expired signature still proves who wrote a date."""
    import shutil

    from trustboot.publish.pipeline import SWITCH_JOURNAL

    root = tmp_path / "origin"
    url = f"file://{root}"
    rel = make_release({"boot.ipxe": entry("r1"), "vmlinuz": KERNEL, "initrd.img": INITRD})
    if manifest == "signer-expired":
        from trustboot.cli.verify import load_trust
        from trustboot.publish.pipeline import Trust, build_manifest, scan_directory

        pki.issue("codesign", "manifest-1d", "--days", "1")
        doc = build_manifest("r1", scan_directory(rel), entry="boot.ipxe",
                             now=dt.datetime.now(dt.UTC), origin=None,
                             trust=Trust(tuple(load_trust((), pki.dir))))
        (rel / "release.json").write_bytes(doc.to_bytes())
        pki.sign([rel / "release.json"], rel, signer="manifest-1d")
    assert publish(pki, rel, url, "r1").exit_code == 0
    saved = tmp_path / "saved"
    shutil.copytree(root, saved)
    res = resign(pki, url, fresh_signer)
    assert res.exit_code == 0, res.output
    new = json.loads(res.stdout)["release"]
    _kill_resign_between_its_two_copies(root, saved, new)
    if manifest == "signer-expired":  # the rerun: past r1's manifest signer and iPXE's margin
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(pki.cert("manifest-1d").read_bytes())
        later = cert.not_valid_after_utc + dt.timedelta(hours=13)
        monkeypatch.setattr("trustboot.cli.resign.utc_now", lambda: later)
    res = resign(pki, url, fresh_signer)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert "completed the interrupted switch" in out["repaired"], out
    assert "cannot be shown" not in out["repaired"], out
    assert out["release"] == new and not out["changed"], out
    assert not (root / SWITCH_JOURNAL).exists()
    for name in ("boot.ipxe", "boot.ipxe.sig"):
        assert (root / name).read_bytes() == (root / "releases" / new / name).read_bytes()
    assert json.loads((root / ".trustboot-live.json").read_bytes())["entries"][
        "boot.ipxe"]["release"] == new


def _plant_switch_to_old_re_sign(pki: Pki, url: str, root: Path, fresh_signer: str,
                                 make_release: ReleaseFactory, *,
                                 hide_r2_manifest: bool = False) -> str:
    """r1 re-signed, then r2 published over it; a writer plants a switch to the old
    re-sign (its .sig served), the live record rewritten to name r1 (and, with
    ``hide_r2_manifest``, r2's release.json deleted). The old re-sign's id."""
    from trustboot.publish.pipeline import SWITCH_JOURNAL

    res = resign(pki, url, fresh_signer)
    assert res.exit_code == 0, res.output
    old_resign: str = json.loads(res.stdout)["release"]
    _publish_r2(pki, url, make_release)
    if hide_r2_manifest:
        (root / "releases/r2/release.json").unlink()
    (root / SWITCH_JOURNAL).write_text(json.dumps({"version": 1, "release": old_resign,
                                                   "entry_path": "boot.ipxe"}))
    (root / "boot.ipxe.sig").write_bytes(
        (root / "releases" / old_resign / "boot.ipxe.sig").read_bytes())
    tamper_live_record(root, "names-the-target", "r1")
    return old_resign


def test_a_re_sign_of_an_older_release_is_not_taken_for_resigns_own_switch(
        pki: Pki, live: tuple[str, Path], fresh_signer: str,
        make_release: ReleaseFactory) -> None:
    """r1 was re-signed (r1.rs-<hex>), then r2 published from a directory (unsigned
    manifest) and made live. A writer plants a switch to the old re-sign and rewrites the
    live record to name r1, so the switch looks like resign finishing its own re-sign of
    the recorded release. r2's date is unsigned, but it is newer than the re-sign's, and
    an unsigned date may make the check stricter: refused, by resign and by a repair."""
    url, root = live
    old_resign = _plant_switch_to_old_re_sign(pki, url, root, fresh_signer, make_release)
    before = snapshot(root)
    for argv in (["resign", url, "--key", fresh_signer, "--passphrase-file",
                  str(pki.key_pass)], ["publish", "repair", url]):
        res = CliRunner().invoke(cli, [*argv, "--pki", str(pki.dir), "--json"])
        assert res.exit_code == 4, (argv, res.output)
        doc = json.loads(res.stderr)
        assert doc["rule"] == "unrecorded-rollback", doc
        assert f"release {old_resign} is older than r2" in doc["message"], doc
        assert snapshot(root) == before


def test_a_re_sign_is_not_taken_for_resigns_own_switch_past_a_hidden_manifest(
        pki: Pki, live: tuple[str, Path], fresh_signer: str,
        make_release: ReleaseFactory) -> None:
    """As above, the writer also deleting r2's release.json: r2 no longer dates (unread),
    r1's unsigned date is older than the re-sign's, and the re-sign of the release the
    live record names counted as resign finishing its own switch: `publish repair`
    switched the fleet back to the old re-sign. A manifest that does not read leaves the
    re-sign exception out: refused (exit 4, unrecorded-rollback, naming r2), nothing
    changed."""
    url, root = live
    old_resign = _plant_switch_to_old_re_sign(pki, url, root, fresh_signer, make_release,
                                              hide_r2_manifest=True)
    before = snapshot(root)
    res = CliRunner().invoke(cli, ["publish", "repair", url, "--pki", str(pki.dir), "--json"])
    assert res.exit_code == 4, res.output
    doc = json.loads(res.stderr)
    assert doc["rule"] == "unrecorded-rollback", doc
    assert f"release {old_resign} cannot be shown to be newer than r1, r2" in doc["message"]
    assert "the release.json of r2 does not read or is missing" in doc["message"], doc
    assert snapshot(root) == before


@pytest.mark.parametrize("record", ["deleted", "unparsable"])
def test_an_old_release_put_back_with_the_live_record_removed_is_not_re_signed(
        pki: Pki, live: tuple[str, Path], fresh_signer: str, make_release: ReleaseFactory,
        record: str) -> None:
    """test_an_old_release_put_back_without_trustboot_is_not_re_signed, by a writer who
    also deletes the live record (or breaks it): resign found no record and re-signed
    r1. Without a record, only a release shown to be the newest by its signed manifest
    is re-signed; `publish rollback` records the release and resign goes on."""
    url, root = live
    _put_r1_back_over_live_r2(pki, url, root, make_release)
    tamper_live_record(root, record, "r1")
    doc = resign_refuses_switch_back(pki, url, fresh_signer, root, snapshot)
    assert "cannot be shown to be the newest" in doc["message"], doc
    assert f"trustboot publish rollback {url}/ r1" in doc["hint"], doc
    _rollback_to_r1_then_resign(pki, url, fresh_signer)


def test_a_live_record_rewritten_to_an_old_release_is_re_signed_with_a_warning(
        pki: Pki, live: tuple[str, Path], fresh_signer: str,
        make_release: ReleaseFactory) -> None:
    """r1's pair copied back and the live record rewritten to name r1 is, byte for byte,
    what `publish rollback ORIGIN r1` leaves: resign cannot tell a writer's rewrite from
    the operator's rollback, and must keep re-signing a release rolled back to. It
    re-signs r1, and says that r1 is older than r2, so the nightly log shows it."""
    url, root = live
    _put_r1_back_over_live_r2(pki, url, root, make_release)
    doc = json.loads((root / ".trustboot-live.json").read_bytes())
    doc["entries"]["boot.ipxe"]["release"] = "r1"
    doc["entries"]["boot.ipxe"]["script_sha256"] = hashlib.sha256(
        (root / "boot.ipxe").read_bytes()).hexdigest()
    (root / ".trustboot-live.json").write_text(json.dumps(doc))
    res = resign(pki, url, fresh_signer)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["previous"] == "r1", out
    assert any("r1 is older than r2" in w and "publish rollback" in w
               for w in out["warnings"]), out["warnings"]


def test_resign_finishes_its_own_switch_killed_after_the_live_record(
        pki: Pki, live: tuple[str, Path], fresh_signer: str) -> None:
    """A resign killed after both copies and the live record, before removing the switch
    record: the pair and the live record already name r1.rs-<hex>, only the switch
    record is left. A live record naming the target shows no switch forward, but here
    nothing is left to switch: the next resign removes the record and goes on."""
    from trustboot.publish.pipeline import SWITCH_JOURNAL

    url, root = live
    res = resign(pki, url, fresh_signer)
    assert res.exit_code == 0, res.output
    new = json.loads(res.stdout)["release"]
    (root / SWITCH_JOURNAL).write_text(json.dumps({"version": 1, "release": new,
                                                   "entry_path": "boot.ipxe"}))
    res = resign(pki, url, fresh_signer)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert "had finished: it is live" in out["repaired"], out
    assert out["release"] == new and not out["changed"], out
    assert not (root / SWITCH_JOURNAL).exists()
