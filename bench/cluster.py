"""3-node cluster benchmark: esdb appends on a local 3-node cluster against a single esdb node
and a naive pysyncobj 3-node cluster, all measured in the same run; then leader-kill failover.

    python bench/cluster.py [--duration 3] [--loaders 2] [--failovers 5] [--json out.json]

Cells: batch sizes 1, 10, 100 x concurrent clients 1, 16, 64, 100-byte events, durability
fsync and os. Each cell runs `--duration` seconds (after a 0.3 s warm-up). The three systems are
measured cell by cell, one after the other, so a change in background load hits all of them.

* esdb 3-node: `LocalCluster` (what `esdb cluster up` starts), clients given every node URL.
* esdb single node: one standalone node with the same durability.
* naive pysyncobj: 3 processes, stock `SyncObjConf(journalFile=..., fullDumpFile=...)`, one
  `@replicated` call per event, behind a minimal msgpack-over-TCP front so that the load comes
  from a separate process as it does for esdb. pysyncobj never fsyncs its journal, so it is
  measured once and its figures are the baseline for both durabilities.

The load generator is Python (`esdb_cli.bench.run_append` for esdb) and shares the 2 cores with
the nodes; with more than one client it runs in `--loaders` processes (default 2) started at the
same instant, and their latencies are merged. The table reports the loaders' CPU use.

Failover: a fresh 3-node cluster with default settings (fsync, election timeouts 1-2 s); the
leader is SIGKILLed `--failovers` times (restarted in between) and the time from the kill to
the first acknowledged append invoked after it is measured (`esdb_cli.chaos.faults`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgpack  # noqa: E402

from esdb_cli.bench import percentile, run_append  # noqa: E402
from esdb_cli.localcluster import LocalCluster, free_ports  # noqa: E402

FRAME = struct.Struct(">I")
EVENT_BYTES = 100
PSO_TIMEOUT = 30.0


# --- the naive pysyncobj cluster -----------------------------------------------------------------


def pso_node(index: int, workdir: Path, raft_ports: list[int], rpc_port: int) -> None:
    """One pysyncobj member with stock settings plus a tiny append RPC (runs in a child)."""
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    class Log(SyncObj):
        def __init__(self, me: str, partners: list[str], conf: Any) -> None:
            super().__init__(me, partners, conf)
            self._items: list[bytes] = []

        @replicated
        def append(self, item: bytes) -> int:
            self._items.append(item)
            return len(self._items)

    me = f"127.0.0.1:{raft_ports[index]}"
    partners = [f"127.0.0.1:{p}" for i, p in enumerate(raft_ports) if i != index]
    conf = SyncObjConf(
        journalFile=str(workdir / f"n{index}.journal"),
        fullDumpFile=str(workdir / f"n{index}.dump"),
    )
    log = Log(me, partners, conf)  # in the main thread: its tick thread lives as long
    asyncio.run(_pso_serve(log, rpc_port, FAIL_REASON.SUCCESS))
    log.destroy()


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (n,) = FRAME.unpack(await reader.readexactly(FRAME.size))
    return msgpack.unpackb(await reader.readexactly(n))


def _frame(value: Any) -> bytes:
    body = msgpack.packb(value)
    return FRAME.pack(len(body)) + body


async def _pso_serve(log: Any, port: int, success: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def append(items: list[bytes]) -> dict[str, Any]:
        if not log._isLeader():
            return {"err": "not_leader"}
        done: asyncio.Future[None] = loop.create_future()
        left = [len(items)]
        failed: list[int] = []

        def settle(err: int) -> None:
            if err != success:
                failed.append(err)
            left[0] -= 1
            if left[0] == 0 and not done.done():
                done.set_result(None)

        def callback(_result: Any, err: int) -> None:  # pysyncobj's tick thread
            loop.call_soon_threadsafe(settle, err)

        for item in items:  # the naive way: one replicated call per event
            log.append(item, callback=callback)
        try:
            await asyncio.wait_for(done, PSO_TIMEOUT)
        except TimeoutError:
            return {"err": "timeout"}
        return {"err": f"failed: {failed[0]}"} if failed else {"ok": len(items)}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_frame(reader)
                if request.get("op") == "status":
                    reply: dict[str, Any] = {"leader": bool(log._isLeader())}
                else:
                    reply = await append(list(request["items"]))
                writer.write(_frame(reply))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await stop.wait()


class PsoCluster:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(6)
        self.raft_ports, self.rpc_ports = ports[:3], ports[3:]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.leader_port = 0

    def start(self, timeout: float = 60.0) -> None:
        for i in range(3):
            with (self.workdir / f"n{i}.log").open("ab") as log:
                self.procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            __file__,
                            "_pso-node",
                            str(i),
                            str(self.workdir),
                            ",".join(map(str, self.raft_ports)),
                            str(self.rpc_ports[i]),
                        ],
                        stdout=log,
                        stderr=log,
                        stdin=subprocess.DEVNULL,
                    )
                )
        self.find_leader(timeout)

    def find_leader(self, timeout: float = 60.0) -> int:
        """The RPC port of the current leader (stock pysyncobj re-elects now and then under
        load: ask before every cell)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for port in self.rpc_ports:
                with contextlib.suppress(OSError, ValueError, TimeoutError):
                    if asyncio.run(_pso_call(port, {"op": "status"})).get("leader"):
                        self.leader_port = port
                        return port
            time.sleep(0.2)
        raise RuntimeError(f"pysyncobj has no leader after {timeout}s")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


