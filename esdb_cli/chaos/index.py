"""One pass over a history that builds the lookups every invariant check shares."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from esdb_cli.chaos.history import (
    Append,
    Entry,
    Fault,
    Final,
    HistoryFormatError,
    Meta,
    Read,
    Record,
)

Slot = tuple[str, int]
"""(stream, version)."""


@dataclass(frozen=True, slots=True)
class Write:
    """A logical write: every append attempt carrying the same event ids (retries)."""

    stream: str
    events: tuple[str, ...]
    attempts: tuple[Append, ...]
    ops: tuple[int, ...]
    acks: tuple[Append, ...]
    invoked: int
    """When the first attempt was invoked."""
    completed: int | None
    """When the first acknowledgement arrived, or None if never acknowledged."""
    all_failed: bool

    @classmethod
    def of(cls, attempts: list[Append]) -> Write:
        # One plain loop: this runs once per write, and generator expressions cost here.
        first = attempts[0]
        ops: list[int] = []
        acks: list[Append] = []
        invoked, completed, all_failed = first.t0, None, True
        for a in attempts:
            ops.append(a.op)
            invoked = min(invoked, a.t0)
            if a.type == "ok":
                acks.append(a)
                completed = a.t1 if completed is None else min(completed, a.t1)
            all_failed = all_failed and a.type == "fail"
        return cls(
            first.stream,
            first.events,
            tuple(attempts),
            tuple(ops),
            tuple(acks),
            invoked,
            completed,
            all_failed,
        )


@dataclass(frozen=True, slots=True)
class HistoryIndex:
    meta: Meta | None
    appends: tuple[Append, ...]
    reads: tuple[Read, ...]
    faults: tuple[Fault, ...]
    writes: tuple[Write, ...]
    write_of: dict[str, Write]
    """event id -> the logical write that carries it."""
    finals: dict[str, dict[str, Final]]
    """stream -> node -> final read."""
    reference: dict[str, Final]
    """stream -> the final read the other checks compare against (see `choose_reference`)."""
    id_at: dict[Slot, str]
    """(stream, version) -> event id, in the reference finals."""
    slot_of: dict[str, Slot]
    """event id -> its first (stream, version) in the reference finals."""
    streams: tuple[str, ...]

    def stream_of(self, event_id: str) -> str | None:
        """The stream whose reference final read holds `event_id`, if any."""
        slot = self.slot_of.get(event_id)
        return None if slot is None else slot[0]


def choose_reference(by_node: dict[str, Final]) -> Final:
    """The final held by most nodes; ties go to the longer result, then the smaller node id."""
    groups: defaultdict[tuple[Entry, ...], list[str]] = defaultdict(list)
    for node in sorted(by_node):
        groups[by_node[node].result].append(node)
    _, nodes = min(groups.items(), key=lambda kv: (-len(kv[1]), -len(kv[0]), kv[1][0]))
    return by_node[nodes[0]]


def build_index(history: Iterable[Record]) -> HistoryIndex:
    meta: Meta | None = None
    appends: list[Append] = []
    reads: list[Read] = []
    faults: list[Fault] = []
    finals: defaultdict[str, dict[str, Final]] = defaultdict(dict)
    for record in history:
        match record:
            case Append():
                appends.append(record)
            case Read():
                reads.append(record)
            case Final():
                if record.node in finals[record.stream]:
                    raise HistoryFormatError(
                        f"two final reads of {record.stream!r} from node {record.node!r}"
                    )
                finals[record.stream][record.node] = record
            case Fault():
                faults.append(record)
            case Meta():
                meta = record
    appends.sort(key=lambda a: a.op)
    reads.sort(key=lambda r: r.op)
    op_ids = [a.op for a in appends] + [r.op for r in reads]
    if len(set(op_ids)) != len(op_ids):
        repeated = sorted(op for op, n in Counter(op_ids).items() if n > 1)
        raise HistoryFormatError(f"op ids must be unique; repeated: {repeated[:10]}")

    writes, write_of = _group_writes(appends)
    reference = {stream: choose_reference(by_node) for stream, by_node in finals.items()}
    id_at: dict[Slot, str] = {}
    slot_of: dict[str, Slot] = {}
    for stream, final in reference.items():
        for version, event_id in final.result:
            id_at.setdefault((stream, version), event_id)
            slot_of.setdefault(event_id, (stream, version))
    streams = {a.stream for a in appends} | {r.stream for r in reads} | set(finals)
    return HistoryIndex(
        meta=meta,
        appends=tuple(appends),
        reads=tuple(reads),
        faults=tuple(sorted(faults, key=lambda f: f.t)),
        writes=writes,
        write_of=write_of,
        finals=dict(finals),
        reference=reference,
        id_at=id_at,
        slot_of=slot_of,
        streams=tuple(sorted(streams)),
    )


def _group_writes(appends: list[Append]) -> tuple[tuple[Write, ...], dict[str, Write]]:
    """Group attempts by their event ids; a retry must repeat the batch on the same stream."""
    attempts: dict[tuple[str, ...], list[Append]] = {}
    owner: dict[str, tuple[str, ...]] = {}
    for append in appends:
        key = append.events
        group = attempts.setdefault(key, [])
        if group and group[0].stream != append.stream:
            raise HistoryFormatError(
                f"op {append.op} retries the events of op {group[0].op} on another stream "
                f"({append.stream!r} vs {group[0].stream!r})"
            )
        if not group:
            for event_id in key:
                other = owner.setdefault(event_id, key)
                if other != key:
                    raise HistoryFormatError(
                        f"event id {event_id!r} is in two different batches (ops "
                        f"{attempts[other][0].op} and {append.op}); a retry must repeat the batch"
                    )
        group.append(append)
    writes = tuple(Write.of(group) for group in attempts.values())
    write_of = {event_id: w for w in writes for event_id in w.events}
    return writes, write_of
