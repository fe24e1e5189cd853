"""Turning what users type into typed values: JSON payloads, event files, `--from`, `--where`."""

from __future__ import annotations

import fnmatch
import json
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esdb_node.errors import InvalidInput
from esdb_node.model import AllFilter, EventData, RecordedEvent


def read_source(value: str, what: str) -> bytes:
    """`-` reads stdin, `@FILE` reads a file, anything else is the value itself."""
    if value == "-":
        return sys.stdin.buffer.read()
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            return path.read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read {what} file {path}: {exc.strerror}") from None
    return value.encode()


def json_bytes(raw: bytes, what: str) -> bytes:
    """Validate JSON and return it compacted."""
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(
            f"{what} is not valid JSON: {exc}",
            hint="quote it for the shell, e.g. --data '{\"total\": 42}'",
        ) from None
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def parse_uuid(value: str, what: str = "event id") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidInput(f"{what} {value!r} is not a UUID") from None


def single_event(
    event_type: str | None,
    data: str | None,
    metadata: str | None,
    event_id: str | None,
    binary: bool,
) -> EventData:
    if not event_type:
        raise InvalidInput("--type is required", hint="e.g. --type OrderPlaced")
    if data is None:
        raise InvalidInput("--data is required", hint="JSON, @FILE, or - for stdin")
    raw = read_source(data, "data")
    payload = raw if binary else json_bytes(raw, "--data")
    meta = json_bytes(read_source(metadata, "metadata"), "--metadata") if metadata else b""
    return EventData(
        type=event_type,
        data=payload,
        metadata=meta,
        id=parse_uuid(event_id) if event_id else uuid.uuid4(),
        is_json=not binary,
    )


def events_file(source: str) -> list[EventData]:
    """JSON Lines: {"type": ..., "data": ..., "metadata": ..., "id": ...} per line."""
    raw = read_source(source if source == "-" else "@" + source, "events")
    events: list[EventData] = []
    for number, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise InvalidInput(f"events file line {number} is not valid JSON: {exc}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str) or "data" not in obj:
            raise InvalidInput(f'events file line {number} needs "type" and "data"')
        events.append(
            EventData(
                type=obj["type"],
                data=json.dumps(obj["data"], separators=(",", ":")).encode(),
                metadata=json.dumps(obj["metadata"]).encode() if obj.get("metadata") else b"",
                id=parse_uuid(obj["id"]) if obj.get("id") else uuid.uuid4(),
            )
        )
    if not events:
        raise InvalidInput("the events file holds no events")
    return events


def is_end(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "end"


def parse_from(value: str | None, *, backward: bool) -> int | None:
    """start | end | N  ->  0 | None (the end) | N."""
    if value is None:
        return None if backward else 0
    text = value.strip().lower()
    if text == "start":
        return 0
    if text == "end":
        return None
    try:
        number = int(text)
    except ValueError:
        raise InvalidInput(f"--from {value!r} must be start, end or a number") from None
    if number < 0:
        raise InvalidInput("--from must be >= 0")
    return number


Where = list[tuple[list[str], str]]


def parse_where(clauses: list[str]) -> Where:
    """`PATH=VALUE` clauses; a path not starting with data. or metadata. is under data."""
    out = []
    for clause in clauses:
        path, sep, expected = clause.partition("=")
        if not sep or not path:
            raise InvalidInput(f"--where {clause!r} must look like PATH=VALUE (e.g. data.total=42)")
        parts = path.split(".")
        if parts[0] not in ("data", "metadata"):
            parts = ["data", *parts]
        out.append((parts, expected))
    return out


def _lookup(value: Any, path: list[str]) -> Iterator[Any]:
    for key in path:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return
    yield value


def where_matches(event: RecordedEvent, clauses: Where) -> bool:
    if not clauses:
        return True
    docs: dict[str, Any] = {}
    for path, expected in clauses:
        root = path[0]
        if root not in docs:
            raw = event.data if root == "data" else event.metadata
            try:
                docs[root] = json.loads(raw) if raw else None
            except ValueError:
                docs[root] = None
        found = list(_lookup(docs[root], path[1:]))
        if not found:
            return False
        value = found[0]
        text = value if isinstance(value, str) else json.dumps(value)
        if text != expected:
            return False
    return True


@dataclass(frozen=True, slots=True)
class Selection:
    """Which events `read` and `tail` show: one stream, or `$all` narrowed to a category
    (`order-*`), event types, a type glob and `--where` clauses.

    The node filters `$all` by category, types and glob (`server`); a single stream's
    events are filtered here, and `--where` always is (`matches`)."""

    stream: str | None  # one stream; None for `$all` or a category
    server: AllFilter
    where: Where

    def matches(self, event: RecordedEvent) -> bool:
        if self.stream is not None:
            flt = self.server
            if flt.event_types and event.type not in flt.event_types:
                return False
            if flt.type_pattern and not fnmatch.fnmatchcase(event.type, flt.type_pattern):
                return False
        return where_matches(event, self.where)

    @property
    def filters_here(self) -> bool:
        """True when `matches` may drop events (so a node-side limit would count wrong)."""
        return bool(self.where) or (self.stream is not None and not self.server.is_empty())

    @property
    def is_log(self) -> bool:
        """`$all` or a category: positions, not versions."""
        return self.stream is None


def select(
    stream: str | None,
    types: Sequence[str] | None = None,
    pattern: str | None = None,
    where: Sequence[str] | None = None,
) -> Selection:
    """`STREAM`, `CATEGORY-*` or `$all` (None), plus --type, --pattern and --where."""
    name = None if stream in (None, "$all") else stream
    prefix = None
    if name is not None and name.endswith("*"):
        prefix, name = name[:-1], None
        if not prefix or "*" in prefix:
            raise InvalidInput(
                f"{stream!r}: a category is a name prefix followed by one *, e.g. 'order-*'"
            )
    return Selection(
        stream=name,
        server=AllFilter(
            stream_prefix=prefix, event_types=tuple(types or ()), type_pattern=pattern
        ),
        where=parse_where(list(where or [])),
    )


def node_settings(items: list[str]) -> dict[str, str]:
    """`KEY=VALUE` node settings (NodeConfig fields), checked by name now and by value when
    the nodes' configuration is built."""
    from dataclasses import fields

    from esdb_node.config import NodeConfig

    known = {f.name for f in fields(NodeConfig)}
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InvalidInput(f"--set {item!r} is not KEY=VALUE")
        if key not in known:
            raise InvalidInput(
                f"--set {key}: no such node setting",
                hint="see `esdb node start --help` and docs/single-node.md for the settings",
            )
        out[key] = value.strip()
    return out
