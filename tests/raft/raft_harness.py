"""Real-process raft clusters on 127.0.0.1 for tests: start, drive, kill, always reap.

The Raft layer's own harness: bare RaftNodes in driver processes (driver.py), below the node
and its client protocol. Waits, ports and the failure log dump are the shared harness's
(tests/harness)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.harness import (
    PortClash,
    free_ports,
    port_clash,
    retry_on_port_clash,
    track,
    wait_for,
)
from tests.harness.registry import log_section

DRIVER = Path(__file__).with_name("driver.py")
REPO = Path(__file__).resolve().parents[2]
SECRET = "test-secret-7f3a"

# Fast enough for tests, slow enough for a shared 2-core machine.
FAST: dict[str, Any] = {
    "election_timeout_min": 0.8,
    "election_timeout_max": 1.6,
    "leader_fallback_timeout": 2.0,
    "connection_timeout": 4.0,
    "connection_retry": 0.5,
}


class NodeDied(AssertionError):
    pass


class Node:
    _ids = itertools.count(1)

    def __init__(
        self, addr: str, peers: list[str], data_dir: Path, log_dir: Path, **config: Any
    ) -> None:
        self.addr = addr
        self.peers = peers
        self.data_dir = data_dir
        self.log_path = log_dir / f"node-{addr.rsplit(':', 1)[1]}.log"
        self.config = config
        self.env: dict[str, str] = {}
        self.proc: subprocess.Popen[str] | None = None
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.exit_code: int | None = None

    # --- process ----------------------------------------------------------------------------------

    def start(self) -> Node:
        spec = {
            "self_addr": self.addr,
            "peers": self.peers,
            "data_dir": str(self.data_dir),
            "secret": SECRET,
            **FAST,
            **self.config,
        }
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log_file = open(self.log_path, "a")  # noqa: SIM115 (kept open for the child)
        log_file.write(f"--- start {time.strftime('%H:%M:%S')}\n")
        log_file.flush()
        self.proc = subprocess.Popen(
            [sys.executable, str(DRIVER), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            env=env,
        )
        log_file.close()
        self._replies = {}
        threading.Thread(target=self._reader, args=(self.proc,), daemon=True).start()
        started = self._next_event(lambda e: e.get("event") == "started", 30)
        if started is None:
            self.kill()
            clash = port_clash(self.log_path.read_text(errors="replace")[offset:])
            if clash is not None:
                raise PortClash(f"{self.addr}: {clash}")
        assert started is not None, f"{self.addr} did not start; see {self.log_path}"
        return self

    def _reader(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            rid = msg.get("id")
            if rid is not None:
                with self._lock:
                    box = self._replies.get(rid)
                if box is not None:
                    box.put(msg)
            else:
                self.events.put(msg)

    def _next_event(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                e = self.events.get(timeout=0.1)
            except queue.Empty:
                if self.proc is not None and self.proc.poll() is not None:
                    return None
                continue
            if pred(e):
                return e
        return None

    def move_to(self, addr: str, peers: list[str]) -> None:
        """New addresses for a node that never ran (its first ports were taken)."""
        self.addr = addr
        self.peers = peers
        self.log_path = self.log_path.with_name(f"node-{addr.rsplit(':', 1)[1]}.log")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.exit_code = self.proc.wait(30)
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()

    def stop(self) -> None:
        """Clean exit if possible, SIGKILL otherwise."""
        if self.alive:
            with contextlib.suppress(Exception):
                self.request("exit", timeout=15)
            try:
                assert self.proc is not None
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    # --- requests ---------------------------------------------------------------------------------

    def send(self, op: str, **kw: Any) -> queue.Queue[dict[str, Any]]:
        if not self.alive:
            raise NodeDied(f"{self.addr} is not running; see {self.log_path}")
        rid = next(self._ids)
        box: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._replies[rid] = box
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": rid, "op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        return box

    def request(self, op: str, timeout: float = 30.0, **kw: Any) -> dict[str, Any]:
        box = self.send(op, **kw)
        return self.wait_reply(box, timeout)

    def wait_reply(self, box: queue.Queue[dict[str, Any]], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = box.get(timeout=0.1)
                break
            except queue.Empty:
                if not self.alive:
                    raise NodeDied(f"{self.addr} died; see {self.log_path}") from None
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.addr}: no reply within {timeout}s") from None
        if not reply.get("ok"):
            raise AssertionError(f"{self.addr}: {reply.get('error')}")
        return reply

    def status(self) -> dict[str, Any]:
        return self.request("status", timeout=10)


class Cluster:
    def __init__(self, tmp: Path, n: int, **config: Any) -> None:
        self.tmp = tmp
        self.addrs = [f"127.0.0.1:{p}" for p in free_ports(n)]
        self.nodes = [
            Node(a, [x for x in self.addrs if x != a], tmp / f"n{i}", tmp, **config)
            for i, a in enumerate(self.addrs)
        ]
        self.extra: list[Node] = []
        track(self)

    def start(self) -> Cluster:
        """Start every node; if one could not listen (a port taken meanwhile), all of them
        again on fresh ports (nothing has been written yet)."""
        retry_on_port_clash(self._start_all, what=f"raft cluster in {self.tmp}")
        return self

    def _start_all(self) -> None:
        try:
            for node in self.nodes:
                node.start()
        except PortClash:
            for node in self.nodes:
                node.kill()
                shutil.rmtree(node.data_dir, ignore_errors=True)
            self.addrs = [f"127.0.0.1:{p}" for p in free_ports(len(self.nodes))]
            for node, addr in zip(self.nodes, self.addrs, strict=True):
                node.move_to(addr, [x for x in self.addrs if x != addr])
            raise

    def all_nodes(self) -> list[Node]:
        return self.nodes + self.extra

    def new_node(self, peers: list[str], **config: Any) -> Node:
        (port,) = free_ports(1)
        node = Node(
            f"127.0.0.1:{port}", peers, self.tmp / f"x{len(self.extra)}", self.tmp, **config
        )
        self.extra.append(node)
        return node

    def leader(self, among: list[Node] | None = None, timeout: float = 15.0) -> Node:
        candidates = among if among is not None else [n for n in self.nodes if n.alive]

        def find() -> Node | None:
            for node in candidates:
                if node.alive and node.status()["role"] == "leader":
                    return node
            return None

        return wait_for(find, timeout=timeout, what="a leader", interval=0.1)

    def close(self) -> None:
        for node in self.all_nodes():
            with contextlib.suppress(Exception):
                node.kill()

    def logs(self) -> str:
        return "\n".join(
            text
            for node in self.all_nodes()
            if (text := log_section(f"raft node {node.addr}", node.log_path))
        )


MakeRaftCluster = Callable[..., Cluster]
