from __future__ import annotations

import pytest

from tests.harness import wait_for
from tests.raft.raft_harness import MakeRaftCluster, Node

pytestmark = pytest.mark.cluster


def test_replicates_to_all_nodes(make_cluster: MakeRaftCluster) -> None:
    cluster = make_cluster(3).start()
    leader = cluster.leader()
    res = leader.request("append", count=50, events=10, inflight=4)
    assert res["applied"] == 50, res
    acked = set(res["acked"])
    for node in cluster.nodes:

        def has_every_event(n: Node = node) -> bool:
            return set(n.request("read")["ids"]) == acked

        wait_for(has_every_event, timeout=20, what=f"{node.addr} has every event")
    st = leader.status()
    assert st["role"] == "leader" and st["has_quorum"]
    assert all(m["connected"] for m in st["members"])
