"""The event and record layouts (esdb_node/record.py, docs/protocol.md): what a client encodes
the node accepts and stores unchanged, a record decodes lazily to the fields it was built
from, and any flipped bit is a checksum error."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from esdb_node import record
from esdb_node.errors import CorruptRecord, InvalidInput
from esdb_node.model import EventData, RecordedEvent, utc_from_micros

_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)


@given(
    stream=_text,
    event_type=_text.filter(lambda t: len(t) <= 256),
    data=st.binary(min_size=1, max_size=300),
    metadata=st.binary(max_size=100),
    is_json=st.booleans(),
    version=st.integers(0, 2**63),
    position=st.integers(0, 2**63),
    created_us=st.integers(0, 4_102_444_800_000_000),  # up to 2100
    event_id=st.uuids().filter(lambda u: u.int != 0),
)
def test_an_event_round_trips_through_its_record(
    stream: str,
    event_type: str,
    data: bytes,
    metadata: bytes,
    is_json: bool,
    version: int,
    position: int,
    created_us: int,
    event_id: uuid.UUID,
) -> None:
    event = EventData(event_type, data, metadata, event_id, is_json).encode()
    record.check_events([event])  # what the node checks
    raw = record.seal_record(event, stream.encode(), position, version, created_us)
    assert raw[record.EVENT_AT : len(raw) - len(stream.encode())] == event  # stored unchanged
    assert record.check_record(raw, "test") is raw
    e = RecordedEvent.from_record(raw)
    assert (e.stream, e.version, e.position, e.id, e.type) == (
        stream,
        version,
        position,
        event_id,
        event_type,
    )
    assert (e.data, e.metadata, e.is_json, e.created) == (
        data,
        metadata,
        is_json,
        utc_from_micros(created_us),
    )
    assert record.record_header(raw) == (
        stream,
        version,
        position,
        created_us,
        event_id.bytes,
        event_type,
    )


def test_recorded_events_built_from_fields_equal_decoded_ones() -> None:
    fields = dict(
        stream="order-1",
        version=2,
        position=21,
        id=uuid.UUID(int=22),
        type="Attachment",
        data=b"\x00\x01binary",
        metadata=b"",
        is_json=False,
        created=datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC),
    )
    built = RecordedEvent(**fields)  # type: ignore[arg-type]
    decoded = RecordedEvent.from_record(bytes(built.record))
    assert built == decoded and hash(built) == hash(decoded)
    assert {k: getattr(decoded, k) for k in fields} == fields
    assert "type='Attachment'" in repr(decoded)
    with pytest.raises(InvalidInput, match="not an event record"):
        RecordedEvent.from_record(b"\x93\x01\x02\x03")  # a protocol-1 msgpack record


def test_every_flipped_bit_is_a_checksum_error() -> None:
    event = EventData.from_json("T", {"a": 1}).encode()
    raw = record.seal_record(event, b"s-1", 0, 0, 1)
    for at in range(len(raw)):
        for bit in (0x01, 0x80):
            damaged = bytearray(raw)
            damaged[at] ^= bit
            with pytest.raises(CorruptRecord, match=r"checksum mismatch|layout"):
                record.check_record(bytes(damaged), "event at position 0")


def test_categories() -> None:
    assert record.category_of(b"order-42") == b"order"
    assert record.category_of(b"order-42-x") == b"order"
    assert record.category_of(b"order") is None
    assert record.category_of(b"-x") is None


def test_a_type_checked_once_is_remembered_but_a_bad_one_never() -> None:
    good = EventData("Checked", b"1").encode()
    record.check_events([good] * 3)
    bad = EventData("Bad\x07", b"1").encode()
    for _ in range(2):
        with pytest.raises(InvalidInput, match="event 1: event type 'Bad\\\\x07' contains"):
            record.check_events([good, bad])
