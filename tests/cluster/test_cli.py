"""`esdb cluster ...` end to end against real clusters: JSON shapes of docs/cluster.md, exit
codes, and membership changes (remove, add, stepdown)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from esdb_cli import local
from esdb_cli.localcluster import LocalCluster
from tests.cli_runner import Esdb, Run
from tests.harness import (
    FAST,
    SECRET,
    Cluster,
    PortClash,
    free_port,
    port_clash,
    retry_on_port_clash,
    wait_for,
    wait_gone,
)

pytestmark = pytest.mark.cluster

STATUS_KEYS = {"id", "role", "url", "pid", "term", "commit_index", "applied_index", "reachable"}
MEMBER_KEYS = {"id", "url", "raft", "found_by", "last_seen"}
FAST_SET = [f"--set={key}={value}" for key, value in FAST.items()]


def _recent(stamp: str, within_s: float = 60.0) -> bool:
    seen = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return abs((datetime.now(UTC) - seen).total_seconds()) < within_s


def test_cluster_up_status_health_leader_members_down(
    tmp_path: Path, esdb: Esdb, adopt: Callable[[Path], Cluster]
) -> None:
    d = tmp_path / "cli-cluster"

    def up_on_free_ports() -> tuple[Run, Cluster]:
        try:
            up = esdb("cluster", "up", "--dir", d, "--nodes", "3", *FAST_SET)
        finally:
            if (d / "cluster.json").exists():
                cluster = adopt(d)  # reaped by PID at teardown, whatever happens below
        if up.code != 0 and port_clash(up.err):  # a port taken meanwhile: all again
            cluster.close()
            shutil.rmtree(d)
            raise PortClash(up.err)
        return up, cluster

    up, cluster = retry_on_port_clash(up_on_free_ports, what="esdb cluster up")
    assert up.code == 0, up.err
    assert f"use --cluster-dir {d}" in up.err and "n1" in up.out  # talk on stderr, rows on stdout

    r = esdb("--cluster-dir", d, "cluster", "status", "--json")
    assert r.code == 0, r.err
    status = r.json()
    assert {"leader", "term", "nodes"} <= status.keys()
    assert [n["id"] for n in status["nodes"]] == ["n1", "n2", "n3"], status
    for row in status["nodes"]:
        assert row.keys() >= STATUS_KEYS, row
        assert row["reachable"] is True and row["url"] == cluster.url(row["id"])
        assert row["pid"] == cluster.pid(row["id"])
        assert row["applied_index"] <= row["commit_index"]
    roles = sorted(n["role"] for n in status["nodes"])
    assert roles == ["follower", "follower", "leader"]
    leader = status["leader"]
    assert next(n for n in status["nodes"] if n["role"] == "leader")["id"] == leader
    assert status["term"] >= 1

    r = esdb("--cluster-dir", d, "cluster", "health")
    assert r.code == 0, r.err
    assert r.out.count("is healthy") == 3, r.out

    r = esdb("--cluster-dir", d, "cluster", "leader", "--json")
    assert r.code == 0 and r.json()["id"] == leader and r.json()["url"] == cluster.url(leader)

    r = esdb("--cluster-dir", d, "cluster", "members", "--json")
    assert r.code == 0, r.err
    members = r.json()["members"]
    assert sorted(m["id"] for m in members) == ["n1", "n2", "n3"]
    for m in members:
        assert m.keys() >= MEMBER_KEYS, m
        assert m["raft"] == cluster.node(m["id"]).raft and m["url"] == cluster.url(m["id"])
        assert m["found_by"] in ("self", "static") and _recent(m["last_seen"]), m

    # One node down: health prints every row, then fails with exit 5.
    down = next(n for n in cluster.ids if n != leader)
    cluster.kill(down)
    r = esdb("--cluster-dir", d, "cluster", "health")
    assert r.code == 5, (r.code, r.out, r.err)
    lines = r.out.strip().splitlines()
    assert len(lines) == 3, r.out
    assert sum("is healthy" in line for line in lines) == 2
    assert f"({down}) is unhealthy" in r.out
    assert "1 of 3 nodes unhealthy" in r.err
    r = esdb("--cluster-dir", d, "cluster", "status", "--json")
    assert r.code == 0, r.err
    row = next(n for n in r.json()["nodes"] if n["id"] == down)
    assert row["reachable"] is False and row["role"] == "unreachable"

    pids = [cluster.pid(n) for n in cluster.ids if n != down]
    r = esdb("cluster", "down", "--dir", d, "--purge")
    assert r.code == 0, r.err
    assert not d.exists()
    for pid in pids:
        wait_gone(pid, timeout=5)
        assert not local.is_node_process(pid)


def test_remove_add_and_stepdown_through_the_cli(cluster: Cluster, esdb: Esdb) -> None:
    d = str(cluster.local.dir)
    old_leader = cluster.wait_leader()

    gone = cluster.followers(old_leader)[0]
    gone_pid = cluster.pid(gone)
    gone_raft = cluster.node(gone).raft
    r = esdb("--cluster-dir", d, "--json", "cluster", "remove", gone)
    assert r.code == 0, r.err
    cluster.track()
    # node ids, not raft addresses (the raft address is there too)
    assert r.json()["removed"] == gone and r.json()["raft"] == gone_raft
    assert r.json()["members"] == sorted(cluster.ids)
    assert gone not in cluster.ids and not local.is_node_process(gone_pid)
    r = esdb("--cluster-dir", d, "cluster", "members", "--json")
    assert sorted(m["id"] for m in r.json()["members"]) == sorted(cluster.ids)
    assert len(cluster.ids) == 2
    # Two members: both are needed for a majority, and they have it.
    r = esdb("--cluster-dir", d, "append", "members-2", "--type", "T", "--data", '{"n": 2}')
    assert r.code == 0, r.err
    cluster.wait_converged()
    for n in cluster.ids:
        assert len(cluster.read_local(n, "members-2")) == 1, n

    r = esdb("--cluster-dir", d, "--json", "cluster", "add")
    assert r.code == 0, r.err
    cluster.track()
    added = r.json()["id"]
    assert added in cluster.ids and len(cluster.ids) == 3
    cluster.wait_registered()
    cluster.wait_converged()
    assert len(cluster.read_local(added, "members-2")) == 1

    def members_seen() -> dict[str, dict[str, object]] | None:
        r = esdb("--cluster-dir", d, "cluster", "members", "--json")
        members = {m["id"]: m for m in r.json()["members"]}
        # A member just added is "last seen" once the answering node samples it (each second).
        return members if all(m["last_seen"] for m in members.values()) else None

    members = wait_for(members_seen, timeout=15, what="every member to have been seen")
    assert sorted(members) == sorted(cluster.ids)
    assert all(_recent(str(m["last_seen"])) for m in members.values()), members
    assert members[added]["found_by"] == "join", members[added]
    r = esdb("--cluster-dir", d, "append", "members-3", "--type", "T", "--data", '{"n": 3}')
    assert r.code == 0, r.err

    leader = cluster.wait_leader()
    t0 = time.monotonic()
    r = esdb("--cluster-dir", d, "--json", "cluster", "stepdown")
    assert r.code == 0, r.err
    assert r.json()["old_leader"] == leader
    assert r.json()["new_leader"] in cluster.ids and r.json()["new_leader"] != leader
    assert f"leadership moved from {leader} to {r.json()['new_leader']}" in r.err
    new_leader = cluster.wait_leader(timeout=15)
    assert new_leader != leader
    r = esdb("--cluster-dir", d, "cluster", "leader", "--json")
    assert r.code == 0 and r.json()["id"] == new_leader
    append = ("--cluster-dir", d, "append", "after-stepdown", "--type", "T", "--data", "{}")
    wait_for(
        lambda: esdb(*append).code == 0,
        timeout=15,
        what="an append after the stepdown",
    )
    print(f"\nstepdown to {new_leader} took {time.monotonic() - t0:.2f}s")


def test_status_asked_of_one_follower_lists_every_member_and_the_leader(
    cluster: Cluster, esdb: Esdb
) -> None:
    """The view is built from the replicated registry, not from the URLs the caller knows."""
    leader = cluster.wait_leader()
    follower = cluster.followers(leader)[0]
    for command in (["cluster", "status", "--json"], ["cluster", "leader", "--json"]):
        r = esdb("--url", cluster.url(follower), *command)
        assert r.code == 0, r.err
        doc = r.json()
        if command[1] == "leader":
            assert doc["id"] == leader and doc["url"] == cluster.url(leader)
            continue
        assert doc["leader"] == leader and doc["quorum"] == "healthy", doc
        assert sorted(n["id"] for n in doc["nodes"]) == sorted(cluster.ids)
        assert all(n["reachable"] and n["url"] == cluster.url(n["id"]) for n in doc["nodes"])
    r = esdb("--url", cluster.url(follower), "cluster", "health")
    assert r.code == 0 and r.out.count("is healthy") == len(cluster.ids), r.out


def test_cluster_up_add_down_use_the_cluster_dir_from_flag_and_env(
    tmp_path: Path,
    esdb: Esdb,
    adopt: Callable[[Path], Cluster],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the README does it: `export ESDB_CLUSTER_DIR=demo`, then `cluster down` with no
    --dir. Nothing may land in ./esdb-cluster."""
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "demo"
    try:
        up = esdb("cluster", "up", "--cluster-dir", d, "--nodes", "1", *FAST_SET)
    finally:
        if (tmp_path / "esdb-cluster" / "cluster.json").exists():  # --cluster-dir ignored
            adopt(tmp_path / "esdb-cluster")
        if (d / "cluster.json").exists():
            cluster = adopt(d)
    assert up.code == 0, up.err
    monkeypatch.setenv("ESDB_CLUSTER_DIR", str(d))
    again = esdb("cluster", "up", "--nodes", "5", "--secret", "another-secret-42")
    assert again.code == 0, again.err
    assert "ignoring --nodes, --secret" in again.err and "esdb cluster add" in again.err
    assert "all nodes already running" in again.err
    assert len(LocalCluster.load(d).nodes) == 1
    r = esdb("cluster", "add", "--json")
    assert r.code == 0, r.err
    cluster.track()
    assert sorted(cluster.ids) == ["n1", r.json()["id"]]
    pids = [cluster.pid(n) for n in cluster.ids]
    r = esdb("cluster", "down")
    assert r.code == 0, r.err
    assert "stopped n1, n2" in r.err
    for pid in pids:
        wait_gone(pid, timeout=5)
    assert not (tmp_path / "esdb-cluster").exists()


