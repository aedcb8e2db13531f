"""Signature algorithms as types: a digest and a key family, never free-form strings.

Both are ``StrEnum`` so their values are the names used in CLI options, manifests and
the CMS code ("sha256", "rsa"), and a plain string compares equal to its member.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from trustboot.errors import ConfigError

if TYPE_CHECKING:  # cryptography is only needed when a hash object is asked for
    from cryptography.hazmat.primitives import hashes

# DER of DigestInfo up to the digest bytes (RFC 8017 section 9.2, note 1): what an RSA
# PKCS#1 v1.5 token mechanism (CKM_RSA_PKCS) must be given around a host-computed digest.
_DIGEST_INFO_PREFIX = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
_SIZES = {"sha256": 32, "sha384": 48, "sha512": 64}


class HashAlgorithm(StrEnum):
    """Digests trustboot signs with (iPXE also reads SHA-1/224; we never make them)."""

    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"

    @classmethod
    def parse(cls, text: str | HashAlgorithm) -> HashAlgorithm:
        try:
            return cls(str(text).lower())
        except ValueError:
            raise ConfigError(f"unsupported hash {text!r}",
                              hint="use sha256, sha384 or sha512") from None

    @property
    def digest_size(self) -> int:
        return _SIZES[self.value]

    def digest_info(self, digest: bytes) -> bytes:
        """DigestInfo DER around ``digest`` (the input of raw RSA PKCS#1 v1.5 signing)."""
        self.check_digest(digest)
        return _DIGEST_INFO_PREFIX[self.value] + digest

    def check_digest(self, digest: bytes) -> None:
        if len(digest) != self.digest_size:
            raise ValueError(f"{self.value} digest must be {self.digest_size} bytes, "
                             f"got {len(digest)}")

    def crypto(self) -> hashes.HashAlgorithm:
        from cryptography.hazmat.primitives import hashes

        classes: dict[str, type[hashes.HashAlgorithm]] = {
            "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
        return classes[self.value]()


class KeyAlgorithm(StrEnum):
    """The signature scheme of a key: RSA PKCS#1 v1.5, or ECDSA (P-256/P-384 for iPXE)."""

    RSA = "rsa"
    ECDSA = "ecdsa"


@dataclass(frozen=True)
class SignatureAlgorithm:
    key: KeyAlgorithm
    hash: HashAlgorithm

    def __str__(self) -> str:
        return f"{self.key.value}-{self.hash.value}"
