"""Typed values that cross module boundaries: what clients send and what the store assigned."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeAlias

import msgspec

from esdb_node import record
from esdb_node.errors import InvalidInput

ANY: Literal["any"] = "any"
NO_STREAM: Literal["no-stream"] = "no-stream"
EXISTS: Literal["exists"] = "exists"

ExpectedVersion: TypeAlias = int | Literal["any", "no-stream", "exists"]

# Wire/storage encoding of expected versions: exact versions are >= 0.
_EXPECTED_TO_INT = {ANY: -2, NO_STREAM: -1, EXISTS: -4}
_INT_TO_EXPECTED: dict[int, ExpectedVersion] = {v: k for k, v in _EXPECTED_TO_INT.items()}  # type: ignore[misc]

MAX_NAME_BYTES = 256
MAX_TYPE_CHARS = 256


def expected_to_int(expected: ExpectedVersion) -> int:
    if isinstance(expected, bool):
        raise InvalidInput(f"invalid expected version {expected!r}")
    if isinstance(expected, int):
        if expected < 0:
            raise InvalidInput(f"invalid expected version {expected}: exact versions are >= 0")
        return expected
    try:
        return _EXPECTED_TO_INT[expected]
    except KeyError:
        raise InvalidInput(
            f"invalid expected version {expected!r}",
            hint="use any, no-stream, exists or a version number >= 0",
        ) from None


def expected_from_int(value: int) -> ExpectedVersion:
    if value >= 0:
        return value
    try:
        return _INT_TO_EXPECTED[value]
    except KeyError:
        raise InvalidInput(f"invalid expected version code {value}") from None


def parse_expected_version(text: str | int) -> ExpectedVersion:
    """Parse what a user typed: any | no-stream | exists | N."""
    if isinstance(text, int):
        return expected_from_int(expected_to_int(text))
    value = text.strip().lower()
    if value in _EXPECTED_TO_INT:
        return value  # type: ignore[return-value]
    try:
        number = int(value)
    except ValueError:
        raise InvalidInput(
            f"invalid expected version {text!r}",
            hint="use any, no-stream, exists or a version number >= 0",
        ) from None
    expected_to_int(number)
    return number


# Control characters (C0, DEL, C1) and lone surrogates; one regex scan instead of a Python
# loop per character (names are validated on every request).
_BAD_NAME_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_BAD_TYPE_CHARS = re.compile("[\x00-\x1f]")


def validate_stream_name(name: str, *, allow_system: bool = False) -> bytes:
    """Return the UTF-8 name, or raise InvalidInput saying what is wrong with it."""
    if not isinstance(name, str):
        raise InvalidInput(f"stream name must be a string, got {type(name).__name__}")
    if not name:
        raise InvalidInput("stream name is empty")
    bad = _BAD_NAME_CHARS.search(name)
    if bad is not None:
        if 0xD800 <= ord(bad.group()) <= 0xDFFF:
            raise InvalidInput(f"stream name {name!r} is not valid UTF-8")
        raise InvalidInput(f"stream name {name!r} contains a control character")
    raw = name.encode("utf-8")
    if len(raw) > MAX_NAME_BYTES:
        raise InvalidInput(f"stream name is {len(raw)} bytes; the limit is {MAX_NAME_BYTES}")
    if name[0] == "$" and not allow_system:
        raise InvalidInput(
            f"stream name {name!r} starts with '$', which is reserved for system streams"
        )
    return raw


def validate_event_type(event_type: str) -> None:
    if not isinstance(event_type, str) or not event_type:
        raise InvalidInput("event type is empty")
    if len(event_type) > MAX_TYPE_CHARS:
        raise InvalidInput(
            f"event type is {len(event_type)} characters; the limit is {MAX_TYPE_CHARS}"
        )
    if _BAD_TYPE_CHARS.search(event_type):
        raise InvalidInput(f"event type {event_type!r} contains a control character")


def utc_from_micros(micros: int) -> datetime:
    return datetime.fromtimestamp(micros / 1_000_000, tz=UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros_from_utc(moment: datetime) -> int:
    """Exact microseconds since the Unix epoch (no float rounding)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class EventData:
    """An event as a client proposes it, before the store assigns a version and position."""

    type: str
    data: bytes
    metadata: bytes = b""
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    is_json: bool = True

    @classmethod
    def from_json(
        cls,
        type: str,
        data: Any,
        metadata: Any = None,
        id: uuid.UUID | None = None,
    ) -> EventData:
        return cls(
            type=type,
            data=json.dumps(data, separators=(",", ":")).encode(),
            metadata=b"" if metadata is None else json.dumps(metadata).encode(),
            id=id or uuid.uuid4(),
            is_json=True,
        )

    def encode(self) -> bytes:
        """The event as an `append` carries it and the store keeps it (`record.py`)."""
        return record.encode_event(self.id.bytes, self.type, self.data, self.metadata, self.is_json)


