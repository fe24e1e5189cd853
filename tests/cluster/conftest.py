"""Fixtures of the cluster tier: clusters of real node processes on free loopback ports.

Every cluster is torn down by PID (SIGKILL + reap) whatever the outcome; on failure each
node's esdb.log is attached to the report ("cluster node logs").
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.support import FAST, Cluster

_LIVE: list[Cluster] = []
_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when in ("setup", "call"):
        item.stash.setdefault(_FAILED, False)
        if report.failed:
            item.stash[_FAILED] = True
            logs = "\n".join(c.logs() for c in _LIVE)
            if logs:
                report.sections.append(("cluster node logs", logs))


MakeCluster = Callable[..., Cluster]


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
        _LIVE.append(cluster)
        if start:
            cluster.start()
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.close()
            _LIVE.remove(cluster)
            if not request.node.stash.get(_FAILED, False):
                cluster.purge_data()


@pytest.fixture
def cluster(make_cluster: MakeCluster) -> Cluster:
    """Three nodes with fast elections, a leader agreed."""
    return make_cluster()


@pytest.fixture
def adopt(request: pytest.FixtureRequest) -> Iterator[Callable[[Path], Cluster]]:
    """Track a cluster the CLI created (`esdb cluster up --dir D`) so teardown reaps it."""
    adopted: list[Cluster] = []

    def attach(directory: Path) -> Cluster:
        cluster = Cluster.attach(directory)
        adopted.append(cluster)
        _LIVE.append(cluster)
        return cluster

    try:
        yield attach
    finally:
        for cluster in adopted:
            cluster.close()
            _LIVE.remove(cluster)
