"""Chaos drills: concurrent clients against a local cluster while a seeded schedule injects
faults; then heal, converge, read every stream from every node, and check the history.

Clients append with expected versions (retrying unknown outcomes with the same event ids) and
read with leader (linearizable) or local consistency. Every operation is recorded with
`time.monotonic_ns()` of this one process, so real-time order is exact. The checker
(`esdb_cli.chaos.checker`) judges the history; the drill is clean only when it finds nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from esdb_cli import loopfs
from esdb_cli.chaos import history as h
from esdb_cli.chaos import netns as nx
from esdb_cli.chaos import shims
from esdb_cli.chaos.checker import CheckReport, check
from esdb_cli.chaos.faults import (
    ChaosEnv,
    ClockSkew,
    DiskFree,
    DiskFull,
    Fault,
    FaultReport,
    Heal,
    Kill,
    Partition,
    Pause,
    Restart,
    Restore,
    Resume,
    SlowDisk,
    run_fault,
)
from esdb_node.client import AsyncClient, Client
from esdb_node.errors import (
    EsdbError,
    StreamNotFound,
    UnknownOutcome,
    WrongExpectedVersion,
)
from esdb_node.model import EventData, NodeStatus

SCENARIOS = (
    "leader-kill",
    "follower-kill",
    "pause",
    "partition",
    "flapping",
    "rolling-restart",
    "random",
    "one-way",
    "slow-disk",
    "clock-skew",
    "disk-full",
)
MAX_OPS_PER_CLIENT = 50_000
OP_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class DrillOptions:
    scenario: str
    duration: float = 30.0
    clients: int = 4
    seed: int = 1
    streams: int = 4
    read_ratio: float = 0.3
    max_batch: int = 3
    warmup: float = 2.0
    # Names this run's streams and salts its event ids. Every drill on a cluster needs its
    # own: the checker flags events it did not see appended (`unexpected`) and, with the
    # same seed, ids of an earlier run would collide with this one's.
    run: str = ""

    @property
    def stream_names(self) -> list[str]:
        return [f"drill-{self.run}-{i}" if self.run else f"drill-{i}" for i in range(self.streams)]

    @property
    def id_salt(self) -> int:
        return int.from_bytes(hashlib.sha256(self.run.encode()).digest()[:16], "big")


@dataclass
class DrillResult:
    options: DrillOptions
    report: CheckReport
    faults: list[FaultReport]
    records: list[h.Record]
    converge_s: float


@dataclass
class _Recorder:
    records: list[h.Record] = field(default_factory=list)
    next_op: int = 0

    def op_id(self) -> int:
        self.next_op += 1
        return self.next_op


# --- fault schedules --------------------------------------------------------------------------


def schedule(scenario: str, rng: random.Random, env: ChaosEnv) -> Iterator[tuple[Fault, float]]:
    """Yield (fault, hold seconds) forever; the drill stops asking when time is up.

    The drill runs each fault before it asks for the next one, so a step can undo an earlier
    one on the node that `_Remember` noted; when the drill skipped that fault (its target
    could not be chosen, e.g. no leader mid-election) there is nothing to undo.
    """
    kinds = ["leader-kill", "follower-kill", "pause", "partition", "flapping"]
    while True:
        kind = rng.choice(kinds) if scenario == "random" else scenario
        if kind == "leader-kill":
            victim: list[str] = []
            yield _Remember(Kill("leader"), victim), rng.uniform(2.0, 4.0)
            if victim:  # empty when the kill was skipped (no leader to choose)
                yield Restart(victim[0], graceful=False), rng.uniform(2.0, 3.0)
        elif kind == "follower-kill":
            victim = []
            yield _Remember(Kill("follower"), victim), rng.uniform(2.0, 4.0)
            if victim:
                yield Restart(victim[0], graceful=False), rng.uniform(1.5, 3.0)
        elif kind == "pause":
            victim = []
            spec = "leader" if rng.random() < 0.7 else "follower"
            yield _Remember(Pause(spec), victim), rng.uniform(3.0, 5.0)
            if victim:
                yield Resume(victim[0]), rng.uniform(2.0, 3.0)
        elif kind == "partition":
            spec = "leader" if rng.random() < 0.7 else "follower"
            yield Partition([[spec]]), rng.uniform(3.0, 5.0)
            yield Heal(), rng.uniform(2.0, 3.0)
        elif kind == "flapping":
            for _ in range(4):
                yield Partition([["random"]]), rng.uniform(0.5, 1.5)
                yield Heal(), rng.uniform(0.5, 1.5)
        elif kind == "rolling-restart":
            for node in list(env.cluster.nodes):
                yield Restart(node.id, graceful=True), rng.uniform(1.5, 2.5)
        elif kind == "one-way":
            sides = [["leader"], ["follower"]]
            yield (
                Partition(sides if rng.random() < 0.5 else sides[::-1], one_way=True),
                (rng.uniform(3.0, 5.0)),
            )
            yield Heal(), rng.uniform(2.0, 3.0)
        elif kind == "slow-disk":
            victim = []
            spec = "leader" if rng.random() < 0.7 else "follower"
            delay = rng.choice([20.0, 50.0, 100.0, 200.0])
            yield _Remember(SlowDisk(spec, delay_ms=delay), victim), rng.uniform(3.0, 5.0)
            if victim:
                # Killed, not stopped: a node whose fsyncs crawl takes ~10 s to drain and
                # stop on SIGTERM, longer than a drill's whole hold.
                yield Restore(victim[0], graceful=False), rng.uniform(2.0, 3.0)
        elif kind == "clock-skew":
            victim = []
            spec = "leader" if rng.random() < 0.5 else "follower"
            offset = rng.choice([-1, 1]) * rng.choice([90.0, 1800.0, 7200.0, 86400.0])
            yield _Remember(ClockSkew(spec, offset), victim), rng.uniform(3.0, 5.0)
            if victim:
                yield Restore(victim[0]), rng.uniform(2.0, 3.0)
        elif kind == "disk-full":
            victim = []
            spec = "leader" if rng.random() < 0.5 else "follower"
            yield _Remember(DiskFull(spec, size_mib=32), victim), rng.uniform(3.0, 5.0)
            if victim:  # space back; the data stays on its image until the final heal
                yield DiskFree(victim[0]), rng.uniform(2.0, 3.0)
        else:
            raise ValueError(f"unknown scenario {scenario!r}")


def unavailable_reason(scenario: str, *, netns: bool = False) -> str | None:
    """Why `scenario` cannot run on this machine (None: it can); `netns`: with --netns."""
    if scenario == "one-way" and netns:
        return nx.nft_unavailable_reason()
    if scenario == "disk-full":
        return loopfs.unavailable_reason()
    if scenario == "slow-disk":
        return shims.unavailable_reason("slow-disk")
    if scenario == "clock-skew":
        return shims.unavailable_reason("clock")
    return None


@dataclass
class _Remember:
    """Run `fault` and remember whom it hit (so a later step can undo it on the same node)."""

    fault: Fault
    into: list[str]

    @property
    def action(self) -> str:
        return self.fault.action

    def target(self, env: ChaosEnv) -> str:
        who = self.fault.target(env)
        self.into.append(who)
        return who

    def inject(self, env: ChaosEnv, target: str) -> str:
        return self.fault.inject(env, target)

    @property
    def in_force_ns(self) -> int | None:
        return getattr(self.fault, "in_force_ns", None)


# --- the workload ------------------------------------------------------------------------------


def _event_id(rng: random.Random, salt: int) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128) ^ salt, version=4)


async def _client(
    k: int, opts: DrillOptions, env: ChaosEnv, rec: _Recorder, stop_at: float
) -> None:
    rng = random.Random(opts.seed * 7919 + k)
    streams = opts.stream_names
    known = dict.fromkeys(streams, -1)
    urls = env.cluster.urls
    leader_client = AsyncClient(urls, timeout=OP_TIMEOUT, connect_timeout=0.5)
    local = {
        n.id: AsyncClient(n.url, timeout=OP_TIMEOUT, connect_timeout=0.5, consistency="local")
        for n in env.cluster.nodes
    }
    try:
        for _ in range(MAX_OPS_PER_CLIENT):
            if time.monotonic() >= stop_at:
                return
            stream = rng.choice(streams)
            if rng.random() < opts.read_ratio:
                await _read(k, stream, rng, leader_client, local, known, rec)
            else:
                await _append(k, stream, rng, opts, leader_client, known, rec)
            await asyncio.sleep(rng.uniform(0, 0.005))
    finally:
        await leader_client.close()
        for c in local.values():
            await c.close()


async def _append(
    k: int,
    stream: str,
    rng: random.Random,
    opts: DrillOptions,
    client: AsyncClient,
    known: dict[str, int],
    rec: _Recorder,
) -> None:
    ids = [_event_id(rng, opts.id_salt) for _ in range(rng.randint(1, opts.max_batch))]
    roll = rng.random()
    expected: Any
    if roll < 0.4:
        expected = known[stream] if known[stream] >= 0 else "no-stream"
    elif roll < 0.5:
        expected = "no-stream"
    elif roll < 0.6:
        expected = "exists"
    else:
        expected = "any"
    events = [EventData("DrillEvent", b'{"p":%d}' % k, id=i) for i in ids]
    for _attempt in range(3):  # an unknown outcome is retried with the same ids
        t0 = time.monotonic_ns()
        fields: dict[str, Any] = {}
        kind: h.OpType
        try:
            result = await client.append(stream, events, expected_version=expected)
            kind = "ok"
            fields = {"first": result.first_version, "position": result.position}
            known[stream] = max(known[stream], result.last_version)
        except WrongExpectedVersion as exc:
            kind = "fail"
            fields = {"error": exc.code, "actual": exc.actual}
            known[stream] = exc.actual
        except UnknownOutcome as exc:
            kind = "info"
            fields = {"error": exc.code}
        except EsdbError as exc:  # refused before it could apply: unavailable, not leader
            kind = "fail"
            fields = {"error": exc.code}
        rec.records.append(
            h.Append(
                op=rec.op_id(),
                proc=k,
                stream=stream,
                node="any",
                t0=t0,
                t1=time.monotonic_ns(),
                expected=expected,
                events=tuple(str(i) for i in ids),
                type=kind,
                first=fields.get("first"),
                position=fields.get("position"),
                error=fields.get("error"),
                actual=fields.get("actual"),
            )
        )
        if kind != "info":
            return


async def _read(
    k: int,
    stream: str,
    rng: random.Random,
    leader_client: AsyncClient,
    local: dict[str, AsyncClient],
    known: dict[str, int],
    rec: _Recorder,
) -> None:
    linearizable = rng.random() < 0.5
    node = "leader" if linearizable else rng.choice(sorted(local))
    client = leader_client if linearizable else local[node]
    t0 = time.monotonic_ns()
    result: tuple[h.Entry, ...] = ()
    kind: h.OpType
    try:
        events = await client.read_stream(stream, consistency="leader" if linearizable else "local")
        result = tuple((e.version, str(e.id)) for e in events)
        kind = "ok"
    except StreamNotFound:
        kind = "ok"
    except UnknownOutcome:
        kind = "info"
    except EsdbError:
        kind = "fail"
    if kind == "ok" and linearizable and result:
        known[stream] = max(known[stream], result[-1][0])
    rec.records.append(
        h.Read(
            op=rec.op_id(),
            proc=k,
            stream=stream,
            node=node,
            t0=t0,
            t1=time.monotonic_ns(),
            from_=0,
            linearizable=linearizable,
            type=kind,
            result=result,
        )
    )


# --- the drill ----------------------------------------------------------------------------------


async def _faults(
    env: ChaosEnv,
    opts: DrillOptions,
    stop_at: float,
    reports: list[FaultReport],
    log: Callable[[str], None],
) -> None:
    loop = asyncio.get_running_loop()

    def inject(fault: Fault) -> FaultReport:
        return run_fault(env, fault, measure=False)

    rng = random.Random(opts.seed)
    env.rng = random.Random(opts.seed + 1)
    await asyncio.sleep(opts.warmup)
    for fault, hold in schedule(opts.scenario, rng, env):
        if time.monotonic() >= stop_at:
            return
        try:
            report = await loop.run_in_executor(None, inject, fault)
        except EsdbError as exc:
            log(f"fault {fault.action} skipped: {exc}")
            await asyncio.sleep(0.5)
            continue
        reports.append(report)
        log(
            f"{report.at} {report.action} {report.target}: {report.detail} "
            f"(leader before {report.leader_before})"
        )
        await asyncio.sleep(min(hold, max(stop_at - time.monotonic(), 0)))


def _converge(env: ChaosEnv, stream: str, timeout: float = 60.0) -> float:
    """Heal everything, then wait until every node is up, agrees on the leader and has
    applied the same log. Returns the seconds it took."""
    start = time.monotonic()
    run_fault(env, Heal(), measure=False)
    leader = env.cluster.wait_leader(timeout)
    deadline = start + timeout
    with env.client(timeout=5.0) as client:
        if _exists(client, stream):
            # a leader barrier: everything acknowledged is committed before we compare nodes
            client.read_stream(stream, consistency="leader")
    while time.monotonic() < deadline:
        statuses = env.cluster.statuses(timeout=2.0)
        ok = [s for s in statuses if isinstance(s, NodeStatus)]
        if len(ok) == len(env.cluster.nodes):
            heads = {s.last_position for s in ok}
            if len(heads) == 1 and all(s.leader_id == leader.node_id for s in ok):
                return round(time.monotonic() - start, 3)
        time.sleep(0.1)
    raise EsdbError(f"the cluster did not converge within {timeout:g}s after healing")


def _exists(client: Client, stream: str) -> bool:
    try:
        client.stream_info(stream)
        return True
    except EsdbError:
        return False


def _finals(env: ChaosEnv, opts: DrillOptions) -> list[h.Final]:
    out: list[h.Final] = []
    for node in env.cluster.nodes:
        with Client(node.url, timeout=10.0, consistency="local") as client:
            for stream in opts.stream_names:
                try:
                    events = client.read_stream(stream, consistency="local")
                except StreamNotFound:
                    events = []
                out.append(
                    h.Final(
                        stream=stream,
                        node=node.id,
                        result=tuple((e.version, str(e.id)) for e in events),
                    )
                )
    return out


def _failover(records: list[h.Record], reports: list[FaultReport]) -> list[h.Fault]:
    """Recovery of each fault: from the start of its injection to the first acknowledged
    append invoked once it was in force (an append that slipped in while a partition was
    still being set up proves nothing)."""
    acks = sorted((r.t0, r.t1) for r in records if isinstance(r, h.Append) and r.type == "ok")
    out = []
    for rep in reports:
        after = [t1 for t0, t1 in acks if t0 >= (rep.in_force_ns or rep.t_ns)]
        recovery = round((min(after) - rep.t_ns) / 1e9, 3) if after else None
        out.append(
            h.Fault(
                t=rep.t_ns,
                action=rep.action,
                target=rep.target,
                leader_before=rep.leader_before,
                leader_after=rep.leader_after,
                recovery_s=recovery if rep.action not in ("heal", "resume", "disk-free") else None,
            )
        )
    return out


def run_drill(
    env: ChaosEnv, opts: DrillOptions, *, log: Callable[[str], None] = lambda _m: None
) -> DrillResult:
    if opts.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {opts.scenario!r}")
    if not opts.run:
        opts = replace(opts, run=secrets.token_hex(3))
    rec = _Recorder()
    reports: list[FaultReport] = []
    env.cluster.wait_leader(60)

    async def main() -> None:
        stop_at = time.monotonic() + opts.duration
        await asyncio.gather(
            _faults(env, opts, stop_at, reports, log),
            *(_client(k, opts, env, rec, stop_at) for k in range(opts.clients)),
        )

    asyncio.run(main())
    log("healing and waiting for the nodes to converge")
    converge_s = _converge(env, opts.stream_names[0])
    finals = _finals(env, opts)
    meta = h.Meta(
        scenario=opts.scenario,
        seed=opts.seed,
        nodes=tuple(n.id for n in env.cluster.nodes),
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        extra={
            "clients": opts.clients,
            "duration_s": opts.duration,
            "streams": opts.streams,
            "run": opts.run,
            "converge_s": converge_s,
        },
    )
    records: list[h.Record] = [meta, *rec.records, *_failover(rec.records, reports), *finals]
    return DrillResult(opts, check(records), reports, records, converge_s)


def write_history(result: DrillResult, path: Path) -> None:
    h.write_history(result.records, path)
