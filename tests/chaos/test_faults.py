"""Faults against a real 3-node cluster: partitions really stop Raft traffic (in the
direction asked), heal brings the nodes back together, and every `esdb chaos` fault
command reports what it did between two health checks, with the documented exit codes."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

import pytest

from esdb_cli import local
from esdb_cli.chaos.faults import (
    ChaosEnv,
    ClockSkew,
    DiskFull,
    FaultReport,
    Heal,
    Kill,
    Partition,
    Pause,
    Restart,
    Resume,
    SlowDisk,
    is_stopped,
    run_fault,
)
from esdb_cli.localcluster import LocalCluster
from esdb_node.client import Client
from esdb_node.errors import EsdbError, NotLeader, StreamNotFound, Timeout, UnknownOutcome
from esdb_node.model import EventData
from tests.chaos.support import status_of, wait_converged
from tests.cli_runner import Run
from tests.harness import NodeProc, wait_for

REPORT_KEYS = {
    "action",
    "target",
    "at",
    "leader_before",
    "leader_after",
    "recovery_s",
    "health_before",
    "health_after",
    "detail",
}


def _event(i: int) -> EventData:
    return EventData.from_json("Probe", {"i": i})


def _urls(c: LocalCluster, ids: list[str]) -> str:
    return ",".join(c.node(i).url for i in ids)


def _assert_side_frozen(
    c: LocalCluster, minority: str, majority: list[str], appends: int = 15
) -> None:
    """While `minority` is cut off, the majority commits `appends` entries through a client
    that only knows the majority, and the minority's commit index never moves."""
    frozen = status_of(c, minority).commit_index
    start = status_of(c, majority[0]).commit_index
    with Client(_urls(c, majority), timeout=15) as client:
        for i in range(appends):
            client.append(f"majority-{minority}", _event(i))
            assert status_of(c, minority).commit_index == frozen, (
                f"{minority} committed while cut off"
            )
    # majority[0] may be a follower: it learns the commit index with the leader's next message
    wait_for(
        lambda: status_of(c, majority[0]).commit_index >= start + appends,
        timeout=10,
        what=f"{majority[0]} to see the majority's commits",
    )
    assert status_of(c, minority).commit_index == frozen


# --- partitions through the transport hook -------------------------------------------------


@pytest.mark.cluster
def test_isolated_leader_commits_nothing_while_the_majority_does(cluster: LocalCluster) -> None:
    env = ChaosEnv(cluster)
    leader = cluster.wait_leader(30).node_id
    majority = sorted(n.id for n in cluster.nodes if n.id != leader)

    report = run_fault(env, Partition([[leader]]), recovery_timeout=30)

    assert report.target == f"{leader} | {','.join(majority)}"
    assert report.leader_before == leader
    # A probe append invoked after the cut was acknowledged: the majority elected a leader.
    assert report.recovery_s is not None and 0 < report.recovery_s < 30
    old = cluster.node(leader)
    with Client(old.url, timeout=2, connect_timeout=1) as direct:
        # At first the old leader may still believe it leads: the write must hang, not ack.
        with pytest.raises((NotLeader, UnknownOutcome)):
            direct.append("stale-leader", _event(0))
        wait_for(
            lambda: status_of(cluster, leader).role != "leader",
            timeout=20,
            what=f"{leader} to step down without a majority",
        )
        with pytest.raises(NotLeader):
            direct.append("stale-leader", _event(1))
        with pytest.raises(EsdbError):  # no linearizable read without a majority
            direct.read_stream("stale-leader", consistency="leader")
    _assert_side_frozen(cluster, leader, majority)
    # a local read from the cut-off node is stale, never invented
    with Client(old.url, timeout=3, consistency="local") as direct, pytest.raises(StreamNotFound):
        direct.read_stream(f"majority-{leader}", consistency="local")

    heal = run_fault(env, Heal(), recovery_timeout=30)
    assert heal.action == "heal" and heal.recovery_s is not None
    statuses = wait_converged(cluster)
    assert {s.node_id for s in statuses} == {n.id for n in cluster.nodes}
    finals = {}
    for node in cluster.nodes:
        with Client(node.url, timeout=5, consistency="local") as client:
            finals[node.id] = [e.id for e in client.read_stream(f"majority-{leader}")]
            # What only the cut-off old leader ever saw was not committed: it is gone.
            with pytest.raises(StreamNotFound):
                client.read_stream("stale-leader", consistency="local")
    assert len(finals[leader]) == 15
    assert all(ids == finals[leader] for ids in finals.values())


