"""msgpack encodings shared by storage, server and client, and the record checksum.

A stored record is `crc32(payload) as u32 big-endian` + `payload`, where payload is a msgpack
array. The same payload bytes are sent to clients unchanged, so an event is encoded once when
it is stored and decoded once by the reader.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from typing import Any

import msgpack

from esdb_node.errors import CorruptRecord, InvalidInput, ProtocolError
from esdb_node.model import (
    EventData,
    RecordedEvent,
    Snapshot,
    utc_from_micros,
    validate_event_type,
)

_CRC = struct.Struct(">I")
U64 = struct.Struct(">Q")

# Hard limits used whenever bytes from outside the process are unpacked.
MAX_ARRAY = 100_000
MAX_MAP = 1_000


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return,unused-ignore]


def unpack_untrusted(data: bytes, *, max_bytes: int) -> Any:
    """Unpack bytes that came from a socket or disk; every malformed input is a ProtocolError."""
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=MAX_ARRAY,
            max_map_len=MAX_MAP,
            max_ext_len=0,
        )
    except (
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
        ValueError,
        TypeError,
        UnicodeDecodeError,
        OverflowError,
    ) as exc:
        raise ProtocolError(f"malformed msgpack: {type(exc).__name__}") from None


def unpack_trusted(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)


# --- checksummed values ------------------------------------------------------------------------


def seal(payload: bytes) -> bytes:
    return _CRC.pack(zlib.crc32(payload)) + payload


def unseal(value: bytes, what: str) -> bytes:
    """Return the payload of a sealed value, or raise CorruptRecord naming `what`."""
    if len(value) < 4:
        raise CorruptRecord(f"corrupt {what}: value is {len(value)} bytes")
    payload = bytes(value[4:])
    (expected,) = _CRC.unpack_from(value, 0)
    if zlib.crc32(payload) != expected:
        raise CorruptRecord(
            f"corrupt {what}: checksum mismatch",
            hint="restore this node's data from a healthy replica or a backup",
        )
    return payload


# --- events ------------------------------------------------------------------------------------


def event_to_wire(event: EventData) -> list[Any]:
    return [event.id.bytes, event.type, event.data, event.metadata, event.is_json]


def event_from_wire(value: Any, *, max_event_bytes: int) -> list[Any]:
    """Validate one event as sent by a client; returns [id16, type, data, metadata, is_json]."""
    if not isinstance(value, list) or len(value) != 5:
        raise InvalidInput("each event must be [id, type, data, metadata, is_json]")
    event_id, event_type, data, metadata, is_json = value
    if not isinstance(event_id, bytes) or len(event_id) != 16:
        raise InvalidInput("event id must be 16 bytes (a UUID)")
    if event_id == bytes(16):
        raise InvalidInput("event id must not be the nil UUID")
    validate_event_type(event_type)
    if not isinstance(data, bytes) or not isinstance(metadata, bytes):
        raise InvalidInput("event data and metadata must be bytes")
    if not isinstance(is_json, bool):
        raise InvalidInput("event is_json must be a boolean")
    if not data:
        raise InvalidInput(f"event {uuid.UUID(bytes=event_id)} has empty data")
    size = len(data) + len(metadata)
    if size > max_event_bytes:
        raise InvalidInput(
            f"event {uuid.UUID(bytes=event_id)} is {size} bytes; the limit is {max_event_bytes}",
            hint="raise the node's --max-event-bytes, or store large payloads elsewhere",
        )
    return value


def encode_record(
    stream: str,
    version: int,
    position: int,
    created_us: int,
    event: list[Any],
) -> bytes:
    """Payload of a stored event (unsealed)."""
    return pack([stream, version, position, created_us, *event])


def decode_record(payload: bytes) -> RecordedEvent:
    stream, version, position, created_us, event_id, event_type, data, metadata, is_json = (
        unpack_trusted(payload)
    )
    return RecordedEvent(
        stream=stream,
        version=version,
        position=position,
        id=uuid.UUID(bytes=event_id),
        type=event_type,
        data=data,
        metadata=metadata,
        is_json=is_json,
        created=utc_from_micros(created_us),
    )


def record_header(payload: bytes) -> tuple[str, int, int, int, bytes, str]:
    """(stream, version, position, created_us, id, type) without building a RecordedEvent."""
    fields = unpack_trusted(payload)
    return fields[0], fields[1], fields[2], fields[3], fields[4], fields[5]


def encode_snapshot(stream: str, version: int, data: bytes, metadata: bytes, created: int) -> bytes:
    return pack([stream, version, data, metadata, created])


def decode_snapshot(payload: bytes) -> Snapshot:
    stream, version, data, metadata, created = unpack_trusted(payload)
    return Snapshot(
        stream=stream,
        version=version,
        data=data,
        metadata=metadata,
        created=utc_from_micros(created),
    )
