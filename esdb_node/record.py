"""Byte layouts of events and records: storage format 2, client protocol version 2.

An **event** is what a client sends in an `append`: encoded once, by the client, and stored
unchanged. A **record** is what the store keeps in its `$all` log and what reads send back:
the event with a header in front (where the store put it) and the stream name behind, sealed
with a CRC-32. All integers are big-endian.

```
event (24 + T + M + D bytes; D >= 1)
  0   u8   event layout = 1
  1   u8   flags: bit 0 is_json; the other bits are 0
  2   u16  T: type length in bytes (UTF-8, 1..256 characters, no control characters)
  4   u32  M: metadata length in bytes
  8   16B  event id (a UUID's bytes, not nil)
  24  T    type
  ..  M    metadata
  ..  D    data (the rest of the event)

record (32 + event + S bytes)
  0   u32  CRC-32 of bytes 4..end
  4   u8   record layout = 2
  5   u8   0
  6   u16  S: stream name length in bytes
  8   u64  position in `$all`
  16  u64  version in the stream
  24  u64  created, microseconds since the Unix epoch (UTC)
  32  ..   the event, byte for byte as the client sent it
  ..  S    stream name (UTF-8)
```

Everything a filter or an index needs (stream, category, type, id, version, position,
created, is_json) is read from the first 56 bytes and the last S without touching the data.
"""

from __future__ import annotations

import re
import struct
import uuid
import zlib

from esdb_node.errors import CorruptRecord, InvalidInput

EVENT_LAYOUT = 1
RECORD_LAYOUT = 2
IS_JSON = 1
MAX_TYPE_CHARS = 256
NIL_ID = bytes(16)

EVENT_HEAD = struct.Struct(">BBHI16s")  # layout, flags, T, M, id
RECORD_HEAD = struct.Struct(">BBHQQQ")  # layout, 0, S, position, version, created (after the CRC)
HEADER = struct.Struct(">IBBHQQQBBHI16s")  # the CRC, the record head and the event head
CRC = struct.Struct(">I")
EVENT_AT = 32  # where the event starts in a record
TYPE_AT = EVENT_AT + EVENT_HEAD.size  # where the type starts in a record (56)
ID_AT = EVENT_AT + 8  # where the event id starts in a record (40)
MIN_EVENT = EVENT_HEAD.size + 2  # one byte of type, one of data

_BAD_TYPE_BYTES = re.compile(rb"[\x00-\x1f]")
_GOOD_TYPES: dict[bytes, None] = {}  # types already checked (bounded; cleared when full)
_GOOD_TYPES_MAX = 4096


# --- events (client side) ----------------------------------------------------------------------


def encode_event(
    event_id: bytes, event_type: str, data: bytes, metadata: bytes = b"", is_json: bool = True
) -> bytes:
    """The wire and storage encoding of one event (no validation: `check_events` does it)."""
    type_raw = event_type.encode()
    head = EVENT_HEAD.pack(
        EVENT_LAYOUT, IS_JSON if is_json else 0, len(type_raw), len(metadata), event_id
    )
    return b"".join((head, type_raw, metadata, data))


def event_id(event: bytes) -> bytes:
    return event[8:24]


def event_type(event: bytes) -> bytes:
    return event[24 : 24 + (event[2] << 8 | event[3])]


def event_size(event: bytes) -> int:
    """Data + metadata bytes (what `max_event_bytes` limits)."""
    return len(event) - EVENT_HEAD.size - (event[2] << 8 | event[3])


# --- events (node side) ------------------------------------------------------------------------