@pytest.mark.cluster
def test_one_way_partition_drops_only_the_direction_asked(cluster: LocalCluster) -> None:
    """`--one-way F L` (F's messages to the leader L dropped): L keeps leading with the third
    node, F still receives and applies the log, and L never hears F's progress."""
    env = ChaosEnv(cluster)
    leader = cluster.wait_leader(30)
    follower = sorted(n.id for n in cluster.nodes if n.id != leader.node_id)[0]

    def match_index() -> dict[str, int | None]:
        lead = cluster.node(leader.node_id)
        with Client(lead.url, timeout=3) as client:
            members = client.members(lead.url)
        return {m.node_id: m.match_index for m in members}

    report = run_fault(env, Partition([[follower], [leader.node_id]], one_way=True))
    assert report.target == f"{follower} | {leader.node_id}"
    assert report.detail == "one-way raft partition"
    frozen = match_index()[follower]
    before = status_of(cluster, follower).commit_index
    with Client(cluster.urls, timeout=10) as client:
        for i in range(15):
            client.append("one-way", _event(i))
    # A follower learns the commit index with the leader's next message (a heartbeat at the
    # latest), so wait for it rather than read it the instant the last append was acked.
    wait_for(
        lambda: status_of(cluster, follower).commit_index >= before + 15,
        timeout=10,
        what="the cut-off follower to keep receiving the leader's log",
    )
    after = status_of(cluster, follower)
    assert after.leader_id == leader.node_id and after.term == leader.term
    assert match_index()[follower] == frozen, "the leader heard from the cut-off follower"
    assert status_of(cluster, leader.node_id).term == leader.term  # no election happened

    run_fault(env, Heal())
    wait_for(
        lambda: match_index()[follower] == status_of(cluster, leader.node_id).commit_index,
        timeout=30,
        what="the leader to hear the follower again",
    )
    wait_converged(cluster)


@pytest.mark.cluster
def test_one_way_partition_from_the_leader_starves_the_follower(cluster: LocalCluster) -> None:
    """`--one-way L F`: F hears nothing, commits nothing and keeps calling elections
    (terms rise); the other two keep committing; after heal F catches up."""
    env = ChaosEnv(cluster)
    leader = cluster.wait_leader(30)
    follower = sorted(n.id for n in cluster.nodes if n.id != leader.node_id)[0]
    others = sorted(n.id for n in cluster.nodes if n.id != follower)
    run_fault(env, Partition([[leader.node_id], [follower]], one_way=True))
    _assert_side_frozen(cluster, follower, others)
    wait_for(
        lambda: status_of(cluster, follower).term > leader.term,
        timeout=20,
        what=f"{follower} to call an election",
    )
    run_fault(env, Heal())
    wait_converged(cluster)


# --- the `esdb chaos` fault commands ----------------------------------------------------------


def _json_report(r: Run) -> dict[str, object]:
    assert r.code == 0, r.err
    report = r.json()
    assert set(report) >= REPORT_KEYS
    datetime.fromisoformat(str(report["at"]).replace("Z", "+00:00"))
    return dict(report)


def _table_report(r: Run) -> dict[str, str]:
    assert r.code == 0, r.err
    rows = {}
    for line in r.out.splitlines():
        key, _, value = line.partition(" ")
        rows[key] = value.strip()
    assert set(rows) >= REPORT_KEYS, r.out
    return rows


def _reachable(health: object) -> set[str]:
    text = str(health)
    assert "reachable " in text, text
    return set(text.split("reachable ", 1)[1].split(","))


@pytest.mark.cluster
def test_cli_kill_leader_then_heal(cluster: LocalCluster, esdb: Callable[..., Run]) -> None:
    d = str(cluster.dir)
    leader = cluster.wait_leader(30).node_id
    pid = cluster.running_pid(cluster.node(leader))
    assert pid is not None

    r = esdb("--cluster-dir", d, "--json", "chaos", "kill", "--leader")

    report = _json_report(r)
    assert report["action"] == "kill"
    assert report["target"] == report["leader_before"] == leader
    assert report["leader_after"] not in (None, leader)
    assert isinstance(report["recovery_s"], float) and 0 < report["recovery_s"] < 30
    assert report["detail"] == f"SIGKILL pid {pid}"
    assert _reachable(report["health_before"]) == {"n1", "n2", "n3"}
    assert _reachable(report["health_after"]) == {"n1", "n2", "n3"} - {leader}
    assert not local.is_node_process(pid)
    assert f"kill {leader}: SIGKILL pid {pid}; recovered in" in r.err

    r = esdb("--cluster-dir", d, "chaos", "heal")

    rows = _table_report(r)
    assert rows["action"] == "heal" and rows["target"] == "all"
    assert rows["detail"] == f"started {leader}"
    assert _reachable(rows["health_after"]) == {"n1", "n2", "n3"}
    reloaded = LocalCluster.load(cluster.dir)
    assert reloaded.running_pid(reloaded.node(leader)) not in (None, pid)
    wait_converged(reloaded)


