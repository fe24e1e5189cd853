"""Writers with expected versions for the cluster failure tests, and the check that every
acknowledged event survived (reliability.md §2.3). All loops are bounded in count and time."""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from esdb_node.client import Client
from esdb_node.errors import (
    EsdbError,
    StreamNotFound,
    Unavailable,
    UnknownOutcome,
    WrongExpectedVersion,
)
from esdb_node.model import EventData, RecordedEvent
from tests.harness import Cluster


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
