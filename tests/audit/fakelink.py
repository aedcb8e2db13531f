"""A stand-in for the packet socket: frames go through a socketpair, servers are callables."""

from __future__ import annotations

import socket
from collections.abc import Callable

from trustboot.audit import dhcp4, dhcp6, frames
from trustboot.audit.model import Observation
from trustboot.audit.probe import Listener, ProbeConfig

Responder = Callable[[frames.Frame], list[bytes]]


class FakeLink:
    filtered = True

    def __init__(self, responders: list[Responder] | None = None) -> None:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ours.setblocking(False)
        self.theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        self.sent: list[bytes] = []
        self.unicast: list[bytes] = []
        self.multicast: list[bytes] = []
        self.responders = responders or []
        self.kernel_drops = 0  # what drops() reports once, as the kernel's counter would

    def inject(self, frame: bytes) -> None:
        self.theirs.send(frame)

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)
        parsed = frames.parse_frame(frame)
        if parsed is None:
            return
        for responder in self.responders:
            for reply in responder(parsed):
                self.theirs.send(reply)

    def recv(self) -> tuple[bytes, int] | None:
        try:
            return self.ours.recv(65536), 0
        except BlockingIOError:
            return None

    def drops(self) -> int:
        dropped, self.kernel_drops = self.kernel_drops, 0
        return dropped

    def fileno(self) -> int:
        return self.ours.fileno()

    def add_unicast(self, mac: bytes) -> None:
        self.unicast.append(mac)

    def add_multicast(self, mac: bytes) -> None:
        self.multicast.append(mac)

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()

    def _sent_to(self, port: int) -> list[bytes]:
        """UDP payloads of the frames we sent to ``port``."""
        parsed = (frames.parse_frame(frame) for frame in self.sent)
        return [p.payload for p in parsed if p is not None and p.dport == port]

    def sent_dhcp4(self) -> list[dhcp4.Dhcp4Packet]:
        return [dhcp4.parse(payload) for payload in self._sent_to(dhcp4.SERVER_PORT)]

    def sent_dhcp6(self) -> list[dhcp6.Dhcp6Message]:
        return [dhcp6.parse(payload) for payload in self._sent_to(dhcp6.SERVER_PORT)]


def listener(link: FakeLink, *, own_ip: str | None = None,
             **config: object) -> tuple[Listener, Observation]:
    cfg = ProbeConfig(interface="fake0", **config)  # type: ignore[arg-type]
    obs = Observation(interface="fake0", mode="passive" if cfg.passive else "active",
                      window=cfg.window)
    return Listener(cfg, obs, link=link, own_ip=own_ip), obs
