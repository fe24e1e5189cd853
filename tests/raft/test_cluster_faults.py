"""Real processes on 127.0.0.1: crashes, partitions, bad peers, disk failure."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from tests.harness import rss_kib, wait_for
from tests.raft.raft_harness import MakeRaftCluster, Node, NodeDied

pytestmark = pytest.mark.cluster

# The shipped defaults, not the faster test settings: failover claims are about these.
DEFAULT_TIMEOUTS = {
    "election_timeout_min": 1.0,
    "election_timeout_max": 2.0,
    "leader_fallback_timeout": 2.5,
    "connection_timeout": 10.0,
    "connection_retry": 1.0,
}


def ids_on(node: Node) -> list[str]:
    return list(node.request("read", timeout=30)["ids"])


def assert_has_all(nodes: list[Node], acked: set[str], timeout: float = 20.0) -> None:
    for node in nodes:

        def complete(n: Node = node) -> bool:
            ids = ids_on(n)
            assert len(ids) == len(set(ids)), f"{n.addr} has duplicate events"
            return acked <= set(ids)

        wait_for(
            complete,
            timeout=timeout,
            what=f"{node.addr} to have every acknowledged event",
            interval=0.2,
        )


def test_leader_kill_with_appends_in_flight(make_cluster: MakeRaftCluster) -> None:
    cluster = make_cluster(3, **DEFAULT_TIMEOUTS).start()
    leader = cluster.leader()
    driver = next(n for n in cluster.nodes if n is not leader)
    box = driver.send(
        "append", count=800, events=5, inflight=4, timeout=4.0, max_seconds=20, stream_acks=True
    )
    wait_for(lambda: driver.events.qsize() >= 30, timeout=20, what="acks before the kill")
    leader.kill()
    killed_at = time.monotonic()
    survivors = [n for n in cluster.nodes if n is not leader]
    new_leader = cluster.leader(among=survivors, timeout=10)
    failover = time.monotonic() - killed_at
    assert failover < 5.0, f"new leader after {failover:.1f}s"
    result = driver.wait_reply(box, 60)
    assert (
        result["applied"] > 30
        and result["sent"]
        == result["applied"] + result["rejected"] + result["unknown"] + result["failed"]
    )
    acked = set(result["acked"])
    # Writes go on through the new leader.
    more = new_leader.request("append", count=20, events=2, inflight=2)
    assert more["applied"] == 20
    assert_has_all(survivors, acked | set(more["acked"]))


def test_follower_restart_catches_up_without_reapplying(make_cluster: MakeRaftCluster) -> None:
    cluster = make_cluster(3).start()
    leader = cluster.leader()
    first = leader.request("append", count=100, events=3, inflight=4)
    follower = next(n for n in cluster.nodes if n is not leader)
    assert_has_all([follower], set(first["acked"]))
    follower.kill()
    second = leader.request("append", count=100, events=3, inflight=4)
    assert first["applied"] == second["applied"] == 100
    follower.start()
    acked = set(first["acked"]) | set(second["acked"])
    assert_has_all([follower], acked)
    ids = ids_on(follower)
    assert len(ids) == len(acked) == 600  # nothing applied twice
    st = follower.status()
    assert st["replays_skipped"] > 0  # the journal tail was replayed and skipped by the store
    assert st["store_applied"][0] <= st["last_applied"]


def test_all_nodes_killed_at_once_lose_no_acknowledged_event(make_cluster: MakeRaftCluster) -> None:
    cluster = make_cluster(3).start()
    leader = cluster.leader()
    leader.send(
        "append", count=5000, events=4, inflight=4, timeout=4.0, max_seconds=30, stream_acks=True
    )
    wait_for(lambda: leader.events.qsize() >= 150, timeout=30, what="some acknowledged appends")
    for node in cluster.nodes:
        node.kill()
    acked: set[str] = set()
    while not leader.events.empty():
        acked.update(leader.events.get_nowait().get("ack", ()))
    assert len(acked) >= 150 * 4
    for node in cluster.nodes:
        node.start()
    cluster.leader(timeout=20)
    assert_has_all(cluster.nodes, acked, timeout=30)


def test_isolated_leader_steps_down_and_commits_nothing(make_cluster: MakeRaftCluster) -> None:
    cluster = make_cluster(3, **DEFAULT_TIMEOUTS).start()
    old = cluster.leader()
    others = [n for n in cluster.nodes if n is not old]
    old.request("partition", drop_in=[n.addr for n in others], drop_out=[n.addr for n in others])
    cut_at = time.monotonic()
    minority = old.send("append", count=5, events=1, inflight=5, timeout=4.0)
    new = cluster.leader(among=others, timeout=10)
    majority = new.request("append", count=20, events=1, inflight=4)
    assert majority["applied"] == 20
    wait_for(
        lambda: old.status()["role"] != "leader",
        timeout=6,
        what="the old leader to step down",
        interval=0.1,
    )
    stepped_down = time.monotonic() - cut_at
    assert stepped_down < 4.5, f"isolated leader led for {stepped_down:.1f}s"
    result = old.wait_reply(minority, 30)
    assert result["applied"] == 0, result
    old.request("partition", drop_in=[], drop_out=[])
    acked = set(majority["acked"])
    assert_has_all(cluster.nodes, acked)
    for node in cluster.nodes:
        assert set(ids_on(node)) == acked  # the minority's writes never appeared anywhere
    assert old.status()["leader"] == new.addr


def test_node_with_wrong_secret_never_joins(make_cluster: MakeRaftCluster) -> None:
    cluster = make_cluster(3)
    bad = cluster.nodes[2]
    bad.config["secret"] = "not-the-cluster-secret"
    cluster.start()
    good = cluster.nodes[:2]
    leader = cluster.leader(among=good)
    res = leader.request("append", count=30, events=2, inflight=4)
    assert res["applied"] == 30

    def refused() -> bool:
        # Counted by whichever side accepted the connection (the higher address dials).
        return sum(n.status()["rejected"]["bad_frame"] for n in cluster.nodes) > 0

    wait_for(refused, timeout=15, what="a refused connection", interval=0.2)
    st = bad.status()
    assert st["leader"] is None and st["role"] != "leader" and st["commit_index"] <= 1
    assert ids_on(bad) == []
    assert leader.request("append", count=10, events=1)["applied"] == 10


def test_garbage_and_huge_frames_do_not_hurt(make_cluster: MakeRaftCluster) -> None:
    cluster = make_cluster(1).start()
    node = cluster.nodes[0]
    wait_for(lambda: node.status()["role"] == "leader", timeout=15, what="single node leads")
    node.request("append", count=20, events=2)
    host, port = node.addr.rsplit(":", 1)
    before = rss_kib(node.pid)

    def attack(payload: bytes, chunk: int = 1 << 20) -> None:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.settimeout(5)
            try:
                for i in range(0, len(payload), chunk):
                    s.sendall(payload[i : i + chunk])
                s.recv(1)
            except OSError:
                pass  # refused mid-stream: what we want

    attack(struct.pack("<I", 300) + bytes(range(256)) + bytes(44))  # garbage frame
    attack(struct.pack("<I", 0x7FFFFFF0) + b"\0" * (64 << 20))  # 2 GiB header + 64 MiB
    attack(b"\xff" * 1000)  # negative length in pysyncobj's signed header
    for _ in range(30):  # many small garbage connections
        attack(struct.pack("<I", 40) + b"\x01" * 40)

    def counted() -> dict | None:
        st = node.status()
        refused = st["rejected"]["bad_frame"] + st["rejected"]["oversized_frame"]
        return st if refused >= 32 else None

    st = wait_for(counted, timeout=10, what="refusals counted")
    assert st["rejected"]["oversized_frame"] >= 2
    grown = rss_kib(node.pid) - before
    assert grown < 16 << 10, f"RSS grew by {grown} KiB"
    assert node.request("append", count=5, events=1)["applied"] == 5


def test_storage_failure_stops_the_node_with_exit_70(make_cluster: MakeRaftCluster) -> None:
    cluster = make_cluster(1)
    node = cluster.nodes[0]
    node.env["ESDB_TEST_FAIL_APPLY_AFTER"] = "3"
    node.start()
    wait_for(lambda: node.status()["role"] == "leader", timeout=15, what="single node leads")
    with pytest.raises(NodeDied):
        node.request("append", count=6, events=1, timeout=30)
    node.kill()
    assert node.exit_code == 70
    log = node.log_path.read_text()
    assert "stopping the node (exit 70)" in log
    assert "injected: No space left on device" in log


def test_one_way_partition_old_leader_hears_but_cannot_speak(make_cluster: MakeRaftCluster) -> None:
    cluster = make_cluster(3).start()
    old = cluster.leader()
    others = [n for n in cluster.nodes if n is not old]
    old.request("partition", drop_in=[], drop_out=[n.addr for n in others])
    assert old.status()["partition_out"] == sorted(n.addr for n in others)
    new = cluster.leader(among=others, timeout=10)
    # It still receives: it sees the new term and follows the new leader, acking nothing.
    wait_for(
        lambda: old.status()["leader"] == new.addr, timeout=10, what="the old leader to follow"
    )
    res = new.request("append", count=10, events=1)
    assert res["applied"] == 10
    old.request("partition", drop_in=[], drop_out=[])
    assert_has_all(cluster.nodes, set(res["acked"]))
