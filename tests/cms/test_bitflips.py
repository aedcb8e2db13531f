"""Any single-bit change to the image or to the signature is rejected (``--strict``).

iPXE skips some fields (versions, algorithm parameters, the hash named in
signatureAlgorithm ...), so a flip there is accepted by iPXE and by the default verdict,
which must then warn; ``--strict`` refuses exactly those.
"""

from __future__ import annotations

import hashlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cms.corpus import Corpus
from trustboot.cms.verify import TrustAnchor, digest_algorithms, verify_signature


def _judge(corpus: Corpus, image: bytes, sig: bytes) -> bool:
    digests = {h: hashlib.new(h, image).digest() for h in digest_algorithms(sig)}
    strict = verify_signature(sig, digests, trust=[TrustAnchor(corpus.anchor.sha256)],
                              now=corpus.now, strict=True)
    lenient = verify_signature(sig, digests, trust=[TrustAnchor(corpus.anchor.sha256)],
                               now=corpus.now)
    if lenient.ok and not strict.ok:  # accepted as iPXE would: but never silently
        assert strict.failure is not None
        assert any(w.rule == strict.failure.rule for w in lenient.warnings)
    return strict.ok


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_bit_flip_in_signature_is_rejected(corpus: Corpus, data: st.DataObject) -> None:
    # DER, as trustboot writes it (PEM armour has slack iPXE ignores: label, line breaks).
    name = data.draw(st.sampled_from(
        ["good", "good-ecdsa", "good-sha512", "good-no-intermediate"]))
    image = (corpus.directory / f"{name}.img").read_bytes()
    sig = (corpus.directory / f"{name}.img.sig").read_bytes()
    assert _judge(corpus, image, sig)
    bit = data.draw(st.integers(0, len(sig) * 8 - 1))
    flipped = _flip(sig, bit)
    assert not _judge(corpus, image, flipped), f"bit {bit} of {name}.img.sig"


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_bit_flip_in_image_is_rejected(corpus: Corpus, data: st.DataObject) -> None:
    image = (corpus.directory / "good.img").read_bytes()
    sig = (corpus.directory / "good.img.sig").read_bytes()
    bit = data.draw(st.integers(0, len(image) * 8 - 1))
    assert not _judge(corpus, _flip(image, bit), sig)


def test_every_byte_of_one_signature(corpus: Corpus) -> None:
    """Every byte of a DER signature matters (one bit per byte, rotating which bit)."""
    image = (corpus.directory / "good.img").read_bytes()
    sig = (corpus.directory / "good.img.sig").read_bytes()
    bits = [i * 8 + i % 8 for i in range(len(sig))]
    accepted = [bit for bit in bits if _judge(corpus, image, _flip(sig, bit))]
    assert accepted == []
