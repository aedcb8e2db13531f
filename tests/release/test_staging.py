"""`trustboot release` staging its large inputs on the origin while hashing them (one read
of each file, see trustboot.release.staging), against the real nginx WebDAV/TLS origin:
the same objects and manifest land as with hash-then-upload; a file changed during the
read or before its move is refused with nothing switched; a killed run's staged objects
are swept by the next run; dry runs and re-runs stage nothing. (That Ceph RGW origins keep
hash-then-upload is in tests/publish/test_staging.py, beside the RGW fixture's pki.)"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.publish.conftest import Nginx, Pki, anon_get
from tests.release.conftest import Lab
from tests.release.lab import make_lab
from trustboot.errors import ConfigError, OperationalError
from trustboot.publish import stream
from trustboot.publish.origin import ClientCertBinding, OriginOptions, open_origin, staging_of
from trustboot.release import staging
from trustboot.release.pipeline import ReleaseResult, run_release
from trustboot.release.plan import ReleaseOptions
from trustboot.release.recipe import load_recipe

# Real time: the lab's certificates are made now, valid from a day ago (a fixed date here
# stopped working a day after it was written).
NOW = dt.datetime.now(dt.UTC)
BIG = staging.STAGE_MIN_SIZE + 12345  # staged
SMALL = 9000  # hashed first, uploaded later


@pytest.fixture(autouse=True)
def _no_ipxe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRUSTBOOT_IPXE_SRC", raising=False)


def _lab(d: Path, pki: Pki, origin: str, *, kernel: int = SMALL, initrd: int = BIG,
         extra: str = "", client_cert: bool = True) -> Path:
    """The shared lab with fresh random inputs of these sizes (new ids every call)."""
    return make_lab(d, pki, origin, images={"vmlinuz": kernel, "initrd.img": initrd},
                    extra=extra, client_cert=client_cert)


def _release(recipe: Path, cache: Path, **kw: object) -> ReleaseResult:
    r = load_recipe(recipe)
    # the lab writes with the client certificate publisher: bound to the lab's origin
    bound = (ClientCertBinding(r.origin.url, "publisher", "the test")
             if r.origin is not None and r.origin.client_cert is not None else None)
    # and the operator gives the CA that authenticates it (the lab's own, here)
    options = ReleaseOptions(publish_cache=cache, client_cert_origin=bound,
                             origin_ca_file=recipe.parent / "pki" / "ca.crt")
    kw.setdefault("now", NOW)
    return run_release(r, options, **kw)  # type: ignore[arg-type]


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _staging_dir(nginx: Nginx) -> list[str]:
    d = nginx.root / ".tb-tmp.staging"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def _log(nginx: Nginx) -> str:
    return (nginx.base / "access.log").read_text()


def _puts(log: str) -> list[str]:
    """The names of the objects PUT (to their temporary names), in order."""
    return [m.group(1) for m in re.finditer(r'"PUT /\.tb-tmp\.staging/[0-9a-f]{16}\.(\S+) ',
                                            log)]


def test_staged_release_lands_the_same_objects_and_manifest(
        pki: Pki, nginx: Nginx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = _lab(tmp_path / "lab", pki, nginx.url, kernel=BIG + 1, initrd=2 * BIG)
    before = len(_log(nginx))
    staged = _release(recipe, tmp_path / "cache1.json")
    rid = staged.release
    # both inputs were sent before the release id was claimed (its release.json is the
    # first object a publish writes): while they were being hashed, in the same read
    puts = _puts(_log(nginx)[before:])
    assert puts.index("initrd.img") < puts.index("release.json"), puts
    assert puts.index("vmlinuz") < puts.index("release.json"), puts
    assert puts.count("initrd.img") == 1 and puts.count("vmlinuz") == 1
    assert any("2 staged on the origin" in s["detail"] for s in staged.stages
               if s["stage"] == "plan"), staged.stages
    assert _staging_dir(nginx) == []
    assert {"linux/initrd.img", "linux/vmlinuz"} <= set(staged.uploaded)
    assert (staged.publish or {})["bytes_uploaded"] >= 3 * BIG
    served = anon_get(f"{nginx.url}releases/{rid}/linux/initrd.img", pki).content
    assert served == (tmp_path / "lab/images/initrd.img").read_bytes()
    tree = _tree(nginx.root)

    # the same recipe, hashed first and uploaded after (as an origin without staging is)
    nginx.clear()
    monkeypatch.setattr(staging, "STAGE_MIN_SIZE", 1 << 62)
    before = len(_log(nginx))
    classic = _release(recipe, tmp_path / "cache2.json")
    puts = _puts(_log(nginx)[before:])
    assert puts.index("initrd.img") > puts.index("release.json"), puts
    assert not any("staged on the origin" in s["detail"] for s in classic.stages)
    assert classic.release == rid
    assert classic.manifest == staged.manifest
    assert _tree(nginx.root) == tree
    assert sorted(classic.uploaded) == sorted(staged.uploaded)


def test_rerun_and_dry_run_stage_nothing(pki: Pki, nginx: Nginx, tmp_path: Path) -> None:
    recipe = _lab(tmp_path / "lab", pki, nginx.url)
    first = _release(recipe, tmp_path / "cache.json")
    # a re-run knows the digests from the publish cache: nothing read, nothing uploaded
    before = len(_log(nginx))
    again = _release(recipe, tmp_path / "cache.json")
    assert again.release == first.release and again.uploaded == []
    assert '"PUT ' not in _log(nginx)[before:]
    # without the cache, the release on the origin holds the input: hashed first
    again = _release(recipe, tmp_path / "other-cache.json")
    assert again.release == first.release and again.uploaded == []
    assert '"PUT ' not in _log(nginx)[before:]
    # a dry run of new inputs writes nothing at all
    recipe = _lab(tmp_path / "lab", pki, nginx.url)
    dry = _release(recipe, tmp_path / "cache3.json", dry_run=True)
    assert dry.release != first.release
    log = _log(nginx)[before:]
    assert not any(f'"{verb} ' in log for verb in ("PUT", "MOVE", "MKCOL", "DELETE", "COPY"))


class _Touch:
    """Upload progress that rewrites an input once the first staged bytes are counted:
    while the input is read and sent (or after, if the signer's unlock took longer than
    the read: the bars start after it), never before its read began."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done = threading.Event()

    def phase(self, name: str, total_bytes: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        assert nbytes > 0
        if not self.done.is_set():
            self.done.set()
            with open(self.path, "r+b") as fh:
                fh.write(b"changed!")

    def item(self, key: str, action: str) -> None:
        pass


def test_input_changed_while_staged_is_refused_and_nothing_switched(
        pki: Pki, nginx: Nginx, tmp_path: Path) -> None:
    recipe = _lab(tmp_path / "lab", pki, nginx.url)
    first = _release(recipe, tmp_path / "cache.json")
    live = anon_get(nginx.url + "boot.ipxe", pki).content
    releases = sorted(p.name for p in (nginx.root / "releases").iterdir())

    # new inputs; the initrd changes while it is read and sent (or, if its read was
    # already over when the change lands, before it would be moved into place)
    recipe = _lab(tmp_path / "lab", pki, nginx.url, initrd=12 * stream.CHUNK)
    with pytest.raises(OperationalError, match=r"initrd\.img changed"):
        _release(recipe, tmp_path / "cache.json",
                 upload_progress=_Touch(tmp_path / "lab/images/initrd.img"))
    assert anon_get(nginx.url + "boot.ipxe", pki).content == live
    assert f"releases/{first.release}/".encode() in live
    after = sorted(p.name for p in (nginx.root / "releases").iterdir())
    for rid in set(after) - set(releases):  # at most the claimed id, never the changed file
        assert not (nginx.root / "releases" / rid / "linux" / "initrd.img").exists()
    assert _staging_dir(nginx) == []


def test_killed_runs_staged_objects_are_swept(pki: Pki, nginx: Nginx, tmp_path: Path) -> None:
    recipe = _lab(tmp_path / "lab", pki, nginx.url)
    # what a run killed between staging and publishing leaves: staged objects, never
    # placed. One is old (its run is long dead), one is fresh (a run may be staging).
    options = OriginOptions(ca_file=pki.ca, client_cert=pki.cert("publisher"),
                            client_key=pki.key("publisher"),
                            client_key_passphrase=pki.key_pass.read_text().strip().encode())
    with open_origin(nginx.url, options) as origin:
        stager = staging_of(origin)
        assert stager is not None
        old = stager.stage_file(tmp_path / "lab/images/initrd.img", name="linux/initrd.img",
                                hash_names={"sha256"})
        young = stager.stage_file(tmp_path / "lab/images/vmlinuz", name="linux/vmlinuz",
                                  hash_names={"sha256"})
    assert old.sha256 == hashlib.sha256(
        (tmp_path / "lab/images/initrd.img").read_bytes()).hexdigest()
    old_name, young_name = old.token.rpartition("/")[2], young.token.rpartition("/")[2]
    assert sorted(_staging_dir(nginx)) == sorted([old_name, young_name])
    hours_ago = time.time() - 2 * 3600
    os.utime(nginx.root / ".tb-tmp.staging" / old_name, (hours_ago, hours_ago))

    result = _release(recipe, tmp_path / "cache.json")
    assert (result.publish or {})["removed_temps"] == [old.token]
    assert _staging_dir(nginx) == [young_name]


def test_file_origin_release_stages_and_renames(lab: Lab) -> None:
    data = os.urandom(BIG)
    (lab.dir / "images" / "initrd.img").write_bytes(data)
    result = _release(lab.recipe(), lab.dir.parent / "cache.json")
    assert any("1 staged on the origin" in s["detail"] for s in result.stages)
    rel = lab.origin / "releases" / result.release
    assert (rel / "linux" / "initrd.img").read_bytes() == data
    assert "linux/initrd.img" in result.uploaded
    # nothing temporary left anywhere in the origin
    assert [p for p in lab.origin.rglob(".tb-tmp.*")] == []


def test_wrong_signer_passphrase_while_staging_leaves_nothing(pki: Pki, nginx: Nginx,
                                                              tmp_path: Path) -> None:
    d = tmp_path / "lab"
    recipe = _lab(d, pki, nginx.url, initrd=12 * stream.CHUNK,
                  extra=", client_key_passphrase: {file: client.pass}")
    shutil.copy(d / "key.pass", d / "client.pass")
    (d / "key.pass").write_text("not the passphrase\n")
    # the key is unlocked while the inputs upload: its failure stops them and deletes
    # what was staged; nothing is claimed, placed or switched
    before = len(_log(nginx))
    with pytest.raises(ConfigError, match="wrong passphrase"):
        _release(recipe, tmp_path / "cache.json")
    assert "initrd.img" in _puts(_log(nginx)[before:])  # its upload had started
    assert _staging_dir(nginx) == []
    assert not (nginx.root / "releases").exists()
    assert not (nginx.root / "boot.ipxe").exists()


def test_one_staged_file_under_two_keys(pki: Pki, nginx: Nginx, tmp_path: Path) -> None:
    recipe = _lab(tmp_path / "lab", pki, nginx.url)
    recipe.write_text(recipe.read_text().replace(
        "entries:\n", "entries:\n  - {name: rescue, kernel: images/vmlinuz, "
        "initrds: [images/initrd.img], cmdline: single}\n"))
    before = len(_log(nginx))
    result = _release(recipe, tmp_path / "cache.json")
    # staged once, moved under one key; the other key is uploaded from the same file
    assert any("1 staged on the origin" in s["detail"] for s in result.stages)
    puts = _puts(_log(nginx)[before:])
    assert puts.count("initrd.img") == 2
    assert puts.index("initrd.img") < puts.index("release.json")
    data = (tmp_path / "lab/images/initrd.img").read_bytes()
    for entry in ("linux", "rescue"):
        url = f"{nginx.url}releases/{result.release}/{entry}/initrd.img"
        assert anon_get(url, pki).content == data
    assert _staging_dir(nginx) == []
