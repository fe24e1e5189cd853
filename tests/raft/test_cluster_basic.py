from __future__ import annotations

import pytest
from raft_harness import Cluster, wait_for

pytestmark = pytest.mark.cluster


def test_replicates_to_all_nodes(make_cluster: type[Cluster]) -> None:
    cluster = make_cluster(3).start()
    leader = cluster.leader()
    res = leader.request("append", count=50, events=10, inflight=4)
    assert res["applied"] == 50, res
    acked = set(res["acked"])
    for node in cluster.nodes:
        wait_for(
            f"{node.addr} has every event",
            lambda n=node: set(n.request("read")["ids"]) == acked,
            20,
        )
    st = leader.status()
    assert st["role"] == "leader" and st["has_quorum"]
    assert all(m["connected"] for m in st["members"])
