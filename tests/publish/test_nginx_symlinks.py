"""The generated nginx site does not follow symbolic links planted under its root."""

from __future__ import annotations

import os
from pathlib import Path

from tests.publish.conftest import Nginx, Pki, anon_get


def test_a_planted_link_is_not_followed(pki: Pki, nginx: Nginx, tmp_path: Path) -> None:
    """WebDAV cannot make a link, but whoever else writes to the root could: a link
    (`leak -> /etc/...`, `releases -> /elsewhere`) served what it pointed to, to anyone."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"not for booting clients")
    os.chmod(tmp_path, 0o755)
    os.chmod(outside, 0o755)
    (nginx.root / "served").write_bytes(b"fine")
    os.symlink(outside / "secret", nginx.root / "leak")
    os.symlink(outside, nginx.root / "releases")
    assert anon_get(nginx.url + "served", pki).content == b"fine"
    for path in ("leak", "releases/secret"):
        res = anon_get(nginx.url + path, pki)
        assert res.status_code in (403, 404), (path, res.status_code)
        assert b"not for booting" not in res.content
