"""Real multi-node clusters for tests: a `LocalCluster` plus PID tracking, per-node reads,
convergence waits, writer threads with expected versions, and an acknowledged-event check.

Every process a `Cluster` starts (or finds in its cluster.json) is SIGKILLed and reaped by PID
at teardown; nothing is ever killed by name. All waits have deadlines; all loops are bounded.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esdb_cli import local
from esdb_cli.localcluster import LocalCluster, LocalNode
from esdb_node.client import Client
from esdb_node.errors import (
    EsdbError,
    StreamNotFound,
    Unavailable,
    UnknownOutcome,
    WrongExpectedVersion,
)
from esdb_node.model import EventData, NodeStatus, RecordedEvent
from tests.harness import wait_for

SECRET = "cluster-tests-secret-9f2c"
# Node settings for quick elections: followers elect after 0.6-1.2 s without a leader, an
# isolated leader steps down after 1.5 s, a silent raft connection is dropped after 3 s.
FAST: dict[str, Any] = {
    "election_timeout": 0.6,
    "leader_fallback_timeout": 1.5,
    "raft_connection_timeout": 3.0,
}
LOG_TAIL_CHARS = 12_000


class Cluster:
    """One test's local cluster. Wraps `LocalCluster` (the same code `esdb cluster up` uses)."""

    def __init__(self, local_cluster: LocalCluster) -> None:
        self.local = local_cluster
        self.pids: set[int] = set()
        self.data_dirs: set[Path] = {Path(n.data_dir) for n in local_cluster.nodes}
        self.track()

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        nodes: int = 3,
        settings: Mapping[str, Any] = FAST,
        durability: str = "fsync",
    ) -> Cluster:
        return cls(
            LocalCluster.create(
                directory,
                nodes=nodes,
                base_port=None,  # free ports: other engineers run clusters on this machine
                secret=SECRET,
                store_id="ctest",
                durability=durability,
                settings=settings,
            )
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
        try:
            self.local.start(wait)
        finally:
            self.track()
        leader = self.local.wait_leader(wait)
        self.wait_registered()
        return leader

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
        parts = []
        for d in sorted(self.data_dirs):
            try:
                text = (d / "esdb.log").read_text(errors="replace")
            except OSError:
                continue
            cut = text[-LOG_TAIL_CHARS:]
            note = "" if len(cut) == len(text) else f" (last {LOG_TAIL_CHARS} chars)"
            parts.append(f"===== {d}/esdb.log{note} =====\n{cut}")
        return "\n".join(parts)

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


def our_child(pid: int) -> bool:
    """Nodes started by this test process (directly, or by `esdb` run in-process) are its
    children. pid_max is 32768 here and other engineers start nodes too: a pid from a pid
    file may already belong to someone else's node, which must never be signalled."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    ppid = next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), "")
    return ppid == str(os.getpid())


def wait_gone(pid: int, timeout: float = 15.0) -> None:
    """Until `pid` (our child) has exited, reaping it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and local.is_node_process(pid) and our_child(pid):
        local.reap(pid)
        time.sleep(0.02)
    local.reap(pid)
    assert not (local.is_node_process(pid) and our_child(pid)), f"{pid} alive after {timeout}s"


# --- writers with expected versions, and the acknowledged-event check --------------------------


@dataclass
class Outcomes:
    """What one writer attempted: acknowledged batches (first version, ids), batches that
    definitely failed, and batches whose outcome is unknown."""

    stream: str
    acked: list[tuple[int, list[uuid.UUID]]] = field(default_factory=list)
    failed: list[list[uuid.UUID]] = field(default_factory=list)
    unknown: list[list[uuid.UUID]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    spans: list[tuple[float, float]] = field(default_factory=list)  # each attempt's t0, t1

    def in_flight_at(self, t: float) -> int:
        return sum(1 for t0, t1 in self.spans if t0 < t < t1)

    @property
    def acked_events(self) -> int:
        return sum(len(ids) for _, ids in self.acked)

    @property
    def attempted(self) -> set[uuid.UUID]:
        batches = [ids for _, ids in self.acked] + self.failed + self.unknown
        return {i for ids in batches for i in ids}


class Writer(threading.Thread):
    """Appends batches of 1-3 events to its own stream with exact expected versions until
    stopped. Unknown outcomes are not retried by hand (the client already retried them with
    the same ids until its timeout); the writer re-reads the head from the leader instead."""

    def __init__(
        self, urls: str, stream: str, *, seed: int, max_s: float = 60.0, timeout: float = 8.0
    ) -> None:
        super().__init__(name=f"writer-{stream}", daemon=True)
        self.urls = urls
        self.out = Outcomes(stream)
        self.stop_event = threading.Event()
        self.rng = random.Random(seed)
        self.max_s = max_s
        self.timeout = timeout
        self.acks = threading.Semaphore(0)

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_s
        stream = self.out.stream
        head = -1
        with Client(self.urls, timeout=self.timeout, connect_timeout=0.5) as client:
            for _ in range(100_000):
                if self.stop_event.is_set() or time.monotonic() > deadline:
                    return
                events = [
                    EventData.from_json("Written", {"n": head + 1 + i})
                    for i in range(self.rng.randint(1, 3))
                ]
                ids = [e.id for e in events]
                expected: int | str = "no-stream" if head == -1 else head
                t0 = time.monotonic()
                try:
                    result = client.append(stream, events, expected_version=expected)
                except WrongExpectedVersion as exc:
                    self.out.spans.append((t0, time.monotonic()))
                    self.out.failed.append(ids)
                    head = exc.actual
                    continue
                except Unavailable:  # no leader or no node reachable: definitely not applied
                    self.out.spans.append((t0, time.monotonic()))
                    self.out.failed.append(ids)
                    self.stop_event.wait(0.05)
                    continue
                except EsdbError as exc:  # UnknownOutcome, or anything else counted as unknown
                    self.out.spans.append((t0, time.monotonic()))
                    if not isinstance(exc, UnknownOutcome):  # not expected: reported too
                        self.out.errors.append(f"{type(exc).__name__}: {exc}")
                    self.out.unknown.append(ids)
                    synced = self._resync(client, deadline)
                    if synced is None:
                        return
                    head = synced
                    continue
                self.out.spans.append((t0, time.monotonic()))
                if result.first_version != head + 1:
                    self.out.errors.append(f"acked at {result.first_version}, expected {head + 1}")
                self.out.acked.append((result.first_version, ids))
                head = result.last_version
                self.acks.release()

    def _resync(self, client: Client, deadline: float) -> int | None:
        """The stream's head from a linearizable read (the unknown batch may be in it);
        None if the writer should stop first."""
        while time.monotonic() < deadline and not self.stop_event.is_set():
            try:
                last = client.read_stream(self.out.stream, backward=True, limit=1)
                return last[0].version if last else -1
            except StreamNotFound:
                return -1
            except EsdbError:
                self.stop_event.wait(0.1)
        return None


@contextlib.contextmanager
def writers(urls: str, count: int, prefix: str, *, timeout: float = 8.0) -> Iterator[list[Writer]]:
    started = [Writer(urls, f"{prefix}-{k}", seed=k, timeout=timeout) for k in range(count)]
    for w in started:
        w.start()
    try:
        yield started
    finally:
        for w in started:
            w.stop()
        for w in started:
            w.join(timeout=timeout + 30)
            assert not w.is_alive(), f"{w.name} did not stop"


def wait_acks(ws: list[Writer], each: int, timeout: float) -> None:
    """Until every writer has `each` more acknowledged appends."""
    deadline = time.monotonic() + timeout
    for w in ws:
        for _ in range(each):
            assert w.acks.acquire(timeout=max(deadline - time.monotonic(), 0.01)), (
                f"{w.name}: fewer than {each} acknowledged appends within {timeout}s "
                f"(errors: {w.out.errors[-3:]})"
            )


def check_stream(out: Outcomes, events: list[RecordedEvent]) -> dict[str, int]:
    """The promise of reliability.md §2.3 for one stream as one node stores it: versions
    contiguous, no id twice, every acknowledged batch at its reported versions in order,
    definitely failed batches absent, unknown batches all-or-nothing, nothing unattempted."""
    versions = [e.version for e in events]
    assert versions == list(range(len(events))), f"{out.stream}: versions not contiguous"
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids), f"{out.stream}: an event id is stored twice"
    at = {e.id: e.version for e in events}
    for first, batch in out.acked:
        got = [at.get(i) for i in batch]
        assert got == list(range(first, first + len(batch))), (
            f"{out.stream}: acknowledged batch at {first} stored at {got}"
        )
    for batch in out.failed:
        assert not any(i in at for i in batch), f"{out.stream}: a failed append is stored"
    present = 0
    for batch in out.unknown:
        got = [at.get(i) for i in batch]
        if got[0] is None:
            assert all(g is None for g in got), f"{out.stream}: unknown batch partly stored"
        else:
            assert got == list(range(got[0], got[0] + len(batch))), (
                f"{out.stream}: unknown batch torn: {got}"
            )
            present += 1
    assert set(ids) <= out.attempted, f"{out.stream}: holds events nobody appended"
    return {"acked": len(out.acked), "unknown_present": present, "unknown": len(out.unknown)}


def check_everywhere(cluster: Cluster, outs: list[Outcomes]) -> dict[str, int]:
    """Every node holds the same stream, and it passes `check_stream`."""
    totals = {"acked": 0, "unknown_present": 0, "unknown": 0}
    for out in outs:
        copies = {n: cluster.read_local(n, out.stream) for n in cluster.ids}
        reference = [(e.version, e.id) for e in copies[cluster.ids[0]]]
        for n, events in copies.items():
            assert [(e.version, e.id) for e in events] == reference, (
                f"{out.stream}: {n} differs from {cluster.ids[0]}"
            )
        for key, value in check_stream(out, copies[cluster.ids[0]]).items():
            totals[key] += value
    return totals
