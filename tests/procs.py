"""Stopping the servers and guests the tests start (nginx, tinyproxy, RGW, QEMU, dnsmasq),
and counting the processes the code under test forks."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest


def stop_processes(procs: Sequence[subprocess.Popen[Any]], timeout: float = 10.0) -> None:
    """TERM every process still running, then reap each, killing one that outlives
    ``timeout``: all are asked at once, so N servers take one timeout, not N."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    stop_processes([proc], timeout)


def count_forks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids of the children os.fork() makes in this process from now on."""
    forks: list[int] = []
    real = os.fork

    def counting() -> int:
        pid = real()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", counting)
    return forks


def processes_with(marker: str) -> list[int]:
    """The pids of live processes whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # gone meanwhile
            if marker.encode() in cmdline:
                found.append(int(entry.name))
    return found


def child_pids() -> set[int]:
    """This process's child processes, exited ones not yet reaped (zombies) included."""
    found: set[int] = set()
    tasks = Path("/proc/self/task")
    for task in tasks.iterdir() if tasks.is_dir() else ():
        try:
            found.update(int(pid) for pid in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def process_state(pid: int) -> tuple[str, str] | None:
    """(command name, state letter: R, S, Z...) of process ``pid``; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:][:1]


def running_children() -> dict[int, str]:
    """This process's child processes that have not exited (pid -> command name)."""
    found: dict[int, str] = {}
    for pid in child_pids():
        state = process_state(pid)
        if state is not None and state[1] != "Z":  # a zombie has exited (only not reaped)
            found[pid] = state[0]
    return found
