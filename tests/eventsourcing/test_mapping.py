"""What docs/eventsourcing.md promises beyond the library's suites: where records land in
esdb, string originator ids, the version rules, atomic saves of several aggregates,
notification ids among other records, subscriptions stopped from another thread, and the
errors an application sees. Each test runs on a fresh standalone node."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    InterfaceError,
    Notification,
    OperationalError,
    ProgrammingError,
    StoredEvent,
    Tracking,
)
from eventsourcing.utils import Environment

from esdb_node.client import Client
from esdb_node.errors import StreamNotFound
from esdb_node.eventsourcing import EsdbFactory, naming
from esdb_node.eventsourcing.recorders import EsdbApplicationRecorder
from esdb_node.model import StreamMetadata
from tests.harness import NodeProc, free_port, wait_for


class Account(Aggregate):
    @event("Opened")
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.balance = Decimal("0.00")

    @event("Deposited")
    def deposit(self, amount: Decimal) -> None:
        self.balance += amount


class Bank(Application[UUID]):
    is_snapshotting_enabled = True


@pytest.fixture
def factories(node: NodeProc) -> Iterator[list[EsdbFactory]]:
    made: list[EsdbFactory] = []
    yield made
    for factory in made:
        factory.close()


def factory_on(made: list[EsdbFactory], url: str, name: str = "", **env: str) -> EsdbFactory:
    factory = EsdbFactory(Environment(name, {"ESDB_URL": url, **env}))
    made.append(factory)
    return factory


def app_on(url: str, **env: str) -> Bank:
    return Bank(env={"PERSISTENCE_MODULE": "esdb_node.eventsourcing", "ESDB_URL": url, **env})


def stored(
    oid: UUID | str, version: int, topic: str = "topic", state: bytes = b"{}"
) -> StoredEvent:
    return StoredEvent(originator_id=oid, originator_version=version, topic=topic, state=state)


# --- names (no node) ----------------------------------------------------------------------------


def test_category_names_escape_what_has_a_meaning_in_stream_names() -> None:
    assert naming.category("Bank") == "Bank"
    assert naming.category("") == "stored"
    assert naming.category("a-b.c%d*e$") == "a%2Db%2Ec%25d%2Ae%24"
    assert naming.category("Bank", "snapshots") == "Bank.snapshots"
    assert naming.category("Bank", "tracking") == "Bank.tracking"
    # an application "a" never sees the streams of an application "a-b" through "a-"
    assert not naming.stream_name(naming.category("a-b"), uuid4()).startswith("a-")
    with pytest.raises(ValueError, match="too long"):
        naming.category("x" * 220)


def test_string_keys_that_make_no_valid_name_are_hashed() -> None:
    assert naming.suffix("order-1", "Bank") == "order-1"
    for awkward in ("~starts-with-tilde", "line\nbreak", "x" * 300, ""):
        hashed = naming.suffix(awkward, "Bank")
        assert hashed.startswith("~") and len(hashed) == 65
    assert naming.suffix("x" * 300, "Bank") == naming.suffix("x" * 300, "Bank")
    assert naming.suffix("x" * 300, "Bank") != naming.suffix("x" * 301, "Bank")


# --- where records land -------------------------------------------------------------------------


def test_events_snapshots_and_ids_land_where_the_docs_say(node: NodeProc) -> None:
    app = app_on(node.url)
    try:
        account = Account("Alice")
        account.deposit(Decimal("10.00"))
        recordings = app.save(account)
        app.take_snapshot(account.id)
    finally:
        app.close()
    with node.client() as client:
        events = client.read_stream(f"Bank-{account.id}")
        snapshots = client.read_stream(f"Bank.snapshots-{account.id}")
    assert [e.type for e in events] == [
        f"{__name__}:Account.Opened",
        f"{__name__}:Account.Deposited",
    ]
    assert [e.metadata_json() for e in events] == [{"v": 1}, {"v": 2}]
    assert all(e.is_json for e in events)  # the default transcoder's JSON: `esdb read` shows it
    assert events[1].json()["amount"] == {"_type_": "decimal_str", "_data_": "10.00"}
    assert [r.notification.id for r in recordings] == [e.position + 1 for e in events]
    assert [(s.type, s.metadata_json()) for s in snapshots] == [
        ("eventsourcing.domain:Snapshot", {"v": 2})
    ]


def test_compressed_or_encrypted_states_are_not_marked_json(node: NodeProc) -> None:
    app = app_on(node.url, COMPRESSOR_TOPIC="eventsourcing.compressor:ZlibCompressor")
    try:
        account = Account("Alice")
        app.save(account)
        assert app.repository.get(account.id).owner == "Alice"
    finally:
        app.close()
    with node.client() as client:
        (opened,) = client.read_stream(f"Bank-{account.id}")
    assert not opened.is_json


def test_string_originator_ids_round_trip(node: NodeProc, factories: list[EsdbFactory]) -> None:
    recorder = factory_on(factories, node.url, "Orders").application_recorder()
    ids = ["order-1", "~tilde", "x" * 300, "line\nbreak", str(uuid4())]
    for oid in ids:
        recorder.insert_events([stored(oid, 1), stored(oid, 2)])
    for oid in ids:
        assert [e.originator_version for e in recorder.select_events(oid)] == [1, 2]
    notified = recorder.select_notifications(None, 100)
    assert [n.originator_id for n in notified[::2]] == ids  # str, not UUID, even the last
    with node.client() as client:
        names = {s.stream for s in client.streams("Orders-")}
    assert "Orders-order-1" in names
    assert sum(name.startswith("Orders-~") for name in names) == 3


# --- versions -----------------------------------------------------------------------------------


def test_versions_follow_the_last_one_without_gaps(
    node: NodeProc, factories: list[EsdbFactory]
) -> None:
    writer = factory_on(factories, node.url).application_recorder()
    oid = uuid4()
    writer.insert_events([stored(oid, 1)])
    with pytest.raises(IntegrityError, match="last stored version is 1"):
        writer.insert_events([stored(oid, 3)])  # a gap
    with pytest.raises(IntegrityError):
        writer.insert_events([stored(oid, 0)])  # before the first version
    # A recorder that has not seen the aggregate (another process) learns where it stands
    # from the refused write: a gap is refused, the next version written.
    other = factory_on(factories, node.url).application_recorder()
    with pytest.raises(IntegrityError, match="last stored version is 1"):
        other.insert_events([stored(oid, 3)])
    other.insert_events([stored(oid, 2)])
    with pytest.raises(IntegrityError):
        writer.insert_events([stored(oid, 2)])  # what the first recorder believed is stale
    assert [e.originator_version for e in writer.select_events(oid)] == [1, 2]
    assert [e.originator_version for e in writer.select_events(oid, gt=1)] == [2]


def test_saving_several_aggregates_is_atomic(node: NodeProc) -> None:
    first, second = app_on(node.url), app_on(node.url)
    try:
        a, b = Account("A"), Account("B")
        first.save(a, b)
        stale_b: Account = first.repository.get(b.id)
        moved_b: Account = second.repository.get(b.id)
        moved_b.deposit(Decimal("1.00"))
        second.save(moved_b)  # b moves on in another process
        a.deposit(Decimal("5.00"))
        stale_b.deposit(Decimal("2.00"))
        with pytest.raises(IntegrityError):
            first.save(a, stale_b)
        assert first.repository.get(a.id).version == 1  # a's deposit was not written either
        assert first.repository.get(b.id).balance == Decimal("1.00")
    finally:
        first.close()
        second.close()


def test_process_recorder_writes_events_and_tracking_together_or_not_at_all(
    node: NodeProc, factories: list[EsdbFactory]
) -> None:
    recorder = factory_on(factories, node.url, "Tallies").process_recorder()
    oid = uuid4()
    recorder.insert_events([stored(oid, 1)], tracking=Tracking("Bank", 5))
    with pytest.raises(IntegrityError):  # the events conflict: the tracking record is not kept
        recorder.insert_events([stored(oid, 1)], tracking=Tracking("Bank", 6))
    with pytest.raises(IntegrityError):  # the tracking record conflicts: the events are not kept
        recorder.insert_events([stored(oid, 2)], tracking=Tracking("Bank", 5))
    assert recorder.max_tracking_id("Bank") == 5
    assert len(recorder.select_events(oid)) == 1
    with node.client() as client:
        (record,) = client.read_stream("Tallies.tracking-Bank")
        assert record.json() == {"application_name": "Bank", "notification_id": 5}
        # as docs/eventsourcing.md suggests: keep the visible tracking stream short
        client.set_stream_metadata("Tallies.tracking-Bank", StreamMetadata(max_count=1))
    recorder.insert_tracking(Tracking("Bank", 7))
    fresh = factory_on(factories, node.url, "Tallies").process_recorder()
    assert fresh.max_tracking_id("Bank") == 7
    with pytest.raises(IntegrityError):
        fresh.insert_tracking(Tracking("Bank", 6))
    fresh.insert_events([stored(oid, 2)], tracking=Tracking("Bank", 8))
    assert recorder.max_tracking_id("Bank") == 8


# --- notification ids ---------------------------------------------------------------------------


def test_notification_ids_are_positions_with_gaps_for_other_records(
    node: NodeProc, factories: list[EsdbFactory]
) -> None:
    bank = factory_on(factories, node.url, "Bank")
    shop = factory_on(factories, node.url, "Shop").application_recorder()
    recorder = bank.application_recorder()
    snapshots = bank.aggregate_recorder("snapshots")
    a = uuid4()
    assert recorder.insert_events([stored(a, 1, "Opened")]) == [1]
    shop.insert_events([stored(uuid4(), 1)])  # position 1: another application
    snapshots.insert_events([stored(a, 1, "Snapshot")])  # position 2: not a notification
    assert recorder.insert_events([stored(a, 2, "Deposited"), stored(a, 3, "Deposited")]) == [4, 5]
    shop.insert_events([stored(uuid4(), 1)])  # position 5
    assert [n.id for n in recorder.select_notifications(None, 10)] == [1, 4, 5]
    assert [n.id for n in recorder.select_notifications(2, 10)] == [4, 5]
    assert [n.id for n in recorder.select_notifications(1, 10, inclusive_of_start=False)] == [4, 5]
    assert [n.id for n in recorder.select_notifications(1, 10, stop=4)] == [1, 4]
    assert [n.id for n in recorder.select_notifications(1, 1, topics=["Deposited"])] == [4]
    assert recorder.max_notification_id() == 5  # not the shop's 6
    assert [n.id for n in shop.select_notifications(None, 10)] == [2, 6]


def test_subscription_delivers_new_events_and_stops_from_another_thread(
    node: NodeProc, factories: list[EsdbFactory]
) -> None:
    recorder = factory_on(factories, node.url).application_recorder()
    subscription = recorder.subscribe(gt=None, topics=["wanted"])
    got: list[Notification] = []
    ended = threading.Event()

    def consume() -> None:
        with subscription:
            got.extend(subscription)
        ended.set()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    recorder.insert_events([stored(uuid4(), 1, "unwanted"), stored(uuid4(), 1, "wanted")])
    wait_for(lambda: got, timeout=10, what="the wanted notification")
    assert [(n.id, n.topic) for n in got] == [(2, "wanted")]
    time.sleep(0.1)  # the consumer is blocked waiting for the next one
    assert not ended.is_set()
    subscription.stop()
    assert ended.wait(10), "stop() from another thread did not end the iteration"
    consumer.join(10)


# --- configuration and errors -------------------------------------------------------------------


def test_configuration_errors_are_environment_errors(factories: list[EsdbFactory]) -> None:
    for env, match in (
        ({"ESDB_URL": "http://nowhere"}, "ESDB_URL"),
        ({"ESDB_TIMEOUT": "soon"}, "ESDB_TIMEOUT"),
        ({"ESDB_TIMEOUT": "0"}, "ESDB_TIMEOUT"),
    ):
        with pytest.raises(OSError, match=match):
            EsdbFactory(Environment("Bank", env))
    with pytest.raises(OSError, match="too long"):
        EsdbFactory(Environment("x" * 300, {}))
    factory = factory_on(factories, "esdb://127.0.0.1:1")
    with pytest.raises(ProgrammingError, match="reserved"):
        factory.aggregate_recorder("tracking")


def test_the_application_prefix_picks_the_store(node: NodeProc) -> None:
    # BANK_ESDB_URL wins over ESDB_URL, as for every key the library reads
    app = app_on(f"esdb://127.0.0.1:{free_port()}", BANK_ESDB_URL=node.url)
    try:
        app.save(Account("Alice"))
    finally:
        app.close()
    with node.client() as client:
        assert client.streams("Bank-")


def test_store_errors_arrive_as_the_library_errors(
    node: NodeProc, factories: list[EsdbFactory]
) -> None:
    nowhere = factory_on(factories, f"esdb://127.0.0.1:{free_port()}").application_recorder()
    started = time.monotonic()
    with pytest.raises(OperationalError):
        nowhere.insert_events([stored(uuid4(), 1)])
    assert time.monotonic() - started < 5  # nothing listens there: fails at once
    factory = factory_on(factories, node.url)
    recorder = factory.application_recorder()
    with pytest.raises(DataError, match="event type"):
        recorder.insert_events([stored(uuid4(), 1, topic="t" * 300)])
    with pytest.raises(DataError, match="empty data"):
        recorder.insert_events([stored(uuid4(), 1, state=b"")])
    twice = stored(uuid4(), 1)
    with pytest.raises(IntegrityError, match="consecutive"):
        recorder.insert_events([twice, twice])
    factory.close()
    with pytest.raises(InterfaceError):
        recorder.max_notification_id()


def test_a_lost_node_is_an_operational_error(node: NodeProc, factories: list[EsdbFactory]) -> None:
    recorder = factory_on(factories, node.url, ESDB_TIMEOUT="2").application_recorder()
    recorder.insert_events([stored(uuid4(), 1)])
    node.stop()
    with pytest.raises(OperationalError):
        recorder.insert_events([stored(uuid4(), 1)])
    with pytest.raises(OperationalError):
        recorder.select_notifications(None, 10)


def test_reads_of_unknown_aggregates_are_empty(
    node: NodeProc, factories: list[EsdbFactory]
) -> None:
    factory = factory_on(factories, node.url)
    for recorder in (factory.application_recorder(), factory.aggregate_recorder("snapshots")):
        oid = uuid4()
        assert recorder.select_events(oid) == []
        assert recorder.select_events(oid, gt=1, lte=5, desc=True, limit=1) == []
    assert factory.tracking_recorder().max_tracking_id("Nobody") is None
    with Client(node.url) as client, pytest.raises(StreamNotFound):
        client.stream_info("stored.tracking-Nobody")  # reading created nothing


def test_recorders_share_the_factorys_client(node: NodeProc, factories: list[EsdbFactory]) -> None:
    factory = factory_on(factories, node.url)
    recorder = factory.application_recorder()
    assert isinstance(recorder, EsdbApplicationRecorder)
    assert recorder.client is factory.process_recorder().client is factory.client
    assert json.loads(naming.encode_meta("order-1", 3)) == {"v": 3, "id": "order-1"}
