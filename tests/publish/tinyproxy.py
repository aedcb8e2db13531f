"""A real HTTP proxy for the publish tests: tinyproxy (Debian `tinyproxy-bin`) on
127.0.0.1, with Basic authentication, logging every CONNECT, once per session."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.procs import stop_process
from tests.publish.conftest import free_port

# (tinyproxy takes [-a-z0-9._] only in BasicAuth)
USER, PASSWORD = "tb-proxy-user", "pr0xy-s3cret.9"


@dataclass
class Tinyproxy:
    port: int
    log: Path

    def url(self, password: str = PASSWORD) -> str:
        quoted = "".join(c if c.isalnum() else f"%{ord(c):02X}" for c in password)
        return f"http://{USER}:{quoted}@127.0.0.1:{self.port}"

    def connects(self) -> list[str]:
        """Every CONNECT target (host:port) the proxy was asked for, in order."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return re.findall(r"Request \(file descriptor \d+\): CONNECT (\S+) HTTP", text)


def _start(base: Path) -> tuple[subprocess.Popen[bytes], Tinyproxy]:
    port = free_port()
    conf = base / "tinyproxy.conf"
    log = base / "tinyproxy.log"
    # no ConnectPort line: CONNECT to any port (the origins here use ephemeral ones)
    conf.write_text(f"Port {port}\nListen 127.0.0.1\nTimeout 60\nLogLevel Connect\n"
                    f"LogFile \"{log}\"\nMaxClients 64\nAllow 127.0.0.1\n"
                    f"DisableViaHeader Yes\nBasicAuth {USER} {PASSWORD}\n")
    proc = subprocess.Popen([require_tool("tinyproxy", "tinyproxy-bin"), "-d", "-c",
                             str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, Tinyproxy(port, log)


@pytest.fixture(scope="session")
def tinyproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tinyproxy]:
    base = tmp_path_factory.mktemp("tinyproxy")
    for _ in range(3):  # the free port may be taken before tinyproxy binds it
        proc, proxy = _start(base)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", proxy.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:
            break
    else:
        err = proc.stderr.read().decode() if proc.stderr else ""
        pytest.fail(f"tinyproxy did not start: {err}")
    yield proxy
    stop_process(proc, 5)
