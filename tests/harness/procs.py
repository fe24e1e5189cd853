"""Processes the tests started: whose child a pid is, waiting one out, its memory."""

from __future__ import annotations

import os

import psutil

from esdb_cli import local
from tests.harness.waiting import wait_for


def our_child(pid: int) -> bool:
    """Nodes started by this test process (directly, or by `esdb` run in-process) are its
    children. pid_max is 32768 here and other engineers start nodes too: a pid from a pid
    file may already belong to someone else's node, which must never be signalled."""
    try:
        return psutil.Process(pid).ppid() == os.getpid()
    except psutil.Error:
        return False


def wait_gone(pid: int, timeout: float = 15.0) -> None:
    """Until `pid` (our child) has exited, reaping it."""

    def gone() -> bool:
        local.reap(pid)
        return not (local.is_node_process(pid) and our_child(pid))

    wait_for(gone, timeout=timeout, what=f"node process {pid} to exit", interval=0.02)


def rss_kib(pid: int) -> int:
    """Resident memory of a process."""
    return psutil.Process(pid).memory_info().rss // 1024
