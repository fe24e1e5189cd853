"""nftables cuts on a real cluster in network namespaces, checked from the switch namespace.

Run by tests/chaos/test_netns.py as `ip netns exec PREFIX-sw python -m tests.chaos.netns_cuts
PREFIX NODES DIR`: only there can a client reach every node. Prints one JSON object of
observations per step on stdout; an AssertionError (exit 1) names the step that failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from esdb_cli.chaos import netns as nx
from esdb_cli.chaos.faults import ChaosEnv, FaultReport, Heal, Partition, run_fault
from esdb_cli.localcluster import LocalCluster
from esdb_node.client import Client
from esdb_node.model import EventData, NodeStatus
from tests.harness import wait_for

APPENDS = 10


def status(c: LocalCluster, node: str) -> NodeStatus:
    with Client(c.node(node).url, timeout=3, connect_timeout=1) as client:
        return client.status(c.node(node).url)


def commit(c: LocalCluster, node: str) -> int:
    return status(c, node).commit_index


def match_index(c: LocalCluster, leader: str, of: str) -> int:
    """What `leader` knows of `of`'s log (it learns it only from `of`'s replies)."""
    url = c.node(leader).url
    with Client(url, timeout=3, connect_timeout=1) as client:
        known = {m.node_id: m.match_index for m in client.members(url)}[of]
    assert known is not None, f"{leader} does not lead"
    return known


def majority_commits(c: LocalCluster, majority: list[str], stream: str) -> None:
    """APPENDS acknowledged appends through a client that knows only `majority`, then every
    majority node has seen them committed."""
    start = max(commit(c, n) for n in majority)
    urls = ",".join(c.node(n).url for n in majority)
    with Client(urls, timeout=15) as client:
        for i in range(APPENDS):
            client.append(stream, EventData.from_json("Cut", {"i": i}))
    wait_for(
        lambda: all(commit(c, n) >= start + APPENDS for n in majority),
        timeout=20,
        what=f"{','.join(majority)} to commit",
    )


def converged(c: LocalCluster) -> None:
    def same() -> bool:
        ok = [s for s in c.statuses(timeout=2) if isinstance(s, NodeStatus)]
        return len(ok) == len(c.nodes) and len({(s.applied_index, s.leader_id) for s in ok}) == 1

    wait_for(same, timeout=60, what="every node to converge after heal", interval=0.2)


def step(name: str, report: FaultReport, **facts: object) -> None:
    print(json.dumps({"step": name, "detail": report.detail, **facts}), flush=True)


def main(prefix: str, nodes: int, directory: Path) -> None:
    hosts, network = nx.enter(prefix, nodes)
    cluster = LocalCluster.create(
        directory,
        nodes=nodes,
        base_port=None,
        secret=None,
        store_id="cuts",
        durability="fsync",
        hosts=hosts,
    )
    env = ChaosEnv(cluster, network=network)
    try:
        cluster.start()
        leader = cluster.wait_leader(60).node_id
        followers = sorted(n.id for n in cluster.nodes if n.id != leader)

        # Two-way, two nodes on the minority side: the old leader and one follower.
        minority = [leader, followers[0]]
        majority = followers[1:]
        report = run_fault(env, Partition([minority, majority]), measure=False)
        frozen = {n: commit(cluster, n) for n in minority}  # clients still reach them
        majority_commits(cluster, majority, "two-way")
        after = {n: commit(cluster, n) for n in minority}
        assert after == frozen, f"the cut-off minority committed: {frozen} -> {after}"
        heal = run_fault(env, Heal(), measure=False)
        converged(cluster)
        step("two-way", report, minority=minority, frozen=frozen, after=after, heal=heal.detail)

        # One-way from the leader to one follower: that follower hears nothing.
        leader = cluster.wait_leader(30).node_id
        starved = sorted(n.id for n in cluster.nodes if n.id != leader)[0]
        report = run_fault(env, Partition([[leader], [starved]], one_way=True), measure=False)
        frozen_one = commit(cluster, starved)
        others = [n.id for n in cluster.nodes if n.id != starved]
        majority_commits(cluster, others, "one-way-starved")
        after_one = commit(cluster, starved)
        assert after_one == frozen_one, f"{starved} committed through a one-way cut"
        heal = run_fault(env, Heal(), measure=False)
        converged(cluster)
        step("one-way-from-leader", report, starved=starved, frozen=frozen_one, heal=heal.detail)

        # One-way from a follower to the leader: the follower still receives and applies the
        # log (only its replies are dropped), and the others keep committing.
        leader = cluster.wait_leader(30).node_id
        mute = sorted(n.id for n in cluster.nodes if n.id != leader)[0]
        report = run_fault(env, Partition([[mute], [leader]], one_way=True), measure=False)
        before = commit(cluster, mute)
        heard = match_index(cluster, leader, mute)
        majority_commits(cluster, [n.id for n in cluster.nodes if n.id != mute], "one-way-mute")
        wait_for(
            lambda: commit(cluster, mute) >= before + APPENDS,
            timeout=30,
            what=f"{mute} to keep receiving the log through a one-way cut of its replies",
        )
        still = match_index(cluster, leader, mute)
        assert still == heard, f"{leader} heard {mute}'s progress through the cut"
        heal = run_fault(env, Heal(), measure=False)
        wait_for(
            lambda: match_index(cluster, leader, mute) > heard,
            timeout=30,
            what=f"{leader} to hear {mute} again after heal",
        )
        converged(cluster)
        step("one-way-to-leader", report, mute=mute, match_index=heard, heal=heal.detail)
    finally:
        cluster.down(purge=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
