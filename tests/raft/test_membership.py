"""Membership changes and a new node joining a large store (real processes)."""

from __future__ import annotations

import time

import pytest

from tests.harness import wait_for
from tests.raft.raft_harness import MakeRaftCluster, Node

pytestmark = pytest.mark.cluster

MiB = 1 << 20


def test_new_node_joins_a_large_store_via_snapshot(make_cluster: MakeRaftCluster) -> None:
    """A store of ~170 MB, sent in one snapshot transfer although it takes longer than
    connection_timeout (1.6 s here) lets a silent connection live: chunk acks keep it alive."""
    cluster = make_cluster(1, compaction_min_entries=1_000_000, connection_timeout=1.6)
    first = cluster.nodes[0].start()
    wait_for(lambda: first.status()["role"] == "leader", timeout=15, what="single node leads")
    res = first.request(
        "append",
        timeout=150,
        count=160,
        events=16,
        size=64 << 10,
        inflight=2,
        quiet=True,
        max_seconds=120,
    )
    assert res["applied"] == 160, res
    store_size = (first.data_dir / "store" / "data.mdb").stat().st_size
    assert store_size >= 150 * MiB
    first.request("compact")
    wait_for(
        lambda: (st := first.status())["snapshot_dumps"] >= 1 and st["log_length"] <= 3,
        timeout=60,
        what="the first dump",
        interval=0.2,
    )
    joiner = cluster.new_node(peers=[first.addr])
    started = time.monotonic()
    pending = first.send("add_member", addr=joiner.addr, timeout=120)
    joiner.start()  # with two members the change needs the new node's ack to commit
    first.wait_reply(pending, 130)
    target = first.status()["last_position"]
    wait_for(
        lambda: joiner.status()["last_position"] == target,
        timeout=120,
        what="the new node to catch up",
        interval=0.5,
    )
    took = time.monotonic() - started
    st = joiner.status()
    # One transfer, never restarted (stock pysyncobj restarts it whenever it takes longer
    # than connection_timeout, because the receiver is silent until the end).
    assert (st["snapshot_transfers"], st["snapshot_installs"]) == (1, 1)
    assert sorted(st["members_list"]) == sorted([first.addr, joiner.addr])
    more = first.request("append", count=10, events=2, inflight=2)
    assert more["applied"] == 10
    wait_for(
        lambda: joiner.status()["last_position"] == target + 20,
        timeout=30,
        what="the new node to follow the log",
    )
    print(f"store {store_size / MiB:.0f} MiB; joined and caught up in {took:.1f}s")


def test_transfer_leadership_and_remove_members(make_cluster: MakeRaftCluster) -> None:
    cluster = make_cluster(3).start()
    old = cluster.leader()
    target = next(n for n in cluster.nodes if n is not old)
    third = next(n for n in cluster.nodes if n not in (old, target))
    old.request("transfer", to=target.addr, timeout=20)
    assert target.status()["role"] == "leader"
    # The old leader is now a follower; remove it through the new leader.
    target.request("remove_member", addr=old.addr, timeout=20)
    target.request("remove_member", addr=old.addr, timeout=20)  # already gone: a no-op
    st = target.status()
    assert sorted(st["members_list"]) == sorted([target.addr, third.addr])
    term = st["term"]
    assert target.request("append", count=10, events=1)["applied"] == 10
    # The removed node keeps running but is refused by the others: it cannot disrupt them.
    time.sleep(3.0)  # an observation window (> 2 election timeouts), not a synchronisation
    st = target.status()
    assert st["role"] == "leader" and st["term"] == term
    # A member cannot remove itself (it could never learn the outcome): move leadership away
    # and remove it through the new leader.
    with pytest.raises(AssertionError, match="cannot remove itself"):
        target.request("remove_member", addr=target.addr, timeout=10)
    target.request("transfer", to=third.addr, timeout=20)
    third.request("remove_member", addr=target.addr, timeout=20)
    assert third.status()["members_list"] == [third.addr]
    assert third.status()["role"] == "leader"
    assert third.request("append", count=5, events=1)["applied"] == 5


def test_restart_right_after_growing_keeps_the_new_membership(
    make_cluster: MakeRaftCluster,
) -> None:
    """A one-member cluster grows to two; its first member is killed right after the change
    commits and restarted with its original (empty) peer list. It must not lead alone."""
    cluster = make_cluster(1)
    first = cluster.nodes[0].start()
    wait_for(lambda: first.status()["role"] == "leader", timeout=15, what="single node leads")
    first.request("append", count=5, events=1)
    joiner = cluster.new_node(peers=[first.addr])
    pending = first.send("add_member", addr=joiner.addr, timeout=30)
    joiner.start()
    first.wait_reply(pending, 40)
    first.kill()  # at once: the commit index on disk may still predate the change
    first.start()
    wait_for(
        lambda: sorted(first.status()["members_list"]) == sorted([first.addr, joiner.addr]),
        timeout=5,
        what="the restarted member to know both members",
    )
    leader = cluster.leader(among=[first, joiner], timeout=15)
    assert leader.request("append", count=5, events=1)["applied"] == 5
    for node in (first, joiner):

        def at_nine(n: Node = node) -> bool:
            return bool(n.status()["last_position"] == 9)

        wait_for(at_nine, timeout=15, what="both members agree")
