"""Several entry paths on one origin (a production menu, a staging menu beside it, other
signed files at the origin root): a switch never replaces an object that is not an entry,
and prune never deletes a release an entry still points at. file:// origins (the pipeline
is the same for every backend; the nginx tests cover WebDAV's own behaviour)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.publish.conftest import Nginx, Pki, ReleaseFactory, logged_requests
from trustboot.cli.main import cli

ENTRY = b"#!ipxe\necho shared origin\n"


def _publish(pki: Pki, directory: Path, origin: str, release: str, *extra: str) -> Result:
    return CliRunner().invoke(cli, ["publish", str(directory), origin, "--release-id",
                                    release, "--pki", str(pki.dir), "--json", *extra])


def _admin(pki: Pki, *args: str) -> Result:
    return CliRunner().invoke(cli, ["publish", *args, "--pki", str(pki.dir), "--json"])


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


@pytest.mark.parametrize("entry", ["boot.ipxe.sig", "menus/staging.ipxe.sig"])
def test_an_entry_path_that_is_a_signatures_name_is_refused_everywhere(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, entry: str) -> None:
    """`--entry-path boot.ipxe.sig` wrote a staging script over production's signature
    (iPXE then refused production's entry). Every command refuses it before touching
    the origin."""
    origin = f"file://{tmp_path}/srv"
    release = make_release({"boot.ipxe": ENTRY})
    assert _publish(pki, release, origin, "prod1").exit_code == 0
    before = _tree(tmp_path / "srv")
    for args in (["publish", str(release), origin, "--release-id", "staging1"],
                 ["publish", "rollback", origin, "prod1"],
                 ["publish", "prune", origin, "--keep", "1"],
                 ["resign", origin, "--key", "boot-signer"]):
        res = CliRunner().invoke(cli, [*args, "--pki", str(pki.dir), "--entry-path", entry])
        assert res.exit_code == 3, (args, res.output)
        assert f"entry path {entry!r} is refused: it ends in .sig" in res.output, args
        assert "not ending in .sig" in res.output  # the hint
    assert _tree(tmp_path / "srv") == before


def _firmware(srv: Path) -> dict[str, bytes]:
    """Signed firmware at the origin root, published by another tool: fw/ipxe.efi and
    its .sig (a binary, not a script)."""
    (srv / "fw").mkdir(parents=True, exist_ok=True)
    files = {"fw/ipxe.efi": b"MZ\x90\x00 firmware " * 500, "fw/ipxe.efi.sig": b"0\x82sig"}
    for name, data in files.items():
        (srv / name).write_bytes(data)
    return files


def test_a_switch_never_writes_over_an_object_that_is_not_an_entry(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """`--entry-path fw/ipxe.efi`: the switch would write the script over the firmware
    and its signature. Refused (exit 3) before anything is uploaded; rollback too."""
    srv = tmp_path / "srv"
    origin = f"file://{srv}"
    assert _publish(pki, make_release({"boot.ipxe": ENTRY}), origin, "prod1").exit_code == 0
    firmware = _firmware(srv)
    before = _tree(srv)
    staging = make_release({"boot.ipxe": ENTRY + b"echo staging\n"})
    for res in (_publish(pki, staging, origin, "staging1", "--entry-path", "fw/ipxe.efi"),
                _admin(pki, "rollback", origin, "prod1", "--entry-path", "fw/ipxe.efi")):
        assert res.exit_code == 3, res.output
        err = json.loads(res.stderr)
        assert "entry path fw/ipxe.efi on" in err["message"], err
        assert "not an iPXE script" in err["message"] and "nothing was switched" in \
            err["message"]
        assert "--entry-path" in err["hint"] and "menus/NAME.ipxe" in err["hint"]
    assert _tree(srv) == before  # nothing uploaded, the firmware untouched
    assert {k: _tree(srv)[k] for k in firmware} == firmware


def test_a_new_entry_path_may_replace_an_ipxe_script_and_then_its_own_pair(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """What stays allowed: an entry path free on the origin, one holding an iPXE script
    (an entry written before trustboot, or by hand), and, once switched, re-publishing,
    rollback and prune of that entry path."""
    srv = tmp_path / "srv"
    origin = f"file://{srv}"
    (srv / "menus").mkdir(parents=True)
    (srv / "menus/staging.ipxe").write_bytes(b"#!ipxe\necho written by hand\n")
    for i in (1, 2):
        r = make_release({"boot.ipxe": ENTRY + f"echo staging {i}\n".encode()})
        res = _publish(pki, r, origin, f"staging{i}", "--entry-path", "menus/staging.ipxe")
        assert res.exit_code == 0, res.output
        time.sleep(1.1)  # distinct creation times
    assert (srv / "menus/staging.ipxe").read_bytes().endswith(b"echo staging 2\n")
    res = _admin(pki, "rollback", origin, "staging1", "--entry-path", "menus/staging.ipxe")
    assert res.exit_code == 0, res.output
    assert (srv / "menus/staging.ipxe").read_bytes().endswith(b"echo staging 1\n")
    res = _admin(pki, "prune", origin, "--keep", "1", "--entry-path", "menus/staging.ipxe")
    assert res.exit_code == 0 and json.loads(res.stdout)["deleted"] == [], res.output


def _two_production_releases(pki: Pki, make_release: ReleaseFactory, origin: str) -> None:
    """prod1, then prod2 (live) for boot.ipxe, a second apart (distinct creation times)."""
    for rid in ("prod1", "prod2"):
        r = make_release({"boot.ipxe": ENTRY + f"echo {rid}\n".encode()})
        assert _publish(pki, r, origin, rid).exit_code == 0
        time.sleep(1.1)


def _break_signature(srv: Path, entry: str) -> None:
    """What the staging recipe with `entry: boot.ipxe.sig` did: another file written
    over ``entry``'s signature (the pair no longer verifies; the script still points at
    its release)."""
    (srv / f"{entry}.sig").write_bytes(b"#!ipxe\necho not a signature\n")


def test_prune_keeps_a_release_whose_entry_signature_was_overwritten(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """Production's boot.ipxe still points at prod2 although its .sig was overwritten: a
    prune for the staging entry deleted prod2 (the pair matched no release), leaving no
    release to roll back to. Now prod2 stays, and so does it for a prune of boot.ipxe
    itself (which refused before: "serves none of its releases")."""
    srv = tmp_path / "srv"
    origin = f"file://{srv}"
    _two_production_releases(pki, make_release, origin)
    r = make_release({"boot.ipxe": ENTRY + b"echo staging\n"})
    res = _publish(pki, r, origin, "staging1", "--entry-path", "staging.ipxe")
    assert res.exit_code == 0, res.output
    _break_signature(srv, "boot.ipxe")
    res = _admin(pki, "prune", origin, "--keep", "1", "--entry-path", "staging.ipxe")
    assert res.exit_code == 0, res.output
    assert "prod2" not in json.loads(res.stdout)["deleted"]
    assert (srv / "releases/prod2/release.json").is_file()
    res = _admin(pki, "prune", origin, "--keep", "1")
    assert res.exit_code == 0, res.output
    assert "prod2" not in json.loads(res.stdout)["deleted"]
    assert sorted(p.name for p in (srv / "releases").iterdir()) == ["prod2", "staging1"]
    # and the way back: a rollback to the release that is still there mends the pair
    res = _admin(pki, "rollback", origin, "prod2")
    assert res.exit_code == 0, res.output
    assert (srv / "boot.ipxe.sig").read_bytes() == \
        (srv / "releases/prod2/boot.ipxe.sig").read_bytes()


def _manifest(srv: Path, rid: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads((srv / "releases" / rid / "release.json").read_text())
    return doc


def _releases(srv: Path) -> list[str]:
    return sorted(p.name for p in (srv / "releases").iterdir())


def _two_entries(pki: Pki, make_release: ReleaseFactory, srv: Path) -> None:
    """prod1, prod2 for boot.ipxe and staging1, staging2 for staging.ipxe, interleaved
    (staging's are the newest)."""
    origin = f"file://{srv}"
    for rid, extra in (("prod1", ()), ("staging1", ("--entry-path", "staging.ipxe")),
                       ("prod2", ()), ("staging2", ("--entry-path", "staging.ipxe"))):
        r = make_release({"boot.ipxe": ENTRY + f"echo {rid}\n".encode()})
        res = _publish(pki, r, origin, rid, *extra)
        assert res.exit_code == 0, res.output
        time.sleep(1.1)  # distinct creation times


def test_retention_counts_only_the_releases_of_its_own_entry_path(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """A staging entry's `--keep 1` deleted production's rollback target (prod1): it
    counted every release on the origin. Each release's manifest now records the entry
    path it was published for, and prune counts (and deletes) only that path's."""
    srv = tmp_path / "srv"
    origin = f"file://{srv}"
    _two_entries(pki, make_release, srv)
    assert _manifest(srv, "prod1")["entry_path"] == "boot.ipxe"
    assert _manifest(srv, "staging1")["entry_path"] == "staging.ipxe"
    res = _admin(pki, "prune", origin, "--keep", "1", "--entry-path", "staging.ipxe")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["deleted"] == ["staging1"]
    assert _releases(srv) == ["prod1", "prod2", "staging2"]
    res = _admin(pki, "prune", origin, "--keep", "1")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["deleted"] == ["prod1"]
    assert _releases(srv) == ["prod2", "staging2"]
    # the live releases of both entries verify and stay: rollback has nothing older
    res = _admin(pki, "rollback", origin, "prod1")
    assert res.exit_code == 3 and "does not exist" in res.output


def _drop_entry_path(srv: Path, rid: str) -> None:
    """releases/RID/release.json as trustboot wrote it before it recorded entry paths."""
    doc = _manifest(srv, rid)
    del doc["entry_path"]
    (srv / "releases" / rid / "release.json").write_text(json.dumps(doc, indent=2) + "\n")


def test_releases_from_before_entry_paths_were_recorded(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """A manifest without entry_path proves no entry path. On an origin whose only entry
    is boot.ipxe (every origin was, then) it counts as boot.ipxe's and is pruned as
    before; beside another entry that serves a release, nothing says whose it is: kept."""
    srv = tmp_path / "srv"
    origin = f"file://{srv}"
    for rid in ("old1", "old2", "new1"):
        r = make_release({"boot.ipxe": ENTRY + f"echo {rid}\n".encode()})
        assert _publish(pki, r, origin, rid).exit_code == 0
        time.sleep(1.1)
    for rid in ("old1", "old2"):
        _drop_entry_path(srv, rid)
    res = _admin(pki, "list", origin)
    assert res.exit_code == 0 and all(not i["problem"] for i in json.loads(res.stdout))
    res = _admin(pki, "prune", origin, "--keep", "2")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["deleted"] == ["old1"]

    r = make_release({"boot.ipxe": ENTRY + b"echo staging\n"})
    res = _publish(pki, r, origin, "staging1", "--entry-path", "menus/staging.ipxe")
    assert res.exit_code == 0, res.output
    for entry in ("boot.ipxe", "menus/staging.ipxe"):
        res = _admin(pki, "prune", origin, "--keep", "1", "--entry-path", entry)
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["deleted"] == [], entry
    assert _releases(srv) == ["new1", "old2", "staging1"]


@pytest.mark.parametrize("value", ["boot.ipxe.sig", "releases/x.ipxe", ".hidden", 7])
def test_a_manifest_with_a_bad_entry_path_does_not_parse(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path, value: object) -> None:
    from trustboot.errors import ConfigError
    from trustboot.publish.manifest import parse_manifest

    srv = tmp_path / "srv"
    assert _publish(pki, make_release({"boot.ipxe": ENTRY}), f"file://{srv}",
                    "r1").exit_code == 0
    doc = _manifest(srv, "r1")
    assert parse_manifest(json.dumps(doc).encode()).entry_path == "boot.ipxe"
    with pytest.raises(ConfigError, match="entry_path"):
        parse_manifest(json.dumps({**doc, "entry_path": value}).encode())


def test_a_resigned_release_is_retained_for_the_entry_path_it_was_resigned_for(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """`resign --entry-path staging.ipxe` makes a new release of staging's: its manifest
    says so, production's prune leaves it (and staging's old one) alone, and staging's
    prune deletes staging's old one."""
    from tests.publish.conftest import resign
    from tests.publish.test_resign import entry

    srv = tmp_path / "srv"
    origin = f"file://{srv}"
    for rid, extra in (("prod1", ()), ("staging1", ("--entry-path", "staging.ipxe"))):
        r = make_release({"boot.ipxe": entry(rid), "vmlinuz": b"kernel " * 100})
        assert _publish(pki, r, origin, rid, *extra).exit_code == 0
        time.sleep(1.1)
    res = resign(pki, origin, "other-signer", "--entry-path", "staging.ipxe")
    assert res.exit_code == 0, res.output
    new = json.loads(res.stdout)["release"]
    assert new.startswith("staging1.rs-")
    assert _manifest(srv, new)["entry_path"] == "staging.ipxe"
    res = _admin(pki, "prune", origin, "--keep", "1")
    assert res.exit_code == 0 and json.loads(res.stdout)["deleted"] == [], res.output
    res = _admin(pki, "prune", origin, "--keep", "1", "--entry-path", "staging.ipxe")
    assert res.exit_code == 0 and json.loads(res.stdout)["deleted"] == ["staging1"], \
        res.output
    assert _releases(srv) == sorted(["prod1", new])


def _installer(srv: Path, size: int = 20_000_000) -> None:
    """A signed installer image published beside the releases by another tool: larger
    than any entry script may be (a sparse file: nothing should read it)."""
    (srv / "fw").mkdir(parents=True, exist_ok=True)
    with open(srv / "fw/installer.iso", "wb") as fh:
        fh.truncate(size)
    (srv / "fw/installer.iso.sig").write_bytes(b"0\x82 not read either")


def test_prune_and_list_ignore_large_signed_objects_that_are_not_entries(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """fw/installer.iso (20 MB) + .sig at the origin root was read as an entry pair with
    a 16 MiB cap: every `publish prune` failed with TooLarge and no hint. Now an object
    that is no release's entry script by size is not read at all; prune and list work."""
    from trustboot.publish import fileorigin

    srv = tmp_path / "srv"
    origin = f"file://{srv}"
    _two_production_releases(pki, make_release, origin)
    _installer(srv)
    _firmware(srv)  # small, but no release's entry script either: not read
    real = fileorigin.FileOrigin.read
    read: list[str] = []

    def reading(self: fileorigin.FileOrigin, key: str, *, max_size: int) -> Iterator[bytes]:
        read.append(key)
        return real(self, key, max_size=max_size)

    monkeypatch.setattr(fileorigin.FileOrigin, "read", reading)
    res = _admin(pki, "list", origin)
    assert res.exit_code == 0, res.output
    assert [i["id"] for i in json.loads(res.stdout) if i["live"]] == ["prod2"]
    res = _admin(pki, "prune", origin, "--keep", "1")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["deleted"] == ["prod1"]
    assert not any(k.startswith("fw/") for k in read), read
    assert (srv / "fw/installer.iso").stat().st_size == 20_000_000


def test_a_too_large_read_always_says_what_to_do(tmp_path: Path) -> None:
    from trustboot.publish.origin import OriginOptions, TooLarge, open_origin

    (tmp_path / "big").write_bytes(b"x" * 100)
    with open_origin(f"file://{tmp_path}", OriginOptions()) as origin, \
            pytest.raises(TooLarge) as err:
        b"".join(origin.read("big", max_size=10))
    assert err.value.hint and "check what the origin holds" in err.value.hint
    assert err.value.to_json()["hint"]


def test_on_nginx_two_entries_a_firmware_and_an_image_share_the_origin(
        pki: Pki, nginx: Nginx, make_release: ReleaseFactory) -> None:
    """The same over WebDAV, where sizes come from PROPFIND and reads are GETs: a
    switch onto the firmware is refused, the large image is never fetched, and each
    entry path's prune deletes only its own releases."""
    from tests.publish.test_nginx import _admin as dav_admin
    from tests.publish.test_nginx import publish as dav_publish

    _installer(nginx.root)
    firmware = _firmware(nginx.root)
    for rid, extra in (("prod1", ()), ("staging1", ("--entry-path", "menus/staging.ipxe")),
                       ("prod2", ()), ("staging2", ("--entry-path", "menus/staging.ipxe"))):
        r = make_release({"boot.ipxe": ENTRY + f"echo {rid}\n".encode()})
        res = dav_publish(pki, r, nginx.url, rid, *extra)
        assert res.exit_code == 0, res.output
        time.sleep(1.1)
    r = make_release({"boot.ipxe": ENTRY + b"echo onto the firmware\n"})
    res = dav_publish(pki, r, nginx.url, "fw1", "--entry-path", "fw/ipxe.efi")
    assert res.exit_code == 3 and "not an iPXE script" in res.output, res.output
    assert not (nginx.root / "releases/fw1").exists()
    pruned: list[Result] = []
    requests = logged_requests(nginx, pki, lambda: pruned.extend(
        dav_admin(pki, "prune", nginx.url, "--keep", "1", "--entry-path", entry)
        for entry in ("menus/staging.ipxe", "boot.ipxe")))
    assert not [r for r in requests if r.startswith("GET /fw/")], requests
    assert [json.loads(r.stdout)["deleted"] for r in pruned] == [["staging1"], ["prod1"]]
    assert sorted(p.name for p in (nginx.root / "releases").iterdir()) == [
        "prod2", "staging2"]
    assert {k: (nginx.root / k).read_bytes() for k in firmware} == firmware
    assert (nginx.root / "fw/installer.iso").stat().st_size == 20_000_000


def test_a_shipped_manifest_for_another_entry_path_is_refused(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """A release directory that ships its release.json (as a mirror of an origin's
    release does) recording boot.ipxe, published for menus/staging.ipxe: retention would
    have counted it as production's. Refused; published for its own path, it is taken."""
    import shutil

    srv = tmp_path / "srv"
    r = make_release({"boot.ipxe": ENTRY})
    res = _publish(pki, r, f"file://{srv}", "r1")
    assert res.exit_code == 0, res.output
    shipped = tmp_path / "shipped"
    shutil.copytree(srv / "releases" / "r1", shipped)
    assert json.loads((shipped / "release.json").read_text())["entry_path"] == "boot.ipxe"
    other = tmp_path / "other"
    res = _publish(pki, shipped, f"file://{other}", "r1", "--entry-path",
                   "menus/staging.ipxe")
    assert res.exit_code == 3, res.output
    assert "records the release for entry path 'boot.ipxe'" in res.output, res.output
    assert not (other / "releases" / "r1").exists()
    res = _publish(pki, shipped, f"file://{other}", "r1")
    assert res.exit_code == 0, res.output


def test_releases_from_before_entry_paths_under_another_single_entry(
        pki: Pki, make_release: ReleaseFactory, tmp_path: Path) -> None:
    """An origin whose one entry is not boot.ipxe: its releases from before entry paths
    were recorded could never be pruned by any command. They count as that entry's while
    it is the only one serving a release; a mistyped --entry-path prunes none of them."""
    srv = tmp_path / "srv"
    origin = f"file://{srv}"
    for rid in ("old1", "old2", "new1"):
        r = make_release({"boot.ipxe": ENTRY + f"echo {rid}\n".encode()})
        res = _publish(pki, r, origin, rid, "--entry-path", "menus/x.ipxe")
        assert res.exit_code == 0, res.output
        time.sleep(1.1)
    for rid in ("old1", "old2"):
        _drop_entry_path(srv, rid)
    res = _admin(pki, "prune", origin, "--keep", "1", "--entry-path", "menus/typo.ipxe")
    assert res.exit_code == 0 and json.loads(res.stdout)["deleted"] == [], res.output
    res = _admin(pki, "prune", origin, "--keep", "2", "--entry-path", "menus/x.ipxe")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["deleted"] == ["old1"]
    assert _releases(srv) == ["new1", "old2"]
