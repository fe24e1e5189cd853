"""Faults on a local cluster: kill, pause/resume, restart, partition (through the nodes' Raft
transport hook, no root needed), slow disk, shifted clock, full disk, and heal. Each fault is
bracketed by health checks and produces a `FaultReport`: what, whom, when, leader
before/after, time to recover.

The same `Fault` objects are used by `esdb chaos ...`, the drills and the cluster tests.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from esdb_cli import local, loopfs
from esdb_cli.chaos import disk, shims
from esdb_cli.local import is_stopped
from esdb_cli.localcluster import LocalCluster, LocalNode
from esdb_node.client import Client
from esdb_node.errors import EsdbError, InvalidInput, NotFound, Unavailable
from esdb_node.model import EventData, NodeStatus

PROBE_STREAM = "chaos-probe"


@dataclass(frozen=True, slots=True)
class Health:
    reachable: tuple[str, ...]
    leader: str | None
    term: int | None

    @property
    def summary(self) -> str:
        return f"leader {self.leader or 'none'}, reachable {','.join(self.reachable) or 'none'}"


@dataclass(frozen=True, slots=True)
class FaultReport:
    action: str
    target: str
    at: str  # ISO-8601 UTC
    t_ns: int  # time.monotonic_ns() when the injection started (for histories)
    leader_before: str | None
    leader_after: str | None
    recovery_s: float | None  # until an append invoked after the fault was acknowledged
    health_before: str
    health_after: str
    detail: str = ""
    # When the fault was fully in effect (every node partitioned, the process gone): an
    # append invoked before this may succeed without proving anything about recovery.
    in_force_ns: int = 0
    # The most members that still run and reach each other, of how many: without a
    # majority no leader can be elected until the fault is healed.
    together: int = 0
    members: int = 0

    @property
    def majority(self) -> bool:
        return self.together * 2 > self.members

    @property
    def summary(self) -> str:
        """One line for people: what was done to whom, and whether writes recovered."""
        if not self.majority:
            recovered = (
                f"no majority left ({self.together} of {self.members} members run and reach "
                "each other): no leader can be elected until healed (`esdb chaos heal`)"
            )
        elif self.recovery_s is not None:
            recovered = f"recovered in {self.recovery_s:.2f}s"
        else:
            recovered = "no acknowledged write yet"
        return f"{self.action} {self.target}: {self.detail}; {recovered}"

    def row(self) -> dict[str, object]:
        return {
            "action": self.action,
            "target": self.target,
            "at": self.at,
            "leader_before": self.leader_before,
            "leader_after": self.leader_after,
            "recovery_s": self.recovery_s,
            "health_before": self.health_before,
            "health_after": self.health_after,
            "detail": self.detail,
            "majority": self.majority,
        }


class Network(Protocol):
    """Cuts links outside the nodes (e.g. `netns.SwitchPorts`); without one, partitions go
    through each node's Raft transport hook."""

    def partition(self, sides: Sequence[Sequence[str]], one_way: bool) -> str: ...

    def heal(self) -> str: ...


class Fault(Protocol):
    @property
    def action(self) -> str:
        """What the report calls it (`kill`, `partition`, ...)."""
        ...

    def target(self, env: ChaosEnv) -> str:
        """Resolve whom the fault hits (e.g. the current leader); called once, first."""
        ...

    def inject(self, env: ChaosEnv, target: str) -> str:
        """Do it; return a one-line detail."""
        ...


