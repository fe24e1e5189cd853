"""Invariants that need the clock: expected-version semantics and real-time order.

Times are one harness process's `time.monotonic_ns()`, so "A completed before B was invoked"
(`A.t1 < B.t0`) is exact. An unknown-outcome (`info`) op has no usable completion time: it may
take effect long after its `t1`. Everything here is a sort, a sweep or a binary search.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass

from esdb_cli.chaos.anomalies import Anomaly, AnomalyKind, op_list
from esdb_cli.chaos.history import WRONG_EXPECTED_VERSION, Append
from esdb_cli.chaos.index import HistoryIndex, Write

K = AnomalyKind


# --- expected-version semantics: wrong-first, false-conflict, the reported actual -----------


def check_expected_versions(ix: HistoryIndex) -> list[Anomaly]:
    out: list[Anomaly] = []
    committed = _committed_at(ix)
    for append in ix.appends:
        if append.type == "ok":
            out.extend(_wrong_first(append))
        elif append.type == "fail" and append.error == WRONG_EXPECTED_VERSION:
            for kind, reason in (
                (K.FALSE_CONFLICT, _false_conflict(ix, committed, append)),
                (K.INCONSISTENT_VERSION, _misreported_actual(ix, committed, append)),
            ):
                if reason is not None:
                    out.append(
                        Anomaly(
                            kind,
                            f"op {append.op} on {append.stream} (expected {append.expected}, "
                            f"actual {append.actual}) failed with {WRONG_EXPECTED_VERSION}, but "
                            f"{reason}",
                            stream=append.stream,
                            version=append.actual,
                            ops=(append.op,),
                            ids=append.events,
                        )
                    )
                    break
    return out


def _wrong_first(append: Append) -> list[Anomaly]:
    expected, first = append.expected, append.first
    if first is None:
        return []
    if isinstance(expected, int):
        bad, want = first != expected + 1, f"{expected + 1}"
    elif expected == "no-stream":
        bad, want = first != 0, "0"
    elif expected == "exists":
        bad, want = first == 0, ">= 1"
    else:
        return []
    if not bad:
        return []
    return [
        Anomaly(
            K.WRONG_FIRST,
            f"op {append.op} on {append.stream} with expected {expected} was acknowledged at "
            f"version {first}; expected {want}",
            stream=append.stream,
            version=first,
            ops=(append.op,),
            ids=append.events,
        )
    ]


def _committed_at(ix: HistoryIndex) -> dict[str, int]:
    """event id -> earliest completion of an ack or linearizable read that returned it."""
    seen: dict[str, int] = {}
    for append in ix.appends:
        if append.type == "ok":
            for event_id in append.events:
                seen[event_id] = min(seen.get(event_id, append.t1), append.t1)
    for read in ix.reads:
        if read.type == "ok" and read.linearizable:
            for _, event_id in read.result:
                seen[event_id] = min(seen.get(event_id, read.t1), read.t1)
    return seen


def _false_conflict(ix: HistoryIndex, committed: dict[str, int], append: Append) -> str | None:
    """Why this wrong-expected-version failure was impossible, or None if it may be genuine."""
    expected, stream, t0, t1 = append.expected, append.stream, append.t0, append.t1
    if expected == "any":
        return "expected any cannot conflict"
    v = expected if isinstance(expected, int) else -1 if expected == "no-stream" else None
    if v is not None and append.actual == v:
        return "the reported actual version equals the expected one"
    if v is None and append.actual is not None and append.actual >= 0:
        return "the reported actual version says the stream existed"
    if stream not in ix.reference:
        return None
    never = t0  # stands for "not known to be committed before t0"
    if v is None:  # expected "exists": the conflict says there was no stream
        first = ix.id_at.get((stream, 0))
        if first is not None and committed.get(first, never) < t0:
            return f"version 0 ({first}) was committed before the call"
        return None
    at_v = ix.id_at.get((stream, v))
    before = v == -1 or (at_v is not None and committed.get(at_v, never) < t0)
    following = ix.id_at.get((stream, v + 1))
    write = ix.write_of.get(following) if following is not None else None
    after = following is None or (write is not None and write.invoked > t1)
    if before and after:
        nxt = "never written" if following is None else f"invoked after the call ({following})"
        return f"the stream stood at {v} for the whole call (version {v + 1} {nxt})"
    return None


def _misreported_actual(ix: HistoryIndex, committed: dict[str, int], append: Append) -> str | None:
    """Why the reported actual version was never the head during the call, or None."""
    actual, stream = append.actual, append.stream
    if actual is None or stream not in ix.reference:
        return None
    if actual >= 0:
        at = ix.id_at.get((stream, actual))
        if at is None:
            return f"the stream never reached version {actual}"
        write = ix.write_of.get(at)
        if write is not None and write.invoked > append.t1:
            return f"version {actual} ({at}) was invoked after the call"
    following = ix.id_at.get((stream, actual + 1))
    if following is not None and committed.get(following, append.t0) < append.t0:
        return f"version {actual + 1} ({following}) was committed before the call"
    return None


# --- reads: stale, future --------------------------------------------------------------------


def check_stale_reads(ix: HistoryIndex) -> list[Anomaly]:
    """A complete linearizable read must reach every version that was acknowledged, or returned
    by another linearizable read, before it was invoked."""
    bounds: defaultdict[str, list[tuple[int, int, int]]] = defaultdict(list)  # (t1, head, op)
    for append in ix.appends:
        if append.type == "ok" and append.last is not None:
            bounds[append.stream].append((append.t1, append.last, append.op))
    for read in ix.reads:
        if read.type == "ok" and read.linearizable and read.result:
            bounds[read.stream].append((read.t1, max(v for v, _ in read.result), read.op))
    sweeps: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}
    for stream, items in bounds.items():
        items.sort()
        best: list[tuple[int, int]] = []  # running maximum of (head, op)
        for _, head, op in items:
            best.append(max(best[-1], (head, op)) if best else (head, op))
        sweeps[stream] = ([t for t, _, _ in items], best)
    out: list[Anomaly] = []
    for read in ix.reads:
        if read.type != "ok" or not read.linearizable or not read.complete:
            continue
        times, best = sweeps.get(read.stream, ([], []))
        index = bisect_left(times, read.t0)
        if index == 0:
            continue
        head, op = best[index - 1]
        if head > read.head:
            out.append(
                Anomaly(
                    K.STALE_READ,
                    f"linearizable read op {read.op} of {read.stream} on {read.node} returned "
                    f"head {read.head}, but op {op} had seen version {head} before the read began",
                    stream=read.stream,
                    version=head,
                    ops=(read.op, op),
                    nodes=(read.node,),
                )
            )
    return out


def check_future_reads(ix: HistoryIndex) -> list[Anomaly]:
    """No read returns an event whose append was first invoked after the read completed."""
    out: list[Anomaly] = []
    for read in ix.reads:
        if read.type != "ok":
            continue
        for version, event_id in read.result:
            write = ix.write_of.get(event_id)
            if write is not None and write.invoked > read.t1:
                out.append(
                    Anomaly(
                        K.FUTURE_READ,
                        f"read op {read.op} of {read.stream} returned {event_id} at version "
                        f"{version}, but its append ({op_list(write.attempts)}) was invoked after "
                        f"the read completed",
                        stream=read.stream,
                        version=version,
                        ops=(read.op, *write.ops),
                        ids=(event_id,),
                        nodes=(read.node,),
                    )
                )
                break
    return out


# --- appends: real-time order ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Placed:
    write: Write
    pos: int
    invoked: int
    completed: int | None


def check_realtime_order(ix: HistoryIndex) -> list[Anomaly]:
    """If write A was acknowledged before write B was invoked, A must sit before B.

    Per stream with final-read versions (this covers unacknowledged writes that were applied);
    across streams with the global positions that acknowledgements report.
    """
    out: list[Anomaly] = []
    per_stream: defaultdict[str, list[_Placed]] = defaultdict(list)
    global_items: list[_Placed] = []
    for write in ix.writes:
        if write.all_failed:
            continue  # visible at all: aborted-append-visible
        invoked, completed = write.invoked, write.completed
        slot = ix.slot_of.get(write.events[0])
        if slot is not None and slot[0] == write.stream:
            per_stream[write.stream].append(_Placed(write, slot[1], invoked, completed))
        positions = [a.position for a in write.acks if a.position is not None]
        if positions:
            global_items.append(_Placed(write, positions[0], invoked, completed))
    for stream, items in sorted(per_stream.items()):
        out.extend(_order_anomaly(a, b, "version", stream) for a, b in _sweep(items))
    out.extend(
        _order_anomaly(a, b, "position", None)
        for a, b in _sweep(global_items)
        if a.write.stream != b.write.stream  # same-stream pairs are reported above
    )
    return out


def _sweep(items: list[_Placed]) -> list[tuple[_Placed, _Placed]]:
    """Pairs (A, B) with A completed before B was invoked but pos(A) > pos(B); one A per B."""
    completed = sorted(
        ((i.completed, i) for i in items if i.completed is not None), key=lambda ci: ci[0]
    )
    pairs: list[tuple[_Placed, _Placed]] = []
    best: _Placed | None = None
    j = 0
    for b in sorted(items, key=lambda i: i.invoked):
        while j < len(completed) and completed[j][0] < b.invoked:
            if best is None or completed[j][1].pos > best.pos:
                best = completed[j][1]
            j += 1
        if best is not None and best.pos > b.pos:
            pairs.append((best, b))
    return pairs


def _order_anomaly(a: _Placed, b: _Placed, unit: str, stream: str | None) -> Anomaly:
    return Anomaly(
        K.REALTIME_ORDER,
        f"append {op_list(a.write.acks)} ({a.write.stream} {unit} {a.pos}) was acknowledged "
        f"before {op_list(b.write.attempts)} ({b.write.stream} {unit} {b.pos}) was invoked, yet "
        f"comes after it",
        stream=stream,
        version=b.pos if stream else None,
        ops=(*a.write.ops, *b.write.ops),
        ids=(a.write.events[0], b.write.events[0]),
    )
