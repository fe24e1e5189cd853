"""Typed results shared by the esdb load generator, the peer runners and the comparison.

A `Cell` is one workload measured on one system, `runs` times; its figures are those of the
median run by events/s (as in /work/shared/bench-peers/_median.py), so ops/s, p50 and p99 all
come from one real run rather than from medians of different runs.
"""

from __future__ import annotations

import array
from dataclasses import dataclass, field
from typing import Any

from esdb_cli.bench import percentile


@dataclass(frozen=True, slots=True)
class Workload:
    """`clients` concurrent appenders (each one request in flight, on its own stream/key/
    aggregate), `batch` events of `size` bytes per request."""

    batch: int
    clients: int
    size: int = 100

    @property
    def key(self) -> str:
        return f"append b={self.batch} c={self.clients}"


# The cells the issue states targets for (ratios to etcd in the same run).
APPEND_WORKLOADS = (Workload(1, 1), Workload(1, 64), Workload(100, 1))


@dataclass(frozen=True, slots=True)
class RunConfig:
    duration: float  # seconds per run of a cell (after warm-up)
    runs: int  # runs per cell; the median run is reported
    read_max: int  # at most this many events streamed in the read cell
    failovers: int  # leader kills for the failover figure (0 = skip)
    max_ops: int = 2_000_000  # per run, on top of the time bound
    warmup: float = 0.5


@dataclass(frozen=True, slots=True)
class Run:
    events: int
    ops: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    loader_cpu_pct: float | None  # the load generator's CPU over the run, % of one core
    load_avg: float | None = None  # the machine's 1-minute load average as the run ended

    @classmethod
    def from_latencies(
        cls, latencies: bytes, *, batch: int, seconds: float, errors: int, cpu_s: float
    ) -> Run:
        """A run from the latencies (seconds, an array('d') as bytes) of the requests that
        completed in a measured window of `seconds`, and the loader's CPU seconds in it."""
        values = array.array("d")
        values.frombytes(latencies)
        ordered = sorted(values)
        return cls(
            events=len(ordered) * batch,
            ops=len(ordered),
            errors=errors,
            seconds=seconds,
            p50_ms=percentile(ordered, 0.50) * 1000,
            p99_ms=percentile(ordered, 0.99) * 1000,
            loader_cpu_pct=100 * cpu_s / seconds if seconds > 0 else None,
        )

    @classmethod
    def streamed(cls, *, events: int, seconds: float, cpu_s: float, errors: int = 0) -> Run:
        """A read of `events` events as one request taking `seconds`."""
        return cls(
            events=events,
            ops=1,
            errors=errors,
            seconds=seconds,
            p50_ms=seconds * 1000,
            p99_ms=seconds * 1000,
            loader_cpu_pct=100 * cpu_s / seconds if seconds > 0 else None,
        )

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "ops": self.ops,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events_per_s, 1),
            "ops_per_s": round(self.ops_per_s, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "loader_cpu_pct": None if self.loader_cpu_pct is None else round(self.loader_cpu_pct),
            "load_avg": self.load_avg,
        }


@dataclass(frozen=True, slots=True)
class Cell:
    name: str  # a Workload.key, or "read $all"
    runs: tuple[Run, ...]
    method: str  # the loader and how it maps the workload onto this system

    @property
    def median(self) -> Run:
        ordered = sorted(self.runs, key=lambda r: r.events_per_s)
        return ordered[len(ordered) // 2]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.method,
            **self.median.to_json(),
            "runs": [r.to_json() for r in self.runs],
        }


@dataclass(frozen=True, slots=True)
class Failover:
    """Seconds from the leader's SIGKILL to the first acknowledged append sent after it."""

    times_s: tuple[float, ...]
    method: str

    @property
    def median_s(self) -> float:
        ordered = sorted(self.times_s)
        return ordered[len(ordered) // 2] if ordered else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "median_s": round(self.median_s, 3),
            "times_s": [round(t, 3) for t in self.times_s],
            "method": self.method,
        }


@dataclass(frozen=True, slots=True)
class PeerReport:
    system: str  # "esdb", "etcd", ...
    shape: str  # "3 nodes", "1 node"
    durable: str  # what an acknowledgement means
    version: str
    cells: tuple[Cell, ...] = ()
    read: Cell | None = None
    failover: Failover | None = None
    notes: tuple[str, ...] = ()
    error: str | None = None  # set when the peer could not be run; the others still are
    settings: dict[str, str] = field(default_factory=dict)  # read back from the running peer

    def cell(self, name: str) -> Cell | None:
        return next((c for c in self.cells if c.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "shape": self.shape,
            "durable": self.durable,
            "version": self.version,
            "settings": self.settings,
            "cells": [c.to_json() for c in self.cells],
            "read_all": self.read.to_json() if self.read else None,
            "failover": self.failover.to_json() if self.failover else None,
            "notes": list(self.notes),
            "error": self.error,
        }
