"""Chaos-drill histories: the record types and their JSON Lines form (docs/history-format.md).

A history is what a drill harness observed: one `meta` line, then `append` and `read`
operations, `fault` notes, and `final` whole-stream reads taken from every node after heal and
convergence. This module only parses, validates and writes records; judging them is
`esdb_cli.chaos.checker`. Pure standard library: no Typer, Rich or Textual.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from os import PathLike
from types import MappingProxyType
from typing import IO, Any, ClassVar, Literal, TypeAlias

from esdb_node.errors import InvalidInput

OpType: TypeAlias = Literal["ok", "fail", "info"]
Expected: TypeAlias = int | Literal["any", "no-stream", "exists"]
Entry: TypeAlias = tuple[int, str]
"""One `[version, event_id]` pair of a read or final result."""

OP_TYPES: frozenset[str] = frozenset({"ok", "fail", "info"})
EXPECTED_NAMES: frozenset[str] = frozenset({"any", "no-stream", "exists"})
WRONG_EXPECTED_VERSION = "wrong_expected_version"


class HistoryFormatError(InvalidInput):
    """A history line that does not follow docs/history-format.md (exit code 2)."""

    code = "history_format"


@dataclass(frozen=True, slots=True)
class Meta:
    scenario: str
    seed: int
    nodes: tuple[str, ...]
    started: str
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    kind: ClassVar[str] = "meta"


@dataclass(frozen=True, slots=True)
class Append:
    """One append attempt. A retry with the same event ids is another `Append` (another op)."""

    op: int
    proc: int
    stream: str
    node: str
    t0: int
    t1: int
    expected: Expected
    events: tuple[str, ...]
    type: OpType
    first: int | None = None
    position: int | None = None
    error: str | None = None
    actual: int | None = None
    kind: ClassVar[str] = "append"

    @property
    def last(self) -> int | None:
        """Version of the last event, when acknowledged."""
        return None if self.first is None else self.first + len(self.events) - 1


@dataclass(frozen=True, slots=True)
class Read:
    op: int
    proc: int
    stream: str
    node: str
    t0: int
    t1: int
    from_: int
    linearizable: bool
    type: OpType
    result: tuple[Entry, ...] = ()
    limit: int | None = None
    kind: ClassVar[str] = "read"

    @property
    def complete(self) -> bool:
        """True when the result runs to the head of the stream (not cut off by `limit`)."""
        return self.limit is None or len(self.result) < self.limit

    @property
    def head(self) -> int:
        """Last version returned, or `from - 1` when nothing was (the stream ends before `from`)."""
        return self.result[-1][0] if self.result else self.from_ - 1


@dataclass(frozen=True, slots=True)
class Final:
    stream: str
    node: str
    result: tuple[Entry, ...]
    kind: ClassVar[str] = "final"


@dataclass(frozen=True, slots=True)
class Fault:
    t: int
    action: str
    target: str
    leader_before: str | None = None
    leader_after: str | None = None
    recovery_s: float | None = None
    kind: ClassVar[str] = "fault"


Record: TypeAlias = Meta | Append | Read | Final | Fault


# --- parsing ---------------------------------------------------------------------------------


def _field(obj: Mapping[str, Any], name: str) -> Any:
    try:
        return obj[name]
    except KeyError:
        raise HistoryFormatError(f"missing field {name!r}") from None


def _int(obj: Mapping[str, Any], name: str, *, minimum: int | None = None) -> int:
    value = _field(obj, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise HistoryFormatError(f"field {name!r} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise HistoryFormatError(f"field {name!r} must be >= {minimum}, got {value}")
    return value


def _opt_int(obj: Mapping[str, Any], name: str, *, minimum: int | None = None) -> int | None:
    if obj.get(name) is None:
        return None
    return _int(obj, name, minimum=minimum)


def _str(obj: Mapping[str, Any], name: str) -> str:
    value = _field(obj, name)
    if not isinstance(value, str):
        raise HistoryFormatError(f"field {name!r} must be a string, got {value!r}")
    return value


def _opt_str(obj: Mapping[str, Any], name: str) -> str | None:
    return None if obj.get(name) is None else _str(obj, name)


def _op_type(obj: Mapping[str, Any]) -> OpType:
    value = _field(obj, "type")
    if value not in OP_TYPES:
        raise HistoryFormatError(f"field 'type' must be ok, fail or info, got {value!r}")
    return value


def _times(obj: Mapping[str, Any]) -> tuple[int, int]:
    t0, t1 = _int(obj, "t0"), _int(obj, "t1")
    if t1 < t0:
        raise HistoryFormatError(f"t1 ({t1}) is before t0 ({t0})")
    return t0, t1


def _expected(obj: Mapping[str, Any]) -> Expected:
    value = _field(obj, "expected")
    if isinstance(value, str) and value in EXPECTED_NAMES:
        return value  # type: ignore[return-value]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise HistoryFormatError(
        f"field 'expected' must be any, no-stream, exists or a version >= 0, got {value!r}"
    )


def _entries(obj: Mapping[str, Any], name: str) -> tuple[Entry, ...]:
    value = _field(obj, name)
    if not isinstance(value, list):
        raise HistoryFormatError(f"field {name!r} must be a list of [version, event_id]")
    out: list[Entry] = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or isinstance(item[0], bool)
            or not isinstance(item[0], int)
            or item[0] < 0
            or not isinstance(item[1], str)
        ):
            raise HistoryFormatError(f"{name!r} entry {item!r} is not [version >= 0, event_id]")
        out.append((item[0], item[1]))
    return tuple(out)


def _parse_meta(obj: Mapping[str, Any]) -> Meta:
    nodes = _field(obj, "nodes")
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise HistoryFormatError("field 'nodes' must be a list of node ids")
    known = {"kind", "scenario", "seed", "nodes", "started"}
    extra = {k: v for k, v in obj.items() if k not in known}
    return Meta(
        scenario=_str(obj, "scenario"),
        seed=_int(obj, "seed"),
        nodes=tuple(nodes),
        started=_str(obj, "started"),
        extra=MappingProxyType(extra),
    )


def _parse_append(obj: Mapping[str, Any]) -> Append:
    events = _field(obj, "events")
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise HistoryFormatError("field 'events' must be a non-empty list of event ids")
    if len(set(events)) != len(events):
        raise HistoryFormatError("the same event id appears twice in one append")
    t0, t1 = _times(obj)
    op_type = _op_type(obj)
    first = _opt_int(obj, "first", minimum=0)
    if op_type == "ok" and first is None:
        raise HistoryFormatError("an ok append needs 'first' (the version of events[0])")
    return Append(
        op=_int(obj, "op"),
        proc=_int(obj, "proc"),
        stream=_str(obj, "stream"),
        node=_str(obj, "node"),
        t0=t0,
        t1=t1,
        expected=_expected(obj),
        events=tuple(events),
        type=op_type,
        first=first,
        position=_opt_int(obj, "position", minimum=0),
        error=_opt_str(obj, "error"),
        actual=_opt_int(obj, "actual", minimum=-1),
    )


def _parse_read(obj: Mapping[str, Any]) -> Read:
    linearizable = _field(obj, "linearizable")
    if not isinstance(linearizable, bool):
        raise HistoryFormatError("field 'linearizable' must be true or false")
    t0, t1 = _times(obj)
    return Read(
        op=_int(obj, "op"),
        proc=_int(obj, "proc"),
        stream=_str(obj, "stream"),
        node=_str(obj, "node"),
        t0=t0,
        t1=t1,
        from_=_int(obj, "from", minimum=0),
        linearizable=linearizable,
        type=_op_type(obj),
        result=_entries(obj, "result") if obj.get("result") is not None else (),
        limit=_opt_int(obj, "limit", minimum=1),
    )


def _parse_final(obj: Mapping[str, Any]) -> Final:
    return Final(stream=_str(obj, "stream"), node=_str(obj, "node"), result=_entries(obj, "result"))


def _parse_fault(obj: Mapping[str, Any]) -> Fault:
    recovery = obj.get("recovery_s")
    if isinstance(recovery, bool) or not isinstance(recovery, int | float | None):
        raise HistoryFormatError(f"field 'recovery_s' must be a number or null, got {recovery!r}")
    return Fault(
        t=_int(obj, "t"),
        action=_str(obj, "action"),
        target=_str(obj, "target"),
        leader_before=_opt_str(obj, "leader_before"),
        leader_after=_opt_str(obj, "leader_after"),
        recovery_s=None if recovery is None else float(recovery),
    )


_PARSERS: dict[str, Callable[[Mapping[str, Any]], Record]] = {
    "meta": _parse_meta,
    "append": _parse_append,
    "read": _parse_read,
    "final": _parse_final,
    "fault": _parse_fault,
}


def parse_record(obj: Any) -> Record:
    """Validate one decoded JSON object and turn it into a record."""
    if not isinstance(obj, dict):
        raise HistoryFormatError("a history line must be a JSON object")
    kind = obj.get("kind")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise HistoryFormatError(f"unknown record kind {kind!r}")
    return parser(obj)


# --- encoding --------------------------------------------------------------------------------


def _entries_json(entries: tuple[Entry, ...]) -> list[list[int | str]]:
    return [[version, event_id] for version, event_id in entries]


def record_to_json(record: Record) -> dict[str, Any]:
    """The JSON object of one record (inverse of `parse_record`)."""
    match record:
        case Meta():
            return {
                "kind": "meta",
                "scenario": record.scenario,
                "seed": record.seed,
                "nodes": list(record.nodes),
                "started": record.started,
                **record.extra,
            }
        case Append():
            return {
                "kind": "append",
                "op": record.op,
                "proc": record.proc,
                "stream": record.stream,
                "node": record.node,
                "t0": record.t0,
                "t1": record.t1,
                "expected": record.expected,
                "events": list(record.events),
                "type": record.type,
                "first": record.first,
                "position": record.position,
                "error": record.error,
                "actual": record.actual,
            }
        case Read():
            out: dict[str, Any] = {
                "kind": "read",
                "op": record.op,
                "proc": record.proc,
                "stream": record.stream,
                "node": record.node,
                "t0": record.t0,
                "t1": record.t1,
                "from": record.from_,
                "linearizable": record.linearizable,
                "type": record.type,
                "result": _entries_json(record.result),
            }
            if record.limit is not None:
                out["limit"] = record.limit
            return out
        case Final():
            return {
                "kind": "final",
                "stream": record.stream,
                "node": record.node,
                "result": _entries_json(record.result),
            }
        case Fault():
            return {
                "kind": "fault",
                "t": record.t,
                "action": record.action,
                "target": record.target,
                "leader_before": record.leader_before,
                "leader_after": record.leader_after,
                "recovery_s": record.recovery_s,
            }


def dumps_record(record: Record) -> str:
    """One history line, without the newline."""
    return json.dumps(record_to_json(record), separators=(",", ":"), ensure_ascii=False)


# --- files -----------------------------------------------------------------------------------

Source: TypeAlias = str | PathLike[str] | IO[str]


def parse_lines(lines: Iterable[str]) -> Iterator[Record]:
    """Parse history lines; the first non-blank one must be the `meta` record."""
    seen_meta = False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = parse_record(json.loads(line))
        except json.JSONDecodeError as exc:
            raise HistoryFormatError(f"line {number}: not JSON: {exc.msg}") from None
        except HistoryFormatError as exc:
            raise HistoryFormatError(f"line {number}: {exc.message}") from None
        if isinstance(record, Meta) == seen_meta:
            where = "appears again" if seen_meta else "must come first"
            raise HistoryFormatError(f"line {number}: the meta record {where}")
        seen_meta = True
        yield record
    if not seen_meta:
        raise HistoryFormatError("empty history: no meta record")


def read_history(source: Source) -> Iterator[Record]:
    """Records of a JSONL history: a path, '-' for stdin, or an open text file."""
    if isinstance(source, str) and source == "-":
        yield from parse_lines(sys.stdin)
    elif isinstance(source, str | PathLike):
        with open(source, encoding="utf-8") as fh:
            yield from parse_lines(fh)
    else:
        yield from parse_lines(source)


def write_history(records: Iterable[Record], target: Source) -> None:
    """Write records as JSON Lines (the caller puts the `meta` record first)."""
    if isinstance(target, str | PathLike):
        with open(target, "w", encoding="utf-8") as fh:
            write_history(records, fh)
        return
    for record in records:
        target.write(dumps_record(record))
        target.write("\n")
