"""`EsdbFactory`: the `eventsourcing` infrastructure factory that `PERSISTENCE_MODULE=
esdb_node.eventsourcing` selects. One blocking esdb `Client` per factory (per application),
shared by its recorders; `close()` closes it."""

from __future__ import annotations

from typing import Any, TypeVar, cast

from eventsourcing.persistence import (
    InfrastructureFactory,
    ProgrammingError,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic

from esdb_node.client import DEFAULT_URL, Client
from esdb_node.errors import InvalidInput
from esdb_node.eventsourcing import naming
from esdb_node.eventsourcing.recorders import (
    EsdbAggregateRecorder,
    EsdbApplicationRecorder,
    EsdbProcessRecorder,
    EsdbSnapshotRecorder,
    EsdbTrackingRecorder,
)

C = TypeVar("C", bound=type[Any])


class EsdbFactory(InfrastructureFactory[EsdbTrackingRecorder]):
    """Reads `ESDB_URL` (one URL or several, comma-separated, for a cluster; default
    esdb://127.0.0.1:2113), `ESDB_TOKEN` and `ESDB_TIMEOUT` (seconds per request, default
    10), each also as `<APP NAME>_ESDB_URL` etc. The application's name is its stream
    category (see `esdb_node.eventsourcing.naming`)."""

    ESDB_URL = "ESDB_URL"
    ESDB_TOKEN = "ESDB_TOKEN"
    ESDB_TIMEOUT = "ESDB_TIMEOUT"

    aggregate_recorder_class = EsdbAggregateRecorder
    snapshot_recorder_class = EsdbSnapshotRecorder
    application_recorder_class = EsdbApplicationRecorder
    tracking_recorder_class = EsdbTrackingRecorder
    process_recorder_class = EsdbProcessRecorder

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        url = self.env.get(self.ESDB_URL) or DEFAULT_URL
        timeout = self._timeout()
        try:
            self.category = naming.category(self.env.name)
            self.tracking_category = naming.category(self.env.name, naming.TRACKING)
        except ValueError as exc:
            raise OSError(str(exc)) from None
        try:
            self.client = Client(url, token=self.env.get(self.ESDB_TOKEN) or None, timeout=timeout)
        except InvalidInput as exc:
            raise OSError(f"{self.ESDB_URL} {url!r}: {exc}") from None

    def _timeout(self) -> float:
        text = self.env.get(self.ESDB_TIMEOUT) or "10"
        try:
            value = float(text)
        except ValueError:
            value = 0.0
        if not 0 < value <= 3600:
            raise OSError(f"{self.ESDB_TIMEOUT} must be seconds between 0 and 3600, not {text!r}")
        return value

    def _json_state(self) -> bool:
        """Whether states are the default transcoder's plain JSON (a hint that lets `esdb read`
        show them as JSON; anything else is shown as base64)."""
        keys = (self.TRANSCODER_TOPIC, self.MAPPER_TOPIC, self.CIPHER_TOPIC, "CIPHER_KEY",
                self.COMPRESSOR_TOPIC)  # fmt: skip
        return not any(self.env.get(key) for key in keys)

    def aggregate_recorder(self, purpose: str = "events") -> EsdbAggregateRecorder:
        """Purpose "events": the application's event streams; any other ("snapshots"): its
        own category `<app>.<purpose>`, whose versions may have gaps."""
        if purpose == "events":
            return self.aggregate_recorder_class(
                self.client, self.category, json_state=self._json_state()
            )
        if purpose == naming.TRACKING:
            raise ProgrammingError(f"recorder purpose {purpose!r} is reserved for tracking")
        try:
            category = naming.category(self.env.name, purpose)
        except ValueError as exc:
            raise OSError(str(exc)) from None
        return self.snapshot_recorder_class(self.client, category, json_state=self._json_state())

    def application_recorder(self) -> EsdbApplicationRecorder:
        cls = self._topic_class(self.APPLICATION_RECORDER_TOPIC, self.application_recorder_class)
        return cls(self.client, self.category, json_state=self._json_state())

    def tracking_recorder(
        self, tracking_recorder_class: type[EsdbTrackingRecorder] | None = None
    ) -> EsdbTrackingRecorder:
        cls = tracking_recorder_class or self._topic_class(
            self.TRACKING_RECORDER_TOPIC, self.tracking_recorder_class
        )
        if not issubclass(cls, EsdbTrackingRecorder):
            raise ProgrammingError(f"{cls} is not a subclass of EsdbTrackingRecorder")
        return cls(self.client, self.tracking_category)

    def process_recorder(self) -> EsdbProcessRecorder:
        cls = self._topic_class(self.PROCESS_RECORDER_TOPIC, self.process_recorder_class)
        return cls(
            self.client, self.category, self.tracking_category, json_state=self._json_state()
        )

    def _topic_class(self, key: str, default: C) -> C:
        topic = self.env.get(key)
        if not topic:
            return default
        cls = resolve_topic(topic)
        if not (isinstance(cls, type) and issubclass(cls, default)):
            raise ProgrammingError(f"{key} {topic!r} is not a subclass of {default.__name__}")
        return cast(C, cls)

    def close(self) -> None:
        """Close the client: its connections, and any subscription still iterating ends."""
        self.client.close()
