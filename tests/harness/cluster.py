"""Real multi-node clusters for tests: a `LocalCluster` (the code `esdb cluster up` runs) plus
PID tracking, per-node reads, and waits for a leader, registration and convergence.

Every process a `Cluster` starts (or finds in its cluster.json) is SIGKILLed and reaped by PID
at teardown; nothing is ever killed by name. All waits have deadlines.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esdb_cli import local
from esdb_cli.localcluster import LocalCluster, LocalNode
from esdb_node.client import Client
from esdb_node.errors import EsdbError, StreamNotFound
from esdb_node.model import NodeStatus, RecordedEvent
from tests.harness import registry
from tests.harness.ports import PortClash, free_base, port_clash, retry_on_port_clash
from tests.harness.procs import our_child, wait_gone
from tests.harness.waiting import wait_for

SECRET = "cluster-tests-secret-9f2c"
# Node settings for quick elections: followers elect after 0.6-1.2 s without a leader, an
# isolated leader steps down after 1.5 s, a silent raft connection is dropped after 3 s.
FAST: dict[str, Any] = {
    "election_timeout": 0.6,
    "leader_fallback_timeout": 1.5,
    "raft_connection_timeout": 3.0,
}


@dataclass(frozen=True)
class _Spec:
    """How a cluster was created: enough to create it again on fresh ports."""

    nodes: int
    settings: Mapping[str, Any]
    durability: str
    secret: str | None
    store_id: str
    test_flags: tuple[str, ...] = ()


class Cluster:
    """One test's local cluster. Wraps `LocalCluster` (the same code `esdb cluster up` uses)."""

    def __init__(self, local_cluster: LocalCluster, spec: _Spec | None = None) -> None:
        self.local = local_cluster
        self._spec = spec  # None: made by the CLI, not ours to recreate
        self.pids: set[int] = set()
        self.data_dirs: set[Path] = {Path(n.data_dir) for n in local_cluster.nodes}
        self.ever_started = False
        self.track()
        registry.track(self)

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        nodes: int = 3,
        settings: Mapping[str, Any] = FAST,
        durability: str = "fsync",
        secret: str | None = SECRET,
        store_id: str = "ctest",
        test_flags: tuple[str, ...] = (),
    ) -> Cluster:
        spec = _Spec(nodes, settings, durability, secret, store_id, test_flags)
        return cls(cls._create(directory, spec), spec)

    @staticmethod
    def _create(directory: Path, spec: _Spec) -> LocalCluster:
        return LocalCluster.create(
            directory,
            nodes=spec.nodes,
            base_port=free_base(spec.nodes),
            secret=spec.secret,
            store_id=spec.store_id,
            durability=spec.durability,
            settings=spec.settings,
            test_flags=spec.test_flags,
        )

    @classmethod
    def attach(cls, directory: Path) -> Cluster:
        """A cluster made by the CLI (`esdb cluster up --dir`), so teardown reaps it too."""
        return cls(LocalCluster.load(directory))

    # --- processes -----------------------------------------------------------------------------

    def track(self) -> None:
        """Remember every node PID in cluster.json (the CLI may have changed it on disk)."""
        with contextlib.suppress(EsdbError):
            self.local = LocalCluster.load(self.local.dir)
        for node in self.local.nodes:
            self.data_dirs.add(Path(node.data_dir))
            for pid in (node.pid, local.read_pid(Path(node.data_dir))):
                if pid:
                    self.pids.add(pid)

    def start(self, wait: float = 60.0) -> NodeStatus:
        """Start every stopped node; wait for an agreed leader and every member registered.
        The first start of a cluster the harness created is retried on fresh ports if a
        node could not listen (a port taken meanwhile)."""
        if self.ever_started or self._spec is None:
            self._start_nodes(wait)
        else:
            retry_on_port_clash(lambda: self._first_start(wait), what=f"cluster {self.local.dir}")
        self.ever_started = True
        leader = self.local.wait_leader(wait)
        self.wait_registered(timeout=wait)
        return leader

    def _start_nodes(self, wait: float) -> None:
        try:
            self.local.start(wait)
        finally:
            self.track()

    def _first_start(self, wait: float) -> None:
        try:
            self._start_nodes(wait)
        except EsdbError as exc:
            clash = next((c for n in self.ids if (c := port_clash(self.log_text(n)))), None)
            if clash is None or self._spec is None:
                raise
            # Nothing of this cluster has served anyone yet: create it again from scratch
            # (peers name each other's ports), the failed attempt kept aside for post-mortems.
            self.close()
            directory = self.local.dir
            directory.rename(directory.with_name(f"{directory.name}.clash-{time.time_ns()}"))
            self.local = self._create(directory, self._spec)
            self.data_dirs = {Path(n.data_dir) for n in self.local.nodes}
            raise PortClash(f"{directory}: {clash}") from exc

    def wait_registered(self, timeout: float = 30.0) -> None:
        """Until every node lists every member by node id: each member registers its id and
        client URL through Raft shortly after it starts (redirects and status need that)."""
        want = sorted(self.ids)
        wait_for(
            lambda: all(sorted(self.status(n).members) == want for n in self.ids),
            timeout=timeout,
            what=f"every node to list members {want}",
            interval=0.1,
        )

    def start_node(self, node_id: str, *, join: str | None = None, wait: float = 60.0) -> None:
        try:
            self.local.start_node(self.node(node_id), join=join, wait=wait)
        finally:
            self.track()

    def add_node(self, node_id: str, *, join: str | None = None, wait: float = 60.0) -> LocalNode:
        """One more node on free ports, joined through `join` (default: every current URL),
        the way `esdb cluster add` does it."""
        try:
            self.local.add_node(node_id, join=join, wait=wait)
        finally:
            self.track()
        return self.node(node_id)

    def pid(self, node_id: str) -> int:
        pid = self.local.running_pid(self.node(node_id))
        assert pid is not None, f"{node_id} is not running"
        assert our_child(pid), f"pid {pid} in {node_id}'s pid file is not a process we started"
        return pid

    def kill(self, *node_ids: str) -> float:
        """SIGKILL (a crash, not a shutdown) all of them back to back, then reap each.
        Returns the monotonic time right after the last signal."""
        pids = [self.pid(n) for n in node_ids]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        for pid in pids:
            wait_gone(pid)
        return killed_at

    def close(self) -> None:
        self.track()
        for pid in self.pids:
            if local.is_node_process(pid) and our_child(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for pid in self.pids:
            wait_gone(pid)

    def purge_data(self) -> None:
        """Drop stores and raft logs (big in the snapshot test); logs stay for post-mortems."""
        for d in self.data_dirs:
            for sub in ("store", "raft"):
                shutil.rmtree(d / sub, ignore_errors=True)

    def log_text(self, node_id: str) -> str:
        try:
            return (Path(self.node(node_id).data_dir) / "esdb.log").read_text(errors="replace")
        except OSError:
            return ""

    def logs(self) -> str:
        return "\n".join(
            text
            for d in sorted(self.data_dirs)
            if (text := registry.log_section(d.name, d / "esdb.log"))
        )

    # --- lookups --------------------------------------------------------------------------------

    @property
    def ids(self) -> list[str]:
        return [n.id for n in self.local.nodes]

    def node(self, node_id: str) -> LocalNode:
        return self.local.node(node_id)

    def url(self, node_id: str) -> str:
        return self.node(node_id).url

    def urls(self, *node_ids: str) -> str:
        return ",".join(self.url(n) for n in (node_ids or self.ids))

    def client(self, *node_ids: str, timeout: float = 15.0) -> Client:
        return Client(self.urls(*node_ids), timeout=timeout, connect_timeout=1.0)

    def status(self, node_id: str, timeout: float = 3.0) -> NodeStatus:
        with Client(self.url(node_id), timeout=timeout, connect_timeout=1.0) as c:
            return c.status(self.url(node_id))

    def wait_leader(self, among: Iterable[str] | None = None, timeout: float = 30.0) -> str:
        """The id of the leader every node in `among` agrees on, and which is ready."""
        names = list(among or self.ids)

        def agreed() -> str | None:
            statuses = [self.status(n, timeout=2.0) for n in names]
            leaders = {s.leader_id for s in statuses}
            ready = [s for s in statuses if s.role == "leader" and s.ready]
            if len(leaders) == 1 and ready and ready[0].node_id in leaders:
                return ready[0].node_id
            return None

        return wait_for(agreed, timeout=timeout, what=f"an agreed leader among {names}")

    def followers(self, leader: str) -> list[str]:
        return [n for n in self.ids if n != leader]

    # --- per-node reads -------------------------------------------------------------------------

    def read_local(self, node_id: str, stream: str) -> list[RecordedEvent]:
        with Client(self.url(node_id), timeout=30.0, connect_timeout=1.0) as c:
            try:
                return c.read_stream(stream, consistency="local")
            except StreamNotFound:
                return []

    def read_all_local(self, node_id: str) -> list[RecordedEvent]:
        with Client(self.url(node_id), timeout=60.0, connect_timeout=1.0) as c:
            return c.read_all(consistency="local")

    def wait_converged(self, node_ids: Iterable[str] | None = None, timeout: float = 60.0) -> int:
        """Until every node reports the same last position and applied index (returns the
        position). Run after writes have stopped."""
        names = list(node_ids or self.ids)

        def same() -> tuple[int] | None:
            statuses = [self.status(n) for n in names]
            positions = {s.last_position for s in statuses}
            applied = {s.applied_index for s in statuses}
            if len(positions) == 1 and len(applied) == 1:
                return (positions.pop(),)  # a tuple: truthy even for an empty store (-1)
            return None

        return wait_for(same, timeout=timeout, what=f"{names} to converge", interval=0.2)[0]


MakeCluster = Callable[..., Cluster]
