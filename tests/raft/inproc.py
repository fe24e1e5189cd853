"""RaftNodes in the test process (all created on the main thread, as required)."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from esdb_node.deadline import Deadline
from esdb_node.raft import Outcome, RaftConfig, RaftNode
from esdb_node.storage import commands as cmd
from esdb_node.storage.store import Store
from tests.harness import free_port, free_ports, loopback, retry_on_port_clash, wait_for
from tests.raft.raft_harness import FAST, SECRET


class InprocCluster:
    def __init__(self, tmp: Path, n: int, **config: Any) -> None:
        self.stores: list[Store] = []
        self.nodes: list[RaftNode] = []
        self.addrs: list[str] = []
        retry_on_port_clash(lambda: self._build(tmp, n, config), what=f"raft nodes in {tmp}")

    def _build(self, tmp: Path, n: int, config: dict[str, Any]) -> None:
        """All nodes on fresh ports; if one cannot listen, none are left behind."""
        self.addrs = [f"127.0.0.1:{p}" for p in free_ports(n)]
        try:
            for i, addr in enumerate(self.addrs):
                data = tmp / f"n{i}"
                store = Store(data / "store", sync=False)
                self.stores.append(store)
                cfg = RaftConfig(
                    self_addr=addr,
                    peers=tuple(a for a in self.addrs if a != addr),
                    data_dir=data,
                    secret=SECRET,
                    **{**FAST, **config},
                )
                self.nodes.append(RaftNode(cfg, store))
        except BaseException:
            self.close()
            self.nodes, self.stores = [], []
            for i in range(n):
                shutil.rmtree(tmp / f"n{i}", ignore_errors=True)
            raise

    def leader(self, timeout: float = 15.0) -> RaftNode:
        def find() -> RaftNode | None:
            leaders = [n for n in self.nodes if n.is_leader()]
            return leaders[0] if len(leaders) == 1 else None

        return wait_for(find, timeout=timeout, what="one leader")

    def close(self) -> None:
        for node in self.nodes:
            node.destroy()
        for store in self.stores:
            store.close()


def start_raft_node(config: RaftConfig) -> tuple[RaftNode, Store]:
    """A RaftNode and its store for `config`; if `config`'s port turns out to be taken
    (a clash), what the attempt created is removed so a retry on another port starts fresh."""
    layout = config.layout
    made = [p for p in (layout.store, layout.raft) if not p.exists()]
    store = Store(layout.store, sync=False)
    try:
        return RaftNode(config, store), store
    except BaseException:
        store.close()
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
        raise


def start_on_fresh_port(config: RaftConfig) -> tuple[RaftNode, Store]:
    """`start_raft_node` with `config` on a fresh loopback port, again on another one while
    the port turns out to be taken (nobody knows this node's address yet)."""

    def attempt() -> tuple[RaftNode, Store]:
        return start_raft_node(replace(config, self_addr=loopback(free_port())))

    return retry_on_port_clash(attempt, what=f"raft node in {config.data_dir}")


def batch(n_events: int = 1, size: int = 100, stream: str = "s-1") -> bytes:
    events = [[uuid.uuid4().bytes, "T", b"x" * size, b"", False] for _ in range(n_events)]
    return cmd.encode_batch(time.time_ns() // 1000, [cmd.append(stream, -2, events)])


def submit_wait(node: RaftNode, data: bytes, timeout: float = 10.0) -> Outcome:
    done = threading.Event()
    box: list[Outcome] = []

    def cb(outcome: Outcome) -> None:
        box.append(outcome)
        done.set()

    node.submit(data, cb, Deadline.after(timeout))
    assert done.wait(timeout + 5), "callback never ran"
    return box[0]


def submit_many(
    node: RaftNode, count: int, inflight: int = 4, timeout: float = 10.0
) -> list[Outcome]:
    sem = threading.Semaphore(inflight)
    lock = threading.Lock()
    out: list[Outcome] = []
    finished = threading.Semaphore(0)

    def cb(outcome: Outcome) -> None:
        with lock:
            out.append(outcome)
        sem.release()
        finished.release()

    for _ in range(count):
        assert sem.acquire(timeout=timeout + 5)
        node.submit(batch(), cb, Deadline.after(timeout))
    for _ in range(count):
        assert finished.acquire(timeout=timeout + 5)
    return out
