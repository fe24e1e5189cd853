"""One node process for a test: started on fresh loopback ports, waited on with deadlines,
its log attached to a failing test's report, and stopped by PID at teardown."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from esdb_node.client import Client
from esdb_node.config import NodeConfig, parse_hostport
from esdb_node.layout import DataDir
from esdb_node.model import NodeStatus
from tests.harness.ports import PortClash, free_port, loopback, port_clash, retry_on_port_clash
from tests.harness.procs import rss_kib
from tests.harness.registry import log_section, track
from tests.harness.waiting import wait_for

# Sets the addresses the harness chooses for a node (a config with fresh ports); called
# again when a port was taken meanwhile.
Ports = Callable[[NodeConfig], NodeConfig]


def client_port(config: NodeConfig) -> NodeConfig:
    return replace(config, listen=loopback(free_port()))


def client_and_raft_ports(config: NodeConfig) -> NodeConfig:
    return replace(config, listen=loopback(free_port()), raft=loopback(free_port()))


class NodeProc:
    """One `python -m esdb_node.node` process configured through ESDB_* variables.

    `ports` picks the addresses the harness owns (default: the client port, unless `config`
    names one). If the node cannot listen on them at its first start, it starts again on
    fresh ones (a port taken meanwhile); later starts keep the node's addresses.
    """

    def __init__(
        self,
        data_dir: Path,
        config: NodeConfig | None = None,
        *,
        ports: Ports | None = None,
        **env: str,
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        base = config or NodeConfig()
        if ports is None and base.listen == NodeConfig().listen:
            ports = client_port
        self._ports = ports
        self.config = replace(ports(base) if ports else base, data_dir=data_dir)
        self.extra_env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        track(self)

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @property
    def files(self) -> DataDir:
        return DataDir(self.data_dir)

    @property
    def url(self) -> str:
        return f"{self.config.url_scheme}{self.config.listen}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # --- starting ---------------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> NodeProc:
        """Start the node; with `wait`, until it serves `status`. Without, until it listens
        or has exited (the test looks at how)."""
        first = self.proc is None
        if first and self._ports is not None and not self.files.has_raft_state():
            retry_on_port_clash(self._launch, what=f"node in {self.data_dir}")
        else:
            self._launch()
        if wait:
            self.wait_serving()
        return self

    def _launch(self) -> None:
        from esdb_cli.local import node_env

        env = node_env(self.config)
        env.update(self.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        made = {p for p in (self.files.store, self.files.raft) if not p.exists()}
        self._log_offset = self.files.log.stat().st_size if self.files.log.exists() else 0
        with self.files.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "esdb_node.node"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        wait_for(
            lambda: self.listening() or not self.alive(),
            timeout=60,
            what=f"the node in {self.data_dir} to listen or exit",
        )
        clash = None if self.alive() else port_clash(self.log_text()[self._log_offset :])
        if clash is not None and self._ports is not None:
            for path in made:  # what the failed start created, so the next one is a first start
                shutil.rmtree(path, ignore_errors=True)
            self.config = self._ports(self.config)
            raise PortClash(f"{self.data_dir}: {clash}")

    def listening(self) -> bool:
        """The node wrote its runtime file: its ports are bound (Raft's before the client's)."""
        runtime = self.files.read_runtime()
        return bool(runtime and self.proc is not None and runtime.get("pid") == self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_serving(self, timeout: float = 30.0) -> NodeStatus:
        def serving() -> NodeStatus | None:
            if not self.alive():
                raise AssertionError(
                    f"node exited with {self.proc and self.proc.returncode}:\n"
                    + self.log_text()[-3000:]
                )
            return self.status()

        return wait_for(serving, timeout=timeout, what=f"{self.url} to serve")

    # --- talking to it ----------------------------------------------------------------------

    def status(self, timeout: float = 2.0) -> NodeStatus:
        with Client(self.url, timeout=timeout, connect_timeout=1.0) as client:
            return client.status(self.url)

    def client(self, **kwargs: Any) -> Client:
        return Client(self.url, **kwargs)

    # --- stopping ---------------------------------------------------------------------------

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

    def close(self) -> None:
        self.stop()

    # --- looking at it ----------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.files.log.read_text(errors="replace")
        except OSError:
            return ""

    def logs(self) -> str:
        return log_section(f"node {self.url}", self.files.log)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)


@contextlib.contextmanager
def raw_socket(url: str) -> Iterator[socket.socket]:
    sock = socket.create_connection(parse_hostport(url), timeout=5)
    try:
        yield sock
    finally:
        sock.close()
