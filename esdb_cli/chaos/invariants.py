"""Invariants about what was stored and observed (docs/history-format.md, "Anomalies").

Every function takes the shared `HistoryIndex` and returns anomalies; all are dictionary passes,
linear in the size of the history. The final reads are the ground truth: "present" means present
in the reference final read of the stream. Checks that involve time are in `timing`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from esdb_cli.chaos.anomalies import Anomaly, AnomalyKind, op_list, source
from esdb_cli.chaos.history import Entry, Final, Read
from esdb_cli.chaos.index import HistoryIndex, Slot, Write

K = AnomalyKind
ALL_STREAM = "$all"


def _first_gap(versions: list[int], start: int) -> int | None:
    """Index of the first version that is not `start + index`, or None if contiguous."""
    for index, version in enumerate(versions):
        if version != start + index:
            return index
    return None


# --- final reads: divergence, contiguity, duplicates ----------------------------------------


def check_finals(ix: HistoryIndex) -> list[Anomaly]:
    out: list[Anomaly] = []
    for stream, by_node in sorted(ix.finals.items()):
        same: defaultdict[tuple[Entry, ...], list[str]] = defaultdict(list)
        for node in sorted(by_node):
            same[by_node[node].result].append(node)
        for result, nodes in same.items():
            out.extend(_final_contiguity(stream, result, tuple(nodes)))
        divergence = _divergence(stream, by_node)
        if divergence is not None:
            out.append(divergence)
    occurrences: defaultdict[str, list[Slot]] = defaultdict(list)
    for stream, final in sorted(ix.reference.items()):
        for version, event_id in final.result:
            occurrences[event_id].append((stream, version))
    for event_id, slots in occurrences.items():
        if len(slots) > 1:
            where = ", ".join(f"{s}@{v}" for s, v in slots)
            out.append(
                Anomaly(
                    K.DUPLICATE,
                    f"event {event_id} is stored {len(slots)} times: {where}",
                    stream=slots[0][0],
                    version=slots[1][1],
                    ids=(event_id,),
                )
            )
    return out


def _final_contiguity(
    stream: str, result: tuple[Entry, ...], nodes: tuple[str, ...]
) -> list[Anomaly]:
    versions = [v for v, _ in result]
    gap = _first_gap(versions, 0)
    if gap is None:
        return []
    return [
        Anomaly(
            K.NON_CONTIGUOUS,
            f"final read of {stream} on {', '.join(nodes)} has version {versions[gap]} at index "
            f"{gap}; versions must be exactly 0..{len(versions) - 1}",
            stream=stream,
            version=versions[gap],
            ids=(result[gap][1],),
            nodes=nodes,
        )
    ]


def _divergence(stream: str, by_node: dict[str, Final]) -> Anomaly | None:
    results = {node: by_node[node].result for node in sorted(by_node)}
    if len(set(results.values())) <= 1:
        return None
    longest = max(len(r) for r in results.values())
    index = next(
        i
        for i in range(longest + 1)
        if len({r[i] if i < len(r) else None for r in results.values()}) > 1
    )
    at = {node: (r[index][1] if index < len(r) else None) for node, r in results.items()}
    sizes = ", ".join(f"{node}: {len(r)} events" for node, r in results.items())
    shown = ", ".join(f"{node}={at[node] or '(none)'}" for node in results)
    return Anomaly(
        K.DIVERGENCE,
        f"final reads of {stream} differ ({sizes}); first difference at index {index}: {shown}",
        stream=stream,
        version=index,
        ids=tuple(sorted({i for i in at.values() if i})),
        nodes=tuple(results),
    )


# --- what became of each write: lost, torn, unknown outcomes --------------------------------


class Presence(Enum):
    WHOLE = "whole"
    """All events in the stream's final read, contiguous and in order."""
    SCATTERED = "scattered"
    """All events present, but not contiguous or not in order."""
    PARTIAL = "partial"
    ABSENT = "absent"
    UNRESOLVED = "unresolved"
    """The stream has no final read."""


def presence(ix: HistoryIndex, write: Write) -> Presence:
    if write.stream not in ix.reference:
        return Presence.UNRESOLVED
    versions = []
    for event_id in write.events:
        slot = ix.slot_of.get(event_id)
        if slot is not None and slot[0] == write.stream:
            versions.append(slot[1])
    if not versions:
        return Presence.ABSENT
    if len(versions) < len(write.events):
        return Presence.PARTIAL
    return Presence.WHOLE if _first_gap(versions, versions[0]) is None else Presence.SCATTERED


