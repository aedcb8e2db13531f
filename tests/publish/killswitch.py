"""Run the trustboot CLI and SIGKILL itself during an entry switch, at a chosen point.

KILL_AT=between: after the entry's .sig was moved into place, before the script is (the
mismatched pair); KILL_AT=before: before the first of the two moves; KILL_AT=after: after
both moves, before the switch record is removed; KILL_AT=prune: after the first object a
prune deletes (its manifest and other objects not yet).
"""

from __future__ import annotations

import os
import signal
from typing import Any

from trustboot.publish import webdav

where = os.environ.get("KILL_AT", "between")
real_move = webdav.WebDAVOrigin._move


def move(self: webdav.WebDAVOrigin, src: str, dst: str, **kw: Any) -> bool:
    entry = os.environ.get("KILL_ENTRY", "boot.ipxe")
    if (where == "between" and dst == entry) or (where == "before" and dst == entry + ".sig"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_move(self, src, dst, **kw)


real_delete = webdav.WebDAVOrigin.delete


def delete(self: webdav.WebDAVOrigin, key: str) -> None:
    if where == "after" and key == ".trustboot-switch.json":
        os.kill(os.getpid(), signal.SIGKILL)
    real_delete(self, key)
    if where == "prune" and key.startswith("releases/") and not key.endswith("/release.json"):
        os.kill(os.getpid(), signal.SIGKILL)


webdav.WebDAVOrigin._move = move  # type: ignore[method-assign]
webdav.WebDAVOrigin.delete = delete  # type: ignore[method-assign]

from trustboot.cli.main import main  # noqa: E402

main()