@pytest.mark.cluster
def test_cli_pause_resume_restart(cluster: LocalCluster, esdb: Callable[..., Run]) -> None:
    d = str(cluster.dir)
    leader = cluster.wait_leader(30).node_id
    follower = sorted(n.id for n in cluster.nodes if n.id != leader)[0]
    pid = cluster.running_pid(cluster.node(follower))
    assert pid is not None

    # The table and JSON reports of one fault: the same keys, values as text or JSON.
    report: Mapping[str, object] = _table_report(
        esdb("--cluster-dir", d, "chaos", "pause", follower)
    )
    assert report["action"] == "pause" and report["target"] == follower
    assert report["detail"] == f"SIGSTOP pid {pid}"
    assert report["leader_after"] == leader  # a paused follower costs no election
    assert is_stopped(pid)

    report = _json_report(esdb("--cluster-dir", d, "--json", "chaos", "resume", follower))
    assert report["action"] == "resume" and report["detail"] == f"SIGCONT pid {pid}"
    assert local.is_node_process(pid) and not is_stopped(pid)

    # A pause made by one command is undone by `heal` in another (state comes from /proc).
    esdb("--cluster-dir", d, "chaos", "pause", follower)
    report = _json_report(esdb("--cluster-dir", d, "--json", "chaos", "heal"))
    assert report["detail"] == f"resumed {follower}"
    assert local.is_node_process(pid) and not is_stopped(pid)

    report = _json_report(esdb("--cluster-dir", d, "--json", "chaos", "restart", "--leader"))
    assert report["action"] == "restart" and report["target"] == leader
    assert report["detail"] == "SIGTERM + start"
    assert report["recovery_s"] is not None
    reloaded = LocalCluster.load(cluster.dir)
    assert _reachable(report["health_after"]) == {"n1", "n2", "n3"}
    assert reloaded.running_pid(reloaded.node(leader)) is not None
    wait_converged(reloaded)


@pytest.mark.cluster
def test_cli_partitions_cut_raft_and_heal(cluster: LocalCluster, esdb: Callable[..., Run]) -> None:
    d = str(cluster.dir)

    report = _json_report(
        esdb("--cluster-dir", d, "--json", "chaos", "partition", "--isolate", "n1")
    )
    assert report["action"] == "partition"
    assert report["target"] == "n1 | n2,n3"
    assert report["detail"] == "two-way raft partition"
    _assert_side_frozen(cluster, "n1", ["n2", "n3"])
    report = _json_report(esdb("--cluster-dir", d, "--json", "chaos", "heal"))
    assert report["detail"] == "partitions cleared"
    wait_converged(cluster)

    rows = _table_report(esdb("--cluster-dir", d, "chaos", "partition", "n1,n2", "n3"))
    assert rows["target"] == "n1,n2 | n3"
    _assert_side_frozen(cluster, "n3", ["n1", "n2"])
    esdb("--cluster-dir", d, "chaos", "heal")
    wait_converged(cluster)  # n3 included: same applied index and log as the others

    report = _json_report(
        esdb("--cluster-dir", d, "--json", "chaos", "partition", "--one-way", "n1", "n2")
    )
    assert report["target"] == "n1 | n2" and report["detail"] == "one-way raft partition"
    esdb("--cluster-dir", d, "chaos", "heal")
    wait_converged(cluster)


# --- exit codes (no running nodes needed) ---------------------------------------------------


@pytest.fixture
def stopped_cluster(tmp_path: Path) -> LocalCluster:
    """A cluster.json whose nodes are not running: enough to resolve names."""
    return LocalCluster.create(
        tmp_path / "stopped",
        nodes=3,
        base_port=None,
        secret=None,
        store_id="chaos-test",
        durability="fsync",
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["chaos", "kill", "n9"], 7, "no node 'n9'"),
        (["chaos", "pause", "n9"], 7, "no node 'n9'"),
        (["chaos", "resume", "n9"], 7, "no node 'n9'"),
        (["chaos", "restart", "n9"], 7, "no node 'n9'"),
        (["chaos", "partition", "--isolate", "n9"], 7, "no node 'n9'"),
        (["chaos", "partition", "n1,n9", "n3"], 7, "no node 'n9'"),
        (["chaos", "kill", "n1"], 7, "n1 is not running"),
        (["chaos", "kill"], 2, "name exactly one target"),
        (["chaos", "kill", "n1", "--leader"], 2, "name exactly one target"),
        (["chaos", "pause"], 2, "name exactly one target"),
        (["chaos", "kill", "n1", "--signal", "HUP"], 2, "--signal must be KILL or TERM"),
        (["chaos", "partition"], 2, "name at least two sides"),
        (["chaos", "partition", "n1"], 2, "name at least two sides"),
        (["chaos", "partition", "--isolate", "n1", "n2,n3"], 2, "either --isolate"),
        (["chaos", "kill", "--leader"], 3, "no leader"),
        (["chaos", "drill", "--scenario", "nope"], 2, "unknown scenario 'nope'"),
    ],
)
def test_cli_exit_codes(
    stopped_cluster: LocalCluster,
    esdb: Callable[..., Run],
    args: list[str],
    code: int,
    message: str,
) -> None:
    r = esdb("--cluster-dir", str(stopped_cluster.dir), *args)
    assert r.code == code, (r.out, r.err)
    assert message in r.err
    assert r.out == ""  # errors are talk, not data