def check_writes(ix: HistoryIndex) -> list[Anomaly]:
    out: list[Anomaly] = []
    for write in ix.writes:
        if write.all_failed:
            continue  # visible events of failed writes: check_sightings
        state = presence(ix, write)
        acked = write.completed is not None
        missing = [e for e in write.events if ix.stream_of(e) != write.stream]
        if acked and state in (Presence.ABSENT, Presence.PARTIAL):
            out.append(
                Anomaly(
                    K.LOST_WRITE,
                    f"acknowledged append ({op_list(write.acks)}) of {len(write.events)} events to "
                    f"{write.stream} at version {write.acks[0].first}: {len(missing)} missing from "
                    f"the final read",
                    stream=write.stream,
                    version=write.acks[0].first,
                    ops=write.ops,
                    ids=tuple(missing),
                )
            )
        if state in (Presence.PARTIAL, Presence.SCATTERED):
            slots = [ix.slot_of.get(e) for e in write.events]
            shown = ", ".join(
                f"{e}@{s[1]}" if s and s[0] == write.stream else f"{e}@-"
                for e, s in zip(write.events, slots, strict=True)
            )
            out.append(
                Anomaly(
                    K.TORN_APPEND,
                    f"batch of ops {list(write.ops)} on {write.stream} is {state.value} in the "
                    f"final read: {shown}",
                    stream=write.stream,
                    ops=write.ops,
                    ids=write.events,
                )
            )
    return out


# --- ids seen in finals and reads: unexpected, aborted, read-then-lost ------------------------


def check_sightings(ix: HistoryIndex) -> list[Anomaly]:
    out: list[Anomaly] = []
    failed = {e for w in ix.writes if w.all_failed for e in w.events}
    # event id -> [(op or None for the final read, stream, version)], only for suspicious ids
    unexpected: defaultdict[str, list[tuple[int | None, str, int]]] = defaultdict(list)
    aborted: defaultdict[str, list[tuple[int | None, str, int]]] = defaultdict(list)
    dirty: defaultdict[str, list[tuple[int | None, str, int]]] = defaultdict(list)

    def sight(op: int | None, stream: str, version: int, event_id: str) -> None:
        write = ix.write_of.get(event_id)
        if write is None or write.stream != stream:
            unexpected[event_id].append((op, stream, version))
        elif event_id in failed:
            aborted[event_id].append((op, stream, version))
        elif (
            op is not None
            and event_id not in ix.slot_of
            and stream in ix.reference
            and write.completed is None
        ):
            dirty[event_id].append((op, stream, version))

    for stream, final in ix.reference.items():
        for version, event_id in final.result:
            sight(None, stream, version, event_id)
    for read in ix.reads:
        if read.type == "ok":
            for version, event_id in read.result:
                sight(read.op, read.stream, version, event_id)

    for event_id, seen in unexpected.items():
        write = ix.write_of.get(event_id)
        why = "never attempted" if write is None else f"only attempted on {write.stream}"
        out.append(_sighting(K.UNEXPECTED, event_id, seen, f"event {event_id} ({why})", ()))
    by_write: defaultdict[tuple[str, ...], list[tuple[str, tuple[int | None, str, int]]]]
    by_write = defaultdict(list)
    for event_id, seen in aborted.items():
        by_write[ix.write_of[event_id].events].extend((event_id, s) for s in seen)
    for events, seen_ids in by_write.items():
        write = ix.write_of[events[0]]
        ids = tuple(dict.fromkeys(e for e, _ in seen_ids))
        where = _where([s for _, s in seen_ids])
        out.append(
            Anomaly(
                K.ABORTED_APPEND_VISIBLE,
                f"events {list(ids)} of failed append ({op_list(write.attempts)}: "
                f"{write.attempts[0].error or 'fail'}) are visible: {where}",
                stream=write.stream,
                version=seen_ids[0][1][2],
                ops=write.ops + _read_ops(s for _, s in seen_ids),
                ids=ids,
            )
        )
    for event_id, seen in dirty.items():
        write = ix.write_of[event_id]
        out.append(
            _sighting(
                K.READ_THEN_LOST,
                event_id,
                seen,
                f"event {event_id} of unacknowledged {op_list(write.attempts)} is absent from the "
                f"final read, yet was",
                write.ops,
            )
        )
    return out


def _read_ops(seen: Iterable[tuple[int | None, str, int]]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(op for op, _, _ in seen if op is not None))


def _where(seen: list[tuple[int | None, str, int]]) -> str:
    shown = [f"{source(op)} {stream}@{version}" for op, stream, version in seen[:5]]
    more = f" and {len(seen) - 5} more" if len(seen) > 5 else ""
    return "; ".join(shown) + more


