"""esdb against its peers, on the same workloads in one run: figures, ratios and JSON.

    python bench/compare.py [--quick] [--peers etcd,nats,postgres,sqlite,redis,esdb_es,esdb_es3]
                            [--duration S] [--runs N] [--failovers N] [--json out.json]

Systems (each started on free 127.0.0.1 ports in a temp dir and stopped by PID afterwards):
esdb as a 3-node local cluster with durability fsync; etcd 3 members (Go loader); NATS
JetStream 3 nodes, R=3 file storage (nats-py); PostgreSQL and SQLite through the
`eventsourcing` library; Redis Streams with appendfsync always; and esdb itself through the
`eventsourcing` library (esdb_node.eventsourcing) on a standalone node (`esdb_es`) and on a
3-node cluster (`esdb_es3`), durability fsync, with the PostgreSQL and SQLite peers' loader.
Each peer installs what it needs (apt-get, and the `bench` extra: pip install -e '.[bench]')
unless --no-install.

Workloads, 100-byte events: appends of 1 event from 1 client and from 64 concurrent clients,
appends of 100 events from 1 client, all events read back by one client (decoded), and for the
replicated systems the time from the leader's SIGKILL to the first acknowledged write.
Every cell is bounded in time and count; each is run --runs times and the median run is
reported. The table is on stdout, progress on stderr.

`--quick` measures esdb alone with short cells and installs nothing (a few minutes at most;
CI runs it with shorter cells still).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and esdb importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import Machine, describe, load_avg
from bench.peers.common import Peer
from bench.results import APPEND_WORKLOADS, Cell, Failover, PeerReport, Run, RunConfig, Workload

PEERS = ("etcd", "nats", "postgres", "sqlite", "redis", "esdb_es", "esdb_es3")
BASELINE = "etcd"
# The systems measured through the `eventsourcing` library with one loader
# (bench/peers/eventsourcing_load.py): they differ only in the persistence module.
ES_SYSTEMS = ("esdb-es", "esdb-es-3", "postgres", "sqlite")
ES_BASELINE = "esdb-es"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="esdb alone, short cells")
    parser.add_argument("--peers", help=f"comma-separated, from {','.join(PEERS)} (default all)")
    parser.add_argument("--duration", type=float, help="measured seconds per run of a cell")
    parser.add_argument("--warmup", type=float, help="seconds of load before measuring")
    parser.add_argument("--runs", type=int, help="runs per cell (the median run is reported)")
    parser.add_argument("--failovers", type=int, help="leader kills (0 = none)")
    parser.add_argument("--read-max", type=int, help="events read back at most")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    if args.peers is None:
        args.peers = "" if args.quick else ",".join(PEERS)
    peers = [p for p in args.peers.split(",") if p]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        parser.error(f"unknown peer {unknown[0]!r}; choose from {', '.join(PEERS)}")
    args.peer_list = peers
    return args


def config(args: argparse.Namespace) -> RunConfig:
    quick = args.quick

    def pick(value: Any, full: Any, short: Any) -> Any:
        return value if value is not None else (short if quick else full)

    return RunConfig(
        duration=pick(args.duration, 5.0, 2.0),
        runs=pick(args.runs, 3, 1),
        read_max=pick(args.read_max, 200_000, 50_000),
        failovers=pick(args.failovers, 5, 3),
        warmup=pick(args.warmup, 0.5, 0.3),
    )


class Session:
    """Every system of the run, started together and measured cell by cell in turn, so that a
    change in the machine's background load hits all of them alike. A system that fails is
    stopped, reported with its error, and the others go on."""

    def __init__(self, names: list[str], cfg: RunConfig, workdir: Path, install: bool) -> None:
        self.cfg = cfg
        self.peers: dict[str, Peer] = {}
        self.errors: dict[str, str] = {}
        self.runs: dict[str, dict[str, list[Run]]] = {n: {} for n in names}
        self.reads: dict[str, Run] = {}
        self.failovers: dict[str, Failover] = {}
        self.order = names
        for name in names:
            directory = workdir / name
            directory.mkdir()
            module = importlib.import_module(f"bench.peers.{name}")
            self.peers[name] = module.PEER(cfg, directory, install=install)

    def _guard(self, name: str, what: str, action: Callable[[Peer], None]) -> None:
        """`action(peer)` unless the system already failed; a failure stops it."""
        peer = self.peers.get(name)
        if peer is None or name in self.errors:
            return
        try:
            action(peer)
        except Exception as exc:
            self.errors[name] = f"{what}: {type(exc).__name__}: {exc}"
            say(f"{name} failed at {self.errors[name]}")
            traceback.print_exc(file=sys.stderr)
            self._stop(name)

    def _stop(self, name: str) -> None:
        peer = self.peers.pop(name, None)
        if peer is not None:
            try:
                peer.stop()
            except Exception as exc:
                say(f"{name}: stopping failed: {exc}")

    def _append(self, name: str, w: Workload, r: int, peer: Peer) -> None:
        run = replace(peer.append(w, r), load_avg=load_avg()[0])
        self.runs[name].setdefault(w.key, []).append(run)
        say(
            f"run {r + 1}/{self.cfg.runs} {w.key} {name}: {run.events_per_s:,.0f} events/s, "
            f"p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms, "
            f"loader CPU {run.loader_cpu_pct or 0:.0f}% (load average {run.load_avg})"
        )

    def _read(self, name: str, peer: Peer) -> None:
        run = replace(peer.read(), load_avg=load_avg()[0])
        self.reads[name] = run
        say(f"read $all {name}: {run.events:,} events, {run.events_per_s:,.0f} events/s")

    def _failover(self, name: str, peer: Peer) -> None:
        result = peer.failover()
        if result is not None:
            self.failovers[name] = result
            say(f"failover {name}: median {result.median_s:.2f} s of {result.times_s}")

    def run(self) -> None:
        for name in self.order:
            say(f"starting {name}")
            self._guard(name, "start", lambda peer: peer.start())
        for r in range(self.cfg.runs):
            for w in APPEND_WORKLOADS:
                for name in self.order:
                    self._guard(name, w.key, partial(self._append, name, w, r))
        for name in self.order:
            self._guard(name, "read $all", partial(self._read, name))
        if self.cfg.failovers:
            for name in self.order:
                self._guard(name, "failover", partial(self._failover, name))

    def stop(self) -> None:
        for name in reversed(self.order):
            self._stop(name)

    def reports(self, started: dict[str, Peer]) -> list[PeerReport]:
        out = []
        for name in self.order:
            peer = started[name]
            cells = tuple(
                Cell(w.key, tuple(self.runs[name][w.key]), peer.method(w))
                for w in APPEND_WORKLOADS
                if self.runs[name].get(w.key)
            )
            out.append(
                peer.report(
                    cells, self.reads.get(name), self.failovers.get(name), self.errors.get(name)
                )
            )
        return out


def say(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


# --- printing ----------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def ratios(reports: list[PeerReport]) -> dict[str, dict[str, float | None]]:
    """esdb divided by each peer, per figure: above 1 means esdb does more (throughput) or
    takes longer (latency, failover)."""
    esdb = next((r for r in reports if r.system == "esdb" and not r.error), None)
    out: dict[str, dict[str, float | None]] = {}
    if esdb is None:
        return out

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    for peer in reports:
        if peer.system == "esdb" or peer.error:
            continue
        row: dict[str, float | None] = {}
        for w in APPEND_WORKLOADS:
            mine, theirs = esdb.cell(w.key), peer.cell(w.key)
            if mine and theirs:
                row[f"{w.key} events/s"] = div(mine.median.events_per_s, theirs.median.events_per_s)
                row[f"{w.key} p50"] = div(mine.median.p50_ms, theirs.median.p50_ms)
                row[f"{w.key} p99"] = div(mine.median.p99_ms, theirs.median.p99_ms)
        if esdb.read and peer.read:
            row["read $all events/s"] = div(
                esdb.read.median.events_per_s, peer.read.median.events_per_s
            )
        if esdb.failover and peer.failover:
            row["failover median"] = div(esdb.failover.median_s, peer.failover.median_s)
        out[peer.system] = row
    return out


def es_ratios(reports: list[PeerReport]) -> dict[str, dict[str, float | None]]:
    """esdb through eventsourcing (standalone) divided by each other eventsourcing backend."""
    mine = next((r for r in reports if r.system == ES_BASELINE and not r.error), None)
    out: dict[str, dict[str, float | None]] = {}
    if mine is None:
        return out
    for peer in reports:
        if peer.system not in ES_SYSTEMS or peer.system == ES_BASELINE or peer.error:
            continue
        row: dict[str, float | None] = {}
        for w in APPEND_WORKLOADS:
            a, b = mine.cell(w.key), peer.cell(w.key)
            if a and b and b.median.events_per_s:
                row[f"{w.key} events/s"] = round(a.median.events_per_s / b.median.events_per_s, 3)
        if mine.read and peer.read and peer.read.median.events_per_s:
            row["read events/s"] = round(
                mine.read.median.events_per_s / peer.read.median.events_per_s, 3
            )
        out[peer.system] = row
    return out


def print_es_tables(reports: list[PeerReport]) -> None:
    """The eventsourcing application benchmark: one loader, each backend."""
    rows = [r for s in ES_SYSTEMS for r in reports if r.system == s]
    mine = next((r for r in rows if r.system == ES_BASELINE), None)
    if len(rows) < 2:
        return
    print(f"\n## the eventsourcing application on each backend ({ES_BASELINE} ÷ system)")
    for w in APPEND_WORKLOADS:
        print(f"\n### Application.save, {w.batch} event(s) per save, {w.clients} thread(s)\n")
        print("| system | shape | events/s | saves/s | p50 ms | p99 ms | errors | loader CPU % "
              f"| {ES_BASELINE} ÷ system |")  # fmt: skip
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        reference = mine.cell(w.key) if mine else None
        for r in rows:
            cell = r.cell(w.key)
            if cell is None:
                continue
            m = cell.median
            ratio = _ratio(reference.median.events_per_s if reference else None, m.events_per_s)
            print(
                f"| {r.system} | {r.shape} | {_num(m.events_per_s)} | {_num(m.ops_per_s)} "
                f"| {m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.errors} | {_num(m.loader_cpu_pct)} "
                f"| {ratio} |"
            )


def print_tables(machine: Machine, cfg: RunConfig, reports: list[PeerReport]) -> None:
    ok = reports  # a system that failed part way still shows what it measured
    esdb = next((r for r in ok if r.system == "esdb"), None)
    print(
        f"# {machine.cores} cores ({machine.cpu}), {machine.mem_gib} GiB, {machine.os}, "
        f"Python {machine.python}; disk: {machine.fsync_per_s:,.0f} fsyncs/s (4 KiB appends); "
        f"load average {machine.load_avg[0]} at the start\n"
        f"# {cfg.runs} run(s) per cell, {cfg.duration:g} s each after {cfg.warmup:g} s warm-up; "
        "the median run is shown; 100-byte events; systems measured in turn, cell by cell\n"
    )
    print("| system | shape | version | durable per ack |")
    print("|---|---|---|---|")
    for r in reports:
        print(
            f"| {r.system} | {r.shape} | {r.version} | {r.durable} |"
            + (f" FAILED: {r.error}" if r.error else "")
        )
    for w in APPEND_WORKLOADS:
        print(f"\n## append, batch {w.batch}, {w.clients} client(s)\n")
        print(
            "| system | events/s | appends/s | p50 ms | p99 ms | errors | loader CPU % "
            "| load avg | esdb ÷ system |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        mine = esdb.cell(w.key) if esdb else None
        for r in ok:
            cell = r.cell(w.key)
            if cell is None:
                continue
            m = cell.median
            print(
                f"| {r.system} | {_num(m.events_per_s)} | {_num(m.ops_per_s)} "
                f"| {m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.errors} "
                f"| {_num(m.loader_cpu_pct)} | {_num(m.load_avg, 1)} "
                f"| {_ratio(mine.median.events_per_s if mine else None, m.events_per_s)} |"
            )
    print("\n## $all (every event) streamed to one client, decoded\n")
    print("| system | events | events/s | loader CPU % | esdb ÷ system |")
    print("|---|---:|---:|---:|---:|")
    for r in ok:
        if r.read:
            m = r.read.median
            mine_read = esdb.read.median.events_per_s if esdb and esdb.read else None
            print(
                f"| {r.system} | {_num(m.events)} | {_num(m.events_per_s)} "
                f"| {_num(m.loader_cpu_pct)} | {_ratio(mine_read, m.events_per_s)} |"
            )
    failing = [r for r in ok if r.failover]
    if failing:
        print("\n## failover: leader SIGKILL -> first acknowledged write\n")
        print("| system | kills | median s | min s | max s | each |")
        print("|---|---:|---:|---:|---:|---|")
        for r in failing:
            f = r.failover
            assert f is not None
            print(
                f"| {r.system} | {len(f.times_s)} | {f.median_s:.2f} | {min(f.times_s):.2f} "
                f"| {max(f.times_s):.2f} | {', '.join(f'{t:.2f}' for t in f.times_s)} |"
            )
    table = ratios(reports)
    if BASELINE in table:
        base = table[BASELINE]
        print(f"\n## esdb ÷ {BASELINE} (the issue's targets are stated as these ratios)\n")
        print("| figure | esdb | etcd | esdb ÷ etcd |")
        print("|---|---:|---:|---:|")
        peer = next(r for r in ok if r.system == BASELINE)
        assert esdb is not None
        for w in APPEND_WORKLOADS:
            mine_c, theirs_c = esdb.cell(w.key), peer.cell(w.key)
            if not (mine_c and theirs_c):
                continue
            a, b = mine_c.median, theirs_c.median
            print(
                f"| {w.key} events/s | {_num(a.events_per_s)} | {_num(b.events_per_s)} "
                f"| {_ratio(a.events_per_s, b.events_per_s)} |"
            )
            print(
                f"| {w.key} p50 ms | {a.p50_ms:.2f} | {b.p50_ms:.2f} "
                f"| {_ratio(a.p50_ms, b.p50_ms)} |"
            )
            print(
                f"| {w.key} p99 ms | {a.p99_ms:.2f} | {b.p99_ms:.2f} "
                f"| {_ratio(a.p99_ms, b.p99_ms)} |"
            )
        if "read $all events/s" in base and esdb.read and peer.read:
            print(
                f"| read $all events/s | {_num(esdb.read.median.events_per_s)} "
                f"| {_num(peer.read.median.events_per_s)} | {base['read $all events/s']:.2f}x |"
            )
        if "failover median" in base and esdb.failover and peer.failover:
            print(
                f"| failover median s | {esdb.failover.median_s:.2f} "
                f"| {peer.failover.median_s:.2f} | {base['failover median']:.2f}x |"
            )
    print_es_tables(reports)
    notes = [(r.system, n) for r in ok for n in r.notes]
    if notes:
        print("\nNotes:")
        for system, note in notes:
            print(f"- {system}: {note}")
    print(f"\n# load average at the end: {load_avg()[0]}")


# --- the run -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config(args)
    # a SIGTERM unwinds like Ctrl-C, so every runner stops the servers it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    install = not (args.quick or args.no_install)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    workdir = Path(tempfile.mkdtemp(prefix="esdb-compare-"))
    names = ["esdb", *args.peer_list]
    session = Session(names, cfg, workdir, install)
    peers = dict(session.peers)
    t0 = time.monotonic()
    try:
        machine = describe(workdir)
        say(f"machine: {machine.cores} cores, load {machine.load_avg}, "
            f"{machine.fsync_per_s:,.0f} fsyncs/s")  # fmt: skip
        session.run()
    finally:
        session.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    wall = round(time.monotonic() - t0, 1)
    reports = session.reports(peers)
    print_tables(machine, cfg, reports)
    if args.json:
        doc = {
            "started": started,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": ["python", "bench/compare.py", *(sys.argv[1:] if argv is None else argv)],
            "config": {
                "duration_s": cfg.duration, "warmup_s": cfg.warmup, "runs": cfg.runs,
                "read_max": cfg.read_max, "failovers": cfg.failovers, "max_ops": cfg.max_ops,
                "event_bytes": APPEND_WORKLOADS[0].size,
            },
            "machine": machine.to_json() | {"load_avg_end": load_avg()},
            "systems": [
                r.to_json() for r in reports
            ],
            "wall_s": wall,
            "ratios_esdb_over": ratios(reports),
            "ratios_esdb_es_over": es_ratios(reports),
        }  # fmt: skip
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    failed = [r.system for r in reports if r.error]
    if failed:
        print(f"error: {', '.join(failed)} could not be measured (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
