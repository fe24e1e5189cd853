"""The cluster as an operator sees it, computed once for every renderer.

`ClusterView.snapshot()` starts from any reachable node, finds every member through the
replicated registry, asks each for its status concurrently with a short deadline and returns a
frozen `ClusterSnapshot`. Health (`cluster health`) and readiness (`node ready`, HTTP
`/health/ready`) verdicts are computed here too. `esdb cluster status|health|leader|members`,
`esdb node ready`, the dashboard and the HTTP API only render these values.

No Typer, Rich or Textual here: this module belongs to the node and client library.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from esdb_node import ops
from esdb_node.errors import EsdbError, Timeout
from esdb_node.model import MemberView, NodeStatus

if TYPE_CHECKING:
    from esdb_node.client.aio import AsyncClient

Quorum = Literal["healthy", "degraded", "lost"]

# A member this many entries behind the leader's commit index is "lagging" (degraded).
LAG_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class MemberSnapshot:
    """One member: what it says about itself, or why it could not be asked."""

    id: str
    url: str
    raft: str | None = None
    role: str = "unreachable"
    reachable: bool = False
    term: int | None = None
    commit_index: int | None = None
    applied_index: int | None = None
    lag: int | None = None  # entries its applied index is behind the leader's commit index
    rtt_ms: float | None = None
    error: str | None = None
    leader_id: str | None = None  # whom this member follows
    # This member's clock minus the leader's, measured by the observer (ms; None: unknown).
    clock_offset_ms: float | None = None
    found_by: str | None = None
    last_seen: float | None = None  # unix seconds, as the asked node saw it
    status: NodeStatus | None = None


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """Checks that all must pass (readiness of a node, health of a member)."""

    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def detail(self) -> str:
        failed = [c.detail for c in self.checks if not c.ok]
        return "; ".join(failed) if failed else self.checks[-1].detail if self.checks else ""


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    taken_at: float  # unix seconds
    mode: str  # "cluster" | "standalone" | "unknown" (nothing answered)
    store_id: str | None
    leader: str | None  # node id of the leader the reachable members agree on
    leader_url: str | None
    term: int | None
    quorum: Quorum
    members: tuple[MemberSnapshot, ...] = field(default=())

    @property
    def up(self) -> int:
        return sum(m.reachable for m in self.members)

    @property
    def total(self) -> int:
        return len(self.members)

    def member(self, node_id: str) -> MemberSnapshot | None:
        return next((m for m in self.members if m.id == node_id), None)

    max_clock_offset: float = 1.0  # seconds (the leader's setting)

    def health(self) -> dict[str, Verdict]:
        """Per member: reachable, follows the agreed leader, caught up, clock close to the
        leader's."""
        out: dict[str, Verdict] = {}
        for m in self.members:
            checks = [Check("reachable", m.reachable, m.error or "unreachable")]
            if m.reachable:
                if self.leader is None:
                    checks.append(Check("leader", False, "no leader"))
                elif m.leader_id != self.leader:
                    checks.append(
                        Check("leader", False, f"follows {m.leader_id}, not {self.leader}")
                    )
                else:
                    checks.append(Check("leader", True, f"leader {self.leader}"))
                if m.lag is not None and m.lag > LAG_LIMIT:
                    checks.append(Check("caught up", False, f"{m.lag} entries behind"))
                offset = m.clock_offset_ms
                if offset is not None and abs(offset) > self.max_clock_offset * 1000:
                    checks.append(
                        Check(
                            "clock",
                            False,
                            f"clock {offset / 1000:+.3f} s off the leader's "
                            f"(limit {self.max_clock_offset:g} s)",
                        )
                    )
            out[m.id] = Verdict(tuple(checks))
        return out

    @property
    def healthy(self) -> bool:
        return bool(self.members) and all(v.ok for v in self.health().values())


def readiness(status: NodeStatus | EsdbError) -> Verdict:
    """Layered readiness of one node: [+]node, [+]leader, [+]store."""
    if isinstance(status, EsdbError):
        return Verdict((Check("node", False, str(status)),))
    st = status
    return Verdict(
        (
            Check("node", True, f"{st.node_id} at {st.url}"),
            _leader_check(st),
            Check(
                "store",
                st.ready,
                f"{st.last_position + 1} events" if st.ready else "not caught up",
            ),
            Check(
                "disk",
                st.storage == "ok",
                "writable" if st.storage == "ok" else f"{st.storage}: {st.storage_error}",
            ),
        )
    )


def _leader_check(st: NodeStatus) -> Check:
    if st.leader_id is None:
        return Check("leader", False, "no leader known")
    if not st.has_quorum:
        return Check(
            "leader",
            False,
            f"no quorum: in touch with fewer than a majority of the members "
            f"(last leader {st.leader_id})",
        )
    return Check("leader", True, st.leader_id)


