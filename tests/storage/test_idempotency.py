"""The idempotency promise of docs/streams.md, on real LMDB files: an exact retry (same ids,
same expected version) returns the original result and writes nothing, under every kind of
expected version, for as long as the store lives, except `any`, which is recognised within
its stream's window of 64 appends; ids are per stream; partial matches are conflicts."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esdb_node import codec
from esdb_node.errors import InvalidInput, StreamDeleted, WrongExpectedVersion
from esdb_node.model import AppendResult, EventData, expected_to_int
from esdb_node.storage import commands as cmd
from esdb_node.storage.info import WINDOW
from esdb_node.storage.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "store", sync=False)
    yield s
    s.close()


def events(n: int, event_type: str = "T") -> list[bytes]:
    return [EventData.from_json(event_type, {"i": i}).encode() for i in range(n)]


def apply(store: Store, *commands: cmd.Command) -> list[Any]:
    results = store.apply(cmd.encode_batch(time.time_ns() // 1000, list(commands)))
    assert results is not None
    return results


def append(store: Store, stream: str, batch: list[bytes], expected: Any = "any") -> Any:
    return apply(store, cmd.append(stream, expected_to_int(expected), batch))[0]


def ok(result: Any) -> AppendResult:
    assert isinstance(result, AppendResult), result
    return result


def versions(store: Store, stream: str) -> list[int]:
    records, _ = store.read_stream(stream, limit=10**6)
    return [codec.decode_record(r).version for r in records]


def filler(store: Store, stream: str, appends: int) -> None:
    """Other writers' appends to the same stream (one batch, to keep the test quick)."""
    apply(store, *(cmd.append(stream, -2, events(1)) for _ in range(appends)))


@pytest.mark.parametrize("kind", ["exact", "no-stream", "exists", "any"])
@pytest.mark.parametrize("later", [0, 10, 200])
def test_an_exact_retry_returns_the_original_result(store: Store, kind: str, later: int) -> None:
    """`later` other appends to the stream between the original and the retry: beyond the
    window (64) only `any` loses the promise."""
    if kind != "no-stream":
        ok(append(store, "s-1", events(2)))
    expected: Any = {"exact": 1, "no-stream": "no-stream", "exists": "exists", "any": "any"}[kind]
    batch = events(3)
    first = ok(append(store, "s-1", batch, expected))
    filler(store, "s-1", later)
    ok(append(store, "other-1", events(1)))
    position = store.last_position
    again = append(store, "s-1", batch, expected)
    if kind == "any" and later >= WINDOW:
        assert ok(again).first_version != first.first_version  # written again: the documented edge
        return
    assert again == first
    assert store.last_position == position  # nothing written
    assert len(versions(store, "s-1")) == first.last_version + 1 + later


def test_the_any_window_is_the_streams_last_64_appends(store: Store) -> None:
    batch = events(2)
    first = ok(append(store, "s-1", batch))
    filler(store, "s-1", WINDOW - 1)
    assert append(store, "s-1", batch) == first  # 63 appends later: still recognised
    filler(store, "other-1", 500)  # other streams do not push it out
    assert append(store, "s-1", batch) == first
    filler(store, "s-1", 1)  # the 64th append to s-1 does
    assert ok(append(store, "s-1", batch)).first_version == first.last_version + WINDOW + 1


def test_a_retry_in_the_same_batch_as_its_original(store: Store) -> None:
    """Group commit can put a client's retry in the batch that holds the original."""
    batch = events(3)
    results = apply(store, *(cmd.append("s-1", -1, batch) for _ in range(2)))
    assert results[0] == results[1]
    assert versions(store, "s-1") == [0, 1, 2]


def test_event_ids_are_per_stream(store: Store) -> None:
    batch = events(2)
    a = ok(append(store, "s-1", batch, "no-stream"))
    b = ok(append(store, "s-2", batch, "no-stream"))  # the same ids: other events
    assert (a.first_version, b.first_version) == (0, 0) and b.position == a.position + 2
    assert append(store, "s-2", batch, "no-stream") == b  # and retried per stream
    for stream in ("s-1", "s-2"):
        records, _ = store.read_stream(stream)
        assert [codec.decode_record(r).id.bytes for r in records] == [e[8:24] for e in batch]


