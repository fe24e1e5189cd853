"""Real-process test harness: nodes on free loopback ports, waits with deadlines, logs on
failure, and every process reaped by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from esdb_node.client import Client
from esdb_node.config import NodeConfig, parse_hostport
from esdb_node.errors import EsdbError
from esdb_node.model import NodeStatus

T = TypeVar("T")
_ALL: list[NodeProc] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (EsdbError, OSError, AssertionError) as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last error: {last_error}")


class NodeProc:
    """One `python -m esdb_node.node` process configured through ESDB_* variables."""

    def __init__(self, data_dir: Path, config: NodeConfig | None = None, **env: str) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        base = config or NodeConfig()
        if config is None or config.listen == NodeConfig().listen:
            base = replace(base, listen=f"127.0.0.1:{free_port()}")
        self.config = replace(base, data_dir=data_dir)
        self.extra_env = env
        self.proc: subprocess.Popen[bytes] | None = None
        _ALL.append(self)

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @property
    def url(self) -> str:
        return f"esdb://{self.config.listen}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, *, wait: bool = True) -> NodeProc:
        from esdb_cli.local import node_env

        env = node_env(self.config)
        env.update(self.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        with (self.data_dir / "esdb.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "esdb_node.node"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        if wait:
            self.wait_serving()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self, timeout: float = 2.0) -> NodeStatus:
        with Client(self.url, timeout=timeout, connect_timeout=1.0) as client:
            return client.status(self.url)

    def wait_serving(self, timeout: float = 30.0) -> NodeStatus:
        def serving() -> NodeStatus | None:
            if not self.alive():
                raise AssertionError(
                    f"node exited with {self.proc and self.proc.returncode}:\n"
                    + self.log_text()[-3000:]
                )
            return self.status()

        return wait_for(serving, timeout=timeout, what=f"{self.url} to serve")

    def client(self, **kwargs: Any) -> Client:
        return Client(self.url, **kwargs)

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL and reap: a crash, not a shutdown."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return (self.data_dir / "esdb.log").read_text(errors="replace")
        except OSError:
            return ""

    def rss_kib(self) -> int:
        return rss_kib(self.pid)


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def stop_all() -> None:
    while _ALL:
        _ALL.pop().stop()


def dump_logs() -> str:
    parts = []
    for node in _ALL:
        parts.append(f"===== log of {node.data_dir} =====\n{node.log_text()[-6000:]}")
    return "\n".join(parts)


@contextlib.contextmanager
def raw_socket(url: str) -> Iterator[socket.socket]:
    sock = socket.create_connection(parse_hostport(url), timeout=5)
    try:
        yield sock
    finally:
        sock.close()
