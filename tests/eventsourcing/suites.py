"""The `eventsourcing` library's own test cases for persistence modules, bound to esdb
recorders and left abstract about the store (`tests.eventsourcing.stores`). The test modules
combine each suite with a store; this module is not collected itself (pytest collects every
`unittest.TestCase` subclass in a test module's namespace, so the suites are reached through
the module, never imported by name).

Nothing of the library's cases is overridden, weakened or skipped: the classes below only
provide the hooks the library asks for (`create_recorder`, `env`, the expected classes, the
factory topic), and `test_insert_subscribe` opts in to the library's optional subscription
test."""

from __future__ import annotations

import os

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    ProcessRecorder,
    TrackingRecorder,
)
from eventsourcing.tests.application import ExampleApplicationTestCase
from eventsourcing.tests.persistence import (
    AggregateRecorderTestCase,
    ApplicationRecorderTestCase,
    InfrastructureFactoryTestCase,
    NonInterleavingNotificationIDsBaseCase,
    ProcessRecorderTestCase,
    TrackingRecorderTestCase,
)
from eventsourcing.utils import Environment, get_topic

from esdb_node.eventsourcing import (
    EsdbAggregateRecorder,
    EsdbApplicationRecorder,
    EsdbFactory,
    EsdbProcessRecorder,
    EsdbTrackingRecorder,
)
from tests.eventsourcing.stores import Store


class AggregateRecorderSuite(Store, AggregateRecorderTestCase):
    """The application's event streams (purpose "events")."""

    def create_recorder(self) -> AggregateRecorder:
        return self.make_factory().aggregate_recorder()


class SnapshotRecorderSuite(Store, AggregateRecorderTestCase):
    """The same case on the snapshot recorder (purpose "snapshots"), whose versions may have
    gaps: it must keep every promise of an aggregate recorder too."""

    def create_recorder(self) -> AggregateRecorder:
        return self.make_factory().aggregate_recorder("snapshots")


class ApplicationRecorderSuite(Store, ApplicationRecorderTestCase[ApplicationRecorder]):
    def create_recorder(self) -> ApplicationRecorder:
        return self.make_factory().application_recorder()

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TrackingRecorderSuite(Store, TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        return self.make_factory().tracking_recorder()


class ProcessRecorderSuite(Store, ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        return self.make_factory().process_recorder()


class NonInterleavingSuite(Store, NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> ApplicationRecorder:
        return self.make_factory().application_recorder()


class TrackingRecorderSubclass(EsdbTrackingRecorder):
    """What `tracking_recorder(cls)` and TRACKING_RECORDER_TOPIC must construct."""


class InfrastructureFactorySuite(Store, InfrastructureFactoryTestCase[EsdbFactory]):
    def setUp(self) -> None:
        self.env = Environment(
            "TestCase",
            {"PERSISTENCE_MODULE": "esdb_node.eventsourcing", "ESDB_URL": self.store_url},
        )
        super().setUp()

    def expected_factory_class(self) -> type[EsdbFactory]:
        return EsdbFactory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return EsdbAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return EsdbApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return EsdbTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return TrackingRecorderSubclass

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return EsdbProcessRecorder


class ExampleApplicationSuite(Store, ExampleApplicationTestCase):
    """The library's example application (BankAccounts, snapshotting on), with the backend
    chosen only through the process environment, as an application would be deployed."""

    expected_factory_topic = get_topic(EsdbFactory)

    def setUp(self) -> None:
        super().setUp()
        for key, value in (
            ("PERSISTENCE_MODULE", "esdb_node.eventsourcing"),
            ("ESDB_URL", self.store_url),
        ):
            previous = os.environ.get(key)
            os.environ[key] = value
            self.addCleanup(_restore, key, previous)


def _restore(key: str, previous: str | None) -> None:
    if previous is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = previous
