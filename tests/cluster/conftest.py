"""Fixtures of the cluster tier: clusters of real node processes on free loopback ports.

Every cluster is torn down by PID (SIGKILL + reap) whatever the outcome; on failure the root
conftest attaches each node's esdb.log to the report, and the data stays for a post-mortem.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.harness import FAILED, FAST, Cluster, MakeCluster


@pytest.fixture
def make_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MakeCluster]:
    """`make_cluster(nodes=3, settings=FAST, start=True)` -> a running Cluster."""
    made: list[Cluster] = []

    def make(
        nodes: int = 3,
        settings: Mapping[str, Any] = FAST,
        durability: str = "fsync",
        start: bool = True,
        name: str = "c",
    ) -> Cluster:
        cluster = Cluster.create(
            tmp_path / name, nodes=nodes, settings=settings, durability=durability
        )
        made.append(cluster)
        if start:
            cluster.start()
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.close()
            if not request.node.stash.get(FAILED, False):
                cluster.purge_data()


@pytest.fixture
def cluster(make_cluster: MakeCluster) -> Cluster:
    """Three nodes with fast elections, a leader agreed."""
    return make_cluster()


@pytest.fixture
def adopt() -> Callable[[Path], Cluster]:
    """Track a cluster the CLI created (`esdb cluster up --dir D`) so teardown reaps it."""
    return Cluster.attach