class ClusterView:
    """Takes snapshots through one client (its connections are kept between snapshots)."""

    def __init__(self, client: AsyncClient, *, member_timeout: float = 2.0) -> None:
        self.client = client
        self.member_timeout = member_timeout

    async def _status(self, url: str) -> Answer:
        started = time.perf_counter()
        sent_ns = time.time_ns()
        try:
            status = await self.client.request(ops.Status(), url=url, timeout=self.member_timeout)
        except EsdbError as exc:
            return Answer(exc)
        except TimeoutError:
            return Answer(Timeout(f"{url} did not answer within {self.member_timeout:g}s"))
        rtt_ms = (time.perf_counter() - started) * 1000
        midpoint_us = (sent_ns + time.time_ns()) // 2000
        return Answer(status, rtt_ms, status.time_us - midpoint_us if status.time_us else None)

    async def _members(self, url: str) -> list[MemberView]:
        try:
            return await self.client.members(url=url)
        except (EsdbError, TimeoutError):
            return []

    async def snapshot(self) -> ClusterSnapshot:
        # Imported here: esdb_node.client imports this module, which must load first too.
        from esdb_node.client.connection import format_url

        seeds = [format_url(a, self.client.tls) for a in self.client.addresses]
        answers = dict(
            zip(seeds, await asyncio.gather(*(self._status(u) for u in seeds)), strict=True)
        )
        registry: list[MemberView] = []
        for url, answer in answers.items():
            status = answer.status
            if isinstance(status, NodeStatus) and status.mode == "cluster":
                registry = await self._members(url)
                if registry:
                    break
        known = {m.url for m in registry if m.url}
        missing = sorted(known - set(answers))
        more = await asyncio.gather(*(self._status(u) for u in missing))
        answers.update(zip(missing, more, strict=True))
        return build_snapshot(answers, registry)


@dataclass(frozen=True, slots=True)
class Answer:
    """One node's status (or why there is none), the round trip, and its clock minus the
    observer's, estimated at the midpoint of the round trip (microseconds)."""

    status: NodeStatus | EsdbError
    rtt_ms: float | None = None
    clock_us: int | None = None


def build_snapshot(
    answers: dict[str, Answer],
    registry: Sequence[MemberView],
    *,
    now: float | None = None,
) -> ClusterSnapshot:
    """Combine per-URL answers and one node's registry into a snapshot (pure)."""
    by_url = {m.url: m for m in registry if m.url}
    by_raft = {m.raft: m for m in registry}
    statuses = [a.status for a in answers.values() if isinstance(a.status, NodeStatus)]
    leaders = [s for s in statuses if s.role in ("leader", "standalone")]
    # The leader with the highest term wins: an old leader cut off from the majority may
    # still believe it leads for a moment.
    leader = max(leaders, key=lambda s: s.term, default=None)
    followers_agree = leader is not None and sum(
        s.leader_id == leader.node_id for s in statuses
    ) * 2 > len(registry or statuses)
    if leader is not None and not followers_agree and leader.role != "standalone":
        leader = None
    members: list[MemberSnapshot] = []
    seen_urls: set[str] = set()
    seen_rafts: set[str] = set()
    leader_clock = next(
        (a.clock_us for a in answers.values() if leader is not None and a.status is leader),
        None,
    )
    for url, answer in answers.items():
        status, rtt = answer.status, answer.rtt_ms
        seen_urls.add(url)
        record = by_url.get(url)
        if isinstance(status, NodeStatus):
            record = record or by_raft.get(status.raft or "")
            seen_rafts.add(status.raft or "")
            lag = (
                max(0, leader.commit_index - status.applied_index)
                if leader is not None and leader.role == "leader"
                else None
            )
            members.append(
                MemberSnapshot(
                    id=status.node_id,
                    url=status.url,
                    raft=status.raft,
                    role=status.role,
                    reachable=True,
                    term=status.term,
                    commit_index=status.commit_index,
                    applied_index=status.applied_index,
                    lag=lag,
                    rtt_ms=round(rtt, 3) if rtt is not None else None,
                    leader_id=status.leader_id,
                    clock_offset_ms=(
                        round((answer.clock_us - leader_clock) / 1000, 3)
                        if answer.clock_us is not None and leader_clock is not None
                        else None
                    ),
                    found_by=record.found_by if record else None,
                    last_seen=record.last_seen if record else None,
                    status=status,
                )
            )
        else:
            members.append(
                MemberSnapshot(
                    id=record.node_id if record else url,
                    url=url,
                    raft=record.raft if record else None,
                    error=str(status),
                    found_by=record.found_by if record else None,
                    last_seen=record.last_seen if record else None,
                )
            )
    for record in registry:
        if record.url not in seen_urls and record.raft not in seen_rafts:
            # a member that did not answer and has no client URL registered yet
            members.append(
                MemberSnapshot(
                    id=record.node_id,
                    url=record.url,
                    raft=record.raft,
                    error="no client URL registered yet",
                    found_by=record.found_by,
                    last_seen=record.last_seen,
                )
            )
    members.sort(key=lambda m: m.id)
    total = len(members)
    up = sum(m.reachable for m in members)
    quorum: Quorum
    if leader is None or up * 2 <= total:
        quorum = "lost"
    elif up < total or any(m.lag is not None and m.lag > LAG_LIMIT for m in members):
        quorum = "degraded"
    else:
        quorum = "healthy"
    terms = [s.term for s in statuses]
    return ClusterSnapshot(
        taken_at=time.time() if now is None else now,
        mode=statuses[0].mode if statuses else "unknown",
        store_id=statuses[0].store_id if statuses else None,
        leader=leader.node_id if leader else None,
        leader_url=leader.url if leader else None,
        term=max(terms) if terms else None,
        quorum=quorum,
        members=tuple(members),
        max_clock_offset=leader.max_clock_offset if leader is not None else 1.0,
    )
