"""msgpack encodings shared by storage, server and client, and the record checksum.

A stored record is `crc32(payload) as u32 big-endian` + `payload`, where payload is a msgpack
array. The same payload bytes are sent to clients unchanged, so an event is encoded once when
it is stored and decoded once by the reader.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from typing import TYPE_CHECKING, Any

import msgpack

from esdb_node.errors import CorruptRecord
from esdb_node.model import (
    RecordedEvent,
    Snapshot,
    utc_from_micros,
)

if TYPE_CHECKING:
    from esdb_node.ops import EventIn

_CRC = struct.Struct(">I")
U64 = struct.Struct(">Q")


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return,unused-ignore]


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


def encode_record(
    stream: str,
    version: int,
    position: int,
    created_us: int,
    event: EventIn,
) -> bytes:
    """Payload of a stored event (unsealed)."""
    return pack(
        [
            stream,
            version,
            position,
            created_us,
            event.id,
            event.type,
            event.data,
            event.metadata,
            event.is_json,
        ]
    )


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
