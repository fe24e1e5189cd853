"""The loader for the `eventsourcing` library (PostgreSQL and SQLite runners), as in the peer
baselines' es_bench.py: an aggregate whose `append` event changes nothing; one
`Application.save` (one database transaction) per `batch` events; `clients` threads, each
with its own aggregate. Runs in a forked child; bounded in time and count."""

from __future__ import annotations

import array
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.loadgen import cpu_seconds, in_processes
from bench.results import Run, RunConfig, Workload

DATA = "x" * 100


def _application(env: dict[str, str]) -> Any:
    from eventsourcing.application import Application

    return Application(env=env)


def _aggregate_class() -> Any:
    from bench.peers.es_domain import Stream

    return Stream


def _append_load(env: dict[str, str], w: Workload, cfg: RunConfig) -> dict[str, Any]:
    app = _application(env)
    stream_class = _aggregate_class()
    start = time.perf_counter()
    measure_from, until = start + cfg.warmup, start + cfg.warmup + cfg.duration
    budget = [cfg.max_ops]
    lock = threading.Lock()
    lats: list[array.array[float]] = [array.array("d") for _ in range(w.clients)]
    errors = [0]
    cpu0 = [0.0]
    timer = threading.Timer(cfg.warmup, lambda: cpu0.__setitem__(0, cpu_seconds()))

    def worker(i: int) -> None:
        agg = stream_class()
        app.save(agg)
        while time.perf_counter() < until:
            with lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            for _ in range(w.batch):
                agg.append(DATA)
            t0 = time.perf_counter()
            try:
                app.save(agg)
            except Exception:
                # e.g. SQLite "database is locked" past its timeout: counted, and the
                # aggregate is reloaded so the next save starts from what is stored
                done = time.perf_counter()
                if measure_from <= done <= until:
                    with lock:
                        errors[0] += 1
                agg = app.repository.get(agg.id)
                continue
            done = time.perf_counter()
            if measure_from <= done <= until:
                lats[i].append(done - t0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(w.clients)]
    timer.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=cfg.warmup + cfg.duration + 120)
    cpu = cpu_seconds() - cpu0[0]
    app.close()
    merged = array.array("d")
    for lat in lats:
        merged.extend(lat)
    return {"latencies": merged.tobytes(), "errors": errors[0], "cpu_s": cpu}


def append_run(env: dict[str, str], w: Workload, cfg: RunConfig) -> Run:
    (out,) = in_processes(_append_load, [(env, w, cfg)], cfg.warmup + cfg.duration + 180)
    return Run.from_latencies(
        out["latencies"], batch=w.batch, seconds=cfg.duration, errors=out["errors"],
        cpu_s=out["cpu_s"],
    )  # fmt: skip


def _read_load(env: dict[str, str], limit: int) -> dict[str, Any]:
    app = _application(env)
    _aggregate_class()  # the event classes must exist to decode their topics
    to_event: Callable[[Any], Any] = app.mapper.to_domain_event
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    n, start = 0, 1
    while n < limit:
        page = app.recorder.select_notifications(start, min(1000, limit - n))
        if not page:
            break
        for notification in page:
            to_event(notification)
        n += len(page)
        start = page[-1].id + 1
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    app.close()
    return {"events": n, "seconds": seconds, "cpu_s": cpu}


def read_run(env: dict[str, str], limit: int) -> Run:
    (out,) = in_processes(_read_load, [(env, limit)], 180)
    return Run.streamed(events=out["events"], seconds=out["seconds"], cpu_s=out["cpu_s"])


def pragma(env: dict[str, str], *names: str) -> dict[str, str]:
    """PRAGMA values as seen on a connection of eventsourcing's own SQLite datastore."""

    def ask() -> dict[str, str]:
        app = _application(env)
        out = {}
        with app.recorder.datastore.transaction(commit=False) as cursor:
            for name in names:
                cursor.execute(f"PRAGMA {name}")
                out[name] = str(cursor.fetchone()[0])
        app.close()
        return out

    (values,) = in_processes(ask, [()], 60)
    result: dict[str, str] = values
    return result


METHOD = (
    "eventsourcing Application in one process: {clients} thread(s), each its own aggregate; "
    "{batch} event(s) then one save() = one transaction"
)
READ_METHOD = (
    "eventsourcing: recorder.select_notifications in pages of 1000, each mapped back to its "
    "domain event"
)


def library_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("eventsourcing")
