"""Client protocol: length-prefixed msgpack frames and typed, validated requests.

Everything that arrives from a socket passes through `FrameDecoder` (size cap, msgpack
limits) and `parse_request` (every field type-checked) before any other code sees it.
docs/protocol.md is the reference for other-language clients.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, TypeAlias

from esdb_node.codec import event_from_wire, pack, unpack_untrusted
from esdb_node.errors import ProtocolError
from esdb_node.model import AllFilter, StreamMetadata, validate_stream_name

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 16 << 20
PRE_AUTH_MAX_FRAME = 64 << 10  # before `hello` succeeds, nobody can make us buffer more
MAX_READ_LIMIT = 1 << 62


def encode_frame(message: dict[str, Any]) -> bytes:
    body = pack(message)
    return HEADER.pack(len(body)) + body


def check_length(length: int, max_frame: int) -> None:
    if length == 0:
        raise ProtocolError("empty frame")
    if length > max_frame:
        raise ProtocolError(f"frame of {length} bytes exceeds the {max_frame}-byte limit")


def decode_body(body: bytes, max_frame: int) -> dict[str, Any]:
    message = unpack_untrusted(body, max_bytes=max_frame)
    if not isinstance(message, dict):
        raise ProtocolError("a frame must hold a msgpack map")
    return message


class FrameDecoder:
    """Incremental decoder for a byte stream (used by tests, fuzzing and simple clients)."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        out: list[dict[str, Any]] = []
        while len(self._buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buf, 0)
            check_length(length, self.max_frame)
            if len(self._buf) < HEADER.size + length:
                break
            body = bytes(self._buf[HEADER.size : HEADER.size + length])
            del self._buf[: HEADER.size + length]
            out.append(decode_body(body, self.max_frame))
        return out


# --- typed requests ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    token: str | None
    client: str


@dataclass(frozen=True, slots=True)
class Append:
    stream: str
    expected: int
    events: list[list[Any]]
    timeout: float


@dataclass(frozen=True, slots=True)
class ReadStream:
    stream: str
    from_version: int | None
    backward: bool
    limit: int
    consistency: str


@dataclass(frozen=True, slots=True)
class ReadAll:
    from_position: int | None
    backward: bool
    limit: int
    filter: AllFilter
    consistency: str


@dataclass(frozen=True, slots=True)
class Tail:
    """Follow a stream (or `$all` when stream is None) from a version/position or the end."""

    stream: str | None
    from_: int | None  # None = end
    filter: AllFilter


@dataclass(frozen=True, slots=True)
class Cancel:
    target: int


@dataclass(frozen=True, slots=True)
class ListStreams:
    prefix: str
    after: str | None
    limit: int


@dataclass(frozen=True, slots=True)
class GetStreamInfo:
    stream: str


@dataclass(frozen=True, slots=True)
class Delete:
    stream: str
    expected: int
    hard: bool
    timeout: float


@dataclass(frozen=True, slots=True)
class SetMetadata:
    stream: str
    metadata: StreamMetadata
    timeout: float


@dataclass(frozen=True, slots=True)
class SnapshotSave:
    stream: str
    version: int
    data: bytes
    metadata: bytes
    timeout: float


@dataclass(frozen=True, slots=True)
class SnapshotGet:
    stream: str
    at_or_below: int | None


@dataclass(frozen=True, slots=True)
class SnapshotList:
    stream: str


@dataclass(frozen=True, slots=True)
class SnapshotDelete:
    stream: str
    version: int | None
    timeout: float


@dataclass(frozen=True, slots=True)
class Status:
    pass


@dataclass(frozen=True, slots=True)
class Members:
    pass


@dataclass(frozen=True, slots=True)
class AddMember:
    """Admin (needs the cluster secret): add a node to the Raft membership."""

    node_id: str
    raft: str
    url: str
    store_id: str
    secret: str
    found_by: str
    timeout: float


