"""The dashboard's chaos keys: which fault a key means for the selected member, the question
that confirms it, and running it with the code `esdb chaos` runs (`esdb_cli.chaos.faults`:
the same `Fault`s, bracketed by the same health checks in `run_fault`). Headless.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from esdb_cli.chaos.faults import (
    ChaosEnv,
    Fault,
    FaultReport,
    Heal,
    Kill,
    Partition,
    Pause,
    Restart,
    Resume,
    StepDown,
    run_fault,
)
from esdb_cli.localcluster import LocalCluster
from esdb_cli.tui.poller import Frame
from esdb_node.errors import InvalidInput, Unavailable

# key -> action; the app binds these keys (shown in the footer and the `?` screen).
KEYS = {
    "k": "kill",
    "p": "pause",  # or resume, if the member is paused
    "i": "isolate",
    "h": "heal",
    "R": "restart",
    "s": "stepdown",
}
DESCRIPTIONS = {
    "kill": "kill the selected member (SIGKILL)",
    "pause": "pause (SIGSTOP) or resume (SIGCONT) the selected member",
    "isolate": "isolate the selected member: Raft traffic cut both ways",
    "heal": "heal everything: partitions, paused and killed members",
    "restart": "restart the selected member (SIGTERM, start), or start it",
    "stepdown": "the leader steps down; on a follower: hand leadership to it",
}


@dataclass(frozen=True, slots=True)
class Plan:
    """A fault chosen for a member, waiting for the user's yes."""

    action: str  # kill, pause, resume, isolate, heal, restart, stepdown
    node: str
    question: str
    to: str | None = None  # stepdown: whom to hand leadership to (None: the most caught-up)

    def fault(self) -> Fault:
        if self.action == "kill":
            return Kill(self.node)
        if self.action == "pause":
            return Pause(self.node)
        if self.action == "resume":
            return Resume(self.node)
        if self.action == "isolate":
            return Partition([[self.node]])
        if self.action == "heal":
            return Heal()
        if self.action == "restart":
            return Restart(self.node)
        if self.action == "stepdown":
            return StepDown(to=self.to)
        raise InvalidInput(f"unknown chaos action {self.action!r}")


def plan(action: str, node: str, frame: Frame) -> Plan:
    """What `action` on `node` means now; InvalidInput / Unavailable says why it cannot run."""
    if not frame.local_cluster:
        raise InvalidInput("chaos keys work on a local cluster: start with --cluster-dir DIR")
    member = frame.cluster.member(node)
    if member is None:
        raise InvalidInput(f"no member {node}")
    proc = frame.process(node)
    role = member.role if member.reachable else "unreachable"
    who = f"{node} ({role}{f', pid {proc.pid}' if proc else ''})"
    leader = frame.cluster.leader
    if action == "kill":
        if proc is None:
            raise InvalidInput(f"{node} is not running (R starts it)")
        return Plan("kill", node, f"Kill {who} with SIGKILL?")
    if action == "pause":
        if proc is None:
            raise InvalidInput(f"{node} is not running")
        if proc.stopped:
            return Plan("resume", node, f"Resume {who} (SIGCONT)?")
        return Plan("pause", node, f"Pause {who} (SIGSTOP): it keeps its sockets, answers nothing?")
    if action == "isolate":
        return Plan(
            "isolate", node, f"Isolate {who}: drop its Raft traffic to and from all others?"
        )
    if action == "heal":
        return Plan("heal", node, "Heal: clear partitions, resume paused and start killed members?")
    if action == "restart":
        if proc is None:
            return Plan("restart", node, f"Start {node}?")
        return Plan("restart", node, f"Restart {who} (SIGTERM, then start)?")
    if action == "stepdown":
        if leader is None:
            raise Unavailable("there is no leader to step down right now")
        if node == leader:
            return Plan("stepdown", node, f"Make leader {node} step down (to the most caught-up)?")
        return Plan("stepdown", node, f"Hand leadership from {leader} to {node}?", to=node)
    raise InvalidInput(f"unknown chaos action {action!r}")


class Chaos(Protocol):
    def run(self, plan: Plan) -> FaultReport: ...


class LocalChaos:
    """Runs plans on the local cluster of `directory` (cluster.json read afresh each time:
    a restart changes it)."""

    def __init__(self, directory: Path, *, recovery_timeout: float = 20.0) -> None:
        self.directory = directory
        self.recovery_timeout = recovery_timeout

    def run(self, plan: Plan) -> FaultReport:
        env = ChaosEnv(LocalCluster.load(self.directory))
        return run_fault(env, plan.fault(), recovery_timeout=self.recovery_timeout)


def describe(report: FaultReport) -> str:
    """The event-log line of a chaos action: `esdb chaos`'s line and the leader change."""
    before, after = report.leader_before or "none", report.leader_after or "none"
    leader = f"leader {before}" if before == after else f"leader {before} -> {after}"
    return f"{report.summary}; {leader}"
