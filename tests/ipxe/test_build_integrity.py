"""What a build takes from the tree and leaves in the cache stays tied to its cache key: a
tree changed after it was identified, a warm tree whose make was killed mid-way, a clone
killed mid-checkout. And make's output, the tree's own text, is bounded and escaped
before it reaches the log, trustboot's memory or the terminal. Real make in the real
sandbox on the fake tree; no iPXE tree needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.ipxe.conftest import FAKE_TOOLCHAIN
from tests.ipxe.fake_tree import namespace_alive, read_hold, start_trustboot, wait_for_hold
from tests.ipxe.test_build_plan import SCRIPT
from tests.ipxe.test_hostile_make import add_to_recipe
from tests.ipxe.testpki import TestPki
from trustboot.cli.main import cli
from trustboot.errors import OperationalError
from trustboot.ipxe import build as B
from trustboot.ipxe.config import load_single_certificate
from trustboot.ipxe.source import open_source

CHAIN = ["--chain", "https://boot.example.com/boot.ipxe", "--signer", "boot-signer"]
TARGET = "bin/ipxe.lkrn"


def _request(tree: Path, pki: TestPki) -> B.BuildRequest:
    return B.BuildRequest(source=open_source(tree), targets=(TARGET,),
                          trust=(load_single_certificate(pki.root),), script=SCRIPT)


def _build(request: B.BuildRequest, env: dict[str, Path], out: str) -> B.BuildResult:
    return B.build(request, output_dir=env["out"].parent / out, cache_dir=env["cache"],
                   toolchain=dict(FAKE_TOOLCHAIN))


# --- the tree the key names ---------------------------------------------------------------


@pytest.mark.parametrize("change", ["edit", "add", "link"])
def test_a_tree_changed_after_it_was_identified_is_not_built_under_its_key(
        env: dict[str, Path], pki: TestPki, tmp_path: Path, change: str) -> None:
    """A release identifies the tree (its cache key) when it validates the recipe, and
    copies it after the passphrase prompt and the uploads: a tree changed in between (a
    checkout of another commit, an edit) was built and cached as the tree it had been, so
    every later build of that tree got the other tree's firmware from the cache."""
    request = _request(env["tree"], pki)
    src = env["tree"] / "src"
    original = (src / "Makefile").read_text()
    if change == "edit":
        add_to_recipe(env["tree"], "echo OTHER-TREE >> $@")
    elif change == "add":
        (src / "extra.h").write_text("/* a file the key does not cover */\n")
    else:  # a file replaced by a link to one of the tree's others: the copy is refused
        (src / "config" / "general.h").unlink()
        (src / "config" / "general.h").symlink_to("../include/ipxe/image.h")
    with pytest.raises(OperationalError, match="changed after trustboot identified it"):
        _build(request, env, "first")
    assert list(env["cache"].glob("out/*/manifest.json")) == []
    assert not (env["out"].parent / "first").exists()
    # the tree as identified builds (and caches) its own firmware
    (src / "Makefile").write_text(original)
    (src / "extra.h").unlink(missing_ok=True)
    if (src / "config" / "general.h").is_symlink():
        (src / "config" / "general.h").unlink()
        (src / "config" / "general.h").write_text("/* fake */\n")
    again = _build(_request(env["tree"], pki), env, "again")
    assert not again.cached
    assert b"OTHER-TREE" not in again.outputs[TARGET].read_bytes()
