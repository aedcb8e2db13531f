"""`trustboot release --crl`: a job with the CA's published CRL (its CA home a public copy
that may not know of the revocation yet) never publishes with a signer the CRL revokes.
iPXE reads no CRL: such a release would boot. publish refuses it the same way."""

from __future__ import annotations

import shutil

from tests.release.conftest import PASSPHRASE, SIGNER, Lab, release
from trustboot.ca.store import CertificateAuthority
from trustboot.secrets import constant


def test_a_signer_the_crl_revokes_publishes_nothing(lab: Lab) -> None:
    revoked = lab.dir.parent / "ca-after-revocation"
    shutil.copytree(lab.pki, revoked)
    CertificateAuthority.open(revoked).revoke(SIGNER, constant(PASSPHRASE),
                                              reason="key_compromise")
    crl = revoked / "crl.pem"
    recipe = lab.recipe()
    code, _, err = release(str(recipe), "--crl", str(crl))
    assert code == 4, err
    assert "revoked-signer" in err or "revoked" in err
    assert SIGNER in err and "key_compromise" in err
    assert not (lab.origin / "releases").exists()  # refused before any upload
    assert not (lab.origin / "boot.ipxe").exists()
    # the CA home the recipe names does not know of it: without the CRL it goes through
    code, _, err = release(str(recipe))
    assert code == 0, err


def test_a_signer_the_ca_home_revokes_publishes_nothing(lab: Lab) -> None:
    CertificateAuthority.open(lab.pki).revoke(SIGNER, constant(PASSPHRASE),
                                              reason="key_compromise")
    code, _, err = release(str(lab.recipe()))
    assert code == 4, err
    assert SIGNER in err and "revoked" in err
    assert list(lab.origin.iterdir()) == []
