"""Fixed dashboard data for the pilot and snapshot tests (no wall-clock time anywhere), and
the fake poller that serves it."""

from __future__ import annotations

import threading
from dataclasses import replace

from esdb_cli.chaos.faults import FaultReport
from esdb_cli.local import ProcessStats
from esdb_cli.tui.actions import Plan
from esdb_cli.tui.poller import ConsumerRow, Frame, SubscriptionRow
from esdb_node.cluster_view import ClusterSnapshot, MemberSnapshot
from esdb_node.model import NodeStatus

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20Z
IDS = ("n1", "n2", "n3")


def _url(node_id: str) -> str:
    return f"esdb://127.0.0.1:{21000 + 10 * int(node_id[1:])}"


def _raft(node_id: str) -> str:
    return f"127.0.0.1:{21001 + 10 * int(node_id[1:])}"


def member(
    node_id: str,
    *,
    role: str = "follower",
    leader: str | None = "n1",
    term: int = 4,
    applied: int = 1000,
    commit: int | None = None,
    position: int = 999,
    lag: int | None = 0,
    rtt_ms: float = 0.4,
    clock_offset_ms: float | None = 0.2,
) -> MemberSnapshot:
    status = NodeStatus(
        node_id=node_id,
        store_id="orders",
        role=role,
        url=_url(node_id),
        leader_id=leader,
        leader_url=_url(leader) if leader else None,
        term=term,
        commit_index=applied if commit is None else commit,
        applied_index=applied,
        last_position=position,
        stream_count=10,
        version="0.1.0",
        mode="cluster",
        ready=True,
        raft=_raft(node_id),
        members=IDS,
        pid=4000 + int(node_id[1:]),
    )
    return MemberSnapshot(
        id=node_id,
        url=_url(node_id),
        raft=_raft(node_id),
        role=role,
        reachable=True,
        term=term,
        commit_index=status.commit_index,
        applied_index=applied,
        lag=lag,
        rtt_ms=rtt_ms,
        leader_id=leader,
        clock_offset_ms=0.0 if role == "leader" else clock_offset_ms,
        found_by="static",
        status=status,
    )


def down(node_id: str, error: str = "connection refused") -> MemberSnapshot:
    return MemberSnapshot(
        id=node_id, url=_url(node_id), raft=_raft(node_id), error=f"cannot connect: {error}"
    )


def proc(node_id: str, *, pid: int | None = None, cpu: float | None = 3.0) -> ProcessStats:
    return ProcessStats(
        pid=pid or 4000 + int(node_id[1:]),
        cpu_percent=cpu,
        rss_bytes=(40 + int(node_id[1:])) * 2**20,
        connections=5,
        stopped=False,
    )


def frame(
    at: float,
    members: tuple[MemberSnapshot, ...],
    *,
    leader: str | None = "n1",
    term: int = 4,
    quorum: str = "healthy",
    local: bool = True,
    subscriptions: tuple[SubscriptionRow, ...] = (),
    processes: tuple[tuple[str, ProcessStats], ...] | None = None,
) -> Frame:
    cluster = ClusterSnapshot(
        taken_at=at,
        mode="cluster",
        store_id="orders",
        leader=leader,
        leader_url=_url(leader) if leader else None,
        term=term,
        quorum=quorum,  # type: ignore[arg-type]
        members=members,
    )
    if processes is None:
        processes = tuple((m.id, proc(m.id)) for m in members if m.reachable)
    return Frame(cluster, processes, subscriptions, None, local)


def healthy(at: float = T0, position: int = 999, term: int = 4) -> Frame:
    return frame(
        at,
        (
            member("n1", role="leader", term=term, applied=position + 1, position=position),
            member("n2", term=term, applied=position + 1, position=position),
            member("n3", term=term, applied=position - 2, position=position - 3, lag=3),
        ),
        term=term,
    )


def failover() -> list[Frame]:
    """The leader n1 is killed; n2 takes over in term 5."""
    before = [healthy(T0, 999), healthy(T0 + 1, 1019), healthy(T0 + 2, 1044)]
    gone = frame(
        T0 + 3,
        (down("n1"), member("n2", leader=None), member("n3", leader=None)),
        leader=None,
        quorum="lost",
        processes=(("n2", proc("n2")), ("n3", proc("n3"))),
    )
    elected = frame(
        T0 + 4,
        (
            down("n1"),
            member("n2", role="leader", leader="n2", term=5, applied=1052, position=1050),
            member("n3", leader="n2", term=5, applied=1052, position=1050),
        ),
        leader="n2",
        term=5,
        quorum="degraded",
        processes=(("n2", proc("n2")), ("n3", proc("n3"))),
    )
    return [*before, gone, elected]


def with_subscriptions(base: Frame) -> Frame:
    rows = (
        SubscriptionRow(
            name="billing",
            filter="order-*",
            checkpoint=990,
            head=1044,
            lag=54,
            in_flight=10,
            parked=1,
            consumers=(
                ConsumerRow("billing-a", "n1", in_flight=6, delivered=612, rate=12.0),
                ConsumerRow("billing-b", "n2", in_flight=4, delivered=378, rate=8.0),
            ),
            rate=20.0,
        ),
        SubscriptionRow(
            name="audit",
            filter="$all",
            checkpoint=None,
            head=1044,
            lag=1045,
            in_flight=0,
            parked=0,
            consumers=(),
            rate=None,
        ),
    )
    return replace(base, subscriptions=rows, delivered_total=990)


class FakeSource:
    """Serves `steps[index]` on every poll (a frame, or an exception it raises); the test
    moves `index`. Serving the same frame again changes nothing on screen, so which frames
    the app's replaceable messages drop does not matter once the test waits for each."""

    def __init__(self, *steps: Frame | Exception) -> None:
        self.steps = list(steps)
        self.index = 0
        self.polls = 0
        self.closed = False
        self._lock = threading.Lock()

    def poll(self) -> Frame:
        with self._lock:
            step = self.steps[self.index]
            self.polls += 1
        if isinstance(step, Exception):
            raise step
        return step

    def advance(self) -> Frame | Exception:
        with self._lock:
            self.index += 1
            return self.steps[self.index]

    def close(self) -> None:
        self.closed = True


class Recorder:
    """Stands in for the local cluster's chaos runner (the real one runs in test_e2e.py)."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.plans: list[Plan] = []
        self.gate = gate  # if given, a run returns only once it is set

    def run(self, plan: Plan) -> FaultReport:
        self.plans.append(plan)
        if self.gate is not None and not self.gate.wait(30):
            raise TimeoutError("the test never opened the gate")
        return FaultReport(
            action=plan.action,
            target=plan.node,
            at="2023-11-14T22:13:21.000Z",
            t_ns=0,
            leader_before="n1",
            leader_after="n2",
            recovery_s=1.5,
            health_before="",
            health_after="",
            detail="SIGKILL pid 4001",
            together=2,
            members=3,
        )
