"""esdb as a persistence module of the `eventsourcing` library (the `eventsourcing` extra):

    PERSISTENCE_MODULE=esdb_node.eventsourcing ESDB_URL=esdb://127.0.0.1:2113 python app.py

The library finds the one infrastructure factory of this module (`EsdbFactory`). The mapping
of its model onto esdb streams, and what is atomic, is in docs/eventsourcing.md.
"""

from esdb_node.eventsourcing.factory import EsdbFactory
from esdb_node.eventsourcing.recorders import (
    EsdbAggregateRecorder,
    EsdbApplicationRecorder,
    EsdbProcessRecorder,
    EsdbSnapshotRecorder,
    EsdbTrackingRecorder,
)
from esdb_node.eventsourcing.subscription import EsdbSubscription

Factory = EsdbFactory

__all__ = [
    "EsdbAggregateRecorder",
    "EsdbApplicationRecorder",
    "EsdbFactory",
    "EsdbProcessRecorder",
    "EsdbSnapshotRecorder",
    "EsdbSubscription",
    "EsdbTrackingRecorder",
    "Factory",
]