async def _pso_call(port: int, request: dict[str, Any]) -> dict[str, Any]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    try:
        writer.write(_frame(request))
        reply: dict[str, Any] = await asyncio.wait_for(_read_frame(reader), 5)
        return reply
    finally:
        writer.close()


async def pso_append(
    port: int, *, clients: int, batch: int, duration: float, samples: list[float]
) -> tuple[int, int, float]:
    """Like `run_append`, against the pysyncobj front: (events, errors, seconds)."""
    item = os.urandom(EVENT_BYTES // 2).hex().encode()
    counts = [0, 0]

    async def worker(until: float, record: bool) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(1_000_000):
                if time.perf_counter() >= until:
                    return
                t0 = time.perf_counter()
                writer.write(_frame({"op": "append", "items": [item] * batch}))
                reply = await asyncio.wait_for(_read_frame(reader), PSO_TIMEOUT + 5)
                if "ok" not in reply:
                    counts[1] += 1
                    await asyncio.sleep(0.05)  # e.g. not the leader any more: no busy loop
                elif record:
                    samples.append(time.perf_counter() - t0)
                    counts[0] += batch
        finally:
            writer.close()

    await asyncio.gather(*(worker(time.perf_counter() + 0.3, False) for _ in range(clients)))
    start = time.perf_counter()
    await asyncio.gather(*(worker(start + duration, True) for _ in range(clients)))
    return counts[0], counts[1], time.perf_counter() - start


# --- load processes ----------------------------------------------------------------------------


def load_main(argv: list[str]) -> int:
    """`_load esdb|pso TARGET CLIENTS BATCH DURATION START_AT`: one load process; JSON out."""
    kind, target, clients, batch, duration, start_at = argv
    time.sleep(max(0.0, float(start_at) - time.time()))
    samples: list[float] = []
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    if kind == "esdb":
        r = asyncio.run(
            run_append(
                target,
                clients=int(clients),
                batch=int(batch),
                duration=float(duration),
                samples=samples,
            )
        )
        events, errors, elapsed = r.events, r.errors, r.duration_s
    else:
        events, errors, elapsed = asyncio.run(
            pso_append(
                int(target),
                clients=int(clients),
                batch=int(batch),
                duration=float(duration),
                samples=samples,
            )
        )
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    json.dump(
        {"events": events, "errors": errors, "elapsed": elapsed, "cpu_s": cpu, "lat": samples},
        sys.stdout,
    )
    return 0


@dataclass(frozen=True)
class Cell:
    events_per_s: float
    appends_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    loader_cpu: list[float]  # each load process's CPU use over the run, in % of one core

    def to_json(self) -> dict[str, Any]:
        return {
            "events_per_s": round(self.events_per_s, 1),
            "appends_per_s": round(self.appends_per_s, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "errors": self.errors,
            "loader_cpu_pct": [round(c) for c in self.loader_cpu],
        }


def measure(
    kind: str, target: str, clients: int, batch: int, duration: float, loaders: int
) -> Cell:
    n = max(1, min(loaders, clients))
    shares = [clients // n + (1 if i < clients % n else 0) for i in range(n)]
    start_at = time.time() + 1.5  # every loader imports and connects first, then all start
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "_load",
                kind,
                target,
                str(share),
                str(batch),
                str(duration),
                str(start_at),
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        for share in shares
    ]
    outs = []
    for proc in procs:
        try:
            stdout, _ = proc.communicate(timeout=duration + 120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"load process failed with {proc.returncode}")
        outs.append(json.loads(stdout))
    latencies = sorted(x for o in outs for x in o["lat"])
    elapsed = max(o["elapsed"] for o in outs)
    events = sum(o["events"] for o in outs)
    return Cell(
        events_per_s=events / elapsed,
        appends_per_s=len(latencies) / elapsed,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        errors=sum(o["errors"] for o in outs),
        loader_cpu=[100 * o["cpu_s"] / max(o["elapsed"], 1e-9) for o in outs],
    )


# --- failover ----------------------------------------------------------------------------------


def esdb_cluster(directory: Path, durability: str) -> LocalCluster:
    """A 3-node cluster as `esdb cluster up` makes it, on free ports."""
    return LocalCluster.create(
        directory, nodes=3, base_port=None, secret=None, store_id="bench", durability=durability
    )


def failovers(workdir: Path, trials: int) -> list[float]:
    from esdb_cli.chaos.faults import ChaosEnv, Kill, run_fault

    cluster = esdb_cluster(workdir / "failover", "fsync")
    out: list[float] = []
    try:
        cluster.start(60)
        cluster.wait_leader(60)
        env = ChaosEnv(cluster)
        env.wait_recovered(30, time.monotonic())  # a first append: the cluster serves
        for _ in range(trials):
            report = run_fault(env, Kill("leader"), recovery_timeout=30)
            if report.recovery_s is None:
                raise RuntimeError("no acknowledged append within 30 s of the leader kill")
            out.append(report.recovery_s)
            cluster.start_node(cluster.node(report.target))
            env.killed.clear()
            cluster.wait_leader(60)
            _wait_caught_up(cluster, 60)  # the next kill must not find a lagging majority
    finally:
        cluster.down(purge=True)
    return out


def _wait_caught_up(cluster: LocalCluster, timeout: float) -> None:
    from esdb_node.model import NodeStatus

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = [s for s in cluster.statuses() if isinstance(s, NodeStatus)]
        applied = {s.applied_index for s in statuses}
        if len(statuses) == len(cluster.nodes) and len(applied) == 1:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the cluster did not catch up within {timeout}s")


# --- the run -----------------------------------------------------------------------------------


def rate(cell: Cell) -> str:
    """Events/s, with the count of failed appends when there were any."""
    return f"{cell.events_per_s:,.0f}" + (f" ({cell.errors} failed)" if cell.errors else "")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        return load_main(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "_pso-node":
        index, workdir, raft_ports, rpc_port = sys.argv[2:]
        pso_node(int(index), Path(workdir), [int(p) for p in raft_ports.split(",")], int(rpc_port))
        return 0

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per cell")
    parser.add_argument("--batches", default="1,10,100")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--durability", default="fsync,os")
    parser.add_argument("--loaders", type=int, default=2, help="load processes (clients > 1)")
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--no-pysyncobj", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    clients = [int(c) for c in args.clients.split(",")]
    durabilities = args.durability.split(",")

    from esdb_node.config import NodeConfig
    from tests.harness import NodeProc

    tmp = Path(tempfile.mkdtemp(prefix="esdb-bench-cluster-"))
    started = datetime.now(UTC).isoformat(timespec="seconds")
    print(
        f"# esdb 3-node cluster vs single node vs naive pysyncobj; {EVENT_BYTES}-byte events, "
        f"{args.duration:g}s per cell, {os.cpu_count()} cores, {started}, "
        f"load average {os.getloadavg()[0]:.2f} (other processes share this machine)",
        flush=True,
    )
    results: dict[str, Any] = {"started": started, "args": vars(args) | {"json": str(args.json)}}
    pso_cells: dict[tuple[int, int], Cell] = {}
    pso = None
    try:
        if not args.no_pysyncobj:
            pso = PsoCluster(tmp / "pysyncobj")
            pso.start()
        for durability in durabilities:
            cluster = esdb_cluster(tmp / f"cluster-{durability}", durability)
            single = NodeProc(tmp / f"single-{durability}", NodeConfig(durability=durability))
            rows = []
            try:
                cluster.start(60)
                cluster.wait_leader(60)
                single.start()
                print(
                    f"\n## durability {durability}\n\n"
                    "| batch | clients | 3-node events/s | p50 ms | p99 ms | single events/s "
                    "| p50 ms | p99 ms | 3-node/single | pysyncobj events/s | p50 ms | p99 ms "
                    "| 3-node/pysyncobj | loader CPU % |\n"
                    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
                    flush=True,
                )
                for batch in batches:
                    for c in clients:
                        esdb3 = measure("esdb", cluster.urls, c, batch, args.duration, args.loaders)
                        one = measure("esdb", single.url, c, batch, args.duration, args.loaders)
                        key = (batch, c)
                        if pso is not None and key not in pso_cells:
                            port = str(pso.find_leader())
                            pso_cells[key] = measure(
                                "pso", port, c, batch, args.duration, args.loaders
                            )
                        base = pso_cells.get(key)
                        cpu = "/".join(f"{x:.0f}" for x in esdb3.loader_cpu)
                        print(
                            f"| {batch} | {c} | {rate(esdb3)} | {esdb3.p50_ms:.2f} "
                            f"| {esdb3.p99_ms:.2f} | {rate(one)} | {one.p50_ms:.2f} "
                            f"| {one.p99_ms:.2f} | {ratio(esdb3.events_per_s, one.events_per_s)} "
                            + (
                                f"| {rate(base)} | {base.p50_ms:.1f} "
                                f"| {base.p99_ms:.1f} "
                                f"| {ratio(esdb3.events_per_s, base.events_per_s)} "
                                if base
                                else "| - | - | - | - "
                            )
                            + f"| {cpu} |",
                            flush=True,
                        )
                        rows.append(
                            {
                                "batch": batch,
                                "clients": c,
                                "cluster": esdb3.to_json(),
                                "single": one.to_json(),
                                "pysyncobj": base.to_json() if base else None,
                            }
                        )
            finally:
                cluster.down(purge=True)
                single.stop()
            results[durability] = rows
    finally:
        if pso is not None:
            pso.stop()

    try:
        times = failovers(tmp, args.failovers) if args.failovers else []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if times:
        ordered = sorted(times)
        each = ", ".join(f"{t:.2f}" for t in times)
        print(
            f"\nleader kill -> next acknowledged append ({len(times)} kills, default election "
            f"timeouts 1-2 s): median {ordered[len(ordered) // 2]:.2f}s, "
            f"min {ordered[0]:.2f}s, max {ordered[-1]:.2f}s ({each})"
        )
    results["failover_s"] = times
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
