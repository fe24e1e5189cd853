from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from raft_harness import Cluster


@pytest.fixture
def make_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[type[Cluster]]:
    """Factory for real-process clusters; every process is killed and reaped afterwards, and
    the nodes' logs are printed if the test failed."""
    made: list[Cluster] = []

    def factory(n: int, **config: object) -> Cluster:
        cluster = Cluster(tmp_path, n, **config)
        made.append(cluster)
        return cluster

    yield factory  # type: ignore[misc]
    for cluster in made:
        cluster.close()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for cluster in made:
            print(cluster.logs())


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, "rep_" + rep.when, rep)