class RecordedEvent:
    """An event as the store recorded it: a read-only view of its record bytes (`record.py`).

    Not a dataclass on purpose: a reader of `$all` gets one of these per event, and building
    nine attributes, a UUID and a datetime per event costs more than the read itself. Fields
    are decoded from the record when first asked for. `RecordedEvent(stream=..., ...)` builds
    one from fields (tests, tools); `from_record` wraps bytes a node sent. Equal events have
    equal records.
    """

    __slots__ = ("_head", "_record")

    _record: bytes
    _head: tuple[Any, ...] | None

    def __init__(
        self,
        *,
        stream: str,
        version: int,
        position: int,
        id: uuid.UUID,
        type: str,
        data: bytes,
        metadata: bytes,
        is_json: bool,
        created: datetime,
    ) -> None:
        event = record.encode_event(id.bytes, type, data, metadata, is_json)
        self._record = record.seal_record(
            event, stream.encode(), position, version, micros_from_utc(created)
        )
        self._head = None

    @classmethod
    def from_record(cls, raw: bytes) -> RecordedEvent:
        """Wrap a record (checked for length and layout only; decoding happens on access)."""
        if len(raw) < record.TYPE_AT + 2 or raw[4] != record.RECORD_LAYOUT:
            raise InvalidInput(f"not an event record ({len(raw)} bytes)")
        self = cls.__new__(cls)
        self._record = raw
        self._head = None
        return self

    @property
    def record(self) -> bytes:
        """The record bytes, as stored (with their CRC-32)."""
        return self._record

    def _fields(self) -> tuple[Any, ...]:
        head = self._head
        if head is None:
            head = self._head = record.HEADER.unpack_from(self._record)
        return head

    @property
    def stream(self) -> str:
        return self._record[len(self._record) - self._fields()[3] :].decode()

    @property
    def version(self) -> int:
        return int(self._fields()[5])

    @property
    def position(self) -> int:
        return int(self._fields()[4])

    @property
    def created(self) -> datetime:
        return utc_from_micros(self._fields()[6])

    @property
    def id(self) -> uuid.UUID:
        return uuid.UUID(bytes=self._fields()[11])

    @property
    def type(self) -> str:
        return self._record[record.TYPE_AT : record.TYPE_AT + self._fields()[9]].decode()

    @property
    def is_json(self) -> bool:
        return bool(self._fields()[8] & record.IS_JSON)

    @property
    def metadata(self) -> bytes:
        head = self._fields()
        start = record.TYPE_AT + head[9]
        return self._record[start : start + head[10]]

    @property
    def data(self) -> bytes:
        head = self._fields()
        return self._record[record.TYPE_AT + head[9] + head[10] : len(self._record) - head[3]]

    def json(self) -> Any:
        return json.loads(self.data)

    def metadata_json(self) -> Any:
        return json.loads(self.metadata) if self.metadata else {}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordedEvent):
            return NotImplemented
        return self._record == other._record

    def __hash__(self) -> int:
        return hash(self._record)

    def __repr__(self) -> str:
        return (
            f"RecordedEvent(stream={self.stream!r}, version={self.version}, "
            f"position={self.position}, id={self.id!r}, type={self.type!r}, data={self.data!r}, "
            f"metadata={self.metadata!r}, is_json={self.is_json}, created={self.created!r})"
        )


@dataclass(frozen=True, slots=True)
class AppendResult:
    """`position` is the global position of the first event; `last_position` of the last."""

    stream: str
    first_version: int
    last_version: int
    position: int
    last_position: int


@dataclass(frozen=True, slots=True)
class DeleteResult:
    stream: str
    last_version: int
    hard: bool