@dataclass
class ChaosEnv:
    cluster: LocalCluster
    rng: random.Random = field(default_factory=random.Random)
    paused: set[str] = field(default_factory=set)
    killed: set[str] = field(default_factory=set)
    network: Network | None = None

    def client(self, timeout: float = 2.0) -> Client:
        return Client(self.cluster.urls, timeout=timeout, connect_timeout=0.5)

    def health(self) -> Health:
        statuses = [s for s in self.cluster.statuses(timeout=1.0) if isinstance(s, NodeStatus)]
        leaders = [s for s in statuses if s.role == "leader"]
        best = max(leaders, key=lambda s: s.term, default=None)
        return Health(
            reachable=tuple(sorted(s.node_id for s in statuses)),
            leader=best.node_id if best else None,
            term=best.term if best else None,
        )

    def node(self, name: str) -> LocalNode:
        return self.cluster.node(name)

    def pick(self, spec: str) -> LocalNode:
        """`leader`, `follower`, `random`, or a node id."""
        if spec in ("leader", "follower"):
            health = self.health()
            if health.leader is None:
                raise Unavailable("there is no leader to pick right now")
            if spec == "leader":
                return self.node(health.leader)
            followers = [
                n for n in self.cluster.nodes if n.id != health.leader and n.id not in self.killed
            ]
            if not followers:
                raise NotFound("no follower is running")
            return self.rng.choice(followers)
        if spec == "random":
            alive = [n for n in self.cluster.nodes if n.id not in self.killed]
            return self.rng.choice(alive)
        return self.node(spec)

    def pid(self, node: LocalNode) -> int:
        pid = self.cluster.running_pid(node)
        if pid is None:
            raise NotFound(f"{node.id} is not running")
        return pid

    def admin_fault(self, node: LocalNode, drop_in: set[str], drop_out: set[str]) -> None:
        with Client(node.url, timeout=3.0, connect_timeout=0.5) as client:
            client.fault(
                node.url,
                self.cluster.secret,
                drop_in=sorted(drop_in),
                drop_out=sorted(drop_out),
                timeout=3.0,
            )

    def wait_recovered(self, timeout: float, since: float) -> float | None:
        """Seconds from `since` until a probe append (invoked after `since`) is acknowledged."""
        deadline = time.monotonic() + timeout
        with self.client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                try:
                    client.append(PROBE_STREAM, EventData.from_json("Probe", {"t": time.time()}))
                    return round(time.monotonic() - since, 3)
                except EsdbError:
                    time.sleep(0.05)
        return None


# --- the faults -------------------------------------------------------------------------------


@dataclass
class Kill:
    spec: str
    sig: int = signal.SIGKILL
    action: str = "kill"

    def target(self, env: ChaosEnv) -> str:
        return env.pick(self.spec).id

    def inject(self, env: ChaosEnv, target: str) -> str:
        node = env.node(target)
        pid = env.pid(node)
        if self.sig == signal.SIGKILL:  # gone before the report says so
            local.stop_pid(pid, timeout=10.0, force=False, sig=signal.SIGKILL)
        else:
            os.kill(pid, self.sig)
        env.killed.add(node.id)
        return f"{signal.Signals(self.sig).name} pid {pid}"


@dataclass
class Pause:
    spec: str
    action: str = "pause"

    def target(self, env: ChaosEnv) -> str:
        return env.pick(self.spec).id

    def inject(self, env: ChaosEnv, target: str) -> str:
        pid = env.pid(env.node(target))
        os.kill(pid, signal.SIGSTOP)
        env.paused.add(target)
        return f"SIGSTOP pid {pid}"


@dataclass
class Resume:
    spec: str
    action: str = "resume"

    def target(self, env: ChaosEnv) -> str:
        return env.node(self.spec).id

    def inject(self, env: ChaosEnv, target: str) -> str:
        pid = env.pid(env.node(target))
        os.kill(pid, signal.SIGCONT)
        env.paused.discard(target)
        return f"SIGCONT pid {pid}"


@dataclass
class Restart:
    spec: str
    graceful: bool = True
    action: str = "restart"
    in_force_ns: int | None = None

    def target(self, env: ChaosEnv) -> str:
        return env.pick(self.spec).id

    def inject(self, env: ChaosEnv, target: str) -> str:
        detail, self.in_force_ns = restart(env, target, graceful=self.graceful)
        return detail