@dataclass(frozen=True, slots=True)
class RemoveMember:
    """Admin: remove a member, by node id or raft address."""

    node: str
    secret: str
    timeout: float


@dataclass(frozen=True, slots=True)
class StepDown:
    """Admin: hand leadership to `to` (a node id or raft address) or to any member."""

    to: str | None
    secret: str
    timeout: float


@dataclass(frozen=True, slots=True)
class Fault:
    """Admin: fault injection in the Raft transport (chaos drills). Needs the cluster secret."""

    secret: str
    drop_in: tuple[str, ...]
    drop_out: tuple[str, ...]


Request: TypeAlias = (
    Hello
    | Append
    | ReadStream
    | ReadAll
    | Tail
    | Cancel
    | ListStreams
    | GetStreamInfo
    | Delete
    | SetMetadata
    | SnapshotSave
    | SnapshotGet
    | SnapshotList
    | SnapshotDelete
    | Status
    | Members
    | AddMember
    | RemoveMember
    | StepDown
    | Fault
)


class _Fields:
    """Typed accessors over a request map; every failure is a ProtocolError naming the field."""

    def __init__(self, msg: dict[str, Any]) -> None:
        self.msg = msg

    def _get(self, key: str, default: Any) -> Any:
        return self.msg.get(key, default)

    def str_(self, key: str, default: str | None = None, *, optional: bool = False) -> Any:
        value = self._get(key, default)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise ProtocolError(f"field {key!r} must be a string")
        return value

    def int_(
        self,
        key: str,
        default: int | None = None,
        *,
        optional: bool = False,
        minimum: int | None = None,
    ) -> Any:
        value = self._get(key, default)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(f"field {key!r} must be an integer")
        if minimum is not None and value < minimum:
            raise ProtocolError(f"field {key!r} must be >= {minimum}")
        return value

    def bool_(self, key: str, default: bool = False) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise ProtocolError(f"field {key!r} must be a boolean")
        return value

    def bytes_(self, key: str, default: bytes = b"") -> bytes:
        value = self._get(key, default)
        if not isinstance(value, bytes):
            raise ProtocolError(f"field {key!r} must be bytes")
        return value

    def timeout(self) -> float:
        value = self._get("timeout", 10.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
            raise ProtocolError("field 'timeout' must be seconds in (0, 3600]")
        return float(value)

    def consistency(self) -> str:
        value = self._get("consistency", "leader")
        if value not in ("leader", "local"):
            raise ProtocolError("field 'consistency' must be 'leader' or 'local'")
        return str(value)

    def expected(self) -> int:
        value = self.int_("expected", -2)
        if value < 0 and value not in (-1, -2, -4):
            raise ProtocolError(
                "field 'expected' must be >= 0, -1 (no-stream), -2 (any) or -4 (exists)"
            )
        return int(value)

    def stream(self, key: str = "stream", *, allow_system: bool = False) -> str:
        name = self.str_(key)
        validate_stream_name(name, allow_system=allow_system)
        return str(name)

    def addresses(self, key: str) -> tuple[str, ...]:
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProtocolError(f"field {key!r} must be a list of strings")
        return tuple(value)


def parse_request(msg: dict[str, Any], *, max_event_bytes: int) -> tuple[int, Request]:
    """Validate a request map; returns (request id, typed request)."""
    rid = msg.get("id")
    if isinstance(rid, bool) or not isinstance(rid, int) or not 0 <= rid < 2**63:
        raise ProtocolError("field 'id' must be a non-negative integer")
    op = msg.get("op")
    f = _Fields(msg)
    req: Request
    if op == "hello":
        req = Hello(
            version=f.int_("version"),
            token=f.str_("token", optional=True),
            client=f.str_("client", ""),
        )
    elif op == "append":
        events = msg.get("events")
        if not isinstance(events, list):
            raise ProtocolError("field 'events' must be a list")
        req = Append(
            stream=f.stream(),
            expected=f.expected(),
            events=[event_from_wire(e, max_event_bytes=max_event_bytes) for e in events],
            timeout=f.timeout(),
        )
    elif op == "read_stream":
        req = ReadStream(
            stream=f.stream(allow_system=True),
            from_version=f.int_("from", optional=True, minimum=0),
            backward=f.bool_("backward"),
            limit=f.int_("limit", MAX_READ_LIMIT, minimum=0),
            consistency=f.consistency(),
        )
    elif op == "read_all":
        req = ReadAll(
            from_position=f.int_("from", optional=True, minimum=0),
            backward=f.bool_("backward"),
            limit=f.int_("limit", MAX_READ_LIMIT, minimum=0),
            filter=AllFilter.from_wire(msg.get("filter")),
            consistency=f.consistency(),
        )
    elif op == "tail":
        stream = msg.get("stream")
        req = Tail(
            stream=None if stream is None else f.stream(allow_system=True),
            from_=f.int_("from", optional=True, minimum=0),
            filter=AllFilter.from_wire(msg.get("filter")),
        )
    elif op == "cancel":
        req = Cancel(target=f.int_("target", minimum=0))
    elif op == "streams":
        req = ListStreams(
            prefix=f.str_("prefix", ""),
            after=f.str_("after", optional=True),
            limit=f.int_("limit", 1000, minimum=1),
        )
    elif op == "stream_info":
        req = GetStreamInfo(stream=f.stream(allow_system=True))
    elif op == "delete":
        req = Delete(
            stream=f.stream(), expected=f.expected(), hard=f.bool_("hard"), timeout=f.timeout()
        )
    elif op == "set_metadata":
        req = SetMetadata(
            stream=f.stream(),
            metadata=StreamMetadata.from_wire(msg.get("metadata")),
            timeout=f.timeout(),
        )
    elif op == "snapshot_save":
        data = f.bytes_("data")
        metadata = f.bytes_("metadata")
        if not data:
            raise ProtocolError("field 'data' must not be empty")
        if len(data) + len(metadata) > max_event_bytes:
            raise ProtocolError(
                f"snapshot is {len(data) + len(metadata)} bytes; the limit is {max_event_bytes}"
            )
        req = SnapshotSave(
            stream=f.stream(),
            version=f.int_("version", minimum=0),
            data=data,
            metadata=metadata,
            timeout=f.timeout(),
        )
    elif op == "snapshot_get":
        req = SnapshotGet(
            stream=f.stream(), at_or_below=f.int_("at_or_below", optional=True, minimum=0)
        )
    elif op == "snapshot_list":
        req = SnapshotList(stream=f.stream())
    elif op == "snapshot_delete":
        req = SnapshotDelete(
            stream=f.stream(),
            version=f.int_("version", optional=True, minimum=0),
            timeout=f.timeout(),
        )
    elif op == "status":
        req = Status()
    elif op == "members":
        req = Members()
    elif op == "add_member":
        req = AddMember(
            node_id=f.str_("node_id"),
            raft=f.str_("raft"),
            url=f.str_("url", ""),
            store_id=f.str_("store_id", ""),
            secret=f.str_("secret"),
            found_by=f.str_("found_by", "join"),
            timeout=f.timeout(),
        )
    elif op == "remove_member":
        req = RemoveMember(node=f.str_("node"), secret=f.str_("secret"), timeout=f.timeout())
    elif op == "stepdown":
        req = StepDown(to=f.str_("to", optional=True), secret=f.str_("secret"), timeout=f.timeout())
    elif op == "fault":
        req = Fault(
            secret=f.str_("secret"),
            drop_in=f.addresses("drop_in"),
            drop_out=f.addresses("drop_out"),
        )
    else:
        raise ProtocolError(f"unknown op {op!r:.60}")
    return int(rid), req
