"""A fresh esdb store for each test of the eventsourcing suites: the library's cases assume an
empty database (notification ids 1, 2, 3 in `test_insert_select`; ids 1..4 in the example
application), and give no hook to clear one between tests.

`FreshNode` starts a standalone node per test (about 0.2 s); `FreshCluster` a 3-node cluster
with fast elections (about 2 s). Either is stopped by PID at teardown by the harness, and its
logs go into the report of a failing test."""

from __future__ import annotations

import unittest
from collections.abc import Iterator
from pathlib import Path

import pytest
from eventsourcing.utils import Environment

from esdb_node.eventsourcing import EsdbFactory
from tests.harness import FAST, Cluster, NodeProc


class Store(unittest.TestCase):
    """`store_url` is a running, empty store; `make_factory()` an EsdbFactory on it, closed
    when the test ends."""

    store_url: str

    def make_factory(self, name: str = "", **env: str) -> EsdbFactory:
        factory = EsdbFactory(Environment(name, {"ESDB_URL": self.store_url, **env}))
        self.addCleanup(factory.close)
        return factory


class FreshNode(Store):
    @pytest.fixture(autouse=True)
    def _fresh_node(self, tmp_path: Path) -> Iterator[None]:
        self.store_node = NodeProc(tmp_path / "node").start()
        self.store_url = self.store_node.url
        yield


class FreshCluster(Store):
    @pytest.fixture(autouse=True)
    def _fresh_cluster(self, tmp_path: Path) -> Iterator[None]:
        self.store_cluster = Cluster.create(tmp_path / "cluster", nodes=3, settings=FAST)
        self.store_cluster.start()
        self.store_url = self.store_cluster.urls()
        yield
