"""Raft journal micro-benchmark: the LMDB journal vs the segment journal, same run, same disk.

    python bench/journal_bench.py [--seconds 2] [--repeats 3] [--dir DIR] [--json FILE]

One commit = `group` entries of 100 bytes appended, then `flush()` (the durability point the
node calls before an ack leaves): with durability fsync that is one synced LMDB transaction
(two fdatasyncs: data pages, then the meta page) or one segment write + one fdatasync. Cells:
groups of 1 and 100 entries, fsync (and os, for scale). The two journals alternate, cell by
cell, `--repeats` times, so load on the shared machine hits both alike; the table shows the
median run of each cell. Every cell is bounded in time and in commits. The journals live in
a temporary directory under --dir (default: the system temp dir, on the data disk here).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import describe  # noqa: E402
from esdb_cli.bench import percentile  # noqa: E402
from esdb_node.raft.journal import SegmentJournal  # noqa: E402
from esdb_node.raft.lmdb_journal import LmdbJournal  # noqa: E402

ENTRY = 100
MAX_COMMITS = 200_000
KINDS: dict[str, Any] = {"lmdb": LmdbJournal, "segments": SegmentJournal}


def run_cell(kind: str, directory: Path, group: int, fsync: bool, seconds: float) -> dict[str, Any]:
    path = directory / f"{kind}-{group}-{int(fsync)}"
    shutil.rmtree(path, ignore_errors=True)
    journal = KINDS[kind](path, fsync=fsync)
    payload = b"x" * ENTRY
    lat: list[float] = []
    idx = 0
    try:
        # Warm-up: the first segment and LMDB's first pages are made outside the timing.
        for _ in range(20):
            for _ in range(group):
                idx += 1
                journal.add(payload, idx, 1)
            journal.flush()
        commits = 0
        start = time.perf_counter()
        stop_at = start + seconds
        while commits < MAX_COMMITS:
            t0 = time.perf_counter()
            for _ in range(group):
                idx += 1
                journal.add(payload, idx, 1)
            if not journal.flush():
                raise RuntimeError(f"{kind}: flush refused (disk full?)")
            t1 = time.perf_counter()
            lat.append(t1 - t0)
            commits += 1
            if t1 >= stop_at:
                break
        elapsed = time.perf_counter() - start
        synced = journal.synced_commits
    finally:
        journal._destroy()
        shutil.rmtree(path, ignore_errors=True)
    lat.sort()
    return {
        "journal": kind,
        "group": group,
        "durability": "fsync" if fsync else "os",
        "commits": commits,
        "commits_per_s": commits / elapsed,
        "entries_per_s": commits * group / elapsed,
        "p50_us": percentile(lat, 0.5) * 1e6,
        "p99_us": percentile(lat, 0.99) * 1e6,
        "synced_commits": synced,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per cell and run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-os", action="store_true", help="skip the durability=os cells")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="esdb-journal-bench-", dir=args.dir))
    try:
        machine = describe(base)
        print(
            f"# {machine.cpu}, {machine.cores} cores, load {machine.load_avg}, "
            f"fsync+4KiB {machine.fsync_per_s:.0f}/s, io {machine.io_pressure}",
            file=sys.stderr,
        )
        cells = [(g, True) for g in (1, 100)] + (
            [] if args.no_os else [(g, False) for g in (1, 100)]
        )
        runs: dict[tuple[str, int, bool], list[dict[str, Any]]] = {}
        for rep in range(args.repeats):
            for group, fsync in cells:
                for kind in KINDS if rep % 2 == 0 else reversed(list(KINDS)):
                    result = run_cell(kind, base, group, fsync, args.seconds)
                    runs.setdefault((kind, group, fsync), []).append(result)
        load_after = describe(base, fsync_seconds=0.2).load_avg
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rows = []
    for (_kind, _group, _fsync), results in runs.items():
        med = statistics.median(r["commits_per_s"] for r in results)
        rows.append(min(results, key=lambda r: abs(r["commits_per_s"] - med)))
    print("| durability | group | journal | commits/s | entries/s | p50 µs | p99 µs |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['durability']} | {r['group']} | {r['journal']} | {r['commits_per_s']:,.0f} "
            f"| {r['entries_per_s']:,.0f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": machine.to_json(), "load_after": load_after, "cells": rows}, indent=2
            )
        )


if __name__ == "__main__":
    main()
