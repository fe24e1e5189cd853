"""`esdb demo`: a throwaway local cluster with a small workload, shown in the dashboard.

The cluster lives in a temporary directory; whatever happens (an error, Ctrl-C, SIGTERM, a
closed SSH session), it is stopped by PID and deleted before `run_demo` returns.

The workload appends small `OrderPlaced` events at a bounded rate and consumes them. The
consumer is a live tail of the `order-` streams in `$all` (`Client.tail`): persistent
subscriptions do not exist yet. When they do, `Workload._consume` becomes a persistent
subscription group, and the dashboard's subscriptions table shows it.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from esdb_cli.localcluster import LocalCluster
from esdb_node.client import Client, json_event
from esdb_node.cluster_view import ClusterSnapshot
from esdb_node.errors import EsdbError
from esdb_node.model import AllFilter

STREAMS = 10  # order-0 .. order-9
MAX_RUN_S = 3600.0  # the workload stops by itself after an hour, whatever the dashboard does


@dataclass(frozen=True, slots=True)
class WorkloadStats:
    appended: int
    consumed: int
    errors: int
    last_error: str | None


class Workload:
    """Appends at `rate` events/s (at most `rate * max_s` events, at most `max_s` seconds) and
    consumes them in two threads, each with its own client."""

    def __init__(self, urls: str, *, rate: float = 20.0, max_s: float = MAX_RUN_S) -> None:
        self.urls = urls
        self.rate = rate
        self.max_s = max_s
        self.appended = 0
        self.consumed = 0
        self.errors = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()  # errors come from both threads
        self._stop = threading.Event()
        self._consumer_ready = threading.Event()
        self._clients: list[Client] = []
        self._threads = [
            threading.Thread(target=self._consume, name="demo-consumer", daemon=True),
            threading.Thread(target=self._produce, name="demo-producer", daemon=True),
        ]

    def start(self) -> Workload:
        self._threads[0].start()
        self._consumer_ready.wait(10.0)  # the tail is open before the first append
        self._threads[1].start()
        return self

    def _client(self) -> Client:
        client = Client(self.urls, timeout=5.0, connect_timeout=1.0)
        self._clients.append(client)
        return client

    def _produce(self) -> None:
        client = self._client()
        started = time.monotonic()
        for i in range(max(1, int(self.rate * self.max_s))):
            due = started + i / self.rate
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            if time.monotonic() - started > self.max_s:
                return
            try:
                event = json_event("OrderPlaced", {"order": i, "total": 10 + i % 90})
                client.append(f"order-{i % STREAMS}", event)
                self.appended += 1
            except EsdbError as exc:  # a failover: the next append goes to the new leader
                self._error(str(exc))
            except RuntimeError:  # the client was closed under us: stopping
                return

    def _consume(self) -> None:
        client = self._client()
        try:
            tail = client.tail(filter=AllFilter(stream_prefix="order-"), from_=0)
            self._consumer_ready.set()
            for _ in tail:  # ends when stop() closes the client
                self.consumed += 1
        except (EsdbError, RuntimeError) as exc:
            if not self._stop.is_set():
                self._error(f"consumer: {exc}")
        finally:
            self._consumer_ready.set()

    def _error(self, text: str) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = text

    def stop(self) -> WorkloadStats:
        self._stop.set()
        for client in self._clients:
            client.close()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=10.0)
        return WorkloadStats(self.appended, self.consumed, self.errors, self.last_error)


@dataclass(frozen=True, slots=True)
class DemoResult:
    snapshot: ClusterSnapshot | None  # the cluster just before it was stopped
    pids: dict[str, int | None]
    workload: WorkloadStats
    directory: Path


@contextlib.contextmanager
def _interrupted_by_signals() -> Iterator[Callable[[], None]]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, so the clean-up runs; yields a function
    that installs the handlers again (the dashboard's event loop resets them when it
    closes)."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    sigs = (signal.SIGTERM, signal.SIGHUP)
    before = {s: signal.getsignal(s) for s in sigs}

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def install() -> None:
        for s in sigs:
            signal.signal(s, interrupt)

    install()
    try:
        yield install
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def run_demo(
    *,
    nodes: int = 3,
    rate: float = 20.0,
    duration: float = 10.0,
    interval: float = 1.0,
    interactive: bool = False,
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> DemoResult:
    """Start the cluster and the workload; open the dashboard (`interactive`) or wait
    `duration` seconds; stop and delete everything."""
    directory = Path(tempfile.mkdtemp(prefix="esdb-demo-"))
    workload: Workload | None = None
    snapshot = None
    pids: dict[str, int | None] = {}
    stats = WorkloadStats(0, 0, 0, None)
    with _interrupted_by_signals() as reinstall:
        try:
            cluster = LocalCluster.create(
                directory / "cluster",
                nodes=nodes,
                base_port=None,
                secret=None,
                store_id="demo",
                durability="fsync",
            )
            say(f"starting a local {nodes}-node cluster in {cluster.dir}")
            cluster.start()
            leader = cluster.wait_leader()
            say(
                f"leader {leader.node_id}; workload: {rate:g} OrderPlaced events/s into "
                f"order-0..{STREAMS - 1}, consumed by a live tail of $all "
                "(persistent subscriptions are not built yet; they will replace it)"
            )
            workload = Workload(cluster.urls, rate=rate).start()
            if interactive:
                from esdb_cli.tui.launch import run_dashboard

                run_dashboard(
                    cluster.urls,
                    cluster_dir=cluster.dir,
                    interval=interval,
                    label=f"esdb demo: {cluster.dir}",
                )
                reinstall()
            else:
                say(f"running for {duration:g}s (no terminal: no dashboard)")
                threading.Event().wait(duration)
            with Client(cluster.urls, timeout=5.0, connect_timeout=1.0) as client:
                snapshot = client.cluster_snapshot()
            pids = {n.id: cluster.running_pid(n) for n in cluster.nodes}
        finally:
            if workload is not None:
                stats = workload.stop()
            if (directory / "cluster" / "cluster.json").exists():
                # cluster.json again: chaos keys may have restarted nodes (new pids)
                stopped = LocalCluster.load(directory / "cluster").down(purge=True)
                say(f"stopped {', '.join(stopped) or 'nothing'}; deleted {directory}")
            shutil.rmtree(directory, ignore_errors=True)
    return DemoResult(snapshot, pids, stats, directory)
