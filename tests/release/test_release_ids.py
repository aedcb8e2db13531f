"""A release re-run without the publish cache decides its id (``{date}`` in the template:
the same inputs keep the id they got on an earlier day) and whether its large inputs are
perhaps published already from one listing of ``releases/`` (its directories), not from a
listing of every object of every release: against a file:// origin served over HTTPS and
the real nginx WebDAV/TLS origin, with hostile names and a planted link beside the real
releases. (Ceph RGW: tests/publish/test_list_dirs.py.)"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from pathlib import Path

from tests.publish.conftest import Nginx, Pki
from tests.release.conftest import Lab
from tests.release.lab import make_lab
from tests.release.test_staging import BIG, SMALL, _release

DATED = "{date}-{digest8}"


def _staged(result: object) -> bool:
    return any("staged on the origin" in s["detail"] for s in result.stages)  # type: ignore[attr-defined]


def test_file_origin_rerun_without_cache_keeps_its_dated_id(lab: Lab, tmp_path: Path) -> None:
    recipe = lab.recipe(release=f"release: {{id: '{DATED}', min_signer_lifetime: 30d}}")
    now = dt.datetime.now(dt.UTC)
    older = _release(recipe, tmp_path / "c0.json", now=now)
    (lab.dir / "images" / "initrd.img").write_bytes(os.urandom(BIG))  # staged when new
    first = _release(recipe, tmp_path / "c1.json", now=now)
    assert _staged(first) and first.release != older.release
    releases = lab.origin / "releases"
    # beside the real releases: names trustboot never writes, and a link to a copy of the
    # release under an id that would win (a later date, the same digest) if it were followed
    for name in ["a b", "x;y", "dollar${x}", ".tb-tmp.1234.x"]:
        (releases / name).mkdir()
        (releases / name / "release.json").write_bytes(b"{}")
    later_id = (now + dt.timedelta(days=400)).strftime("%Y%m%d-") + first.digest[:8]
    outside = tmp_path / "outside" / later_id
    shutil.copytree(releases / first.release, outside)
    (releases / later_id).symlink_to(outside)

    # two days later, no publish cache
    later = _release(recipe, tmp_path / "c2.json", now=now + dt.timedelta(days=2))
    assert later.release == first.release
    assert later.uploaded == [] and not _staged(later)


def test_webdav_rerun_without_cache_lists_releases_once(pki: Pki, nginx: Nginx,
                                                        tmp_path: Path) -> None:
    d = tmp_path / "lab"
    now = dt.datetime.now(dt.UTC)
    older = _release(make_lab(d, pki, nginx.url, images={"vmlinuz": SMALL, "initrd.img": BIG},
                              release_id=DATED), tmp_path / "c0.json", now=now)
    # (another size: the same size as a published initrd would be "perhaps published")
    recipe = make_lab(d, pki, nginx.url, images={"vmlinuz": SMALL, "initrd.img": BIG + 1},
                      release_id=DATED)
    first = _release(recipe, tmp_path / "c1.json", now=now)
    assert _staged(first) and first.release != older.release
    for name in ["a b", "x;y", "dollar${x}"]:
        (nginx.root / "releases" / name).mkdir()
        (nginx.root / "releases" / name / "release.json").write_bytes(b"{}")

    log = nginx.base / "access.log"
    before = len(log.read_text())
    later = _release(recipe, tmp_path / "c2.json", now=now + dt.timedelta(days=2))
    assert later.release == first.release
    assert later.uploaded == [] and not _staged(later)
    propfinds = re.findall(r'"PROPFIND (\S+) ', log.read_text()[before:])
    # releases/ itself (the id, and whether the large input is there), never a release's
    # own collections: that would be a walk of every object of every release
    assert "/releases/" in propfinds, propfinds
    assert not [p for p in propfinds if p.startswith("/releases/") and p != "/releases/"], \
        propfinds
