"""Raft append throughput and latency: esdb's RaftNode vs naive stock pysyncobj, same run.

    python bench/raft_bench.py [--seconds 3] [--json results.json]

Three node processes on 127.0.0.1 per configuration; the load runs inside the leader process
(so client overhead is not measured). Cells: batches of 1/10/100 events of 100 bytes, 1 or 4
batches in flight, for esdb with durability=fsync and =os, and for a naive stock baseline:
pysyncobj 0.3.17 with default settings (journal + dump files, no password), one replicated
call per event, a "batch" being that many calls in flight together; and the same with
appendEntriesUseBatch=False ("tuned", the notes' best stock setting for latency). Also a
frame-codec micro-benchmark: stock (pickle 2 + zlib + Fernet) vs esdb (msgpack schema + AES-GCM).
Every cell is bounded in time; every process is SIGKILLed and reaped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from esdb_cli.bench import percentile  # noqa: E402
from esdb_cli.localcluster import free_ports  # noqa: E402

SECRET = "bench-secret"
EVENT = 100
CELLS = [(b, f) for b in (1, 10, 100) for f in (1, 4)]


# --- node process ------------------------------------------------------------------------------


def _run_load(submit_batch: Any, events: int, inflight: int, seconds: float) -> dict[str, Any]:
    sem = threading.Semaphore(inflight)
    lock = threading.Lock()
    lat: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    def done(started: float, ok: bool) -> None:
        nonlocal errors
        with lock:
            if ok:
                lat.append(time.perf_counter() - started)
            else:
                errors += 1
        sem.release()

    t0 = time.perf_counter()
    sent = 0
    while time.perf_counter() < stop_at:
        if not sem.acquire(timeout=5):
            break
        submit_batch(events, done)
        sent += 1
    for _ in range(inflight):  # drain: wait for the batches still in flight
        sem.acquire(timeout=10)
    elapsed = time.perf_counter() - t0
    lat.sort()
    return {
        "batches": len(lat),
        "errors": errors,
        "events_per_s": len(lat) * events / elapsed,
        "ops_per_s": len(lat) / elapsed,
        "p50_ms": percentile(lat, 0.5) * 1000,
        "p99_ms": percentile(lat, 0.99) * 1000,
    }


def esdb_node(addr: str, peers: list[str], data: Path, durability: str) -> tuple[Any, Any]:
    from esdb_node.deadline import Deadline
    from esdb_node.raft import Applied, RaftConfig, RaftNode
    from esdb_node.storage import commands as cmd
    from esdb_node.storage.store import Store

    store = Store(data / "store", sync=False)  # the synced raft journal makes it recoverable
    node = RaftNode(RaftConfig(addr, tuple(peers), data, SECRET, durability=durability), store)
    payload = os.urandom(EVENT)

    def submit_batch(events: int, done: Any) -> None:
        batch = cmd.encode_batch(
            time.time_ns() // 1000,
            [
                cmd.append(
                    "bench",
                    -2,
                    [[uuid.uuid4().bytes, "T", payload, b"", False] for _ in range(events)],
                )
            ],
        )
        started = time.perf_counter()
        node.submit(batch, lambda o: done(started, isinstance(o, Applied)), Deadline.after(10.0))

    return node.is_leader, submit_batch


def stock_node(addr: str, peers: list[str], data: Path, tuned: bool = False) -> tuple[Any, Any]:
    from pysyncobj import SyncObj, SyncObjConf, replicated

    class Naive(SyncObj):  # type: ignore[misc,unused-ignore]
        def __init__(self) -> None:
            super().__init__(
                addr,
                peers,
                SyncObjConf(
                    bindAddress=addr,
                    journalFile=str(data / "journal"),
                    fullDumpFile=str(data / "dump"),
                    appendEntriesUseBatch=not tuned,
                ),
            )
            self.events: list[bytes] = []

        @replicated
        def append(self, event: bytes) -> int:
            self.events.append(event)
            return len(self.events)

    data.mkdir(parents=True, exist_ok=True)
    obj = Naive()
    payload = os.urandom(EVENT)

    def submit_batch(events: int, done: Any) -> None:
        started = time.perf_counter()
        left = [events]
        failed = [False]
        lock = threading.Lock()

        def cb(_res: Any, err: int) -> None:
            with lock:
                failed[0] = failed[0] or err != 0
                left[0] -= 1
                last = left[0] == 0
            if last:
                done(started, not failed[0])

        for _ in range(events):
            obj.append(payload, callback=cb)

    return obj._isLeader, submit_batch


def node_main(spec: dict[str, Any]) -> None:
    data = Path(spec["data"])
    if spec["kind"] == "esdb":
        is_leader, submit_batch = esdb_node(spec["addr"], spec["peers"], data, spec["durability"])
    else:
        is_leader, submit_batch = stock_node(
            spec["addr"], spec["peers"], data, tuned=spec["kind"] == "tuned"
        )
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "is_leader":
            reply: dict[str, Any] = {"leader": bool(is_leader())}
        else:
            reply = _run_load(submit_batch, req["events"], req["inflight"], req["seconds"])
        print(json.dumps(reply), flush=True)


# --- orchestrator --------------------------------------------------------------------------------


class Proc:
    def __init__(self, spec: dict[str, Any], log: Path) -> None:
        self.log = open(log, "w")  # noqa: SIM115
        self.p = subprocess.Popen(
            [sys.executable, __file__, "--node", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )

    def ask(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        return self.read(timeout)

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.p.stdout is not None
        box: list[str] = []
        t = threading.Thread(target=lambda: box.append(self.p.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        t.start()
        t.join(timeout)
        if not box or not box[0]:
            self.log.flush()
            tail = Path(self.log.name).read_text()[-3000:]
            raise RuntimeError(f"node did not answer; its log ends with:\n{tail}")
        return json.loads(box[0])  # type: ignore[no-any-return,unused-ignore]

    def kill(self) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait(30)
        self.log.close()


class Cluster:
    """Three node processes of one configuration; the leader runs the load."""

    def __init__(self, kind: str, durability: str, work: Path, ports: list[int]) -> None:
        self.label = f"{kind}-{durability}" if kind == "esdb" else f"stock-{kind}"
        addrs = [f"127.0.0.1:{p}" for p in ports]
        self.procs: list[Proc] = []
        for i, addr in enumerate(addrs):
            spec = {
                "kind": kind,
                "addr": addr,
                "peers": [a for a in addrs if a != addr],
                "data": str(work / f"{self.label}-{i}"),
                "durability": durability,
            }
            self.procs.append(Proc(spec, work / f"{self.label}-{i}.log"))
        self.leader: Proc | None = None

    def ready(self) -> None:
        for p in self.procs:
            p.read(60)
        deadline = time.monotonic() + 30
        while self.leader is None and time.monotonic() < deadline:
            for p in self.procs:
                if p.ask({"op": "is_leader"}, 10)["leader"]:
                    self.leader = p
                    break
            time.sleep(0.2)
        if self.leader is None:
            raise RuntimeError(f"{self.label}: no leader")
        self.run(1, 1, 0.5)  # warm-up

    def run(self, events: int, inflight: int, seconds: float) -> dict[str, Any]:
        assert self.leader is not None
        req = {"op": "run", "events": events, "inflight": inflight, "seconds": seconds}
        return self.leader.ask(req, seconds + 60)

    def kill(self) -> None:
        for p in self.procs:
            p.kill()


def run_all(seconds: float, work: Path) -> dict[str, dict[tuple[int, int], Any]]:
    """All configurations are started first and each cell runs for every configuration back
    to back, so load from elsewhere on a shared machine hits them alike."""
    configs = [("naive", "os"), ("tuned", "os"), ("esdb", "fsync"), ("esdb", "os")]
    clusters = []
    ports = free_ports(3 * len(configs))  # all at once: no port handed out twice
    try:
        for i, (kind, durability) in enumerate(configs):
            clusters.append(Cluster(kind, durability, work, ports[3 * i : 3 * i + 3]))
        for c in clusters:
            c.ready()
        results: dict[str, dict[tuple[int, int], Any]] = {c.label: {} for c in clusters}
        for events, inflight in CELLS:
            for c in clusters:
                r = c.run(events, inflight, seconds)
                results[c.label][(events, inflight)] = r
                print(
                    f"  {c.label:12} batch {events:3} x{inflight}: "
                    f"{r['events_per_s']:9.0f} ev/s {r['ops_per_s']:7.0f} batches/s  "
                    f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}",
                    flush=True,
                )
        return results
    finally:
        for c in clusters:
            c.kill()


def codec_bench() -> list[dict[str, Any]]:
    import pickle
    import zlib

    from cryptography.fernet import Fernet

    from esdb_node.raft.transport import FrameCipher
    from esdb_node.raft.wire import decode_message, encode_message

    fernet = Fernet(Fernet.generate_key())
    cipher = FrameCipher.for_cluster(SECRET, "bench")
    key = os.urandom(32)
    rows = []
    entries = [(b"\x00E" + os.urandom(EVENT), i, 1) for i in range(100)]
    cases = {
        "heartbeat": {"type": "append_entries", "term": 1, "commit_index": 5, "entries": []},
        "100 entries x 100 B": {
            "type": "append_entries",
            "term": 1,
            "commit_index": 5,
            "entries": entries,
        },
        "1 MiB snapshot chunk": {
            "type": "append_entries",
            "term": 1,
            "commit_index": 5,
            "serialized": (os.urandom(1 << 20), False, False),
        },
    }
    for name, msg in cases.items():
        n = 20 if "MiB" in name else 2000

        def stock(msg: Any = msg) -> None:
            data = fernet.encrypt_at_time(zlib.compress(pickle.dumps(msg, 2), 3), 1)
            pickle.loads(zlib.decompress(fernet.decrypt(data)))

        def ours(msg: Any = msg) -> None:
            decode_message(cipher.open(0, cipher.seal(0, encode_message(msg, key))), key)

        timings = {}
        for label, fn in (("stock", stock), ("esdb", ours)):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            timings[label] = (time.perf_counter() - t) / n * 1e6
        rows.append({"message": name, "stock_us": timings["stock"], "esdb_us": timings["esdb"]})
        ratio = timings["stock"] / timings["esdb"]
        print(
            f"  {name:22} stock pickle2+zlib+Fernet {timings['stock']:9.1f} us   "
            f"esdb msgpack+AES-GCM {timings['esdb']:8.1f} us   ({ratio:.1f}x)",
            flush=True,
        )
    return rows


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--node":
        node_main(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each cell (max 5)")
    ap.add_argument("--json", type=Path, help="write all figures here")
    args = ap.parse_args()
    seconds = min(args.seconds, 5.0)
    work = Path(tempfile.mkdtemp(prefix="esdb-raft-bench-"))
    try:
        print("frame codec, encode+decode per message:")
        codec = codec_bench()
        print(f"3-node clusters on 127.0.0.1, {seconds:.0f} s per cell, {os.cpu_count()} CPUs:")
        results = run_all(seconds, work)
        base, tuned = results["stock-naive"], results["stock-tuned"]
        esdb = {"fsync": results["esdb-fsync"], "os": results["esdb-os"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\nevents/s vs the naive stock baseline (same batch size and batches in flight):")
    head = ["cell", "naive", "tuned", "ratio", "esdb fsync", "ratio", "esdb os", "ratio"]
    print("  " + " ".join(f"{h:>10}" for h in head))
    for cell in CELLS:
        b = base[cell]["events_per_s"]
        t = tuned[cell]["events_per_s"]
        f = esdb["fsync"][cell]["events_per_s"]
        o = esdb["os"][cell]["events_per_s"]
        label = f"{cell[0]}x{cell[1]}"
        print(
            f"  {label:>10} {b:10.0f} {t:10.0f} {t / b:9.1f}x {f:10.0f} {f / b:9.1f}x"
            f" {o:10.0f} {o / b:9.1f}x"
        )
    if args.json:
        out = {
            "codec": codec,
            "cells": [
                {"impl": impl, "events": c[0], "inflight": c[1], **res[c]}
                for impl, res in (
                    ("stock-naive", base),
                    ("stock-tuned", tuned),
                    ("esdb-fsync", esdb["fsync"]),
                    ("esdb-os", esdb["os"]),
                )
                for c in CELLS
            ],
        }
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
