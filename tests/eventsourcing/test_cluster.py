"""The eventsourcing library's persistence suites against a 3-node esdb cluster, a fresh one
per test (see stores.py and suites.py)."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import Environment

from esdb_node.eventsourcing import EsdbFactory
from tests.eventsourcing import suites
from tests.eventsourcing.stores import FreshCluster
from tests.harness import FAST, Cluster

pytestmark = pytest.mark.cluster


class TestAggregateRecorder(FreshCluster, suites.AggregateRecorderSuite):
    pass


class TestSnapshotRecorder(FreshCluster, suites.SnapshotRecorderSuite):
    pass


class TestApplicationRecorder(FreshCluster, suites.ApplicationRecorderSuite):
    pass


class TestTrackingRecorder(FreshCluster, suites.TrackingRecorderSuite):
    pass


class TestProcessRecorder(FreshCluster, suites.ProcessRecorderSuite):
    pass


class TestNonInterleavingNotificationIDs(FreshCluster, suites.NonInterleavingSuite):
    pass


class TestInfrastructureFactory(FreshCluster, suites.InfrastructureFactorySuite):
    pass


class TestExampleApplication(FreshCluster, suites.ExampleApplicationSuite):
    pass


def test_a_subscription_resumes_when_its_node_dies(tmp_path: Path) -> None:
    """The library's subscription on esdb's tail: when the node serving it is killed, it
    resumes on another without repeating or skipping a notification."""
    cluster = Cluster.create(tmp_path / "cluster", nodes=3, settings=FAST)
    cluster.start()
    factory = EsdbFactory(Environment("Bank", {"ESDB_URL": cluster.urls(), "ESDB_TIMEOUT": "15"}))
    try:
        recorder = factory.application_recorder()
        oid = uuid4()
        recorder.insert_events([StoredEvent(oid, 1, "Opened", b"{}")])
        with recorder.subscribe(gt=0) as subscription:
            assert next(subscription).id == 1
            cluster.kill(cluster.ids[0])  # the tail's node: the first URL is tried first
            ids = recorder.insert_events([StoredEvent(oid, 2, "Deposited", b"{}")])
            following = next(subscription)
        assert (following.id, following.originator_version) == (ids[0], 2)
    finally:
        factory.close()
