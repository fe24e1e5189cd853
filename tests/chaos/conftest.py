"""Fixtures for the chaos tests: a real 3-node local cluster, and the `esdb` command run
in-process (same entry point and exit codes as the installed script)."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from esdb_cli import local
from esdb_cli.localcluster import LocalCluster
from esdb_node.client import Client
from esdb_node.model import NodeStatus
from tests.harness import wait_for

_CLUSTERS: list[LocalCluster] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for cluster in _CLUSTERS:
            for node in cluster.nodes:
                report.sections.append(
                    (f"log of {node.id}", local.log_tail(Path(node.data_dir), lines=60))
                )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """3 nodes on free loopback ports, a leader agreed, every member registered."""
    c = LocalCluster.create(
        tmp_path / "cluster",
        nodes=3,
        base_port=None,
        secret=None,
        store_id="chaos-test",
        durability="fsync",
    )
    _CLUSTERS.append(c)
    started: set[int] = set()
    try:
        c.start(wait=90)
        started |= {n.pid for n in c.nodes if n.pid}
        c.wait_leader(90)
        wait_registered(c)
        yield c
    finally:
        # The CLI may have restarted nodes: their pids are in cluster.json, not in `c`.
        current = LocalCluster.load(c.dir) if c.file.exists() else c
        started |= {n.pid for n in current.nodes if n.pid}
        for node in current.nodes:
            pid = current.running_pid(node)
            if pid is not None:
                local.stop_pid(pid, timeout=15, force=True)
        for pid in started:  # nodes we spawned and someone else killed: collect them
            local.reap(pid)
        _CLUSTERS.remove(c)
        # `chaos disk-full` images, also when the test failed before its heal
        current.release_disks()
        mounted = [n.id for n in current.nodes if os.path.ismount(n.data_dir)]
        left = [p for p in started if local.is_node_process(p)]
        assert not left, f"node processes left running: {left}"
        assert not mounted, f"data dirs left mounted: {mounted}"


def wait_registered(c: LocalCluster, timeout: float = 60) -> None:
    """Until every node's client URL is in the replicated member registry (faults and
    status rows name nodes by id only once they are)."""

    def registered() -> bool:
        leader = c.wait_leader(30)
        with Client(leader.url, timeout=3) as client:
            members = client.members(leader.url)
        return {m.node_id for m in members} == {n.id for n in c.nodes}

    wait_for(registered, timeout=timeout, what="every node to register", interval=0.2)


def status_of(c: LocalCluster, node_id: str) -> NodeStatus:
    node = c.node(node_id)
    with Client(node.url, timeout=3, connect_timeout=1) as client:
        return client.status(node.url)


def wait_converged(c: LocalCluster, timeout: float = 60) -> list[NodeStatus]:
    """Until all nodes are up, agree on one leader and have applied the same log."""

    def converged() -> list[NodeStatus] | None:
        statuses = [s for s in c.statuses(timeout=2) if isinstance(s, NodeStatus)]
        if len(statuses) != len(c.nodes):
            return None
        if len({s.leader_id for s in statuses}) != 1 or statuses[0].leader_id is None:
            return None
        if len({(s.applied_index, s.last_position) for s in statuses}) != 1:
            return None
        return statuses

    return wait_for(converged, timeout=timeout, what="the nodes to converge", interval=0.2)
