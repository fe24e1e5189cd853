"""HTTP on a real 3-node cluster: readiness follows the quorum, metrics follow Raft, /cluster
is the snapshot the CLI prints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from esdb_node.model import EventData
from tests.harness import Cluster, free_port, loopback, wait_for
from tests.http.support import request

pytestmark = pytest.mark.cluster


def http_cluster(directory: Path) -> Cluster:
    cluster = Cluster.create(directory, nodes=3)
    for node in list(cluster.local.nodes):
        cluster.local.replace_node(replace(node, http=loopback(free_port())))
    cluster.start()
    return cluster


def http_url(cluster: Cluster, node_id: str) -> str:
    return f"http://{cluster.node(node_id).http}"


def test_readiness_turns_503_when_quorum_is_lost_and_200_after(tmp_path: Path) -> None:
    cluster = http_cluster(tmp_path / "c")

    def all_ready() -> bool:
        return all(
            request(http_url(cluster, n) + "/health/ready").status == 200 for n in cluster.ids
        )

    wait_for(all_ready, timeout=30, what="every member ready")
    leader = cluster.wait_leader()
    survivor = cluster.followers(leader)[0]
    others = [n for n in cluster.ids if n != survivor]
    cluster.kill(*others)
    ready_url = http_url(cluster, survivor) + "/health/ready"

    def not_ready() -> dict[str, object] | None:
        reply = request(ready_url)
        return reply.json() if reply.status == 503 else None

    body = wait_for(not_ready, timeout=30, what=f"{survivor} to report not ready")
    assert body["ready"] is False and body["failed"] == "leader"
    assert request(http_url(cluster, survivor) + "/health/live").status == 200
    snap = request(http_url(cluster, survivor) + "/cluster").json()
    assert snap["quorum"] == "lost" and snap["up"] == 1 and snap["total"] == 3
    for node_id in others:
        cluster.start_node(node_id)
    wait_for(lambda: request(ready_url).status == 200, timeout=60, what=f"{survivor} ready again")
    assert request(ready_url).json()["failed"] is None


def test_cluster_metrics_follow_raft_and_writes(tmp_path: Path) -> None:
    cluster = http_cluster(tmp_path / "c")
    leader = cluster.wait_leader()
    with cluster.client() as client:
        for i in range(4):
            client.append("c-1", [EventData.from_json("T", {"i": i})])
    text = request(http_url(cluster, leader) + "/metrics").body.decode()
    assert 'esdb_role{role="leader"} 1.0' in text
    assert "esdb_is_leader 1.0" in text
    term = float(next(line.split()[1] for line in text.splitlines() if line.startswith(
        "esdb_raft_term ")))  # fmt: skip
    assert term >= 1
    assert 'esdb_disk_bytes{file="raft_journal"}' in text
    follower = cluster.followers(leader)[0]
    follower_text = request(http_url(cluster, follower) + "/metrics").body.decode()
    assert 'esdb_role{role="follower"} 1.0' in follower_text

    def applied(node_id: str) -> float:
        page = request(http_url(cluster, node_id) + "/metrics").body.decode()
        return float(next(
            line.split()[1] for line in page.splitlines()
            if line.startswith("esdb_raft_applied_index ")
        ))  # fmt: skip

    before = applied(follower)
    with cluster.client() as client:
        client.append("c-1", [EventData.from_json("T", {"i": 9})])
    wait_for(lambda: applied(follower) > before, timeout=20, what="applied index to move")
    # A follower refuses a write over HTTP with the CLI's not_leader code
    reply = request(
        http_url(cluster, follower) + "/streams/c-1", "POST", [{"type": "T", "data": 1}]
    )
    assert reply.status == 503 and reply.json()["error"]["code"] == "not_leader"
    assert reply.json()["error"]["leader_url"] == cluster.url(leader)
    # and serves local reads
    page = request(http_url(cluster, follower) + "/streams/c-1?consistency=local")
    assert page.status == 200 and len(page.json()["events"]) == 5
    # leader changes are counted where they are seen
    cluster.kill(leader)
    wait_for(
        lambda: (
            "esdb_leader_changes_total 1.0"
            in request(http_url(cluster, follower) + "/metrics").body.decode()
        ),
        timeout=30,
        what="the follower to count the leader change",
    )
