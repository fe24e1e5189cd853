"""The LMDB state machine on real LMDB files: expected versions, idempotency, atomicity,
retention, snapshots, checksums, reopen."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from esdb_node import codec
from esdb_node.errors import (
    CorruptRecord,
    InvalidInput,
    SnapshotNotFound,
    StorageFull,
    StreamDeleted,
    StreamNotFound,
    WrongExpectedVersion,
)
from esdb_node.model import AllFilter, AppendResult, EventData, StreamMetadata, expected_to_int
from esdb_node.storage import commands as cmd
from esdb_node.storage.store import Store
from tests import diskfull


def ev(event_type: str = "Happened", n: int = 0, event_id: uuid.UUID | None = None) -> bytes:
    return EventData.from_json(event_type, {"n": n}, id=event_id).encode()


# A raw list stands for a command as the wire carries it, malformed on purpose: the store must
# refuse it (InvalidInput) without failing the rest of the batch.
RawCommand = list[Any]


def run(
    store: Store, *subs: cmd.Command | RawCommand, created_us: int | None = None, index: int = 0
) -> list[Any]:
    created = created_us if created_us is not None else int(time.time() * 1_000_000)
    batch = cmd.encode_batch(created, cast(list[cmd.Command], list(subs)))  # raw ones too
    results = store.apply(batch, index=index, term=1 if index else 0)
    assert results is not None
    return results


def ok(result: Any) -> Any:
    if isinstance(result, Exception):
        raise result
    return result


def append(store: Store, stream: str, n: int = 1, expected: Any = "any", **kw: Any) -> Any:
    return run(
        store, cmd.append(stream, expected_to_int(expected), [ev(n=i) for i in range(n)]), **kw
    )[0]


def versions(store: Store, stream: str, **kw: Any) -> list[int]:
    payloads, _ = store.read_stream(stream, **kw)
    return [codec.decode_record(p).version for p in payloads]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "store")
    yield s
    s.close()


# --- expected-version matrix -------------------------------------------------------------------

# (state of the stream, expected, accepted?)
MATRIX = [
    ("absent", "any", True),
    ("absent", "no-stream", True),
    ("absent", "exists", False),
    ("absent", 0, False),
    ("v1", "any", True),
    ("v1", "no-stream", False),
    ("v1", "exists", True),
    ("v1", 1, True),
    ("v1", 0, False),
    ("v1", 2, False),
    ("soft-deleted", "any", True),
    ("soft-deleted", "no-stream", True),
    ("soft-deleted", "exists", False),
    ("soft-deleted", 1, False),
    ("tombstoned", "any", False),
    ("tombstoned", "no-stream", False),
]


@pytest.mark.parametrize(("state", "expected", "accepted"), MATRIX)
def test_expected_version_matrix(store: Store, state: str, expected: Any, accepted: bool) -> None:
    if state != "absent":
        ok(append(store, "s-1", 2))
    if state == "soft-deleted":
        ok(run(store, cmd.delete("s-1", -2, False))[0])
    if state == "tombstoned":
        ok(run(store, cmd.delete("s-1", -2, True))[0])
    before = store.last_position
    result = append(store, "s-1", 1, expected)
    if accepted:
        assert isinstance(result, AppendResult)
        assert result.first_version == (0 if state == "absent" else 2)
        assert store.last_position == before + 1
    else:
        assert isinstance(result, WrongExpectedVersion | StreamDeleted)
        assert store.last_position == before


def test_wrong_expected_version_reports_actual(store: Store) -> None:
    ok(append(store, "s-1", 3))
    err = append(store, "s-1", 1, 0)
    assert isinstance(err, WrongExpectedVersion)
    assert err.actual == 2
    err = append(store, "s-2", 1, "exists")
    assert isinstance(err, WrongExpectedVersion)
    assert err.actual == -1


# --- idempotency -------------------------------------------------------------------------------


def test_exact_retry_returns_original_result_and_writes_nothing(store: Store) -> None:
    events = [ev(n=i) for i in range(3)]
    first = ok(run(store, cmd.append("s-1", -1, events))[0])
    ok(append(store, "other", 1))
    position = store.last_position
    again = ok(run(store, cmd.append("s-1", -1, events))[0])
    assert again == first
    assert store.last_position == position
    assert versions(store, "s-1") == [0, 1, 2]
    # "any" is also a valid retry
    assert ok(run(store, cmd.append("s-1", -2, events))[0]) == first


def test_retry_with_conflicting_expected_version_is_refused(store: Store) -> None:
    events = [ev()]
    ok(run(store, cmd.append("s-1", -1, events))[0])
    ok(append(store, "s-1", 1))
    assert isinstance(run(store, cmd.append("s-1", 1, events))[0], WrongExpectedVersion)


def test_reused_event_id_in_another_append_is_per_stream(store: Store) -> None:
    """Event ids are per stream (storage format 2, as KurrentDB): the same id in another
    stream is another event; a partial retry (first matches, second new) is a conflict."""
    a, b = ev(), ev()
    ok(run(store, cmd.append("s-1", -2, [a]))[0])
    # same id, other stream: a new event there
    assert ok(run(store, cmd.append("s-2", -2, [a]))[0]).first_version == 0
    # partial retry (first matches, second new) is not an exact retry
    assert isinstance(run(store, cmd.append("s-1", -2, [a, b]))[0], WrongExpectedVersion)
    assert versions(store, "s-1") == [0]


def test_duplicate_ids_inside_one_append_are_invalid(store: Store) -> None:
    a = ev()
    assert isinstance(run(store, cmd.append("s-1", -2, [a, a]))[0], InvalidInput)
    with pytest.raises(StreamNotFound):
        store.read_stream("s-1")


# --- atomicity and batches ---------------------------------------------------------------------


def test_failed_append_writes_none_of_its_events(store: Store) -> None:
    ok(append(store, "s-1", 1))
    result = run(store, cmd.append("s-1", 5, [ev(n=i) for i in range(10)]))[0]
    assert isinstance(result, WrongExpectedVersion)
    assert versions(store, "s-1") == [0]
    assert store.last_position == 0


def test_subcommands_of_one_batch_are_independent(store: Store) -> None:
    results = run(
        store,
        cmd.append("a-1", -1, [ev()]),
        cmd.append("a-1", -1, [ev()]),  # fails: the first created it
        cmd.append("b-1", -2, [ev(), ev()]),
        ["garbage"],
        cmd.noop(),
    )
    assert isinstance(results[0], AppendResult)
    assert isinstance(results[1], WrongExpectedVersion)
    assert results[2].first_version == 0 and results[2].position == 1
    assert isinstance(results[3], InvalidInput)
    assert results[4] is None
    assert store.last_position == 2


def test_malformed_batch_is_a_result_not_an_exception(store: Store) -> None:
    for raw in (b"\xc1not msgpack", codec.pack([99, 0, []])):
        results = store.apply(raw)
        assert results is not None and isinstance(results[0], InvalidInput)
    assert isinstance(run(store, cmd.append("$system", -2, [ev()]))[0], InvalidInput)
    assert isinstance(run(store, cmd.append("x", -2, []))[0], InvalidInput)


def test_positions_are_dense_and_global(store: Store) -> None:
    for i in range(5):
        ok(append(store, f"s-{i % 2}", 2))
    payloads, nxt, done = store.read_all(0, limit=100)
    assert (nxt, done) == (10, True)
    assert [codec.decode_record(p).position for p in payloads] == list(range(10))


# --- raft index bookkeeping --------------------------------------------------------------------


def test_replayed_raft_entries_are_skipped(store: Store, tmp_path: Path) -> None:
    batch = cmd.encode_batch(1, [cmd.append("s-1", -2, [ev()])])
    assert store.apply(batch, index=5, term=2) is not None
    assert store.apply(batch, index=5, term=2) is None
    assert store.apply(batch, index=3, term=1) is None
    assert store.applied == (5, 2)
    store.close()
    reopened = Store(tmp_path / "store")
    assert reopened.applied == (5, 2)
    assert reopened.apply(batch, index=5, term=2) is None
    assert versions(reopened, "s-1") == [0]
    reopened.close()


# --- reads -------------------------------------------------------------------------------------


def test_forward_and_backward_reads(store: Store) -> None:
    ok(append(store, "s-1", 10))
    assert versions(store, "s-1", from_version=3, limit=4) == [3, 4, 5, 6]
    assert versions(store, "s-1", from_version=None, backward=True, limit=3) == [9, 8, 7]
    assert versions(store, "s-1", from_version=2, backward=True) == [2, 1, 0]
    assert versions(store, "s-1", from_version=50) == []
    assert versions(store, "s-1", from_version=50, backward=True, limit=2) == [9, 8]


def test_unknown_stream_is_not_found(store: Store) -> None:
    with pytest.raises(StreamNotFound):
        store.read_stream("nope")
    with pytest.raises(StreamNotFound):
        store.stream_info("nope")


def test_read_all_filters(store: Store) -> None:
    run(
        store,
        cmd.append("order-1", -2, [ev("OrderPlaced"), ev("OrderPaid")]),
        cmd.append("user-1", -2, [ev("UserCreated")]),
        cmd.append("order-2", -2, [ev("OrderPlaced")]),
    )

    def types(flt: AllFilter, **kw: Any) -> list[str]:
        payloads, _, _ = store.read_all(0, filter=flt, **kw)
        return [codec.decode_record(p).type for p in payloads]

    assert types(AllFilter(stream_prefix="order-")) == ["OrderPlaced", "OrderPaid", "OrderPlaced"]
    assert types(AllFilter(event_types=("OrderPlaced",))) == ["OrderPlaced", "OrderPlaced"]
    assert types(AllFilter(type_pattern="*Created")) == ["UserCreated"]
    assert types(AllFilter(stream_prefix="order-", type_pattern="Order*d")) == [
        "OrderPlaced",
        "OrderPaid",
        "OrderPlaced",
    ]
    payloads, nxt, done = store.read_all(None, backward=True, limit=2)
    assert [codec.decode_record(p).position for p in payloads] == [3, 2]
    assert (nxt, done) == (1, False)
    payloads, nxt, done = store.read_all(1, backward=True, limit=5)
    assert [codec.decode_record(p).position for p in payloads] == [1, 0]
    assert (nxt, done) == (-1, True)
    payloads, nxt, done = store.read_all(0, limit=2)
    assert (nxt, done) == (2, False)
    # a pattern is checked record by record (exact types go through the type index, which
    # examines only matching records: tests/storage/test_indexes.py)
    payloads, nxt, done = store.read_all(
        0, filter=AllFilter(type_pattern="UserCreated"), max_scan=2
    )
    assert payloads == [] and (nxt, done) == (2, False)
    payloads, nxt, done = store.read_all(4)
    assert payloads == [] and (nxt, done) == (4, True)


def test_read_all_on_empty_store(store: Store) -> None:
    assert store.read_all(0) == ([], 0, True)
    assert store.read_all(None, backward=True) == ([], -1, True)


def test_list_streams_with_prefix_and_paging(store: Store) -> None:
    for name in ["a-1", "b-1", "b-2", "b-3", "c-1"]:
        ok(append(store, name))
    assert [s.stream for s in store.list_streams("b-")] == ["b-1", "b-2", "b-3"]
    page = store.list_streams("b-", limit=2)
    assert [s.stream for s in page] == ["b-1", "b-2"]
    rest = store.list_streams("b-", after=page[-1].stream, limit=2)
    assert [s.stream for s in rest] == ["b-3"]
    assert store.stream_count == 5


# --- deletes and retention ---------------------------------------------------------------------


def test_soft_delete_hides_events_and_stream_continues(store: Store) -> None:
    ok(append(store, "s-1", 3))
    result = ok(run(store, cmd.delete("s-1", 2, False))[0])
    assert result.last_version == 2
    with pytest.raises(StreamNotFound):
        store.read_stream("s-1")
    again = ok(append(store, "s-1", 2, "no-stream"))
    assert again.first_version == 3
    assert versions(store, "s-1") == [3, 4]
    assert store.stream_info("s-1").first_visible == 3


def test_tombstone_forbids_writes_forever(store: Store) -> None:
    ok(append(store, "s-1", 1))
    ok(run(store, cmd.delete("s-1", -2, True))[0])
    with pytest.raises(StreamDeleted):
        store.read_stream("s-1")
    assert isinstance(append(store, "s-1"), StreamDeleted)
    assert isinstance(run(store, cmd.delete("s-1", -2, True))[0], StreamDeleted)
    assert isinstance(run(store, cmd.delete("s-1", -2, False))[0], StreamDeleted)
    # a stream that never existed can be tombstoned too (reserves the name)
    ok(run(store, cmd.delete("never", -2, True))[0])
    assert isinstance(append(store, "never"), StreamDeleted)


def test_delete_of_unknown_stream_is_not_found(store: Store) -> None:
    assert isinstance(run(store, cmd.delete("nope", -2, False))[0], StreamNotFound)


def test_delete_checks_expected_version(store: Store) -> None:
    ok(append(store, "s-1", 2))
    assert isinstance(run(store, cmd.delete("s-1", 0, False))[0], WrongExpectedVersion)
    assert versions(store, "s-1") == [0, 1]


def test_max_count_truncate_before_and_max_age(store: Store) -> None:
    now = int(time.time() * 1_000_000)
    ok(append(store, "s-1", 5, created_us=now - 3_600_000_000))
    ok(append(store, "s-1", 5, created_us=now))
    ok(run(store, cmd.set_metadata("s-1", StreamMetadata(max_count=4)))[0])
    assert versions(store, "s-1") == [6, 7, 8, 9]
    ok(run(store, cmd.set_metadata("s-1", StreamMetadata(truncate_before=2)))[0])
    assert versions(store, "s-1") == list(range(2, 10))
    ok(run(store, cmd.set_metadata("s-1", StreamMetadata(max_age=60)))[0])
    assert versions(store, "s-1", now_us=now) == list(range(5, 10))
    assert versions(store, "s-1", backward=True, from_version=None, now_us=now) == list(
        range(9, 4, -1)
    )
    info = store.stream_info("s-1")
    assert info.metadata.max_age == 60


def test_invalid_metadata_is_rejected(store: Store) -> None:
    ok(append(store, "s-1"))
    bad = run(store, [3, "s-1", {"max_count": -1}])[0]
    assert isinstance(bad, InvalidInput)
    bad = run(store, [3, "s-1", {"bogus": 1}])[0]
    assert isinstance(bad, InvalidInput)


# --- snapshots ---------------------------------------------------------------------------------


def test_snapshots_latest_at_or_below_list_delete(store: Store) -> None:
    ok(append(store, "agg-1", 10))
    for version in (2, 5, 8):
        ok(run(store, cmd.snapshot_save("agg-1", version, b'{"v": %d}' % version, b""))[0])
    assert store.snapshot_get("agg-1").version == 8
    assert store.snapshot_get("agg-1", at_or_below=7).version == 5
    assert store.snapshot_get("agg-1", at_or_below=5).version == 5
    with pytest.raises(SnapshotNotFound):
        store.snapshot_get("agg-1", at_or_below=1)
    assert [s.version for s in store.snapshot_list("agg-1")] == [2, 5, 8]
    assert ok(run(store, cmd.snapshot_delete("agg-1", 5))[0]) == 1
    assert [s.version for s in store.snapshot_list("agg-1")] == [2, 8]
    assert isinstance(run(store, cmd.snapshot_delete("agg-1", 5))[0], SnapshotNotFound)
    assert ok(run(store, cmd.snapshot_delete("agg-1", None))[0]) == 2
    with pytest.raises(SnapshotNotFound):
        store.snapshot_get("agg-1")


def test_snapshot_version_must_exist(store: Store) -> None:
    ok(append(store, "agg-1", 2))
    assert isinstance(run(store, cmd.snapshot_save("agg-1", 5, b"{}", b""))[0], InvalidInput)
    assert isinstance(run(store, cmd.snapshot_save("nope", 0, b"{}", b""))[0], StreamNotFound)


def test_snapshots_of_prefix_streams_do_not_mix(store: Store) -> None:
    ok(append(store, "a", 2))
    ok(append(store, "ab", 2))
    ok(run(store, cmd.snapshot_save("ab", 1, b"{}", b""))[0])
    with pytest.raises(SnapshotNotFound):
        store.snapshot_get("a")
    assert store.snapshot_list("a") == []


# --- durability of files and integrity ---------------------------------------------------------


def test_reopen_after_close_keeps_everything(tmp_path: Path) -> None:
    s = Store(tmp_path / "store")
    ok(append(s, "s-1", 3))
    ok(append(s, "s-2", 2))
    s.close()
    s = Store(tmp_path / "store")
    assert versions(s, "s-1") == [0, 1, 2]
    assert s.last_position == 4
    assert ok(append(s, "s-1")).position == 5
    assert s.stream_count == 2
    s.close()


def _flip_byte_in_event(path: Path, needle: bytes) -> None:
    data = path.read_bytes()
    at = data.find(needle)
    assert at > 0, "event payload not found in the data file"
    with path.open("r+b") as f:
        f.seek(at)
        f.write(bytes([data[at] ^ 0x01]))


def test_flipped_byte_on_disk_is_detected_and_named(tmp_path: Path) -> None:
    s = Store(tmp_path / "store")
    marker = b"MARKER-0123456789"
    ok(
        run(
            s,
            cmd.append("s-1", -2, [ev()]),
            cmd.append("s-1", -2, [EventData("T", b'"' + marker + b'"')]),
        )[1]
    )
    s.close()
    _flip_byte_in_event(tmp_path / "store" / "data.mdb", marker)
    s = Store(tmp_path / "store")
    with pytest.raises(CorruptRecord, match="position 1"):
        s.read_stream("s-1")
    with pytest.raises(CorruptRecord, match="position 1"):
        s.read_all(0)
    # the intact event before it is still served
    payloads, _ = s.read_stream("s-1", limit=1)
    assert codec.decode_record(payloads[0]).version == 0
    s.close()


def test_a_full_map_grows_instead_of_failing(tmp_path: Path) -> None:
    """LMDB's map is address space: when a write needs more, the store doubles it and runs
    the batch again, so nothing fails at a fixed size."""
    s = Store(tmp_path / "store", map_size=1 << 20)
    ok(append(s, "s-1"))
    big = [EventData("T", b"x" * 200_000, is_json=False) for _ in range(10)]
    result = ok(run(s, cmd.append("s-1", -2, big))[0])
    assert result.first_version == 1 and result.last_version == 10
    assert s.map_size > 1 << 20
    assert versions(s, "s-1") == list(range(11))
    s.close()
    assert versions(Store(tmp_path / "store"), "s-1") == list(range(11))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with diskfull.small_disk(tmp_path / "disk", 16) as at:
        yield at


def test_full_disk_refuses_writes_definitely_keeps_state_and_recovers(small_disk: Path) -> None:
    s = Store(small_disk / "store")
    try:
        _refuse_and_recover(s, small_disk)
    finally:
        s.close()
    reopened = Store(small_disk / "store")
    assert versions(reopened, "s-1") == [0, 1, 2, 3]
    reopened.close()


def _refuse_and_recover(s: Store, small_disk: Path) -> None:
    ok(append(s, "s-1", n=3))
    filler = diskfull.fill(small_disk)
    big = [EventData("T", os.urandom(100_000), is_json=False) for _ in range(40)]
    with pytest.raises(StorageFull, match="is full"):
        s.apply(cmd.encode_batch(1, [cmd.append("s-1", -2, big)]))
    assert s.health.current.state == "full"
    with pytest.raises(StorageFull):  # refused at once while the disk stays full
        s.apply(cmd.encode_batch(2, [cmd.append("s-1", -2, [ev()])]))
    assert versions(s, "s-1") == [0, 1, 2]  # nothing of the refused batches was written
    filler.unlink()
    assert ok(append(s, "s-1")).first_version == 3  # space is back: writes resume by themselves
    assert s.health.current.state == "ok"


def test_member_registry_is_replicated_state(store: Store) -> None:
    ok(run(store, cmd.member_set("127.0.0.1:2114", "n1", "esdb://127.0.0.1:2113"))[0])
    ok(run(store, cmd.member_set("127.0.0.1:2124", "n2", "esdb://127.0.0.1:2123"))[0])
    ok(run(store, cmd.member_set("127.0.0.1:2124", "n2", "esdb://127.0.0.1:2199"))[0])
    assert [(m.node_id, m.url) for m in store.members()] == [
        ("n1", "esdb://127.0.0.1:2113"),
        ("n2", "esdb://127.0.0.1:2199"),
    ]
    assert ok(run(store, cmd.member_delete("127.0.0.1:2114"))[0]) is True
    assert ok(run(store, cmd.member_delete("127.0.0.1:2114"))[0]) is False
    assert isinstance(run(store, [6, "", "n", "u"])[0], InvalidInput)
    assert [m.node_id for m in store.members()] == ["n2"]


def test_created_never_goes_backwards_in_all_order(tmp_path: Path) -> None:
    """A leader whose clock is behind the previous one's stamps no event before an older one:
    every member applies max(stamp, newest created) to the same batches, also after reopen."""
    store = Store(tmp_path / "store")
    ok(run(store, cmd.append("s-1", -2, [ev()]), created_us=2_000_000))
    ok(run(store, cmd.append("s-1", -2, [ev()]), created_us=1_000_000))  # a clock 1 s behind
    store.close()
    store = Store(tmp_path / "store")
    ok(run(store, cmd.append("s-1", -2, [ev()]), created_us=1_500_000))
    ok(run(store, cmd.append("s-1", -2, [ev()]), created_us=3_000_000))
    payloads, _ = store.read_stream("s-1", now_us=4_000_000)
    created = [codec.decode_record(p).created.timestamp() for p in payloads]
    assert created == [2.0, 2.0, 2.0, 3.0]
    store.close()


def test_append_many_is_all_or_none(store: Store) -> None:
    ok(append(store, "a-1", n=2))
    both = cmd.AppendMany(
        [cmd.append("a-1", 1, [ev(n=10)]), cmd.append("b-1", -1, [ev(n=20), ev(n=21)])]
    )
    results = ok(run(store, both)[0])
    assert [(r.stream, r.first_version, r.last_version) for r in results] == [
        ("a-1", 2, 2),
        ("b-1", 0, 1),
    ]
    positions = [r.position for r in results]
    assert positions == [2, 3]  # contiguous in $all, in the order of the parts
    # The second part conflicts: the first part, valid on its own, is not written either.
    conflict = cmd.AppendMany([cmd.append("c-1", -1, [ev(n=30)]), cmd.append("a-1", 0, [ev(n=40)])])
    error = run(store, conflict, cmd.append("d-1", -2, [ev(n=50)]))
    assert isinstance(error[0], WrongExpectedVersion) and error[0].details["part"] == 1
    assert isinstance(error[1], AppendResult)  # other commands of the batch are unaffected
    with pytest.raises(StreamNotFound):
        store.stream_info("c-1")
    assert versions(store, "a-1") == [0, 1, 2]
    # d-1's event takes the position the aborted part had used: $all stays dense
    assert isinstance(error[1], AppendResult) and error[1].position == 5
    assert store.last_position == 5
