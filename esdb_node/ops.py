"""The operation registry: one declaration per client operation.

Each operation is a frozen msgspec Struct whose tag is its wire name (`op`) and whose type
parameter is its result type. From that one declaration follow:

* decoding and validation of requests on the server (`REQUEST_DECODER`, one C-level pass:
  types, ranges and the `__post_init__` checks below; nothing else parses requests),
* encoding on the client (`encode_request`) and decoding of its result (`result_type`),
* routing: `write` operations are replicated and go to the leader; `needs_leader()` says
  where a client must send a request, `idempotent` whether it may resend it after an unknown
  outcome, `streaming` whether the answer is a stream of record chunks,
* the token scope a request needs (`scope`); ADMIN requests also carry a MAC made with the
  cluster's admin key (`mac`, see `esdb_node.keys` and `signed_fields`).

The server dispatches by type through a table (`esdb_node.server.dispatch`); the client has
one typed method per operation (`esdb_node.client`). docs/protocol.md lists the wire names.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar, Union

import msgspec

from esdb_node import record
from esdb_node.errors import InvalidInput, ProtocolError
from esdb_node.model import (
    AllFilter,
    AppendResult,
    DeleteResult,
    MemberView,
    NodeStatus,
    Snapshot,
    StreamInfo,
    StreamMetadata,
    VerifyReport,
    validate_stream_name,
)

R = TypeVar("R")

PROTOCOL_VERSION = 2  # 2: events and records in the layouts of esdb_node/record.py
MAX_READ_LIMIT = 1 << 62
DEFAULT_TIMEOUT = 10.0
MAX_EVENTS = 100_000  # per append

RequestId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]
Version = Annotated[int, msgspec.Meta(ge=0)]
Consistency = Literal["leader", "local"]

_EXPECTED_CODES = (-1, -2, -4)  # no-stream, any, exists (see model.expected_to_int)
MISSING_ID = -1  # never valid on the wire: the server refuses a request without an id


class Scope(StrEnum):
    """What a client token must allow for a request."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


def _expected(value: int) -> None:
    if value < 0 and value not in _EXPECTED_CODES:
        raise InvalidInput("field 'expected' must be >= 0, -1 (no-stream), -2 (any) or -4 (exists)")


class Request(msgspec.Struct, Generic[R], frozen=True, kw_only=True, tag_field="op"):
    """Fields every request has. `timeout` is the caller's remaining budget in seconds: the
    node turns it into one absolute deadline for the whole request (replication included)."""

    id: RequestId = MISSING_ID
    timeout: Seconds = DEFAULT_TIMEOUT

    result: ClassVar[Any] = None
    streaming: ClassVar[bool] = False
    scope: ClassVar[Scope] = Scope.READ
    write: ClassVar[bool] = False
    idempotent: ClassVar[bool] = True

    def needs_leader(self) -> bool:
        return self.write

    def check_limits(self, max_event_bytes: int) -> None:
        """Limits that depend on the node's settings (checked once the request decoded)."""

    @classmethod
    def wire_name(cls) -> str:
        return str(cls.__struct_config__.tag)


def _uuid(raw: bytes) -> str:
    import uuid

    return str(uuid.UUID(bytes=raw))


def check_event_size(size: int, what: str, max_event_bytes: int) -> None:
    if size > max_event_bytes:
        raise InvalidInput(
            f"{what} is {size} bytes; the limit is {max_event_bytes}",
            hint="raise the node's --max-event-bytes, or store large payloads elsewhere",
        )


# --- connection ---------------------------------------------------------------------------------


