"""Single-node benchmark: esdb appends against a raw LMDB append loop measured in the same run.

    python bench/single_node.py [--duration 3] [--json results.json]

Cells: batch sizes 1, 10, 100 x concurrent clients 1, 16, 64, 100-byte events, durability
fsync (every acknowledged append is on disk). The baseline is the floor cost of the same
durable work without esdb: one LMDB transaction with `sync=True` per batch, from one writer,
in a separate process. Ratios are esdb events/s divided by the baseline's at the same batch
size. Bounded: each cell runs `--duration` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from esdb_cli.bench import BenchResult, run_append, run_read_all  # noqa: E402
from tests.harness import NodeProc  # noqa: E402


def lmdb_baseline(batch: int, duration: float, sync: bool = True) -> dict[str, float]:
    """Run in a child process: append `batch` 100-byte records per synced transaction."""
    code = f"""
import lmdb, os, struct, time, json, tempfile, shutil
d = tempfile.mkdtemp(prefix="esdb-bench-lmdb-")
env = lmdb.open(d, map_size=8 << 30, sync={sync}, metasync={sync})
value = os.urandom(50).hex().encode()
lat = []; n = 0; end = time.perf_counter() + {duration}
while time.perf_counter() < end and n < 5_000_000:
    t0 = time.perf_counter()
    with env.begin(write=True) as txn:
        for _ in range({batch}):
            txn.put(struct.pack(">Q", n), value, append=True); n += 1
    lat.append(time.perf_counter() - t0)
env.close(); shutil.rmtree(d)
lat.sort()
print(json.dumps({{"events": n, "txns": len(lat), "duration": {duration},
                  "p50": lat[len(lat)//2], "p99": lat[int(len(lat)*0.99)]}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 60,
    )
    value: dict[str, float] = json.loads(out.stdout)
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--batches", default="1,10,100")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--durability", default="fsync", choices=["fsync", "os"])
    parser.add_argument("--json", type=Path, help="also write all figures here")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    clients = [int(c) for c in args.clients.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="esdb-bench-"))
    from esdb_node.config import NodeConfig

    node = NodeProc(tmp / "node", NodeConfig(durability=args.durability)).start()
    results: list[dict[str, object]] = []
    try:
        print(
            f"# esdb single node ({args.durability}) vs raw LMDB, 100-byte events, "
            f"{args.duration:g}s per cell, {os.cpu_count()} cores",
            flush=True,
        )
        print(
            "| batch | clients | esdb events/s | appends/s | p50 ms | p99 ms | "
            "raw LMDB events/s | ratio |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for batch in batches:
            base = lmdb_baseline(batch, args.duration, sync=args.durability == "fsync")
            base_eps = base["events"] / base["duration"]
            for c in clients:
                r: BenchResult = asyncio.run(
                    run_append(node.url, clients=c, batch=batch, duration=args.duration)
                )
                ratio = r.events_per_s / base_eps
                print(
                    f"| {batch} | {c} | {r.events_per_s:,.0f} | {r.ops_per_s:,.0f} | "
                    f"{r.p50_ms:.2f} | {r.p99_ms:.2f} | {base_eps:,.0f} | {ratio:.2f}x |",
                    flush=True,
                )
                results.append(
                    {
                        **r.to_json(),
                        "baseline_events_per_s": round(base_eps, 1),
                        "baseline_p50_ms": round(base["p50"] * 1000, 3),
                        "ratio": round(ratio, 3),
                    }
                )
        total = node.status().last_position + 1
        read = asyncio.run(run_read_all(node.url, limit=total))
        print(
            f"\n$all read streamed to one client: {read.events_per_s:,.0f} events/s "
            f"({read.events:,} events in {read.duration_s:.2f}s)"
        )
        results.append(read.to_json())
    finally:
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
