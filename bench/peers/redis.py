"""Redis Streams, one server (Redis has no consensus replication), `appendonly yes`,
`appendfsync always`: the AOF is fsynced before replies go out, once per event-loop pass,
so concurrent clients share an fsync (group commit). Durable per ack on this one node.

Loaders as in the peer baselines: redis-benchmark (C) for single XADDs, redis-py with a
pipeline of 100 XADDs (transaction=False: not atomic, unlike an esdb batch) for batches.
"""

from __future__ import annotations

import array
import csv
import io
import os
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.loadgen import cpu_seconds, in_processes
from bench.peers.common import (
    Peer,
    Servers,
    apt_install,
    free_ports,
    need_python,
    quietly,
    wait_for,
)
from bench.results import Run, RunConfig, Workload

PACKAGES = {"redis-server": "redis-server", "redis-benchmark": "redis-tools"}


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def redis_benchmark(
    port: int, clients: int, n: int, key: str, value: str, timeout: float
) -> tuple[dict[str, str], float]:
    """One redis-benchmark run of `n` XADDs; its CSV row and the CPU seconds it used."""
    cpu0 = _children_cpu()
    out = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(clients),
         "-P", "1", "-n", str(n), "--csv", "XADD", key, "*", "d", value],
        capture_output=True, text=True, check=True, timeout=timeout,
    )  # fmt: skip
    cpu = _children_cpu() - cpu0
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    if not rows:
        raise RuntimeError(f"redis-benchmark printed no result: {out.stderr.strip()[:200]}")
    return rows[-1], cpu


def _single(port: int, w_clients: int, cfg: RunConfig, key: str, value: str) -> Run:
    # redis-benchmark is bounded by a count, not a time: a short first run (also the warm-up)
    # gives the rate, from which the count for `duration` seconds follows.
    probe, _ = redis_benchmark(port, w_clients, 1000 * max(1, w_clients // 8), key, value, 120)
    rate = float(probe["rps"])
    n = int(min(cfg.max_ops, max(1000, rate * cfg.duration)))
    row, cpu = redis_benchmark(port, w_clients, n, key, value, cfg.duration * 5 + 60)
    seconds = n / float(row["rps"])
    return Run(
        events=n,
        ops=n,
        errors=0,
        seconds=seconds,
        p50_ms=float(row["p50_latency_ms"]),
        p99_ms=float(row["p99_latency_ms"]),
        loader_cpu_pct=100 * cpu / seconds,
    )


def _pipeline_load(port: int, key: str, batch: int, cfg: RunConfig) -> dict[str, Any]:
    """Child process: redis-py, one connection, pipelines of `batch` XADDs, back to back."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    value = os.urandom(50).hex()
    latencies = array.array("d")
    start = time.perf_counter()
    measure_from = start + cfg.warmup
    until = measure_from + cfg.duration
    budget = cfg.max_ops
    cpu0 = None
    while budget > 0:
        now = time.perf_counter()
        if now >= until:
            break
        if cpu0 is None and now >= measure_from:
            cpu0 = cpu_seconds()
        pipe = client.pipeline(transaction=False)
        for _ in range(batch):
            pipe.xadd(key, {"d": value})
        pipe.execute()
        budget -= 1
        done = time.perf_counter()
        if measure_from <= done <= until:
            latencies.append(done - now)
    cpu = cpu_seconds() - (cpu0 if cpu0 is not None else cpu_seconds())
    client.close()
    return {"latencies": latencies.tobytes(), "cpu_s": cpu}


def _batch(port: int, batch: int, cfg: RunConfig, key: str) -> Run:
    (out,) = in_processes(_pipeline_load, [(port, key, batch, cfg)], cfg.duration + 120)
    return Run.from_latencies(
        out["latencies"], batch=batch, seconds=cfg.duration, errors=0, cpu_s=out["cpu_s"]
    )


def _read_load(port: int, keys: list[str], limit: int) -> dict[str, Any]:
    """Child process: XRANGE every stream in pages of 1000 entries (decoded by redis-py)."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    n = 0
    for key in keys:
        start = "-"
        while n < limit:
            page: Any = client.xrange(key, min=start, max="+", count=min(1000, limit - n))
            if not page:
                break
            n += len(page)
            start = "(" + page[-1][0].decode()
            if len(page) < 1000:
                break
    seconds = time.perf_counter() - t0
    client.close()
    return {"events": n, "seconds": seconds, "cpu_s": cpu_seconds() - cpu0}


def version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False)
    return next((t.split("=", 1)[1] for t in out.stdout.split() if t.startswith("v=")), "?")


class RedisPeer(Peer):
    system = "redis"
    shape = "1 node"
    durable = "yes on one node: AOF appendfsync always (one fsync per event-loop pass)"
    notes = ("no replication, so no failover figure",)
    read_method = "redis-py: XRANGE of each stream written, pages of 1000, entries decoded"

    def __init__(self, cfg: RunConfig, workdir: Path, *, install: bool) -> None:
        super().__init__(cfg, workdir, install=install)
        self.servers = Servers(workdir)
        (self.port,) = free_ports(1)
        self.keys: list[str] = []

    def start(self) -> None:
        apt_install(PACKAGES, allowed=self.install)
        need_python(["redis"], allowed=self.install)
        import redis

        self.version = version()
        self.servers.start(
            "redis",
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.workdir), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--daemonize", "no", "--protected-mode", "yes"],
        )  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            wait_for(lambda: quietly(client.ping), timeout=30, what="redis to answer PING")
            self.settings = {k: str(client.config_get(k)[k]) for k in ("appendonly", "appendfsync")}
        finally:
            client.close()
        if self.settings["appendfsync"] != "always":
            raise RuntimeError(f"redis is not fsyncing every write: {self.settings}")

    def stop(self) -> None:
        self.servers.stop()

    def method(self, w: Workload) -> str:
        if w.batch == 1:
            return (
                f"redis-benchmark (C) -c {w.clients} -P 1 XADD, the count sized to the "
                "duration from a first short run"
            )
        return f"redis-py, 1 connection, pipeline(transaction=False) of {w.batch} XADD"

    def append(self, w: Workload, run: int) -> Run:
        key = f"bench:b{w.batch}c{w.clients}r{run}"
        self.keys.append(key)
        if w.batch == 1:
            return _single(self.port, w.clients, self.cfg, key, "v" * w.size)
        return _batch(self.port, w.batch, self.cfg, key)

    def read(self) -> Run:
        (out,) = in_processes(_read_load, [(self.port, self.keys, self.cfg.read_max)], 120)
        return Run.streamed(events=out["events"], seconds=out["seconds"], cpu_s=out["cpu_s"])


PEER = RedisPeer
