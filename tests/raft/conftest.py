from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.raft.raft_harness import Cluster, MakeRaftCluster


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[MakeRaftCluster]:
    """Factory for real-process clusters; every process is killed and reaped afterwards (the
    root conftest attaches the nodes' logs to a failing test's report)."""
    made: list[Cluster] = []

    def factory(n: int, **config: object) -> Cluster:
        cluster = Cluster(tmp_path, n, **config)
        made.append(cluster)
        return cluster

    yield factory
    for cluster in made:
        cluster.close()
