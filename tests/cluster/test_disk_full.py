"""A leader whose disk fills cannot make its journal durable: it steps down, another member
leads, no acknowledged write is lost, and the full member catches up once space is back.
Root only (its data directory is a loop-mounted ext4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from esdb_node.model import EventData
from tests import diskfull
from tests.harness import Cluster, MakeCluster, wait_for

pytestmark = pytest.mark.cluster


def test_a_leader_with_a_full_disk_steps_down_and_catches_up_after(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster = make_cluster(start=False)
    full = "n1"
    with diskfull.small_disk(Path(cluster.node(full).data_dir), 32) as disk:
        try:
            _full_leader(cluster, full, disk)
        finally:
            cluster.close()  # nothing may keep the disk busy when it is unmounted


def _full_leader(cluster: Cluster, full: str, disk: Path) -> None:
    cluster.start()
    secret = cluster.local.secret
    with cluster.client() as client:
        if cluster.wait_leader() != full:
            client.stepdown(secret, to=full)
        wait_for(lambda: cluster.wait_leader() == full, timeout=30, what=f"{full} to lead")
        for i in range(5):
            client.append("before", EventData.from_json("E", {"i": i}))
    filler = diskfull.fill(disk)
    try:
        # Big enough that LMDB must grow its files (writes into pages it already has
        # would still succeed on a full disk).
        pad = "x" * 100_000
        acked = []
        with cluster.client(timeout=30) as client:
            for i in range(20):
                event = EventData.from_json("E", {"i": i, "pad": pad})
                acked.append(client.append("during", event))
        others = [n for n in cluster.ids if n != full]
        leader = cluster.wait_leader(among=others, timeout=30)
        assert leader != full
        st = cluster.status(full)
        assert st.storage == "full" and st.role != "leader", st
        assert "stepping down" in cluster.log_text(full) or st.term > 1
    finally:
        filler.unlink()
    cluster.wait_converged(timeout=60)
    assert cluster.status(full).storage == "ok"
    for node in cluster.ids:
        events = cluster.read_local(node, "during")
        assert [e.json()["i"] for e in events] == list(range(20)), node
    assert [r.first_version for r in acked] == list(range(20))
