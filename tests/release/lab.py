"""The release lab that the nginx and staging tests and bench/bench_release.py share: a
copy of the publish tests' pki (tests.publish.conftest.make_pki) with its key passphrase,
prebuilt firmware (so no iPXE tree is needed), the images and a recipe releasing them to
``origin``. One place, so a change to the recipe format is made once."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from tests.publish.conftest import Pki

if TYPE_CHECKING:
    import pytest

FIRMWARE = b"firmware " * 500


def isolate_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *unset: str) -> None:
    """A release test's environment: no iPXE tree of the caller's, the test's own build
    cache, and none of ``unset`` (the operator's bindings) inherited."""
    for name in ("TRUSTBOOT_IPXE_SRC", *unset):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRUSTBOOT_CACHE_DIR", str(tmp_path / "cache"))


def write_random(path: Path, size: int) -> None:
    """``size`` random bytes, written 8 MiB at a time (bench inputs are hundreds of MiB)."""
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 8 << 20)
            fh.write(os.urandom(n))
            left -= n


def make_lab(d: Path, pki: Pki, origin: str, *, images: Mapping[str, bytes | int],
             name: str = "lab", firmware: bytes = FIRMWARE, client_cert: bool = True,
             extra: str = "", release_id: str = "{name}-{digest8}") -> Path:
    """The recipe ``d/lab.yaml`` releasing images/vmlinuz and images/initrd.img to
    ``origin``, signed by boot-signer (passphrase in key.pass), with firmware
    bin/undionly.kpxe prebuilt. The pki, key.pass and firmware are written by the first
    call for ``d`` only; each call (re)writes the ``images`` it names: bytes as given, an
    int as that many random bytes. ``client_cert``: writes with the publisher client
    certificate; ``extra``: more ``origin`` keys (``", endpoint: ..."``); ``release_id``:
    the recipe's id template."""
    if not (d / "pki").exists():
        shutil.copytree(pki.dir, d / "pki")
        shutil.copy(pki.key_pass, d / "key.pass")
        (d / "key.pass").chmod(0o600)
        (d / "firmware" / "bin").mkdir(parents=True)
        (d / "firmware" / "bin" / "undionly.kpxe").write_bytes(firmware)
        (d / "images").mkdir()
    for image, content in images.items():
        if isinstance(content, int):
            write_random(d / "images" / image, content)
        else:
            (d / "images" / image).write_bytes(content)
    recipe = d / "lab.yaml"
    cc = ", client_cert: publisher" if client_cert else ""
    recipe.write_text(f"""\
version: 1
name: {name}
ca: {{home: pki}}
signer: {{key: boot-signer, passphrase: {{file: key.pass}}}}
ipxe: {{prebuilt: firmware, targets: [bin/undionly.kpxe]}}
origin: {{url: '{origin}', ca_file: pki/ca.crt{cc}{extra}}}
entries:
  - {{name: linux, kernel: images/vmlinuz, initrds: [images/initrd.img], cmdline: quiet}}
release: {{id: "{release_id}"}}
""")
    return recipe