@dataclass
class StepDown:
    """Make the leader hand leadership over: to `to` (a node id), or to the most caught-up
    member. Not a crash: the leader stays up, so recovery is one election's worth."""

    to: str | None = None
    action: str = "stepdown"

    def target(self, env: ChaosEnv) -> str:
        return env.pick("leader").id

    def inject(self, env: ChaosEnv, target: str) -> str:
        if self.to is not None and env.node(self.to).id == target:
            raise InvalidInput(f"{target} already leads")
        with env.client(timeout=10.0) as client:
            reply = client.stepdown(env.cluster.secret, to=self.to, timeout=10.0)
        new = next((n.id for n in env.cluster.nodes if n.raft == reply.new_leader), None)
        return f"handed leadership to {new or reply.new_leader or 'nobody yet (an election runs)'}"


def restart(
    env: ChaosEnv,
    target: str,
    *,
    graceful: bool = True,
    change: Callable[[LocalNode], LocalNode] | None = None,
    stop_timeout: float = 20.0,
) -> tuple[str, int]:
    """Stop `target` (resumed first if paused; SIGTERM, SIGKILL after `stop_timeout`, or
    SIGKILL at once unless `graceful`), apply `change` to the stopped node (it saves what it
    changed), start it. Returns the detail and when the node went down."""
    node = env.node(target)
    pid = env.cluster.running_pid(node)
    if pid is not None:
        if target in env.paused or is_stopped(pid):
            os.kill(pid, signal.SIGCONT)
            env.paused.discard(target)
        env.cluster.stop_node(node, timeout=stop_timeout if graceful else 0.0, force=True)
    down_ns = time.monotonic_ns()  # down now; writes must not wait for the start
    if change is not None:
        try:
            node = change(node)
        except BaseException:
            with contextlib.suppress(EsdbError):  # back up as it was; the error says why
                env.cluster.start_node(env.node(target))
            raise
    env.cluster.start_node(node)
    env.killed.discard(target)
    return (f"{'SIGTERM' if graceful else 'SIGKILL'} + start" if pid else "start"), down_ns


@dataclass
class SlowDisk:
    """Restart the node with every fsync, fdatasync and msync delayed by `delay_ms`."""

    spec: str
    delay_ms: float = 100.0
    action: str = "slow-disk"
    in_force_ns: int | None = None

    def target(self, env: ChaosEnv) -> str:
        shims.require("slow-disk")
        return env.pick(self.spec).id

    def inject(self, env: ChaosEnv, target: str) -> str:
        delay = {shims.FSYNC_DELAY: str(round(self.delay_ms * 1000))}
        detail, self.in_force_ns = _restart_under(env, target, delay)
        return detail


@dataclass
class ClockSkew:
    """Restart the node with its wall clock `offset_s` seconds off (libfaketime); monotonic
    clocks, which Raft's timers use, stay true."""

    spec: str
    offset_s: float
    action: str = "clock"
    in_force_ns: int | None = None

    def target(self, env: ChaosEnv) -> str:
        shims.require("clock")
        return env.pick(self.spec).id

    def inject(self, env: ChaosEnv, target: str) -> str:
        skew = {shims.FAKETIME: shims.format_offset(self.offset_s)}
        detail, self.in_force_ns = _restart_under(env, target, skew)
        return detail


def _restart_under(env: ChaosEnv, target: str, faults: dict[str, str]) -> tuple[str, int]:
    """Restart `target` with `faults` added to those it already runs under; check the
    process really loaded its shims."""

    # Built (gcc) before the node stops: a build error leaves it running as it was.
    launch = shims.launch_env({**shims.faults_of(env.node(target).env), **faults})

    def change(node: LocalNode) -> LocalNode:
        return env.cluster.replace_node(replace(node, env=launch))

    how, down_ns = restart(env, target, change=change)
    node = env.node(target)
    missing = shims.missing_preloads(env.pid(node), node.env)
    if missing:
        raise shims.ShimError(
            f"{target} started without {', '.join(missing)}",
            hint=f"see {node.data_dir}/esdb.log for the loader's message",
        )
    return f"{shims.describe(node.env)} (LD_PRELOAD); {how}", down_ns


