"""msgpack encodings shared by storage, server and client, and the checksum of sealed values.

Events and records have a fixed binary layout of their own (`esdb_node/record.py`): a client
encodes an event once, the store keeps those bytes inside a record, and reads send the stored
record unchanged. Everything else the store keeps (stream infos, snapshots, members) is a
sealed msgpack value: `crc32(payload) as u32 big-endian` + `payload`.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack

from esdb_node import record
from esdb_node.errors import CorruptRecord
from esdb_node.model import (
    RecordedEvent,
    Snapshot,
    utc_from_micros,
)

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


def decode_record(raw: bytes) -> RecordedEvent:
    """A record as a node sent it (`record.py`), decoded lazily, field by field on access."""
    return RecordedEvent.from_record(raw)


record_header = record.record_header


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
