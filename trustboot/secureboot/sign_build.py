"""Secure Boot signing of an iPXE build's EFI outputs (``ipxe build --secureboot-sign db``)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes

from trustboot import fsutil
from trustboot.errors import OperationalError
from trustboot.ipxe.build import KNOWN_TARGETS
from trustboot.keys.signer import KeySigner
from trustboot.secureboot import authenticode, keyset


def sign_outputs(outputs: Mapping[str, Path], manifest: dict[str, Any], output_dir: Path,
                 signer: KeySigner) -> dict[str, Any]:
    """Sign every EFI output in place, keep the unsigned binary beside it as
    ``NAME.unsigned.efi``, and record both digests in ``manifest.json`` (``secureboot``).

    Each signed binary is verified against the db certificate before it replaces the
    unsigned one; files keep their mode (binaries holding a client key stay 0600).
    """
    db = signer.certificate
    record: dict[str, Any] = {"db_subject": db.subject.rfc4514_string(),
                              "db_sha256": db.fingerprint(hashes.SHA256()).hex(),
                              "outputs": {}}
    for target, path in sorted(outputs.items()):
        if KNOWN_TARGETS[target].platform != "efi":
            continue
        data = fsutil.read_capped(path, authenticode.MAX_IMAGE, "EFI binary")
        signed = keyset.sign_efi(data, str(path), signer)
        report = authenticode.verify_image(signed, [db], str(path))
        mode = stat.S_IMODE(os.stat(path).st_mode)
        unsigned_path = path.with_name(f"{path.stem}.unsigned{path.suffix}")
        try:
            fsutil.atomic_write(unsigned_path, data, mode=mode)
            fsutil.atomic_write(path, signed, mode=mode)
        except OSError as exc:
            raise OperationalError(f"cannot write {path}: {exc.strerror}") from None
        record["outputs"][target] = {
            "unsigned_sha256": hashlib.sha256(data).hexdigest(),
            "signed_sha256": hashlib.sha256(signed).hexdigest(),
            "authenticode_sha256": report.image_sha256,
            "unsigned_copy": unsigned_path.name,
        }
    manifest["secureboot"] = record
    fsutil.atomic_write(output_dir / "manifest.json",
                        (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return record
