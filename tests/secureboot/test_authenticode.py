"""Authenticode signing of EFI binaries, checked by sbverify and osslsigncode."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustboot.errors import ConfigError, VerificationError
from trustboot.secrets import constant
from trustboot.secureboot import authenticode, keyset

from .conftest import PASS, Run
from .mkpe import make_efi_app


@pytest.fixture
def app(tmp_path: Path) -> Path:
    p = tmp_path / "app.efi"
    p.write_bytes(make_efi_app(pad_to=0x1F0))  # an unaligned end: signing must pad it
    return p


def _sign(run: Run, pki: Path, pw: Path, *files: Path, out: Path | None = None) -> None:
    extra = ["--out", str(out)] if out else []
    r = run("secureboot", "sign", "--pki", str(pki), "--passphrase-file", str(pw),
            *map(str, files), *extra)
    assert r.exit_code == 0, r.output


def test_sign_and_verify_independently(app: Path, keyset_pki: Path, pw: Path,
                                       run: Run) -> None:
    _sign(run, keyset_pki, pw, app)
    signed = app.with_name("app.signed.efi")
    r = run("secureboot", "verify", "--pki", str(keyset_pki), str(signed), "--json")
    assert r.exit_code == 0, r.output
    assert '"ok": true' in r.output
    db = keyset_pki / "secureboot" / "db.crt"
    if shutil.which("sbverify"):
        out = subprocess.run(["sbverify", "--cert", str(db), str(signed)],
                             capture_output=True, text=True)
        assert out.returncode == 0 and "Signature verification OK" in out.stdout + out.stderr
    if shutil.which("osslsigncode"):
        out = subprocess.run(["osslsigncode", "verify", "-in", str(signed), "-CAfile", str(db)],
                             capture_output=True, text=True)
        text = out.stdout + out.stderr
        assert out.returncode == 0 and "Signature verification: ok" in text, text
        assert "Calculated message digest" in text
    if not (shutil.which("sbverify") and shutil.which("osslsigncode")):
        pytest.skip("independent check needs sbsigntool and osslsigncode (apt-get install)")


def test_tampered_image_refused_everywhere(app: Path, keyset_pki: Path, pw: Path,
                                           run: Run) -> None:
    _sign(run, keyset_pki, pw, app)
    signed = app.with_name("app.signed.efi")
    data = bytearray(signed.read_bytes())
    data[0x200] ^= 0x01  # first byte of .text
    signed.write_bytes(bytes(data))
    r = run("secureboot", "verify", "--pki", str(keyset_pki), str(signed))
    assert r.exit_code == 4 and "changed after signing" in r.output
    if shutil.which("sbverify"):
        out = subprocess.run(["sbverify", "--cert", str(keyset_pki / "secureboot/db.crt"),
                              str(signed)], capture_output=True, text=True)
        assert out.returncode != 0


def test_other_key_set_refused(app: Path, keyset_pki: Path, other_pki: Path, pw: Path,
                               run: Run) -> None:
    _sign(run, other_pki, pw, app)  # same names, other keys
    signed = app.with_name("app.signed.efi")
    r = run("secureboot", "verify", "--pki", str(keyset_pki), str(signed))
    assert r.exit_code == 4 and "untrusted-signer" not in r.output
    assert "is not, and is not issued by" in r.output
    if shutil.which("sbverify"):
        out = subprocess.run(["sbverify", "--cert", str(keyset_pki / "secureboot/db.crt"),
                              str(signed)], capture_output=True, text=True)
        assert out.returncode != 0


def test_unsigned_refused(app: Path, keyset_pki: Path, run: Run) -> None:
    r = run("secureboot", "verify", "--pki", str(keyset_pki), str(app))
    assert r.exit_code == 4 and "not signed" in r.output


def test_not_pe_refused_before_unlock(tmp_path: Path, keyset_pki: Path, run: Run) -> None:
    junk = tmp_path / "x.efi"
    junk.write_bytes(b"#!ipxe\necho hi\n")
    # No passphrase source at all: the input is refused before the key is needed.
    r = run("secureboot", "sign", "--pki", str(keyset_pki), str(junk))
    assert r.exit_code == 3 and "not a PE/COFF EFI binary" in r.output
    assert not junk.with_name("x.signed.efi").exists()


def test_already_signed_refused(app: Path, keyset_pki: Path, pw: Path, run: Run) -> None:
    _sign(run, keyset_pki, pw, app)
    r = run("secureboot", "sign", "--pki", str(keyset_pki), "--passphrase-file", str(pw),
            str(app.with_name("app.signed.efi")))
    assert r.exit_code == 3 and "already signed" in r.output


def test_directory_and_fifo_refused(tmp_path: Path, keyset_pki: Path, run: Run) -> None:
    import os

    fifo = tmp_path / "fifo.efi"
    os.mkfifo(fifo)
    r = run("secureboot", "verify", "--pki", str(keyset_pki), str(fifo))
    assert r.exit_code == 3 and "not a regular file" in r.output


@pytest.mark.parametrize("when, message", [("after", "expired"), ("before", "not valid until")])
def test_db_outside_validity_refused(keyset_pki: Path, when: str, message: str) -> None:
    ks = keyset.load_keyset(keyset_pki)
    db = ks.certificates["db"]
    now = (db.not_valid_after_utc + dt.timedelta(days=1) if when == "after"
           else db.not_valid_before_utc - dt.timedelta(days=1))
    with pytest.raises(ConfigError, match=message):
        keyset.open_signer(ks, "db", constant(PASS.encode()), now=now)


def test_signature_is_the_last_thing_and_aligned(app: Path, keyset_pki: Path) -> None:
    ks = keyset.load_keyset(keyset_pki)
    signer = keyset.open_signer(ks, "db", constant(PASS.encode()), now=dt.datetime.now(dt.UTC))
    signed = keyset.sign_efi(app.read_bytes(), "app", signer)
    pe = authenticode.parse_pe(signed, "signed")
    offset, size = pe.cert_table
    assert offset % 8 == 0 and offset + size == len(signed)
    assert authenticode.image_hash(pe) == authenticode.image_hash(
        authenticode.parse_pe(authenticode.prepare_unsigned(app.read_bytes(), "a"), "a"))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_headers_never_crash(data: st.DataObject) -> None:
    image = bytearray(make_efi_app())
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, 0x1FF))
        image[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(image)))
    try:
        pe = authenticode.parse_pe(bytes(image[:cut]), "fuzz")
        authenticode.image_hash(pe)
        authenticode.verify_image(bytes(image[:cut]), [], "fuzz")
    except (ConfigError, VerificationError):
        pass