def test_detached_join_reports_a_refused_join_then_joins(
    cluster: Cluster, esdb: Esdb, tmp_path: Path, detached: list[Path]
) -> None:
    """`node start --detach --join` returns 0 only once the node has joined; a wrong secret
    prints the node's own error and its exit code, and leaves nothing that would stop the
    corrected start from joining."""
    leader = cluster.wait_leader()
    data = tmp_path / "joiner"
    detached.append(data)
    start = [
        "node", "start", "--detach", "-D", data, "--join", cluster.url(leader),
        "--store-id", "ctest", "--listen", f"127.0.0.1:{free_port()}",
        "--raft", f"127.0.0.1:{free_port()}",
    ]  # fmt: skip
    r = esdb(*start, "--secret", "not-the-cluster-secret")
    assert r.code == 2, (r.code, r.err)
    assert "wrong cluster secret" in r.err and "running in the background" not in r.err
    assert local.running_pid(data) is None and not (data / "raft").exists()
    r = esdb(*start, "--secret", SECRET, "--json")
    assert r.code == 0, r.err
    joined = r.json()["node_id"]
    assert "is in the cluster" in r.err and r.json()["leader_id"] is not None
    r = esdb("--url", cluster.url(leader), "cluster", "members", "--json")
    assert joined in {m["id"] for m in r.json()["members"]}, r.out


def test_a_fault_that_leaves_no_majority_says_so_at_once(cluster: Cluster, esdb: Esdb) -> None:
    d = str(cluster.local.dir)
    cluster.wait_leader()
    started = time.monotonic()
    r = esdb("--cluster-dir", d, "--json", "chaos", "partition", "n1", "n2", "n3")
    elapsed = time.monotonic() - started
    assert r.code == 0, r.err
    assert "no leader can be elected until healed" in r.err, r.err
    assert r.json()["majority"] is False and r.json()["recovery_s"] is None
    assert elapsed < 15, elapsed  # it used to wait out the 20 s recovery probe silently
    r = esdb("--cluster-dir", d, "chaos", "heal")
    assert r.code == 0, r.err
    assert "recovered in" in r.err, r.err