def check_events(events: list[bytes]) -> None:
    """Validate the fixed fields of encoded events without decoding them into objects.

    Raises InvalidInput naming the first bad event (by index) and what is wrong with it.
    """
    unpack = EVENT_HEAD.unpack_from
    for i, event in enumerate(events):
        size = len(event)
        if size < MIN_EVENT:
            raise InvalidInput(
                f"event {i} is {size} bytes; an encoded event is at least {MIN_EVENT}",
                hint="events are encoded as docs/protocol.md describes (an event layout 1 blob)",
            )
        layout, flags, tlen, mlen, eid = unpack(event)
        if layout != EVENT_LAYOUT:
            raise InvalidInput(f"event {i}: unknown event layout {layout} (this node reads 1)")
        if flags & ~IS_JSON:
            raise InvalidInput(f"event {i}: unknown flags {flags:#04x}")
        if eid == NIL_ID:
            raise InvalidInput(f"event {i}: event id must not be the nil UUID")
        if not tlen:
            raise InvalidInput(f"event {i}: event type is empty")
        end = EVENT_HEAD.size + tlen + mlen
        if end >= size:
            if end == size:
                raise InvalidInput(f"event {i} ({uuid.UUID(bytes=eid)}) has empty data")
            raise InvalidInput(
                f"event {i}: type and metadata lengths ({tlen} + {mlen} bytes) overrun "
                f"the event ({size} bytes)"
            )
        type_raw = event[24 : 24 + tlen]
        if type_raw not in _GOOD_TYPES:
            _check_type(i, type_raw)


def _check_type(i: int, type_raw: bytes) -> None:
    try:
        text = type_raw.decode()
    except UnicodeDecodeError:
        raise InvalidInput(f"event {i}: event type is not valid UTF-8") from None
    if len(text) > MAX_TYPE_CHARS:
        raise InvalidInput(
            f"event {i}: event type is {len(text)} characters; the limit is {MAX_TYPE_CHARS}"
        )
    if _BAD_TYPE_BYTES.search(type_raw):
        raise InvalidInput(f"event {i}: event type {text!r} contains a control character")
    if len(_GOOD_TYPES) >= _GOOD_TYPES_MAX:
        _GOOD_TYPES.clear()
    _GOOD_TYPES[type_raw] = None


# --- records -----------------------------------------------------------------------------------


def seal_record(
    event: bytes, stream_raw: bytes, position: int, version: int, created_us: int
) -> bytes:
    """The stored (and sent) record of an event."""
    body = RECORD_HEAD.pack(RECORD_LAYOUT, 0, len(stream_raw), position, version, created_us)
    body += event
    body += stream_raw
    return CRC.pack(zlib.crc32(body)) + body


def check_record(record: bytes, what: str) -> bytes:
    """`record` if its checksum and layout hold, else CorruptRecord naming `what`."""
    # (called for every record read: a copy of the slice is cheaper than a memoryview of it)
    if len(record) < TYPE_AT + 2 or zlib.crc32(record[4:]) != CRC.unpack_from(record)[0]:
        if len(record) < TYPE_AT + 2:
            raise CorruptRecord(f"corrupt {what}: value is {len(record)} bytes")
        raise CorruptRecord(
            f"corrupt {what}: checksum mismatch",
            hint="restore this node's data from a healthy replica or a backup",
        )
    if record[4] != RECORD_LAYOUT:
        raise CorruptRecord(f"corrupt {what}: unknown record layout {record[4]}")
    return record


def record_stream(record: bytes) -> bytes:
    return record[len(record) - (record[6] << 8 | record[7]) :]


def record_type(record: bytes) -> bytes:
    return record[TYPE_AT : TYPE_AT + (record[34] << 8 | record[35])]


def record_id(record: bytes) -> bytes:
    return record[ID_AT : ID_AT + 16]


def record_position(record: bytes) -> int:
    return int.from_bytes(record[8:16])


def record_version(record: bytes) -> int:
    return int.from_bytes(record[16:24])


def record_header(record: bytes) -> tuple[str, int, int, int, bytes, str]:
    """(stream, version, position, created_us, id, type) from the fixed fields only."""
    _, _, _, slen, position, version, created, _, _, tlen, _, eid = HEADER.unpack_from(record)
    return (
        record[len(record) - slen :].decode(),
        version,
        position,
        created,
        eid,
        record[TYPE_AT : TYPE_AT + tlen].decode(),
    )


def category_of(stream_raw: bytes) -> bytes | None:
    """The part of a stream name before its first `-` (`order-42` -> `order`); None when there
    is no `-` after the first character (such a stream is in no category)."""
    cut = stream_raw.find(b"-")
    return stream_raw[:cut] if cut > 0 else None
