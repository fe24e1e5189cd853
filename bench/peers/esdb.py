"""esdb itself: a local 3-node cluster (what `esdb cluster up --nodes 3` starts), durability
fsync, loaded by bench/loadgen.py over the wire protocol."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import signal
import subprocess
import time
from pathlib import Path

from bench.loadgen import AppendSpec, find_leader, first_ack, run_append, run_read_all
from bench.peers.common import Peer, quietly, wait_for
from bench.results import Failover, Run, RunConfig, Workload
from esdb_cli.localcluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]


def version() -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    commit = out.stdout.strip() or "?"
    return f"{importlib.metadata.version('esdb')} ({commit})"


def loader_shape(clients: int) -> tuple[int, int]:
    """(processes, connections per process): as etcd's loader, at most 8 connections."""
    processes = 1 if clients < 8 else 2
    return processes, max(1, min(4, clients // processes))


class EsdbPeer(Peer):
    system = "esdb"
    shape = "3 nodes"
    durable = "yes: LMDB commit with fsync on a majority before the ack (durability fsync)"
    notes: tuple[str, ...] = ("election timeouts 1-2 s (defaults)",)
    read_method = (
        "bench/loadgen.py: one read_all from position 0 on one connection, every record's "
        "fixed header unpacked and its data cut out (not into esdb_node's RecordedEvent)"
    )

    def __init__(self, cfg: RunConfig, workdir: Path, *, install: bool) -> None:
        super().__init__(cfg, workdir, install=install)  # this checkout: nothing to install
        self.cluster: LocalCluster | None = None

    def start(self) -> None:
        self.version = version()
        self.cluster = LocalCluster.create(
            self.workdir / "cluster", nodes=3, base_port=None, secret=None, store_id="bench",
            durability="fsync",
        )  # fmt: skip
        self.cluster.start(60)
        self.cluster.wait_leader(60)

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.down(purge=True)

    def _urls(self) -> str:
        assert self.cluster is not None
        return self.cluster.urls

    def method(self, w: Workload) -> str:
        processes, conns = loader_shape(w.clients)
        return (
            f"bench/loadgen.py to the leader: {w.clients} closed-loop slot(s) in "
            f"{processes} process(es) x {conns} pipelined connection(s), pre-encoded appends "
            f"of {w.batch} event(s)"
        )

    def append(self, w: Workload, run: int) -> Run:
        processes, conns = loader_shape(w.clients)
        result, codes = run_append(
            AppendSpec(
                find_leader(self._urls()), clients=w.clients, batch=w.batch,
                duration=self.cfg.duration, size=w.size, processes=processes, conns=conns,
                max_ops=self.cfg.max_ops, warmup=self.cfg.warmup,
            )
        )  # fmt: skip
        if codes:
            self.notes = (*self.notes, f"{w.key} run {run + 1}: errors {codes}")
        return result

    def read(self) -> Run:
        return run_read_all(find_leader(self._urls()), limit=self.cfg.read_max)

    def failover(self) -> Failover:
        assert self.cluster is not None
        return _failovers(self.cluster, self.cfg.failovers)


PEER = EsdbPeer


def _failovers(cluster: LocalCluster, trials: int) -> Failover:
    times = []
    for _ in range(trials):
        leader = cluster.node(find_leader(cluster.urls))
        pid = cluster.running_pid(leader)
        if pid is None:
            raise RuntimeError(f"no pid for the leader {leader.id}")
        survivors = [n.url for n in cluster.nodes if n.id != leader.id]
        killed = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        acked = asyncio.run(first_ack(survivors))
        times.append(acked - killed)
        cluster.start_node(leader)
        cluster.wait_leader(60)
        _wait_caught_up(cluster)  # the next kill must not find a lagging majority
    return Failover(
        tuple(times),
        "SIGKILL the leader's pid, then appends to the two survivors (following not_leader "
        "replies) until one is acknowledged; the killed node restarted in between",
    )


def _wait_caught_up(cluster: LocalCluster, timeout: float = 60.0) -> None:
    def same_index() -> bool:
        rows = cluster.statuses()
        applied = {getattr(s, "applied_index", None) for s in rows}
        return len(rows) == len(cluster.nodes) and len(applied) == 1 and None not in applied

    wait_for(lambda: quietly(same_index), timeout=timeout, what="all nodes at one applied index")