def _sighting(
    kind: AnomalyKind,
    event_id: str,
    seen: list[tuple[int | None, str, int]],
    what: str,
    write_ops: tuple[int, ...],
) -> Anomaly:
    return Anomaly(
        kind,
        f"{what} seen by {_where(seen)}",
        stream=seen[0][1],
        version=seen[0][2],
        ops=write_ops + _read_ops(seen),
        ids=(event_id,),
    )


# --- what acks and reads observed: inconsistent versions, read contiguity -------------------


@dataclass(frozen=True, slots=True)
class _Conflict:
    """`event_id` observed at (stream, version), but `other_op` (None: the final read) bound that
    slot to `other_id`, or bound `event_id` to `other_slot`."""

    stream: str
    version: int
    event_id: str
    other_op: int | None
    other_id: str | None = None
    other_slot: Slot | None = None

    def describe(self) -> str:
        if self.other_id is not None:
            return f"{self.other_id} there"
        assert self.other_slot is not None
        return f"it at {self.other_slot[0]}@{self.other_slot[1]}"


class _Slots:
    """First-come binding of (stream, version) <-> event id; later observers must agree."""

    def __init__(self) -> None:
        self.id_at: dict[Slot, tuple[str, int | None]] = {}
        self.slot_of: dict[str, tuple[Slot, int | None]] = {}

    def seed(self, stream: str, version: int, event_id: str) -> None:
        """Bind from the final read; its own duplicates and gaps are reported elsewhere."""
        self.id_at.setdefault((stream, version), (event_id, None))
        self.slot_of.setdefault(event_id, ((stream, version), None))

    def bind(self, stream: str, version: int, event_id: str, op: int | None) -> _Conflict | None:
        slot = (stream, version)
        held = self.id_at.get(slot)
        if held is not None:
            if held[0] == event_id:
                return None
            return _Conflict(stream, version, event_id, held[1], other_id=held[0])
        placed = self.slot_of.get(event_id)
        if placed is not None:
            return _Conflict(stream, version, event_id, placed[1], other_slot=placed[0])
        self.id_at[slot] = (event_id, op)
        self.slot_of[event_id] = (slot, op)
        return None


def check_observations(ix: HistoryIndex) -> list[Anomaly]:
    out: list[Anomaly] = []
    slots, positions = _Slots(), _Slots()
    for (stream, version), event_id in ix.id_at.items():
        slots.seed(stream, version, event_id)
    for append in ix.appends:
        if append.type != "ok" or append.first is None:
            continue
        first = append.first
        found = [
            slots.bind(append.stream, first + i, e, append.op) for i, e in enumerate(append.events)
        ]
        if append.position is not None:
            position = append.position
            found += [
                positions.bind(ALL_STREAM, position + i, e, append.op)
                for i, e in enumerate(append.events)
            ]
        out.extend(_inconsistent(f"ack of op {append.op}", append.op, found))
    for read in ix.reads:
        if read.type != "ok":
            continue
        out.extend(_read_contiguity(read))
        found = [slots.bind(read.stream, v, e, read.op) for v, e in read.result]
        out.extend(_inconsistent(f"read op {read.op}", read.op, found))
    return out


def _inconsistent(who: str, op: int, found: list[_Conflict | None]) -> list[Anomaly]:
    conflicts = [c for c in found if c is not None]
    if not conflicts:
        return []
    c = conflicts[0]
    more = f" ({len(conflicts)} positions disagree)" if len(conflicts) > 1 else ""
    return [
        Anomaly(
            K.INCONSISTENT_VERSION,
            f"{who} put {c.event_id} at {c.stream}@{c.version}, but {source(c.other_op)} has "
            f"{c.describe()}{more}",
            stream=c.stream,
            version=c.version,
            ops=(op,) if c.other_op is None else (op, c.other_op),
            ids=(c.event_id,) if c.other_id is None else (c.event_id, c.other_id),
        )
    ]


def _read_contiguity(read: Read) -> list[Anomaly]:
    out: list[Anomaly] = []
    versions = [v for v, _ in read.result]
    gap = _first_gap(versions, read.from_)
    if gap is not None:
        out.append(
            Anomaly(
                K.NON_CONTIGUOUS,
                f"read op {read.op} of {read.stream} from {read.from_} returned version "
                f"{versions[gap]} at index {gap}; expected {read.from_ + gap}",
                stream=read.stream,
                version=versions[gap],
                ops=(read.op,),
                ids=(read.result[gap][1],),
                nodes=(read.node,),
            )
        )
    return out