def test_cli_fault_needs_a_cluster_dir(esdb: Callable[..., Run], tmp_path: Path) -> None:
    r = esdb("chaos", "kill", "--leader")
    assert r.code == 2 and "hint: pass --cluster-dir" in r.err
    r = esdb("--cluster-dir", str(tmp_path / "nothing"), "chaos", "heal")
    assert r.code == 7 and "missing cluster.json" in r.err


def test_a_read_from_a_node_gone_silent_times_out(node: NodeProc) -> None:
    """A paused or unplugged node keeps its TCP connections open and says nothing: a
    finite read must give up after the client's timeout instead of waiting for TCP."""
    with Client(node.url, timeout=1.5, consistency="local") as client:
        client.append("silent", _event(0))
        assert len(client.read_stream("silent")) == 1  # the connection is open now
        node.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(Timeout, match=r"sent nothing for 1\.5s"):
                client.read_stream("silent")
            assert time.monotonic() - started < 10
        finally:
            node.signal(signal.SIGCONT)


# --- each fault command: the fault it builds, its report in table and JSON (golden) ----------

GOLDEN = Path(__file__).parent / "golden"
FIXED = FaultReport(
    action="partition",
    target="n2 | n1,n3",
    at="2026-12-01T15:01:10.988Z",
    t_ns=1,
    leader_before="n2",
    leader_after="n3",
    recovery_s=2.168,
    health_before="leader n2, reachable n1,n2,n3",
    health_after="leader n3, reachable n1,n2,n3",
    detail="two-way raft partition",
    together=2,
    members=3,
)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["kill", "--leader"], Kill("leader")),
        (["kill", "n1", "--signal", "TERM"], Kill("n1", signal.SIGTERM)),
        (["kill", "--random"], Kill("random")),
        (["pause", "n2"], Pause("n2")),
        (["resume", "n2"], Resume("n2")),
        (["restart", "n3"], Restart("n3")),
        (["partition", "--isolate", "leader"], Partition([["leader"]])),
        (["partition", "n1,n2", "n3"], Partition([["n1", "n2"], ["n3"]])),
        (["partition", "--one-way", "n1", "n2"], Partition([["n1"], ["n2"]], one_way=True)),
        (["heal"], Heal()),
        (["disk-full", "n1", "--size", "32"], DiskFull("n1", size_mib=32)),
        (["disk-full", "--random"], DiskFull("random")),
        (["slow-disk", "--leader", "--delay-ms", "50"], SlowDisk("leader", delay_ms=50.0)),
        (["slow-disk", "n2"], SlowDisk("n2")),
        (["clock", "n2", "-30m"], ClockSkew("n2", -1800.0)),
        (["clock", "leader", "+2h"], ClockSkew("leader", 7200.0)),
    ],
)
def test_fault_commands_build_the_fault_and_print_one_report(
    stopped_cluster: LocalCluster,
    esdb: Callable[..., Run],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    expected: object,
) -> None:
    """Every fault command goes through run_fault (health, inject, health) and prints its
    report the same way: pinned on fixed data, in table and JSON."""
    seen: list[object] = []

    def fake_run_fault(env: ChaosEnv, fault: object, **_kw: object) -> FaultReport:
        seen.append(fault)
        return FIXED

    monkeypatch.setattr("esdb_cli.chaos.faults.run_fault", fake_run_fault)
    outputs = {}
    for fmt in ("table", "json"):
        r = esdb("--cluster-dir", str(stopped_cluster.dir), "--output", fmt, "chaos", *args)
        assert r.code == 0, r.err
        assert r.err == "partition n2 | n1,n3: two-way raft partition; recovered in 2.17s\n"
        outputs[fmt] = r.out
    assert seen == [expected, expected]
    for fmt, text in outputs.items():
        golden = GOLDEN / f"fault_report.{fmt}"
        if os.environ.get("ESDB_UPDATE_GOLDEN") == "1":
            golden.parent.mkdir(exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{fmt} output changed (ESDB_UPDATE_GOLDEN=1 to accept)"
    assert json.loads(outputs["json"]) == FIXED.row()
