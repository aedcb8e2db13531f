"""`trustboot ipxe build --secureboot-sign db` with the fake iPXE tree (no iPXE needed)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.ipxe.testpki import make_pki
from tests.secureboot.conftest import PASS
from trustboot.cli.main import cli
from trustboot.ipxe import build as B
from trustboot.secureboot import authenticode, keyset

CHAIN = ["--chain", "https://boot.example.com/boot.ipxe", "--signer", "boot-signer"]


@pytest.fixture
def pw(tmp_path: Path) -> Path:
    p = tmp_path / "sb.pass"
    p.write_text(PASS + "\n")
    p.chmod(0o600)
    return p


@pytest.fixture
def sb_env(env: dict[str, Path], tmp_path: Path, pw: Path) -> dict[str, Path]:
    """The fake-tree build environment, and a CA home holding a Secure Boot key set."""
    pki = make_pki(tmp_path / "pki-src").dir
    r = CliRunner().invoke(cli, ["secureboot", "init", "--pki", str(pki), "--name", "Build",
                                 "--passphrase-file", str(pw)])
    assert r.exit_code == 0, r.output
    return {**env, "pki": pki, "out": tmp_path / "out"}


def test_efi_outputs_signed_and_recorded(sb_env: dict[str, Path], pw: Path) -> None:
    r = CliRunner().invoke(cli, [
        "ipxe", "build", "--source", str(sb_env["tree"]), "--pki", str(sb_env["pki"]), *CHAIN,
        "-o", str(sb_env["out"]), "--secureboot-sign", "db",
        "--secureboot-passphrase-file", str(pw), "--json"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((sb_env["out"] / "manifest.json").read_text())
    db = keyset.load_keyset(sb_env["pki"]).certificates["db"]
    record = manifest["secureboot"]
    efi_targets = [t for t in B.DEFAULT_TARGETS if t.endswith(".efi")]
    assert sorted(record["outputs"]) == sorted(efi_targets)
    for target in efi_targets:
        signed = (sb_env["out"] / target).read_bytes()
        entry = record["outputs"][target]
        assert hashlib.sha256(signed).hexdigest() == entry["signed_sha256"]
        unsigned = (sb_env["out"] / target).with_name(entry["unsigned_copy"]).read_bytes()
        assert hashlib.sha256(unsigned).hexdigest() == entry["unsigned_sha256"]
        built = next(o for o in manifest["outputs"] if o["target"] == target)
        assert built["sha256"] == entry["unsigned_sha256"]  # the build's own record
        report = authenticode.verify_image(signed, [db], target)
        assert report.image_sha256 == entry["authenticode_sha256"]
        if shutil.which("sbverify"):
            import subprocess

            ok = subprocess.run(["sbverify", "--cert",
                                 str(sb_env["pki"] / "secureboot" / "db.crt"),
                                 str(sb_env["out"] / target)], capture_output=True)
            assert ok.returncode == 0
    # BIOS outputs are left alone.
    assert "bin/undionly.kpxe" not in record["outputs"]


def test_wrong_passphrase_fails_before_building(sb_env: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("not the passphrase\n")
    bad.chmod(0o600)
    r = CliRunner().invoke(cli, [
        "ipxe", "build", "--source", str(sb_env["tree"]), "--pki", str(sb_env["pki"]), *CHAIN,
        "-o", str(sb_env["out"]), "--secureboot-sign", "db",
        "--secureboot-passphrase-file", str(bad)])
    assert r.exit_code == 3 and "wrong passphrase" in r.output
    assert not sb_env["out"].exists()
    assert PASS not in r.output


def test_no_key_set(sb_env: dict[str, Path], pw: Path, tmp_path: Path) -> None:
    bare = make_pki(tmp_path / "bare").dir
    r = CliRunner().invoke(cli, [
        "ipxe", "build", "--source", str(sb_env["tree"]), "--pki", str(bare), *CHAIN,
        "-o", str(sb_env["out"]), "--secureboot-sign", "db",
        "--secureboot-passphrase-file", str(pw)])
    assert r.exit_code == 3 and "no Secure Boot key set" in r.output


@pytest.mark.parametrize("mode", [0o600, 0o644], ids=["0600", "0644"])
def test_signing_keeps_each_binarys_mode(sb_env: dict[str, Path], tmp_path: Path,
                                         mode: int) -> None:
    """A binary holding a client key is 0600: signing it (and keeping the unsigned copy)
    must not hand it to the umask's or the default public mode."""
    import datetime as dt
    import stat

    from tests.secureboot.mkpe import make_efi_app
    from trustboot.secrets import constant
    from trustboot.secureboot.sign_build import sign_outputs

    out = tmp_path / "built"
    out.mkdir()
    efi = out / "ipxe.efi"
    efi.write_bytes(make_efi_app())
    efi.chmod(mode)
    signer = keyset.open_signer(keyset.load_keyset(sb_env["pki"]), "db",
                                constant(PASS.encode()), now=dt.datetime.now(dt.UTC))
    sign_outputs({"bin-x86_64-efi/ipxe.efi": efi}, {}, out, signer)
    for path in (efi, out / "ipxe.unsigned.efi"):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def test_an_absurdly_large_efi_output_is_refused_unread(sb_env: dict[str, Path],
                                                        tmp_path: Path) -> None:
    """A build output past authenticode.MAX_IMAGE (a tree's make can write anything) is
    refused by its size before it is read into memory, and left as it was."""
    import datetime as dt

    from trustboot.errors import TrustbootError
    from trustboot.secrets import constant
    from trustboot.secureboot.sign_build import sign_outputs

    out = tmp_path / "built"
    out.mkdir()
    efi = out / "ipxe.efi"
    with efi.open("wb") as fh:  # sparse: no disk or memory spent
        fh.truncate(authenticode.MAX_IMAGE + 1)
    signer = keyset.open_signer(keyset.load_keyset(sb_env["pki"]), "db",
                                constant(PASS.encode()), now=dt.datetime.now(dt.UTC))
    with pytest.raises(TrustbootError, match=r"EFI binary .* is larger than"):
        sign_outputs({"bin-x86_64-efi/ipxe.efi": efi}, {}, out, signer)
    assert efi.stat().st_size == authenticode.MAX_IMAGE + 1
    assert not (out / "ipxe.unsigned.efi").exists()
    assert not (out / "manifest.json").exists()
