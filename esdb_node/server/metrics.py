"""Prometheus metrics of one node, in a registry of its own (never the process-global one).

Two kinds of source, so the hot path stays cheap:

* Read at scrape time from state the node already keeps (`NodeService.status()`, file sizes,
  connection counts): Raft term, commit and applied index, role, store size, events,
  readiness. Nothing is updated per request for these.
* Two hooks: the dispatcher tells `request_done` how each request ended (count, latency,
  records streamed), and the group committer tells `batch_flushed` about every batch
  (commands, bytes, time to replicate and apply). A store checkpoint sync is timed too.

`watch()` samples the replication status a few times a second to count leader changes (a
flip shorter than the interval can be missed; the term still shows it) and to keep the log
context (role, term) current. docs/http.md lists every metric.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from esdb_node import ops
from esdb_node.cluster_view import readiness
from esdb_node.layout import DataDir

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from esdb_node.logs import LogContext
    from esdb_node.server.service import NodeService

# `*_created` series double the exposition and no esdb dashboard reads them (process-wide
# switch: this module is imported only by a node process).
disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: from a loopback read (~50 us) to a slow quorum write (seconds).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_COMMAND_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
BATCH_BYTE_BUCKETS = tuple(float(1 << n) for n in range(8, 22, 2))  # 256 B .. 1 MiB
SAMPLE_INTERVAL = 0.25
# Requests whose duration is their subscriber's lifetime, not a latency.
_LIVE_OPS = (ops.Tail,)
_READ_OPS = (ops.ReadStream, ops.ReadAll, ops.Tail)


class NodeMetrics:
    def __init__(
        self,
        service: NodeService,
        files: DataDir,
        *,
        connections: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.service = service
        self.files = files
        self.connections = connections
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        # Updated on the event loop's thread only (the dispatcher and the group committer
        # run there): plain counters without locks, turned into Prometheus families at
        # scrape time. bench/metrics_hook.py measures what an append pays for them.
        self.ops: dict[str, _OpStats] = {}
        self.events_appended = 0
        self.events_read: dict[str, int] = {}
        self.batch_commands = _Histogram(BATCH_COMMAND_BUCKETS)
        self.batch_bytes = _Histogram(BATCH_BYTE_BUCKETS)
        self.batch_seconds = _Histogram(LATENCY_BUCKETS)
        self.fsync_seconds = Histogram(
            "esdb_fsync_seconds",
            "Time of an explicit sync, by file (store: the cluster checkpointer's store sync).",
            ["file"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.leader_changes = Counter(
            "esdb_leader_changes", "Times this node saw the leader change (sampled).", registry=r
        )
        # Filled by the subscriptions feature (not built yet): one series per persistent
        # subscription and consumer group. Declared now so dashboards and alerts can be
        # written against the final names; it has no samples until then.
        self.subscription_lag = Gauge(
            "esdb_subscription_lag_events",
            "Events between a subscription's checkpoint and the head of what it reads.",
            ["subscription", "group"], registry=r,
        )  # fmt: skip
        r.register(_StateCollector(self))
        self._by_kind: dict[type[Any], _OpStats] = {}
        self._last_leader: str | None = None

    # --- hooks ----------------------------------------------------------------------------------

    def request_done(
        self, request: ops.Request[Any], outcome: str, seconds: float, records: int
    ) -> None:
        kind = type(request)
        stats = self._by_kind.get(kind)
        if stats is None:
            name = kind.wire_name()
            stats = self._by_kind[kind] = self.ops[name] = _OpStats(
                timed=not issubclass(kind, _LIVE_OPS)
            )
        stats.outcomes[outcome] = stats.outcomes.get(outcome, 0) + 1
        if stats.timed:
            stats.latency.observe(seconds)
        if outcome == "ok" and kind is ops.Append:
            self.events_appended += len(request.events)  # type: ignore[attr-defined]
        if records and issubclass(kind, _READ_OPS):
            name = kind.wire_name()
            self.events_read[name] = self.events_read.get(name, 0) + records

    def batch_flushed(self, commands: int, size: int, seconds: float) -> None:
        self.batch_commands.observe(commands)
        self.batch_bytes.observe(size)
        self.batch_seconds.observe(seconds)

    def store_synced(self, seconds: float) -> None:
        self.fsync_seconds.labels("store").observe(seconds)

    # --- sampling -------------------------------------------------------------------------------

    def sample(self, context: LogContext | None = None) -> None:
        status = self.service.replicator.status()
        leader = status.leader_id
        if leader is not None and leader != self._last_leader:
            if self._last_leader is not None:
                self.leader_changes.inc()
            self._last_leader = leader
        if context is not None:
            context.update(role=status.role, term=status.term)

    async def watch(self, context: LogContext | None = None) -> None:
        """Sample until cancelled (a task of the node's event loop)."""
        while True:
            self.sample(context)
            await asyncio.sleep(SAMPLE_INTERVAL)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _dir_size(path: Path) -> int:
    """The files of a directory (the Raft journal: its segment files, preallocated, and the
    vote file)."""
    try:
        return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
    except OSError:
        return 0


class _Histogram:
    """Cumulative-on-export bucket counts (no lock: one thread writes)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((floatToGoString(bound), running))
        return out


class _OpStats:
    __slots__ = ("latency", "outcomes", "timed")

    def __init__(self, *, timed: bool) -> None:
        self.outcomes: dict[str, int] = {}
        self.latency = _Histogram(LATENCY_BUCKETS)
        self.timed = timed


def _histogram(name: str, doc: str, h: _Histogram, labels: list[str] | None = None,
               values: list[str] | None = None, family: HistogramMetricFamily | None = None
               ) -> HistogramMetricFamily:  # fmt: skip
    family = family or HistogramMetricFamily(name, doc, labels=labels)
    family.add_metric(values or [], h.buckets(), h.total)
    return family


class _StateCollector(Collector):
    """Families built when Prometheus scrapes: the loop-local counters above and gauges
    read from the node's state."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        # A snapshot: the loop may add an operation while a scrape thread reads.
        op_stats = list(m.ops.items())
        requests = CounterMetricFamily(
            "esdb_requests",
            "Requests served, by operation and outcome (ok or an error code).",
            labels=["op", "outcome"],
        )
        latency = HistogramMetricFamily(
            "esdb_request_duration_seconds",
            "Time to serve a request, by operation (live tails excluded).",
            labels=["op"],
        )
        for name, stats in op_stats:
            for outcome, count in list(stats.outcomes.items()):
                requests.add_metric([name, outcome], count)
            if stats.timed:
                _histogram("", "", stats.latency, values=[name], family=latency)
        yield requests
        yield latency
        yield CounterMetricFamily(
            "esdb_events_appended",
            "Events in appends that succeeded (retries included).",
            value=m.events_appended,
        )
        read = CounterMetricFamily(
            "esdb_events_read", "Events sent to readers, by operation.", labels=["op"]
        )
        for name, count in list(m.events_read.items()):
            read.add_metric([name], count)
        yield read
        yield _histogram(
            "esdb_batch_commands", "Commands per group-commit batch.", m.batch_commands
        )
        yield _histogram("esdb_batch_bytes", "Encoded bytes per group-commit batch.", m.batch_bytes)
        yield _histogram(
            "esdb_batch_flush_seconds",
            "Time to replicate and apply one batch (standalone: the synced LMDB commit; "
            "cluster: quorum journal sync plus apply).",
            m.batch_seconds,
        )
        st = m.service.status()
        yield InfoMetricFamily(
            "esdb_node",
            "This node's identity.",
            value={
                "node_id": st.node_id,
                "store_id": st.store_id,
                "version": st.version,
                "mode": st.mode,
                "durability": st.durability,
            },
        )
        role = GaugeMetricFamily("esdb_role", "1 for this node's current role.", labels=["role"])
        role.add_metric([st.role], 1)
        yield role
        for name, doc, value in (
            ("esdb_is_leader", "1 if this node leads (or is standalone).",
             st.role in ("leader", "standalone")),
            ("esdb_ready", "1 if /health/ready passes.", _ready(st)),
            ("esdb_raft_term", "Current Raft term (0 standalone).", st.term),
            ("esdb_raft_commit_index", "Highest Raft index known committed.", st.commit_index),
            ("esdb_raft_applied_index", "Highest Raft index applied to the store.",
             st.applied_index),
            ("esdb_store_last_position", "Global position of the last event (-1 empty).",
             st.last_position),
            ("esdb_store_streams", "Streams in the store.", st.stream_count),
            ("esdb_store_writable", "1 unless the disk is full or failing.", st.storage == "ok"),
            ("esdb_uptime_seconds", "Seconds since the node started.", st.uptime_s),
        ):  # fmt: skip
            yield GaugeMetricFamily(name, doc, value=float(value))
        sizes = GaugeMetricFamily(
            "esdb_disk_bytes", "Size of the node's files, by file.", labels=["file"]
        )
        sizes.add_metric(["store"], _size(m.files.store / "data.mdb"))
        sizes.add_metric(["raft_journal"], _dir_size(m.files.raft_journal))
        yield sizes
        conns = GaugeMetricFamily(
            "esdb_connections", "Open client connections, by port.", labels=["port"]
        )
        for port, count in m.connections().items():
            conns.add_metric([port], count)
        yield conns


def _ready(status: Any) -> bool:
    return readiness(status).ok
