"""Filtered `$all` reads through the category and type indexes, and the header-only matcher:
for any mix of appends, deletes and retention, every filter returns exactly the events a
brute-force filter of the whole log returns, in order, forward and backward, however the read
is paged; indexed reads examine only the records their index lists."""

from __future__ import annotations

import fnmatch
import tempfile
import time
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from esdb_node import codec, record
from esdb_node.model import AllFilter, EventData, RecordedEvent, StreamMetadata
from esdb_node.storage import commands as cmd
from esdb_node.storage.filters import CATEGORY, TYPE, RecordFilter
from esdb_node.storage.store import Store

STREAMS = ["order-1", "order-2", "orders-1", "order", "user-1", "a-b-c", "plain", "-x", "é-1"]
TYPES = ["Placed", "Paid", "Placed2", "Créé", "X-y"]
PREFIXES = ["order-", "order", "order-1", "ord", "a-", "a-b-", "-", "user-1", "zzz-", "é-", "é"]
PATTERNS = ["P*", "*d", "X-?", "Cr*", "*"]

_append = st.tuples(
    st.just("append"),
    st.sampled_from(STREAMS),
    st.lists(st.sampled_from(TYPES), min_size=1, max_size=6),
)
_other = st.tuples(
    st.sampled_from(["soft-delete", "retention"]),
    st.sampled_from(STREAMS),
    st.integers(min_value=1, max_value=3),
)
_batches = st.lists(st.lists(_append | _other, min_size=1, max_size=4), min_size=1, max_size=12)
_filters = st.builds(
    AllFilter,
    stream_prefix=st.none() | st.sampled_from(PREFIXES),
    event_types=st.lists(st.sampled_from(TYPES), max_size=3, unique=True).map(tuple),
    type_pattern=st.none() | st.sampled_from(PATTERNS),
)


def build(store: Store, batches: list[list[tuple[Any, ...]]]) -> None:
    for batch in batches:
        commands: list[cmd.Command] = []
        for op, stream, arg in batch:
            if op == "append":
                events = [EventData.from_json(t, {"s": stream}) for t in arg]
                commands.append(cmd.append(stream, -2, events))
            elif op == "soft-delete":
                commands.append(cmd.delete(stream, -2, False))
            else:
                commands.append(cmd.set_metadata(stream, StreamMetadata(max_count=arg)))
        store.apply(cmd.encode_batch(time.time_ns() // 1000, commands))


def brute(store: Store, flt: AllFilter) -> list[int]:
    """Positions a filter must return: every record decoded, the filter applied in Python."""
    records, _, done = store.read_all(0, limit=10**6, max_scan=10**6)
    assert done
    out = []
    for e in map(codec.decode_record, records):
        if flt.stream_prefix and not e.stream.startswith(flt.stream_prefix):
            continue
        if flt.event_types and e.type not in flt.event_types:
            continue
        if flt.type_pattern and not fnmatch.fnmatchcase(e.type, flt.type_pattern):
            continue
        out.append(e.position)
    return out


def paged(store: Store, flt: AllFilter, start: int | None, backward: bool, page: int) -> list[int]:
    out: list[int] = []
    position: int | None = start
    for _ in range(10_000):
        records, position, done = store.read_all(
            position, backward=backward, limit=page, filter=flt, max_scan=page + 1
        )
        out += [codec.decode_record(r).position for r in records]
        if done:
            return out
    raise AssertionError("the read never ended")


@given(_batches, st.lists(_filters, min_size=1, max_size=4), st.integers(1, 7))
def test_filtered_reads_return_exactly_the_matching_events_in_order(
    batches: list[list[tuple[Any, ...]]], filters: list[AllFilter], page: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store", sync=False)
        try:
            build(store, batches)
            assert store.verify().ok
            last = store.last_position
            for flt in filters:
                want = brute(store, flt)
                assert paged(store, flt, 0, False, page) == want, flt
                assert paged(store, flt, None, True, page) == want[::-1], flt
                middle = last // 2
                assert paged(store, flt, middle, False, page) == [p for p in want if p >= middle]
                assert paged(store, flt, middle, True, page) == [
                    p for p in want[::-1] if p <= middle
                ]
        finally:
            store.close()


def test_an_indexed_read_examines_only_listed_records(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", sync=False)
    try:

        def noise() -> list[EventData]:
            return [EventData.from_json("Noise", {}) for _ in range(500)]

        store.apply(cmd.encode_batch(1, [cmd.append("noise-1", -2, noise()) for _ in range(4)]))
        store.apply(
            cmd.encode_batch(
                2,
                [
                    cmd.append("order-7", -2, [EventData.from_json("Placed", {})]),
                    cmd.append("noise-2", -2, noise()),
                    cmd.append("order-8", -2, [EventData.from_json("Placed", {})]),
                ],
            )
        )
        for flt in (AllFilter(event_types=("Placed",)), AllFilter(stream_prefix="order-")):
            # one record examined per call, yet each call returns the next match
            first, position, done = store.read_all(0, filter=flt, max_scan=1)
            assert [codec.decode_record(r).position for r in first] == [2000]
            assert (position, done) == (2501, False)  # the next listed record
            second, position, done = store.read_all(position, filter=flt, max_scan=1)
            assert [codec.decode_record(r).position for r in second] == [2501]
            assert (position, done) == (store.last_position + 1, True)
        # a pattern is matched on each record's header: max_scan bounds the records examined
        records, position, done = store.read_all(
            0, filter=AllFilter(type_pattern="Pl*"), max_scan=1
        )
        assert (records, position, done) == ([], 1, False)
    finally:
        store.close()


def test_which_index_a_filter_uses() -> None:
    def plan(**kw: Any) -> Any:
        flt = RecordFilter.of(AllFilter(**kw))
        return None if flt is None else flt.index

    assert plan() is None
    assert plan(stream_prefix="order-") == (CATEGORY, (b"order",))
    assert plan(stream_prefix="order-4") == (CATEGORY, (b"order",))  # then the prefix on headers
    assert plan(stream_prefix="order") is None  # several categories: scan
    assert plan(event_types=("B", "A")) == (TYPE, (b"A", b"B"))
    assert plan(stream_prefix="o-", event_types=("A",)) == (CATEGORY, (b"o",))
    assert plan(type_pattern="A*") is None


_names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12).filter(
    lambda s: not s.startswith("$")
)


@given(_names, _names, _names, st.binary(max_size=64), _filters)
def test_the_matcher_reads_only_headers_and_agrees_with_the_fields(
    stream: str, event_type: str, other: str, data: bytes, flt: AllFilter
) -> None:
    """Any names (multi-byte UTF-8 included) and any data, JSON or not: the header matcher
    decides like the decoded fields would."""
    flt = AllFilter(
        stream_prefix=flt.stream_prefix and other[: len(flt.stream_prefix)],
        event_types=(*flt.event_types, event_type)[: len(flt.event_types)],
        type_pattern=flt.type_pattern,
    )
    raw = record.seal_record(
        record.encode_event(b"\x01" * 16, event_type, data or b"\xff", b"", False),
        stream.encode(),
        7,
        3,
        1_000_000,
    )
    compiled = RecordFilter.of(flt)
    e = RecordedEvent.from_record(raw)
    want = (
        (not flt.stream_prefix or e.stream.startswith(flt.stream_prefix))
        and (not flt.event_types or e.type in flt.event_types)
        and (not flt.type_pattern or fnmatch.fnmatchcase(e.type, flt.type_pattern))
    )
    assert (compiled is None or compiled.matches(raw)) == want
