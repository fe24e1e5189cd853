"""The dashboard's data, fetched with no UI: one frozen `Frame` per poll.

`Poller.poll()` takes the cluster's `ClusterSnapshot` (esdb_node/cluster_view.py, the view
`esdb cluster status` prints) through one long-lived client, whose connections are kept from
one poll to the next; adds what only this machine can see (CPU, memory and connections of
local node processes) and the subscriptions; and returns a `Frame`. It blocks for at most
about two member timeouts, so the app runs it in a thread worker. No Textual here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from esdb_cli import local
from esdb_cli.local import ProcessStats
from esdb_cli.localcluster import LocalCluster
from esdb_node.client import Client
from esdb_node.cluster_view import ClusterSnapshot
from esdb_node.config import parse_hostport
from esdb_node.errors import EsdbError, Unavailable
from esdb_node.model import NodeStatus


@dataclass(frozen=True, slots=True)
class ConsumerRow:
    """One consumer connected to a persistent subscription."""

    name: str
    node: str | None  # the member it is connected to
    in_flight: int
    delivered: int
    rate: float | None  # events/s delivered to it


@dataclass(frozen=True, slots=True)
class SubscriptionRow:
    """One persistent subscription as the leader reports it."""

    name: str
    filter: str
    checkpoint: int | None  # last position acknowledged by the group
    head: int | None  # last position of the subscription's source
    lag: int | None  # events between checkpoint and head
    in_flight: int
    parked: int
    consumers: tuple[ConsumerRow, ...]
    rate: float | None  # events/s delivered to the group


def subscription_rows(snapshot: ClusterSnapshot) -> tuple[SubscriptionRow, ...]:
    """The subscriptions of the cluster, from the leader's status.

    This is where persistent subscriptions plug in: when the node reports them (per
    subscription: filter, checkpoint, head, in flight, parked, consumers, rate) in its
    `NodeStatus`, turn the leader's report into rows here; the table, the consumer detail and
    the "falling behind" events already render rows. Until then no node reports any.
    """
    return ()


def delivered_total(snapshot: ClusterSnapshot) -> int | None:
    """Events delivered to subscribers so far (the leader's counter), or None while nodes
    report no subscriptions: the dashboard then says "not available" instead of 0."""
    return None


@dataclass(frozen=True, slots=True)
class Frame:
    """Everything one poll saw."""

    cluster: ClusterSnapshot
    # Local node processes by node id (members on another machine have none).
    processes: tuple[tuple[str, ProcessStats], ...] = ()
    subscriptions: tuple[SubscriptionRow, ...] = ()
    delivered_total: int | None = None
    local_cluster: bool = False  # from --cluster-dir: pids are known, the chaos keys work

    @property
    def taken_at(self) -> float:
        return self.cluster.taken_at

    def process(self, node_id: str) -> ProcessStats | None:
        return next((p for n, p in self.processes if n == node_id), None)

    @property
    def leader_status(self) -> NodeStatus | None:
        leader = self.cluster.member(self.cluster.leader) if self.cluster.leader else None
        return leader.status if leader is not None else None

    @property
    def appended_total(self) -> int | None:
        """Events in the store: the leader's last position + 1 (None without a leader)."""
        status = self.leader_status
        return status.last_position + 1 if status is not None else None


class Source(Protocol):
    """What the app polls: `Poller`, or a fake in tests."""

    def poll(self) -> Frame: ...

    def close(self) -> None: ...


class Poller:
    """Polls one cluster through one client, for the life of the dashboard."""

    def __init__(
        self,
        urls: str,
        *,
        token: str | None = None,
        cluster_dir: Path | None = None,
        member_timeout: float = 1.0,
    ) -> None:
        self.member_timeout = member_timeout
        self.cluster_dir = cluster_dir
        # One client for the app: its connections to the members live across polls.
        self.client = Client(
            urls, token=token, timeout=2 * member_timeout, connect_timeout=member_timeout
        )
        self.sampler = local.ProcessSampler()

    def poll(self) -> Frame:
        """One frame; raises `Unavailable` when no member answered (the app keeps showing
        the last frame, marked stale)."""
        snapshot = self.client.cluster_snapshot(member_timeout=self.member_timeout)
        if snapshot.up == 0:
            errors = "; ".join(m.error or m.url for m in snapshot.members)
            raise Unavailable(f"no node reachable: {errors}")
        processes = tuple(
            (node_id, stats)
            for node_id, pid in self._pids(snapshot).items()
            if (stats := self.sampler.sample(pid)) is not None
        )
        return Frame(
            cluster=snapshot,
            processes=processes,
            subscriptions=subscription_rows(snapshot),
            delivered_total=delivered_total(snapshot),
            local_cluster=self.cluster_dir is not None,
        )

    def _pids(self, snapshot: ClusterSnapshot) -> dict[str, int]:
        """Pids of members that run on this machine: from the local cluster's pid files
        (read again each poll: a restart changes them), else a loopback member's own pid if
        that pid is an esdb node here."""
        pids: dict[str, int] = {}
        by_url = {}
        if self.cluster_dir is not None:
            try:
                by_url = {n.url: n for n in LocalCluster.load(self.cluster_dir).nodes}
            except EsdbError:
                by_url = {}
        for m in snapshot.members:
            node = by_url.get(m.url)
            if node is not None:
                pid = local.running_pid(Path(node.data_dir))
            elif m.status is not None and m.status.pid and _loopback(m.url):
                pid = m.status.pid if local.is_node_process(m.status.pid) else None
            else:
                pid = None
            if pid is not None:
                pids[m.id] = pid
        return pids

    def close(self) -> None:
        self.client.close()


def _loopback(url: str) -> bool:
    try:
        host = parse_hostport(url)[0]
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except (EsdbError, ValueError):
        return False