@dataclass
class DiskFull:
    """Fill the node's disk: on first use its data moves onto a `size_mib` MiB ext4 image
    mounted at the same path (a restart); a filler file then takes every free block."""

    spec: str
    size_mib: int = 64
    action: str = "disk-full"
    in_force_ns: int | None = None

    def target(self, env: ChaosEnv) -> str:
        loopfs.require("chaos disk-full")
        return env.pick(self.spec).id

    def inject(self, env: ChaosEnv, target: str) -> str:
        how = ""
        if env.node(target).disk_image is None:
            size = self.size_mib
            disk.check_fits(env.node(target), size)  # before the node stops
            how, _ = restart(
                env, target, change=lambda n: disk.move_onto_image(env.cluster, n, size)
            )
            how = f"; moved onto a {size} MiB ext4 image ({how})"
        node = env.node(target)
        filled = disk.fill(node)
        self.in_force_ns = time.monotonic_ns()
        return f"filler took {filled / 2**20:.1f} MiB, {disk.free_bytes(node)} bytes free{how}"


@dataclass
class DiskFree:
    """Delete the filler of `disk-full` (the data stays on its image until `heal`); start
    the node if it exited meanwhile."""

    spec: str
    action: str = "disk-free"

    def target(self, env: ChaosEnv) -> str:
        return env.node(self.spec).id

    def inject(self, env: ChaosEnv, target: str) -> str:
        node = env.node(target)
        detail = f"filler of {disk.free(node) / 2**20:.1f} MiB deleted"
        if env.cluster.running_pid(node) is None:
            env.cluster.start_node(node)
            env.killed.discard(target)
            detail += f"; started {target}"
        return detail


@dataclass
class Restore:
    """Undo `slow-disk`, `clock` and `disk-full` on one node: restart it with the plain
    environment, its data moved back off its image (the image deleted)."""

    spec: str
    graceful: bool = True
    action: str = "restore"

    def target(self, env: ChaosEnv) -> str:
        return env.node(self.spec).id

    def inject(self, env: ChaosEnv, target: str) -> str:
        return _restore(env, target, graceful=self.graceful)


def _restore(env: ChaosEnv, target: str, *, graceful: bool = True) -> str:
    node = env.node(target)
    undone = [shims.describe(node.env)] if node.env else []
    if node.disk_image:
        disk.free(node)  # space first: the node may be writing until it stops
        undone.append("disk image")

    def change(n: LocalNode) -> LocalNode:
        n = disk.move_off_image(env.cluster, n)
        return env.cluster.replace_node(replace(n, env={}))

    # A node whose fsyncs crawl drains its backlog for 10 s and more on SIGTERM: bounded.
    how, _ = restart(env, target, graceful=graceful, change=change, stop_timeout=5.0)
    return f"restored {target} ({'; '.join(undone) or 'nothing to undo'}: {how})"


@dataclass
class Partition:
    """Split the cluster into `sides` (lists of node ids). Nodes not named form one more side.

    `one_way`: only traffic from side 0 to side 1 is dropped (side 1 can still reach side 0).
    """

    sides: list[list[str]]
    one_way: bool = False
    action: str = "partition"

    def target(self, env: ChaosEnv) -> str:
        resolved = [[env.pick(n).id for n in side] for side in self.sides]
        named = {n for side in resolved for n in side}
        rest = [n.id for n in env.cluster.nodes if n.id not in named]
        if rest and not self.one_way:
            resolved.append(rest)
        if len(resolved) < 2:
            raise InvalidInput("a partition needs at least two sides")
        self.sides = resolved
        return " | ".join(",".join(side) for side in resolved)

    def inject(self, env: ChaosEnv, target: str) -> str:
        if env.network is not None:
            return env.network.partition(self.sides, self.one_way)
        side_of = {n: i for i, side in enumerate(self.sides) for n in side}
        failed = []
        for node in env.cluster.nodes:
            mine = side_of.get(node.id)
            if mine is None:
                continue
            others = {env.node(n).raft for n, side in side_of.items() if side != mine}
            if self.one_way:
                drop_in = {env.node(n).raft for n in self.sides[0]} if mine == 1 else set()
                drop_out = {env.node(n).raft for n in self.sides[1]} if mine == 0 else set()
            else:
                drop_in = drop_out = others
            try:
                env.admin_fault(node, drop_in, drop_out)
            except EsdbError as exc:
                failed.append(f"{node.id}: {exc}")
        kind = "one-way" if self.one_way else "two-way"
        return f"{kind} raft partition" + (
            f" (not applied on {'; '.join(failed)})" if failed else ""
        )


