"""Versioned write commands: the only way state changes.

A batch is `msgpack([FORMAT, created_us, [command, ...]])` and a command is an array whose
first element is its kind (`[8, stream, expected, events]` for an append). The leader (or the
single node) stamps `created_us` once per batch, so applying the same bytes on every node
gives the same state. Each command gets its own result; one failing command does not affect
the others, and one that does not even decode is a result too (`decode_commands`).

The declarations below are the encoding: msgspec writes and reads exactly these arrays.

Batch format 2 (storage format 2) carries appends as kind 8, whose events are the clients'
encoded events (`esdb_node/record.py`), passed through untouched. Batches of format 1 may
still sit in Raft journals written before the upgrade; they decode as before (kind 1, events
as `[id, type, data, metadata, is_json]` arrays) and are applied with the format-1 rules
(`storage/legacy.py`), so that every member reaches the same state whether it applied them
before or after its store was migrated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import msgspec

from esdb_node import record
from esdb_node.errors import InvalidInput
from esdb_node.model import EventData, StreamMetadata, validate_event_type

FORMAT = 2
FORMATS = (1, 2)  # batch formats this code applies


class Command(msgspec.Struct, frozen=True, array_like=True):
    def size(self) -> int:
        """Rough encoded size, used to bound a group-commit batch without encoding twice."""
        return 64


class Noop(Command, tag=0, frozen=True):
    """Changes nothing; committing one proves leadership (read barriers)."""


class LegacyEvent(msgspec.Struct, frozen=True, array_like=True):
    """An event of a format-1 append: `[id: bin(16), type, data: bin, metadata: bin, is_json]`
    (validated on decoding exactly as format 1 did)."""

    id: bytes
    type: str
    data: bytes
    metadata: bytes = b""
    is_json: bool = True

    def __post_init__(self) -> None:
        if len(self.id) != 16:
            raise InvalidInput("event id must be 16 bytes (a UUID)")
        if self.id == bytes(16):
            raise InvalidInput("event id must not be the nil UUID")
        validate_event_type(self.type)
        if not self.data:
            raise InvalidInput(f"event {_uuid(self.id)} has empty data")

    def encode(self) -> bytes:
        return record.encode_event(self.id, self.type, self.data, self.metadata, self.is_json)


class LegacyAppend(Command, tag=1, frozen=True):
    """A format-1 append (only found in Raft journals written before the upgrade)."""

    stream: str
    expected: int
    events: list[LegacyEvent]

    def size(self) -> int:
        return 64 + len(self.stream) + sum(40 + len(e.type) + len(e.data) for e in self.events)


class AppendEvents(Command, tag=8, frozen=True):
    """`events` are encoded events (`record.py`), checked by the node that took the request."""

    stream: str
    expected: int
    events: list[bytes]

    def size(self) -> int:
        return 64 + len(self.stream) + sum(map(len, self.events))


class AppendMany(Command, tag=9, frozen=True):
    """Appends to several streams, all or none: one failing part undoes the others."""

    parts: list[AppendEvents]

    def size(self) -> int:
        return 16 + sum(part.size() for part in self.parts)


class DeleteStream(Command, tag=2, frozen=True):
    stream: str
    expected: int
    hard: bool


class SetMetadata(Command, tag=3, frozen=True):
    stream: str
    metadata: StreamMetadata


class SaveSnapshot(Command, tag=4, frozen=True):
    stream: str
    version: int
    data: bytes
    metadata: bytes

    def size(self) -> int:
        return 64 + len(self.stream) + len(self.data) + len(self.metadata)


class DeleteSnapshot(Command, tag=5, frozen=True):
    """`version` -1 deletes every snapshot of the stream."""

    stream: str
    version: int


class SetMember(Command, tag=6, frozen=True):
    """Record how to reach a cluster member (replicated, so every node can redirect)."""

    raft: str
    node_id: str
    url: str


class DeleteMember(Command, tag=7, frozen=True):
    raft: str


AnyCommand = Union[  # noqa: UP007
    Noop,
    LegacyAppend,
    AppendEvents,
    AppendMany,
    DeleteStream,
    SetMetadata,
    SaveSnapshot,
    DeleteSnapshot,
    SetMember,
    DeleteMember,
]


class _Batch(msgspec.Struct, array_like=True):
    format: int
    created_us: int
    commands: list[msgspec.Raw]


_ENCODER = msgspec.msgpack.Encoder()
_BATCH = msgspec.msgpack.Decoder(_Batch)
_COMMAND = msgspec.msgpack.Decoder(AnyCommand)


def encode_batch(created_us: int, commands: Sequence[Command]) -> bytes:
    return _ENCODER.encode([FORMAT, created_us, commands])


def decode_batch(batch: bytes) -> tuple[int, list[msgspec.Raw]]:
    """(created_us, undecoded commands); raises InvalidInput for a malformed batch."""
    return decode_batch_format(batch)[1:]


def decode_batch_format(batch: bytes) -> tuple[int, int, list[msgspec.Raw]]:
    """(format, created_us, undecoded commands); raises InvalidInput for a malformed batch."""
    try:
        decoded = _BATCH.decode(batch)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidInput(f"malformed command batch: {exc}") from None
    if decoded.format not in FORMATS:
        raise InvalidInput(f"unknown command format {decoded.format}")
    return decoded.format, decoded.created_us, decoded.commands


def decode_command(raw: msgspec.Raw) -> Command:
    try:
        command: Command = _COMMAND.decode(raw)
        return command
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidInput(f"malformed command: {exc}") from None


# Constructors with the historical names, for tests and tools that build batches by hand.


def noop() -> Noop:
    return Noop()


def append(stream: str, expected: int, events: list[Any]) -> AppendEvents:
    """An append of events given as `EventData`, encoded events, or `[id, type, data,
    metadata, is_json]` lists (ids as UUIDs or 16 bytes)."""
    return AppendEvents(stream, expected, [_event(e) for e in events])


def _event(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, EventData):
        return value.encode()
    event_id, event_type, data, *rest = value
    if not isinstance(event_id, bytes):
        event_id = event_id.bytes
    return record.encode_event(event_id, event_type, data, *rest)


def _uuid(raw: bytes) -> str:
    import uuid

    return str(uuid.UUID(bytes=raw))


def delete(stream: str, expected: int, hard: bool) -> DeleteStream:
    return DeleteStream(stream, expected, hard)


def set_metadata(stream: str, metadata: StreamMetadata) -> SetMetadata:
    return SetMetadata(stream, metadata)


def snapshot_save(stream: str, version: int, data: bytes, metadata: bytes) -> SaveSnapshot:
    return SaveSnapshot(stream, version, data, metadata)


def snapshot_delete(stream: str, version: int | None) -> DeleteSnapshot:
    return DeleteSnapshot(stream, -1 if version is None else version)


def member_set(raft: str, node_id: str, url: str) -> SetMember:
    return SetMember(raft, node_id, url)


def member_delete(raft: str) -> DeleteMember:
    return DeleteMember(raft)
