"""`trustboot release` killed mid-build (a real signal to a real process): its temporary
work directory and the build's work tree are removed and make is stopped. The fake iPXE
tree's make holds until the test signals; no iPXE tree needed."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.ipxe.fake_tree import make_fake_tree, signal_mid_build, start_trustboot
from tests.release.conftest import Lab


@pytest.mark.parametrize(("signum", "returncode"), [
    (signal.SIGTERM, -signal.SIGTERM),  # dies of it, after the cleanup (143 in a shell)
    (signal.SIGHUP, -signal.SIGHUP),
    (signal.SIGINT, 130),
])
def test_signal_during_the_build_leaves_no_temp_dir_and_no_make(
    lab: Lab, tmp_path: Path, signum: int, returncode: int
) -> None:
    require_tool("make", "make")
    make_fake_tree(lab.dir / "ipxe")
    recipe = lab.recipe(ipxe="ipxe: {source: ipxe, targets: [bin-x86_64-efi/ipxe.efi]}")
    tmp = tmp_path / "tmp"  # the release's own temporary directory lands here
    tmp.mkdir()
    cache = tmp_path / "cache"
    hold = tmp_path / "holding"
    runs = tmp_path / "runs.log"
    proc = start_trustboot(["release", str(recipe), "--json"], {
        "TMPDIR": str(tmp), "TRUSTBOOT_CACHE_DIR": str(cache), "FAKE_PY": sys.executable,
        "FAKE_RUNS": str(runs), "FAKE_HOLD": str(hold)})

    def held(_make_group: int) -> None:
        assert [p.name for p in tmp.iterdir() if p.name.startswith("trustboot-release-")]
        assert list((cache / "ipxe" / "work").glob("build-*"))

    err, alive = signal_mid_build(proc, hold, signum, held)
    assert proc.returncode == returncode, err
    assert not alive, "make outlived the release"
    assert list(tmp.iterdir()) == []
    assert list((cache / "ipxe" / "work").glob("build-*")) == []
    assert not (lab.origin / "boot.ipxe").exists()  # nothing was published
    assert b"Traceback" not in err
