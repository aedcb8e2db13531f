"""Text an origin wrote (a lock record, an error page) reaches the terminal escaped: no
escape sequence a hostile origin sends can retitle the terminal, clear it, move its
cursor or reorder a line with bidi marks, and a newline it sends does not forge a line."""

from __future__ import annotations

import json
import time

from click.testing import CliRunner

from trustboot.cli.main import cli

from .conftest import Nginx, Pki, ReleaseFactory

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\u202eevil\nerror: forged line"


def test_a_hostile_lock_record_is_shown_escaped(pki: Pki, nginx: Nginx,
                                                make_release: ReleaseFactory) -> None:
    """On the real nginx WebDAV origin: a fresh lock whose record names a hostile owner
    and host; the refusal names them with every control and bidi character escaped."""
    release = make_release({"boot.ipxe": b"#!ipxe\necho locked\n"})
    lock = nginx.root / ".trustboot-lock"
    lock.mkdir()
    (lock / "owner.json").write_text(json.dumps(
        {"owner": HOSTILE, "host": HOSTILE, "pid": 1, "time": time.time()}))
    res = CliRunner().invoke(cli, [
        "publish", str(release), nginx.url, "--release-id", "r1", "--pki", str(pki.dir),
        "--client-cert", "publisher", "--client-key-passphrase-file", str(pki.key_pass),
        "--signer", "boot-signer"])
    assert res.exit_code == 1, res.output
    assert "is locked by" in res.output
    for raw in ("\x1b", "\x07", "\u202e", "\nerror: forged"):
        assert raw not in res.output, res.output
    assert "\\x1b]0;pwned" in res.output


def test_every_error_is_shown_with_its_lines_escaped() -> None:
    """The backstop for any message quoting outside text: control and bidi characters are
    escaped line by line; the lines a message is written in stay lines."""
    from trustboot.errors import OperationalError

    err = OperationalError("served \x1b[2Jx\u202e\nsecond line", hint="fix \x9b31m it")
    assert err.diagnostics() == ("error: served \\x1b[2Jx\\u202e\nsecond line\n"
                                 "  hint: fix \\x9b31m it")
