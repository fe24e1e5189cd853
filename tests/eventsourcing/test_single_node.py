"""The eventsourcing library's persistence suites against a standalone esdb node, a fresh one
per test (see stores.py and suites.py)."""

from __future__ import annotations

from tests.eventsourcing import suites
from tests.eventsourcing.stores import FreshNode


class TestAggregateRecorder(FreshNode, suites.AggregateRecorderSuite):
    pass


class TestSnapshotRecorder(FreshNode, suites.SnapshotRecorderSuite):
    pass


class TestApplicationRecorder(FreshNode, suites.ApplicationRecorderSuite):
    pass


class TestTrackingRecorder(FreshNode, suites.TrackingRecorderSuite):
    pass


class TestProcessRecorder(FreshNode, suites.ProcessRecorderSuite):
    pass


class TestNonInterleavingNotificationIDs(FreshNode, suites.NonInterleavingSuite):
    pass


class TestInfrastructureFactory(FreshNode, suites.InfrastructureFactorySuite):
    pass


class TestExampleApplication(FreshNode, suites.ExampleApplicationSuite):
    pass
