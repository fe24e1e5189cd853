"""Load generation for `esdb bench` and the scripts in bench/: bounded in time and count."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from esdb_node.client import AsyncClient
from esdb_node.errors import EsdbError, Unavailable
from esdb_node.model import EventData


@dataclass(frozen=True, slots=True)
class BenchResult:
    workload: str
    clients: int
    batch: int
    size: int
    duration_s: float
    ops: int
    events: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.duration_s if self.duration_s else 0.0

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.duration_s if self.duration_s else 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["events_per_s"] = round(self.events_per_s, 1)
        out["ops_per_s"] = round(self.ops_per_s, 1)
        return out


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def _summary(
    workload: str,
    clients: int,
    batch: int,
    size: int,
    elapsed: float,
    latencies: list[float],
    errors: int,
) -> BenchResult:
    latencies.sort()
    return BenchResult(
        workload=workload,
        clients=clients,
        batch=batch,
        size=size,
        duration_s=round(elapsed, 3),
        ops=len(latencies),
        events=len(latencies) * batch,
        errors=errors,
        p50_ms=round(percentile(latencies, 0.50) * 1000, 3),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 3),
        max_ms=round((latencies[-1] if latencies else 0.0) * 1000, 3),
    )


async def run_append(
    urls: str,
    *,
    clients: int,
    batch: int,
    size: int = 100,
    duration: float = 3.0,
    max_ops: int = 1_000_000,
    token: str | None = None,
    warmup: float = 0.3,
    samples: list[float] | None = None,
) -> BenchResult:
    """`clients` connections, each appending batches of `batch` events of `size` bytes to its
    own stream, back to back, for `duration` seconds (and at most `max_ops` appends in all).

    `samples`, if given, receives every measured latency (seconds), so runs split over several
    load processes can be merged into exact percentiles."""
    payload = os.urandom(size // 2).hex().encode()[:size].ljust(size, b"x")
    run_id = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    errors = 0
    last_error: EsdbError | None = None
    budget = [max_ops]

    async def worker(k: int, until: float, record: bool) -> None:
        nonlocal errors, last_error
        async with AsyncClient(urls, token=token, timeout=30) as client:
            stream = f"bench-{run_id}-{k}"
            while time.perf_counter() < until and budget[0] > 0:
                budget[0] -= 1
                events = [EventData("BenchEvent", payload, is_json=False) for _ in range(batch)]
                t0 = time.perf_counter()
                try:
                    await client.append(stream, events)
                except Unavailable as exc:
                    if exc.details.get("unreachable"):
                        raise  # no node at all: measuring nothing for `duration` helps nobody
                    errors += 1
                    last_error = exc
                    continue
                except EsdbError as exc:
                    errors += 1
                    last_error = exc
                    continue
                if record:
                    latencies.append(time.perf_counter() - t0)

    if warmup > 0:
        await asyncio.gather(
            *(worker(k, time.perf_counter() + warmup, False) for k in range(clients))
        )
    budget[0] = max_ops
    start = time.perf_counter()
    await asyncio.gather(*(worker(k, start + duration, True) for k in range(clients)))
    if samples is not None:
        samples.extend(latencies)
    if not latencies and last_error is not None:
        raise last_error  # not one append succeeded: that is the result, not a zero rate
    return _summary("append", clients, batch, size, time.perf_counter() - start, latencies, errors)


async def run_read_all(urls: str, *, limit: int, token: str | None = None) -> BenchResult:
    """Stream `$all` from the start to one client; reports events/s."""
    async with AsyncClient(urls, token=token, timeout=120) as client:
        start = time.perf_counter()
        count = 0
        async for _ in client.iter_all(limit=limit, consistency="local"):
            count += 1
        elapsed = time.perf_counter() - start
    return BenchResult(
        "read_all",
        1,
        count,
        0,
        round(elapsed, 3),
        1,
        count,
        0,
        round(elapsed * 1000, 3),
        round(elapsed * 1000, 3),
        round(elapsed * 1000, 3),
    )
