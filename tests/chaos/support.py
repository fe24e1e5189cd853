"""Waits and reads on the chaos tests' `LocalCluster`."""

from __future__ import annotations

from esdb_cli.localcluster import LocalCluster
from esdb_node.client import Client
from esdb_node.model import NodeStatus
from tests.harness import wait_for


def wait_registered(c: LocalCluster, timeout: float = 60) -> None:
    """Until every node's client URL is in the replicated member registry (faults and
    status rows name nodes by id only once they are)."""

    def registered() -> bool:
        leader = c.wait_leader(30)
        with Client(leader.url, timeout=3) as client:
            members = client.members(leader.url)
        return {m.node_id for m in members} == {n.id for n in c.nodes}

    wait_for(registered, timeout=timeout, what="every node to register", interval=0.2)


def status_of(c: LocalCluster, node_id: str) -> NodeStatus:
    node = c.node(node_id)
    with Client(node.url, timeout=3, connect_timeout=1) as client:
        return client.status(node.url)


def wait_converged(c: LocalCluster, timeout: float = 60) -> list[NodeStatus]:
    """Until all nodes are up, agree on one leader and have applied the same log."""

    def converged() -> list[NodeStatus] | None:
        statuses = [s for s in c.statuses(timeout=2) if isinstance(s, NodeStatus)]
        if len(statuses) != len(c.nodes):
            return None
        if len({s.leader_id for s in statuses}) != 1 or statuses[0].leader_id is None:
            return None
        if len({(s.applied_index, s.last_position) for s in statuses}) != 1:
            return None
        return statuses

    return wait_for(converged, timeout=timeout, what="the nodes to converge", interval=0.2)
