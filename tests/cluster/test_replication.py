"""Replication through real node processes: every node ends up with the same streams, a
restarted follower catches up, and a new node receives a large store through a snapshot."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from esdb_node.model import EventData
from tests.harness import FAST, Cluster, MakeCluster, wait_for

pytestmark = pytest.mark.cluster

# As large as CI time allows: ~18 s to write and ~7 s to transfer 256 MiB on this machine.
SNAPSHOT_MB = int(os.environ.get("ESDB_TEST_SNAPSHOT_MB", "256"))
COMPACTION_ENTRIES = 200


def ev(n: int, event_type: str = "Happened") -> EventData:
    return EventData.from_json(event_type, {"n": n})


def test_appends_via_leader_and_follower_are_on_every_node(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    follower = cluster.followers(leader)[0]
    # Redirects rely on a follower knowing the leader's client URL.
    assert cluster.status(follower).leader_url == cluster.url(leader)

    a = [ev(i, "ViaLeader") for i in range(5)]
    b = [ev(i, "ViaFollower") for i in range(4)]
    with cluster.client(leader) as c:
        r_a = c.append("repl-a", a, expected_version="no-stream")
    with cluster.client(follower) as c:  # only the follower's URL: must follow not_leader
        r_b = c.append("repl-b", b, expected_version="no-stream")
        r_a2 = c.append("repl-a", ev(5, "ViaFollower"), expected_version=r_a.last_version)
    assert (r_a.first_version, r_a.last_version, r_b.last_version) == (0, 4, 3)
    assert r_a2.first_version == 5

    cluster.wait_converged()
    for node in cluster.ids:
        stream_a = cluster.read_local(node, "repl-a")
        stream_b = cluster.read_local(node, "repl-b")
        assert [(e.id, e.type, e.data) for e in stream_a[:5]] == [
            (e.id, e.type, e.data) for e in a
        ], node
        assert [e.type for e in stream_a[5:]] == ["ViaFollower"], node
        assert [e.version for e in stream_a] == list(range(6)), node
        assert [(e.id, e.type, e.data) for e in stream_b] == [(e.id, e.type, e.data) for e in b]
    # Identical down to positions and commit timestamps (assigned once, by the leader).
    copies = {
        n: [(e.position, e.id, e.created) for e in cluster.read_all_local(n)] for n in cluster.ids
    }
    assert len({tuple(v) for v in copies.values()}) == 1, copies


def test_follower_killed_and_restarted_catches_up(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    down = cluster.followers(leader)[0]
    alive = [n for n in cluster.ids if n != down]
    with cluster.client() as c:
        c.append("before", [ev(i) for i in range(10)])
    cluster.kill(down)

    written = []
    with cluster.client(*alive) as c:
        for i in range(40):
            batch = [ev(i * 50 + k) for k in range(50)]
            c.append(f"while-down-{i % 4}", batch)
            written += [e.id for e in batch]

    cluster.start_node(down)
    t0 = time.monotonic()
    last = cluster.wait_converged(timeout=60)
    print(f"follower caught up {len(written)} events in {time.monotonic() - t0:.2f}s")
    assert last == 10 + len(written) - 1
    reference = [(e.position, e.stream, e.id) for e in cluster.read_all_local(leader)]
    restarted = [(e.position, e.stream, e.id) for e in cluster.read_all_local(down)]
    assert restarted == reference
    assert [i for _, s, i in restarted if s.startswith("while-down")] == written


def test_new_node_receives_a_large_store_through_a_snapshot(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(settings={**FAST, "compaction_entries": COMPACTION_ENTRIES})
    blob = os.urandom(64 << 10)
    ids: list[uuid.UUID] = []

    t0 = time.monotonic()
    with cluster.client(timeout=60) as c:
        for i in range(SNAPSHOT_MB):  # 16 x 64 KiB events: 1 MiB per append (one raft entry)
            batch = [EventData("Big", blob, is_json=False) for _ in range(16)]
            c.append(f"big-{i % 8}", batch)
            ids += [e.id for e in batch]
        # More entries than the compaction threshold, so the log no longer starts at the
        # big entries: a new member can only get them from a snapshot.
        for i in range(COMPACTION_ENTRIES + 50):
            event = ev(i, "Small")
            c.append("small", event)
            ids.append(event.id)
    write_s = time.monotonic() - t0
    leader = cluster.wait_leader()
    wait_for(
        lambda: "raft snapshot: wrote dump" in cluster.log_text(leader),
        timeout=120,
        what="the leader's log compaction (dump)",
        interval=0.2,
    )
    store_mb = sum(f.stat().st_size for f in (cluster.local.dir / leader / "store").iterdir()) / (
        1 << 20
    )

    t1 = time.monotonic()
    cluster.add_node("n4")
    head = cluster.status(leader).last_position
    wait_for(
        lambda: cluster.status("n4").last_position == head,
        timeout=180,
        what="n4 to catch up",
        interval=0.2,
    )
    join_s = time.monotonic() - t1
    log4 = cluster.log_text("n4")
    assert "raft snapshot: installed image" in log4, "n4 caught up without a snapshot"
    assert "(local store was at 0)" in log4

    # Every event, in order, with its bytes, on the new node (streamed, not held in memory).
    t2 = time.monotonic()
    got_ids = []
    with cluster.client("n4", timeout=120) as c:
        for e in c.iter_all(consistency="local"):
            got_ids.append(e.id)
            if e.type == "Big":
                assert e.data == blob, f"event {e.id} at {e.position} has other bytes"
    verify_s = time.monotonic() - t2
    assert got_ids[: len(ids)] == ids

    # And it is a working member: it applies what is committed after the snapshot.
    with cluster.client() as c:
        after = c.append("after-join", ev(0))
    wait_for(
        lambda: [e.id for e in cluster.read_local("n4", "after-join")] != [],
        timeout=30,
        what="n4 to apply an append made after it joined",
    )
    assert after.first_version == 0
    assert sorted(cluster.status(leader).members) == ["n1", "n2", "n3", "n4"]
    print(
        f"\nsnapshot test: wrote {SNAPSHOT_MB} MiB of events in {write_s:.1f}s; leader store "
        f"{store_mb:.0f} MiB; n4 joined and caught up in {join_s:.1f}s; "
        f"verified {len(got_ids)} events in {verify_s:.1f}s"
    )