class StreamMetadata(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Retention settings applied on reads. `custom` is free-form JSON for the application."""

    max_count: int | None = None
    max_age: float | None = None
    truncate_before: int | None = None
    custom: dict[str, Any] = msgspec.field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)

    def __post_init__(self) -> None:
        for key, number in (
            ("max_count", self.max_count),
            ("truncate_before", self.truncate_before),
        ):
            if number is not None and (
                isinstance(number, bool) or not isinstance(number, int) or number < 0
            ):
                raise InvalidInput(f"{key} must be an integer >= 0")
        if self.max_count == 0:
            raise InvalidInput("max_count must be at least 1")
        max_age = self.max_age
        if max_age is not None:
            if isinstance(max_age, bool) or not isinstance(max_age, int | float) or max_age <= 0:
                raise InvalidInput("max_age must be a number of seconds > 0")
            msgspec.structs.force_setattr(self, "max_age", float(max_age))
        if not isinstance(self.custom, dict):
            raise InvalidInput("custom metadata must be a JSON object")
        try:
            json.dumps(self.custom)
        except (TypeError, ValueError):
            raise InvalidInput("custom metadata must be a JSON object") from None

    @classmethod
    def from_wire(cls, value: Any) -> StreamMetadata:
        if not isinstance(value, dict):
            raise InvalidInput("stream metadata must be a map")
        unknown = set(value) - {"max_count", "max_age", "truncate_before", "custom"}
        if unknown:
            raise InvalidInput(f"unknown stream metadata keys: {', '.join(sorted(unknown))}")
        return cls(
            max_count=value.get("max_count"),
            max_age=value.get("max_age"),
            truncate_before=value.get("truncate_before"),
            custom=value.get("custom") or {},
        )


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """`last_version` is -1 for a stream that never had an event."""

    stream: str
    last_version: int
    deleted: bool
    tombstoned: bool
    metadata: StreamMetadata
    first_visible: int

    @property
    def exists(self) -> bool:
        return not self.tombstoned and self.last_version >= self.first_visible


@dataclass(frozen=True, slots=True)
class Snapshot:
    """`data` is empty in listings; `size` is always the stored data size."""

    stream: str
    version: int
    data: bytes
    metadata: bytes
    created: datetime
    size: int = -1

    def __post_init__(self) -> None:
        if self.size < 0:
            object.__setattr__(self, "size", len(self.data))

    def json(self) -> Any:
        return json.loads(self.data)


class AllFilter(
    msgspec.Struct,
    frozen=True,
    rename={"stream_prefix": "prefix", "event_types": "types", "type_pattern": "pattern"},
):
    """Filter for `$all` reads and tails. All given parts must match. On the wire:
    `{"prefix", "types", "pattern"}`."""

    stream_prefix: str | None = None
    event_types: tuple[str, ...] = ()
    type_pattern: str | None = None

    def is_empty(self) -> bool:
        return not (self.stream_prefix or self.event_types or self.type_pattern)


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """A cluster member as recorded in the replicated registry."""

    raft: str
    node_id: str
    url: str


@dataclass(frozen=True, slots=True)
class MemberView:
    """A member as one node sees it (the `members` admin request)."""

    node_id: str
    raft: str
    url: str
    role: str
    reachable: bool
    match_index: int | None = None
    found_by: str = "static"  # self | static | join | mdns | dns
    last_seen: float | None = None  # unix seconds


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node_id: str
    store_id: str
    role: str
    url: str
    leader_id: str | None
    leader_url: str | None
    term: int
    commit_index: int
    applied_index: int
    last_position: int
    stream_count: int
    version: str
    mode: str
    ready: bool
    raft: str | None = None
    members: tuple[str, ...] = ()
    uptime_s: float = 0.0
    durability: str = "fsync"
    pid: int = 0
    # Connections refused on the raft port (wrong secret, oversized or garbage frames,
    # non-members) since the node started; the log shows only the first per host a minute.
    rejected_peers: int = 0
    time_us: int = 0  # this node's wall clock when it answered (unix microseconds)
    # This node's clock minus the leader's, as it last measured it (None: not measured yet).
    clock_offset_ms: float | None = None
    max_clock_offset: float = 1.0  # seconds; beyond this `cluster health` fails
    storage: str = "ok"  # ok | full | failed: whether this node can write its disk
    storage_error: str | None = None
    # Connected to a majority of the members (itself included). A follower cut off from the
    # others keeps naming its last leader (pysyncobj starts no election while it is connected
    # to nobody), so "leader known" alone would call it ready.
    has_quorum: bool = True


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What `esdb node verify` found: counts per table and every problem (up to a limit),
    each naming the table and the key or position."""

    ok: bool
    events: int
    streams: int
    index_entries: int  # stream-index runs
    event_ids: int  # `exists` anchors, plus format-1 ids a migrated store still keeps
    snapshots: int
    members: int
    problems: tuple[str, ...] = ()
    more_problems: int = 0  # found beyond the listed ones
    seconds: float = 0.0
    category_entries: int = 0  # category-index runs
    type_entries: int = 0  # type-index runs