@dataclass
class Heal:
    """Undo slow disks, shifted clocks and full disks (`Restore` on each such node), clear
    every partition, resume paused nodes and start killed ones."""

    restart_killed: bool = True
    action: str = "heal"

    def target(self, env: ChaosEnv) -> str:
        return "all"

    def inject(self, env: ChaosEnv, target: str) -> str:
        done, failed = [], []
        for faulty in [n for n in env.cluster.nodes if n.env or n.disk_image]:
            try:
                done.append(_restore(env, faulty.id))
            except EsdbError as exc:  # heal the rest; say what is left afterwards
                failed.append(f"{faulty.id}: {exc}")
        for node in env.cluster.nodes:
            pid = env.cluster.running_pid(node)
            # `env.paused` only knows this process's own pauses; `esdb chaos pause` ran in
            # another one, so ask the kernel which nodes are stopped.
            if pid is not None and (node.id in env.paused or is_stopped(pid)):
                os.kill(pid, signal.SIGCONT)
                done.append(f"resumed {node.id}")
        env.paused.clear()
        if self.restart_killed:
            for node in env.cluster.nodes:
                if env.cluster.running_pid(node) is None:
                    env.cluster.start_node(node)
                    done.append(f"started {node.id}")
            env.killed.clear()
        if env.network is not None:
            plugged = env.network.heal()
            if plugged:
                done.append(plugged)
        else:
            for node in env.cluster.nodes:
                # an unreachable node has no partition state worth clearing
                with contextlib.suppress(EsdbError):
                    env.admin_fault(node, set(), set())
        if failed:
            raise EsdbError(
                f"heal could not restore {'; '.join(failed)}",
                hint="everything else was healed; fix the cause and run heal again",
            )
        return "; ".join(done) or "partitions cleared"


def run_fault(
    env: ChaosEnv, fault: Fault, *, recovery_timeout: float = 20.0, measure: bool = True
) -> FaultReport:
    """Health check, inject, wait for recovery, health check; returns the report."""
    before = env.health()
    target = fault.target(env)
    t_ns = time.monotonic_ns()
    at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    detail = fault.inject(env, target)
    # A fault may say it was in effect before inject returned (a restart: from the stop);
    # otherwise it is from now on.
    in_force = getattr(fault, "in_force_ns", None) or time.monotonic_ns()
    since = t_ns / 1e9
    together, members = largest_group(env, fault)
    # Without a majority nothing can recover until healed: say so now, not after the wait.
    waits = measure and together * 2 > members
    recovery = env.wait_recovered(recovery_timeout, since) if waits else None
    after = env.health()
    return FaultReport(
        action=fault.action,
        target=target,
        at=at,
        t_ns=t_ns,
        leader_before=before.leader,
        leader_after=after.leader,
        recovery_s=recovery,
        health_before=before.summary,
        health_after=after.summary,
        detail=detail,
        in_force_ns=in_force,
        together=together,
        members=members,
    )


def largest_group(env: ChaosEnv, fault: Fault) -> tuple[int, int]:
    """(the most members that run, are not paused and can reach each other; all members)."""
    running = set()
    for node in env.cluster.nodes:
        pid = env.cluster.running_pid(node)
        if pid is not None and not is_stopped(pid):
            running.add(node.id)
    groups = [running]
    if isinstance(fault, Partition) and not fault.one_way:
        groups = [set(side) & running for side in fault.sides]
    return max((len(g) for g in groups), default=0), len(env.cluster.nodes)
