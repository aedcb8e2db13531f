"""What a recipe's entries publish (world-readable, signed) may not be a secret the run
reads: the CA's keys (anything under the CA home), the signer's passphrase file, the
origin's credentials file, the signing key file, nor any file others may not read."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from tests.release.conftest import Lab, release
from trustboot.errors import ConfigError
from trustboot.release.plan import ReleaseOptions, plan, validate
from trustboot.release.recipe import load_recipe

pytestmark = pytest.mark.usefixtures("no_ipxe_build")


def _entries(kernel: str, initrd: str = "images/initrd.img") -> str:
    return ("entries:\n  - name: linux\n    title: Test Linux\n"
            f"    kernel: {kernel}\n    initrds: [{initrd}]\n")


def _refused(lab: Lab, recipe: Path, *extra: str) -> str:
    for args in (("--dry-run",), ()):
        code, out, err = release(str(recipe), *args, *extra)
        assert code == 3, (out, err)
        assert not any(lab.origin.iterdir())  # nothing published, nothing claimed
    return err


def test_passphrase_file_as_kernel_is_refused(lab: Lab) -> None:
    err = _refused(lab, lab.recipe(entries=_entries("pass.txt")))
    assert "r.yaml:" in err and "pass.txt" in err and "passphrase" in err


def test_key_under_the_ca_home_as_initrd_is_refused(lab: Lab) -> None:
    key = lab.pki / "private" / "release-signer.key"
    err = _refused(lab, lab.recipe(entries=_entries("images/vmlinuz",
                                                    f"pki/private/{key.name}")))
    assert "CA home" in err and key.name in err


def test_a_link_to_a_ca_key_is_refused(lab: Lab) -> None:
    (lab.dir / "images" / "linux-6.1").symlink_to("../pki/private/issuing-ca.key")
    err = _refused(lab, lab.recipe(entries=_entries("images/linux-6.1")))
    assert "CA home" in err and "linux-6.1" in err


def test_public_certificate_under_the_ca_home_is_refused_too(lab: Lab) -> None:
    err = _refused(lab, lab.recipe(entries=_entries("pki/ca.crt")))
    assert "CA home" in err


def test_a_hard_link_to_the_passphrase_file_is_refused(lab: Lab) -> None:
    os.link(lab.passfile, lab.dir / "images" / "vmlinuz-hl")
    (lab.passfile).chmod(0o644)  # its mode does not make it public
    err = _refused(lab, lab.recipe(entries=_entries("images/vmlinuz-hl")))
    assert "passphrase" in err and "vmlinuz-hl" in err


def test_credentials_file_as_initrd_is_refused(lab: Lab) -> None:
    creds = lab.dir / "creds.txt"
    creds.write_text(f"file://{lab.origin} user:secret\n")
    creds.chmod(0o600)
    recipe = lab.recipe(entries=_entries("images/vmlinuz", "creds.txt"))
    text = recipe.read_text().replace("ca_file: pki/ca.crt}",
                                      "ca_file: pki/ca.crt, credentials: {file: creds.txt}}")
    recipe.write_text(text)
    err = _refused(lab, recipe, "--unsafe-unbound-credentials")
    assert "the origin's credentials file creds.txt" in err and "same file" in err, err


def test_operator_passphrase_file_as_kernel_is_refused(lab: Lab) -> None:
    pw = lab.dir / "images" / "pw"
    pw.write_bytes(lab.passfile.read_bytes())
    pw.chmod(0o644)
    recipe = lab.recipe(entries=_entries("images/pw"))
    err = _refused(lab, recipe, "--passphrase-file", str(pw))
    assert "passphrase" in err and "images/pw" in err


def test_input_others_cannot_read_is_refused_with_the_fix(lab: Lab) -> None:
    (lab.dir / "images" / "initrd.img").chmod(0o600)
    err = _refused(lab, lab.recipe())
    assert "chmod o+r" in err and "initrd.img" in err and "r.yaml:" in err


def test_an_open_file_in_a_directory_others_may_not_enter_is_refused(lab: Lab) -> None:
    """A 0644 token in a 0700 directory (~/.aws, a CI secrets directory) is private all
    the same: the mode of the file alone let a recipe publish it. The directories above
    the recipe's own are the operator's and are not judged (a 0750 home)."""
    secret = lab.dir / "secretdir"
    secret.mkdir(mode=0o700)
    (secret / "token").write_text("TOP-SECRET-TOKEN\n")
    (secret / "token").chmod(0o644)
    err = _refused(lab, lab.recipe(entries=_entries("images/vmlinuz", "secretdir/token")))
    assert "chmod o+x" in err and "secretdir" in err and "r.yaml:" in err
    secret.chmod(0o755)  # the control: open to all, it is published
    code, _, err = release(str(lab.recipe(entries=_entries("images/vmlinuz",
                                                           "secretdir/token"))))
    assert code == 0, err
    lab.dir.chmod(0o700)  # the recipe's own directory: the operator's choice
    try:
        code, _, err = release(str(lab.recipe(name="r2.yaml")))
        assert code == 0, err
    finally:
        lab.dir.chmod(0o755)


def test_input_swapped_for_a_secret_after_validation_is_refused_when_hashed(
        lab: Lab) -> None:
    recipe = load_recipe(lab.recipe())
    now = dt.datetime.now(dt.UTC)
    v = validate(recipe, ReleaseOptions(), now=now)
    kernel = lab.dir / "images" / "vmlinuz"
    kernel.unlink()
    lab.passfile.chmod(0o644)
    os.link(lab.passfile, kernel)
    with pytest.raises(ConfigError, match="passphrase"):
        plan(v, now=now)


def test_input_made_unreadable_after_validation_is_refused_when_hashed(lab: Lab) -> None:
    recipe = load_recipe(lab.recipe())
    now = dt.datetime.now(dt.UTC)
    v = validate(recipe, ReleaseOptions(), now=now)
    (lab.dir / "images" / "vmlinuz").chmod(0o600)
    with pytest.raises(ConfigError, match="not readable by others") as exc:
        plan(v, now=now)
    assert exc.value.hint is not None and "chmod o+r" in exc.value.hint