def test_a_partial_match_is_a_conflict_and_writes_nothing(store: Store) -> None:
    batch = events(3)
    ok(append(store, "s-1", batch, "no-stream"))
    position = store.last_position
    for attempt, expected in (
        (batch[:1] + events(1), "any"),  # first matches, second does not
        (batch + events(1), "no-stream"),  # more events than were appended
        (batch + events(1), "exists"),
    ):
        result = append(store, "s-1", attempt, expected)
        assert isinstance(result, WrongExpectedVersion), (attempt, expected)
        assert "not an exact retry" in result.message
        assert result.actual == 2
    assert store.last_position == position


def test_a_retry_under_another_expected_version_is_a_conflict(store: Store) -> None:
    batch = events(1)
    first = ok(append(store, "s-1", batch, "no-stream"))
    ok(append(store, "s-1", events(1)))
    # current version 1: `1` would allow a new write, but these ids were appended at 0
    result = append(store, "s-1", batch, 1)
    assert isinstance(result, WrongExpectedVersion)
    assert "appended at version 0" in result.message
    assert isinstance(append(store, "s-1", batch, "exists"), WrongExpectedVersion)
    assert append(store, "s-1", batch, "any") == append(store, "s-1", batch, "no-stream") == first


def test_a_prefix_of_a_stored_append_is_a_retry_of_that_much(store: Store) -> None:
    """As KurrentDB: a retry may name the first events of an append (a batch cut shorter)."""
    batch = events(4)
    ok(append(store, "s-1", batch, "no-stream"))
    again = ok(append(store, "s-1", batch[:2], "no-stream"))
    assert (again.first_version, again.last_version) == (0, 1)
    assert versions(store, "s-1") == [0, 1, 2, 3]


def test_retries_after_a_soft_delete(store: Store) -> None:
    """Within the window any retry is recognised after a soft delete; beyond it an exact
    version still anchors it, but `no-stream` cannot (the stream does not exist any more, so
    `no-stream` allows a new write): the documented edge."""
    batch, late = events(2), events(1)
    first = ok(append(store, "s-1", batch, "no-stream"))
    exact = ok(append(store, "s-1", late, 1))
    filler(store, "s-1", 10)
    apply(store, cmd.delete("s-1", -2, False))
    assert append(store, "s-1", batch, "no-stream") == first
    filler(store, "s-1", 100)
    apply(store, cmd.delete("s-1", -2, False))
    assert append(store, "s-1", late, 1) == exact
    assert ok(append(store, "s-1", batch, "no-stream")).first_version == 113
    apply(store, cmd.delete("s-1", -2, True))
    assert isinstance(append(store, "s-1", batch, "no-stream"), StreamDeleted)


def test_the_same_id_twice_in_one_append_is_invalid(store: Store) -> None:
    one = events(1)[0]
    assert isinstance(append(store, "s-1", [one, one]), InvalidInput)
    assert store.last_position == -1


def test_a_stored_id_reused_in_a_new_append_of_its_stream_is_written(store: Store) -> None:
    """Ids are not unique keys: an append whose *first* id is new is new, wherever its other
    ids were seen (as KurrentDB)."""
    a, b = events(2)
    ok(append(store, "s-1", [a]))
    result = ok(append(store, "s-1", [b, a]))
    assert (result.first_version, result.last_version) == (1, 2)


def test_windows_and_anchors_survive_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", sync=False)
    by_kind = {kind: events(2) for kind in ("exists", "any")}
    ok(append(store, "s-1", events(1)))
    first = {kind: ok(append(store, "s-1", batch, kind)) for kind, batch in by_kind.items()}
    filler(store, "s-1", WINDOW + 1)
    store.close()
    store = Store(tmp_path / "store", sync=False)
    try:
        assert append(store, "s-1", by_kind["exists"], "exists") == first["exists"]
        assert store.verify().event_ids == 1  # one `exists` anchor
    finally:
        store.close()


def test_ids_do_not_need_to_be_random(store: Store) -> None:
    """The window is found by bytes, not by a B-tree: ids that share long prefixes, or that
    look like the version bytes next to them, are still told apart."""
    twins = [uuid.UUID(int=(1 << 64) + i) for i in range(3)]
    batches = [[EventData("T", b"{}", id=i).encode()] for i in twins]
    results = [ok(append(store, "s-1", b)) for b in batches]
    assert [append(store, "s-1", b) for b in batches] == results
    odd = [EventData("T", b"{}", id=uuid.UUID(bytes=bytes(15) + b"\x01")).encode()]
    assert append(store, "s-1", odd) == ok(append(store, "s-1", odd))