class HelloReply(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    node_id: str
    store_id: str
    role: str
    leader_url: str | None
    max_frame: int
    max_event_bytes: int
    # Fresh random bytes per connection: admin requests on it are signed over them.
    nonce: bytes = b""
    # What the token of this connection may do ("read", "write", "admin").
    scopes: list[str] = msgspec.field(default_factory=list)


class Hello(Request[HelloReply], tag="hello", kw_only=True, frozen=True):
    """The first request on a connection (id 0)."""

    result = HelloReply
    version: int
    token: str | None = None
    client: str = ""


class Cancel(Request[bool], tag="cancel", kw_only=True, frozen=True):
    """End a streamed request (a tail, a long read) by its id."""

    result = bool
    target: RequestId


# --- writes -------------------------------------------------------------------------------------


class Append(Request[AppendResult], tag="append", kw_only=True, frozen=True):
    """`events` are encoded events (`bin`, event layout 1 of `esdb_node/record.py`): the node
    checks their fixed fields and stores the bytes unchanged."""

    result = AppendResult
    scope = Scope.WRITE
    write = True
    stream: str
    expected: int = -2
    events: Annotated[list[bytes], msgspec.Meta(max_length=MAX_EVENTS)]

    def __post_init__(self) -> None:
        validate_stream_name(self.stream)
        _expected(self.expected)
        if not self.events:
            raise InvalidInput("an append needs at least one event")
        record.check_events(self.events)

    def check_limits(self, max_event_bytes: int) -> None:
        _check_encoded_events(self.events, max_event_bytes)


def _check_encoded_events(events: list[bytes], max_event_bytes: int) -> None:
    # Lengths first (C speed): only a batch holding a big event is looked at per event.
    if max(map(len, events)) - record.EVENT_HEAD.size <= max_event_bytes:
        return
    for event in events:
        size = record.event_size(event)
        check_event_size(size, f"event {_uuid(record.event_id(event))}", max_event_bytes)


class StreamAppend(msgspec.Struct, frozen=True, kw_only=True):
    """One part of an `append_many`; `events` are encoded as in `Append`."""

    stream: str
    expected: int = -2
    events: Annotated[list[bytes], msgspec.Meta(max_length=MAX_EVENTS)]

    def __post_init__(self) -> None:
        validate_stream_name(self.stream)
        _expected(self.expected)
        if not self.events:
            raise InvalidInput(f"the append to {self.stream!r} has no events")
        record.check_events(self.events)


class AppendMany(Request[list[AppendResult]], tag="append_many", kw_only=True, frozen=True):
    """Append to several streams atomically: all parts or none. A failing part (wrong expected
    version, ...) fails the whole request; its error says which part (`details.part`)."""

    result = list[AppendResult]
    scope = Scope.WRITE
    write = True
    parts: Annotated[list[StreamAppend], msgspec.Meta(min_length=1, max_length=1000)]

    def check_limits(self, max_event_bytes: int) -> None:
        for part in self.parts:
            _check_encoded_events(part.events, max_event_bytes)


class Delete(Request[DeleteResult], tag="delete", kw_only=True, frozen=True):
    result = DeleteResult
    scope = Scope.WRITE
    write = True
    idempotent = False
    stream: str
    expected: int = -2
    hard: bool = False

    def __post_init__(self) -> None:
        validate_stream_name(self.stream)
        _expected(self.expected)


class SetMetadata(Request[StreamInfo], tag="set_metadata", kw_only=True, frozen=True):
    result = StreamInfo
    scope = Scope.WRITE
    write = True
    stream: str
    metadata: StreamMetadata

    def __post_init__(self) -> None:
        validate_stream_name(self.stream)


class SnapshotSave(Request[Snapshot], tag="snapshot_save", kw_only=True, frozen=True):
    """The reply carries no data (`size` says how much was stored)."""

    result = Snapshot
    scope = Scope.WRITE
    write = True
    stream: str
    version: Version
    data: bytes
    metadata: bytes = b""

    def __post_init__(self) -> None:
        validate_stream_name(self.stream)
        if not self.data:
            raise InvalidInput("snapshot data must not be empty")

    def check_limits(self, max_event_bytes: int) -> None:
        check_event_size(len(self.data) + len(self.metadata), "snapshot", max_event_bytes)


class SnapshotsDeleted(msgspec.Struct, frozen=True):
    deleted: int


class SnapshotDelete(Request[SnapshotsDeleted], tag="snapshot_delete", kw_only=True, frozen=True):
    """`version` None deletes every snapshot of the stream."""

    result = SnapshotsDeleted
    scope = Scope.WRITE
    write = True
    idempotent = False
    stream: str
    version: Version | None = None

    def __post_init__(self) -> None:
        validate_stream_name(self.stream)


# --- reads --------------------------------------------------------------------------------------


class ReadStream(Request[list[bytes]], tag="read_stream", kw_only=True, frozen=True):
    """Records of one stream; `from_` None is the end (for backward reads)."""

    result = list[bytes]
    streaming = True
    stream: str
    from_: Version | None = msgspec.field(default=None, name="from")
    backward: bool = False
    limit: Version = MAX_READ_LIMIT
    consistency: Consistency = "leader"

    def __post_init__(self) -> None:
        validate_stream_name(self.stream, allow_system=True)

    def needs_leader(self) -> bool:
        return self.consistency == "leader"


class ReadAll(Request[list[bytes]], tag="read_all", kw_only=True, frozen=True):
    result = list[bytes]
    streaming = True
    from_: Version | None = msgspec.field(default=None, name="from")
    backward: bool = False
    limit: Version = MAX_READ_LIMIT
    filter: AllFilter = msgspec.field(default_factory=AllFilter)
    consistency: Consistency = "leader"

    def needs_leader(self) -> bool:
        return self.consistency == "leader"


class Tail(Request[list[bytes]], tag="tail", kw_only=True, frozen=True):
    """Follow a stream (or `$all` when `stream` is None) from a version/position, or from the
    end when `from_` is None, until cancelled. Any node serves it."""

    result = list[bytes]
    streaming = True
    stream: str | None = None
    from_: Version | None = msgspec.field(default=None, name="from")
    filter: AllFilter = msgspec.field(default_factory=AllFilter)

    def __post_init__(self) -> None:
        if self.stream is not None:
            validate_stream_name(self.stream, allow_system=True)


class ListStreams(Request[list[StreamInfo]], tag="streams", kw_only=True, frozen=True):
    result = list[StreamInfo]
    prefix: str = ""
    after: str | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000


class GetStreamInfo(Request[StreamInfo], tag="stream_info", kw_only=True, frozen=True):
    result = StreamInfo
    stream: str

    def __post_init__(self) -> None:
        validate_stream_name(self.stream, allow_system=True)


class SnapshotGet(Request[Snapshot], tag="snapshot_get", kw_only=True, frozen=True):
    """The newest snapshot, or the newest at or below `at_or_below`."""

    result = Snapshot
    stream: str
    at_or_below: Version | None = None

    def __post_init__(self) -> None:
        validate_stream_name(self.stream)


class SnapshotList(Request[list[Snapshot]], tag="snapshot_list", kw_only=True, frozen=True):
    """Snapshots without their data."""

    result = list[Snapshot]
    stream: str

    def __post_init__(self) -> None:
        validate_stream_name(self.stream)


class Status(Request[NodeStatus], tag="status", kw_only=True, frozen=True):
    result = NodeStatus


class Verify(Request[VerifyReport], tag="verify", kw_only=True, frozen=True):
    """Check every record checksum and cross-check the indexes against the log, on the
    answering node, read-only. Admin (signed with the cluster secret in a cluster): it scans
    the whole store, minutes for a large one."""

    result = VerifyReport
    scope = Scope.ADMIN
    mac: bytes = b""


class Backup(Request[list[bytes]], tag="backup", kw_only=True, frozen=True):
    """A consistent, compacted copy of the answering node's store (one LMDB read
    transaction), streamed as chunks of the data file's bytes (`esdb node backup`). The copy
    records the Raft index and term it reflects."""

    result = list[bytes]
    streaming = True
    scope = Scope.ADMIN
    mac: bytes = b""


# --- cluster administration ---------------------------------------------------------------------


class MembersReply(msgspec.Struct, frozen=True):
    members: list[MemberView]


class Members(Request[MembersReply], tag="members", kw_only=True, frozen=True):
    """The cluster's members as the answering node sees them."""

    result = MembersReply


class MemberAdded(msgspec.Struct, frozen=True):
    members: list[str]
    store_id: str


class AddMember(Request[MemberAdded], tag="add_member", kw_only=True, frozen=True):
    """Add a node to the Raft membership (a member already present is a no-op)."""

    result = MemberAdded
    scope = Scope.ADMIN
    write = True
    node_id: str
    raft: str
    url: str = ""
    store_id: str = ""
    found_by: str = "join"
    mac: bytes = b""


class MemberRemoved(msgspec.Struct, frozen=True):
    removed: str
    members: list[str]


class RemoveMember(Request[MemberRemoved], tag="remove_member", kw_only=True, frozen=True):
    """Remove a member by node id or raft address (an absent member is a no-op)."""

    result = MemberRemoved
    scope = Scope.ADMIN
    write = True
    node: str
    mac: bytes = b""


class SteppedDown(msgspec.Struct, frozen=True):
    old_leader: str
    new_leader: str | None


class StepDown(Request[SteppedDown], tag="stepdown", kw_only=True, frozen=True):
    """Hand leadership to `to` (a node id or raft address) or to the most caught-up member."""

    result = SteppedDown
    scope = Scope.ADMIN
    write = True
    idempotent = False
    to: str | None = None
    mac: bytes = b""


class PartitionState(msgspec.Struct, frozen=True):
    drop_in: list[str]
    drop_out: list[str]


class Fault(Request[PartitionState], tag="fault", kw_only=True, frozen=True):
    """Fault injection in the answering node's Raft transport (chaos drills): drop Raft
    traffic from `drop_in` and to `drop_out` (node ids or raft addresses); empty lists heal."""

    result = PartitionState
    scope = Scope.ADMIN
    idempotent = False
    drop_in: list[str] = msgspec.field(default_factory=list)
    drop_out: list[str] = msgspec.field(default_factory=list)
    mac: bytes = b""


def _registry() -> dict[str, type[Request[Any]]]:
    found: dict[str, type[Request[Any]]] = {}
    pending: list[type[Request[Any]]] = list(Request.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        name = cls.wire_name()
        if name in found:
            raise TypeError(f"two operations named {name!r}")
        if cls.scope is Scope.ADMIN and "mac" not in cls.__struct_fields__:
            raise TypeError(f"admin operation {name!r} needs a `mac` field")
        found[name] = cls
    return dict(sorted(found.items()))


_UNSIGNED = frozenset({"id", "timeout", "mac"})


def signed_fields(request: Request[Any]) -> dict[str, Any]:
    """The fields an admin request's MAC covers, under their wire names (`esdb_node.keys`)."""
    return {
        f.encode_name: getattr(request, f.name)
        for f in msgspec.structs.fields(request)
        if f.name not in _UNSIGNED
    }


OPERATIONS: dict[str, type[Request[Any]]] = _registry()
REQUEST_DECODER: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(
    Union[tuple(OPERATIONS.values())]  # noqa: UP007
)


class _Envelope(msgspec.Struct):
    """What is left to answer when a request does not decode: its id, if it has one."""

    id: RequestId = MISSING_ID


_ENVELOPE_DECODER = msgspec.msgpack.Decoder(_Envelope)


def result_type(op: type[Request[R]]) -> type[R]:
    result: type[R] = op.result
    return result


def decode_request(body: bytes) -> Request[Any]:
    """Decode and validate one request frame.

    Raises `BadRequest` (answer it, keep the connection) when the frame is a map with a valid
    id but an invalid request, and `ProtocolError` (answer with id 0, close) when the bytes are
    not a request map at all. Field types and ranges fail as `protocol_error`; the rules of
    the store (names, events, versions) as `invalid_input`.
    """
    error: InvalidInput
    try:
        request: Request[Any] = REQUEST_DECODER.decode(body)
        if request.id != MISSING_ID:
            return request
        error = ProtocolError("field 'id' must be a non-negative integer")
    except InvalidInput as exc:
        error = exc
    except msgspec.ValidationError as exc:
        error = ProtocolError(_friendly(str(exc)))
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"malformed msgpack: {exc}") from None
    try:
        rid = _ENVELOPE_DECODER.decode(body).id
    except (msgspec.ValidationError, msgspec.DecodeError):
        raise ProtocolError(
            "a frame must hold a msgpack map with a non-negative integer 'id'"
        ) from None
    raise BadRequest(max(rid, 0), error)


_AT = re.compile(r"^(?P<what>.*) - at `\$(?P<path>[^`]*)`$")
_EVENT_PATH = re.compile(r"^\.events\[\d+\]$")


def _friendly(message: str) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.expected`" as "field 'expected': ..."."""
    match = _AT.match(message)
    if match is None:
        return message
    what, path = match["what"], match["path"]
    if path == ".op":
        return f"unknown op: {what}"
    if _EVENT_PATH.match(path):
        return f"each event must be an encoded event (bin, see docs/protocol.md): {what}"
    return f"field {path.lstrip('.')!r}: {what}"


class BadRequest(Exception):
    """A request that did not validate; `error` is what to answer to request `id`."""

    def __init__(self, rid: int, error: InvalidInput) -> None:
        super().__init__(str(error))
        self.id = rid
        self.error = error
